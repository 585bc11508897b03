"""Boxes survive the data pipeline: a box drawn in an image is where the moved box says after resize, random-resized
crop and flip; box masks, the boxed subset and the decoy canvases."""

import numpy as np
import pytest
import torch
from PIL import Image

from bcos_zoo.data.boxes import (
    BoxedImages,
    BoxResizeTransform,
    BoxTrainingTransform,
    as_is_transform,
    box_masks,
    boxed_subset,
    collate_boxed,
    crop_resize_boxes,
    dilate_boxes,
    flip_boxes,
    random_resized_crop_with_boxes,
    resize_with_boxes,
)
from bcos_zoo.data.decoys import DECOY_COLOURS, DecoyImages, decoy_splits


BOX = [10.0, 12.0, 31.0, 40.0]


def drawn_box(width: int = 64, height: int = 48) -> Image.Image:
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    picture[y0:y1, x0:x1] = 255
    return Image.fromarray(picture)


def bright_extent(image: Image.Image) -> list[int]:
    """[x0, y0, x1, y1] (end-exclusive) of the pixels at least half as bright as white."""
    rows, cols = np.nonzero(np.asarray(image.convert("L")) >= 128)
    return [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_box_is_recovered_after_resize():
    image, boxes = resize_with_boxes(drawn_box(), [BOX], 32)
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(bright_extent(image), boxes[0], atol=1.0)
    np.testing.assert_allclose(boxes[0], [5.0, 8.0, 15.5, 80 / 3])


@pytest.mark.parametrize("seed", range(12))
def test_box_is_recovered_after_random_resized_crop_and_flip(seed):
    torch.manual_seed(seed)
    flip = seed % 2  # both directions are exercised
    image, boxes = random_resized_crop_with_boxes(drawn_box(), [BOX], 40, scale=(0.3, 1.0), flip_probability=flip)
    if len(boxes) == 0:  # cropped away: nothing bright may remain
        assert not (np.asarray(image.convert("L")) >= 128).any()
        return
    np.testing.assert_allclose(bright_extent(image), boxes[0], atol=1.0)
    mask = box_masks(boxes, 40, 40)
    bright = torch.from_numpy(np.asarray(image.convert("L")) >= 128)
    assert (mask & bright).sum() / (mask | bright).sum() > 0.75


def test_flip_and_crop_arithmetic():
    np.testing.assert_allclose(flip_boxes([BOX], 64), [[33.0, 12.0, 54.0, 40.0]])
    np.testing.assert_allclose(crop_resize_boxes([BOX], (20, 0, 20, 24), (40, 48)), [[0.0, 24.0, 22.0, 48.0]])
    assert crop_resize_boxes([BOX], (40, 0, 20, 20), (20, 20)).shape == (0, 4)  # outside the crop
    with pytest.raises(ValueError, match="x0 < x1"):
        flip_boxes([[5, 5, 5, 9]], 10)


def test_box_masks_take_pixel_centres_and_unions():
    mask = box_masks([[0.4, 0.0, 2.6, 1.0], [3.0, 2.0, 4.0, 4.0]], 4, 5)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, 0:3] = True
    expected[2:4, 3] = True
    assert torch.equal(mask, expected)


def test_boxed_images_are_seeded_and_use_a_fraction_of_the_boxes():
    items = [(drawn_box(), i % 3, [BOX]) for i in range(40)] + [(drawn_box(), 0)]  # the last has no boxes
    dataset = BoxedImages(items, BoxTrainingTransform(32), seed=3, box_fraction=0.25, box_seed=1)
    assert len(dataset.with_boxes) == 10 and dataset.with_boxes == boxed_subset(41, 0.25, seed=1)
    first, again = dataset[5], dataset[5]
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5]["pixel_values"], first["pixel_values"])
    batch = collate_boxed([dataset[i] for i in range(41)])
    assert batch["box_masks"].shape == (41, 32, 32) and batch["pixel_values"].shape == (41, 3, 32, 32)
    assert int(batch["has_boxes"].sum()) <= 10 and not batch["has_boxes"][40]
    assert not batch["box_masks"][40].any()
    resized = BoxedImages(items, BoxResizeTransform(32))[0]
    bright = resized["pixel_values"].mean(dim=0) >= 0.5
    assert (resized["box_mask"] & bright).sum() / (resized["box_mask"] | bright).sum() > 0.85


class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 200

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"index": index}


@pytest.mark.parametrize("seed", [0, 3])
def test_the_boxed_share_is_spread_over_the_trainer_s_first_epoch(seed, tmp_path):
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        str(tmp_path), per_device_train_batch_size=10, seed=seed, use_cpu=True, remove_unused_columns=False
    )
    loader = Trainer(model=torch.nn.Linear(1, 1), args=arguments, train_dataset=_Indices()).get_train_dataloader()
    order = torch.cat([batch["index"] for batch in loader]).tolist()
    boxed = boxed_subset(200, 0.2, seed=seed)
    per_fifth = [len(boxed & set(order[start : start + 40])) for start in range(0, 200, 40)]
    assert sorted(order) == list(range(200)) and sum(per_fifth) == 40
    assert max(per_fifth) <= 16, per_fifth  # about 8 in each fifth; all 40 in the first when drawn as the epoch is


def test_boxed_subset_fractions():
    assert boxed_subset(1000, 0.0) == set()
    assert len(boxed_subset(1000, 0.01)) == 10
    assert len(boxed_subset(50, 0.001)) == 1  # at least one image keeps its boxes
    with pytest.raises(ValueError):
        boxed_subset(10, 1.5)


