"""Faithfulness of an attribution: how the model's score for the explained class moves when the pixels the
attribution ranks highest are removed, or inserted, first.

- **Pixel deletion** (Petsiuk et al., RISE, BMVC 2018): the pixels are replaced by a baseline (black) in order of
  decreasing attribution, ``steps`` equal shares at a time; the curve is the softmax probability of the explained
  class against the share of pixels removed, and its area (trapezoidal, over [0, 1]) is the score: lower is better.
- **Pixel insertion** (same paper): from a blurred copy of the image, the original pixels are put back in the same
  order; the area under the curve is the score: higher is better.
- **ROAD** (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022):
  deletion's black pixels are out of distribution, so a model's score can fall because the image looks odd rather
  than because evidence went. ROAD removes a share of the pixels, most relevant first (MoRF: lower is better) or
  least relevant first (LeRF: higher is better), and fills them by *noisy linear imputation*: each removed pixel
  is the weighted mean of its 8 neighbours (direct ones 1/6, diagonal ones 1/12), solved jointly for all removed
  pixels, plus Gaussian noise (clipped to the image's range). The score is the mean of the curve over the shares.

Every pixel's channels go together; attributions are (N, H, W) maps, ties broken by pixel index (row-major); maps
holding NaN or inf are refused, as the localisation scores refuse them.
Everything is batched over images *and* curve points: one model call classifies ``batch_size`` (image, point)
pairs, so N images and S points cost N * S / batch_size forward passes. :func:`evaluate_faithfulness` runs the
metrics on a dataset for the evaluation report; the ``evaluate`` modules in ``bcos_zoo/evaluation/metrics``
(``pixel_deletion``, ``pixel_insertion``, ``road``) wrap the same functions.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers.utils.logging import tqdm  # tqdm.auto, off where transformers' progress bars are

from ..data.preprocessing import ImageTransform
from .localisation import AttributionFn, ClassifierFn, checked_attributions, load_images
from .scores import check_finite


Score = Literal["probability", "logit"]
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the ROAD paper's shares of removed pixels
# Noisy linear imputation's neighbour weights (ROAD): a removed pixel is the weighted mean of its 8 neighbours.
NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
# What each metric is called in reports, and whether higher is better.
FAITHFULNESS_METRICS = {
    "deletion": ("Deletion AUC", False),
    "insertion": ("Insertion AUC", True),
    "road_morf": ("ROAD MoRF", False),
    "road_lerf": ("ROAD LeRF", True),
}


@dataclass
class PerturbationCurves:
    """The model's score for the explained class along a perturbation: ``scores`` (N, S) at ``fractions`` (S,),
    the share of pixels perturbed at each point, and the top class at each point, ``predictions`` (N, S)."""

    fractions: torch.Tensor
    scores: torch.Tensor
    predictions: torch.Tensor

    def auc(self) -> torch.Tensor:
        """(N,) area under each curve (trapezoidal, over the fractions)."""
        return curve_auc(self.fractions, self.scores)

    def mean(self) -> torch.Tensor:
        """(N,) the mean of each curve over its points (ROAD's score)."""
        return self.scores.mean(dim=1)


def curve_auc(fractions: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under ``scores`` (..., S) over ``fractions`` (S,)."""
    return torch.trapezoid(scores, fractions.to(scores), dim=-1)


def pixel_ranks(attributions: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(N, H * W): each pixel's place in the order of perturbation (0 first), by its attribution, ties broken by
    pixel index (row-major)."""
    if attributions.ndim != 3:
        raise ValueError(f"Attributions must be (N, H, W) maps, got shape {tuple(attributions.shape)}.")
    flat = attributions.detach().flatten(1)
    order = torch.argsort(flat, dim=1, descending=descending, stable=True)
    places = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, places)


def _target_scores(logits: torch.Tensor, targets: torch.Tensor, score: Score) -> tuple[torch.Tensor, torch.Tensor]:
    if score not in ("probability", "logit"):
        raise ValueError(f"score must be 'probability' or 'logit', got {score!r}.")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half precision keeps 2-3 digits
    outside = targets[(targets < 0) | (targets >= logits.shape[1])]
    if len(outside):
        raise ValueError(f"target indices must lie in [0, {logits.shape[1]}), got {outside.unique().tolist()}.")
    values = logits.softmax(dim=1) if score == "probability" else logits
    return values.gather(1, targets[:, None])[:, 0], logits.argmax(dim=1)


def _pairs(num_images: int, num_points: int, device) -> torch.Tensor:
    """Every (image, point) pair, image-major: the batches of a curve computation."""
    images, points = torch.meshgrid(
        torch.arange(num_images, device=device), torch.arange(num_points, device=device), indexing="ij"
    )
    return torch.stack([images.flatten(), points.flatten()], dim=1)


def _checked(images: torch.Tensor, attributions: torch.Tensor, targets) -> torch.Tensor:
    """The targets as a (N,) long tensor (an int: the same class for every image), after checking the images, and
    the attributions' shape and finiteness."""
    if images.ndim != 4 or tuple(attributions.shape) != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"Images must be (N, C, H, W) and attributions their (N, H, W) maps; got {tuple(images.shape)} and "
            f"{tuple(attributions.shape)}."
        )
    check_finite(torch.as_tensor(attributions))
    targets = torch.as_tensor(targets, device=images.device).long()
    if targets.ndim == 0:
        return targets.expand(len(images))
    if tuple(targets.shape) != (len(images),):
        raise ValueError(f"targets must be one class per image, (N,) = ({len(images)},), got {tuple(targets.shape)}.")
    return targets


