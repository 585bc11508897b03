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

import re

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .datasets import DatasetSplits, fashion_mnist, load_dataset_splits


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
    ``(RGB PIL image, label, [[x0, y0, x1, y1]])``, the box end-exclusive around the object's non-black pixels.
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

    def decoy_class(self, label: int, rng: np.random.Generator) -> int:
        """The class whose colour the decoy takes: the label's, or another class's at random when shuffled."""
        if self.decoys == "class":
            return label
        other = int(rng.integers(0, self.num_classes - 1))
        return other + (other >= label)

    def __getitem__(self, index: int) -> tuple[Image.Image, int, list[list[float]]]:
        image, label, *_ = self.pairs[index]
        label = int(label)
        garment = np.asarray(image.convert("L"), dtype=np.uint8)
        height, width = garment.shape
        if height > self.canvas or width > self.canvas:
            raise ValueError(f"an image of {width}x{height} does not fit on a {self.canvas} px canvas")
        rng = np.random.default_rng([self.seed, index])
        top = int(rng.integers(0, self.canvas - height + 1))
        left = int(rng.integers(0, self.canvas - width + 1))
        picture = np.zeros((self.canvas, self.canvas, 3), dtype=np.uint8)
        picture[top : top + height, left : left + width] = garment[:, :, None]
        rows, cols = np.nonzero(garment)
        if len(rows):
            box = [left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1]
        else:  # an all-black image: its placement is all there is
            box = [left, top, left + width, top + height]
        if self.decoys is not None:
            y, x = self._decoy_position(rng, (left, top, left + width, top + height))
            size = self.decoy_size
            picture[y : y + size, x : x + size] = DECOY_COLOURS[self.decoy_class(label, rng)]
        return Image.fromarray(picture), label, [[float(v) for v in box]]

    def _decoy_position(self, rng: np.random.Generator, placement: tuple[int, int, int, int]) -> tuple[int, int]:
        """Top-left corner of a decoy square that does not overlap the object's placement."""
        size, x0, y0, x1, y1 = self.decoy_size, *placement
        ys, xs = np.mgrid[0 : self.canvas - size + 1, 0 : self.canvas - size + 1]
        free = np.flatnonzero((xs + size <= x0) | (xs >= x1) | (ys + size <= y0) | (ys >= y1))
        if not len(free):
            raise ValueError(f"no room for a {size} px decoy beside the object on a {self.canvas} px canvas")
        chosen = int(free[int(rng.integers(0, len(free)))])
        return int(ys.flat[chosen]), int(xs.flat[chosen])


def decoy_splits(
    canvas: int = DEFAULT_CANVAS, decoys: bool = True, decoy_size: int = 8, seed: int = 0
) -> DatasetSplits:
    """Fashion-MNIST on canvases: training with class-coloured decoys and testing with shuffled ones (``decoys``),
    or clean canvases in both splits."""
    if canvas < FASHION_MNIST_SIZE + 2 * decoy_size:
        raise ValueError(
            f"a {canvas} px canvas leaves no sure room for a {decoy_size} px decoy beside a {FASHION_MNIST_SIZE} px "
            f"garment; use at least {FASHION_MNIST_SIZE + 2 * decoy_size} px"
        )
    source = fashion_mnist()
    train = DecoyImages(source.train, canvas, "class" if decoys else None, decoy_size, seed=seed)
    test = DecoyImages(source.validation, canvas, "shuffled" if decoys else None, decoy_size, seed=seed + 1)
    name = f"fashion-mnist-{'decoys' if decoys else 'canvas'}-{canvas}"
    return DatasetSplits(train, test, source.class_names, name, evaluation_split=source.evaluation_split)


def is_decoy_spec(spec: str) -> bool:
    return SPEC.fullmatch(spec.lower()) is not None


def load_boxed_splits(spec: str, image_column: str = "image", label_column: str | None = "label") -> DatasetSplits:
    """Resolve ``--dataset`` for a task that reads boxes: ``fashion-mnist-decoys[-<canvas px>]`` (decoys in
    training, shuffled at test time), ``fashion-mnist-canvas[-<canvas px>]`` (the same canvases without decoys), or
    anything :func:`~bcos_zoo.data.datasets.load_dataset_splits` takes (items without boxes)."""
    match = SPEC.fullmatch(spec.lower())
    if match is None:
        return load_dataset_splits(spec, image_column, label_column)
    canvas = int(match.group(2) or DEFAULT_CANVAS)
    return decoy_splits(canvas, decoys=match.group(1) == "decoys")
