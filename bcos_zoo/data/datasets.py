"""Image-classification data for fine-tuning and evaluation, all seen as ``(PIL image, label)`` pairs.

Three kinds of source, chosen by one string: ``"fashion-mnist"`` (the IDX files of Debian's
``dataset-fashion-mnist`` package when installed, the Hub copy otherwise), a local folder with one sub-folder per
class (optionally under ``train/`` and ``validation/``), or a Hub dataset name. Pixels are turned into tensors later,
by :mod:`bcos_zoo.data.preprocessing`, the one path from an image to a model's pixels.
"""

import gzip
import hashlib
import logging
import os
import random
import signal
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from .preprocessing import load_image, to_rgb


logger = logging.getLogger(__name__)
T = TypeVar("T")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TRAIN_FOLDERS = ("train", "training")
VALIDATION_NAMES, TEST_NAMES = ("validation", "val", "valid"), ("test", "testing")  # a validation folder first


@dataclass
class DatasetSplits:
    """A training and an evaluation split; item ``i`` of each is ``(PIL.Image in RGB, int label)``."""

    train: Dataset
    validation: Dataset
    class_names: list[str]
    name: str  # what the model card cites: a Hub dataset id where one exists
    evaluation_split: str = "validation"  # the split the evaluation images come from, as the Hub names it
    held_out: float = 0.0  # the seeded fraction of that split held out for evaluation (0: the whole split)
    # a folder's held-out split is a seeded share of all its files, so it depends on which files there are: a digest
    # of their relative paths, for a resumed run to check that the folder still holds the files it started with
    held_out_from: str | None = None


class ArrayImages(Dataset):
    """Images held as one uint8 array (N, H, W) or (N, H, W, 3), served as RGB PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index])


class FileImages(Dataset):
    """Image files with their labels, opened lazily (upright, RGB). ``held_out``: the evaluation images are a seeded
    share of these files, which removing one would reshuffle (an unreadable file is then to be replaced)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], held_out: bool = False):
        self.files, self.labels, self.held_out = list(files), list(labels), held_out

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        try:
            image = load_image(self.files[index])
        except (OSError, Image.DecompressionBombError) as error:  # not an image, truncated, unreadable, too large
            fix = (
                "Replace it with a readable image of the same name, and a training run continues from its last "
                "checkpoint with --resume; removing it changes which images are held out for evaluation (a seeded "
                "share of all the files), so a run without it starts afresh in a new --output-dir."
                if self.held_out
                else "Remove or replace it; a training run then continues from its last checkpoint with --resume."
            )
            raise ValueError(f"{self.files[index]} could not be read as an image ({error}). {fix}") from None
        return image, self.labels[index]


class HubImages(Dataset):
    """One split of a ``datasets`` dataset, seen through its image and label columns (:func:`hub_dataset` checks
    that they exist). The image column holds images, or paths of image files, which are opened as a folder's are."""

    def __init__(self, split, image_column: str, label_column: str | None, label_index: dict | None = None):
        self.split, self.image_column, self.label_column = split, image_column, label_column
        self.label_index = label_index  # a label value -> its class index; None: the values are the indices

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        where = f"row {index} of the image column '{self.image_column}'"
        try:
            row = self.split[index]  # decodes the image
        except (OSError, Image.DecompressionBombError) as error:  # truncated or not an image, too large
            raise ValueError(f"The image in {where} could not be read ({error}).") from None
        label = -1  # image-only data (distillation)
        if self.label_column:
            value = row[self.label_column]
            label = int(value) if self.label_index is None else self.label_index[value]
        image = row[self.image_column]
        if image is None:
            raise ValueError(f"Row {index} of the image column '{self.image_column}' holds no image.")
        if not isinstance(image, str):
            return to_rgb(image), label
        try:
            return load_image(image), label
        except (OSError, Image.DecompressionBombError) as error:  # no such file, not an image, too large
            raise ValueError(
                f"{image} ({where}) could not be read as an image ({error}). Pass --image-column naming a column of "
                "images or of paths of image files."
            ) from None


