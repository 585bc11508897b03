"""Hub datasets as ``--dataset``: which columns are read, what the labels mean, and which split is evaluated on.

The Hub is stood in for by in-memory ``datasets`` objects: ``datasets.load_dataset`` returns them for the name
``org/data``, so that ``hub_dataset`` reads them exactly as it reads a downloaded dataset.
"""

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, save_hf_source

import bcos_zoo.zoo.finetune as finetuning
from bcos_zoo.data.datasets import hub_dataset, limit
from bcos_zoo.zoo.recipes import Recipe


def colour_images(count: int) -> list[Image.Image]:
    """``count`` 4x4 images, image ``i`` filled with the colour ``(i, 2 * i, 3 * i)``: each tells which one it is."""
    return [Image.new("RGB", (4, 4), (index, 2 * index, 3 * index)) for index in range(count)]


def colour_index(image: Image.Image) -> int:
    return int(np.asarray(image)[0, 0, 0])


def serve(monkeypatch, features: dict, **splits: dict) -> None:
    """Let ``datasets.load_dataset("org/data")`` return ``splits`` (columns as lists), each column with its feature
    in ``features``."""
    loaded = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                columns, features=datasets.Features({column: features[column] for column in columns})
            )
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


@pytest.mark.parametrize(
    ("image_feature", "images"),
    [(datasets.Value("int64"), [1, 2]), (datasets.Array2D((2, 2), "float32"), [[[0.0] * 2] * 2] * 2)],
    ids=["integers", "arrays"],
)
def test_an_image_column_of_neither_images_nor_paths_is_refused_naming_the_flag(monkeypatch, image_feature, images):
    features = {"image": image_feature, "label": datasets.ClassLabel(names=["a", "b"])}
    serve(monkeypatch, features, train={"image": images, "label": [0, 1]})
    with pytest.raises(ValueError, match=r"image column 'image' of org/data's train split holds .*--image-column"):
        hub_dataset("org/data")


def test_a_label_column_of_several_labels_per_image_is_refused_naming_the_flag(monkeypatch):
    features = {"image": datasets.Image(), "label": datasets.Sequence(datasets.Value("int64"))}
    serve(monkeypatch, features, train={"image": colour_images(2), "label": [[0, 1], [1]]})
    with pytest.raises(ValueError, match=r"label column 'label' .* not one label per image.*--label-column"):
        hub_dataset("org/data")


