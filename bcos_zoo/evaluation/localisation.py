"""The B-cos papers' localisation measures, for any model that can be written as two functions of [0, 1] images.

``classify(images) -> logits`` picks the images, ``attribute(images, targets) -> (N, H, W)`` explains them; B-cos
models (:func:`bcos_attribution`) and post-hoc methods on standard models (:mod:`bcos_zoo.evaluation.baselines`)
share one harness and one scoring, the ``evaluate`` modules in ``bcos_zoo/evaluation/metrics``.

Grid pointing game: among the images a model classifies correctly and confidently, tile ``n x n`` images of
distinct classes into a grid (cells row-major from the top left), explain each cell's class on the whole grid and
score the share of positive attribution inside that cell. A fixed-size ViT cannot take the grid at once: it is
explained in sliding windows of its input size at half that stride, and the window attributions are summed back.
Energy pointing game: on single images whose dataset items carry an object box, the share of positive attribution
inside the box.
"""

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import zip_longest

import evaluate
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import ViTImageProcessor

from .metrics import metric_path


AttributionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``attribute(images (N, 3, H, W) in [0, 1], targets (N,)) -> (N, H, W)`` per-pixel attributions."""
ClassifierFn = Callable[[torch.Tensor], torch.Tensor]
"""``classify(images (N, 3, H, W) in [0, 1]) -> (N, C)`` logits."""


def bcos_attribution(model) -> AttributionFn:
    """A B-cos model's own explanation: the per-pixel contributions ``W(x) x`` to the target logit."""

    def attribute(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return model.explain(images.to(model.dtype), target=targets).contributions

    return attribute


def bcos_classifier(model) -> ClassifierFn:
    """A B-cos (or any transformers) image classifier as ``classify(images) -> logits``."""

    def classify(images: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=images.to(model.dtype)).logits

    return classify


def image_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, size, size) in [0, 1]: resize and rescale, no normalisation (a B-cos model's processor)."""
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size}, do_normalize=False)

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    return transform


@dataclass
class Predictions:
    """Softmax probabilities (N, C) and true labels (N,) of a whole split."""

    probabilities: torch.Tensor
    labels: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.amax(dim=1)

    def accuracy(self) -> float:
        """Top-1 accuracy through the offline ``bcos_accuracy`` evaluate module."""
        metric = evaluate.load(metric_path("bcos_accuracy"))
        return metric.compute(predictions=self.predicted.tolist(), references=self.labels.tolist())["accuracy"]


