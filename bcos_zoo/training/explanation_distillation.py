"""Explanation-enhanced knowledge distillation, e2KD (Parchami-Araghi et al., "Good Teachers Explain", CVPR 2024).

A frozen B-cos teacher (a folder or Hub id, any B-cos image-classifier family) teaches a B-cos student (any family
and size) with :func:`~bcos_zoo.training.explanation_losses.e2kd_loss`: the KD term on the logits plus
``explanation_weight`` times one minus the cosine between the two models' dynamic weights ``W(x)`` for the
teacher's top-1 class. The teacher sees the student's pixels at its own input size, and the two explanations are
compared there (:func:`teacher_pixels`). ``explanation_weight = 0`` is plain KD. The student is evaluated on
accuracy, top-1 agreement with the teacher, the cosine of its explanations to the teacher's and, on data with boxes,
EPG.
"""

import functools
import hashlib
from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from ..data.boxes import BoxedImages, collate_boxed
from ..data.datasets import DatasetSplits
from ..data.preprocessing import model_channels
from ..evaluation.report import class_order
from ..evaluation.scores import energy_pointing_scores
from .classification import BcosClassification, check_classes
from .explanation_losses import differentiable_explanation, e2kd_loss, explanation_cosine, frozen_running_statistics
from .guided_classification import GuidedClassification
from .task import CardFields, describe_source
from .trainer import ZooTrainer


E2KD_CITATION = """@article{parchami2024goodteachers,
  title   = {Good Teachers Explain: Explanation-Enhanced Knowledge Distillation},
  author  = {Parchami-Araghi, Amin and B{\\"o}hle, Moritz and Rao, Sukrut and Schiele, Bernt},
  journal = {arXiv preprint arXiv:2402.03119},
  year    = {2024}
}"""
# what the evaluation measures beside the accuracy (distillation_scores), as the card states it
DISTILLATION_MEASURED = (
    ("teacher_accuracy", "The teacher's top-1 accuracy on the same images: {value:.2%}."),
    ("agreement", "Top-1 agreement of the model with its teacher: {value:.2%}."),
    (
        "explanation_cosine",
        "Mean cosine of the model's explanations W(x) to the teacher's, both for the teacher's top-1 class: "
        "{value:.4f}.",
    ),
    ("epg", "Energy pointing game (EPG) of the model's explanations in the images' boxes: {value:.2%}."),
)


def load_teacher(source: str) -> nn.Module:
    """A trained B-cos classifier (folder or Hub id) as a frozen teacher, in eval mode."""
    if not source:
        raise ValueError("explanation-distillation needs a teacher: pass --teacher <folder or Hub id>")
    try:
        teacher = AutoModelForImageClassification.from_pretrained(source).eval().requires_grad_(False)
    except (OSError, ValueError, SafetensorError) as error:  # no model there, no image classifier (CLIP), corrupt
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"--teacher {source} is not a B-cos image classifier that loads ({reason})") from None
    if model_channels(teacher) != 3:
        raise ValueError(
            f"--teacher {source} takes {model_channels(teacher)}-channel images; explanation-distillation distils "
            "colour (three-channel) models."
        )
    if not hasattr(teacher, "explain"):  # its explanations are what e2KD distils
        raise ValueError(
            f"--teacher {source} is a standard {teacher.config.model_type} classifier, not a B-cos model: B-cosify and "
            "fine-tune it first (finetune --model <it> --task classification), and distil from that run's repo/."
        )
    return teacher


def check_teacher_classes(teacher: nn.Module, source: str, class_names: list[str]) -> None:
    """Refuse a teacher that does not score the data's classes, index for index: its logits would be distilled, and
    its accuracy and agreement measured, against the wrong labels. Names are matched as the evaluation matches a
    model's (:func:`~bcos_zoo.evaluation.report.class_order`; a teacher with transformers' default ``LABEL_i`` names
    only needs the same count), and must also be in the data's order."""
    try:
        order = class_order(f"--teacher {source}", teacher.config.id2label, class_names)
    except ValueError:
        order = None
    if order != list(range(len(class_names))):
        names = [str(teacher.config.id2label[index]) for index in range(len(teacher.config.id2label))]
        raise ValueError(
            f"--teacher {source} scores the classes {names}, but the data's are {class_names}: distil a teacher "
            "trained on these classes (the same names in the same order), or the data it was trained on."
        )


