"""Post-hoc attribution methods, the baselines B-cos explanations are compared against (the B-cos v2 set).

Each method explains a :class:`StandardClassifier`: a transformers image classifier of a family that lists
post-hoc methods in ``bcos_zoo.families`` (a ViT or a ResNet), taking images in [0, 1] and applying its own mean/std
normalisation inside, so that a post-hoc method sees exactly the pixels the model's B-cos form sees and its
attributions live on the same (N, H, W) pixel grid. The methods that need only the model's function
(:data:`FUNCTION_METHODS`) also explain a B-cos model itself (:class:`BcosClassifier`, its ordinary forward, not
its explanation mode), so that post-hoc maps of a B-cos model can be set beside its own contributions.

Gradient, Input x Gradient, Integrated Gradients, Guided Backprop, DeepLIFT, GradCAM and LIME come from captum; RISE
is written here (captum has none), and so is Occlusion (captum's squares must tile the image); attention rollout needs
attention, so only a ViT has it. Gradient
methods sum their per-channel maps over the colour channels; perturbation methods (Occlusion, LIME, RISE) perturb
whole pixels and give one value per pixel.

    classifier = load_standard_classifier("google/vit-base-patch16-224")
    attribute = posthoc_attribution(classifier, "integrated_gradients")
    maps = attribute(images, targets)        # (N, 3, H, W) in [0, 1], (N,) -> (N, H, W)
    posthoc_attribution(bcos_model, "deeplift")(images, targets)   # the same on a B-cos model
"""

import importlib.util
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedModel, ResNetForImageClassification
from transformers.image_processing_utils import BaseImageProcessor

from ..conversion.common import (
    bcos_crop,
    processor_resize,
    read_json,
    resolve_folder,
    source_normalization,
    source_processor,
    vit_default_normalization,
)
from ..data.preprocessing import config_channels
from ..families import FAMILIES, Family, family_of
from ..modeling import BcosResNetConfig
from ..modeling.bcos_pretrained import resizing_processor
from .localisation import AttributionFn


POSTHOC_METHODS = (
    "input_x_gradient",
    "integrated_gradients",
    "gradcam",
    "attention_rollout",
    "gradient",
    "guided_backprop",
    "deeplift",
    "occlusion",
    "lime",
    "rise",
)
# The methods that need only the model's function (and its gradient): they explain any classifier, B-cos included.
FUNCTION_METHODS = (
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "deeplift",
    "occlusion",
    "lime",
    "rise",
)
# What the evaluation scripts run unless asked for more: Occlusion, LIME and RISE cost hundreds of forward passes
# per image, and on a grid explained in sliding windows, per window.
DEFAULT_METHODS = ("input_x_gradient", "integrated_gradients", "gradcam", "attention_rollout")
# How reports and plots name each explanation method ("bcos": a B-cos model's own contributions).
METHOD_NAMES = {
    "bcos": "B-cos contributions",
    "input_x_gradient": "Input x Gradient",
    "integrated_gradients": "Integrated Gradients",
    "gradcam": "GradCAM",
    "attention_rollout": "Attention Rollout",
    "gradient": "Gradient",
    "guided_backprop": "Guided Backprop",
    "deeplift": "DeepLIFT",
    "occlusion": "Occlusion",
    "lime": "LIME",
    "rise": "RISE",
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
        """The processor a B-cos model of this source saves: its resize and crop as the source's processor states
        them, else as the family's B-cos config has them by default; it rescales to [0, 1] and does not normalise
        (that happens in :meth:`forward`), so the source and its B-cos form see the same pixels."""
        config_class = self.family.classifier.config_class
        crop_pct = bcos_crop(config_class, self.geometry.get("crop_pct", config_class().crop_pct))
        resample = self.geometry.get("resample", config_class().resample)
        return resizing_processor(self.image_size, crop_pct, resample, do_rescale=True, do_normalize=False)

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
    geometry, normalization = {}, None
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
        normalization = source_normalization(folder)
        geometry = processor_resize(source_processor(folder) or {})
    channels = config_channels(getattr(model, "config", None))  # (StandardClassifier checks the model's kind)
    mean, std = normalization or vit_default_normalization(channels)
    mean = image_mean if image_mean is not None else mean
    std = image_std if image_std is not None else std
    return StandardClassifier(model, mean, std, **geometry).eval()


class BcosClassifier(nn.Module):
    """A B-cos image classifier as a function of [0, 1] images to logits, for the methods of
    :data:`FUNCTION_METHODS`.

    It is the model's ordinary forward, not its explanation mode: post-hoc methods see a B-cos model as any other
    network (its gradient here is the true gradient, not the dynamic weights ``W(x)`` of its own explanation).
    """

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        if not hasattr(model, "explain"):
            raise ValueError(f"A {type(model).__name__} is not a B-cos model (it has no explain()).")
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def methods(self) -> tuple[str, ...]:
        return FUNCTION_METHODS

    def default_image_processor(self) -> BaseImageProcessor:
        return self.model.default_image_processor()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values.to(self.model.dtype)).logits


