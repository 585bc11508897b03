"""Explanations of B-cos CNNs are exact: contributions + logit bias == logit, and the dynamic weights are the linear
map the model applies at the input. Each detach is shown to be needed."""

import pytest
import torch
from cnn_sources import (
    hf_resnet,
    single_thread,  # noqa: F401
    timm_cnn,
    torchvision_densenet121,
)

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification
from bcos_zoo.modeling.bcos_cnn import BcosBatchNorm2d
from bcos_zoo.modeling.bcos_layers import BcosConv2d


SOURCES = {
    "hf_resnet_basic": (lambda: hf_resnet("basic"), BcosResNetForImageClassification),
    "timm_resnet50": (lambda: timm_cnn("resnet50"), BcosResNetForImageClassification),
    "timm_resnext": (lambda: timm_cnn("resnext50_32x4d"), BcosResNetForImageClassification),
    "torchvision_densenet121": (torchvision_densenet121, BcosDenseNetForImageClassification),
}


# The methods that compute the factors explanation mode detaches: the B-cos convolution's, and the one of a B-cos
# convolution with BatchNorm folded in (evaluation mode).
FACTORS = ((BcosConv2d, "dynamic"),)


def bcosified(name: str, b: float, **overrides):
    build, cls = SOURCES[name]
    return cls.from_pretrained_standard(build(), b=b, bias="remove", **overrides).double().eval()


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(batch, 3, size, size, generator=generator, dtype=torch.float64)


def completeness_error(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N,) |contributions + logit bias - logit| relative to the part of the logit the pixels should explain."""
    explanation = model.explain(pixel_values)
    logit_bias = model.config.resolved_logit_bias
    explained = explanation.target_logits - logit_bias
    assert explained.abs().min() > 0, "a logit equal to the logit bias tests nothing"
    return (explanation.contributions.sum(dim=(1, 2)) + logit_bias - explanation.target_logits).abs() / explained.abs()


def linear_map_error(model, pixel_values: torch.Tensor, step: float = 1e-6) -> float:
    """How far ``dynamic_weights`` are from the map the model applies at ``x`` with its dynamic factors held fixed.

    The factors every B-cos convolution computes at ``x`` are recorded, then replayed while the input moves along a
    random direction ``d``; the central difference of the logit must equal ``W(x) . [d, -d]`` (``[x, 1 - x]``
    encoding). This is independent of autograd's treatment of the factors.
    """
    explanation = model.explain(pixel_values)
    direction = torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(3), dtype=pixel_values.dtype)
    predicted = (explanation.dynamic_weights * torch.cat([direction, -direction], dim=1)).sum(dim=(1, 2, 3))

    recorded, replay = {}, {"on": False}
    originals = {cls: getattr(cls, name) for cls, name in FACTORS}

    def recording(method):
        def factor(self, *args):
            if not replay["on"]:
                recorded[id(self)] = method(self, *args).detach()
            return recorded[id(self)]

        return factor

    for cls, name in FACTORS:
        setattr(cls, name, recording(originals[cls]))
    try:
        with torch.no_grad(), model.explanation_mode():
            model(pixel_values=pixel_values)
            replay["on"] = True
            index = explanation.target[:, None]
            up = model(pixel_values=pixel_values + step * direction).logits.gather(1, index).squeeze(1)
            down = model(pixel_values=pixel_values - step * direction).logits.gather(1, index).squeeze(1)
    finally:
        for cls, name in FACTORS:
            setattr(cls, name, originals[cls])
    measured = (up - down) / (2 * step)
    return ((predicted - measured).abs() / measured.abs()).max().item()


@pytest.mark.parametrize("b", [1.0, 2.0])
@pytest.mark.parametrize("name", list(SOURCES))
def test_contributions_sum_to_logit_minus_logit_bias(name, b):
    model = bcosified(name, b)
    for batch in (1, 2):
        assert completeness_error(model, images(batch)).max() <= 1e-6


@pytest.mark.parametrize("name", list(SOURCES))
def test_dynamic_weights_are_the_linear_map_applied_at_the_input(name):
    model = bcosified(name, 2.0, logit_bias=0.0)  # logits of the B-cos part alone: full float64 resolution
    assert linear_map_error(model, images()) <= 1e-5


def test_removing_the_convolution_detach_breaks_the_explanation(monkeypatch):
    """Without the detach, autograd differentiates the B-cos factor too: the dynamic weights stop being the map the
    model applies. Completeness breaks as well here, because the patch norms' eps makes the network only nearly
    homogeneous when activations are small (were it exactly homogeneous, Euler's theorem would keep the sum, and
    only the linear-map check would see the missing detach)."""
    model = bcosified("timm_resnet50", 2.0, logit_bias=0.0)
    x = images()
    assert linear_map_error(model, x) <= 1e-5 and completeness_error(model, x).max() <= 1e-6
    monkeypatch.setattr(BcosConv2d, "dynamic", lambda self, tensor: tensor)
    assert linear_map_error(model, x) > 1e-2
    assert completeness_error(model, x).max() > 1e-3


@pytest.mark.parametrize("name", ["timm_resnet50", "torchvision_densenet121"])
def test_batch_statistics_in_training_mode_keep_explanations_exact_per_image(name):
    model = bcosified(name, 2.0).train()
    x = images(batch=2)
    norms = [m for m in model.modules() if isinstance(m, BcosBatchNorm2d)]
    before = [int(norm.num_batches_tracked) for norm in norms]
    assert completeness_error(model, x).max() <= 1e-6
    # every BatchNorm used (and tracked) the statistics of this one batch: one forward pass, one more batch each
    assert norms and [int(norm.num_batches_tracked) for norm in norms] == [count + 1 for count in before]


def test_removing_the_batchnorm_detach_breaks_completeness(monkeypatch):
    """With the batch variance live, each image's logit depends on the other image: its gradient is no longer its own
    linear map, and the contributions stop adding up."""
    model = bcosified("timm_resnet50", 2.0).train()
    monkeypatch.setattr(BcosBatchNorm2d, "dynamic", lambda self, tensor: tensor)
    assert completeness_error(model, images(batch=2)).max() > 1e-3


def test_target_selects_the_explained_logit():
    model = bcosified("hf_resnet_basic", 2.0)
    x = images(batch=2)
    explanation = model.explain(x, target=torch.tensor([3, 1]))
    assert explanation.target.tolist() == [3, 1]
    assert explanation.dynamic_weights.shape == (2, 6, 32, 32)
    assert explanation.rgba.shape == (2, 32, 32, 4)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert torch.allclose(explanation.logits, logits, rtol=1e-10, atol=0)


def test_differentiable_explanations_train_the_convolutions():
    model = bcosified("hf_resnet_basic", 2.0).train()
    explanation = model.explain(images(batch=2), create_graph=True)
    assert explanation.contributions.requires_grad
    explanation.contributions.clamp_min(0).sum().backward()
    stem = model.bcos_resnet.embedder.embedder.convolution.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert completeness_error(model, images(batch=2)).max() <= 1e-6
