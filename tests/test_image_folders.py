"""Local image folders as ``--dataset``: what counts as a class, an image and a split, and which folders are refused
at load time rather than after a run has trained."""

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from bcos_zoo.data.datasets import FileImages, image_folder, limit, load_dataset_splits


def save_images(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (4, 4), (index, 0, 0)).save(folder / f"{index}.png")


def all_files(dataset) -> list[Path]:
    return [dataset.dataset.files[i] for i in dataset.indices] if hasattr(dataset, "indices") else dataset.files


def test_hidden_and_tool_folders_at_the_root_are_not_classes(tmp_path):
    save_images(tmp_path / "cat")
    save_images(tmp_path / "dog")
    save_images(tmp_path / ".ipynb_checkpoints")
    save_images(tmp_path / "__MACOSX" / "cat")
    assert image_folder(tmp_path).class_names == ["cat", "dog"]


def test_hidden_files_and_folders_inside_a_class_folder_are_not_images(tmp_path):
    save_images(tmp_path / "cat", count=2)
    save_images(tmp_path / "dog", count=2)
    save_images(tmp_path / "cat" / ".ipynb_checkpoints")  # Jupyter's copies: not more cats
    (tmp_path / "cat" / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")  # macOS's resource fork, not a PNG
    data = image_folder(tmp_path, validation_fraction=0.25)
    files = all_files(data.train) + all_files(data.validation)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in files) == [
        "cat/0.png",
        "cat/1.png",
        "dog/0.png",
        "dog/1.png",
    ]


def test_a_folder_named_like_an_image_is_not_taken_for_one(tmp_path):
    save_images(tmp_path / "cat", count=2)
    save_images(tmp_path / "dog", count=2)
    (tmp_path / "cat" / "x.png").mkdir()
    data = image_folder(tmp_path, validation_fraction=0.25)
    assert len(data.train) + len(data.validation) == 4


def test_a_class_named_train_beside_other_classes_is_a_class(tmp_path):
    for name in ("bus", "car", "train"):  # as in VOC and COCO
        save_images(tmp_path / name)
    data = image_folder(tmp_path)
    assert data.class_names == ["bus", "car", "train"] and data.evaluation_split == "train"


def test_hidden_folders_beside_or_inside_split_folders_leave_the_split_layout_as_it_is(tmp_path):
    save_images(tmp_path / "train" / "cat")
    save_images(tmp_path / "train" / "dog")
    save_images(tmp_path / "val" / "cat", count=1)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    data = image_folder(tmp_path)
    assert (data.class_names, len(data.train), len(data.validation)) == (["cat", "dog"], 6, 1)


@pytest.mark.parametrize("layout", ["only .DS_Store", "unlabeled test images"])
def test_a_validation_folder_without_images_in_class_folders_is_refused(tmp_path, layout):
    save_images(tmp_path / "train" / "cat")
    save_images(tmp_path / "train" / "dog")
    if layout == "only .DS_Store":
        (tmp_path / "validation").mkdir()
        (tmp_path / "validation" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        folder = tmp_path / "validation"
    else:  # Kaggle's layout: the test images carry no labels
        save_images(tmp_path / "test")
        folder = tmp_path / "test"
    with pytest.raises(ValueError, match=rf"{folder} holds no images in class folders.*\['cat', 'dog'\]"):
        image_folder(tmp_path)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width`` x ``height`` pixels: PIL refuses it as a decompression bomb when it is opened."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named_with_the_fix(tmp_path):
    png_header_only(tmp_path / "huge.png", 40_000, 40_000)
    with pytest.raises(ValueError, match=r"huge\.png could not be read as an image.*decompression bomb.*Remove"):
        FileImages([tmp_path / "huge.png"], [0])[0]


def test_the_current_folder_is_named_after_itself(tmp_path, monkeypatch):
    save_images(tmp_path / "flowers" / "rose")
    save_images(tmp_path / "flowers" / "tulip")
    monkeypatch.chdir(tmp_path / "flowers")
    assert load_dataset_splits(".").name == "flowers"


@pytest.mark.parametrize("train", ["train", "Train"])
def test_split_folders_beside_class_folders_are_refused_as_ambiguous(tmp_path, train):
    save_images(tmp_path / train / "cat")
    save_images(tmp_path / train / "dog")
    save_images(tmp_path / "samples")
    with pytest.raises(ValueError, match=r"mixes split folders and class folders.*\['cat', 'dog'\].*\['samples'\]"):
        image_folder(tmp_path)


def test_a_hidden_file_in_train_does_not_make_an_ambiguous_layout_a_class(tmp_path):
    save_images(tmp_path / "train" / "cat")
    save_images(tmp_path / "train" / "dog")
    save_images(tmp_path / "samples")
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "._notes.jpg", format="JPEG")  # macOS's AppleDouble shadow
    with pytest.raises(ValueError, match="mixes split folders and class folders"):
        image_folder(tmp_path)