class TransformedImages(Dataset):
    """``(image, label)`` pairs turned into the dicts the ``Trainer`` feeds the model.

    With a ``seed``, each item's random augmentation is a pure function of (seed, epoch, index): a run resumed from
    a checkpoint sees exactly the crops and flips the uninterrupted run saw, whatever the global random state and
    however many loader workers there are. The ``Trainer`` (through accelerate) calls :meth:`set_epoch`.
    """

    def __init__(self, pairs: Dataset, transform: Callable[[Image.Image], torch.Tensor], seed: int | None = None):
        self.pairs, self.transform, self.seed = pairs, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        leave_ctrl_c_to_the_main_process()
        image, label = self.pairs[index]
        if self.seed is None:
            return {"pixel_values": self.transform(image), "labels": label}
        return {"pixel_values": seeded(self.seed, self.epoch, index, lambda: self.transform(image)), "labels": label}


def leave_ctrl_c_to_the_main_process() -> None:
    """In a DataLoader worker, ignore Ctrl-C: the main process stops training at the step's end with a checkpoint
    (``bcos_zoo.training.trainer.StopOnInterrupt``), for which its workers must live on. A forked worker inherits that
    handler; one started by spawn or forkserver (Windows, Python 3.14's default on Linux) would die of the Ctrl-C
    that a terminal sends the whole process group, and fail the step (during its start-up, before its first item, it
    still does: ``StopOnInterrupt.killed_a_starting_worker``)."""
    if torch.utils.data.get_worker_info() is not None and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def seeded(seed: int, epoch: int, index: int, make: Callable[[], T]) -> T:
    """``make()`` with Python's and torch's generators seeded by ``(seed, epoch, index)`` alone and restored after:
    an item's random augmentation does not depend on what ran before it (a resumed run, another worker)."""
    item_seed = ((seed * 1_000_003 + epoch) * 10_000_019 + index) % 2**63  # torch takes at most 2**64 - 1
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(item_seed)
        torch.manual_seed(item_seed)
        made = make()
    random.setstate(python_state)
    return made


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian dims, then uint8 data), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, found {array.size} values")
    return array.reshape(shape)


def fashion_mnist(folder: Path = FASHION_MNIST_DIR) -> DatasetSplits:
    """Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``, or from the Hub when absent."""
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        return hub_dataset(FASHION_MNIST_HUB_ID)
    splits = {
        split: ArrayImages(
            read_idx(folder / f"{prefix}-images-idx3-ubyte.gz"), read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        )
        for split, prefix in (("train", "train"), ("validation", "t10k"))
    }
    classes = list(FASHION_MNIST_CLASSES)
    return DatasetSplits(splits["train"], splits["validation"], classes, FASHION_MNIST_HUB_ID, evaluation_split="test")


def _visible(name: str) -> bool:
    """Whether an entry of an image folder is data: not hidden (``.ipynb_checkpoints``, ``.DS_Store``, macOS's
    ``._`` AppleDouble files) nor tool junk (``__MACOSX``, ``__pycache__``), which would become classes or images
    (a class may be named ``__background__``)."""
    return not name.startswith(".") and name not in ("__MACOSX", "__pycache__")


def _sub_folders(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and _visible(path.name))


