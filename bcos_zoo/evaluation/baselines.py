"""Post-hoc attribution methods for a standard classifier, the baselines B-cos explanations are compared against.

Each method explains a :class:`StandardClassifier`: a transformers image classifier of a family that lists
post-hoc methods in ``bcos_zoo.families`` (a ViT or a ResNet), taking images in [0, 1] and applying its own mean/std
normalisation inside, so that a post-hoc method sees exactly the pixels the model's B-cos form sees and its
attributions live on the same (N, H, W) pixel grid. Gradient methods come from captum; attention rollout needs
attention, so only a ViT has it.

    classifier = load_standard_classifier("google/vit-base-patch16-224")
    attribute = posthoc_attribution(classifier, "integrated_gradients")
    maps = attribute(images, targets)        # (N, 3, H, W) in [0, 1], (N,) -> (N, H, W)
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedModel, ResNetForImageClassification
from transformers.image_processing_utils import BaseImageProcessor

from ..conversion.common import VIT_DEFAULT_NORMALIZATION, read_json, resolve_folder, source_normalization
from ..conversion.resnet import processor_geometry
from ..families import FAMILIES, Family, family_of
from ..modeling import BcosResNetConfig
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


def explained_family(model_type: str | None) -> Family | None:
    """The family of a standard (transformers) ``model_type`` whose classifiers the baselines explain, else None."""
    family = family_of(model_type)
    return family if family and family.posthoc_methods and model_type in family.model_types else None


def explained_families() -> str:
    """The families whose standard classifiers the baselines explain, for messages: ``"ViT or ResNet"``."""
    return " or ".join(family.label for family in FAMILIES.values() if family.posthoc_methods)


class StandardClassifier(nn.Module):
    """A standard ViT or ResNet classifier that takes images in [0, 1], like a B-cos model, and returns logits.

    The source's normalisation ``(x - mean) / std`` is the first step of :meth:`forward`, so gradients are taken
    with respect to the [0, 1] pixels. ``geometry`` (a CNN's ``image_size`` and ``crop_pct``, as its processor
    states them) decides the evaluation pixels, as it does for the model's B-cos form.
    """

    def __init__(self, model: PreTrainedModel, mean, std, **geometry):
        super().__init__()
        classifier = type(model).__name__.endswith("ForImageClassification")  # transformers' name for a classifier
        if not (classifier and explained_family(getattr(model.config, "model_type", None))):
            raise ValueError(
                f"A {type(model).__name__} cannot be explained by the post-hoc baselines; they explain transformers "
                f"{explained_families()} image classifiers."
            )
        self.model = model
        self.geometry = geometry
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        # GradCAM reads the patch tokens through this no-op as an (N, D, rows, cols) feature map (see gradcam()).
        self.patch_grid = nn.Identity()

    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> Family:
        return explained_family(self.config.model_type)

    @property
    def methods(self) -> tuple[str, ...]:
        """The post-hoc methods that apply to this classifier."""
        return self.family.posthoc_methods

    @property
    def image_size(self) -> int:
        """A ViT's own input size; a CNN takes any, and is evaluated at the size its processor states."""
        default = BcosResNetConfig().image_size
        return getattr(self.config, "image_size", None) or self.geometry.get("image_size", default)

    def default_image_processor(self) -> BaseImageProcessor:
        """The processor a B-cos model of this source saves: a ViT's resizes to the input size, a CNN's resizes the
        shortest edge to ``image_size / crop_pct`` and crops the centre; both rescale to [0, 1] and do not normalise
        (that happens in :meth:`forward`), so the source and its B-cos form see the same pixels."""
        crop_pct = self.geometry.get("crop_pct", BcosResNetConfig().crop_pct)
        return self.family.processor(self.image_size, crop_pct, do_rescale=True, do_normalize=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.model.dtype)
        return self.model(pixel_values=(pixel_values - self.mean.to(pixel_values)) / self.std.to(pixel_values)).logits


