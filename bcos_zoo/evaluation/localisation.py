"""The B-cos papers' localisation measures, for any model that can be written as two functions of [0, 1] images.

``classify(images) -> logits`` picks the images, ``attribute(images, targets) -> (N, H, W)`` explains them; B-cos
models (:func:`bcos_attribution`) and post-hoc methods on standard models (:mod:`bcos_zoo.evaluation.baselines`)
share one harness and one scoring, the batched functions of :mod:`bcos_zoo.evaluation.scores` (which the
``evaluate`` modules in ``bcos_zoo/evaluation/metrics`` wrap). Pixels come from the model's own image processor
(:mod:`bcos_zoo.data.preprocessing`), so an image is scored on exactly the pixels the model sees everywhere else.

Grid pointing game: among the images a model classifies correctly and confidently, tile ``n x n`` images of
distinct classes into a grid (cells row-major from the top left), explain each cell's class on the whole grid and
score the share of positive attribution inside that cell. A model that takes images of any size (a CNN, a ViT
without position embeddings) explains the grid whole; a fixed-size ViT cannot take the grid at once: it is
explained in sliding windows of its input size at half that stride, and the window attributions are summed back
(:func:`explanation_window` tells which).
Energy pointing game (as the Model Guidance paper plays it): every image of the dataset whose item carries an object
box, explained for its label whether the model classifies it correctly or not, scores the share of positive
attribution inside the box; the box is carried through the resize and crop of the model's processor and a pixel is in
it where its centre is (:func:`box_mask`). So every model is scored on the same images, whatever its accuracy and the
grid settings, less those whose box its processor crops away entirely, which are counted as skipped.
"""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import ConvNextImageProcessor
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_transforms import get_resize_output_image_size
from transformers.image_utils import ChannelDimension
from transformers.utils.logging import tqdm  # tqdm.auto, off where transformers' progress bars are

from ..data.boxes import as_boxes, crop_resize_boxes
from ..data.boxes import box_masks as union_mask
from ..data.datasets import default_workers
from ..data.preprocessing import ImageTransform
from .scores import accuracy, energy_pointing_scores, grid_pointing_scores, inside_image


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


def explanation_window(model) -> int | None:
    """The window a grid must be explained in for ``model``: its input size, or None to explain the grid whole.

    Only learned position embeddings over a fixed patch grid (a ViT's, a CLIP image tower's) tie a model to one input
    size; convolutions (a ConvNeXt's patchifying stem too), sin-cos position embeddings computed for each grid (the
    simple ViT's) and attention without position embeddings take any size.
    """
    learned = any(
        name.endswith(("embeddings.position_embeddings", "embeddings.position_embedding.weight", "pos_embed"))
        and not name.startswith("text_model.")
        for name, _ in model.named_parameters()
    )
    return int(getattr(model.config, "vision_config", model.config).image_size) if learned else None


@dataclass
class Predictions:
    """The predicted class (N,), its softmax probability (N,) and the true label (N,) of each image of a split: only
    what is read is kept (all N x C probabilities would take gigabytes at ImageNet-21k's 21,843 classes)."""

    predicted: torch.Tensor
    confidence: torch.Tensor
    labels: torch.Tensor

    def accuracy(self) -> float:
        """Top-1 accuracy (:func:`bcos_zoo.evaluation.scores.accuracy`)."""
        return accuracy(self.predicted, self.labels)


