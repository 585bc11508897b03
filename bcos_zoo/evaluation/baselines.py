"""Post-hoc attribution methods for a standard ViT classifier, the baselines B-cos explanations are compared against.

Each method explains a :class:`StandardClassifier`: a transformers ``ViTForImageClassification`` that takes images in
[0, 1] and applies its own mean/std normalisation inside, so that a post-hoc method sees exactly the pixels a B-cos
model sees and its attributions live on the same (N, H, W) pixel grid. Gradient methods come from captum.

    classifier = load_standard_classifier("google/vit-base-patch16-224")
    attribute = posthoc_attribution(classifier, "integrated_gradients")
    maps = attribute(images, targets)        # (N, 3, H, W) in [0, 1], (N,) -> (N, H, W)
"""

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTForImageClassification, ViTImageProcessor

from ..conversion.common import VIT_DEFAULT_NORMALIZATION, read_json, resolve_folder, source_normalization
from .localisation import AttributionFn


POSTHOC_METHODS = ("input_x_gradient", "integrated_gradients", "gradcam", "attention_rollout")
# How reports and plots name each explanation method ("bcos": a B-cos model's own contributions).
METHOD_NAMES = {
    "bcos": "B-cos contributions",
    "input_x_gradient": "Input x Gradient",
    "integrated_gradients": "Integrated Gradients",
    "gradcam": "GradCAM",
    "attention_rollout": "Attention Rollout",
}


