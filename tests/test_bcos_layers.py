"""The reference B-cos layers: the formulas the papers define, and explanation mode changes gradients, never values."""

import pytest
import torch
import torch.nn.functional as F

from bcos_zoo.modeling.bcos_cnn import BcosBatchNorm2d
from bcos_zoo.modeling.bcos_layers import (
    NORM_EPS,
    BcosConv2d,
    BcosLayerNorm,
    BcosLinear,
    GatedActivation,
    encode_inverse,
    explanation_mode,
)
from bcos_zoo.modeling.configuration_bcos_vit import BcosViTConfig
from bcos_zoo.modeling.modeling_bcos_vit import BcosSelfAttention


def bcos_unit(b: float, bias: bool = False) -> BcosLinear:
    torch.manual_seed(0)
    unit = BcosLinear(7, 5, bias=bias, b=b).double()
    torch.nn.init.normal_(unit.weight)
    if bias:
        torch.nn.init.normal_(unit.bias)
    return unit


def guarded(t: torch.Tensor, dim) -> torch.Tensor:
    """The documented norm guard, computed independently: sqrt(sum t^2 + NORM_EPS)."""
    return (t.pow(2).sum(dim=dim) + NORM_EPS).sqrt()


def test_encoding_is_x_and_its_inverse():
    x = torch.rand(2, 3, 4, 4)
    encoded = encode_inverse(x)
    assert encoded.shape == (2, 6, 4, 4)
    assert torch.equal(encoded[:, :3], x) and torch.allclose(encoded[:, :3] + encoded[:, 3:], torch.ones_like(x))


def test_bcos_unit_at_b1_is_the_linear_map():
    unit = bcos_unit(1.0, bias=True)
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(unit(x), F.linear(x, unit.weight, unit.bias))


@pytest.mark.parametrize("b", [1.5, 2.0, 3.0])
def test_bcos_unit_scales_by_the_cosine_to_the_power_b_minus_1(b):
    unit = bcos_unit(b)
    x = torch.randn(40, 7, dtype=torch.float64)
    linear = x @ unit.weight.T
    cos = linear / (guarded(x, 1)[:, None] * guarded(unit.weight, 1))
    assert torch.allclose(unit(x), linear * cos.abs().pow(b - 1), rtol=1e-12)


def test_the_norm_guard_is_far_below_float32_round_off_for_real_inputs():
    unit = bcos_unit(2.0)
    x = torch.randn(40, 7, dtype=torch.float64)
    linear = x @ unit.weight.T
    unguarded = linear * linear.abs() / (x.norm(dim=1, keepdim=True) * unit.weight.norm(dim=1))
    assert torch.allclose(unit(x), unguarded, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: BcosLinear(7, 5, bias=False, b=2.0), lambda: BcosConv2d(3, 4, 3, padding=1)])
