"""Hub datasets as ``--dataset``: which columns are read, what the labels mean, and which split is evaluated on.

The Hub is stood in for by in-memory ``datasets`` objects: ``datasets.load_dataset`` returns them for the name
``org/data``, so that ``hub_dataset`` reads them exactly as it reads a downloaded dataset.
"""

import datasets
import numpy as np
import pytest
from PIL import Image

from bcos_zoo.data.datasets import hub_dataset


def colour_images(count: int) -> list[Image.Image]:
    """``count`` 4x4 images, image ``i`` filled with the colour ``(i, 2 * i, 3 * i)``: each tells which one it is."""
    return [Image.new("RGB", (4, 4), (index, 2 * index, 3 * index)) for index in range(count)]


def colour_index(image: Image.Image) -> int:
    return int(np.asarray(image)[0, 0, 0])


def serve(monkeypatch, features: dict, **splits: dict) -> None:
    """Let ``datasets.load_dataset("org/data")`` return ``splits`` (columns as lists) with ``features``."""
    loaded = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(columns, features=datasets.Features(features))
            for name, columns in splits.items()
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *args, **kwargs: loaded)


def cifar100_like(monkeypatch) -> None:
    """CIFAR-100's column names: ``img`` and ``fine_label``, neither of them the default."""
    features = {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a", "b"])}
    serve(monkeypatch, features, train={"img": colour_images(4), "fine_label": [0, 1, 0, 1]})


def test_a_missing_label_column_is_refused_naming_the_columns_and_the_flag(monkeypatch):
    cifar100_like(monkeypatch)
    with pytest.raises(ValueError) as refusal:
        hub_dataset("org/data", image_column="img")
    message = str(refusal.value)
    assert "label column 'label' (--label-column)" in message and "['img', 'fine_label']" in message
    assert "--label-column none" in message and "\n" not in message


def test_a_missing_image_column_is_refused_naming_the_columns_and_the_flag(monkeypatch):
    cifar100_like(monkeypatch)
    with pytest.raises(ValueError, match=r"no image column 'image' \(--image-column\).*\['img', 'fine_label'\]"):
        hub_dataset("org/data", label_column="fine_label")


def test_an_image_column_of_file_paths_is_read_as_image_files(monkeypatch, tmp_path):
    paths = []
    for index, image in enumerate(colour_images(4)):
        image.save(tmp_path / f"{index}.png")
        paths.append(str(tmp_path / f"{index}.png"))
    features = {"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    serve(
        monkeypatch, features, train={"image": paths[:2], "label": [0, 1]}, test={"image": paths[2:], "label": [1, 0]}
    )
    data = hub_dataset("org/data")
    read = [(colour_index(image), image.mode, label) for image, label in (data.validation[0], data.validation[1])]
    assert read == [(2, "RGB", 1), (3, "RGB", 0)]


def test_a_path_that_is_not_an_image_file_is_named_with_the_flag(monkeypatch, tmp_path):
    features = {"image": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    missing = str(tmp_path / "missing.png")
    serve(monkeypatch, features, train={"image": [missing, missing], "label": [0, 1]})
    with pytest.raises(ValueError, match=rf"{missing} \(row 0 of the image column 'image'\).*--image-column"):
        hub_dataset("org/data").train[0]