Classifier = StandardClassifier | BcosClassifier


def as_classifier(model: nn.Module) -> Classifier:
    """The classifier the post-hoc methods explain: a :class:`StandardClassifier` or :class:`BcosClassifier` as it
    is, a B-cos model (anything with ``explain()``) wrapped in a :class:`BcosClassifier`."""
    if isinstance(model, (StandardClassifier, BcosClassifier)):
        return model
    if hasattr(model, "explain") and hasattr(model, "config"):
        return BcosClassifier(model)
    raise ValueError(
        f"Post-hoc methods explain a standard classifier (load_standard_classifier) or a B-cos model, not a "
        f"{type(model).__name__}."
    )


def _channel_sum(attributions: torch.Tensor) -> torch.Tensor:
    return attributions.sum(dim=1).detach()


def _gradient_leaf(images: torch.Tensor) -> torch.Tensor:
    return images.detach().requires_grad_(True)


def input_x_gradient(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Input times the gradient of the target logit, summed over colour channels."""
    from captum.attr import InputXGradient

    with torch.enable_grad():
        return _channel_sum(InputXGradient(classifier).attribute(_gradient_leaf(images), target=targets))


def integrated_gradients(
    classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int = 32
) -> torch.Tensor:
    """Integrated gradients from a black image (all zeros in [0, 1]), summed over channels: the path integral of
    the gradient by captum's default rule, Gauss-Legendre quadrature at ``steps`` points (exact for a gradient
    polynomial in the path position up to degree ``2 * steps - 1``, where Riemann sums are not)."""
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


def gradient(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """The gradient of the target logit (Simonyan et al., 2014: its absolute value; ``absolute=False`` keeps the
    sign), summed over colour channels."""
    from captum.attr import Saliency

    with torch.enable_grad():
        return _channel_sum(Saliency(classifier).attribute(_gradient_leaf(images), target=targets, abs=absolute))


def guided_backprop(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Guided Backprop (Springenberg et al., 2015), captum: the gradient of the target logit with every ``nn.ReLU``
    passing back only positive gradients, summed over colour channels. captum changes ``nn.ReLU`` modules only: a
    network without any (a ViT's GELU, a B-cos model) gets its plain gradient."""
    from captum.attr import GuidedBackprop

    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*backward hooks.*")
        return _channel_sum(GuidedBackprop(classifier).attribute(_gradient_leaf(images), target=targets))


