"""The localisation and accuracy scores as plain, batched functions of tensors.

The localisation harness calls these directly, one call per batch; the ``evaluate`` modules in
``bcos_zoo/evaluation/metrics`` are thin wrappers over the same functions, so a published metric and the harness
cannot disagree. Inputs may be torch tensors or numpy arrays; sums are taken in float64.

Both pointing games share one rule: only positive attribution counts (negative evidence points away from a class),
and an explanation without any positive attribution scores 0.
"""

from collections.abc import Sequence

import numpy as np
import torch

from ..data.boxes import as_boxes
from ..data.boxes import box_masks as union_mask


ArrayLike = torch.Tensor | np.ndarray | Sequence


def _as_float64(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _as_batch(attributions: ArrayLike) -> torch.Tensor:
    batch = _as_float64(attributions)
    if batch.ndim != 3:
        raise ValueError(f"Attributions must be a batch of maps (N, H, W), got shape {tuple(batch.shape)}.")
    return batch


def check_finite(attributions: torch.Tensor) -> None:
    """Refuse maps that hold NaN or inf: a method that failed would otherwise be scored (NaN pointing nowhere in
    the pointing games, NaN ranked first or last in the faithfulness orders) as if it had explained the image."""
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError("Attributions hold NaN or inf values; the method that made them failed on these images.")


def positive_share(attributions: ArrayLike, masks: ArrayLike) -> torch.Tensor:
    """(N,) share of each map's positive attribution that lies where its mask is true (0 without any). A map that is
    not finite is refused (:func:`check_finite`): NaN would otherwise score 0 and inf NaN."""
    attributions = _as_batch(attributions)
    check_finite(attributions)
    positive = attributions.clamp(min=0)
    masks = torch.as_tensor(masks, device=positive.device).bool()
    if masks.shape != positive.shape:
        raise ValueError(f"Masks of shape {tuple(masks.shape)} do not match attributions {tuple(positive.shape)}.")
    total = positive.sum(dim=(1, 2))
    inside = (positive * masks).sum(dim=(1, 2))
    return torch.where(total > 0, inside / total.where(total > 0, torch.ones_like(total)), torch.zeros_like(total))


def cell_masks(cell_indices: ArrayLike, grid_size: int | tuple[int, int], height: int, width: int) -> torch.Tensor:
    """(N, H, W) masks of one cell each of a ``rows x cols`` grid (an int: square) over H x W pixels, cells row-major
    from top left."""
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else (int(n) for n in grid_size)
    if height % rows or width % cols:
        raise ValueError(f"An attribution of {height}x{width} does not split into a {rows}x{cols} grid.")
    cells = torch.as_tensor(cell_indices).long().flatten()
    outside = (cells < 0) | (cells >= rows * cols)
    if bool(outside.any()):
        raise ValueError(f"cell_index {int(cells[outside][0])} is outside a {rows}x{cols} grid.")
    row_of_pixel = torch.arange(height, device=cells.device) // (height // rows)
    col_of_pixel = torch.arange(width, device=cells.device) // (width // cols)
    cell_of_pixel = row_of_pixel[:, None] * cols + col_of_pixel[None, :]
    return cell_of_pixel[None] == cells[:, None, None]


def grid_pointing_scores(
    attributions: ArrayLike, cell_indices: ArrayLike, grid_size: int | tuple[int, int]
) -> torch.Tensor:
    """Grid pointing game, (N,): positive attribution in the explained cell over positive attribution in the grid.

    ``attributions`` (N, H, W) explain one cell each, ``cell_indices`` (N,) numbers it row-major from the top left
    of a ``grid_size = (rows, cols)`` grid (an int ``n``: n x n); H and W must be divisible by rows and cols.
    """
    batch = _as_batch(attributions)
    masks = cell_masks(torch.as_tensor(cell_indices).to(batch.device), grid_size, *batch.shape[1:])
    return positive_share(batch, masks)


def inside_image(boxes: ArrayLike, height: int, width: int) -> np.ndarray:
    """Boxes ``[x0, y0, x1, y1]`` as a float64 (K, 4) array, refused unless each lies inside the image."""
    array = as_boxes(boxes)
    for box in array.tolist():
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"Box {box} does not lie inside a {height}x{width} attribution with x0 < x1, y0 < y1.")
    return array


def box_masks(boxes: ArrayLike, height: int, width: int) -> torch.Tensor:
    """(N, H, W) masks of N boxes ``[x0, y0, x1, y1]`` in pixels, end-exclusive, which must lie inside the image. A
    pixel is in a box where its centre is: the rule of the harness and of training with boxes as well
    (:func:`bcos_zoo.data.boxes.box_masks`), so the same box scores the same everywhere."""
    boxes = inside_image(boxes, height, width)
    masks = [union_mask(box, height, width) for box in boxes]
    if empty := [box.tolist() for box, mask in zip(boxes, masks) if not mask.any()]:  # it would score 0 for nothing
        raise ValueError(f"Box {empty[0]} covers no pixel's centre; a box must cover at least one pixel.")
    return torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)


def energy_pointing_scores(attributions: ArrayLike, masks: ArrayLike) -> torch.Tensor:
    """Energy pointing game, (N,): positive attribution inside each object's mask (N, H, W) over the positive total.

    For boxes, :func:`box_masks` makes the masks.
    """
    return positive_share(attributions, masks)


def accuracy(predictions: ArrayLike, references: ArrayLike) -> float:
    """Top-1 accuracy: the share of predicted class indices equal to their reference (0 for no references)."""
    predictions, references = torch.as_tensor(predictions).flatten(), torch.as_tensor(references).flatten()
    if predictions.shape != references.shape:
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    return float((predictions == references).double().mean()) if len(references) else 0.0
