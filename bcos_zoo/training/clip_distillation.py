"""CLIP distillation, the B-cosification paper's objective for CLIP: the B-cos image tower learns to reproduce the
frozen original tower's embeddings of the same images (SigLIP-style, see ``siglip_distillation_loss``)."""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import Trainer

from ..conversion.common import OPENAI_CLIP_NORMALIZATION


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


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is the SigLIP-style distillation to a frozen teacher's image embeddings.

    ``teacher`` is a :class:`FrozenCLIPTeacher`; it is moved to the batch's device on first use and never trained.
    The student's ``forward(pixel_values=, teacher_embeds=)`` returns the loss.
    """

    def __init__(self, *args, teacher: FrozenCLIPTeacher, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        self.teacher.to(pixel_values.device)
        outputs = model(pixel_values=pixel_values, teacher_embeds=self.teacher.teacher_embeds(pixel_values))
        return (outputs.loss, outputs) if return_outputs else outputs.loss