class ModelInputs(Dataset):
    """Each item's model pixels and label: what a DataLoader's workers (if any) read and transform."""

    def __init__(self, dataset: Dataset, transform: ImageTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label, *_ = self.dataset[index]
        return self.transform(image), int(label)


@torch.no_grad()
def predict(
    classify: ClassifierFn,
    dataset: Dataset,
    transform: ImageTransform,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int | None = None,
) -> Predictions:
    """Classify every item ``(image, label, ...)`` of ``dataset``, its images read and transformed by
    ``num_workers`` processes (0: in this one; ``None``: none on the CPU, up to 8 beside a GPU, where reading and
    resizing images is most of the time)."""
    if num_workers is None:
        num_workers = default_workers(torch.device(device).type == "cpu")
    none = torch.empty(0, dtype=torch.long)  # what each list holds for an empty dataset
    predicted, confidence, labels = [none], [none.float()], [none]
    loader = DataLoader(ModelInputs(dataset, transform), batch_size=batch_size, num_workers=num_workers)
    for images, batch_labels in tqdm(loader, desc="classifying", disable=not progress, leave=False):
        top = classify(images.to(device)).float().softmax(dim=1).max(dim=1)
        predicted.append(top.indices.cpu())
        confidence.append(top.values.cpu())
        labels.append(batch_labels)
    return Predictions(torch.cat(predicted), torch.cat(confidence), torch.cat(labels))


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
        attributions = attribute(batch, targets[[n for n, _, _ in chunk]])
        attributions = checked_attributions(attributions, (len(chunk), window, window))
        for (n, top, left), attribution in zip(chunk, attributions):
            summed[n, top : top + window, left : left + window] += attribution
    return summed


def checked_attributions(attributions: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Detached float32 attributions, after checking they are the (N, H, W) maps the harness asked for."""
    if tuple(attributions.shape) != shape:
        raise ValueError(f"An attribution function must return (N, H, W) = {shape}, got {tuple(attributions.shape)}.")
    return attributions.detach().float()


def whole_attribution(
    attribute: AttributionFn, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Explain (N, C, H, W) images as they are, ``batch_size`` at a time: for models that take any input size."""
    height, width = images.shape[-2:]
    chunks = []
    for start in range(0, len(images), batch_size):
        batch, batch_targets = images[start : start + batch_size], targets[start : start + batch_size]
        chunks.append(checked_attributions(attribute(batch, batch_targets), (len(batch), height, width)))
    return torch.cat(chunks)


def grid_attribution(
    attribute: AttributionFn,
    images: torch.Tensor,
    targets: torch.Tensor,
    window: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """(N, H, W) attributions of (N, C, H, W) grids: whole when ``window`` is None, else in sliding windows."""
    if window is None:
        return whole_attribution(attribute, images, targets, batch_size)
    return sliding_window_attribution(attribute, images, targets, window, batch_size=batch_size)


def load_images(dataset: Dataset, indices: Sequence[int], transform: ImageTransform) -> torch.Tensor:
    return torch.stack([transform(dataset[i][0]) for i in indices])


def grid_pointing_game(
    attribute: AttributionFn,
    grids: Sequence[Grid],
    dataset: Dataset,
    transform: ImageTransform,
    grid_size: int,
    window: int | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "grid pointing game",
) -> list[float]:
    """Scores of every cell of every grid (``len(grids) * grid_size**2``, grid by grid, cells row-major).

    Each cell's class is explained on the whole grid: at once when ``window`` is None (a model that takes any
    input size), else in sliding windows of ``window`` pixels (the model's input size) at half-window stride.
    """
    cells = torch.arange(grid_size * grid_size)
    scores = []
    for grid in tqdm(grids, desc=description, disable=not progress, leave=False):
        tiled = tile_grid(load_images(dataset, grid.indices, transform), grid_size).to(device)
        images = tiled.expand(len(cells), *tiled.shape)
        targets = torch.tensor(grid.labels, device=device)
        attributions = grid_attribution(attribute, images, targets, window, batch_size)
        scores.extend(grid_pointing_scores(attributions, cells, (grid_size, grid_size)).tolist())
    return scores


Region = tuple[float, float, float, float]
"""``(left, top, width, height)`` of an image, in its pixels."""


def transform_processor(transform: ImageTransform) -> BaseImageProcessor | None:
    """The image processor a transform applies (the ``processor`` attribute of what ``ProcessorTransform`` and
    ``model_transform`` make), else None."""
    processor = getattr(transform, "processor", None)
    return processor if isinstance(processor, BaseImageProcessor) else None


def processor_view(processor: BaseImageProcessor, width: int, height: int) -> tuple[Region, tuple[int, int]]:
    """The region of a ``width`` x ``height`` image that ``processor`` keeps and the ``(width, height)`` it makes of
    it: its resize (to a fixed size; or the shortest edge to a size, with the other edge in proportion, a ConvNeXt
    processor's to ``size / crop_pct`` below 384 px), then its centre crop (a ConvNeXt processor's to ``size``, or
    ``crop_size`` where ``do_center_crop``), as transformers computes them. Other resize rules are refused: boxes
    could not follow the image."""
    size, resized, crop = processor.size, (height, width), None
    convnext = isinstance(processor, ConvNextImageProcessor) and size.shortest_edge
    shortest = int(size.shortest_edge / processor.crop_pct) if convnext and size.shortest_edge < 384 else None
    if processor.do_resize:
        if convnext and shortest is None:  # 384 px and up: warped to a square, not cropped
            resized = (size.shortest_edge, size.shortest_edge)
        elif size.shortest_edge and not (size.longest_edge or size.height or size.width):
            shape = np.empty((height, width, 0))  # transformers' shortest-edge rule reads only the shape
            edge = shortest or size.shortest_edge
            resized = get_resize_output_image_size(shape, edge, False, input_data_format=ChannelDimension.LAST)
            crop = (size.shortest_edge, size.shortest_edge) if shortest else None
        elif size.height and size.width and not (size.shortest_edge or size.longest_edge):
            resized = (size.height, size.width)
        else:
            raise ValueError(
                f"Boxes cannot follow an image through a {type(processor).__name__} resizing to {size}: the harness "
                "knows fixed sizes and shortest edges (ViT, ConvNeXt, CLIP processors)."
            )
    crop_size = getattr(processor, "crop_size", None)
    if crop is None and getattr(processor, "do_center_crop", False) and crop_size is not None:
        crop = (crop_size.height, crop_size.width)
    (resized_height, resized_width), (out_height, out_width) = resized, crop or resized
    top, left = int((resized_height - out_height) / 2), int((resized_width - out_width) / 2)  # transformers' offsets
    scale_x, scale_y = width / resized_width, height / resized_height
    region = (left * scale_x, top * scale_y, out_width * scale_x, out_height * scale_y)
    return region, (out_width, out_height)


def transform_view(transform: ImageTransform, width: int, height: int) -> tuple[Region, tuple[int, int]]:
    """:func:`processor_view` of the processor behind ``transform``; a transform of no processor must keep the
    image's size (it then keeps the whole image), since where it would move a box is unknown."""
    processor = transform_processor(transform)
    if processor is not None:
        return processor_view(processor, width, height)
    out_height, out_width = transform(Image.new("L", (width, height))).shape[-2:]
    if (out_height, out_width) != (height, width):
        raise ValueError(
            f"A transform that makes {out_height}x{out_width} pixels of a {height}x{width} image cannot carry boxes; "
            "pass the model's processor (bcos_zoo.data.preprocessing.model_transform or ProcessorTransform)."
        )
    return (0.0, 0.0, float(width), float(height)), (width, height)


def box_mask(boxes, original_size: tuple[int, int], transform: ImageTransform) -> torch.Tensor:
    """(H, W) mask of an object's boxes ``[x0, y0, x1, y1]`` (one, or a (K, 4) list whose union is the object;
    pixels of the (width, height) original, end-exclusive) in the pixels ``transform`` makes of that image.

    The boxes are mapped through the resize and centre crop of the transform's processor (:func:`transform_view`)
    and a pixel belongs to a box where its centre lies inside it (:func:`bcos_zoo.data.boxes.box_masks`), the rule
    of training with boxes and of the ``evaluate`` module alike. A box the processor crops away, or one thinner
    than a pixel that covers no pixel's centre, gives an empty mask.
    """
    width, height = original_size
    boxes = inside_image(boxes, height, width)
    region, (out_width, out_height) = transform_view(transform, width, height)
    return union_mask(crop_resize_boxes(boxes, region, (out_width, out_height)), out_height, out_width)


def has_boxes(dataset: Dataset) -> bool:
    """Whether items are ``(image, label, box)``: the energy pointing game needs object boxes."""
    return len(dataset) > 0 and len(dataset[0]) > 2 and dataset[0][2] is not None


def boxed_images(dataset: Dataset, transform: ImageTransform) -> tuple[list[int], int]:
    """The indices of the items with boxes that cover a pixel of what ``transform`` makes of their image, and how
    many items with boxes do not (the processor crops their object away): those cannot be scored."""
    if not has_boxes(dataset):
        return [], 0
    kept, skipped = [], 0
    for index in range(len(dataset)):
        image, _, boxes, *_ = dataset[index]
        if len(as_boxes(boxes)) == 0:
            continue
        if box_mask(boxes, image.size, transform).any():
            kept.append(index)
        else:
            skipped += 1
    return kept, skipped


def energy_pointing_game(
    attribute: AttributionFn,
    indices: Sequence[int],
    dataset: Dataset,
    transform: ImageTransform,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "energy pointing game",
) -> list[float]:
    """Scores of the images ``indices`` of a dataset of ``(image, label, box)`` items, each explained for its label.

    Boxes are ``[x0, y0, x1, y1]`` in the original image's pixels (end-exclusive), one or several per object (their
    union); :func:`box_mask` carries them through ``transform``. An image whose box covers no pixel of the model's
    view is refused (it would score 0 for nothing): :func:`boxed_images` leaves those out.
    """
    scores = []
    for start in tqdm(range(0, len(indices), batch_size), desc=description, disable=not progress, leave=False):
        chunk = indices[start : start + batch_size]
        items = [dataset[i] for i in chunk]
        images = torch.stack([transform(image) for image, *_ in items]).to(device)
        targets = torch.tensor([int(label) for _, label, *_ in items], device=device)
        masks = torch.stack([box_mask(box, image.size, transform) for image, _, box, *_ in items]).to(device)
        if empty := [index for index, mask in zip(chunk, masks) if not mask.any()]:
            raise ValueError(
                f"The boxes of image {empty[0]} cover no pixel of the model's view (its processor crops them away); "
                "leave such images out (boxed_images)."
            )
        attributions = checked_attributions(attribute(images, targets), tuple(masks.shape))
        scores.extend(energy_pointing_scores(attributions, masks).tolist())
    return scores


@dataclass
class ModelEvaluation:
    """Accuracy of one classifier and the localisation scores of each of its attribution methods;
    ``energy_pointing_game_skipped``: the images with boxes its processor crops away, which EPG leaves out."""

    accuracy: float
    num_images: int
    num_grid_classes: int
    grid_pointing_game: dict[str, list[float]] = field(default_factory=dict)
    energy_pointing_game: dict[str, list[float]] = field(default_factory=dict)
    energy_pointing_game_skipped: int = 0

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
    transform: ImageTransform,
    window: int | None = None,
    grid_size: int = 2,
    num_grids: int = 50,
    min_confidence: float = 0.5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    num_workers: int | None = None,
) -> ModelEvaluation:
    """Accuracy, then GridPG (and EPG where items carry boxes) of each named attribution function.

    All methods of one classifier are scored on the same grids, drawn from the images it classifies correctly with
    softmax confidence >= ``min_confidence``. ``transform`` makes the model's pixels of an image (its own processor:
    :func:`bcos_zoo.data.preprocessing.model_transform`), so each cell is one model input; grids are explained whole
    when ``window`` is None, else in sliding windows of that size (:func:`explanation_window`). ``num_workers``
    processes read the images that are classified (as :func:`predict` reads them). Without enough classes for a
    grid, GridPG is empty. EPG scores every image with boxes, each explained for its label (the Model Guidance
    paper's rule), whatever the model predicts and the grid settings, so that models are compared on the same
    images; those whose boxes the processor crops away are counted as skipped.
    """
    predictions = predict(classify, dataset, transform, batch_size, device, progress, num_workers)
    pools = confident_pools(predictions, min_confidence)
    cells = grid_size * grid_size
    result = ModelEvaluation(predictions.accuracy(), len(dataset), len(pools))
    grids = sample_grids(pools, grid_size, num_grids, seed) if len(pools) >= cells else []
    boxed, result.energy_pointing_game_skipped = boxed_images(dataset, transform)
    for name, attribute in attributions.items():
        result.grid_pointing_game[name] = grid_pointing_game(
            attribute, grids, dataset, transform, grid_size, window, batch_size, device, progress, name
        )
        if boxed:
            result.energy_pointing_game[name] = energy_pointing_game(
                attribute, boxed, dataset, transform, batch_size, device, progress, name
            )
    return result