def _image_files(folder: Path, walked: set[str]) -> list[Path]:
    """The image files at any depth under ``folder``, in path order; hidden entries and their contents left out.
    ``walked`` gains the real path of every folder walked.

    Linked folders are followed, as a linked class folder is; a folder already walked (a link to it or to a folder
    above it) is not walked again, so that a link loop ends and no image is counted twice."""
    found = []
    walked.add(os.path.realpath(folder))
    for parent, folders, names in os.walk(folder, followlinks=True):
        kept = []  # the folders descended into; sorted, so that of two links to one folder the same one is kept
        for name in sorted(folders):
            real = os.path.realpath(os.path.join(parent, name))
            if _visible(name) and real not in walked:
                walked.add(real)
                kept.append(name)
        folders[:] = kept
        found.extend(
            Path(parent, name)
            for name in names
            if _visible(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES and Path(parent, name).is_file()
        )
    return sorted(found, key=lambda path: path.parts)  # as POSIX paths sort (Windows' compare case-blind)


def _class_files(folder: Path, class_names: list[str]) -> tuple[list[Path], list[int]]:
    """Each class folder's images, labelled. A folder reached from two classes (a class folder that links to
    another's, or holds a link into another) is refused: its images would be in both classes."""
    files, labels, walked_by = [], [], {}
    for label, name in enumerate(class_names):
        walked: set[str] = set()
        found = _image_files(folder / name, walked) if (folder / name).is_dir() else []
        for real in walked:
            if (other := walked_by.setdefault(real, name)) != name:
                raise ValueError(
                    f"The class folders '{other}' and '{name}' of {folder} both reach {real} (through a link), so its "
                    f"images would be in both classes: remove the link, or copy the images into one of them."
                )
        files.extend(found)
        labels.extend([label] * len(found))
    return files, labels


def _mixed(files: list[Path], labels: list[int], seed: int = 0) -> tuple[list[Path], list[int]]:
    """The files in an order drawn with a fixed seed. In path order they are sorted by class, and the first N
    (``--max-train-samples``, ``--max-eval-samples``) would be one class."""
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    return [files[index] for index in order], [labels[index] for index in order]


def _split_name(root: Path, folders: list[str], names: tuple[str, ...]) -> str | None:
    """The folder named like one of ``names`` in any case (``Train/``, Kaggle's ``Testing/``). Two such folders
    (``train/`` beside ``training/`` or ``Train/``) are refused: taking one would leave the other's images out
    without a word."""
    found = [folder for folder in folders if folder.lower() in names]
    if len(found) > 1:
        raise ValueError(
            f"{root} has {len(found)} folders for one split: {found}. Merge them into one, or move all but one out."
        )
    return found[0] if found else None


def _split_folders(root: Path) -> tuple[Path | None, Path | None]:
    """``root/train`` and ``root/validation`` (or their other names) when ``root`` is split, else ``(None, None)``.

    A folder named like a split is a class (``train`` is one in VOC and COCO) unless every folder beside it is
    named like a split too. One that holds class folders and no image of its own, beside other folders, is
    refused: whichever way it were read, some folder's images would land in the wrong place without a word.
    Split names are matched in any case: ``Train/`` beside ``Test/`` read as two classes would be a classifier of
    the splits.
    """
    folders = _sub_folders(root)
    train = _split_name(root, folders, TRAIN_FOLDERS)
    if train is None:
        return None, None
    if others := [name for name in folders if name.lower() not in {*TRAIN_FOLDERS, *VALIDATION_NAMES, *TEST_NAMES}]:
        own_images = any(
            path.is_file() and _visible(path.name) and path.suffix.lower() in IMAGE_SUFFIXES
            for path in (root / train).iterdir()
        )
        if _sub_folders(root / train) and not own_images:
            raise ValueError(
                f"{root} mixes split folders and class folders: {root / train} holds class folders "
                f"{_sub_folders(root / train)}, beside {others}. Move {others} out of {root} (a split layout holds "
                f"only {train}/ and validation/), or, if '{train}' is a class, put its images directly in it."
            )
        return None, None
    validation = _split_name(root, folders, VALIDATION_NAMES) or _split_name(root, folders, TEST_NAMES)
    return root / train, root / validation if validation else None


def image_folder(root: Path, validation_fraction: float = 0.1, seed: int = 0) -> DatasetSplits:
    """A folder of class sub-folders, or of ``train/`` and ``validation/`` (or ``val/``, ``test/``, in any case)
    folders of them.

    Without a validation folder, a seeded ``validation_fraction`` of the images is held out. Hidden names and tool
    folders (``__MACOSX``) are skipped at every level.
    """
    train_dir, val_dir = _split_folders(root)
    base = train_dir or root
    class_names = _sub_folders(base)
    if not class_names:
        raise ValueError(f"{base} has no class sub-folders; expected e.g. {base}/cat/*.jpg and {base}/dog/*.jpg")
    files, labels = _class_files(base, class_names)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base}")
    present = set(labels)
    if empty := [name for index, name in enumerate(class_names) if index not in present]:
        raise ValueError(f"class folders without images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {base}: {empty}")
    if train_dir is not None and val_dir is not None:
        unknown = sorted(set(_sub_folders(val_dir)) - set(class_names))
        if unknown:  # their images would be left out of the evaluation without a word
            raise ValueError(
                f"{val_dir} has class folders that {train_dir} lacks: {unknown}; the classes are {class_names}. "
                "Rename or remove them (folder names are case-sensitive)."
            )
        validation = FileImages(*_mixed(*_class_files(val_dir, class_names)))
        if not len(validation):  # an unlabeled test set, or an empty folder: nothing to measure accuracy on
            raise ValueError(
                f"{val_dir} holds no images in class folders; expected images in {val_dir}/<class>/ for classes "
                f"{class_names}. Sort them into class folders, or remove {val_dir} to hold out a share of "
                f"{train_dir} instead."
            )
        train = FileImages(*_mixed(files, labels))
        split, fraction, digest = val_dir.name, 0.0, None
    else:
        split, fraction = "train", validation_fraction  # a folder of class folders is one split, "train" on the Hub
        everything = FileImages(files, labels, held_out=True)
        order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(seed)).tolist()
        held_out = max(1, round(validation_fraction * len(order)))
        train, validation = Subset(everything, order[held_out:]), Subset(everything, order[:held_out])
        warn_of_untrained_classes(str(root), class_names, labels, [labels[index] for index in order[held_out:]])
        names = sorted(path.relative_to(base).as_posix() for path in files)
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    name = Path(os.path.abspath(root)).name  # "." and "data/.." name the folder they stand for
    return DatasetSplits(
        train,
        validation,
        class_names,
        name,
        evaluation_split=split,
        held_out=fraction,
        held_out_from=digest,
    )