def load_standard_classifier(
    source: str | Path | PreTrainedModel,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
) -> StandardClassifier:
    """A transformers ViT or ResNet classifier (folder, Hub id or loaded model) with its normalisation, in eval mode.

    Mean and std are ``image_mean``/``image_std`` when given, else what the folder states (read as the
    B-cosification reads it: ``conversion.common.source_normalization``; no change when it does not normalise),
    else transformers' default of 0.5. A ResNet folder's processor also gives the evaluation geometry
    (``image_size``, ``crop_pct``) its B-cos form is saved with.
    """
    mean, std = VIT_DEFAULT_NORMALIZATION
    geometry = {}
    if isinstance(source, nn.Module):
        model = source
    else:
        folder = resolve_folder(source, f"a transformers {explained_families()} image classifier (folder or Hub id)")
        model_type = (read_json(folder / "config.json") or {}).get("model_type")
        if explained_family(model_type) is None:
            raise ValueError(
                f"{source} is not a transformers {explained_families()} image classifier (model_type {model_type!r}); "
                "the post-hoc baselines explain those."
            )
        model = AutoModelForImageClassification.from_pretrained(folder)
        mean, std = source_normalization(folder) or (mean, std)
        geometry = processor_geometry(processor=read_json(folder / "preprocessor_config.json"))
    mean = image_mean if image_mean is not None else mean
    std = image_std if image_std is not None else std
    return StandardClassifier(model, mean, std, **geometry).eval()


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


@contextmanager
def gradcam_feature_map(classifier: StandardClassifier, height: int, width: int) -> Iterator[nn.Module]:
    """The module whose output is the feature map GradCAM weighs, for images of ``height`` x ``width``.

    A ResNet's is the last stage's output (the last convolutional features before pooling). A ViT has none: with a
    class token, the last block's *output* patch tokens never reach the logits, so their gradient is zero; the patch
    tokens after the last block's first LayerNorm are the last ones the class token attends to. While the context
    is open, they are reshaped into an (N, D, rows, cols) map that passes through ``classifier.patch_grid``.
    """
    if isinstance(classifier.model, ResNetForImageClassification):
        yield classifier.model.resnet.encoder.stages[-1]
        return
    rows, cols = patch_rows_cols(classifier, height, width)

    def tokens_as_grid(module, inputs, tokens):
        prefix, patches = tokens[:, : -rows * cols], tokens[:, -rows * cols :]
        grid = patches.transpose(1, 2).reshape(len(tokens), -1, rows, cols)
        return torch.cat([prefix, classifier.patch_grid(grid).flatten(2).transpose(1, 2)], dim=1)

    last_norm = classifier.model.vit.layers[-1].layernorm_before
    handle = last_norm.register_forward_hook(tokens_as_grid)
    try:
        yield classifier.patch_grid
    finally:
        handle.remove()


def gradcam(classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GradCAM: the ReLU of the feature map (:func:`gradcam_feature_map`) weighted per channel by the spatial mean
    of the target logit's gradient, upsampled bilinearly to pixels."""
    from captum.attr import LayerAttribution, LayerGradCam

    height, width = images.shape[-2:]
    with gradcam_feature_map(classifier, height, width) as layer, torch.enable_grad():
        cam = LayerGradCam(classifier, layer).attribute(images, target=targets, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), (height, width), "bilinear")[:, 0]


def check_method(classifier: StandardClassifier, method: str) -> None:
    """Refuse a method that does not apply to the classifier's family, naming those that do."""
    if method not in POSTHOC_METHODS:
        raise ValueError(f"Unknown post-hoc method {method!r}; available: {', '.join(POSTHOC_METHODS)}.")
    if method not in classifier.methods:
        reason = " (it needs attention matrices; a CNN has none)" if method == "attention_rollout" else ""
        raise ValueError(
            f"{METHOD_NAMES[method]} does not apply to a {classifier.family.label} classifier{reason}; methods for it: "
            f"{', '.join(classifier.methods)}."
        )


@torch.no_grad()
def attention_rollout(classifier: StandardClassifier, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): the class token's row of the product of head-averaged attention
    matrices with the residual added, ``A' = (A + I) / 2``, over the patch tokens, upsampled bilinearly.

    Class-agnostic: ``targets`` is accepted for the common interface and ignored.
    """
    check_method(classifier, "attention_rollout")
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

    ``options`` go to the method (``steps`` for integrated gradients). A method that does not apply to the
    classifier (attention rollout of a CNN) is refused here, before any image is explained.
    """
    methods = {
        "input_x_gradient": input_x_gradient,
        "integrated_gradients": integrated_gradients,
        "gradcam": gradcam,
        "attention_rollout": attention_rollout,
    }
    check_method(classifier, method)
    return partial(methods[method], classifier, **options)