@torch.no_grad()
def replacement_curves(
    classify: ClassifierFn,
    images: torch.Tensor,
    replacement: torch.Tensor,
    ranks: torch.Tensor,
    targets: torch.Tensor,
    counts: torch.Tensor,
    batch_size: int = 64,
    score: Score = "probability",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N, S) and top classes (N, S) of ``images`` whose first ``counts[s]`` pixels (by ``ranks``) are
    replaced by ``replacement``'s (broadcastable to the images), for each point s: deletion and insertion alike."""
    num, _, height, width = images.shape
    replacement = torch.as_tensor(replacement, dtype=images.dtype, device=images.device).expand_as(images)
    pairs = _pairs(num, len(counts), images.device)
    scores, predictions = [], []
    for start in range(0, len(pairs), batch_size):
        index, point = pairs[start : start + batch_size].unbind(1)
        replaced = (ranks[index] < counts[point, None]).view(-1, 1, height, width)
        batch = torch.where(replaced, replacement[index], images[index])
        chunk_scores, chunk_predictions = _target_scores(classify(batch), targets[index], score)
        scores.append(chunk_scores)
        predictions.append(chunk_predictions)
    return torch.cat(scores).view(num, -1), torch.cat(predictions).view(num, -1)


def step_counts(num_pixels: int, steps: int, device=None) -> torch.Tensor:
    """Pixels perturbed at each of ``steps + 1`` points: ``floor(s * num_pixels / steps)``, from none to all."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    return torch.arange(steps + 1, device=device) * num_pixels // steps


def deletion_curves(
    classify: ClassifierFn,
    images: torch.Tensor,
    attributions: torch.Tensor,
    targets,
    steps: int = 100,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    score: Score = "probability",
) -> PerturbationCurves:
    """Pixel deletion: ``images`` (N, C, H, W) with their most relevant pixels (by ``attributions`` (N, H, W))
    replaced by ``baseline`` (0: black; or a tensor broadcastable to the images), ``steps`` equal shares at a time,
    scored for ``targets`` (N,) at ``steps + 1`` points from the intact image to the all-baseline one."""
    targets = _checked(images, attributions, targets)
    counts = step_counts(images.shape[-2] * images.shape[-1], steps, images.device)
    ranks = pixel_ranks(attributions.to(images.device))
    scores, predictions = replacement_curves(classify, images, baseline, ranks, targets, counts, batch_size, score)
    return PerturbationCurves(counts.double() / counts[-1], scores, predictions)


def blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur, per channel, with reflected borders: insertion's starting image (RISE: kernel 11, sigma 5).
    An image no wider than the kernel's radius cannot be reflected; its border pixels are repeated instead."""
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - radius
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    padded = F.pad(images, (radius, radius, radius, radius), mode=mode)
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def insertion_curves(
    classify: ClassifierFn,
    images: torch.Tensor,
    attributions: torch.Tensor,
    targets,
    steps: int = 100,
    start: Literal["blur"] | float | torch.Tensor = "blur",
    batch_size: int = 64,
    score: Score = "probability",
) -> PerturbationCurves:
    """Pixel insertion: from ``start`` (``"blur"``: :func:`blur` of the images; or a value or tensor), the images'
    pixels are put back most relevant first, ``steps`` equal shares at a time, scored for ``targets`` at
    ``steps + 1`` points from the start image to the intact one."""
    targets = _checked(images, attributions, targets)
    base = blur(images) if isinstance(start, str) and start == "blur" else torch.as_tensor(start).to(images)
    base = base.expand_as(images)
    counts = step_counts(images.shape[-2] * images.shape[-1], steps, images.device)
    ranks = pixel_ranks(attributions.to(images.device))
    scores, predictions = replacement_curves(classify, base, images, ranks, targets, counts, batch_size, score)
    return PerturbationCurves(counts.double() / counts[-1], scores, predictions)


