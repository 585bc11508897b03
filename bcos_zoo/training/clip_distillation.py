"""CLIP distillation, the B-cosification paper's objective for CLIP: the B-cos image tower learns to reproduce the
frozen original tower's embeddings of the same images (SigLIP-style, see ``siglip_distillation_loss``)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils.logging import tqdm  # tqdm.auto, off where transformers' progress bars are

from ..conversion.clip import StandardCLIP, load_standard_clip
from ..conversion.common import IDENTITY_NORMALIZATION, OPENAI_CLIP_NORMALIZATION
from ..conversion.open_clip import OpenCLIPSource
from ..data.datasets import DatasetSplits
from ..modeling import BcosCLIPModel, BcosCLIPVisionModel
from .classification import classification_accuracy
from .task import BCOS_MODEL_TYPES, CardFields, Task, source_model_type
from .trainer import ZooTrainer, collate_images


def siglip_distillation_loss(
    student_embeds: torch.Tensor,
    teacher_embeds: torch.Tensor,
    scale: float = 10.0,
    bias: float = -10.0,
    first: int = 0,
):
    """The B-cosification paper's CLIP objective: SigLIP-style distillation of (N, P) student image embeddings to the
    original tower's for the same images. Each (student i, teacher j) pair is a binary problem, positive when
    ``j`` is student i's own image: ``-mean log sigmoid(label_ij (scale <s_i, t_j> + bias))`` on unit vectors.

    ``teacher_embeds`` may hold more images than the students (the whole batch of several processes); student i's own
    teacher is then row ``first + i``. The mean over each process's pairs, averaged over the processes as data-parallel
    gradients are, is the loss of the whole batch in one process."""
    both_2d = student_embeds.ndim == teacher_embeds.ndim == 2
    if (
        not both_2d
        or student_embeds.shape[1] != teacher_embeds.shape[1]
        or first + len(student_embeds) > len(teacher_embeds)
    ):
        raise ValueError(
            "student_embeds and teacher_embeds must both have shape (batch, projection_dim) (the teachers: at least "
            f"{first} + batch rows), got {tuple(student_embeds.shape)} and {tuple(teacher_embeds.shape)}."
        )
    student = F.normalize(student_embeds, dim=-1)
    teacher = F.normalize(teacher_embeds.detach().to(student.dtype), dim=-1)
    own = torch.arange(len(student), device=student.device)
    labels = -torch.ones(len(student), len(teacher), device=student.device, dtype=student.dtype)
    labels[own, first + own] = 1
    return -F.logsigmoid(labels * (scale * student @ teacher.T + bias)).mean()


class FrozenCLIPTeacher(nn.Module):
    """The original CLIP image tower as a frozen teacher that takes images in [0, 1], like the B-cos student.

    The teacher (a transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection``) sees the images normalised as it
    was trained, so one batch of ``pixel_values`` serves both. It stays frozen and in eval mode whatever ``train()``
    is called with.
    """

    def __init__(
        self,
        teacher: nn.Module,
        image_mean: Sequence[float] = OPENAI_CLIP_NORMALIZATION[0],
        image_std: Sequence[float] = OPENAI_CLIP_NORMALIZATION[1],
    ):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "FrozenCLIPTeacher":
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, P) the teacher's image embeddings of images in [0, 1]."""
        normalized = (pixel_values - self.image_mean.to(pixel_values)) / self.image_std.to(pixel_values)
        dtype = next(self.teacher.parameters()).dtype
        if hasattr(self.teacher, "get_image_features"):
            outputs = self.teacher.get_image_features(pixel_values=normalized.to(dtype))
        else:
            outputs = self.teacher(pixel_values=normalized.to(dtype))
        if isinstance(outputs, torch.Tensor):
            return outputs
        embeds = getattr(outputs, "image_embeds", None)
        return embeds if embeds is not None else outputs.pooler_output