def test_a_row_without_an_image_is_named_when_it_is_read(monkeypatch):
    features = {"Photo": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    images = colour_images(3)
    serve(
        monkeypatch,
        features,
        train={"Photo": images[:2], "label": [0, 1]},
        validation={"Photo": [images[2], None], "label": [0, 1]},
    )
    validation = hub_dataset("org/data", image_column="Photo").validation
    assert colour_index(validation[0][0]) == 2
    with pytest.raises(ValueError, match=r"^Row 1 of the image column 'Photo' holds no image\.$"):
        validation[1]


def test_an_undecodable_image_is_named_with_its_row_when_it_is_read(monkeypatch):
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    png = io.BytesIO()
    colour_images(1)[0].resize((64, 64)).save(png, format="PNG")
    truncated = {"bytes": png.getvalue()[:60], "path": None}
    serve(monkeypatch, features, train={"image": [truncated] * 4, "label": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match=r"The image in row 0 of the image column 'image' could not be read \("):
        hub_dataset("org/data").train[0]


def labelled(monkeypatch, feature, train_labels: list, validation_labels: list) -> None:
    """A train and a validation split of colour images (train first, then validation) with these labels."""
    images = colour_images(len(train_labels) + len(validation_labels))
    serve(
        monkeypatch,
        {"image": datasets.Image(), "label": feature},
        train={"image": images[: len(train_labels)], "label": train_labels},
        validation={"image": images[len(train_labels) :], "label": validation_labels},
    )


def labels_of(split) -> list[int]:
    return [split[index][1] for index in range(len(split))]


def test_integer_labels_that_are_not_0_to_k_minus_1_are_class_indices_in_numeric_order(monkeypatch):
    labelled(monkeypatch, datasets.Value("int64"), [10, 3, 7, 3, 10], [7, 10])
    data = hub_dataset("org/data")
    assert data.class_names == ["3", "7", "10"]  # numeric order: "10" sorts before "3" as text
    assert (labels_of(data.train), labels_of(data.validation)) == ([2, 0, 1, 0, 2], [1, 2])


def test_string_labels_are_the_indices_of_their_sorted_names(monkeypatch):
    labelled(monkeypatch, datasets.Value("string"), ["dog", "cat", "bird", "dog"], ["cat", "bird"])
    data = hub_dataset("org/data")
    assert data.class_names == ["bird", "cat", "dog"]
    assert (labels_of(data.train), labels_of(data.validation)) == ([2, 1, 0, 2], [1, 0])


def test_a_class_label_column_keeps_its_own_numbering_and_names(monkeypatch):
    labelled(monkeypatch, datasets.ClassLabel(names=["dog", "cat", "ant"]), [0, 1, 0], [1, 2])
    data = hub_dataset("org/data")
    assert data.class_names == ["dog", "cat", "ant"]
    assert (labels_of(data.train), labels_of(data.validation)) == ([0, 1, 0], [1, 2])


@pytest.mark.parametrize(
    ("feature", "train", "kept"),
    [
        (datasets.ClassLabel(names=["cat", "dog"]), [0, -1, 1, None, 0], [(0, 0), (2, 1), (4, 0)]),
        (datasets.Value("int64"), [5, None, 7, 5, -1], [(0, 1), (2, 2), (3, 1), (4, 0)]),  # -1 is a value here
        (datasets.Value("string"), ["dog", None, "cat", "dog", "cat"], [(0, 1), (2, 0), (3, 1), (4, 0)]),
    ],
)
def test_train_rows_without_a_label_are_left_out_with_a_warning(monkeypatch, caplog, feature, train, kept):
    labelled(monkeypatch, feature, train, [train[0]])
    data = hub_dataset("org/data")
    assert [(colour_index(image), label) for image, label in (data.train[i] for i in range(len(data.train)))] == kept
    left_out = len(train) - len(kept)
    assert f"{left_out} of the {len(train)} train rows of org/data carry no label: left out." in caplog.text


def test_a_train_split_without_any_label_is_refused_naming_the_flag_for_image_only_data(monkeypatch):
    labelled(monkeypatch, datasets.ClassLabel(names=["cat", "dog"]), [-1, -1], [0])
    with pytest.raises(ValueError, match="the train split of org/data carries no labels.*--label-column none"):
        hub_dataset("org/data")


@pytest.mark.parametrize(
    ("feature", "train", "validation", "unknown"),
    [
        (datasets.Value("string"), ["cat", "dog"], ["cat", "fox"], "['fox']"),
        (datasets.Value("int64"), [1, 2], [2, 3], "[3]"),
        (datasets.ClassLabel(names=["cat", "dog"]), [0, 1], [1, -1], "[-1]"),  # partly unlabeled
    ],
)
def test_an_evaluation_label_that_is_no_training_class_is_refused_at_load_time(
    monkeypatch, feature, train, validation, unknown
):
    labelled(monkeypatch, feature, train, validation)
    with pytest.raises(ValueError) as refusal:
        hub_dataset("org/data")
    message = str(refusal.value)
    assert f"the validation split of org/data has labels {unknown}" in message and "\n" not in message


@pytest.mark.parametrize("unlabeled", ["labels all -1", "no label column"])
def test_an_unlabeled_test_split_is_replaced_by_a_seeded_share_of_train_held_out(monkeypatch, caplog, unlabeled):
    """As many Hub test splits are: accuracy on it would read 0%. A tenth of the train images are held out for
    evaluation (the same ones every time), and the model trains on the others."""
    images = colour_images(20)  # train: images 0-15, labelled by their parity; test: images 16-19
    test = {"image": images[16:]} | ({"label": [-1] * 4} if unlabeled == "labels all -1" else {})
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["even", "odd"])}
    serve(monkeypatch, features, train={"image": images[:16], "label": [index % 2 for index in range(16)]}, test=test)
    data, again = hub_dataset("org/data"), hub_dataset("org/data")
    assert (data.evaluation_split, data.held_out) == ("train", 0.1)
    held_out = [(colour_index(image), label) for image, label in (data.validation[i] for i in range(2))]
    trained = sorted(colour_index(data.train[i][0]) for i in range(len(data.train)))
    assert len(data.validation) == 2 and all(index < 16 and label == index % 2 for index, label in held_out)
    assert sorted(trained + [index for index, _ in held_out]) == list(range(16))
    assert [colour_index(again.validation[i][0]) for i in range(2)] == [index for index, _ in held_out]
    assert "The test split of org/data carries no labels: evaluating on a seeded 10% of train held out." in caplog.text