def _neighbour_sum(values: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's 8 neighbours inside the image (zero beyond the border), per channel."""
    channels = values.shape[1]
    return F.conv2d(values, kernel.expand(channels, 1, 3, 3), padding=1, groups=channels)


def linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    tolerance: float | None = None,
    max_iterations: int | None = None,
) -> torch.Tensor:
    """``images`` (N, C, H, W) with the pixels where ``removed`` (N, H, W) is true replaced by the solution of
    ``value = weighted mean of its 8 neighbours inside the image`` for all of them at once (ROAD's linear
    imputation, weights :data:`NEIGHBOUR_WEIGHTS`); the other pixels are kept.

    The system is symmetric positive definite on every region of removed pixels that touches a kept pixel, so it
    is solved by conjugate gradients (Jacobi-preconditioned), batched over images and channels, to a residual
    ``tolerance`` relative to the right-hand side (default 1e-5 in float32, 1e-10 in float64). Conjugate gradients
    need about as many iterations as a removed region is wide when they start from nothing, so they start from the
    same imputation at half the resolution, upsampled (:func:`_coarse_guess`). A region with no kept neighbour at
    all (every pixel removed) gets 0.
    """
    if removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"removed must be (N, H, W) = {(images.shape[0], *images.shape[2:])}.")
    if not bool(removed.any()):
        return images
    dtype, tiny = images.dtype, torch.finfo(images.dtype).tiny
    tolerance = tolerance if tolerance is not None else (1e-10 if dtype == torch.float64 else 1e-5)
    max_iterations = max_iterations or 4 * (images.shape[-2] + images.shape[-1]) + 100
    mask = removed[:, None].to(dtype)
    kernel = torch.tensor(NEIGHBOUR_WEIGHTS, dtype=dtype, device=images.device).view(1, 1, 3, 3)
    degree = _neighbour_sum(torch.ones_like(images[:1, :1]), kernel)  # the weight of the neighbours in the image
    kept = images * (1 - mask)
    rhs = mask * _neighbour_sum(kept, kernel)

    def operator(values: torch.Tensor) -> torch.Tensor:
        return mask * (degree * values - _neighbour_sum(mask * values, kernel))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(2, 3), keepdim=True)

    guess = _coarse_guess(images, mask, tolerance, max_iterations)
    solution = mask * guess if guess is not None else rhs / degree
    residual = rhs - operator(solution)
    preconditioned = residual / degree
    direction = preconditioned
    product = dot(residual, preconditioned)
    bound = tolerance * rhs.flatten(2).norm(dim=2).clamp_min(tiny)
    for iteration in range(max_iterations):
        if iteration % 8 == 0 and bool((residual.flatten(2).norm(dim=2) <= bound).all()):
            break
        step_direction = operator(direction)
        curvature = dot(direction, step_direction)
        alpha = torch.where(curvature > 0, product / curvature.clamp_min(tiny), 0.0)
        solution = solution + alpha * direction
        residual = residual - alpha * step_direction
        preconditioned = residual / degree
        new_product = dot(residual, preconditioned)
        beta = torch.where(product > 0, new_product / product.clamp_min(tiny), 0.0)
        direction = preconditioned + beta * direction
        product = new_product
    return kept + mask * solution


