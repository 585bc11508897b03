"""Every fast path computes what the reference layers compute: each family, with the switches on and off, gives the
same logits, input and parameter gradients, and explanations (float64)."""

import pytest
import torch

from bcos_zoo import (
    BcosCLIPResNetConfig,
    BcosCLIPVisionConfig,
    BcosCLIPVisionModel,
    BcosConvNextConfig,
    BcosConvNextForImageClassification,
    BcosDenseNetConfig,
    BcosDenseNetForImageClassification,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosSimpleViTConfig,
    BcosSimpleViTForImageClassification,
    BcosVGGConfig,
    BcosVGGForImageClassification,
    BcosViTConfig,
    BcosViTForImageClassification,
)
from bcos_zoo.families import FAMILIES as REGISTRY
from bcos_zoo.modeling import bcos_cnn, bcos_layers, fast_paths
from bcos_zoo.modeling.fast_paths import set_fast_paths


TOWER = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=3)
TEXT_EMBEDS = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

FAMILIES = {
    "vit": lambda: BcosViTForImageClassification(BcosViTConfig(**TOWER, intermediate_size=48, num_labels=5)),
    "clip-tower": lambda: BcosCLIPVisionModel(BcosCLIPVisionConfig(**TOWER, intermediate_size=48, projection_dim=8)),
    "clip-resnet-tower": lambda: BcosCLIPVisionModel(
        BcosCLIPResNetConfig(width=8, depths=[1, 2], num_attention_heads=4, image_size=32, projection_dim=8)
    ),
    "resnet": lambda: BcosResNetForImageClassification(
        BcosResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, groups=2)
    ),
    "densenet": lambda: BcosDenseNetForImageClassification(
        BcosDenseNetConfig(num_init_features=8, growth_rate=4, block_config=[2, 1], num_labels=5)
    ),
    # the authors' B-cos v2 form: unit-norm weights, no activation (as ported by from_bcos)
    "resnet-v2": lambda: BcosResNetForImageClassification(
        BcosResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, normalize_weights=True, hidden_act=None
        )
    ),
    "vgg": lambda: BcosVGGForImageClassification(
        BcosVGGConfig(hidden_sizes=[8, 16], depths=[1, 2], head_size=12, head_kernel_size=3, num_labels=5)
    ),
    "convnext": lambda: BcosConvNextForImageClassification(
        BcosConvNextConfig(
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_labels=5,
            norm_type="batch",
            layer_scale_init_value=1.0,
            drop_path_rate=0.0,
        )
    ),
    "simple-vit": lambda: BcosSimpleViTForImageClassification(
        BcosSimpleViTConfig(**TOWER, intermediate_size=48, hidden_act="gelu", num_labels=5)
    ),
    "vitc": lambda: BcosSimpleViTForImageClassification(
        BcosSimpleViTConfig(**{**TOWER, "patch_size": 2}, conv_stem=[8, 16], intermediate_size=48, num_labels=5)
    ),
}


def test_every_registered_family_is_checked():
    """A family added to the registry needs a model here: its fast paths would otherwise go unchecked."""
    checked = {type(build()) for build in FAMILIES.values()}
    for family in REGISTRY.values():
        assert {family.classifier, family.backbone} & checked, f"add a {family.label} model to FAMILIES"


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = FAMILIES[family]().double()
    with torch.no_grad():  # a spread of weights that makes every B-cos factor matter
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and parameter.ndim > 1:
                parameter.normal_(std=parameter.shape[1] ** -0.5)
    return model


def images(batch: int = 3) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def scores(model, x: torch.Tensor) -> torch.Tensor:
    out = model(pixel_values=x)
    return out.image_embeds if isinstance(model, BcosCLIPVisionModel) else out.logits


def explain(model, x: torch.Tensor, create_graph: bool = False):
    if isinstance(model, BcosCLIPVisionModel):
        return model.explain(x, text_embeds=TEXT_EMBEDS, create_graph=create_graph)
    return model.explain(x, create_graph=create_graph)