def test_a_class_named_with_underscores_is_a_class(tmp_path):
    save_images(tmp_path / "__background__")
    save_images(tmp_path / "cat")
    assert image_folder(tmp_path).class_names == ["__background__", "cat"]


def test_a_folder_with_a_validation_folder_holds_its_images_in_a_seeded_mixed_order(tmp_path):
    """Files sorted by path would be sorted by class: the first N (--max-train-samples, --max-eval-samples) would be
    one class. Each split holds its files in an order drawn with a fixed seed, the same every time."""
    for name in ("cat", "dog", "fox"):
        save_images(tmp_path / "train" / name, count=12)
        save_images(tmp_path / "validation" / name, count=4)
    data, again = image_folder(tmp_path), image_folder(tmp_path)
    for split, count in ((data.train, 12), (data.validation, 4)):
        assert sorted(split.files) == sorted(Path(tmp_path, split.files[0]).parent.parent.rglob("*.png"))
        assert {label for _, label in limit(split, count)} == {0, 1, 2}
        assert all(
            split.labels[i] == ["cat", "dog", "fox"].index(split.files[i].parent.name) for i in range(len(split))
        )
    assert data.train.files == again.train.files and data.validation.files == again.validation.files


def broken_image_message(folder: Path) -> str:
    """The error of reading the one unreadable file, ``cat/broken.png``, of a folder dataset's splits."""
    (folder / "cat" / "broken.png").write_bytes(b"plain text")
    data = image_folder(folder.parent if folder.name == "train" else folder)
    for split in (data.train, data.validation):
        for index in range(len(split)):
            try:
                split[index]
            except ValueError as error:
                return str(error)
    raise AssertionError("the broken file was read")


def test_an_unreadable_file_of_a_folder_whose_evaluation_images_are_held_out_is_to_be_replaced_not_removed(tmp_path):
    save_images(tmp_path / "cat")
    save_images(tmp_path / "dog")
    message = broken_image_message(tmp_path)
    assert "Replace it with a readable image of the same name" in message and "Remove" not in message
    assert "held out for evaluation" in message and "new --output-dir" in message


def test_an_unreadable_file_of_a_train_folder_beside_a_validation_folder_may_be_removed(tmp_path):
    save_images(tmp_path / "train" / "cat")
    save_images(tmp_path / "train" / "dog")
    save_images(tmp_path / "validation" / "cat", count=1)
    message = broken_image_message(tmp_path / "train")
    assert "Remove or replace it" in message and "--resume" in message


@pytest.mark.parametrize("splits", [("Train", "Test"), ("Training", "Testing"), ("TRAIN", "Validation")])
def test_capitalised_split_folders_are_splits_not_classes(tmp_path, splits):
    for split, count in zip(splits, (3, 2)):
        save_images(tmp_path / split / "cat", count)
        save_images(tmp_path / split / "dog", count)
    data = image_folder(tmp_path)
    assert (data.class_names, data.evaluation_split) == (["cat", "dog"], splits[1])
    assert sorted(path.relative_to(tmp_path).as_posix() for path in data.validation.files) == [
        f"{splits[1]}/{name}/{index}.png" for name in ("cat", "dog") for index in range(2)
    ]
    assert sorted(zip(data.train.files, data.train.labels)) == [
        (tmp_path / splits[0] / name / f"{index}.png", label)
        for label, name in enumerate(("cat", "dog"))
        for index in range(3)
    ]