def _coarse_guess(
    images: torch.Tensor, mask: torch.Tensor, tolerance: float, max_iterations: int
) -> torch.Tensor | None:
    """The imputation at half the resolution (2 x 2 blocks: the mean of their kept pixels, removed where none is
    kept), upsampled bilinearly: a starting point with the removed regions' broad shape already right."""
    if min(images.shape[-2:]) < 8:
        return None
    kept = 1 - mask
    weight = F.avg_pool2d(kept, 2, ceil_mode=True)
    coarse = F.avg_pool2d(images * kept, 2, ceil_mode=True) / weight.clamp_min(torch.finfo(images.dtype).tiny)
    filled = linear_imputation(coarse, weight[:, 0] == 0, tolerance, max_iterations)
    return F.interpolate(filled, size=images.shape[-2:], mode="bilinear", align_corners=False)


def noisy_linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float | None = None,
) -> torch.Tensor:
    """ROAD's imputation: :func:`linear_imputation`, plus Gaussian noise of standard deviation ``noise`` on each
    removed pixel's channels (so that the filled values do not reveal the mask by being too smooth), clipped to
    the range of each image's values (a B-cos model takes only [0, 1]; the imputation alone never leaves it)."""
    imputed = linear_imputation(images, removed, tolerance)
    if noise:
        draws = torch.randn(imputed.shape, generator=generator, device=images.device, dtype=images.dtype)
        imputed = imputed + noise * removed[:, None].to(images.dtype) * draws
        imputed = imputed.clamp(images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True))
    return imputed


