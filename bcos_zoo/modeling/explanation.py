"""Exact explanations of B-cos models and the B-cos papers' colour rendering. In explanation mode a B-cos model
computes ``y = W(x) e + c`` with ``e = [x, 1 - x]``: the gradient of an output with respect to ``e`` is the row
``W(x)``, ``e * W(x)`` are the per-pixel contributions, and ``c`` (``bias``) is what does not scale with the input.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bcos_layers import explanation_mode


@dataclass(eq=False)
class BcosExplanation:
    """One explained output per image: ``contributions.sum((1, 2)) + bias`` is the explained output, exactly.

    Attributes:
        logits: (N, K) the outputs of the forward pass (class logits, or cosines for CLIP).
        target: (N,) the explained output of each image.
        dynamic_weights: (N, 2C, H, W) the target row of ``W(x)`` over the ``[x, 1 - x]`` encoding (C: the
            model's channels, 3 for RGB, 1 for greyscale).
        contributions: (N, H, W) the sum over channels of encoding * dynamic_weights.
        bias: (N,) the explained output minus the summed contributions.
        output_name: what ``logits`` hold, as a title names it ("logit"; "cosine" for CLIP).

    ``render()`` (or ``rgba``) and ``contribution_map()`` are its pictures; the package's ``bcos_zoo.visualize`` draws
    them as panels.
    """

    logits: torch.Tensor
    target: torch.Tensor
    dynamic_weights: torch.Tensor
    contributions: torch.Tensor
    bias: torch.Tensor
    output_name: str = "logit"

    def __repr__(self) -> str:  # shapes, not values: a batch's tensors would fill a notebook
        shapes = ", ".join(f"{key}={tuple(value.shape)}" for key, value in vars(self).items() if key != "output_name")
        return f"BcosExplanation({shapes}, dtype={self.contributions.dtype}, output_name={self.output_name!r})"

    @property
    def target_logits(self) -> torch.Tensor:
        """(N,) the explained output of each image."""
        return self.logits.gather(1, self.target[:, None]).squeeze(1)

    @property
    def bias_share(self) -> torch.Tensor:
        """(N,) ``|bias| / (|bias| + |sum of contributions|)``: 0 when the pixels account for the whole output."""
        accumulate = torch.promote_types(self.bias.dtype, torch.float32)
        total = self.contributions.to(accumulate).sum(dim=(1, 2)).abs()
        bias = self.bias.to(accumulate).abs()
        return bias / (bias + total).clamp_min(torch.finfo(accumulate).tiny)

    @property
    def rgba(self) -> torch.Tensor:
        """(N, H, W, 4) in [0, 1]: the colour rendering with default settings (see :meth:`render`)."""
        return self.render()

    def render(self, smooth: int = 0, percentile: float = 99.5) -> torch.Tensor:
        """The B-cos colour rendering: hue from the dynamic weights, opacity from their norm where they help."""
        return render_dynamic_weights(self.dynamic_weights, self.contributions, smooth=smooth, percentile=percentile)

    def contribution_map(self, percentile: float = 99.5) -> torch.Tensor:
        """(N, H, W, 3) in [0, 1]: contributions in a symmetric blue-white-red colormap."""
        return colorize_contributions(self.contributions, percentile=percentile)


def resolve_target(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``None`` (top output), an int or an (N,) tensor into a validated (N,) LongTensor."""
    batch, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, str) or isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target):
        raise ValueError(f"target takes class indices, got {target!r}: see model.config.id2label (pipeline: labels=).")
    target = torch.as_tensor(target, device=logits.device)
    target = target.long() if target.numel() == 0 else target  # [] is float
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must be an int or an integer tensor, got dtype {target.dtype}.")
    target = target.long().expand(batch) if target.ndim == 0 else target.long()
    if target.shape != (batch,):
        raise ValueError(f"target must be an int or have shape ({batch},), got shape {tuple(target.shape)}.")
    if bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(f"target indices must lie in [0, {classes}), got {target.tolist()}.")
    return target


