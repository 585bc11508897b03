"""The localisation metrics score constructed attributions exactly as defined, load offline with evaluate, and
agree with the batched score functions the harness calls."""

import evaluate
import numpy as np
import pytest
import torch

from bcos_zoo.evaluation.metrics import metric_path
from bcos_zoo.evaluation.scores import accuracy, box_masks, energy_pointing_scores, grid_pointing_scores


@pytest.fixture(scope="module")
def grid_pg():
    return evaluate.load(metric_path("grid_pointing_game"))


@pytest.fixture(scope="module")
def energy_pg():
    return evaluate.load(metric_path("energy_pointing_game"))


def grid_with(values: dict[int, float], rows=2, cols=2, cell=3) -> np.ndarray:
    """A rows x cols grid of cell x cell tiles, tile k filled with values[k] (0 elsewhere)."""
    grid = np.zeros((rows * cell, cols * cell))
    for index, value in values.items():
        r, c = divmod(index, cols)
        grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = value
    return grid


def test_all_attribution_in_the_target_cell_scores_one(grid_pg):
    assert grid_pg.compute(attributions=[grid_with({2: 1.0})], cell_index=[2], grid_size=[2, 2]) == {
        "grid_pointing_game": 1.0
    }


def test_cells_are_numbered_row_major_from_the_top_left(grid_pg):
    attribution = grid_with({1: 3.0, 2: 1.0}, rows=2, cols=3)  # cell 1: top middle; cell 2: top right
    result = grid_pg.compute(attributions=[attribution, attribution], cell_index=[1, 2], grid_size=[2, 3])
    assert result["grid_pointing_game"] == pytest.approx((0.75 + 0.25) / 2)


def test_negative_attribution_is_ignored(grid_pg):
    attribution = grid_with({0: 1.0, 1: 1.0, 3: -5.0})
    assert grid_pg.compute(attributions=[attribution], cell_index=[0], grid_size=[2, 2])[
        "grid_pointing_game"
    ] == pytest.approx(0.5)


def test_no_positive_attribution_scores_zero(grid_pg):
    attributions = [np.zeros((6, 6)), -np.ones((6, 6))]
    assert grid_pg.compute(attributions=attributions, cell_index=[0, 1], grid_size=[2, 2]) == {
        "grid_pointing_game": 0.0
    }


def test_an_int_grid_size_is_a_square_grid_as_the_harness_spells_it(grid_pg):
    as_int = grid_pg.compute(attributions=[grid_with({1: 3.0, 2: 1.0})], cell_index=[1], grid_size=2)
    assert as_int == grid_pg.compute(attributions=[grid_with({1: 3.0, 2: 1.0})], cell_index=[1], grid_size=[2, 2])
    assert as_int["grid_pointing_game"] == pytest.approx(0.75)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_attribution_that_is_not_finite_is_refused_not_scored(bad, grid_pg, energy_pg):
    attribution = grid_with({0: 1.0})
    attribution[5, 5] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        grid_pg.compute(attributions=[attribution], cell_index=[0], grid_size=[2, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        energy_pg.compute(attributions=[attribution], boxes=[[0, 0, 3, 3]])


def test_grid_that_does_not_divide_the_attribution_is_rejected(grid_pg):
    with pytest.raises(ValueError, match="does not split"):
        grid_pg.compute(attributions=[np.ones((5, 6))], cell_index=[0], grid_size=[2, 2])


def test_energy_inside_the_box_over_the_total(energy_pg):
    attribution = np.ones((4, 8))
    attribution[0, 0] = 5.0  # inside the box
    attribution[3, 7] = -2.0  # negative, outside: ignored
    result = energy_pg.compute(attributions=[attribution], boxes=[[0, 0, 2, 2]])
    assert result["energy_pointing_game"] == pytest.approx(8.0 / 35.0)


def test_boxes_are_end_exclusive_pixel_coordinates(energy_pg):
    attribution = np.zeros((4, 4))
    attribution[1, 2] = 1.0  # row 1, column 2
    inside = energy_pg.compute(attributions=[attribution], boxes=[[2, 1, 3, 2]])
    outside = energy_pg.compute(attributions=[attribution], boxes=[[0, 0, 2, 4]])
    assert inside["energy_pointing_game"] == 1.0 and outside["energy_pointing_game"] == 0.0


def test_energy_of_an_empty_explanation_is_zero(energy_pg):
    assert energy_pg.compute(attributions=[np.zeros((3, 3))], boxes=[[0, 0, 1, 1]]) == {"energy_pointing_game": 0.0}


def test_box_outside_the_image_is_rejected(energy_pg):
    with pytest.raises(ValueError, match="does not lie inside"):
        energy_pg.compute(attributions=[np.ones((3, 3))], boxes=[[0, 0, 4, 2]])


def test_a_box_that_covers_no_pixel_centre_is_refused_not_scored_zero(energy_pg):
    with pytest.raises(ValueError, match=r"covers no pixel's centre"):
        energy_pg.compute(attributions=[np.ones((8, 8))], boxes=[[2.6, 0, 3.4, 8]])


def test_offline_accuracy():
    accuracy = evaluate.load(metric_path("bcos_accuracy"))
    assert accuracy.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]) == {"accuracy": 0.75}