def _check_columns(name: str, split_name: str, split, image_column: str, label_column: str | None) -> None:
    """Refuse a split without the image or label column the flags name, saying which columns it has."""
    columns = split.column_names
    flags = {"--image-column": image_column, "--label-column": label_column}
    if missing := {flag: column for flag, column in flags.items() if column and column not in columns}:
        named = " nor ".join(f"{flag[2:].replace('-', ' ')} '{column}' ({flag})" for flag, column in missing.items())
        image_only = " (--label-column none for image-only data)" if "--label-column" in missing else ""
        raise ValueError(
            f"the {split_name} split of {name} has no {named}; its columns are {columns}. Pass the flag naming "
            f"one of them{image_only}."
        )
    import datasets

    image, label = split.features[image_column], split.features[label_column] if label_column else None
    if not isinstance(image, datasets.Image) and getattr(image, "dtype", None) not in ("string", "large_string"):
        raise ValueError(
            f"the image column '{image_column}' of {name}'s {split_name} split holds {image}, not images or paths of "
            f"image files; pass --image-column naming one of its columns {columns}."
        )
    if label is not None and not isinstance(label, datasets.ClassLabel | datasets.Value):
        raise ValueError(
            f"the label column '{label_column}' of {name}'s {split_name} split holds {label}, not one label per "
            f"image (a class name or index); pass --label-column naming one of its columns {columns}."
        )


