"""Model guidance (Rao et al., "Studying How to Efficiently and Effectively Guide Models with Explanations", ICCV
2023): train a B-cos classifier to be right for the right reasons from object boxes.

The loss is the model's classification loss plus ``lambda`` times a localisation loss (``guidance_loss``: the energy
loss, L1, RRR or PPCE of :mod:`~bcos_zoo.training.explanation_losses`) of each boxed image's attribution for its
label, summed over the images of the batch that carry boxes. The attribution (``attribution``) is the model's own
B-cos explanation, taken in explanation mode with a graph, or Input x Gradient or GradCAM of the same model, at the
input or at a hidden layer (``guidance_layer``). Only a seeded ``box_fraction`` of the training images lends its
boxes, each grown by ``box_dilation`` of its size (coarse boxes). Items are ``(image, label, boxes)``
(:mod:`bcos_zoo.data.boxes`); evaluation reports accuracy, the energy pointing game (EPG) and the IoU of the
thresholded positive attribution with the box mask, for the guided attribution and for the model's own explanation.
"""

from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments

from ..data.boxes import BoxedImages, BoxTrainingTransform, BoxTransform, as_is_transform, collate_boxed
from ..data.datasets import DatasetSplits
from ..data.decoys import load_boxed_splits, spec_canvas
from ..data.preprocessing import ImageTransform, model_channels, model_transform
from ..evaluation.localisation import box_mask
from ..evaluation.scores import energy_pointing_scores
from ..modeling.pipeline_bcos_explanation import read_image
from .classification import BcosClassification, accuracy_metrics
from .explanation_losses import (
    ATTRIBUTION_METHODS,
    GUIDANCE_LOSSES,
    INPUT_LAYER,
    attributions,
    frozen_running_statistics,
)
from .task import CardFields
from .trainer import ZooTrainer


def processor_box_transform(model: nn.Module) -> BoxTransform:
    """Evaluation pixels from the model's own image processor, and the box mask drawn through that same processor
    (:func:`~bcos_zoo.evaluation.localisation.box_mask`), so any resize or crop it does moves the boxes too."""
    return ProcessorBoxTransform(model_transform(model))


