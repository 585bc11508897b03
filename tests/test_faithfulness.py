"""The faithfulness metrics: closed-form curves of a model whose logit is a sum of pixels, agreement with Quantus's
implementations on the same inputs, batching that changes nothing, ROAD's imputation, and the evaluate modules."""

import warnings

import evaluate
import numpy as np
import pytest
import torch
from torch import nn

from bcos_zoo.evaluation.faithfulness import (
    blur,
    curve_auc,
    deletion_curves,
    insertion_curves,
    linear_imputation,
    noisy_linear_imputation,
    pixel_ranks,
    road_curves,
)
from bcos_zoo.evaluation.metrics import metric_path


class PixelSum(nn.Module):
    """Two logits: the sum of every pixel's weighted channels, and 0 (so the target's probability is a sigmoid)."""

    def __init__(self, weights: torch.Tensor | None = None):
        super().__init__()
        self.weights = weights

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weighted = images if self.weights is None else images * self.weights
        total = weighted.flatten(1).sum(1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def random_images(n=3, channels=3, height=6, width=8, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_maps(images: torch.Tensor, seed=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], *images.shape[-2:], generator=generator, dtype=images.dtype)


def removed_first(attributions: torch.Tensor) -> torch.Tensor:
    """(N, H * W) pixel indices, most relevant first (ties: lower index first), by a plain sort."""
    return torch.stack(
        [torch.tensor(sorted(range(a.numel()), key=lambda p: (-float(a.flatten()[p]), p))) for a in attributions]
    )


@pytest.mark.parametrize("steps", [4, 5, 48])
def test_deletion_of_a_pixel_sum_loses_the_sum_of_the_removed_pixels(steps):
    """Logit = sum of pixels, black baseline: after removing the first k pixels the logit is the total minus their
    sums, k = floor(s * H * W / steps); 48 steps of 48 pixels remove one pixel each."""
    images = random_images()
    maps = random_maps(images)
    curves = deletion_curves(PixelSum(), images, maps, torch.zeros(3, dtype=torch.long), steps, score="logit")
    pixel_sums = images.sum(dim=1).flatten(1)
    for n, order in enumerate(removed_first(maps)):
        for s in range(steps + 1):
            k = s * 48 // steps
            expected = pixel_sums[n].sum() - pixel_sums[n, order[:k]].sum()
            torch.testing.assert_close(curves.scores[n, s], expected)
    torch.testing.assert_close(
        curves.fractions, torch.tensor([s * 48 // steps / 48 for s in range(steps + 1)]).double()
    )
    # the probability is the sigmoid of the logit, and the area is the trapezoid over the fractions
    probabilities = deletion_curves(PixelSum(), images, maps, torch.zeros(3, dtype=torch.long), steps)
    torch.testing.assert_close(probabilities.scores, torch.sigmoid(curves.scores))
    expected_auc = [np.trapezoid(row, curves.fractions.numpy()) for row in probabilities.scores.numpy()]
    torch.testing.assert_close(probabilities.auc(), torch.tensor(expected_auc))


def test_deletion_by_the_pixel_sums_themselves_falls_fastest():
    """Ranked by their own contribution (the exact attribution of a pixel-sum model), the deletion curve lies below
    the curve of any other order: its area is the least, here against the reverse order and a random one."""
    images = random_images(n=4)
    contributions = images.sum(dim=1)
    targets = torch.zeros(4, dtype=torch.long)
    areas = [
        deletion_curves(PixelSum(), images, maps, targets, steps=12, score="logit").auc()
        for maps in (contributions, -contributions, random_maps(images))
    ]
    assert bool((areas[0] < areas[2]).all() and (areas[2] < areas[1]).all())


def test_insertion_into_the_blurred_image_gains_each_inserted_pixels_change():
    images = random_images()
    maps = random_maps(images)
    curves = insertion_curves(PixelSum(), images, maps, torch.zeros(3, dtype=torch.long), steps=6, score="logit")
    blurred = blur(images)
    start, change = blurred.sum(dim=1).flatten(1), (images - blurred).sum(dim=1).flatten(1)
    for n, order in enumerate(removed_first(maps)):
        for s in range(7):
            torch.testing.assert_close(curves.scores[n, s], start[n].sum() + change[n, order[: s * 8]].sum())
    # from black instead: the curve climbs from 0 to the image's sum
    from_black = insertion_curves(PixelSum(), images, maps, torch.zeros(3), steps=6, start=0.0, score="logit")
    torch.testing.assert_close(from_black.scores[:, 0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(from_black.scores[:, -1], images.flatten(1).sum(1))


def test_blur_is_a_normalised_gaussian_with_reflected_borders():
    constant = torch.full((1, 2, 12, 12), 0.3, dtype=torch.float64)
    torch.testing.assert_close(blur(constant), constant)
    impulse = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    impulse[0, 0, 10, 10] = 1
    spread = blur(impulse)[0, 0]
    weights = torch.exp(-((torch.arange(11) - 5.0) ** 2) / 50).double()
    weights = weights / weights.sum()
    torch.testing.assert_close(spread[5:16, 5:16], weights[:, None] * weights[None, :])


def test_an_image_smaller_than_the_blur_repeats_its_border_pixels():
    """A 4 x 3 image cannot be reflected by the kernel's radius of 5: its border pixels are repeated, so each
    blurred pixel is the Gaussian average over the image extended by its edge values."""
    image = torch.arange(12, dtype=torch.float64).view(1, 1, 4, 3)
    weights = torch.exp(-((torch.arange(11) - 5.0) ** 2) / 50).double()
    weights = weights / weights.sum()
    rows = (torch.arange(-5, 6).view(-1, 1) + torch.arange(4)).clamp(0, 3)  # [offset, output row] -> input row
    columns = (torch.arange(-5, 6).view(-1, 1) + torch.arange(3)).clamp(0, 2)
    expected = torch.einsum(
        "i,j,ijkl->kl", weights, weights, image[0, 0][rows[:, None, :, None], columns[None, :, None, :]]
    )
    torch.testing.assert_close(blur(image)[0, 0], expected)
    maps = torch.rand(1, 4, 3)
    curves = insertion_curves(PixelSum(), image.repeat(1, 3, 1, 1), maps, torch.zeros(1), steps=4, score="logit")
    torch.testing.assert_close(curves.scores[0, -1], image.sum() * 3)


def test_ties_are_broken_by_pixel_index_row_major():
    ranks = pixel_ranks(torch.tensor([[[1.0, 2.0, 2.0], [2.0, 0.0, 1.0]]]))
    assert ranks.tolist() == [[3, 0, 1, 2, 5, 4]]
    least_first = pixel_ranks(torch.tensor([[[1.0, 2.0, 2.0], [2.0, 0.0, 1.0]]]), descending=False)
    assert least_first.tolist() == [[1, 3, 4, 5, 0, 2]]


class SmallCNN(nn.Module):
    def __init__(self, channels=3, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(
            nn.Conv2d(channels, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(24, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def test_batching_changes_nothing():
    """Curves of a batch, at any batch size, are the curves each image gets alone."""
    model = SmallCNN().double().eval()
    images, targets = random_images(n=4), torch.tensor([0, 1, 2, 3])
    maps = random_maps(images)
    for curves_of in (deletion_curves, insertion_curves):
        batched = curves_of(model, images, maps, targets, steps=6, batch_size=64)
        small = curves_of(model, images, maps, targets, steps=6, batch_size=5)
        torch.testing.assert_close(batched.scores, small.scores)
        for n in range(4):
            alone = curves_of(model, images[n : n + 1], maps[n : n + 1], targets[n : n + 1], steps=6, batch_size=3)
            torch.testing.assert_close(batched.scores[n : n + 1], alone.scores)
    road = road_curves(model, images, maps, targets, noise=0.0, batch_size=7)
    for n in range(4):
        alone = road_curves(model, images[n : n + 1], maps[n : n + 1], targets[n : n + 1], noise=0.0, batch_size=2)
        torch.testing.assert_close(road.scores[n : n + 1], alone.scores)


# Quantus's implementations on the same inputs


def quantus_model(channels: int = 3) -> nn.Module:
    return SmallCNN(channels=channels).eval()


def test_deletion_curves_are_quantus_pixel_flipping_with_a_black_baseline():
    """Quantus flips ``features_in_step`` entries of the image flattened over channels and pixels; a map broadcast
    over the 3 channels ranks each pixel's 3 channels together, so 24 features are 8 whole pixels: with 8 x 12
    images, 12 steps. Quantus's curve leaves out the intact image (our first point)."""
    import quantus

    model = quantus_model()
    images, targets = random_images(n=5, height=8, width=12, dtype=torch.float32), torch.tensor([0, 1, 2, 3, 0])
    maps = random_maps(images)
    ours = deletion_curves(model, images, maps, targets, steps=12)
    metric = quantus.PixelFlipping(features_in_step=24, perturb_baseline=0.0, normalise=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(
            model=model,
            x_batch=images.numpy(),
            y_batch=targets.numpy(),
            a_batch=maps[:, None].numpy(),
            device="cpu",
            softmax=True,
        )
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), np.array(theirs), rtol=1e-5, atol=1e-6)


def test_insertion_curves_are_quantus_pixel_flipping_of_the_blurred_image_towards_the_original():
    """Insertion is pixel flipping that starts from the blurred image and flips each pixel to its original value."""
    import quantus

    model = quantus_model()
    images, targets = random_images(n=4, height=8, width=12, dtype=torch.float32), torch.tensor([3, 1, 2, 0])
    maps = random_maps(images)
    original = images.flatten(1).numpy()

    def put_back(arr, indices, **kwargs):
        arr = arr.copy()
        rows = np.arange(len(arr))[:, None]
        arr[rows, indices] = original[rows, indices]
        return arr

    metric = quantus.PixelFlipping(features_in_step=24, perturb_func=put_back, normalise=False, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric(
            model=model,
            x_batch=blur(images).numpy(),
            y_batch=targets.numpy(),
            a_batch=maps[:, None].numpy(),
            device="cpu",
            softmax=True,
        )
    ours = insertion_curves(model, images, maps, targets, steps=12)
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), np.array(theirs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("height", "width", "share", "seed"), [(8, 12, 0.3, 0), (16, 16, 0.9, 1), (10, 7, 0.6, 2)])
def test_linear_imputation_is_quantus_noisy_linear_imputation_without_noise(height, width, share, seed):
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation

    images = random_images(n=2, height=height, width=width, seed=seed)
    maps = random_maps(images, seed=seed + 10)
    maps[1] = -((torch.arange(height)[:, None] - height / 3) ** 2 + (torch.arange(width)[None] - width / 2) ** 2)
    count = int(share * height * width)
    removed = pixel_ranks(maps) < count  # the second image loses one blob around a point
    ours = linear_imputation(images, removed.view(2, height, width))
    for n in range(2):
        indices = torch.argsort(maps[n].flatten(), descending=True, stable=True)[:count].numpy()
        theirs = quantus_imputation(images[n].numpy(), indices, noise=0.0)
        np.testing.assert_allclose(ours[n].numpy(), theirs, atol=1e-9)
    # in float32 (the default on a GPU), within 1e-4
    single = linear_imputation(images.float(), removed.view(2, height, width))
    torch.testing.assert_close(single.double(), ours, atol=1e-4, rtol=0)


def test_imputation_keeps_the_kept_pixels_and_recovers_a_linear_ramp_inside_the_image():
    """A plane a*y + b*x + c equals the weighted mean of its 8 neighbours (the weights are symmetric), so a hole
    that does not touch the border is filled with the plane exactly; kept pixels never change; noise only touches
    the removed pixels."""
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    plane = torch.stack([0.02 * ys + 0.03 * xs + 0.1, 0.5 - 0.01 * ys, 0.04 * xs]).double()[None]
    removed = torch.zeros(1, 12, 10, dtype=torch.bool)
    removed[0, 2:9, 3:8] = True
    removed[0, 5, 1] = True
    torch.testing.assert_close(linear_imputation(plane, removed), plane)
    noisy = noisy_linear_imputation(plane, removed, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, ~removed[0]], plane[:, :, ~removed[0]])
    assert 0.05 < float((noisy - plane)[:, :, removed[0]].std()) < 0.15


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_accuracy_is_quantus_road_without_noise(order):
    """Quantus's ROAD works on one-channel images (it indexes pixels of the flattened channels otherwise) and
    removes the most relevant first; least relevant first is the same on the reversed map (1 - map). Quantus reports the
    share of images still classified as their label at each percentage."""
    import quantus

    model = quantus_model(channels=1)
    images = random_images(n=16, channels=1, height=10, width=10, dtype=torch.float32)
    targets = torch.arange(16) % 4
    maps = random_maps(images)
    percentages = [10, 30, 50, 70, 90]
    ours = road_curves(model, images, maps, targets, [p / 100 for p in percentages], order, noise=0.0)
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, disable_warnings=True)
    ranking = maps if order == "morf" else 1 - maps  # Quantus refuses all-negative maps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric(
            model=model,
            x_batch=images.numpy(),
            y_batch=targets.numpy(),
            a_batch=ranking[:, None].numpy(),
            device="cpu",
            softmax=True,
        )
    theirs = [metric.evaluation_scores[p] for p in percentages]
    accuracy = (ours.predictions == targets[:, None]).double().mean(dim=0)
    np.testing.assert_allclose(accuracy.numpy(), theirs)
    assert float(accuracy.min()) > 0 and float(accuracy.max()) < 1  # the comparison is not of trivial curves


def test_road_removes_the_floor_of_the_share_of_pixels_in_order():
    """On a pixel-sum model without noise, ROAD's logit is the sum of the image with its first k pixels imputed."""
    images = random_images(n=2)
    maps = random_maps(images)
    curves = road_curves(PixelSum(), images, maps, torch.zeros(2), (0.25, 0.5), noise=0.0, score="logit")
    for n, order in enumerate(removed_first(maps)):
        for s, count in enumerate((12, 24)):
            removed = torch.zeros(48, dtype=torch.bool)
            removed[order[:count]] = True
            imputed = linear_imputation(images[n : n + 1], removed.view(1, 6, 8))
            torch.testing.assert_close(curves.scores[n, s], imputed.sum())
    torch.testing.assert_close(curves.mean(), curves.scores.mean(1))


def test_bad_inputs_are_refused():
    images, maps = random_images(n=2), random_maps(random_images(n=2))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        deletion_curves(PixelSum(), images, maps[:, :4], torch.zeros(2))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        deletion_curves(PixelSum(), images, maps, torch.zeros(2), steps=0)
    with pytest.raises(ValueError, match="'morf'"):
        road_curves(PixelSum(), images, maps, torch.zeros(2), order="random")
    with pytest.raises(ValueError, match="'probability' or 'logit'"):
        insertion_curves(PixelSum(), images, maps, torch.zeros(2), score="softmax")


@pytest.mark.parametrize("curves", [deletion_curves, insertion_curves, road_curves])
@pytest.mark.parametrize("targets", [torch.zeros(4), torch.zeros(1), torch.zeros(2, 1)])
def test_targets_that_are_not_one_per_image_are_refused_not_cut_to_size(curves, targets):
    """The labels of a whole dataset beside a slice of its images would score every curve for another class."""
    images = random_images(n=2)
    with pytest.raises(ValueError, match=r"one class per image, \(N,\) = \(2,\), got "):
        curves(PixelSum(), images, random_maps(images), targets)


@pytest.mark.parametrize("curves", [deletion_curves, insertion_curves, road_curves])
def test_a_target_out_of_the_model_s_classes_is_refused_and_one_class_is_every_image_s(curves):
    images = random_images(n=2)
    with pytest.raises(ValueError, match=r"target indices must lie in \[0, 2\), got \[7\]"):
        curves(PixelSum(), images, random_maps(images), torch.tensor([7, 0]))
    one, each = (curves(PixelSum(), images, random_maps(images), t).scores for t in (1, torch.ones(2)))
    torch.testing.assert_close(one, each)


def test_road_fractions_outside_0_to_1_are_refused():
    images = random_images(n=2)
    with pytest.raises(ValueError, match=r"shares of the pixels, in \[0, 1\]; got \[0.5, 1.5\]"):
        road_curves(PixelSum(), images, random_maps(images), torch.zeros(2), (0.5, 1.5))


@pytest.mark.parametrize("curves", [deletion_curves, insertion_curves, road_curves])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_map_holding_nan_or_inf_is_refused_before_the_model_is_called_as_the_localisation_scores_refuse_it(
    curves, bad
):
    images = random_images(n=2)
    maps = random_maps(images)
    maps[1, 2, 3] = bad
    calls = []

    def classify(batch):
        calls.append(batch)
        return PixelSum()(batch)

    with pytest.raises(ValueError, match="NaN or inf values; the method that made them failed"):
        curves(classify, images, maps, torch.zeros(2))
    assert calls == []


@pytest.mark.parametrize("curves", [deletion_curves, insertion_curves])
def test_a_half_precision_model_is_scored_in_float32(curves):
    images = random_images(dtype=torch.float32)
    scored = curves(PixelSum(), images.bfloat16(), random_maps(images), targets=[0, 0, 0], steps=4)
    assert scored.scores.dtype == torch.float32
    intact = PixelSum()(images.bfloat16()).float().softmax(dim=1)[:, 0]
    at = 0 if curves is deletion_curves else -1  # the intact image: deletion's first point, insertion's last
    torch.testing.assert_close(scored.scores[:, at], intact, rtol=0, atol=0)


def test_curve_auc_is_the_trapezoid_over_the_fractions():
    fractions = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert float(curve_auc(fractions, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))) == pytest.approx(0.375)


# The evaluate modules wrap the same functions


def test_the_evaluate_modules_load_offline_and_agree_with_the_functions():
    model = SmallCNN().eval()
    images, targets = random_images(n=3, dtype=torch.float32), torch.tensor([0, 2, 1])
    maps = random_maps(images)
    inputs = dict(attributions=list(maps.double().numpy()), images=list(images.numpy()), targets=targets.tolist())

    deletion = evaluate.load(metric_path("pixel_deletion")).compute(**inputs, model=model, steps=4)
    expected = deletion_curves(model, images, maps, targets, steps=4)
    assert deletion["pixel_deletion"] == pytest.approx(float(expected.auc().mean()), abs=1e-6)
    assert deletion["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(deletion["curve"], expected.scores.mean(0).numpy(), atol=1e-6)

    insertion = evaluate.load(metric_path("pixel_insertion")).compute(**inputs, model=model, steps=4)
    expected = insertion_curves(model, images, maps, targets, steps=4)
    assert insertion["pixel_insertion"] == pytest.approx(float(expected.auc().mean()), abs=1e-6)

    road = evaluate.load(metric_path("road")).compute(**inputs, model=model, fractions=[0.2, 0.6], order="lerf")
    expected = road_curves(model, images, maps, targets, [0.2, 0.6], "lerf")
    assert road["road"] == pytest.approx(float(expected.mean().mean()), abs=1e-6)
    assert road["fractions"] == pytest.approx([0.2, 0.6]) and len(road["accuracy"]) == 2