@torch.no_grad()
def road_curves(
    classify: ClassifierFn,
    images: torch.Tensor,
    attributions: torch.Tensor,
    targets,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    order: Literal["morf", "lerf"] = "morf",
    noise: float = 0.01,
    batch_size: int = 64,
    score: Score = "probability",
    seed: int = 0,
) -> PerturbationCurves:
    """ROAD: for each share in ``fractions``, ``floor(share * H * W)`` pixels, most relevant first (``"morf"``) or
    least relevant first (``"lerf"``), are filled by :func:`noisy_linear_imputation`, and the image is scored for
    its target. ``seed`` seeds the noise (the draws follow the batches, so they depend on ``batch_size``)."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' (most relevant first) or 'lerf', got {order!r}.")
    targets = _checked(images, attributions, targets)
    num, _, height, width = images.shape
    shares = torch.as_tensor(list(fractions), dtype=torch.float64)
    if not bool(((shares >= 0) & (shares <= 1)).all()):
        raise ValueError(f"ROAD's fractions are shares of the pixels, in [0, 1]; got {shares.tolist()}.")
    counts = torch.tensor([int(round(float(f) * height * width, 9)) for f in shares], device=images.device)
    ranks = pixel_ranks(attributions.to(images.device), descending=order == "morf")
    generator = torch.Generator(images.device).manual_seed(seed)
    pairs = _pairs(num, len(counts), images.device)
    scores, predictions = [], []
    for start in range(0, len(pairs), batch_size):
        index, point = pairs[start : start + batch_size].unbind(1)
        removed = (ranks[index] < counts[point, None]).view(-1, height, width)
        imputed = noisy_linear_imputation(images[index], removed, noise, generator)
        chunk_scores, chunk_predictions = _target_scores(classify(imputed), targets[index], score)
        scores.append(chunk_scores)
        predictions.append(chunk_predictions)
    return PerturbationCurves(shares, torch.cat(scores).view(num, -1), torch.cat(predictions).view(num, -1))


@dataclass
class FaithfulnessEvaluation:
    """Per explanation method and metric of :data:`FAITHFULNESS_METRICS`: every image's score (deletion and
    insertion: area under the curve; ROAD: mean of the curve) and the mean curve, at ``fractions`` per metric."""

    num_images: int
    fractions: dict[str, list[float]] = field(default_factory=dict)
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def summary(self, method: str) -> dict:
        """Mean, standard deviation and count of each metric for one method; None where it was not measured."""
        row = {}
        for metric in FAITHFULNESS_METRICS:
            values = self.scores.get(method, {}).get(metric) or []
            row[metric] = float(np.mean(values)) if values else None
            row[f"{metric}_std"] = float(np.std(values)) if values else None
            row[f"{metric}_count"] = len(values)
        return row


def faithfulness_scores(
    classify: ClassifierFn,
    images: torch.Tensor,
    attributions: torch.Tensor,
    targets: torch.Tensor,
    metrics: Sequence[str] = tuple(FAITHFULNESS_METRICS),
    steps: int = 20,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, PerturbationCurves]:
    """The curves of each of ``metrics`` for one batch of images, attributions and targets."""
    unknown = [metric for metric in metrics if metric not in FAITHFULNESS_METRICS]
    if unknown:
        raise ValueError(f"Unknown faithfulness metric {unknown[0]!r}; available: {', '.join(FAITHFULNESS_METRICS)}.")
    common = dict(batch_size=batch_size)
    curves = {}
    for metric in metrics:
        if metric == "deletion":
            curves[metric] = deletion_curves(classify, images, attributions, targets, steps, **common)
        elif metric == "insertion":
            curves[metric] = insertion_curves(classify, images, attributions, targets, steps, **common)
        else:
            order = metric.removeprefix("road_")
            curves[metric] = road_curves(
                classify, images, attributions, targets, road_fractions, order, seed=seed, **common
            )
    return curves


def evaluate_faithfulness(
    classify: ClassifierFn,
    attributions: dict[str, AttributionFn],
    dataset: Dataset,
    transform: ImageTransform,
    num_images: int = 32,
    steps: int = 20,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    metrics: Sequence[str] = tuple(FAITHFULNESS_METRICS),
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> FaithfulnessEvaluation:
    """Deletion, insertion and ROAD of each named attribution function on the first ``num_images`` images of
    ``dataset`` (in the pixels ``transform`` makes), each explained for the class the model predicts.

    ``steps`` sets the deletion and insertion curves' resolution (``steps + 1`` points), ``road_fractions`` ROAD's
    shares; the cost is about ``num_images * (2 * (steps + 1) + 2 * len(road_fractions))`` forward passes per
    method, ``batch_size`` at a time.
    """
    indices = list(range(min(num_images, len(dataset))))
    result = FaithfulnessEvaluation(num_images=len(indices))
    totals: dict[str, dict[str, torch.Tensor]] = {}
    for start in tqdm(range(0, len(indices), batch_size), desc="faithfulness", disable=not progress, leave=False):
        images = load_images(dataset, indices[start : start + batch_size], transform).to(device)
        with torch.no_grad():
            targets = classify(images).argmax(dim=1)
        for name, attribute in attributions.items():
            maps = checked_attributions(attribute(images, targets), (len(images), *images.shape[-2:]))
            curves = faithfulness_scores(
                classify, images, maps, targets, metrics, steps, road_fractions, batch_size, seed
            )
            for metric, curve in curves.items():
                per_image = curve.mean() if metric.startswith("road") else curve.auc()
                result.scores.setdefault(name, {}).setdefault(metric, []).extend(per_image.tolist())
                summed = totals.setdefault(name, {}).get(metric)
                totals[name][metric] = curve.scores.sum(0) if summed is None else summed + curve.scores.sum(0)
                result.fractions[metric] = curve.fractions.tolist()
    for name, per_metric in totals.items():
        result.curves[name] = {metric: (total / len(indices)).tolist() for metric, total in per_metric.items()}
    return result
