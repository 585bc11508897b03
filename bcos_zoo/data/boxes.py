"""Images with object boxes: the boxes follow the image through resizing, random-resized cropping and flipping.

Items of a boxed dataset are ``(PIL image, label, boxes)``, ``boxes`` a (K, 4) array of ``[x0, y0, x1, y1]`` in the
image's pixels (x to the right, y down, ``x1``/``y1`` end-exclusive: a box covering pixel columns 3..5 is
``[3, ?, 6, ?]``). Every geometric step maps the image and its boxes by the same affine map of continuous pixel
coordinates, so a box stays exactly where its object is (up to the one-pixel blur of bilinear resampling). Training
with explanations (model guidance) needs that: its loss compares an explanation with the box.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from ..modeling.pipeline_bcos_explanation import read_image
from .datasets import leave_ctrl_c_to_the_main_process, seeded


BoxTransform = Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]]
"""``(image, boxes (K, 4)) -> (pixels (3, H, W) in [0, 1], box mask (H, W) bool)``."""


def as_boxes(boxes) -> np.ndarray:
    """Boxes as a float64 (K, 4) array (``None`` or empty: no box); rejects boxes with ``x1 <= x0`` or ``y1 <= y0``."""
    array = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    bad = (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])
    if bad.any():
        raise ValueError(f"boxes must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {array[bad][0].tolist()}")
    return array


def crop_resize_boxes(boxes: np.ndarray, crop: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The boxes of an image region ``crop = (left, top, width, height)`` resized to ``size = (width, height)``.

    Boxes are clipped to the region; a box left without area (cropped away) is dropped.
    """
    left, top, width, height = crop
    out_width, out_height = size
    scale = np.array([out_width / width, out_height / height, out_width / width, out_height / height])
    mapped = (as_boxes(boxes) - np.array([left, top, left, top])) * scale
    mapped = np.clip(mapped, 0, [out_width, out_height, out_width, out_height])
    keep = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return mapped[keep]


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """The boxes of the horizontally mirrored image: ``x -> width - x`` (so ``x0`` and ``x1`` swap)."""
    boxes = as_boxes(boxes)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def resize_with_boxes(image: Image.Image, boxes, size: int) -> tuple[Image.Image, np.ndarray]:
    """Resize to ``size`` x ``size`` (bilinear), boxes scaled with it."""
    crop = (0.0, 0.0, float(image.width), float(image.height))
    return image.resize((size, size), Image.BILINEAR), crop_resize_boxes(boxes, crop, (size, size))


