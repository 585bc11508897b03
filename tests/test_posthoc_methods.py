"""The B-cos v2 set of post-hoc baselines (Gradient, Guided Backprop, DeepLIFT, Occlusion, LIME, RISE besides Input x
Gradient, Integrated Gradients, GradCAM and attention rollout): every method on a small ViT and a small ResNet, standard
and B-cos, returns one pixel map per image; the methods' values on models where they are known in closed form."""

import numpy as np
import pytest
import torch
from cnn_sources import hf_resnet
from sources import hf_vit
from torch import nn

from bcos_zoo import BcosResNetForImageClassification, BcosViTForImageClassification
from bcos_zoo.evaluation.baselines import (
    FUNCTION_METHODS,
    BcosClassifier,
    deeplift,
    gradient,
    guided_backprop,
    integrated_gradients,
    lime,
    load_standard_classifier,
    occlusion,
    posthoc_attribution,
    rise,
    rise_masks,
    segment_grid,
)
from bcos_zoo.families import FAMILIES


SIZE = 16
# Cheap settings: enough to run every code path at 16 px.
OPTIONS = {
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 8, "stride": 4},
    "lime": {"segment": 8, "samples": 12},
    "rise": {"masks": 16},
}


@pytest.fixture(scope="module")
def models():
    vit = hf_vit(hidden=24, layers=1, heads=2, mlp=48, image=SIZE, patch=4, labels=4)
    resnet = hf_resnet("basic", labels=4, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    return {
        "vit": load_standard_classifier(vit, (0.5,) * 3, (0.5,) * 3),
        "resnet": load_standard_classifier(resnet, (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)),
        "bcos_vit": BcosViTForImageClassification.from_pretrained_standard(vit, b=2.0, bias="remove").eval(),
        "bcos_resnet": BcosResNetForImageClassification.from_pretrained_standard(resnet, b=2.0, bias="remove").eval(),
    }


CASES = [
    *[("vit", method) for method in FAMILIES["vit"].posthoc_methods],
    *[("resnet", method) for method in FAMILIES["resnet"].posthoc_methods],
    *[("bcos_vit", method) for method in FUNCTION_METHODS],
    *[("bcos_resnet", method) for method in FUNCTION_METHODS],
]


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_every_method_maps_every_image_of_every_model(models, kind, method):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    maps = posthoc_attribution(models[kind], method, **OPTIONS.get(method, {}))(images, torch.tensor([1, 3]))
    assert maps.shape == (2, SIZE, SIZE) and not maps.requires_grad
    assert bool(torch.isfinite(maps).all()) and bool((maps != 0).any())


def test_the_registry_lists_the_new_methods_for_both_standard_families():
    for family in ("vit", "resnet"):
        assert set(FUNCTION_METHODS) <= set(FAMILIES[family].posthoc_methods)
    assert "attention_rollout" not in FAMILIES["resnet"].posthoc_methods


def test_a_bcos_model_is_explained_by_its_ordinary_forward_not_its_explanation_mode(models):
    """Input x Gradient of a B-cos model is the pixels times the true gradient of its logit; at B = 2 that is not
    its own explanation (the contributions W(x) x of explanation mode), which the user compares it with."""
    model = models["bcos_vit"]
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    pixels = images.clone().requires_grad_(True)
    logits = model(pixel_values=pixels).logits.gather(1, targets[:, None]).sum()
    (true_gradient,) = torch.autograd.grad(logits, pixels)
    maps = posthoc_attribution(model, "input_x_gradient")(images, targets)
    torch.testing.assert_close(maps, (images * true_gradient).sum(1))
    contributions = model.explain(images, target=targets).contributions
    assert not torch.allclose(maps, contributions, atol=1e-4)


def test_methods_that_need_a_standard_models_layers_are_refused_for_a_bcos_model(models):
    with pytest.raises(ValueError, match="GradCAM does not apply to a B-cos model.*methods for it: gradient"):
        posthoc_attribution(models["bcos_resnet"], "gradcam")
    assert isinstance(posthoc_attribution(models["bcos_vit"], "rise").args[0], BcosClassifier)
    with pytest.raises(ValueError, match="not a Linear"):
        posthoc_attribution(nn.Linear(2, 2), "gradient")


# Known values


def linear_model(channels=3, size=8, classes=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes)).double().eval()