def garments(count: int = 12) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        picture = np.zeros((28, 28), dtype=np.uint8)
        picture[6:22, 9 + index % 3 : 19] = rng.integers(60, 255, size=(16, 10 - index % 3))
        items.append((Image.fromarray(picture), index % 10))
    return items


@pytest.mark.parametrize("mode", ["class", "shuffled"])
def test_decoys_lie_outside_the_box_in_their_colour(mode):
    dataset = DecoyImages(garments(), canvas=48, decoys=mode, decoy_size=8, seed=0)
    for index in range(len(dataset)):
        image, label, boxes = dataset[index]
        pixels = np.asarray(image)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        garment = np.asarray(garments()[index][0])
        inside = pixels[y0:y1, x0:x1]
        assert (inside.std(axis=2) == 0).all()  # only grey garment in the box: no decoy overlaps it
        assert (inside[..., 0] > 0).sum() == (garment > 0).sum()  # and all of the garment
        assert (x1 - x0, y1 - y0) == (10 - index % 3, 16) and garment.max() > 0
        coloured = pixels.std(axis=2) > 0  # the grey garment has equal channels; the decoy does not
        ys, xs = np.nonzero(coloured)
        assert len(ys) == 64  # one 8 x 8 square
        assert xs.min() >= x1 or xs.max() < x0 or ys.min() >= y1 or ys.max() < y0
        colour = tuple(int(c) for c in pixels[ys[0], xs[0]])
        owner = DECOY_COLOURS.index(colour)
        assert (owner == label) if mode == "class" else (owner != label)
    assert dataset[3][0].tobytes() == dataset[3][0].tobytes()  # a pure function of the index


def test_decoy_canvas_must_leave_room():
    with pytest.raises(ValueError, match="at least 44 px"):
        decoy_splits(canvas=40, decoy_size=8)


def test_fashion_mnist_decoy_splits(fashion_mnist):
    import gzip

    with gzip.open(fashion_mnist / "train-images-idx3-ubyte.gz") as handle:  # the first garment, from its bytes
        garment = np.frombuffer(handle.read(16 + 28 * 28)[16:], dtype=np.uint8).reshape(28, 28)
    with gzip.open(fashion_mnist / "train-labels-idx1-ubyte.gz") as handle:
        first_label = handle.read(9)[8]
    rows, cols = np.nonzero(garment)
    tight = garment[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    splits = decoy_splits(canvas=48)
    image, label, boxes = splits.train[0]
    assert image.size == (48, 48) and len(splits.class_names) == 10 and label == first_label
    x0, y0, x1, y1 = (int(v) for v in boxes[0])
    assert (np.asarray(image)[y0:y1, x0:x1] == tight[:, :, None]).all()  # the box holds the garment, tightly
    assert splits.validation.decoys == "shuffled" and splits.train.decoys == "class"
    clean, clean_label, clean_boxes = decoy_splits(canvas=48, decoys=False).train[0]
    assert (np.asarray(clean).std(axis=2) == 0).all()  # grey garment only, no decoy
    assert clean_label == first_label and clean_boxes == boxes
    assert np.asarray(clean)[..., 0].sum() == garment.sum()  # the whole garment and nothing else


def test_dilated_boxes_grow_by_whole_pixels_and_stay_in_the_image():
    boxes = [[10, 20, 30, 24], [0, 0, 5, 5]]
    grown = dilate_boxes(boxes, 0.25, width=32, height=26)
    # 20 x 4 grows by 5 and 1; 5 x 5 by 1 (floor of 1.25), clipped at the top-left corner
    np.testing.assert_array_equal(grown, [[5, 19, 35 - 3, 25], [0, 0, 6, 6]])
    np.testing.assert_array_equal(dilate_boxes(boxes, 0.0, 32, 26), boxes)
    np.testing.assert_array_equal(dilate_boxes([[10, 10, 17, 17]], 0.25, 64, 64), [[9, 9, 18, 18]])  # floor(1.75)


def test_decoy_canvases_read_as_tensors_equal_the_pictures():
    """The fast path (tensors straight from the canvases, through a subset) gives the pixels, mask and boxed flag
    that the pictures give through the generic transform; dilation grows the training mask."""
    dataset = DecoyImages(garments(), canvas=36, decoys="class", decoy_size=4, seed=3)
    subset = torch.utils.data.Subset(dataset, [5, 1, 7])
    fast = BoxedImages(subset, as_is_transform, box_fraction=0.5, box_seed=1)
    generic = BoxedImages(list(subset), as_is_transform, box_fraction=0.5, box_seed=1)
    assert fast._tensors is dataset and generic._tensors is None
    for index in range(3):
        a, b = fast[index], generic[index]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["box_mask"], b["box_mask"])
        assert a["labels"] == b["labels"] and a["has_boxes"] == b["has_boxes"]
    dilated = BoxedImages(subset, as_is_transform, box_dilation=0.5)[0]["box_mask"]
    assert dilated.sum() > fast[0]["box_mask"].sum() and (dilated | fast[0]["box_mask"]).equal(dilated)


def test_decoy_modes_share_garments_placements_and_squares():
    shuffled = DecoyImages(garments(), canvas=36, decoys="shuffled", decoy_size=4, seed=2)
    for mode in ("class", None):
        other = shuffled.with_decoys(mode)
        for index in range(len(shuffled)):
            a, b = np.asarray(shuffled[index][0]), np.asarray(other[index][0])
            differs = (a != b).any(axis=2)
            assert shuffled[index][2] == other[index][2]  # the same box
            assert differs.sum() == 16 and (a.std(axis=2) > 0)[differs].all()  # only the 4 x 4 square differs
