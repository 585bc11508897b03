"""Model guidance (Rao et al., "Using Explanations to Guide Models", ICCV 2023): train a B-cos classifier to be right
for the right reasons from object boxes.

The loss is the B-cos papers' classification loss plus ``lambda`` times the energy loss
(:func:`~bcos_zoo.training.explanation_losses.energy_loss`) of each boxed image's explanation for its label, summed
over the images of the batch that carry boxes. The explanation is the model's own, taken in explanation mode with a
graph, at the input or at a hidden layer (``guidance_layer``). Only a seeded ``box_fraction`` of the training images
lends its boxes. Items are ``(image, label, boxes)`` (:mod:`bcos_zoo.data.boxes`); evaluation reports accuracy, the
energy pointing game (EPG) and the IoU of the thresholded positive attribution with the box mask.
"""

from collections import defaultdict
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainingArguments

from ..data.boxes import BoxedImages, BoxTransform, box_training_transform, collate_boxed
from ..data.datasets import DatasetSplits
from ..data.decoys import load_boxed_splits
from ..data.preprocessing import model_transform
from .classification import BcosClassification, accuracy_metrics
from .explanation_losses import INPUT_LAYER, energy_loss, guidance_contributions
from .task import CardFields
from .trainer import TermLoggingTrainer


def processor_box_transform(model: nn.Module) -> BoxTransform:
    """Evaluation pixels from the model's own image processor, and the box mask drawn through that same processor
    (:func:`~bcos_zoo.evaluation.localisation.box_mask`), so any resize or crop it does moves the boxes too."""
    from ..evaluation.localisation import box_mask

    pixels = model_transform(model)

    def transform(image, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        values = pixels(image)
        mask = torch.zeros(values.shape[-2:], dtype=torch.bool)
        for box in boxes:
            mask |= box_mask(box, image.size, pixels)
        return values, mask

    return transform


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


class GuidedTrainer(TermLoggingTrainer):
    """A ``Trainer`` whose training loss adds ``guidance_weight`` times the energy loss of the boxed images.

    The classification loss comes from the model's ordinary forward pass; the explanations come from a second pass
    in explanation mode, over the boxed images only (cheap when few images have boxes). The mean energy loss and the
    share of boxed images are logged beside the loss.
    """

    def __init__(self, *args, guidance_weight: float, guidance_layer: str = INPUT_LAYER, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_weight, self.guidance_layer = guidance_weight, guidance_layer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"], labels=inputs["labels"])
        loss = outputs.loss
        boxed = inputs.get("has_boxes")
        if model.training and boxed is not None and bool(boxed.any()):
            attributions = guidance_contributions(
                self.accelerator.unwrap_model(model),
                inputs["pixel_values"][boxed],
                inputs["labels"][boxed],
                self.guidance_layer,
            )
            energy = energy_loss(attributions, inputs["box_masks"][boxed])
            if self.guidance_weight:
                loss = loss + self.guidance_weight * energy.sum()
            self.tally("energy_loss", energy.detach().mean())
        if model.training and boxed is not None:
            self.tally("boxed_share", boxed.float().mean())
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def localisation_scores(
    model: nn.Module, dataset: Dataset, batch_size: int, layer: str = INPUT_LAYER
) -> dict[str, float]:
    """Accuracy over all items, and EPG and IoU of the explanation of each image's label over the items with boxes
    (``epg``/``iou`` at the input; ``layer_epg`` too when ``layer`` is a hidden layer)."""
    from ..evaluation.scores import energy_pointing_scores

    device = next(model.parameters()).device
    model.eval()
    correct, count = 0, 0
    scores: dict[str, list[float]] = defaultdict(list)
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_boxed):
        pixels, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        masks = batch["box_masks"].to(device)
        explanation = model.explain(pixels.to(model.dtype), target=labels)
        correct += int((explanation.logits.argmax(dim=1) == labels).sum())
        count += len(labels)
        boxed = masks.flatten(1).any(dim=1)
        if not bool(boxed.any()):
            continue
        contributions = explanation.contributions[boxed]
        scores["epg"] += energy_pointing_scores(contributions, masks[boxed]).tolist()
        scores["iou"] += attribution_iou(contributions, masks[boxed]).tolist()
        if layer != INPUT_LAYER:
            with torch.enable_grad():
                hidden = guidance_contributions(model, pixels[boxed], labels[boxed], layer).detach()
            scores["layer_epg"] += energy_pointing_scores(hidden, masks[boxed]).tolist()
    metrics = {"accuracy": correct / max(count, 1)}
    metrics.update({name: sum(values) / len(values) for name, values in scores.items()})
    metrics["boxed_images"] = len(scores["epg"])
    return metrics


class GuidedClassification(BcosClassification):
    """Classification with model guidance: the energy loss on the explanations of images with boxes."""

    name = "guided-classification"

    @property
    def card(self) -> CardFields:
        recipe = self.recipe
        return replace(
            BcosClassification.card,
            objective="BCE with uniform off-labels + lambda x energy loss (model guidance)",
            tags=("model-guidance",),
            hyperparameters=(
                ("guidance weight lambda", recipe.guidance_weight),
                ("guided layer", recipe.guidance_layer),
                ("share of training images with boxes", recipe.box_fraction),
            ),
        )

    def load_data(self) -> DatasetSplits:
        recipe = self.recipe
        return load_boxed_splits(recipe.dataset, recipe.image_column, recipe.label_column)

    def train_transform(self, model: nn.Module) -> BoxTransform:
        return box_training_transform(self.image_size(model), crop_scale=self.recipe.crop_scale)

    def eval_transform(self, model: nn.Module) -> BoxTransform:
        return processor_box_transform(model)

    def dataset(self, items: Dataset, transform, seed: int | None = None) -> Dataset:
        training = seed is not None
        fraction = self.recipe.box_fraction if training else 1.0
        return BoxedImages(items, transform, seed=seed, box_fraction=fraction, box_seed=self.recipe.seed)

    def collate(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        return collate_boxed(batch)

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> Trainer:
        return GuidedTrainer(
            model=model,
            args=arguments,
            compute_metrics=accuracy_metrics,
            guidance_weight=self.recipe.guidance_weight,
            guidance_layer=self.recipe.guidance_layer,
            **common,
        )

    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset) -> dict[str, float]:
        """Accuracy, EPG and IoU on the evaluation split (for decoy data: decoys shuffled across classes)."""
        return localisation_scores(model, eval_dataset, self.recipe.batch_size, self.recipe.guidance_layer)