def test_an_all_zero_input_gives_zero_output_and_finite_gradients(make):
    unit = make()
    torch.nn.init.normal_(unit.weight)
    x = torch.zeros(2, 7) if isinstance(unit, BcosLinear) else torch.zeros(2, 3, 5, 5)
    x.requires_grad_(True)
    out = unit(x)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_a_nearly_orthogonal_input_gives_finite_gradients_below_b_2_in_every_dtype(dtype):
    """The power |cos|^(B-1) has an infinite slope at 0: the clamp that keeps it finite must be a number the dtype
    holds (1e-12 is 0 in float16)."""
    unit = BcosLinear(2, 1, bias=False, b=1.25).to(dtype)
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[1.0, 0.0]]))
    x = torch.tensor([[1e-7, 1.0]], dtype=dtype, requires_grad=True)
    unit(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(unit.weight.grad).all()


@pytest.mark.parametrize("b", [1.5, 2.0])
def test_bcos_unit_dynamic_weight_is_the_cosine_scaled_weight(b):
    """W(x) = diag(|cos(x, w)|^(B-1)) W. Completeness alone cannot see this detach: the unit is 1-homogeneous."""
    unit = bcos_unit(b)
    x = torch.randn(7, dtype=torch.float64)
    cos = (unit.weight @ x) / (guarded(x, 0) * guarded(unit.weight, 1))
    expected = cos.abs().pow(b - 1)[:, None] * unit.weight
    with explanation_mode(unit):
        explained = torch.autograd.functional.jacobian(unit, x)
    raw = torch.autograd.functional.jacobian(unit, x)
    assert torch.allclose(explained, expected, rtol=1e-12)
    assert not torch.allclose(raw, expected, rtol=1e-3)


@pytest.mark.parametrize("groups", [1, 2])
def test_bcos_convolution_dynamic_weight_is_the_patch_cosine_scaled_kernel(groups):
    """At one output position, W(x) is the kernel scaled by |cos(patch, w_o)| (B = 2), zero outside the window."""
    torch.manual_seed(0)
    conv = BcosConv2d(4, 6, 3, stride=2, padding=1, groups=groups).double()
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    row, col, channel = 1, 2, 5  # output position and channel
    group = channel // (6 // groups)
    inputs = slice(group * (4 // groups), (group + 1) * (4 // groups))
    padded = F.pad(x, (1, 1, 1, 1))[0, inputs, 2 * row : 2 * row + 3, 2 * col : 2 * col + 3]
    cos = (conv.weight[channel] * padded).sum() / (
        guarded(padded, (0, 1, 2)) * guarded(conv.weight[channel], (0, 1, 2))
    )
    expected = torch.zeros_like(F.pad(x, (1, 1, 1, 1)))
    expected[0, inputs, 2 * row : 2 * row + 3, 2 * col : 2 * col + 3] = cos.abs() * conv.weight[channel]
    with explanation_mode(conv):
        (weights,) = torch.autograd.grad(conv(x.requires_grad_(True))[0, channel, row, col], x)
    assert torch.allclose(weights, expected[:, :, 1:-1, 1:-1], rtol=1e-12, atol=1e-14)


def layer_norm(bias: bool) -> BcosLayerNorm:
    norm = BcosLayerNorm(8, eps=1e-6, bias=bias).double()
    torch.nn.init.normal_(norm.weight)
    if bias:
        torch.nn.init.normal_(norm.bias)
    return norm


def attention() -> BcosSelfAttention:
    torch.manual_seed(0)
    config = BcosViTConfig(hidden_size=8, num_attention_heads=2, use_bias=True, attn_implementation="sdpa")
    module = BcosSelfAttention(config).double()
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return module


def batch_norm(centered: bool) -> BcosBatchNorm2d:
    torch.manual_seed(0)
    norm = BcosBatchNorm2d(8, centered=centered).double().train()
    torch.nn.init.normal_(norm.weight)
    return norm


@pytest.mark.parametrize(
    "make",
    [
        lambda: bcos_unit(2.0, bias=True),
        lambda: layer_norm(bias=True),
        lambda: GatedActivation("gelu").double(),
        lambda: GatedActivation("gelu_tanh").double(),
        lambda: GatedActivation("quick_gelu").double(),
        lambda: attention(),
        lambda: batch_norm(centered=True),
        lambda: batch_norm(centered=False),
    ],
    ids=["bcos-unit", "layernorm", "gelu", "gelu-tanh", "quick-gelu", "attention", "batchnorm", "uncentered-batchnorm"],
)
def test_explanation_mode_keeps_the_forward_values(make):
    module = make()
    width = module.in_features if isinstance(module, BcosLinear) else 8
    x = (
        torch.randn(2, 8, 3, 3, dtype=torch.float64)
        if isinstance(module, BcosBatchNorm2d)
        else torch.randn(2, 3, width)
    )

    def output(inputs):
        out = module(inputs.to(torch.float64))
        return out[0] if isinstance(out, tuple) else out  # attention returns (output, attention probabilities)

    expected = output(x)
    with explanation_mode(module):
        assert torch.allclose(output(x), expected, rtol=1e-12, atol=1e-12)


def test_layer_norm_matches_torch():
    norm = layer_norm(bias=True)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    reference = F.layer_norm(x, (8,), norm.weight, norm.bias, 1e-6)
    assert torch.allclose(norm(x), reference, rtol=1e-12)
    with explanation_mode(norm):
        assert torch.allclose(norm(x), reference, rtol=1e-12)


def test_layer_norm_explanation_holds_the_standard_deviation_fixed():
    norm = layer_norm(bias=False)
    x = torch.randn(8, dtype=torch.float64)
    centering = torch.eye(8, dtype=torch.float64) - 1 / 8
    expected = norm.weight[:, None] * centering / (x.var(unbiased=False) + 1e-6).sqrt()
    with explanation_mode(norm):
        assert torch.allclose(torch.autograd.functional.jacobian(norm, x), expected, rtol=1e-12)


def test_gelu_variants_match_torch():
    x = torch.randn(100, dtype=torch.float64)
    for name, reference in [("gelu", F.gelu(x)), ("gelu_new", F.gelu(x, approximate="tanh"))]:
        activation = GatedActivation(name)
        assert torch.allclose(activation(x), reference, rtol=1e-12)
        with explanation_mode(activation):
            assert torch.allclose(activation(x), reference, rtol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "quick_gelu"])
def test_explained_activation_is_its_gate_times_the_input_finite_at_zero(name):
    activation = GatedActivation(name).double()
    x = torch.tensor([-30.0, -3.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 3.0, 30.0], dtype=torch.float64, requires_grad=True)
    with explanation_mode(activation):
        out = activation(x)
        (gate,) = torch.autograd.grad(out.sum(), x)  # d(x * g(x))/dx with g held fixed is g(x)
    assert torch.equal(gate[3:5], torch.full((2,), 0.5, dtype=torch.float64))
    if name == "gelu":
        assert torch.allclose(gate, torch.special.ndtr(x.detach()), atol=1e-12)
    assert torch.allclose(out, activation.activation(x), rtol=1e-12, atol=1e-300)


def test_explanation_mode_restores_the_previous_state():
    module = layer_norm(bias=False)
    with explanation_mode(module):
        assert module.detach_dynamic
    assert not module.detach_dynamic


def test_explanation_modes_closed_out_of_order_each_restore_their_own_model():
    """A generator that explains one model may finish while its caller explains another."""
    first, second = layer_norm(bias=False), layer_norm(bias=False)
    outer, inner = explanation_mode(first), explanation_mode(second)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    assert not first.detach_dynamic and second.detach_dynamic
    inner.__exit__(None, None, None)
    assert not first.detach_dynamic and not second.detach_dynamic


def test_one_explanation_mode_entered_twice_nests():
    module = layer_norm(bias=False)
    mode = explanation_mode(module)
    with mode:
        with mode:
            assert module.detach_dynamic
        assert module.detach_dynamic
    assert not module.detach_dynamic


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="Unsupported activation 'relu'"):
        GatedActivation("relu")