def random_resized_crop_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of a random crop with an area share in ``scale`` and an aspect ratio in
    ``ratio`` (log-uniform), the usual Inception-style sampling; drawn with torch's random generator. After ten
    failed draws, the largest centred crop whose aspect ratio lies in ``ratio``."""
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(log_low, log_high)))
        crop_width = round(math.sqrt(target * aspect))
        crop_height = round(math.sqrt(target / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,)))
            left = int(torch.randint(0, width - crop_width + 1, (1,)))
            return left, top, crop_width, crop_height
    aspect = width / height
    if aspect < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    return (width - crop_width) // 2, (height - crop_height) // 2, crop_width, crop_height


def random_resized_crop_with_boxes(
    image: Image.Image,
    boxes,
    size: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_probability: float = 0.5,
) -> tuple[Image.Image, np.ndarray]:
    """A random region resized to ``size`` x ``size`` and mirrored with ``flip_probability``, boxes moved with it.

    The region is resampled directly from the original (PIL's ``resize(box=...)``), so image and boxes undergo one
    and the same affine map.
    """
    left, top, width, height = random_resized_crop_params(image.width, image.height, scale, ratio)
    crop = (float(left), float(top), float(width), float(height))
    picture = image.resize((size, size), Image.BILINEAR, box=(left, top, left + width, top + height))
    boxes = crop_resize_boxes(boxes, crop, (size, size))
    if float(torch.rand(1)) < flip_probability:
        picture, boxes = picture.transpose(Image.FLIP_LEFT_RIGHT), flip_boxes(boxes, size)
    return picture, boxes


def to_pixels(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] of an image (converted to RGB)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def box_masks(boxes, height: int, width: int) -> torch.Tensor:
    """(H, W) bool: the union of the boxes, a pixel belonging to a box where its centre lies inside it (pixel ``p``
    has its centre ``p + 0.5`` in ``[x0, x1)`` exactly when ``ceil(x0 - 0.5) <= p < ceil(x1 - 0.5)``)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in np.ceil(as_boxes(boxes) - 0.5).astype(np.int64).clip(0, [width, height, width, height]):
        mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class BoxTrainingTransform:
    """The training transform with boxes: random-resized crop and horizontal flip (as the zoo's image-only training
    transform does, without normalisation), then the pixels and the mask of the moved boxes."""

    image_size: int
    crop_scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5

    def __call__(self, image: Image.Image, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        size, scale, ratio = self.image_size, tuple(self.crop_scale), tuple(self.ratio)
        picture, moved = random_resized_crop_with_boxes(
            read_image(image), boxes, size, scale, ratio, self.flip_probability
        )
        return to_pixels(picture), box_masks(moved, size, size)


def as_is_transform(image: "Image.Image | torch.Tensor", boxes) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels as they are (a PIL image, or a (3, H, W) tensor in [0, 1] passed through) and the box mask: for
    data already drawn at the model's size, such as the decoy canvases, whose random placement is their augmentation.
    :class:`BoxedImages` reads tensors straight from datasets that offer ``tensor_item`` when given this transform."""
    pixels = image if isinstance(image, torch.Tensor) else to_pixels(image)
    return pixels, box_masks(boxes, *pixels.shape[-2:])


def dilate_boxes(boxes, fraction: float, width: int, height: int) -> np.ndarray:
    """Boxes grown by ``fraction`` of their width (height) on the left and right (top and bottom), in whole pixels
    (rounded down) and clipped to the image: the model guidance paper's coarse annotations ("box dilation")."""
    boxes = as_boxes(boxes)
    if fraction <= 0 or not len(boxes):
        return boxes
    margins = np.floor(fraction * (boxes[:, 2:] - boxes[:, :2]))
    grown = np.concatenate([boxes[:, :2] - margins, boxes[:, 2:] + margins], axis=1)
    return np.clip(grown, 0, [width, height, width, height])


@dataclass
class BoxResizeTransform:
    """Resize to ``image_size`` x ``image_size``, boxes with it: pixels and box mask, without randomness."""

    image_size: int

    def __call__(self, image: Image.Image, boxes) -> tuple[torch.Tensor, torch.Tensor]:
        picture, moved = resize_with_boxes(image.convert("RGB"), boxes, self.image_size)
        return to_pixels(picture), box_masks(moved, self.image_size, self.image_size)


def boxed_subset(count: int, fraction: float, seed: int = 0) -> set[int]:
    """The indices (out of ``count``) whose boxes training may use: a seeded ``fraction`` of them, at least one
    when ``fraction > 0`` (the model guidance paper finds that 1% of the boxes already helps)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"box fraction must lie in [0, 1], got {fraction}")
    if fraction == 0 or count == 0:
        return set()
    chosen = max(1, round(fraction * count))
    # The Trainer shuffles epoch 0 with the run's seed: the same permutation would put every boxed image in epoch 0's
    # first steps (guided in warm-up only). The seed with the bits of a fixed mask flipped is more than 10**9 away
    # from it, and from its next epochs' seeds (torch's generator reads the low 32 bits).
    generator = torch.Generator().manual_seed((seed ^ 0x9E3779B9) % 2**32)
    return set(torch.randperm(count, generator=generator)[:chosen].tolist())


class BoxedImages(Dataset):
    """``(image, label[, boxes])`` items turned into the dicts the guided ``Trainer`` feeds the model.

    Each item is ``pixel_values``, ``labels``, ``box_mask`` (H, W) and ``has_boxes``: whether the item has boxes and
    is among the seeded ``box_fraction`` whose boxes may be used. Items without boxes (plain ``(image, label)`` pairs)
    are served with an empty mask. Augmentation is seeded by (seed, epoch, index), as in
    :class:`~bcos_zoo.data.datasets.TransformedImages`, so a resumed run sees the same crops and flips.
    """

    def __init__(
        self,
        items: Dataset,
        transform: BoxTransform,
        seed: int | None = None,
        box_fraction: float = 1.0,
        box_seed: int = 0,
        box_dilation: float = 0.0,
    ):
        self.pairs, self.transform, self.seed, self.box_dilation = items, transform, seed, box_dilation
        self.with_boxes = boxed_subset(len(items), box_fraction, box_seed)
        self.epoch = 0
        source, self._indices = items, None
        while isinstance(source, Subset):  # the tensors of a subset's items come from the dataset below it
            outer = range(len(source)) if self._indices is None else self._indices
            self._indices, source = [source.indices[i] for i in outer], source.dataset
        self._tensors = source if transform is as_is_transform and hasattr(source, "tensor_item") else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        leave_ctrl_c_to_the_main_process()
        if self._tensors is not None:
            image, label, *rest = self._tensors.tensor_item(index if self._indices is None else self._indices[index])
        else:
            image, label, *rest = self.pairs[index]
        boxes = as_boxes(rest[0] if rest else None)
        if self.box_dilation:
            width, height = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
            boxes = dilate_boxes(boxes, self.box_dilation, width, height)
        if self.seed is None or self.transform is as_is_transform:  # nothing random to seed
            pixels, mask = self.transform(image, boxes)
        else:
            pixels, mask = seeded(self.seed, self.epoch, index, lambda: self.transform(image, boxes))
        has_boxes = index in self.with_boxes and bool(mask.any())
        return {"pixel_values": pixels, "labels": int(label), "box_mask": mask, "has_boxes": has_boxes}


def collate_boxed(batch: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stack :class:`BoxedImages` items: ``pixel_values``, ``labels``, ``box_masks`` (N, H, W), ``has_boxes`` (N,)."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.tensor([item["labels"] for item in batch], dtype=torch.long),
        "box_masks": torch.stack([item["box_mask"] for item in batch]),
        "has_boxes": torch.tensor([bool(item["has_boxes"]) for item in batch], dtype=torch.bool),
    }