def test_unknown_metric_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="grid_pointing_game"):
        metric_path("pointing")


# The evaluate modules are wrappers over the batched score functions the harness calls


def share_inside(attribution: np.ndarray, rows: slice, cols: slice) -> float:
    """Positive attribution in ``attribution[rows, cols]`` over all positive attribution, summed pixel by pixel."""
    inside = total = 0.0
    for y, row in enumerate(attribution):
        for x, value in enumerate(row):
            if value > 0:
                total += value
                inside += value if rows.start <= y < rows.stop and cols.start <= x < cols.stop else 0.0
    return inside / total if total > 0 else 0.0


def test_grid_pointing_scores_of_a_batch_are_the_metrics_score_of_each_grid(grid_pg):
    rng = np.random.default_rng(0)
    attributions = rng.normal(size=(7, 6, 9))
    attributions[3] = -np.abs(attributions[3])  # no positive attribution at all
    cells = rng.integers(0, 6, size=7)
    batched = grid_pointing_scores(attributions, cells, (2, 3))
    for attribution, cell, score in zip(attributions, cells, batched.tolist()):
        single = grid_pg.compute(attributions=[attribution], cell_index=[int(cell)], grid_size=[2, 3])
        assert single["grid_pointing_game"] == pytest.approx(score, abs=1e-12)
    whole = grid_pg.compute(attributions=list(attributions), cell_index=cells.tolist(), grid_size=[2, 3])
    assert whole["grid_pointing_game"] == pytest.approx(float(batched.mean()), abs=1e-12)
    assert batched[3] == 0
    for attribution, cell, score in zip(attributions, cells.tolist(), batched.tolist()):
        row, col = divmod(cell, 3)  # 3x3 pixel cells, row-major over 2 rows x 3 columns
        assert score == pytest.approx(
            share_inside(attribution, slice(3 * row, 3 * row + 3), slice(3 * col, 3 * col + 3))
        )


def test_energy_pointing_scores_of_a_batch_are_the_metrics_score_of_each_image(energy_pg):
    rng = np.random.default_rng(1)
    attributions = rng.normal(size=(6, 5, 8))
    x0, y0 = rng.integers(0, 7, size=6), rng.integers(0, 4, size=6)
    boxes = [[x, y, x + 1 + rng.integers(0, 8 - x), y + 1 + rng.integers(0, 5 - y)] for x, y in zip(x0, y0)]
    batched = energy_pointing_scores(attributions, box_masks(boxes, 5, 8))
    for attribution, box, score in zip(attributions, boxes, batched.tolist()):
        single = energy_pg.compute(attributions=[attribution], boxes=[box])
        assert single["energy_pointing_game"] == pytest.approx(score, abs=1e-12)
    whole = energy_pg.compute(attributions=list(attributions), boxes=boxes)
    assert whole["energy_pointing_game"] == pytest.approx(float(batched.mean()), abs=1e-12)
    for attribution, (x0, y0, x1, y1), score in zip(attributions, boxes, batched.tolist()):
        assert score == pytest.approx(share_inside(attribution, slice(y0, y1), slice(x0, x1)))


def test_accuracy_function_and_module_agree():
    rng = np.random.default_rng(2)
    predictions, references = rng.integers(0, 4, size=50), rng.integers(0, 4, size=50)
    module = evaluate.load(metric_path("bcos_accuracy"))
    expected = module.compute(predictions=predictions.tolist(), references=references.tolist())["accuracy"]
    assert accuracy(torch.as_tensor(predictions), torch.as_tensor(references)) == expected
    assert expected == pytest.approx(float((predictions == references).mean()))


def test_score_functions_take_tensors_on_the_attributions_device_and_reject_bad_shapes():
    attributions = torch.rand(2, 4, 4)
    scores = grid_pointing_scores(attributions, torch.tensor([0, 3]), (2, 2))
    assert scores.dtype == torch.float64 and scores.shape == (2,)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        grid_pointing_scores(attributions[0], [0], (2, 2))
    with pytest.raises(ValueError, match="outside a 2x2 grid"):
        grid_pointing_scores(attributions, [0, 4], (2, 2))
    with pytest.raises(ValueError, match="do not match"):
        energy_pointing_scores(attributions, torch.ones(2, 4, 5, dtype=torch.bool))