def test_a_labelled_validation_split_is_evaluated_on_beside_an_unlabelled_test_split(monkeypatch):
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}
    images = colour_images(8)
    serve(
        monkeypatch,
        features,
        train={"image": images[:4], "label": [0, 1, 0, 1]},
        validation={"image": images[4:6], "label": [1, 0]},
        test={"image": images[6:], "label": [-1, -1]},
    )
    data = hub_dataset("org/data")
    assert data.evaluation_split == "validation" and [colour_index(data.validation[i][0]) for i in range(2)] == [4, 5]


@pytest.mark.slow
@pytest.mark.parametrize(("labels", "classes"), [([1, 2], ["1", "2"]), (["cat", "dog"], ["cat", "dog"])])
def test_a_run_on_labels_that_are_not_class_indices_trains_and_names_its_classes(
    monkeypatch, tmp_path, labels, classes
):
    """One-based integers and strings as labels: the loss reads class indices (a raw label 2 of two classes, or
    'dog', ended the run), and the saved model names its classes after the labels."""
    feature = datasets.Value("int64" if isinstance(labels[0], int) else "string")
    labelled(monkeypatch, feature, labels * 6, labels * 2)
    monkeypatch.setattr(finetuning, "hub_unavailable", lambda *args, **kwargs: None)  # the Hub stood in for
    monkeypatch.setattr(finetuning, "hub_repo_exists", lambda *args, **kwargs: True)
    save_hf_source(hf_vit(labels=2), tmp_path / "source", IMAGENET_MEAN, IMAGENET_STD)
    recipe = Recipe(
        name="bcos-tiny",
        source=str(tmp_path / "source"),
        dataset="org/data",
        hub_model_id="org/bcos-tiny",
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        save_steps=100,
    )
    result = finetuning.finetune(recipe, tmp_path / "out", device="cpu")
    config = json.loads((result.repo_dir / "config.json").read_text())
    assert config["id2label"] == {"0": classes[0], "1": classes[1]} and 0 <= result.metrics["accuracy"] <= 1


def test_a_class_whose_every_train_row_is_held_out_is_named_in_a_warning(monkeypatch, caplog):
    features = {"image": datasets.Image(), "label": datasets.Value("string")}
    serve(monkeypatch, features, train={"image": colour_images(2), "label": ["cat", "dog"]})
    data = hub_dataset("org/data", validation_fraction=0.5)
    (held_out,) = {label for _, label in (data.validation[index] for index in range(len(data.validation)))}
    assert f"Every image of the classes ['{data.class_names[held_out]}'] of org/data" in caplog.text


def test_a_class_no_train_row_has_is_not_said_to_be_held_out(monkeypatch, caplog):
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "bird"])}
    serve(monkeypatch, features, train={"image": colour_images(20), "label": [0, 1] * 10})
    hub_dataset("org/data", validation_fraction=0.2)
    assert "held out for evaluation" not in caplog.text


def test_the_images_a_quick_run_keeps_of_a_split_sorted_by_class_are_spread_over_its_classes(monkeypatch):
    """``--max-train-samples`` and ``--max-eval-samples`` of a Hub split sorted by class: its first rows would all be
    one class."""
    labels = [index // 10 for index in range(100)]  # ten classes, ten rows each, in class order
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(c) for c in range(10)])}
    split = {"image": colour_images(100), "label": labels}
    serve(monkeypatch, features, train=split, validation=split)
    validation = hub_dataset("org/data").validation
    kept = limit(validation, 10)
    rows = [colour_index(kept[index][0]) for index in range(len(kept))]
    assert len(rows) == 10 and rows == sorted(rows)  # in the split's order
    assert len({labels[row] for row in rows}) >= 5  # the first ten rows are all class 0
    assert [colour_index(limit(validation, 10)[index][0]) for index in range(10)] == rows  # the same draw each time
    assert limit(validation, None) is validation and limit(validation, 1000) is validation