def teacher_pixels(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The student's pixels at the teacher's input size (bilinear): the image the student sees, at the scale the
    teacher was trained at (a CNN teacher too: it might not even take a smaller student's size)."""
    size = getattr(teacher.config, "image_size", None)
    if size is None or tuple(pixel_values.shape[-2:]) == (size, size):
        return pixel_values
    resized = F.interpolate(pixel_values, size=(size, size), mode="bilinear", align_corners=False)
    return resized.clamp(0, 1)


def teach(teacher: nn.Module, pixel_values: torch.Tensor, explain: bool = True):
    """The teacher's logits and, with ``explain``, its explanation of its own top-1 class (no graph)."""
    teacher.to(pixel_values.device)
    pixels = teacher_pixels(teacher, pixel_values).to(teacher.dtype)
    if explain:
        return teacher.explain(pixels)
    with torch.no_grad():
        return teacher(pixel_values=pixels)


class FixedTeaching:
    """ "Fixed teaching": the teacher's logits and explanations of each distinct image are computed once and reused
    in every later epoch, so the teacher runs once per image instead of once per step (the e2KD paper's setting for
    cheap distillation; it needs data without random augmentation, or the images never repeat).

    Images are recognised by their pixels (a hash of the tensor's bytes), whatever order the batches come in.
    """

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher
        self.stored: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.computed = 0  # images the teacher was run on

    def __call__(self, pixel_values: torch.Tensor, explain: bool = True) -> SimpleNamespace:
        keys = [hashlib.sha1(image.detach().cpu().numpy().tobytes()).hexdigest() for image in pixel_values]
        missing = sorted({index for index, key in enumerate(keys) if key not in self.stored}, key=keys.__getitem__)
        if missing:
            taught = teach(self.teacher, pixel_values[missing], explain=explain)
            weights = taught.dynamic_weights if explain else None
            for row, index in enumerate(missing):
                self.stored[keys[index]] = (
                    taught.logits[row].detach().cpu(),
                    None if weights is None else weights[row].detach().cpu(),
                )
            self.computed += len({keys[index] for index in missing})
        logits = torch.stack([self.stored[key][0] for key in keys]).to(pixel_values.device)
        weights = [self.stored[key][1] for key in keys]
        dynamic = None if weights[0] is None else torch.stack(weights).to(pixel_values.device)
        return SimpleNamespace(logits=logits, dynamic_weights=dynamic)


class ExplanationDistillationTrainer(ZooTrainer):
    """A ``Trainer`` whose loss is :func:`e2kd_loss` to a frozen teacher (moved to the batch's device on first use).

    The KD term differentiates the student's ordinary forward pass; the explanation term a second pass in
    explanation mode with a graph. Each term's mean is logged beside the loss.
    """

    def __init__(
        self, *args, teacher: nn.Module, temperature: float, explanation_weight: float, fixed: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.teacher, self.temperature, self.explanation_weight = teacher, temperature, explanation_weight
        self.teaching = FixedTeaching(teacher) if fixed else functools.partial(teach, teacher)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        explain = self.explanation_weight > 0
        taught = self.teaching(pixel_values, explain=explain)
        outputs = model(pixel_values=pixel_values)
        student_weights = teacher_weights = None
        if explain:
            target = taught.logits.argmax(dim=1)
            unwrapped = self.accelerator.unwrap_model(model)
            with frozen_running_statistics(unwrapped):  # the same batch again: count its statistics once
                student = differentiable_explanation(unwrapped, pixel_values, target)
            student_weights, teacher_weights = student.dynamic_weights, taught.dynamic_weights
        terms = e2kd_loss(
            outputs.logits,
            taught.logits,
            student_weights,
            teacher_weights,
            temperature=self.temperature,
            explanation_weight=self.explanation_weight,
        )
        if model.training:
            for name, value in terms.items():
                if name != "loss":
                    self.tally(f"{name}_loss", value.detach(), count=len(pixel_values))
        return (terms["loss"], outputs) if return_outputs else terms["loss"]


@torch.no_grad()
def distillation_scores(student: nn.Module, teacher: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
    """Student and teacher accuracy, top-1 agreement, the mean cosine of the student's explanation ``W(x)`` to the
    teacher's (both for the teacher's top-1 class) and, over items with boxes, the student's EPG for the label."""
    device = next(student.parameters()).device
    student.eval()
    teacher.to(device)
    totals: dict[str, float] = defaultdict(float)
    epg: list[float] = []
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_boxed):
        pixels, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        taught = teach(teacher, pixels)
        top1 = taught.logits.argmax(dim=1)
        explained = student.explain(pixels.to(student.dtype), target=top1)
        predicted = explained.logits.argmax(dim=1)
        totals["accuracy"] += float((predicted == labels).sum())
        totals["teacher_accuracy"] += float((top1 == labels).sum())
        totals["agreement"] += float((predicted == top1).sum())
        totals["explanation_cosine"] += float(
            explanation_cosine(explained.dynamic_weights.float(), taught.dynamic_weights.float()).sum()
        )
        count += len(labels)
        masks = batch["box_masks"].to(device)
        boxed = masks.flatten(1).any(dim=1)
        if bool(boxed.any()):
            contributions = student.explain(pixels[boxed].to(student.dtype), target=labels[boxed]).contributions
            epg += energy_pointing_scores(contributions, masks[boxed]).tolist()
    metrics = {name: value / max(count, 1) for name, value in totals.items()}
    if epg:
        metrics["epg"] = sum(epg) / len(epg)
    return metrics


class ExplanationDistillation(GuidedClassification):
    """Distil a frozen B-cos teacher into a B-cos student with e2KD (plain KD when ``explanation_weight`` is 0).

    Data, transforms and model building are those of guided classification (items may carry boxes, which only the
    evaluation reads).
    """

    name = "explanation-distillation"
    trains_on_boxes = False  # boxes, where the data has them, serve the evaluation (EPG) only

    @property
    def card(self) -> CardFields:
        recipe = self.recipe
        return replace(
            BcosClassification.card,
            objective="e2KD: T^2 KL to the teacher + lambda_exp (1 - cos of the explanations W(x))"
            if recipe.explanation_weight
            else "knowledge distillation: T^2 KL to the teacher",
            tags=("knowledge-distillation", "e2kd") if recipe.explanation_weight else ("knowledge-distillation",),
            measured=DISTILLATION_MEASURED,
            citation=E2KD_CITATION if recipe.explanation_weight else "",
            hyperparameters=(
                ("teacher", describe_source(recipe.teacher)[0] if recipe.teacher else None),
                ("teaching", "fixed (teacher outputs computed once per image)" if recipe.fixed_teaching else "online"),
                ("explanation weight lambda_exp", recipe.explanation_weight),
                ("temperature T", recipe.kd_temperature),
                ("explained layer", "input (dynamic weights W(x) over [x, 1 - x])"),
            ),
        )

    def build_model(self, class_names: list[str]) -> nn.Module:
        """The student, once the teacher is known to score the data's classes (checked before anything is built)."""
        check_classes(class_names)
        check_teacher_classes(self.teacher, self.recipe.teacher, class_names)
        return super().build_model(class_names)

    @property
    def teacher(self) -> nn.Module:
        if not hasattr(self, "_teacher"):
            self._teacher = load_teacher(self.recipe.teacher)
        return self._teacher

    def dataset(self, items: Dataset, transform, seed: int | None = None) -> Dataset:
        return BoxedImages(items, transform, seed=seed, box_fraction=1.0, box_seed=self.recipe.seed)

    def training_arguments(self) -> dict:
        return dict(prediction_loss_only=True)

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> Trainer:
        return ExplanationDistillationTrainer(
            model=model,
            args=arguments,
            teacher=self.teacher,
            temperature=self.recipe.kd_temperature,
            explanation_weight=self.recipe.explanation_weight,
            fixed=self.recipe.fixed_teaching,
            **common,
        )

    def train_transform(self, model: nn.Module):
        """With fixed teaching the student sees each image as the teacher saw it once: no random augmentation."""
        return self.eval_transform(model) if self.recipe.fixed_teaching else super().train_transform(model)

    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset) -> dict[str, float]:
        return distillation_scores(model, self.teacher, eval_dataset, self.recipe.batch_size)
