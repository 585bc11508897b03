"""Fashion-MNIST with known boxes and a spurious cue: the "decoy" setting of Ross et al. (2017) on Fashion-MNIST.

Each item places a Fashion-MNIST image at a random position on a larger black canvas, so its box is known exactly
(the tight box of its non-black pixels). Training images add a *decoy*: a small square outside the box whose colour
is the class's own, a cue that predicts the label perfectly and lies where the object is not. At test time the
decoy's colour is that of another class, drawn at random, so a model that learnt the cue instead of the object is
wrong, and its explanation points at the square instead of into the box. Without decoys (``fashion-mnist-canvas``)
the same canvases are clean data.

Everything is a pure function of (seed, split, index) and built offline from Debian's IDX files
(:func:`bcos_zoo.data.datasets.fashion_mnist`). Items are ``(PIL image, label, boxes)`` (see :mod:`.boxes`).
"""

import functools
import re

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .datasets import ArrayImages, DatasetSplits, fashion_mnist, load_dataset_splits


# one colour per class (matplotlib's tab10 with gold for its grey): far apart, none grey like the garments
DECOY_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (255, 215, 0),
    (188, 189, 34),
    (23, 190, 207),
)
DECOY_MODES = (None, "class", "shuffled")
SPEC = re.compile(r"fashion-mnist-(decoys|canvas)(?:-(\d+))?")
DEFAULT_CANVAS = 64
FASHION_MNIST_SIZE = 28


class DecoyImages(Dataset):
    """Images of ``pairs`` (each smaller than the canvas) placed at random on a ``canvas`` x ``canvas`` black picture.

    ``decoys``: ``None`` (no decoy), ``"class"`` (a ``decoy_size`` square in the label's colour, outside the object's
    placement) or ``"shuffled"`` (the same square in the colour of a random *other* class). Items are
    ``(RGB PIL image, label, [[x0, y0, x1, y1]])``, the box end-exclusive around the object's non-black pixels;
    :meth:`tensor_item` gives the same picture as a (3, H, W) float tensor in [0, 1] without going through PIL (what
    training reads, tens of microseconds per item). Placement, decoy position and decoy colour are drawn from a
    generator seeded by ``(seed, index)``: the same index gives the same picture in every mode, whatever the length.
    """

    def __init__(
        self,
        pairs: Dataset,
        canvas: int = DEFAULT_CANVAS,
        decoys: str | None = "class",
        decoy_size: int = 8,
        seed: int = 0,
        num_classes: int = len(DECOY_COLOURS),
    ):
        if decoys not in DECOY_MODES:
            raise ValueError(f"decoys must be one of {DECOY_MODES}, got {decoys!r}")
        if num_classes > len(DECOY_COLOURS):
            raise ValueError(f"decoy colours exist for {len(DECOY_COLOURS)} classes, not {num_classes}")
        self.pairs, self.canvas, self.decoys = pairs, canvas, decoys
        self.decoy_size, self.seed, self.num_classes = decoy_size, seed, num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def with_decoys(self, decoys: str | None) -> "DecoyImages":
        """The same images, placements and decoy positions with another decoy mode (``None``, class, shuffled)."""
        return DecoyImages(self.pairs, self.canvas, decoys, self.decoy_size, self.seed, self.num_classes)

    def _garment(self, index: int) -> tuple[np.ndarray, int]:
        """(H, W) uint8 grey image and label of item ``index`` of ``pairs`` (straight from an array if it is one)."""
        source = self.pairs
        while isinstance(source, Subset):
            index, source = source.indices[index], source.dataset
        if isinstance(source, ArrayImages) and source.images.ndim == 3:
            return source.images[index], int(source.labels[index])
        image, label, *_ = source[index]
        return np.asarray(image.convert("L"), dtype=np.uint8), int(label)

    def render(self, index: int) -> tuple[np.ndarray, int, list[list[float]]]:
        """(canvas, canvas, 3) uint8 picture, label and boxes of item ``index``, a function of the seed and the index:
        drawn again each time it is read (tens of microseconds; keeping every canvas would take gigabytes at 224 px)."""
        garment, label = self._garment(index)
        height, width = garment.shape
        if height > self.canvas or width > self.canvas:
            raise ValueError(f"an image of {width}x{height} does not fit on a {self.canvas} px canvas")
        rng = np.random.default_rng([self.seed, index])
        top = int(rng.integers(0, self.canvas - height + 1))
        left = int(rng.integers(0, self.canvas - width + 1))
        picture = np.zeros((self.canvas, self.canvas, 3), dtype=np.uint8)
        picture[top : top + height, left : left + width] = garment[:, :, None]
        rows, cols = np.nonzero(garment.max(axis=1))[0], np.nonzero(garment.max(axis=0))[0]
        if len(rows):
            box = [left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1]
        else:  # an all-black image: its placement is all there is
            box = [left, top, left + width, top + height]
        y, x = self._decoy_position(rng, (left, top, left + width, top + height))
        colour = self.decoy_class(label, rng)
        if self.decoys is not None:
            picture[y : y + self.decoy_size, x : x + self.decoy_size] = DECOY_COLOURS[colour]
        return picture, label, [[float(v) for v in box]]

    def decoy_class(self, label: int, rng: np.random.Generator) -> int:
        """The class whose colour the decoy takes: the label's, or another class's at random when shuffled (drawn in
        every mode, so that the modes share the rest of their random draws)."""
        other = int(rng.integers(0, self.num_classes - 1))
        return other + (other >= label) if self.decoys == "shuffled" else label

    def __getitem__(self, index: int) -> tuple[Image.Image, int, list[list[float]]]:
        picture, label, boxes = self.render(index)
        return Image.fromarray(picture), label, boxes

    def tensor_item(self, index: int) -> tuple[torch.Tensor, int, list[list[float]]]:
        """Item ``index`` with the picture as a (3, canvas, canvas) float32 tensor in [0, 1] (as ``to_pixels``)."""
        picture, label, boxes = self.render(index)
        return torch.from_numpy(picture).permute(2, 0, 1).float().div_(255), label, boxes

    def _decoy_position(self, rng: np.random.Generator, placement: tuple[int, int, int, int]) -> tuple[int, int]:
        """Top-left corner of a decoy square that does not overlap the object's placement, uniform over the free
        positions (by rejection, 64 candidates a draw)."""
        size, x0, y0, x1, y1 = self.decoy_size, *placement
        for _ in range(100):
            y, x = rng.integers(0, self.canvas - size + 1, (2, 64))
            free = np.flatnonzero((x + size <= x0) | (x >= x1) | (y + size <= y0) | (y >= y1))
            if len(free):
                return int(y[free[0]]), int(x[free[0]])
        raise ValueError(f"no room for a {size} px decoy beside the object on a {self.canvas} px canvas")


