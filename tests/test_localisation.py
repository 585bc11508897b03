"""The localisation harness: which images it picks, how it tiles them, how it explains grids, how it scores."""

import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sources import hf_vit
from tiny_models import TINY_CLASSIFIERS
from transformers import AutoImageProcessor, CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.data.boxes import box_masks as training_box_masks
from bcos_zoo.data.preprocessing import ProcessorTransform, model_transform
from bcos_zoo.evaluation.baselines import load_standard_classifier
from bcos_zoo.evaluation.localisation import (
    Grid,
    Predictions,
    bcos_attribution,
    bcos_classifier,
    box_mask,
    confident_pools,
    energy_pointing_game,
    evaluate_localisation,
    explanation_window,
    grid_attribution,
    grid_pointing_game,
    predict,
    sample_grids,
    sliding_window_attribution,
    tile_grid,
)
from bcos_zoo.evaluation.metrics import metric_path
from bcos_zoo.evaluation.scores import box_masks, energy_pointing_scores


CELL = 8  # pixels per grid cell = the model's input size in these tests


def square(size: int):
    """A B-cos model's processor for ``size`` x ``size`` inputs: resize and rescale to [0, 1], no normalisation."""
    return ProcessorTransform(ViTImageProcessor(size={"height": size, "width": size}, do_normalize=False))


def any_size_bcos_vit(image: int = 16, labels: int = 6) -> BcosViTForImageClassification:
    """A B-cos ViT without position embeddings or class token: it takes any multiple of its patch size."""
    torch.manual_seed(0)
    config = BcosViTConfig(
        image_size=image,
        patch_size=4,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=48,
        num_labels=labels,
        use_class_token=False,
        use_position_embeddings=False,
        pooling="mean",
    )
    return BcosViTForImageClassification(config).eval()


def grey_level(label: int) -> float:
    return (label + 1) / 10


def grey_dataset(labels: list[int], size: int = CELL) -> list[tuple[Image.Image, int]]:
    """Images of class c are a flat grey of level (c + 1) / 10, so the class can be read off every pixel."""
    return [(Image.new("RGB", (size, size), (round(255 * grey_level(c)),) * 3), c) for c in labels]


def grey_classifier(num_classes: int = 6):
    """Logits that point at the class whose grey level is nearest the image's mean: always right on grey_dataset."""
    levels = torch.tensor([grey_level(c) for c in range(num_classes)])

    def classify(images: torch.Tensor) -> torch.Tensor:
        return -100 * (images.mean(dim=(1, 2, 3))[:, None] - levels).abs()

    return classify