@dataclass
class ProcessorBoxTransform:
    """:func:`processor_box_transform`'s transform: a class, which DataLoader workers can unpickle."""

    pixels: ImageTransform

    def __call__(self, image, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(image)  # boxes lie on the upright image, as the pixels do
        values = self.pixels(image)
        mask = torch.zeros(values.shape[-2:], dtype=torch.bool)
        for box in boxes:
            mask |= box_mask(box, image.size, self.pixels)
        return values, mask


def attribution_iou(attributions: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N,) IoU of the box mask with the positive attribution min-max normalised per image and thresholded at
    ``threshold`` (the model guidance paper's IoU); an image without positive attribution scores 0."""
    positive = attributions.detach().double().clamp_min(0).flatten(1)
    low, high = positive.amin(dim=1, keepdim=True), positive.amax(dim=1, keepdim=True)
    scaled = (positive - low) / (high - low).clamp_min(1e-300)
    predicted = (scaled >= threshold) & (high > 0)
    truth = masks.flatten(1).bool()
    union = (predicted | truth).sum(dim=1)
    return torch.where(union > 0, (predicted & truth).sum(dim=1) / union.clamp_min(1), torch.zeros_like(union).double())


def check_guidance(loss: str, method: str, layer: str) -> None:
    """Refuse an unknown localisation loss or attribution method, and GradCAM at the input, before training."""
    if loss not in GUIDANCE_LOSSES:
        raise ValueError(f"guidance_loss must be one of {sorted(GUIDANCE_LOSSES)}, got {loss!r}")
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"attribution must be one of {ATTRIBUTION_METHODS}, got {method!r}")
    if method == "gradcam" and layer == INPUT_LAYER:
        raise ValueError("GradCAM explains a hidden layer: set guidance_layer to a module name")


class GuidedTrainer(ZooTrainer):
    """A ``Trainer`` whose training loss adds ``guidance_weight`` times the localisation loss of the boxed images.

    The classification loss comes from the model's ordinary forward pass; the attributions come from a second pass
    (in explanation mode for B-cos attributions) over the boxed images only, cheap when few images have boxes, and
    skipped when ``guidance_weight`` is 0; that pass leaves BatchNorm's running statistics alone. The mean
    localisation loss and the share of boxed images are logged beside the loss.
    """

    def __init__(
        self,
        *args,
        guidance_weight: float,
        guidance_layer: str = INPUT_LAYER,
        guidance_loss: str = "energy",
        attribution: str = "bcos",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        check_guidance(guidance_loss, attribution, guidance_layer)
        self.guidance_weight, self.guidance_layer = guidance_weight, guidance_layer
        self.guidance_loss, self.attribution = guidance_loss, attribution

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
        loss = outputs.loss
        boxed = inputs.get("has_boxes")
        if model.training and self.guidance_weight and boxed is not None and bool(boxed.any()):
            unwrapped = self.accelerator.unwrap_model(model)
            with frozen_running_statistics(unwrapped):
                maps = attributions(
                    unwrapped,
                    inputs["pixel_values"][boxed],
                    inputs["labels"][boxed],
                    self.attribution,
                    self.guidance_layer,
                )
            localisation = GUIDANCE_LOSSES[self.guidance_loss](maps, inputs["box_masks"][boxed])
            # summed over an optimiser step's images (the Trainer divides by the accumulation steps, DDP averages
            # over processes): splitting a batch into accumulation steps or processes leaves lambda's meaning alone
            accumulated = getattr(self, "current_gradient_accumulation_steps", 1)  # set by the training loop
            steps = accumulated * self.accelerator.num_processes
            loss = loss + self.guidance_weight * steps * localisation.sum()
            self.tally(f"{self.guidance_loss}_loss", localisation.detach().mean(), count=len(localisation))
        if model.training and boxed is not None:
            self.tally("boxed_share", boxed.float().mean(), count=len(boxed))
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def localisation_scores(
    model: nn.Module, dataset: Dataset, batch_size: int, layer: str = INPUT_LAYER, method: str = "bcos"
) -> dict[str, float]:
    """Accuracy over all items and, over the items with boxes, EPG and IoU of the attribution of each image's label:
    ``epg``/``iou`` for the attribution ``method`` at ``layer`` (what guidance trained), and ``bcos_epg``/``bcos_iou``
    for the model's own explanation at the input when that is another attribution."""
    device = next(model.parameters()).device
    model.eval()
    correct, count = 0, 0
    scores: dict[str, list[float]] = defaultdict(list)
    own = method == "bcos" and layer == INPUT_LAYER
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_boxed):
        pixels, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        masks = batch["box_masks"].to(device)
        explanation = model.explain(pixels.to(model.dtype), target=labels)
        correct += int((explanation.logits.argmax(dim=1) == labels).sum())
        count += len(labels)
        boxed = masks.flatten(1).any(dim=1)
        if not bool(boxed.any()):
            continue
        maps = {"bcos_" if not own else "": explanation.contributions[boxed]}
        if not own:
            with torch.enable_grad():
                maps[""] = attributions(model, pixels[boxed], labels[boxed], method, layer, create_graph=False)
        for prefix, values in maps.items():
            scores[f"{prefix}epg"] += energy_pointing_scores(values.detach(), masks[boxed]).tolist()
            scores[f"{prefix}iou"] += attribution_iou(values, masks[boxed]).tolist()
    metrics = {"accuracy": correct / max(count, 1)}
    metrics.update({name: sum(values) / len(values) for name, values in scores.items()})
    metrics["boxed_images"] = len(scores["epg"])
    return metrics


GUIDANCE_CITATION = """@inproceedings{rao2023guide,
  title     = {Studying How to Efficiently and Effectively Guide Models with Explanations},
  author    = {Rao, Sukrut and B{\\"o}hle, Moritz and Parchami-Araghi, Amin and Schiele, Bernt},
  booktitle = {IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}"""
# what the evaluation measures beside the accuracy (localisation_scores), as the card states it
GUIDANCE_MEASURED = (
    ("epg", "Energy pointing game (EPG) of the guided attributions in the images' boxes: {value:.2%}."),
    ("iou", "IoU of the guided attributions (min-max normalised, thresholded at 0.5) with the boxes: {value:.2%}."),
    ("bcos_epg", "EPG of the model's own B-cos explanations: {value:.2%}."),
)


class GuidedClassification(BcosClassification):
    """Classification with model guidance: the energy loss on the explanations of images with boxes."""

    name = "guided-classification"
    trains_on_boxes = True  # the loss reads the boxes (a subclass may read them for its evaluation only)

    @property
    def card(self) -> CardFields:
        recipe = self.recipe
        if not recipe.guidance_weight:  # trained without guidance (a baseline, or a teacher): a plain classifier
            return BcosClassification.card
        return replace(
            BcosClassification.card,
            objective=f"classification loss + lambda x {recipe.guidance_loss} localisation loss (model guidance)",
            tags=("model-guidance",),
            measured=GUIDANCE_MEASURED,
            citation=GUIDANCE_CITATION,
            hyperparameters=(
                ("guidance weight lambda", recipe.guidance_weight),
                ("localisation loss", recipe.guidance_loss),
                ("guided attribution", recipe.attribution),
                ("guided layer", recipe.guidance_layer),
                ("share of training images with boxes", recipe.box_fraction),
                ("box dilation", recipe.box_dilation),
            ),
        )

    def build_model(self, class_names: list[str]) -> nn.Module:
        model = super().build_model(class_names)
        if model_channels(model) != 3:
            raise ValueError(
                f"The {self.name} task trains colour (three-channel) models, and this model takes "
                f"{model_channels(model)}-channel images."
            )
        return model

    def load_data(self) -> DatasetSplits:
        recipe = self.recipe
        if self.trains_on_boxes and recipe.guidance_weight and spec_canvas(recipe.dataset) is None:
            raise ValueError(
                f"guided-classification needs images with object boxes, and {recipe.dataset!r} has none, so guidance "
                "would never act: use a dataset with boxes (fashion-mnist-decoys-<px>, fashion-mnist-canvas-<px>), or "
                "--guidance-weight 0 to train without it."
            )
        return load_boxed_splits(recipe.dataset, recipe.image_column, recipe.label_column)

    def _canvas_as_is(self, model: nn.Module) -> bool:
        """Whether the data are decoy canvases drawn at the model's input size and its processor leaves them as they
        are (no resize or crop: ``crop_pct`` 1), so that pixels are read as drawn."""
        canvas = spec_canvas(self.recipe.dataset)
        config = model.config
        return canvas is not None and canvas == self.image_size(model) and getattr(config, "crop_pct", 1.0) == 1.0

    def train_transform(self, model: nn.Module) -> BoxTransform:
        """Random-resized crops and flips, or, on decoy canvases at the model's size with ``crop_scale`` (1, 1),
        the canvases as drawn (their random placement is the augmentation)."""
        if tuple(self.recipe.crop_scale) == (1.0, 1.0) and self._canvas_as_is(model):
            return as_is_transform
        return BoxTrainingTransform(self.image_size(model), crop_scale=self.recipe.crop_scale)

    def eval_transform(self, model: nn.Module) -> BoxTransform:
        """The model's own processor (the same pixels, read without it, on canvases it leaves as they are)."""
        return as_is_transform if self._canvas_as_is(model) else processor_box_transform(model)

    def dataset(self, items: Dataset, transform, seed: int | None = None) -> Dataset:
        recipe, training = self.recipe, seed is not None
        return BoxedImages(
            items,
            transform,
            seed=seed,
            box_fraction=recipe.box_fraction if training else 1.0,
            box_seed=recipe.seed,
            box_dilation=recipe.box_dilation if training else 0.0,
        )

    collate = staticmethod(collate_boxed)

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> Trainer:
        return GuidedTrainer(
            model=model,
            args=arguments,
            compute_metrics=accuracy_metrics,
            guidance_weight=self.recipe.guidance_weight,
            guidance_layer=self.recipe.guidance_layer,
            guidance_loss=self.recipe.guidance_loss,
            attribution=self.recipe.attribution,
            **common,
        )

    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset) -> dict[str, float]:
        """Accuracy, EPG and IoU on the evaluation split (for decoy data: decoys shuffled across classes)."""
        recipe = self.recipe
        return localisation_scores(model, eval_dataset, recipe.batch_size, recipe.guidance_layer, recipe.attribution)