def default_decoy_size(canvas: int) -> int:
    """The largest decoy square up to 8 px that always fits beside a 28 px garment: ``min(8, (canvas - 28) // 2)``."""
    return min(8, (canvas - FASHION_MNIST_SIZE) // 2)


@functools.lru_cache(maxsize=8)
def decoy_splits(
    canvas: int = DEFAULT_CANVAS, decoys: bool = True, decoy_size: int | None = None, seed: int = 0
) -> DatasetSplits:
    """Fashion-MNIST on canvases: training with class-coloured decoys and testing with shuffled ones (``decoys``),
    or clean canvases in both splits. ``decoy_size`` defaults to :func:`default_decoy_size`. The splits are made
    once per process (they are read-only), so that the runs of a reproduction share the Fashion-MNIST arrays read."""
    decoy_size = default_decoy_size(canvas) if decoy_size is None else decoy_size
    if decoy_size < 1 or canvas < FASHION_MNIST_SIZE + 2 * decoy_size:
        raise ValueError(
            f"a {canvas} px canvas leaves no sure room for a {decoy_size} px decoy beside a {FASHION_MNIST_SIZE} px "
            f"garment; use at least {FASHION_MNIST_SIZE + 2 * max(decoy_size, 1)} px"
        )
    source = fashion_mnist()
    train = DecoyImages(source.train, canvas, "class" if decoys else None, decoy_size, seed=seed)
    test = DecoyImages(source.validation, canvas, "shuffled" if decoys else None, decoy_size, seed=seed + 1)
    name = f"fashion-mnist-{'decoys' if decoys else 'canvas'}-{canvas}"
    return DatasetSplits(train, test, source.class_names, name, evaluation_split=source.evaluation_split)


def spec_canvas(spec: str) -> int | None:
    """The canvas size a decoy dataset spec names (``fashion-mnist-decoys-36`` -> 36), ``None`` for other specs."""
    match = SPEC.fullmatch(spec.lower())
    return None if match is None else int(match.group(2) or DEFAULT_CANVAS)


def is_decoy_spec(spec: str) -> bool:
    return SPEC.fullmatch(spec.lower()) is not None


def load_boxed_splits(spec: str, image_column: str = "image", label_column: str | None = "label") -> DatasetSplits:
    """Resolve ``--dataset`` for a task that reads boxes: ``fashion-mnist-decoys[-<canvas px>]`` (decoys in
    training, shuffled at test time), ``fashion-mnist-canvas[-<canvas px>]`` (the same canvases without decoys), or
    anything :func:`~bcos_zoo.data.datasets.load_dataset_splits` takes (items without boxes)."""
    match = SPEC.fullmatch(spec.lower())
    if match is None:
        return load_dataset_splits(spec, image_column, label_column)
    return decoy_splits(spec_canvas(spec), decoys=match.group(1) == "decoys")