def finds_the_target(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """An ideal explanation: 1 on the pixels of the target's grey level, 0 elsewhere."""
    levels = torch.tensor([grey_level(int(t)) for t in targets]).view(-1, 1, 1)
    return ((images[:, 0] - levels).abs() < 0.02).float()


def uniform(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.ones(images.shape[0], *images.shape[2:])


def window_coverage(size: int, window: int, stride: int) -> torch.Tensor:
    """How many half-overlapping windows cover each pixel along one axis: 1 in the outer half windows, 2 inside."""
    assert stride == window // 2 and size % stride == 0
    coverage = torch.full((size,), 2.0)
    coverage[:stride] = 1
    coverage[-stride:] = 1
    return coverage


# Sliding windows


def test_window_attributions_are_summed_back_where_each_window_was_cut():
    images = torch.rand(2, 3, 2 * CELL, 3 * CELL)
    summed = sliding_window_attribution(lambda x, t: x[:, 0], images, torch.tensor([0, 1]), window=CELL)
    half = CELL // 2
    overlap = torch.outer(window_coverage(2 * CELL, CELL, half), window_coverage(3 * CELL, CELL, half))
    torch.testing.assert_close(summed, images[:, 0] * overlap)


def test_each_window_is_explained_for_its_own_images_target():
    images = torch.zeros(3, 3, 2 * CELL, 2 * CELL)
    targets = torch.tensor([4, 1, 7])
    summed = sliding_window_attribution(
        lambda x, t: t.float().view(-1, 1, 1).expand(-1, CELL, CELL), images, targets, window=CELL, batch_size=5
    )
    overlap = torch.outer(*(window_coverage(2 * CELL, CELL, CELL // 2),) * 2)
    torch.testing.assert_close(summed, targets.float().view(-1, 1, 1) * overlap)


def test_a_stride_that_does_not_tile_the_image_is_rejected():
    with pytest.raises(ValueError, match="do not tile"):
        sliding_window_attribution(uniform, torch.zeros(1, 3, 20, 20), torch.tensor([0]), window=8, stride=5)


def test_an_attribution_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        sliding_window_attribution(lambda x, t: x, torch.zeros(1, 3, 16, 16), torch.tensor([0]), window=8)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        grid_attribution(lambda x, t: x, torch.zeros(1, 3, 16, 16), torch.tensor([0]), window=None)


def test_without_a_window_grids_are_explained_whole_in_batches():
    images = torch.rand(5, 3, 2 * CELL, 2 * CELL)
    calls = []

    def first_channel(x, t):
        calls.append(tuple(x.shape))
        return x[:, 0] * t.view(-1, 1, 1)

    targets = torch.arange(5)
    summed = grid_attribution(first_channel, images, targets, window=None, batch_size=2)
    assert calls == [(2, 3, 2 * CELL, 2 * CELL)] * 2 + [(1, 3, 2 * CELL, 2 * CELL)]
    torch.testing.assert_close(summed, images[:, 0] * targets.view(-1, 1, 1))


# Which models are explained in windows


def test_only_models_with_position_embeddings_are_explained_in_windows_of_their_input_size():
    assert explanation_window(BcosViTForImageClassification.from_pretrained_standard(hf_vit(image=16, patch=4))) == 16
    assert explanation_window(load_standard_classifier(hf_vit(image=16, patch=4))) == 16
    assert explanation_window(any_size_bcos_vit()) is None
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionConfig(
        image_size=24, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    assert explanation_window(CLIPVisionModel(tower)) == 24  # learned positions named position_embedding.weight


@pytest.mark.parametrize("family", ["resnet", "densenet", "vgg", "convnext", "simple_vit"])
def test_models_that_take_any_input_size_are_explained_whole(family):
    """A ConvNeXt's patchifying stem is a convolution, and the simple ViT computes its sin-cos positions per grid."""
    model = TINY_CLASSIFIERS[family]()
    assert explanation_window(model) is None
    assert model(pixel_values=torch.rand(1, 3, 64, 48)).logits.shape == (1, model.config.num_labels)  # any size


# Confident images and grids


def predictions_of(probabilities: torch.Tensor, labels: torch.Tensor) -> Predictions:
    """The predictions of softmax probabilities (N, C): each image's top class and its probability."""
    confidence, predicted = probabilities.max(dim=1)
    return Predictions(predicted, confidence, labels)


def test_pools_keep_correct_images_above_the_confidence_threshold_most_confident_first():
    probabilities = torch.tensor(
        [
            [0.6, 0.4, 0.0],  # 0: class 0, right, 0.6
            [0.9, 0.1, 0.0],  # 1: class 0, right, 0.9
            [0.2, 0.8, 0.0],  # 2: labelled 0, predicted 1: wrong
            [0.3, 0.7, 0.0],  # 3: class 1, right, 0.7
            [0.0, 0.55, 0.45],  # 4: class 1, right, 0.55: under the threshold
            [0.0, 0.0, 1.0],  # 5: class 2, right, 1.0
        ]
    )
    predictions = predictions_of(probabilities, torch.tensor([0, 0, 0, 1, 1, 2]))
    assert confident_pools(predictions, min_confidence=0.6) == {0: [1, 0], 1: [3], 2: [5]}


def test_pools_hold_at_most_max_per_class_of_the_most_confident():
    probabilities = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    predictions = predictions_of(probabilities, torch.tensor([0, 0, 0, 1]))
    assert confident_pools(predictions, max_per_class=2) == {0: [1, 2], 1: [3]}


@pytest.fixture
def pools():
    """Seven classes, class c holding images 10c .. 10c + 2 (most confident first)."""
    return {c: [10 * c, 10 * c + 1, 10 * c + 2] for c in range(7)}


def test_every_grid_holds_images_of_distinct_classes_with_their_labels(pools):
    grids = sample_grids(pools, grid_size=2, num_grids=30, seed=1)
    assert len(grids) == 30
    for grid in grids:
        assert len(grid.indices) == 4 and len(set(grid.labels)) == 4
        assert all(index in pools[label] for index, label in zip(grid.indices, grid.labels))


def test_grids_use_the_most_confident_images_first(pools):
    first_use = {}
    for grid in sample_grids(pools, grid_size=2, num_grids=3, seed=0):
        for index, label in zip(grid.indices, grid.labels):
            first_use.setdefault(label, index)
    assert all(index == pools[label][0] for label, index in first_use.items())


def test_grids_are_reproducible_from_the_seed(pools):
    assert sample_grids(pools, 2, 5, seed=3) == sample_grids(pools, 2, 5, seed=3)
    assert sample_grids(pools, 2, 5, seed=3) != sample_grids(pools, 2, 5, seed=4)


def test_fewer_confident_classes_than_cells_is_an_error(pools):
    with pytest.raises(ValueError, match="needs 9 classes"):
        sample_grids(pools, grid_size=3, num_grids=1)


# Tiling and cell numbering


def test_image_k_lands_in_row_k_div_n_and_column_k_mod_n():
    n, height, width = 3, 4, 5
    images = torch.arange(n * n, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, height, width)
    tiled = tile_grid(images, n)
    assert tiled.shape == (2, n * height, n * width)
    for k in range(n * n):
        row, col = divmod(k, n)
        assert bool((tiled[:, row * height : (row + 1) * height, col * width : (col + 1) * width] == k).all())


def test_tiled_cells_are_the_cells_the_grid_pointing_game_metric_scores():
    metric = evaluate.load(metric_path("grid_pointing_game"))
    n = 3
    for k in range(n * n):
        images = torch.zeros(n * n, 3, 4, 4)
        images[k] = 1.0
        attribution = tile_grid(images, n).sum(dim=0).numpy()
        assert metric.compute(attributions=[attribution], cell_index=[k], grid_size=[n, n])["grid_pointing_game"] == 1


# The games


def test_an_explanation_that_finds_each_cells_class_scores_one():
    dataset = grey_dataset([0, 1, 2, 3, 4])
    grids = [Grid((0, 1, 2, 3), (0, 1, 2, 3)), Grid((4, 2, 0, 1), (4, 2, 0, 1))]
    scores = grid_pointing_game(
        finds_the_target, grids, dataset, square(CELL), grid_size=2, window=CELL, progress=False
    )
    assert scores == [1.0] * 8


def test_a_uniform_explanation_scores_one_over_the_number_of_cells():
    dataset = grey_dataset([0, 1, 2, 3])
    scores = grid_pointing_game(
        uniform, [Grid((0, 1, 2, 3), (0, 1, 2, 3))], dataset, square(CELL), 2, window=CELL, progress=False
    )
    assert scores == pytest.approx([0.25] * 4)


def test_boxes_are_scaled_with_the_resize_to_the_model_input():
    mask = box_mask([10, 5, 30, 20], original_size=(40, 20), transform=square(8))
    assert torch.equal(mask, box_masks([[2, 2, 6, 8]], 8, 8)[0])


def test_boxes_follow_a_processor_that_resizes_the_short_side_and_crops_the_centre():
    """32x16 -> 16x8 -> centre 8x8 (original columns 8..24): the original's right half is the crop's right half."""
    processor = CLIPImageProcessor(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, do_normalize=False, do_convert_rgb=True
    )
    transform = ProcessorTransform(processor)
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    image[:, 16:] = 255
    mask = box_mask([16, 0, 32, 16], original_size=(32, 16), transform=transform)
    assert torch.equal(mask, box_masks([[4, 0, 8, 8]], 8, 8)[0])
    assert torch.equal(mask, transform(Image.fromarray(image))[0] > 0.5)


def test_a_box_outside_the_image_is_rejected():
    with pytest.raises(ValueError, match="does not lie inside"):
        box_mask([0, 0, 41, 10], original_size=(40, 20), transform=square(8))


def test_energy_pointing_game_explains_each_image_for_its_label_inside_its_box():
    """A 40x20 image, white where the object is; resized to 8x8 the box is still where the white pixels are."""
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:10, :20] = 255
    dataset = [(Image.fromarray(image), 3, [0, 0, 20, 10]), (Image.fromarray(image), 3, [20, 10, 40, 20])]

    def white_for_class_3(images, targets):
        return (images[:, 0] > 0.5).float() * (targets == 3).float().view(-1, 1, 1)

    scores = energy_pointing_game(white_for_class_3, [0, 1], dataset, square(8), progress=False)
    assert scores == [1.0, 0.0]


def as_pixels(image: Image.Image) -> torch.Tensor:
    """A transform that keeps the picture's size: (1, H, W) in [0, 1]."""
    return torch.as_tensor(np.asarray(image), dtype=torch.float32)[None] / 255


@pytest.mark.parametrize("box", [[2, 2, 6, 6], [1.5, 1.5, 5.5, 5.5], [1.2, 0, 3.7, 8]])
def test_a_box_scores_the_same_in_the_metric_module_the_harness_and_guided_training(box):
    """Each counts a pixel as in the box where its centre is."""
    attribution = torch.ones(1, 8, 8)
    centres = torch.arange(8) + 0.5
    inside = ((centres >= box[1]) & (centres < box[3]))[:, None] & ((centres >= box[0]) & (centres < box[2]))[None]
    expected = float(inside.sum()) / 64
    module = evaluate.load(metric_path("energy_pointing_game"))
    published = module.compute(attributions=[attribution[0].numpy()], boxes=[box])["energy_pointing_game"]
    harness = energy_pointing_scores(attribution, box_mask(box, (8, 8), as_pixels)[None])
    training = energy_pointing_scores(attribution, training_box_masks([box], 8, 8)[None])
    assert published == pytest.approx(expected) and float(harness[0]) == float(training[0]) == pytest.approx(expected)


def test_an_object_of_several_boxes_is_scored_on_their_union():
    image = Image.new("RGB", (8, 8))
    dataset = [(image, 0, [[0, 0, 2, 8], [6, 0, 8, 8]])]  # a (K, 4) list, as the boxed datasets give
    scores = energy_pointing_game(lambda images, targets: torch.ones(1, 8, 8), [0], dataset, as_pixels, progress=False)
    assert scores == [0.5]


def test_every_method_of_a_model_is_scored_on_the_same_grids_with_its_accuracy():
    labels = [0, 1, 2, 3, 4, 5] * 2
    dataset = grey_dataset(labels)
    evaluation = evaluate_localisation(
        grey_classifier(),
        {"ideal": finds_the_target, "uniform": uniform},
        dataset,
        square(CELL),
        window=CELL,
        num_grids=3,
        progress=False,
    )
    assert evaluation.accuracy == 1.0 and evaluation.num_images == 12 and evaluation.num_grid_classes == 6
    assert evaluation.grid_pointing_game["ideal"] == [1.0] * 12
    assert evaluation.grid_pointing_game["uniform"] == pytest.approx([0.25] * 12)
    assert evaluation.energy_pointing_game == {}
    assert evaluation.summary("ideal")["grid_pointing_game"] == 1.0


def test_every_boxed_image_is_scored_for_its_label_whatever_the_model_predicts_and_the_grid_settings():
    """Boxes over the left half: a uniform explanation puts half its attribution inside. The classifier is wrong on
    every other image and no grid is asked for: EPG still scores all twelve images (the Model Guidance paper's
    rule), each explained for its label."""
    labels = [0, 1, 2, 3, 4, 5] * 2
    dataset = [(image, label, [0, 0, CELL // 2, CELL]) for image, label in grey_dataset(labels)]
    dataset = [(image, (label + 1) % 6 if i % 2 else label, box) for i, (image, label, box) in enumerate(dataset)]
    explained = []

    def left_half_for_the_label(images, targets):
        explained.extend(targets.tolist())
        return uniform(images, targets)

    for num_grids in (0, 1):
        explained.clear()
        evaluation = evaluate_localisation(
            grey_classifier(), {"uniform": left_half_for_the_label}, dataset, square(CELL), window=CELL,
            num_grids=num_grids, progress=False,
        )  # fmt: skip
        assert evaluation.accuracy == 0.5
        assert evaluation.energy_pointing_game == {"uniform": [0.5] * 12}
        assert explained[-12:] == [label for _, label, _ in dataset]
    assert evaluation.summary("uniform")["energy_pointing_game"] == 0.5
    assert evaluation.energy_pointing_game_skipped == 0


def centre_cropping(size: int, crop_pct: float = 0.875):
    """A CNN's processor: the shortest edge to ``size / crop_pct``, then the centre ``size`` x ``size``."""
    return ProcessorTransform(
        ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=crop_pct, do_normalize=False)
    )


def test_an_image_whose_box_the_processor_crops_away_is_skipped_and_counted_not_scored_zero():
    """64x48 -> 48x36 (shortest edge to int(32 / 0.875)) -> the centre 32x32, resized columns 8..40 and rows 2..34
    (original columns 10.7..53.3): a box on the left 6 columns is cut away; columns 16..48 are resized columns
    12..36, 24 of the 32; the top half of the rows is resized rows 0..18, 16 of the 32 after the crop."""
    image = Image.new("RGB", (64, 48), (128, 128, 128))
    dataset = [(image, 0, [0, 0, 6, 48]), (image, 0, [16, 0, 48, 48]), (image, 0, [0, 0, 64, 24])]
    transform = centre_cropping(32)
    assert not box_mask([0, 0, 6, 48], image.size, transform).any()
    evaluation = evaluate_localisation(
        lambda images: torch.ones(len(images), 2), {"uniform": uniform}, dataset, transform, progress=False
    )
    assert evaluation.energy_pointing_game_skipped == 1
    assert evaluation.energy_pointing_game["uniform"] == [24 / 32, 16 / 32]
    with pytest.raises(ValueError, match="cover no pixel of the model's view"):
        energy_pointing_game(uniform, [0], dataset, transform, progress=False)


@pytest.mark.parametrize(
    ("original", "size", "box"),
    [((37, 24), 64, [23, 1, 36, 2]), ((72, 71), 224, [59, 12, 60, 43]), ((89, 91), 224, [87, 79, 88, 84])],
)
def test_a_thin_box_under_a_resize_covers_the_model_pixels_whose_centres_lie_in_it(original, size, box):
    """Model pixel j of a resize from W to S has its centre at (j + 0.5) W / S in the original: it is in the box
    where that point is (the rule of training and of the evaluate module), not wherever the resampled box is half
    as bright as its brightest pixel."""
    width, height = original
    columns = (torch.arange(size) + 0.5) * width / size
    rows = (torch.arange(size) + 0.5) * height / size
    expected = ((rows >= box[1]) & (rows < box[3]))[:, None] & ((columns >= box[0]) & (columns < box[2]))[None]
    assert torch.equal(box_mask(box, original, square(size)), expected)


PROCESSORS = {
    "a CNN's: shortest edge, centre crop": ConvNextImageProcessor(
        size={"shortest_edge": 24}, crop_pct=0.7, do_normalize=False
    ),
    "a CNN's at 384 px: warped": ConvNextImageProcessor(size={"shortest_edge": 384}, do_normalize=False),
    "CLIP's: shortest edge, a non-square crop": CLIPImageProcessor(
        size={"shortest_edge": 24}, crop_size={"height": 24, "width": 18}, do_normalize=False
    ),
    "a ViT's: a fixed size": ViTImageProcessor(size={"height": 16, "width": 24}, do_normalize=False),
}


@pytest.mark.parametrize("processor", PROCESSORS.values(), ids=PROCESSORS)
@pytest.mark.parametrize(("original", "box"), [((50, 30), [5, 4, 40, 20]), ((30, 61), [12, 30, 29, 55])])
def test_a_box_follows_the_processors_resize_and_crop_with_the_drawn_object(processor, original, box):
    """The processor's own pixels of the box drawn white agree with the mask wherever the box's edge is not within
    a resampling filter's reach."""
    transform = ProcessorTransform(processor)
    drawn = np.zeros((original[1], original[0], 3), dtype=np.uint8)
    drawn[box[1] : box[3], box[0] : box[2]] = 255
    bright = transform(Image.fromarray(drawn)).mean(dim=0) >= 0.5
    mask = box_mask(box, original, transform)
    eroded = -F.max_pool2d(-mask[None, None].float(), 5, 1, 2)[0, 0] > 0  # 2 px from every edge
    grown = F.max_pool2d(mask[None, None].float(), 5, 1, 2)[0, 0] > 0
    assert mask.shape == bright.shape and mask.any()
    assert bool((bright | ~eroded).all()) and bool((~bright | grown).all())


def test_a_transform_of_no_processor_that_changes_the_size_cannot_carry_boxes():
    def halve(image):
        return torch.zeros(3, image.height // 2, image.width // 2)

    with pytest.raises(ValueError, match="cannot carry boxes; pass the model's processor"):
        box_mask([0, 0, 4, 4], (8, 8), halve)


def test_without_enough_confident_classes_there_is_no_grid_to_score():
    evaluation = evaluate_localisation(
        grey_classifier(), {"uniform": uniform}, grey_dataset([0, 1, 2]), square(CELL), window=CELL, progress=False
    )
    assert evaluation.grid_pointing_game == {"uniform": []}
    assert evaluation.summary("uniform")["grid_pointing_game"] is None


def bcos_on_grey_grids(model, batch_size: int = 32):
    """Two 2x2 grids of 16 px grey images, explained by ``model`` through its own pixels and window; the
    evaluation and every call ``(images, targets, attributions)`` of the attribution function."""
    calls = []

    def explain(images, targets):
        attributions = bcos_attribution(model)(images, targets)
        calls.append((images, targets, attributions))
        return attributions

    evaluation = evaluate_localisation(
        grey_classifier(),
        {"B-cos": explain},
        grey_dataset([0, 1, 2, 3, 4, 5], size=16),
        model_transform(model),
        explanation_window(model),
        num_grids=2,
        batch_size=batch_size,
        progress=False,
    )
    return evaluation, calls


def grid_scores_by_hand(model, grids: list[Grid], pixels: dict[int, torch.Tensor]) -> list[float]:
    """GridPG without the harness: each grid tiled by hand from its images' pixels (``pixels[index]``, 3 x S x S),
    each cell's class explained with ``model.explain`` on the whole grid (in windows of the model's input size at
    half stride, summed back, when it has position embeddings), then the positive share inside the cell."""
    window = explanation_window(model)
    scores = []
    for grid in grids:
        size = pixels[grid.indices[0]].shape[-1]
        tiled = torch.zeros(3, 2 * size, 2 * size)
        cells = [
            (slice(row * size, (row + 1) * size), slice(col * size, (col + 1) * size))
            for row in (0, 1)
            for col in (0, 1)
        ]
        for (rows, cols), index in zip(cells, grid.indices):
            tiled[:, rows, cols] = pixels[index]
        targets = torch.tensor(grid.labels)
        if window is None:
            maps = model.explain(tiled.expand(4, -1, -1, -1), target=targets).contributions
        else:
            maps = torch.zeros(4, 2 * size, 2 * size)
            for top in range(0, 2 * size - window + 1, window // 2):
                for left in range(0, 2 * size - window + 1, window // 2):
                    crop = tiled[:, top : top + window, left : left + window].expand(4, -1, -1, -1)
                    maps[:, top : top + window, left : left + window] += model.explain(
                        crop, target=targets
                    ).contributions
        for explained, (rows, cols) in zip(maps.clamp_min(0), cells):
            scores.append(float(explained[rows, cols].sum() / explained.sum()) if explained.sum() > 0 else 0.0)
    return scores


def grey_grid_scores_by_hand(model, num_grids: int = 2, size: int = 16) -> list[float]:
    """The GridPG scores of :func:`bcos_on_grey_grids`, by :func:`grid_scores_by_hand` on flat grey cells."""
    pools = {label: [label] for label in range(6)}  # grey_classifier gets every image right, with confidence ~1
    grey = {label: torch.full((3, size, size), round(255 * grey_level(label)) / 255) for label in range(6)}
    return grid_scores_by_hand(model, sample_grids(pools, grid_size=2, num_grids=num_grids, seed=0), grey)


def test_a_tiny_bcos_vit_is_explained_on_grids_in_sliding_windows():
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(image=16, patch=4, labels=6), b=2.0).eval()
    evaluation, calls = bcos_on_grey_grids(model, batch_size=9)
    assert {tuple(images.shape) for images, _, _ in calls} == {
        (9, 3, 16, 16)
    }  # 2 grids x 4 cells x 9 windows of the model's input size
    scores = evaluation.grid_pointing_game["B-cos"]
    assert len(scores) == 8 and scores == pytest.approx(grey_grid_scores_by_hand(model), abs=1e-5)


def test_a_bcos_vit_that_takes_any_size_is_explained_on_the_whole_grid():
    model = any_size_bcos_vit(image=16)
    evaluation, calls = bcos_on_grey_grids(model)
    assert bcos_classifier(model)(torch.rand(2, 3, 32, 32)).shape == (2, 6)  # it classifies grids as well
    assert [tuple(images.shape) for images, _, _ in calls] == [(4, 3, 32, 32)] * 2  # each grid whole, once per cell
    images, targets, attributions = calls[0]
    explanation = model.explain(images, target=targets)
    torch.testing.assert_close(attributions, explanation.contributions)
    logits = explanation.logits.gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(attributions.sum(dim=(1, 2)) + explanation.bias, logits)
    scores = evaluation.grid_pointing_game["B-cos"]
    assert len(scores) == 8 and scores == pytest.approx(grey_grid_scores_by_hand(model), abs=1e-5)


def test_the_harness_a_bcos_model_and_its_source_see_one_non_square_image_as_the_same_pixels(tmp_path):
    """The B-cos model's transform, the processor saved beside its weights, and its source's transform agree."""
    source = hf_vit(image=16, patch=4)
    model = BcosViTForImageClassification.from_pretrained_standard(source)
    model.save_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (11, 27, 3), dtype=np.uint8))
    pixels = model_transform(model)(image)
    assert pixels.shape == (3, 16, 16) and float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    torch.testing.assert_close(ProcessorTransform(AutoImageProcessor.from_pretrained(tmp_path))(image), pixels)
    torch.testing.assert_close(model_transform(load_standard_classifier(source))(image), pixels)


@pytest.mark.parametrize("bars", [True, False])
def test_evaluation_progress_bars_are_off_where_transformers_bars_are(capsys, monkeypatch, bars):
    """``transformers.utils.logging.disable_progress_bar()`` (or HF_HUB_DISABLE_PROGRESS_BARS=1) silences them too."""
    from transformers.utils import logging

    monkeypatch.setattr(logging, "_tqdm_active", bars)  # what enable_/disable_progress_bar() set
    model = TINY_CLASSIFIERS["vit"]().eval()
    images = [(Image.new("RGB", (40, 40), (i * 20, 0, 0)), i % 3) for i in range(4)]
    predict(bcos_classifier(model), images, model_transform(model), batch_size=2)
    assert ("classifying" in capsys.readouterr().err) == bars


def test_predictions_keep_each_image_s_top_class_and_its_probability_not_every_class_s():
    """All N x C probabilities would take gigabytes at ImageNet-21k's 21,843 classes."""
    logits = torch.randn(5, 3000, generator=torch.Generator().manual_seed(0))
    images = [(Image.new("RGB", (4, 4)), i % 2) for i in range(5)]
    logits_of = iter(logits.split(2))  # batches of 2, 2 and 1
    predictions = predict(lambda pixels: next(logits_of), images, lambda image: torch.zeros(3, 4, 4), 2, progress=False)
    assert {name: tuple(value.shape) for name, value in vars(predictions).items()} == dict.fromkeys(
        ("predicted", "confidence", "labels"), (5,)
    )
    assert torch.equal(predictions.predicted, logits.argmax(dim=1))
    torch.testing.assert_close(predictions.confidence, logits.softmax(dim=1).amax(dim=1))
    assert predictions.labels.tolist() == [0, 1, 0, 1, 0]


def test_predictions_of_no_images_are_empty():
    predictions = predict(lambda pixels: pixels, [], lambda image: image, progress=False)
    assert predictions.predicted.dtype == torch.long and len(predictions.confidence) == len(predictions.labels) == 0
    assert predictions.accuracy() == 0.0


def _read_here(image: Image.Image) -> torch.Tensor:
    """Pixels that say which process made them: 1 in a DataLoader worker, 0 in the test's own process."""
    return torch.full((3, 4, 4), float(torch.utils.data.get_worker_info() is not None))


@pytest.mark.parametrize("workers", [0, 2])
def test_images_are_read_by_the_chosen_number_of_worker_processes_and_predicted_as_in_one(workers):
    images = [(Image.new("RGB", (4, 4)), i % 2) for i in range(7)]
    seen = []

    def classify(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(pixels[:, 0, 0, 0])
        return torch.eye(3)[torch.arange(len(pixels)) % 3] * 5

    predictions = predict(classify, images, _read_here, batch_size=3, progress=False, num_workers=workers)
    assert torch.cat(seen).tolist() == [float(workers > 0)] * 7
    assert predictions.predicted.tolist() == [0, 1, 2, 0, 1, 2, 0]  # batches of 3, 3 and 1
    assert predictions.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert predictions.accuracy() == pytest.approx(3 / 7)  # images 0, 1 and 6


class _SaysWhereItIsRead(torch.utils.data.Dataset):
    """Four images, each labelled 1 when read in a DataLoader worker, 0 when read in the test's own process."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (4, 4)), int(torch.utils.data.get_worker_info() is not None)


@pytest.mark.parametrize("device, by_workers", [("cpu", False), ("meta", True)])
def test_by_default_images_are_read_here_for_a_model_on_the_cpu_and_by_workers_beside_any_other_device(
    device, by_workers
):
    """Beside a GPU, reading and resizing images is most of an evaluation ("meta" stands in for the GPU here)."""
    predictions = predict(
        lambda pixels: torch.zeros(len(pixels), 2),
        _SaysWhereItIsRead(),
        _read_here,
        batch_size=2,
        device=device,
        progress=False,
    )
    assert predictions.labels.tolist() == [int(by_workers)] * 4