class DistillationTrainer(ZooTrainer):
    """A ``Trainer`` whose loss is the SigLIP-style distillation to a frozen teacher's image embeddings.

    ``teacher`` is a :class:`FrozenCLIPTeacher`; it is moved to the batch's device on first use and never trained.
    The loss is computed from the student's ``forward(pixel_values=)``, the call data-parallel wrappers see. With
    several processes each student embedding is paired with the teachers of the whole global batch (gathered), so N
    processes train as one process with the global batch would (accelerate gives every process an equal batch).
    Gradient accumulation pairs the images of each accumulated batch among themselves.
    """

    def __init__(self, *args, teacher: FrozenCLIPTeacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        self.teacher.to(pixel_values.device)
        outputs = model(pixel_values=pixel_values)
        teacher, first = self.teacher.teacher_embeds(pixel_values), 0
        if self.accelerator.num_processes > 1:  # pair each image with every image of the global batch, as one process
            teacher, first = (
                self.accelerator.gather(teacher.contiguous()),
                self.accelerator.process_index * len(teacher),
            )
        loss = siglip_distillation_loss(outputs.image_embeds, teacher, first=first)
        return (loss, outputs) if return_outputs else loss


def prompt_embeds(model: nn.Module, class_names: list[str]) -> torch.Tensor:
    """Normalised text embeddings of ``a photo of a <class>.`` for zero-shot classification."""
    embeds = model._encode_prompts([f"a photo of a {name}." for name in class_names])
    return embeds / embeds.norm(dim=-1, keepdim=True)


@torch.no_grad()
def mean_embedding_cosine(model: nn.Module, teacher: FrozenCLIPTeacher, dataset, batch_size: int) -> float:
    """How closely the B-cos tower reproduces the original's image embeddings (1 = identical directions)."""
    device = next(model.parameters()).device
    teacher.to(device)
    total, count = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    for batch in tqdm(loader, desc="embedding cosine", leave=False):
        pixel_values = batch["pixel_values"].to(device)
        student = model.get_image_features(pixel_values=pixel_values).pooler_output
        total += float(torch.cosine_similarity(student, teacher.teacher_embeds(pixel_values), dim=-1).sum())
        count += len(pixel_values)
    return total / max(count, 1)


class CLIPDistillation(Task):
    """B-cosify a CLIP model's image tower and distil it to the original tower; the text tower stays frozen.

    Needs images only; with labelled data, zero-shot accuracy (prompts ``a photo of a <class>.``) is reported for
    the trained model and for its source.
    """

    name = "clip-distillation"
    # the source as build_model read it: the teacher, the student's B-cosification and the evaluated source
    standard: StandardCLIP | OpenCLIPSource | None = None
    card = CardFields(
        pipeline_tag="zero-shot-image-classification",
        metric_key="zero_shot_accuracy",
        metric_label="Zero-shot top-1 accuracy",
        measured=(
            (
                "embedding_cosine",
                "Mean cosine between the model's image embeddings and the original CLIP's, on {dataset} "
                "({evaluation}): {value:.4f}.",
            ),
        ),
        objective="SigLIP-style distillation",
        tags=("clip",),
    )

    def build_model(self, class_names: list[str]) -> nn.Module:
        recipe = self.recipe
        try:
            model_type = source_model_type(recipe.source)
        except OSError:  # no config.json: open_clip's Hub layout
            model_type = None
        if model_type in BCOS_MODEL_TYPES:
            raise ValueError(
                "clip-distillation starts from the original CLIP checkpoint, which is also the teacher; "
                "to continue an interrupted run, use --resume with the same --output-dir."
            )
        self.standard = load_standard_clip(recipe.source, vision_only=False)
        if isinstance(self.standard, OpenCLIPSource):  # the teacher is its exact B-cos form at B = 1, on [0, 1] images
            teacher = BcosCLIPVisionModel.from_pretrained_standard(self.standard, b=1.0, bias="keep")
            self.teacher = FrozenCLIPTeacher(teacher, *IDENTITY_NORMALIZATION)
        else:
            mean, std = self.standard.mean, self.standard.std
            if mean is None or std is None:
                mean, std = OPENAI_CLIP_NORMALIZATION
            self.teacher = FrozenCLIPTeacher(self.standard.model, image_mean=mean, image_std=std)
        return BcosCLIPModel.from_pretrained_standard(self.standard, b=recipe.b, bias=recipe.bias)

    def source_model(self) -> nn.Module | None:
        source = self.standard or self.recipe.source
        return BcosCLIPModel.from_pretrained_standard(source, b=1.0, bias="keep")

    def image_size(self, model: nn.Module) -> int:
        return model.vision_config.image_size

    def training_arguments(self) -> dict:
        # the loss is the only output; the unused logit scale must not stall data-parallel training
        return dict(prediction_loss_only=True, ddp_find_unused_parameters=True)

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> ZooTrainer:
        return DistillationTrainer(model=model, args=arguments, teacher=self.teacher, **common)

    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset) -> dict[str, float]:
        batch_size = self.recipe.batch_size
        metrics = {"embedding_cosine": mean_embedding_cosine(model, self.teacher, eval_dataset, batch_size)}
        if not (self.recipe.label_column and data.class_names):
            return metrics
        device = next(model.parameters()).device
        texts = prompt_embeds(model, data.class_names).to(device)
        metrics["zero_shot_accuracy"] = classification_accuracy(
            ZeroShotClassifier(model, texts), eval_dataset, batch_size, workers=self.workers
        )
        source = self.source_model().to(device)
        metrics["source_zero_shot_accuracy"] = classification_accuracy(
            ZeroShotClassifier(source, texts), eval_dataset, batch_size, workers=self.workers
        )
        return metrics

    def explain_examples(self, model, data, pixel_values):
        if not (self.recipe.label_column and data.class_names):
            return None
        return model.explain(pixel_values, text_embeds=prompt_embeds(model, data.class_names))


class ZeroShotClassifier(nn.Module):
    """A CLIP image tower and fixed prompt embeddings as an image classifier: ``logits`` are the cosines' numerators
    (image embedding . normalised prompt embedding), whose argmax is the zero-shot prediction."""

    def __init__(self, clip: nn.Module, prompt_embeds: torch.Tensor):
        super().__init__()
        self.clip = clip
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.dtype

    def forward(self, pixel_values: torch.Tensor):
        embeds = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        return ImageClassifierOutput(logits=embeds @ self.prompt_embeds.T.to(embeds))