def both(fn):
    """``fn()`` with every fast path off, then on."""
    with set_fast_paths(False):
        reference = fn()
    with set_fast_paths(True):
        fast = fn()
    return reference, fast


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inference_outputs_are_the_reference_outputs(family):
    model, x = build(family).eval(), images()

    def run():
        with torch.no_grad():
            return scores(model, x)

    close(*both(run))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_training_gradients_are_the_reference_gradients(family):
    model, x = build(family).train(), images()

    def run():
        model.zero_grad()
        pixels = x.clone().requires_grad_(True)
        out = scores(model, pixels)
        out.square().sum().backward()
        return out.detach(), pixels.grad, {name: p.grad.clone() for name, p in model.named_parameters()}

    (reference, reference_input, reference_params), (fast, fast_input, fast_params) = both(run)
    close(reference, fast)
    close(reference_input, fast_input)
    for name in reference_params:
        close(reference_params[name], fast_params[name])


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_under_autocast_outputs_are_the_reference_outputs_in_the_same_dtype(family, grad):
    """bfloat16 autocast (a float32 model): the reference path lifts the products to the factor's float32; outputs
    kept in bfloat16 would round 1,000 logits near -log(999) onto a few hundred values."""
    model, x = build(family).float().train(grad), images().float()

    def run():
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            return scores(model, x).detach()

    reference, fast = both(run)
    assert fast.dtype == reference.dtype
    torch.testing.assert_close(fast, reference, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_explanations_are_the_reference_explanations(family):
    model, x = build(family).eval(), images()
    reference, fast = both(lambda: explain(model, x))
    close(reference.dynamic_weights, fast.dynamic_weights)
    close(reference.contributions, fast.contributions)
    close(reference.bias, fast.bias)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_differentiable_explanations_train_as_the_reference_does(family):
    model, x = build(family).eval(), images(2)

    def run():
        model.zero_grad()
        explain(model, x, create_graph=True).contributions.square().sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference, fast = both(run)
    assert reference.keys() == fast.keys() and reference
    for name in reference:
        close(reference[name], fast[name])


@pytest.mark.subprocess
def test_the_environment_switches_every_fast_path_off():
    import subprocess
    import sys

    code = "from bcos_zoo.modeling import fast_paths; print(sorted(fast_paths._SWITCHES.items()))"
    for value, expected in (("0", False), ("1", True)):
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"BCOS_FAST_PATHS": value}, check=True
        )
        assert completed.stdout.strip() == str(sorted(dict.fromkeys(fast_paths._SWITCHES, expected).items()))


def test_an_unknown_fast_path_is_refused():
    with pytest.raises(ValueError, match="Unknown fast paths"), set_fast_paths(fused=True):
        pass


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_fast_paths_run_when_switched_on_and_only_then(family, monkeypatch):
    model, x = build(family).eval(), images()
    calls = []
    for module, name in [
        (bcos_layers, "square_linear"),
        (bcos_layers, "square_conv2d"),
        (bcos_cnn, "square_conv_norm_act"),
    ]:
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))
    counts = []
    for enabled in (False, True):
        calls.clear()
        with set_fast_paths(enabled), torch.no_grad():
            scores(model, x)
        counts.append(len(calls))
    assert counts[0] == 0 and counts[1] > 0


@pytest.mark.parametrize("family", ["resnet", "densenet", "resnet-v2", "vgg"])
@pytest.mark.parametrize("use_bias", [False, True], ids=["uncentered", "centered"])
def test_the_folded_batchnorm_is_the_reference_with_trained_statistics(family, use_bias):
    """Calibrated running statistics and affine BatchNorm parameters, so that the fold has something to fold."""
    torch.manual_seed(0)
    model = FAMILIES[family]()
    model.config.use_bias = use_bias
    model = type(model)(model.config).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, bcos_cnn.BcosBatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.running_var.uniform_(0.5, 2.0)
                if use_bias:
                    module.bias.normal_()
                    module.running_mean.normal_()
    model.eval()

    def run():
        with torch.no_grad():
            return model(pixel_values=images()).logits

    close(*both(run))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_jit_trace_with_autograd_on_records_a_graph_that_passes_its_own_check(family):
    """``torch.jit.trace`` checks its graph against one recorded without autograd, where the fast paths would take
    their in-place form: while it records, they stand aside (``torch.export``, which keeps the range check, is the
    way to capture a model; ``tests/test_conformance_export.py``)."""
    model, x = build(family).eval(), images()
    traced = torch.jit.trace(model, (x,), strict=False)
    other = images(batch=2)
    close(scores(model, other), next(iter(traced(other).values())))