@torch.no_grad()
def predict(
    classify: ClassifierFn,
    dataset: Dataset,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Predictions:
    """Classify every item ``(image, label, ...)`` of ``dataset``."""
    probabilities, labels = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="classifying", disable=not progress, leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([transform(item[0]) for item in items]).to(device)
        probabilities.append(classify(images).float().softmax(dim=1).cpu())
        labels.extend(int(item[1]) for item in items)
    classes = probabilities[0].shape[1] if probabilities else 0
    return Predictions(
        torch.cat(probabilities) if probabilities else torch.empty(0, classes), torch.tensor(labels, dtype=torch.long)
    )


def confident_pools(
    predictions: Predictions, min_confidence: float = 0.0, max_per_class: int | None = None
) -> dict[int, list[int]]:
    """Per class, the indices of correctly classified images with confidence >= ``min_confidence``.

    Most confident first, at most ``max_per_class`` each; classes without such an image are left out.
    """
    eligible = (predictions.predicted == predictions.labels) & (predictions.confidence >= min_confidence)
    pools: dict[int, list[int]] = {}
    for index in sorted(eligible.nonzero().flatten().tolist(), key=lambda i: -float(predictions.confidence[i])):
        pool = pools.setdefault(int(predictions.labels[index]), [])
        if max_per_class is None or len(pool) < max_per_class:
            pool.append(index)
    return dict(sorted(pools.items()))


@dataclass(frozen=True)
class Grid:
    """One grid: the dataset index and the class of each cell, row-major from the top left."""

    indices: tuple[int, ...]
    labels: tuple[int, ...]


def sample_grids(pools: dict[int, list[int]], grid_size: int, num_grids: int, seed: int = 0) -> list[Grid]:
    """``num_grids`` grids of ``grid_size**2`` images of distinct classes, drawn from :func:`confident_pools`.

    Classes are drawn at random per grid; within a class the pool is used in order (most confident first) and
    restarts when exhausted, so images repeat only when a class has fewer than it is drawn.
    """
    cells = grid_size * grid_size
    if len(pools) < cells:
        raise ValueError(
            f"A {grid_size}x{grid_size} grid needs {cells} classes with a confidently and correctly classified "
            f"image, but only {len(pools)} have one. Use a smaller grid, a lower confidence, or more images."
        )
    rng = random.Random(seed)
    classes = sorted(pools)
    drawn = dict.fromkeys(classes, 0)
    grids = []
    for _ in range(num_grids):
        labels = rng.sample(classes, cells)
        indices = []
        for label in labels:
            indices.append(pools[label][drawn[label] % len(pools[label])])
            drawn[label] += 1
        grids.append(Grid(tuple(indices), tuple(labels)))
    return grids


def tile_grid(images: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(n*n, C, H, W) -> (C, n*H, n*W): image ``k`` in row ``k // n``, column ``k % n``."""
    cells, channels, height, width = images.shape
    if cells != grid_size * grid_size:
        raise ValueError(f"A {grid_size}x{grid_size} grid takes {grid_size * grid_size} images, got {cells}.")
    rows = images.reshape(grid_size, grid_size, channels, height, width)
    return rows.permute(2, 0, 3, 1, 4).reshape(channels, grid_size * height, grid_size * width)


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows that tile ``size`` pixels exactly, the last one ending at the border."""
    if window > size or (size - window) % stride:
        raise ValueError(f"Windows of {window} at stride {stride} do not tile {size} pixels exactly.")
    return list(range(0, size - window + 1, stride))


def sliding_window_attribution(
    attribute: AttributionFn,
    images: torch.Tensor,
    targets: torch.Tensor,
    window: int,
    stride: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Explain (N, C, H, W) images larger than the model's input: attributions of ``window`` x ``window`` crops at
    ``stride`` (default ``window // 2``), each for its image's target, summed back into an (N, H, W) map."""
    stride = stride or window // 2
    height, width = images.shape[-2:]
    crops = [
        (n, top, left)
        for n in range(len(images))
        for top in window_offsets(height, window, stride)
        for left in window_offsets(width, window, stride)
    ]
    summed = torch.zeros(len(images), height, width, dtype=torch.float32, device=images.device)
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        batch = torch.stack([images[n, :, top : top + window, left : left + window] for n, top, left in chunk])
        attributions = attribute(batch, targets[[n for n, _, _ in chunk]]).detach()
        if attributions.shape != (len(chunk), window, window):
            raise ValueError(
                f"An attribution function must return (N, H, W) = {(len(chunk), window, window)}, "
                f"got {tuple(attributions.shape)}."
            )
        for (n, top, left), attribution in zip(chunk, attributions):
            summed[n, top : top + window, left : left + window] += attribution.float()
    return summed


def load_images(
    dataset: Dataset, indices: Sequence[int], transform: Callable[[Image.Image], torch.Tensor]
) -> torch.Tensor:
    return torch.stack([transform(dataset[i][0]) for i in indices])


def grid_pointing_game(
    attribute: AttributionFn,
    grids: Sequence[Grid],
    dataset: Dataset,
    transform: Callable[[Image.Image], torch.Tensor],
    grid_size: int,
    window: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "grid pointing game",
) -> list[float]:
    """Scores of every cell of every grid (``len(grids) * grid_size**2``, grid by grid, cells row-major).

    Each cell's class is explained on the whole grid; with ``window`` (the model's input size) the grid is
    explained in sliding windows at half-window stride. Scored by the ``grid_pointing_game`` evaluate module.
    """
    metric = evaluate.load(metric_path("grid_pointing_game"))
    cells = grid_size * grid_size
    scores = []
    for grid in tqdm(grids, desc=description, disable=not progress, leave=False):
        tiled = tile_grid(load_images(dataset, grid.indices, transform), grid_size).to(device)
        images = tiled.expand(cells, *tiled.shape)
        targets = torch.tensor(grid.labels, device=device)
        if window is None:
            attributions = attribute(images, targets).detach().float()
        else:
            attributions = sliding_window_attribution(attribute, images, targets, window, batch_size=batch_size)
        for cell, attribution in enumerate(attributions.cpu().numpy()):
            result = metric.compute(attributions=[attribution], cell_index=[cell], grid_size=[grid_size, grid_size])
            scores.append(result["grid_pointing_game"])
    return scores


def scaled_box(box: Sequence[float], original_size: tuple[int, int], image_size: int) -> list[int]:
    """A box ``[x0, y0, x1, y1]`` in pixels of a (width, height) image, in pixels of its resized square version."""
    width, height = original_size
    x0, y0, x1, y1 = box
    sx, sy = image_size / width, image_size / height
    left, top = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
    right, bottom = max(int(np.ceil(x1 * sx)), left + 1), max(int(np.ceil(y1 * sy)), top + 1)
    return [left, top, min(right, image_size), min(bottom, image_size)]


def has_boxes(dataset: Dataset) -> bool:
    """Whether items are ``(image, label, box)``: the energy pointing game needs object boxes."""
    return len(dataset) > 0 and len(dataset[0]) > 2 and dataset[0][2] is not None


def energy_pointing_game(
    attribute: AttributionFn,
    indices: Sequence[int],
    dataset: Dataset,
    image_size: int,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "energy pointing game",
) -> list[float]:
    """Scores of the images ``indices`` of a dataset of ``(image, label, box)`` items, each explained for its label.

    Boxes are ``[x0, y0, x1, y1]`` in the original image's pixels (end-exclusive); they are scaled with the resize.
    """
    metric = evaluate.load(metric_path("energy_pointing_game"))
    transform = image_transform(image_size)
    scores = []
    for start in tqdm(range(0, len(indices), batch_size), desc=description, disable=not progress, leave=False):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        images = torch.stack([transform(image) for image, *_ in items]).to(device)
        targets = torch.tensor([int(label) for _, label, *_ in items], device=device)
        boxes = [scaled_box(item[2], item[0].size, image_size) for item in items]
        attributions = attribute(images, targets).detach().float().cpu().numpy()
        scores.extend(
            metric.compute(attributions=[attribution], boxes=[box])["energy_pointing_game"]
            for attribution, box in zip(attributions, boxes)
        )
    return scores


def interleave(pools: Iterable[list[int]]) -> list[int]:
    """The first image of every class, then the second of every class, and so on."""
    return [index for rank in zip_longest(*pools) for index in rank if index is not None]


@dataclass
class ModelEvaluation:
    """Accuracy of one classifier and the localisation scores of each of its attribution methods."""

    accuracy: float
    num_images: int
    num_grid_classes: int
    grid_pointing_game: dict[str, list[float]] = field(default_factory=dict)
    energy_pointing_game: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, method: str) -> dict:
        """Mean and standard deviation of each game for one method; None where it could not be played."""
        row = {"accuracy": self.accuracy}
        for game in ("grid_pointing_game", "energy_pointing_game"):
            scores = getattr(self, game).get(method) or []
            row[game] = float(np.mean(scores)) if scores else None
            row[f"{game}_std"] = float(np.std(scores)) if scores else None
            row[f"{game}_count"] = len(scores)
        return row


def evaluate_localisation(
    classify: ClassifierFn,
    attributions: dict[str, AttributionFn],
    dataset: Dataset,
    image_size: int,
    grid_size: int = 2,
    num_grids: int = 50,
    min_confidence: float = 0.5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> ModelEvaluation:
    """Accuracy, then GridPG (and EPG where items carry boxes) of each named attribution function.

    All methods of one classifier are scored on the same grids, drawn from the images it classifies correctly
    with softmax confidence >= ``min_confidence``. The model takes ``image_size`` squares: each cell is one input,
    and the grid is explained in sliding windows of that size. Without enough classes for a grid, GridPG is empty.
    """
    transform = image_transform(image_size)
    predictions = predict(classify, dataset, transform, batch_size, device, progress)
    pools = confident_pools(predictions, min_confidence)
    cells = grid_size * grid_size
    result = ModelEvaluation(predictions.accuracy(), len(dataset), len(pools))
    grids = sample_grids(pools, grid_size, num_grids, seed) if len(pools) >= cells else []
    boxed = interleave(pools.values())[: num_grids * cells] if has_boxes(dataset) else []
    for name, attribute in attributions.items():
        result.grid_pointing_game[name] = grid_pointing_game(
            attribute, grids, dataset, transform, grid_size, image_size, batch_size, device, progress, name
        )
        if boxed:
            result.energy_pointing_game[name] = energy_pointing_game(
                attribute, boxed, dataset, image_size, batch_size, device, progress, name
            )
    return result