def _hub_classes(train, label_column: str | None) -> tuple[list[str], dict | None]:
    """The class names of a Hub dataset, and the map from a label value to its class index: ``None`` for a
    ``ClassLabel`` column, whose values are its classes' indices already. Other labels (strings, or integers that
    need not be 0..K-1) are the train split's values, sorted, each named after itself."""
    if not label_column:
        return [], None
    if names := getattr(train.features.get(label_column), "names", None):
        return list(names), None
    values = sorted(set(train[label_column]))
    return [str(value) for value in values], {value: index for index, value in enumerate(values)}


def _without_unlabeled_rows(name: str, train, label_column: str | None):
    """The train split without its rows that carry no label (missing values; -1 in a ``ClassLabel`` column, as in
    semi-supervised datasets), which would reach the loss as a class index of -1 or stop the sorting of the
    classes; a warning says how many were left out."""
    if not label_column:
        return train
    is_class_label = hasattr(train.features.get(label_column), "names")
    values = train[label_column]
    kept = [index for index, value in enumerate(values) if value is not None and not (is_class_label and value == -1)]
    if not kept:
        raise ValueError(
            f"the train split of {name} carries no labels in its column '{label_column}'. Pass --label-column naming "
            "a column of labels, or --label-column none for image-only data (CLIP distillation)."
        )
    if len(kept) < len(values):
        logger.warning(f"{len(values) - len(kept)} of the {len(values)} train rows of {name} carry no label: left out.")
        train = train.select(kept)
    return train


def _unlabeled(split, label_column: str) -> bool:
    """Whether a split carries no labels: no label column, or only -1 and missing values (as many test splits)."""
    return label_column not in split.column_names or all(value in (-1, None) for value in split[label_column])


def shown(names: list, most: int = 20) -> str:
    """A list of class names or labels for an error message: ImageNet's thousand would bury the rest of it."""
    return str(names) if len(names) <= most else f"{str(names[:most])[:-1]}, ...] ({len(names)} in all)"


def warn_of_untrained_classes(name: str, class_names: list[str], labels, train_labels) -> None:
    """Warn when the share held out for evaluation took every image of a class (among ``labels``, those of every
    image): the model never sees it in training."""
    if untrained := [class_names[index] for index in sorted(set(labels) - set(train_labels))]:
        logger.warning(
            f"Every image of the classes {shown(untrained)} of {name} is held out for evaluation: training never sees "
            "them. Give each class more images, or a validation split of its own."
        )


def hub_dataset(
    name: str, image_column: str = "image", label_column: str | None = "label", validation_fraction: float = 0.1
) -> DatasetSplits:
    """A Hub dataset: its ``train`` split and its validation (or test) split, or a seeded hold-out of ``train``.

    A split that carries no labels is not evaluated on (its accuracy would read 0%): as for a folder without a
    validation folder, a seeded share of ``train`` is held out instead, and a warning says so."""
    import datasets

    loaded = datasets.load_dataset(name)
    if "train" not in loaded:
        raise ValueError(f"{name} has no 'train' split (it has {list(loaded)})")
    train = loaded["train"]
    _check_columns(name, "train", train, image_column, label_column)
    train = _without_unlabeled_rows(name, train, label_column)
    class_names, label_index = _hub_classes(train, label_column)
    named = [split for split in ("validation", "valid", "val", "test") if split in loaded]
    unlabeled = [split for split in named if label_column and _unlabeled(loaded[split], label_column)]
    validation_name = next((split for split in named if split not in unlabeled), None)
    if validation_name is None:
        parts = train.train_test_split(test_size=validation_fraction, seed=0)
        if label_column:
            classes = [train[label_column], parts["train"][label_column]]  # of every row, then of those trained on
            if label_index is not None:
                classes = [[label_index[value] for value in values] for values in classes]
            warn_of_untrained_classes(name, class_names, *classes)
        train, validation = parts["train"], parts["test"]
        split, held_out = "train", validation_fraction
    else:
        validation, split, held_out = loaded[validation_name], validation_name, 0.0
        _check_columns(name, split, validation, image_column, label_column)
    if unlabeled:
        instead = f"the {validation_name} split" if validation_name else f"a seeded {held_out:.0%} of train held out"
        logger.warning(f"The {' and '.join(unlabeled)} split of {name} carries no labels: evaluating on {instead}.")
    if label_column and validation_name:
        known = range(len(class_names)) if label_index is None else label_index
        if unknown := sorted({value for value in validation[label_column] if value not in known}, key=str):
            raise ValueError(
                f"the {split} split of {name} has labels {shown(unknown)} that are none of the train split's "
                f"{len(class_names)} classes {shown(class_names)} (-1: no label), so accuracy on them cannot be "
                "measured; pass --label-column naming a column of the same classes in both splits, or another dataset."
            )
    return DatasetSplits(
        HubImages(train, image_column, label_column, label_index),
        HubImages(validation, image_column, label_column, label_index),
        class_names,
        name,
        evaluation_split=split,
        held_out=held_out,
    )