class StandardClassifier(nn.Module):
    """A standard ViT classifier that takes images in [0, 1], like a B-cos model, and returns logits.

    The source's normalisation ``(x - mean) / std`` is the first step of :meth:`forward`, so gradients are taken
    with respect to the [0, 1] pixels.
    """

    def __init__(self, model: ViTForImageClassification, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # GradCAM reads the patch tokens through this no-op as an (N, D, rows, cols) feature map (see gradcam()).
        self.patch_grid = nn.Identity()

    @property
    def config(self):
        return self.model.config

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def default_image_processor(self) -> ViTImageProcessor:
        """The processor a B-cos model of this source saves: resize to the input size, rescale to [0, 1], no
        normalisation (that happens in :meth:`forward`), so the source and its B-cos form see the same pixels."""
        size = self.image_size
        return ViTImageProcessor(size={"height": size, "width": size}, do_rescale=True, do_normalize=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.model.dtype)
        return self.model(pixel_values=(pixel_values - self.mean.to(pixel_values)) / self.std.to(pixel_values)).logits


def load_standard_classifier(
    source: str | Path | ViTForImageClassification,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
) -> StandardClassifier:
    """A transformers ViT classifier (folder, Hub id or loaded model) with its normalisation, in eval mode.

    Mean and std are ``image_mean``/``image_std`` when given, else the folder's ``preprocessor_config.json`` (no
    change when it does not normalise), else transformers' ViT default of 0.5.
    """
    mean, std = VIT_DEFAULT_NORMALIZATION
    if isinstance(source, ViTForImageClassification):
        model = source
    else:
        folder = resolve_folder(source, "a transformers ViTForImageClassification (folder or Hub id)")
        config = read_json(folder / "config.json") or {}
        if config.get("model_type") != "vit":
            raise ValueError(
                f"{source} is not a transformers ViT image classifier (model_type {config.get('model_type')!r}); "
                "the post-hoc baselines explain ViTForImageClassification sources."
            )
        model = ViTForImageClassification.from_pretrained(folder)
        mean, std = source_normalization(folder) or (mean, std)
    mean = image_mean if image_mean is not None else mean
    std = image_std if image_std is not None else std
    return StandardClassifier(model, mean, std).eval()


def _channel_sum(attributions: torch.Tensor) -> torch.Tensor:
    return attributions.sum(dim=1).detach()


def _gradient_leaf(images: torch.Tensor) -> torch.Tensor:
    return images.detach().requires_grad_(True)


def input_x_gradient(classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Input times the gradient of the target logit, summed over colour channels."""
    from captum.attr import InputXGradient

    with torch.enable_grad():
        return _channel_sum(InputXGradient(classifier).attribute(_gradient_leaf(images), target=targets))


def integrated_gradients(
    classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor, steps: int = 32
) -> torch.Tensor:
    """Integrated gradients from a black image (all zeros in [0, 1]), ``steps`` Riemann steps, summed over channels."""
    from captum.attr import IntegratedGradients

    with torch.enable_grad():
        attributions = IntegratedGradients(classifier).attribute(
            _gradient_leaf(images), baselines=0.0, target=targets, n_steps=steps, internal_batch_size=len(images)
        )
    return _channel_sum(attributions)


def patch_rows_cols(classifier: StandardClassifier, height: int, width: int) -> tuple[int, int]:
    patch = classifier.model.config.patch_size
    return height // patch, width // patch


def gradcam(classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GradCAM on the tokens entering the last block's attention, upsampled bilinearly to pixels.

    With a class token, the last block's *output* patch tokens never reach the logits, so their gradient is zero;
    the patch tokens after the last block's first LayerNorm are the last ones the class token attends to. They are
    reshaped into an (N, D, rows, cols) feature map (the ViT analogue of the last conv layer) for captum.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    height, width = images.shape[-2:]
    rows, cols = patch_rows_cols(classifier, height, width)

    def tokens_as_grid(module, inputs, tokens):
        prefix, patches = tokens[:, : -rows * cols], tokens[:, -rows * cols :]
        grid = patches.transpose(1, 2).reshape(len(tokens), -1, rows, cols)
        return torch.cat([prefix, classifier.patch_grid(grid).flatten(2).transpose(1, 2)], dim=1)

    last_norm = classifier.model.vit.layers[-1].layernorm_before
    handle = last_norm.register_forward_hook(tokens_as_grid)
    try:
        with torch.enable_grad():
            cam = LayerGradCam(classifier, classifier.patch_grid).attribute(
                images, target=targets, relu_attributions=True
            )
    finally:
        handle.remove()
    return LayerAttribution.interpolate(cam.detach(), (height, width), "bilinear")[:, 0]


@torch.no_grad()
def attention_rollout(classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): the class token's row of the product of head-averaged attention
    matrices with the residual added, ``A' = (A + I) / 2``, over the patch tokens, upsampled bilinearly.

    Class-agnostic: ``targets`` is accepted for the common interface and ignored.
    """
    model = classifier.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # only eager attention returns the attention matrices
    try:
        pixels = images.to(model.dtype)
        normalised = (pixels - classifier.mean.to(pixels)) / classifier.std.to(pixels)
        attentions = model(pixel_values=normalised, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    tokens = attentions[0].shape[-1]
    identity = torch.eye(tokens, dtype=attentions[0].dtype, device=images.device)
    rollout = identity.expand(len(images), tokens, tokens)
    for attention in attentions:
        rollout = ((attention.mean(dim=1) + identity) / 2) @ rollout
    height, width = images.shape[-2:]
    rows, cols = patch_rows_cols(classifier, height, width)
    patch_relevance = rollout[:, 0, tokens - rows * cols :].reshape(len(images), 1, rows, cols)
    return F.interpolate(patch_relevance, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def posthoc_attribution(classifier: StandardClassifier, method: str, **options) -> AttributionFn:
    """``attribute(images (N, 3, H, W) in [0, 1], targets (N,)) -> (N, H, W)`` for one of :data:`POSTHOC_METHODS`.

    ``options`` go to the method (``steps`` for integrated gradients).
    """
    methods = {
        "input_x_gradient": input_x_gradient,
        "integrated_gradients": integrated_gradients,
        "gradcam": gradcam,
        "attention_rollout": attention_rollout,
    }
    if method not in methods:
        raise ValueError(f"Unknown post-hoc method {method!r}; available: {', '.join(POSTHOC_METHODS)}.")
    return partial(methods[method], classifier, **options)