@pytest.mark.parametrize(
    ("splits", "doubled"),
    [(("train", "training", "val"), "'train', 'training'"), (("Train", "val", "validation"), "'val', 'validation'")],
)
def test_two_folders_for_one_split_are_refused_naming_both(tmp_path, splits, doubled):
    for split in splits:
        save_images(tmp_path / split / "cat")
        save_images(tmp_path / split / "dog")
    with pytest.raises(ValueError, match=rf"has 2 folders for one split: \[{doubled}\]\. Merge them"):
        image_folder(tmp_path)


def test_a_validation_folder_is_evaluated_on_beside_a_test_folder(tmp_path):
    for split in ("test", "train", "val"):
        save_images(tmp_path / split / "cat")
        save_images(tmp_path / split / "dog")
    data = image_folder(tmp_path)
    assert data.evaluation_split == "val" and all(path.parent.parent.name == "val" for path in data.validation.files)


def test_a_class_named_train_in_capitals_beside_other_classes_is_a_class(tmp_path):
    for name in ("Bus", "Car", "Train"):
        save_images(tmp_path / name)
    assert image_folder(tmp_path).class_names == ["Bus", "Car", "Train"]


def test_a_linked_folder_inside_a_class_folder_holds_images_of_that_class(tmp_path):
    save_images(tmp_path / "more_cats", count=2)
    save_images(tmp_path / "data" / "cat", count=1)
    save_images(tmp_path / "data" / "dog", count=1)
    (tmp_path / "data" / "cat" / "extra").symlink_to(tmp_path / "more_cats", target_is_directory=True)
    everything = image_folder(tmp_path / "data", validation_fraction=0.25).train.dataset
    assert sorted(
        (path.relative_to(tmp_path / "data").as_posix(), label)
        for path, label in zip(everything.files, everything.labels)
    ) == [("cat/0.png", 0), ("cat/extra/0.png", 0), ("cat/extra/1.png", 0), ("dog/0.png", 1)]


@pytest.mark.parametrize(
    "link, target, names",
    [
        ("kitten", "cat", ("cat", "kitten")),  # a class folder that is another's
        ("kitten", "cat/small", ("cat", "kitten")),  # ... or a folder inside another's
        ("cat/dogs", "dog", ("cat", "dog")),  # a class folder holding a link to another's
    ],
)
def test_a_folder_reached_from_two_class_folders_is_refused(tmp_path, link, target, names):
    """Its images would be in both classes."""
    save_images(tmp_path / "cat" / "small", count=2)
    save_images(tmp_path / "dog", count=2)
    (tmp_path / link).symlink_to(tmp_path / target, target_is_directory=True)
    with pytest.raises(ValueError, match=f"'{names[0]}' and '{names[1]}' of .* both reach"):
        image_folder(tmp_path)


def test_a_link_loop_inside_a_class_folder_ends_and_counts_each_image_once(tmp_path):
    save_images(tmp_path / "cat" / "inner", count=2)
    save_images(tmp_path / "dog", count=1)
    (tmp_path / "cat" / "inner" / "again").symlink_to(tmp_path / "cat", target_is_directory=True)
    everything = image_folder(tmp_path, validation_fraction=0.25).train.dataset
    assert sorted(path.relative_to(tmp_path).as_posix() for path in everything.files) == [
        "cat/inner/0.png",
        "cat/inner/1.png",
        "dog/0.png",
    ]


def test_a_class_whose_every_image_is_held_out_is_named_in_a_warning(tmp_path, caplog):
    save_images(tmp_path / "cat", count=1)
    save_images(tmp_path / "dog", count=1)
    data = image_folder(tmp_path, validation_fraction=0.5)
    (held_out,) = {label for _, label in (data.validation[index] for index in range(len(data.validation)))}
    assert f"Every image of the classes ['{data.class_names[held_out]}']" in caplog.text
    assert "training never sees them" in caplog.text


def test_no_warning_when_every_class_keeps_training_images(tmp_path, caplog):
    save_images(tmp_path / "cat", count=5)
    save_images(tmp_path / "dog", count=5)
    image_folder(tmp_path, validation_fraction=0.2)
    assert "held out for evaluation" not in caplog.text