def is_fashion_mnist(spec: str) -> bool:
    return spec.lower().replace("_", "-") == "fashion-mnist"


def looks_like_path(spec: str) -> bool:
    """Whether a name the user gave is meant as a local path rather than a Hub id (``org/name`` or ``name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def model_needs_hub(source: str, flag: str = "--model") -> bool:
    """Whether a model (the source, or the teacher) must come from the Hub; a local path that does not exist is
    refused here, at once."""
    if source == "scratch":
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        return False
    if path.exists() or looks_like_path(source):
        state = "is a file, not a model folder" if path.exists() else "does not exist"
        raise ValueError(f"{flag} {source}: the folder {path} {state}; pass a model folder or a Hub model id")
    return True


def dataset_needs_hub(spec: str) -> bool:
    """Whether ``--dataset`` must come from the Hub; a local path that does not exist is refused here, at once."""
    from .decoys import is_decoy_spec  # Fashion-MNIST on canvases, built from the same files

    if is_fashion_mnist(spec) or is_decoy_spec(spec):
        return not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()
    path = Path(spec).expanduser()
    if path.is_dir():
        return False
    if path.exists() or looks_like_path(spec):
        state = "is a file" if path.exists() else "does not exist"
        raise ValueError(
            f"--dataset {spec}: {path} {state}; expected a folder of class sub-folders (e.g. {spec}/cat/*.jpg, "
            f"{spec}/dog/*.jpg), 'fashion-mnist' or a Hub dataset name"
        )
    return True


def load_dataset_splits(spec: str, image_column: str = "image", label_column: str | None = "label") -> DatasetSplits:
    """Resolve ``--dataset``: ``"fashion-mnist"``, a local image folder, or a Hub dataset name."""
    if is_fashion_mnist(spec):
        return fashion_mnist()
    if not dataset_needs_hub(spec):
        return image_folder(Path(spec).expanduser())
    return hub_dataset(spec, image_column, label_column)


def default_workers(on_cpu: bool) -> int:
    """DataLoader worker processes by default: none for a model on the CPU (its threads use the cores), else up to 8
    (as many as this process may use: a container's limit on Linux)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if on_cpu else min(8, usable)


def limit(dataset: Dataset, count: int | None) -> Dataset:
    """``count`` items (all when ``count`` is None): for quick runs and tests. The first ones, as a folder's files
    and Fashion-MNIST's images lie in an order that mixes the classes; a Hub split's, often sorted by class (the first
    200 of 300 classes' images held 29 classes), are a seeded draw spread over the split, in its order."""
    if count is None or count >= len(dataset):
        return dataset
    if isinstance(dataset, HubImages):
        drawn = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:count]
        return Subset(dataset, sorted(drawn.tolist()))
    return Subset(dataset, range(count))