def deeplift(classifier: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DeepLIFT (Shrikumar et al., 2017), captum's rescale rule, from a black image, summed over colour channels.

    Where the only nonlinearities are ``nn.ReLU`` modules between linear layers (convolutions, BatchNorm in eval
    mode, average pooling), the attributions add up to the target logit's gain over the black image. captum's
    max-pooling rule is not exact where the image and the black image pick different maxima, so a transformers
    ResNet's sums (its stem max-pools) miss the gain: on small random ResNets in float64, by up to 1.8 times the
    gain, while the same networks with the max-pool taken out add up to float precision. Other nonlinearities
    (GELU, attention's softmax, B-cos units) pass their plain gradient, and the sums do not add up either.
    """
    from captum.attr import DeepLift

    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(hooks|reused|require gradients).*")
        attributions = DeepLift(classifier).attribute(_gradient_leaf(images), baselines=0.0, target=targets)
    return _channel_sum(attributions)


def _square_side(images: torch.Tensor, share: int) -> int:
    return max(1, min(images.shape[-2:]) // share)


def square_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of squares of ``window`` pixels at ``stride`` along ``size`` pixels, the last one ending at the
    border (closer to the one before it where the stride does not tile the side), so every pixel is covered."""
    return [*range(0, size - window, stride), size - window]


@torch.no_grad()
def occlusion(
    classifier: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus, 2014): the drop of the target logit when a ``window`` x ``window`` square of
    pixels is set to black, the square moved by ``stride`` (:func:`square_offsets`: the last one of a row or column
    ends at the border, so any size is covered); each pixel gets the mean drop of the squares that cover it.
    Defaults: 1/14 of the shorter side (16 pixels at 224), stride half a window. Written here: captum's squares
    must tile the image exactly, which its default squares do not at most sizes (128, 256, 384 px ...).
    ``batch_size`` occluded images go through the model at a time."""
    window = window or _square_side(images, 14)
    stride = stride or max(1, window // 2)
    num, _, height, width = images.shape
    if window > min(height, width):
        raise ValueError(
            f"Occlusion squares of {window} pixels do not fit {height}x{width} images; pass a smaller window."
        )
    squares = [
        (top, left) for top in square_offsets(height, window, stride) for left in square_offsets(width, window, stride)
    ]
    targets = torch.as_tensor(targets, device=images.device).long().view(-1, 1)
    intact = classifier(images).gather(1, targets)[:, 0]
    drops = torch.zeros(num, height, width, dtype=torch.float64, device=images.device)
    counts = torch.zeros(height, width, dtype=torch.float64, device=images.device)
    per_batch = max(1, batch_size // num)
    for start in range(0, len(squares), per_batch):
        chunk = squares[start : start + per_batch]
        occluded = images.repeat(len(chunk), 1, 1, 1)
        for k, (top, left) in enumerate(chunk):
            occluded[k * num : (k + 1) * num, :, top : top + window, left : left + window] = 0
        scores = classifier(occluded).gather(1, targets.repeat(len(chunk), 1))[:, 0].view(len(chunk), num)
        for (top, left), score in zip(chunk, scores):
            drops[:, top : top + window, left : left + window] += (intact - score).double()[:, None, None]
            counts[top : top + window, left : left + window] += 1
    return (drops / counts).to(images.dtype)


def segment_grid(height: int, width: int, segment: int, device=None) -> torch.Tensor:
    """(H, W) segment index of each pixel: square segments of ``segment`` pixels, row-major from the top left."""
    rows = torch.arange(height, device=device) // segment
    cols = torch.arange(width, device=device) // segment
    return rows[:, None] * (-(-width // segment)) + cols[None, :]


def lime_kernel(original, perturbed, interpretable: torch.Tensor, **kwargs) -> torch.Tensor:
    """The ``lime`` package's image kernel: ``sqrt(exp(-d^2 / 0.25^2))``, ``d`` the cosine distance of a sample's
    on/off pattern (1, segments) to the all-on pattern of the image itself."""
    share_on = interpretable.double().sum() / interpretable.shape[-1]
    return torch.exp(-((1 - share_on.sqrt()) ** 2) / 0.25**2).sqrt()


def lime(
    classifier: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    segment: int | None = None,
    samples: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    interpretable_model=None,
) -> torch.Tensor:
    """LIME (Ribeiro et al., 2016) through captum, set up as the authors' ``lime`` package explains images: a ridge
    regression (alpha 1) of the target logit on ``samples`` random on/off patterns of the image's segments (off:
    black), weighted by :func:`lime_kernel`; each pixel gets its segment's coefficient. Segments are squares of
    ``segment`` pixels (by default 1/8 of the shorter side: 64 segments) rather than the package's superpixels.
    ``interpretable_model`` (a captum linear model) replaces the ridge regression. Each image's patterns are drawn
    from ``seed``."""
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    height, width = images.shape[-2:]
    mask = segment_grid(height, width, segment or _square_side(images, 8), images.device)[None, None]
    model = interpretable_model if interpretable_model is not None else SkLearnRidge(alpha=1.0)
    explainer = Lime(classifier, interpretable_model=model, similarity_func=lime_kernel)
    devices = [images.device] if images.device.type == "cuda" else []
    maps = []
    for image, target in zip(images, targets.tolist()):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            attribution = explainer.attribute(
                image[None],
                target=target,
                baselines=0.0,
                feature_mask=mask,
                n_samples=samples,
                perturbations_per_eval=batch_size,
            )
        maps.append(attribution.mean(dim=1))  # the segment's coefficient, in every channel of its pixels
    return torch.cat(maps).detach().to(images.dtype)


def rise_masks(
    count: int,
    height: int,
    width: int,
    cells: int = 7,
    keep: float = 0.5,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """RISE's random masks (Petsiuk et al., 2018), (count, H, W) in [0, 1]: a ``cells`` x ``cells`` grid, each
    cell kept with probability ``keep``, upsampled bilinearly to ``cells + 1`` cells of ``ceil(side / cells)``
    pixels, then cropped to H x W at a random shift of less than one cell."""
    cell_height, cell_width = -(-height // cells), -(-width // cells)
    grid = (torch.rand(count, 1, cells, cells, generator=generator, device=device) < keep).float()
    size = ((cells + 1) * cell_height, (cells + 1) * cell_width)
    upsampled = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[:, 0]
    top = torch.randint(cell_height, (count,), generator=generator, device=device)
    left = torch.randint(cell_width, (count,), generator=generator, device=device)
    rows = (top[:, None] + torch.arange(height, device=device))[:, :, None]
    cols = (left[:, None] + torch.arange(width, device=device))[:, None, :]
    return upsampled[torch.arange(count, device=device)[:, None, None], rows, cols]


@torch.no_grad()
def rise(
    classifier: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    masks: int = 1000,
    cells: int = 7,
    keep: float = 0.5,
    batch_size: int = 64,
    seed: int = 0,
    score: str = "probability",
) -> torch.Tensor:
    """RISE (Petsiuk et al., 2018): the mean of ``masks`` random masks (:func:`rise_masks`), each weighted by the
    target's softmax probability (``score="logit"``: its logit) on the image times the mask, over ``keep``:
    ``sum_i p(x * M_i) M_i / (masks * keep)``. Every image gets the same masks, drawn from ``seed``.

    Written here: captum has no RISE, and the implementations on the package index are unmaintained (torchray,
    last released 2019) or single-author ports.
    """
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}.")
    num, _, height, width = images.shape
    generator = torch.Generator(device=images.device).manual_seed(seed)
    patterns = rise_masks(masks, height, width, cells, keep, generator, images.device).to(images.dtype)
    image_index = torch.arange(num, device=images.device).repeat_interleave(masks)
    mask_index = torch.arange(masks, device=images.device).repeat(num)
    saliency = torch.zeros(num, height, width, dtype=images.dtype, device=images.device)
    for start in range(0, len(image_index), batch_size):
        index, which = image_index[start : start + batch_size], mask_index[start : start + batch_size]
        logits = classifier(images[index] * patterns[which][:, None])
        values = logits.softmax(dim=1) if score == "probability" else logits
        weights = values.gather(1, targets[index, None]).to(images.dtype)
        saliency.index_add_(0, index, weights[:, :, None] * patterns[which])
    return saliency / (masks * keep)


# what each method imports beyond the core install and the `train` extra (the `eval` extra brings them)
CAPTUM_METHODS = ("input_x_gradient", "integrated_gradients", "gradcam", "gradient", "guided_backprop", "deeplift")
METHOD_PACKAGES = {**dict.fromkeys(CAPTUM_METHODS, ("captum",)), "lime": ("captum", "sklearn")}


def check_packages(methods: Iterable[str]) -> None:
    """Refuse methods whose packages are not installed, before anything is trained or explained (not after the
    rest of an evaluation has run)."""
    for method in methods:
        if missing := [name for name in METHOD_PACKAGES.get(method, ()) if importlib.util.find_spec(name) is None]:
            raise ValueError(
                f"{METHOD_NAMES[method]} needs {' and '.join(missing)}, which is not installed: "
                "pip install 'bcos_zoo[eval]' (or bash scripts/setup.sh eval)."
            )


def check_method(classifier: Classifier, method: str) -> None:
    """Refuse a method that does not apply to the classifier, naming those that do, or whose package is missing."""
    if method not in POSTHOC_METHODS:
        raise ValueError(f"Unknown post-hoc method {method!r}; available: {', '.join(POSTHOC_METHODS)}.")
    check_packages([method])
    if method not in classifier.methods:
        if isinstance(classifier, BcosClassifier):
            what = "a B-cos model (it needs a standard ViT's or ResNet's feature map or attention)"
        else:
            reason = " (it needs attention matrices; a CNN has none)" if method == "attention_rollout" else ""
            what = f"a {classifier.family.label} classifier{reason}"
        raise ValueError(
            f"{METHOD_NAMES[method]} does not apply to {what}; methods for it: {', '.join(classifier.methods)}."
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


def posthoc_attribution(model: nn.Module, method: str, **options) -> AttributionFn:
    """``attribute(images (N, 3, H, W) in [0, 1], targets (N,)) -> (N, H, W)`` for one of :data:`POSTHOC_METHODS`.

    ``model`` is a :class:`StandardClassifier` (:func:`load_standard_classifier`) or a B-cos model, whose ordinary
    forward the methods of :data:`FUNCTION_METHODS` explain. ``options`` go to the method (``steps`` for
    integrated gradients, ``window``/``stride`` for occlusion, ``segment``/``samples`` for LIME, ``masks`` for
    RISE, ``batch_size`` for the perturbation methods). A method that does not apply (attention rollout of a CNN,
    GradCAM of a B-cos model) is refused here, before any image is explained.
    """
    methods = {
        "input_x_gradient": input_x_gradient,
        "integrated_gradients": integrated_gradients,
        "gradcam": gradcam,
        "attention_rollout": attention_rollout,
        "gradient": gradient,
        "guided_backprop": guided_backprop,
        "deeplift": deeplift,
        "occlusion": occlusion,
        "lime": lime,
        "rise": rise,
    }
    classifier = as_classifier(model)
    check_method(classifier, method)
    return partial(methods[method], classifier, **options)