def images_of(n=2, size=8, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_gradient_of_a_linear_model_is_its_weights():
    model, images, targets = linear_model(), images_of(), torch.tensor([2, 0])
    weights = model[1].weight[targets].view(2, 3, 8, 8).detach()
    torch.testing.assert_close(gradient(model, images, targets, absolute=False), weights.sum(1))
    torch.testing.assert_close(gradient(model, images, targets), weights.abs().sum(1))
    torch.testing.assert_close(deeplift(model, images, targets), (images * weights).sum(1))  # from black: x w


class ReluNet(nn.Module):
    """logits = W2 relu(W1 x + b1): Guided Backprop and DeepLIFT have closed forms."""

    def __init__(self, size=8, hidden=10, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.first, self.relu, self.second = nn.Linear(3 * size * size, hidden), nn.ReLU(), nn.Linear(hidden, classes)

    def forward(self, images):
        return self.second(self.relu(self.first(images.flatten(1))))


def test_integrated_gradients_integrate_the_gradient_by_gauss_legendre_quadrature():
    """sum_k w_k x * grad f(a_k x) at the Gauss-Legendre points a_k of [0, 1] (weights w_k summing to 1)."""
    model, images, targets = ReluNet().double().eval(), images_of(), torch.tensor([0, 1])
    nodes, weights = np.polynomial.legendre.leggauss(5)
    expected = torch.zeros_like(images)
    for node, weight in zip((nodes + 1) / 2, weights / 2):
        path = (float(node) * images).requires_grad_(True)
        model(path).gather(1, targets[:, None]).sum().backward()
        expected += float(weight) * images * path.grad
    torch.testing.assert_close(integrated_gradients(model, images, targets, steps=5), expected.sum(1))


def test_guided_backprop_lets_only_positive_gradients_back_through_the_relu():
    model, images, targets = ReluNet().double().eval(), images_of(), torch.tensor([1, 2])
    active = (model.first(images.flatten(1)) > 0).double()
    backward = model.second.weight[targets].clamp(min=0) * active  # (N, hidden): positive gradient, open units
    expected = (backward @ model.first.weight).view(2, 3, 8, 8).sum(1)
    torch.testing.assert_close(guided_backprop(model, images, targets), expected.detach())
    plain = (model.second.weight[targets] * active) @ model.first.weight
    assert not torch.allclose(expected, plain.view(2, 3, 8, 8).sum(1))


def test_deeplift_attributions_add_up_to_the_gain_over_a_black_image():
    model, images, targets = ReluNet().double().eval(), images_of(), torch.tensor([0, 1])
    with torch.no_grad():
        gain = (model(images) - model(torch.zeros_like(images))).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(deeplift(model, images, targets).sum((1, 2)), gain)


def resnet_gain_and_deeplift_sums(max_pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformers ResNet (convolutions, BatchNorm, ReLU, its stem's max-pool unless taken out) in float64: the
    target logits' gain over a black image, and the sums of DeepLIFT's maps."""
    model = hf_resnet("bottleneck", labels=4).double()
    if not max_pool:
        model.resnet.embedder.pooler = nn.Identity()
    classifier = load_standard_classifier(model, (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)).double()
    images, targets = images_of(n=3, size=32), torch.tensor([0, 2, 3])
    with torch.no_grad():
        gain = (classifier(images) - classifier(torch.zeros_like(images))).gather(1, targets[:, None])[:, 0]
    return gain, deeplift(classifier, images, targets).sum((1, 2))


def test_deeplift_of_a_resnet_adds_up_through_convolutions_batchnorm_and_relus():
    gain, sums = resnet_gain_and_deeplift_sums(max_pool=False)
    torch.testing.assert_close(sums, gain)


def test_deeplift_of_a_resnet_misses_the_gain_through_its_max_pool():
    """captum's max-pooling rule is not exact where the image and the black image pick different maxima."""
    gain, sums = resnet_gain_and_deeplift_sums(max_pool=True)
    assert float(((sums - gain).abs() / gain.abs()).max()) > 0.1


class PixelSum(nn.Module):
    """logit 0: the sum of all pixels and channels; logit 1: 0."""

    def forward(self, images):
        total = images.flatten(1).sum(1)
        return torch.stack([total, torch.zeros_like(total)], dim=1)


def mean_square_sums(pixel_sums: torch.Tensor, window: int, offsets: list[int]) -> torch.Tensor:
    """Each pixel's mean, over the ``window`` x ``window`` squares at ``offsets`` (rows and columns) that cover it,
    of the pixel sum under the square: Occlusion of :class:`PixelSum`, whose logit drops by exactly that sum."""
    total, count = torch.zeros_like(pixel_sums), torch.zeros(pixel_sums.shape[1:], dtype=pixel_sums.dtype)
    for top in offsets:
        for left in offsets:
            square = (slice(top, top + window), slice(left, left + window))
            total[:, square[0], square[1]] += pixel_sums[:, square[0], square[1]].sum((1, 2))[:, None, None]
            count[square] += 1
    assert bool((count > 0).all())
    return total / count


def test_occlusion_of_a_pixel_sum_is_the_sum_under_each_square():
    images, targets = images_of(size=8), torch.zeros(2, dtype=torch.long)
    pixel_sums = images.sum(1)
    squares = pixel_sums.view(2, 2, 4, 2, 4).sum((2, 4))  # non-overlapping 4 x 4 squares
    expected = squares.repeat_interleave(4, 1).repeat_interleave(4, 2)
    torch.testing.assert_close(occlusion(PixelSum(), images, targets, window=4, stride=4), expected)
    # overlapping squares: each pixel gets the mean of the sums of the squares that cover it
    expected = mean_square_sums(pixel_sums, 4, [0, 2, 4])
    torch.testing.assert_close(occlusion(PixelSum(), images, targets, window=4, stride=2), expected)


def test_squares_whose_stride_does_not_tile_the_side_end_at_the_border():
    images, targets = images_of(size=8), torch.zeros(2, dtype=torch.long)
    expected = mean_square_sums(images.sum(1), 3, [0, 2, 4, 5])  # the last square ends at pixel 8
    torch.testing.assert_close(occlusion(PixelSum(), images, targets, window=3, stride=2), expected)


@pytest.mark.parametrize(
    ("size", "window", "offsets"), [(70, 5, [*range(0, 65, 2), 65]), (128, 9, [*range(0, 119, 4), 119])]
)
def test_the_default_squares_cover_sizes_they_do_not_tile(size, window, offsets):
    """1/14 of the side at half-square stride: 5 px at stride 2 on 70 px, 9 px at stride 4 on 128 px."""
    images, targets = images_of(size=size), torch.zeros(2, dtype=torch.long)
    expected = mean_square_sums(images.sum(1), window, offsets)
    torch.testing.assert_close(occlusion(PixelSum(), images, targets, batch_size=512), expected)


def test_an_occlusion_square_larger_than_the_image_is_refused():
    with pytest.raises(ValueError, match="squares of 9 pixels do not fit 8x8 images"):
        occlusion(PixelSum(), images_of(size=8), torch.zeros(2, dtype=torch.long), window=9)


def test_lime_of_a_pixel_sum_gives_each_segment_its_sum():
    """The logit is linear in the segments' on/off pattern (off: black), so an unregularised linear fit recovers
    each segment's sum exactly."""
    from captum._utils.models.linear_model import SkLearnLinearRegression

    images, targets = images_of(size=8), torch.zeros(2, dtype=torch.long)
    segments = segment_grid(8, 8, 4)
    assert segments.tolist()[0] == [0, 0, 0, 0, 1, 1, 1, 1] and int(segments.max()) == 3
    sums = torch.zeros(2, 4, dtype=torch.float64).index_add_(1, segments.flatten(), images.sum(1).flatten(1))
    expected = sums[:, segments]
    maps = lime(PixelSum(), images, targets, segment=4, samples=40, interpretable_model=SkLearnLinearRegression())
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)
    # the default (ridge, the lime package's kernel) is seeded: the same maps for a batch and for each image alone
    default = lime(PixelSum(), images, targets, segment=4, samples=40)
    torch.testing.assert_close(default[1:], lime(PixelSum(), images[1:], targets[1:], segment=4, samples=40))


def test_rise_is_the_probability_weighted_mean_of_its_masks():
    """RISE by its definition, mask by mask, with the masks it draws from the seed."""
    model, images, targets = ReluNet().double().eval(), images_of(), torch.tensor([2, 0])
    masks = rise_masks(10, 8, 8, cells=3, keep=0.5, generator=torch.Generator().manual_seed(4)).double()
    assert masks.shape == (10, 8, 8) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    expected = torch.zeros(2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for mask in masks:
            probabilities = model(images * mask).softmax(1).gather(1, targets[:, None])[:, 0]
            expected += probabilities[:, None, None] * mask
    maps = rise(model, images, targets, masks=10, cells=3, keep=0.5, batch_size=3, seed=4)
    torch.testing.assert_close(maps, expected / (10 * 0.5))


def test_rise_of_a_model_that_sees_one_corner_points_at_that_corner():
    """RISE(q) = E[f(x M) M(q)] / keep: every pixel carries the mean logit, the corner's pixels also the covariance
    of the mask there with the logit (the masks' cells are 4 pixels, so the far corner shares none of it)."""

    class Corner(nn.Module):
        def forward(self, images):
            total = images[:, :, :8, :8].flatten(1).sum(1)
            return torch.stack([total, torch.zeros_like(total)], dim=1)

    images = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    maps = rise(Corner(), images, torch.zeros(1, dtype=torch.long), masks=200, cells=4, score="logit")[0]
    assert float(maps[:8, :8].mean()) > 1.15 * float(maps[8:, 8:].mean())