def compute_explanation(
    model: nn.Module,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    target: int | torch.Tensor | None = None,
    create_graph: bool = False,
    output_name: str = "logit",
) -> BcosExplanation:
    """Explain ``score_fn(encoded) -> (N, K)`` for a batch: one forward and one backward pass in explanation mode.
    ``model`` is a B-cos model: its ``encode_pixel_values`` checks the images against its config and encodes them.

    The range check gives its readable message on every device (an explanation reads its results anyway); the bias
    is accumulated in float32 at least. With ``create_graph=True``, ``logits``, ``dynamic_weights`` and
    ``contributions`` keep their graph, so that a loss on them trains the model (training with explanations).
    """
    if any(parameter.is_inference() for parameter in model.parameters()):  # which autograd cannot differentiate
        raise ValueError("The model was built, converted or cast under torch.inference_mode(): do that outside it.")
    with torch.inference_mode(False), torch.enable_grad(), explanation_mode(model):  # works under inference_mode()
        encoded = model.encode_pixel_values(pixel_values, eager_message=True).detach().requires_grad_(True)
        logits = score_fn(encoded)
        target = resolve_target(target, logits.detach())
        selected = logits.gather(1, target[:, None]).sum()
        (weights,) = torch.autograd.grad(selected, encoded, create_graph=create_graph)
        encoded = encoded.detach()
        if not create_graph:
            logits, weights = logits.detach(), weights.detach()
        contributions = (encoded * weights).sum(dim=1)  # in the block: a graph is kept under no_grad() too
        accumulate = torch.promote_types(contributions.dtype, torch.float32)
        target_logits = logits.gather(1, target[:, None]).squeeze(1)
        bias = (target_logits.to(accumulate) - contributions.to(accumulate).sum(dim=(1, 2))).to(contributions.dtype)
    return BcosExplanation(logits, target, weights, contributions, bias, output_name)


def _per_image_quantile(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """(N,) percentile of each image's values, as a (N, 1, 1) tensor for broadcasting."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}.")
    flat = values.flatten(1).to(torch.promote_types(values.dtype, torch.float32))
    if not len(flat):  # an empty batch (quantile refuses empty input): no image, no quantile
        return values.new_zeros(0, 1, 1)
    return torch.quantile(flat, percentile / 100, dim=1).to(values.dtype)[:, None, None]


def _finite_and_scaled(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float32 at least (the guard against 0 / 0 underflows in float16), each image divided by its
    largest magnitude, so that a picture neither overflows nor fades with the scale of its map. A value that is not
    finite has no colour: it is refused (it would turn the whole picture blank)."""
    values = values.detach().to(torch.promote_types(values.dtype, torch.float32))
    if not torch.isfinite(values).all():
        raise ValueError("the explanation holds NaN or infinite values: the model's output is not finite.")
    return values / values.abs().amax(dim=tuple(range(1, values.ndim)), keepdim=True).clamp_min(1e-30)


def render_dynamic_weights(
    dynamic_weights: torch.Tensor, contributions: torch.Tensor, smooth: int = 0, percentile: float = 99.5
) -> torch.Tensor:
    """The B-cos papers' rendering of (N, 6, H, W) dynamic weights as (N, H, W, 4) RGBA in [0, 1]. Colour: the
    weights scaled by their largest magnitude and clamped at 0, ``rgb = g[:3] / (g[:3] + g[3:])`` (grey from a
    one-channel model's (N, 2, H, W)); opacity: their norm where the contribution is positive (averaged over
    ``smooth`` x ``smooth``), scaled by its ``percentile`` (:func:`_finite_and_scaled` first)."""
    eps, channels = 1e-12, dynamic_weights.shape[1] // 2
    weights = _finite_and_scaled(dynamic_weights)
    gain = (weights / weights.abs().amax(dim=1, keepdim=True).clamp_min(eps)).clamp_min(0)
    rgb = (gain[:, :channels] / (gain[:, :channels] + gain[:, channels:]).clamp_min(eps)).expand(-1, 3, -1, -1)
    alpha = torch.linalg.vector_norm(weights, dim=1)
    alpha = torch.where(contributions.detach() < 0, torch.zeros_like(alpha), alpha)
    if smooth > 1:
        alpha = F.avg_pool2d(alpha[:, None], smooth, stride=1, padding=smooth // 2, count_include_pad=False)[:, 0]
        alpha = alpha[:, : rgb.shape[2], : rgb.shape[3]]
    alpha = (alpha / _per_image_quantile(alpha, percentile).clamp_min(eps)).clamp(0, 1)
    return torch.cat([rgb, alpha[:, None]], dim=1).permute(0, 2, 3, 1).contiguous()


def colorize_contributions(contributions: torch.Tensor, percentile: float = 99.5) -> torch.Tensor:
    """(N, H, W) contributions as (N, H, W, 3) RGB: blue negative, white zero, red positive, clipped symmetrically
    (:func:`_finite_and_scaled` first)."""
    values = _finite_and_scaled(contributions)
    scale = _per_image_quantile(values.abs(), percentile).clamp_min(1e-12)
    v = (values / scale).clamp(-1, 1)
    positive, negative = v.clamp_min(0), (-v).clamp_min(0)
    return torch.stack([1 - negative, 1 - positive - negative, 1 - positive], dim=-1)  # red, green, blue
