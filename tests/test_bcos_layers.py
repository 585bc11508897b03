"""The B-cos primitives: exact formulas, and explanation mode changes gradients, never values."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bcos_zoo.modeling import bcos_layers
from bcos_zoo.modeling.bcos_layers import (
    BcosLayerNorm,
    BcosLinear,
    BcosPatchEmbedding,
    BcosSelfAttention,
    GatedActivation,
    encode_inverse,
    explanation_mode,
    linear,
)


def bcos_unit(b: float, bias: bool = False) -> BcosLinear:
    torch.manual_seed(0)
    unit = BcosLinear(7, 5, bias=bias, b=b).double()
    torch.nn.init.normal_(unit.weight)
    if bias:
        torch.nn.init.normal_(unit.bias)
    return unit


def test_encoding_is_x_and_its_inverse():
    x = torch.rand(2, 3, 4, 4)
    encoded = encode_inverse(x)
    assert encoded.shape == (2, 6, 4, 4)
    assert torch.equal(encoded[:, :3], x) and torch.allclose(encoded[:, :3] + encoded[:, 3:], torch.ones_like(x))


def test_bcos_unit_at_b1_is_the_linear_map():
    unit = bcos_unit(1.0, bias=True)
    x = torch.randn(4, 7, dtype=torch.float64)
    assert torch.equal(unit(x), F.linear(x, unit.weight, unit.bias))


@pytest.mark.parametrize("batch", [2, 40], ids=["few-rows", "many-rows"])
@pytest.mark.parametrize("b", [1.5, 2.0, 3.0])
def test_bcos_unit_scales_by_the_cosine_to_the_power_b_minus_1(b, batch):
    unit = bcos_unit(b)
    x = torch.randn(batch, 7, dtype=torch.float64)
    linear = x @ unit.weight.T
    cos = linear / (x.norm(dim=1, keepdim=True) * unit.weight.norm(dim=1))
    assert torch.allclose(unit(x), linear * cos.abs().pow(b - 1), rtol=1e-12)


@pytest.mark.parametrize("b", [1.5, 2.0])
def test_bcos_unit_dynamic_weight_is_the_cosine_scaled_weight(b):
    """W(x) = diag(|cos(x, w)|^(B-1)) W. Completeness alone cannot see this detach: the unit is 1-homogeneous."""
    unit = bcos_unit(b)
    x = torch.randn(7, dtype=torch.float64)
    cos = (unit.weight @ x) / (x.norm() * unit.weight.norm(dim=1))
    expected = cos.abs().pow(b - 1)[:, None] * unit.weight
    with explanation_mode(unit):
        explained = torch.autograd.functional.jacobian(unit, x)
    raw = torch.autograd.functional.jacobian(unit, x)
    assert torch.allclose(explained, expected, rtol=1e-12)
    assert not torch.allclose(raw, expected, rtol=1e-3)


def layer_norm(bias: bool) -> BcosLayerNorm:
    norm = BcosLayerNorm(8, eps=1e-6, bias=bias).double()
    torch.nn.init.normal_(norm.weight)
    if bias:
        torch.nn.init.normal_(norm.bias)
    return norm


def attention() -> BcosSelfAttention:
    torch.manual_seed(0)
    module = BcosSelfAttention(8, num_heads=2, qk_bias=True, bias=True, b=2.0).double()
    for param in module.parameters():
        torch.nn.init.normal_(param, std=0.3)
    return module


@pytest.mark.parametrize(
    "make",
    [
        lambda: bcos_unit(2.0, bias=True),
        lambda: layer_norm(bias=True),
        lambda: GatedActivation("gelu").double(),
        lambda: GatedActivation("gelu_tanh").double(),
        lambda: GatedActivation("quick_gelu").double(),
        lambda: attention(),
    ],
    ids=["bcos-unit", "layernorm", "gelu", "gelu-tanh", "quick-gelu", "attention"],
)
def test_explanation_mode_keeps_the_forward_values(make):
    module = make()
    x = torch.randn(2, 3, module.in_features if isinstance(module, BcosLinear) else 8, dtype=torch.float64)

    def output(inputs):
        out = module(inputs)
        return out[0] if isinstance(out, tuple) else out  # attention returns (output, attention probabilities)

    expected = output(x)
    with explanation_mode(module):
        assert torch.allclose(output(x), expected, rtol=1e-12, atol=1e-12)


def test_layer_norm_matches_torch():
    norm = layer_norm(bias=True)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    reference = F.layer_norm(x, (8,), norm.weight, norm.bias, 1e-6)
    with explanation_mode(norm):
        assert torch.allclose(norm(x), reference, rtol=1e-12)


def test_gelu_variants_match_torch():
    x = torch.randn(100, dtype=torch.float64)
    with explanation_mode(GatedActivation("gelu")) as gelu:
        assert torch.allclose(gelu(x), F.gelu(x), rtol=1e-12)
    with explanation_mode(GatedActivation("gelu_new")) as gelu_tanh:
        assert torch.allclose(gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "quick_gelu"])
def test_gate_is_finite_at_zero_and_matches_the_activation(name):
    activation = GatedActivation(name).double()
    x = torch.tensor([-30.0, -3.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 3.0, 30.0], dtype=torch.float64)
    gate = activation.gate(x)
    assert torch.equal(gate[3:5], torch.full((2,), 0.5, dtype=torch.float64))
    assert torch.isfinite(gate).all() and (gate >= 0).all() and (gate <= 1).all()
    if name == "gelu":
        assert torch.allclose(gate, torch.special.ndtr(x), atol=1e-12)
    with explanation_mode(activation):
        assert torch.allclose(activation(x), activation.activation(x), rtol=1e-12, atol=1e-300)


def test_explanation_mode_restores_the_previous_state():
    module = layer_norm(bias=False)
    with explanation_mode(module):
        assert module.detach_dynamic
    assert not module.detach_dynamic


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="Unsupported activation 'relu'"):
        GatedActivation("relu")


@pytest.mark.parametrize("widths", [(7, 4), (4, 7), (5, 5)], ids=["narrower-output", "wider-output", "square"])
def test_the_written_out_b2_backward_matches_autograd(widths):
    """Training at B = 2 takes a hand-written backward; it must be the gradient of the unit (gradcheck)."""
    from bcos_zoo.modeling.bcos_layers import _BcosSquareLinear

    torch.manual_seed(0)
    in_features, out_features = widths
    x = torch.randn(2, 5, in_features, dtype=torch.float64, requires_grad=True)
    w = torch.randn(out_features, in_features, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BcosSquareLinear.apply, (x, w, 1e-12))
    unit = BcosLinear(in_features, out_features, bias=True, b=2.0).double()
    torch.nn.init.normal_(unit.weight)
    torch.nn.init.normal_(unit.bias)
    inputs = torch.randn(3, unit.in_features, dtype=torch.float64, requires_grad=True)
    unit(inputs).square().sum().backward()
    fast = (inputs.grad.clone(), unit.weight.grad.clone(), unit.bias.grad.clone())
    inputs.grad = None
    unit.zero_grad()
    linear = inputs @ unit.weight.T
    norms = inputs.norm(dim=-1, keepdim=True) * unit.weight.norm(dim=-1)
    (linear * linear.abs() / norms + unit.bias).square().sum().backward()
    for a, b in zip(fast, (inputs.grad, unit.weight.grad, unit.bias.grad)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_inference_weight_cache_follows_every_weight_change():
    unit = bcos_unit(2.0).eval()
    x = torch.randn(4, 7, dtype=torch.float64)

    def reference():
        linear = x @ unit.weight.T
        return (linear * linear.abs() / (x.norm(dim=-1, keepdim=True) * unit.weight.norm(dim=-1))).detach()

    with torch.no_grad():
        assert torch.allclose(unit(x), reference(), rtol=1e-12)
        assert "inverse_norms" in unit._derived_tensors
        unit.weight.mul_(-2.0)  # an in-place update, as an optimiser step makes
        assert torch.allclose(unit(x), reference(), rtol=1e-12)
    unit.load_state_dict({"weight": torch.randn(5, 7, dtype=torch.float64)})
    with torch.no_grad():
        assert torch.allclose(unit(x), reference(), rtol=1e-12)
    unit.train()
    assert not hasattr(unit, "_derived_tensors")


def test_an_explanation_after_inference_mode_rebuilds_the_cached_weight():
    torch.manual_seed(0)
    unit = bcos_unit(2.0).eval()
    x = torch.rand(3, 7, dtype=torch.float64)
    with torch.inference_mode():
        expected = unit(x)
    inputs = x.clone().requires_grad_(True)
    with explanation_mode(unit, input_gradient_only=True):
        out = unit(inputs)
        (gradient,) = torch.autograd.grad(out.sum(), inputs)
    assert torch.allclose(out.detach(), expected, rtol=1e-12)
    # the dynamic linear map: out = W(x) x with W(x) = |cos| w, so the gradient times the input sums to the output
    assert torch.allclose((gradient * x).sum(), expected.sum(), rtol=1e-10)


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.float64, dict(rtol=1e-10, atol=1e-12)), (torch.float32, dict(rtol=1e-4, atol=1e-5))],
    ids=["float64", "float32"],
)
def test_patch_embedding_of_the_pixels_equals_that_of_the_encoded_image(b, bias, dtype, tolerance):
    torch.manual_seed(0)
    embedding = BcosPatchEmbedding(num_channels=3, patch_size=4, hidden_size=10, bias=bias, b=b).to(dtype)
    torch.nn.init.normal_(embedding.projection.weight)
    if bias:
        torch.nn.init.normal_(embedding.projection.bias)
    x = torch.rand(2, 3, 8, 12, dtype=dtype, requires_grad=True)
    parameters = (embedding.projection.weight, x)
    expected = embedding(encode_inverse(x))
    expected_grads = torch.autograd.grad(expected.square().sum(), parameters)
    from_pixels = embedding.forward_pixels(x)
    grads = torch.autograd.grad(from_pixels.square().sum(), parameters)
    assert torch.allclose(from_pixels, expected, **tolerance)
    for grad, expected_grad in zip(grads, expected_grads):  # the weight's, and the pixels'
        assert torch.allclose(grad, expected_grad, **tolerance)
    (weight_only,) = torch.autograd.grad(embedding.forward_pixels(x.detach()).square().sum(), parameters[0])
    assert torch.allclose(weight_only, expected_grads[0], **tolerance)
    x = x.detach()
    embedding.eval()
    with torch.no_grad():
        for _ in range(2):  # the second call reads the kept pixel weights
            assert torch.allclose(embedding.forward_pixels(x), expected, **tolerance)
        embedding.projection.weight.mul_(-1.5)
        assert torch.allclose(embedding.forward_pixels(x), embedding(encode_inverse(x)), **tolerance)


def test_attention_without_autograd_follows_every_change_of_q_k_and_v():
    module = attention().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64)

    def fresh():
        with torch.enable_grad():  # the recorded path fuses the projections anew on every call
            return module(x)[0].detach()

    for projection in (module.q_proj, module.k_proj, module.v_proj):
        with torch.no_grad():
            assert torch.allclose(module(x)[0], fresh(), rtol=1e-12)
            projection.weight.mul_(-1.5)
            projection.bias.add_(0.25)
            assert torch.allclose(module(x)[0], fresh(), rtol=1e-12)
        with torch.no_grad(), explanation_mode(module):
            assert torch.allclose(module(x)[0], fresh(), rtol=1e-12)


@pytest.mark.parametrize(
    "make",
    [lambda: bcos_unit(2.0, bias=True), lambda: BcosLinear(5, 9, bias=False, b=2.0).double(), lambda: layer_norm(True)],
    ids=["narrower-output-unit", "wider-output-unit", "layernorm"],
)
def test_input_only_explanation_path_has_the_gradient_of_the_general_one(make):
    """Explanations that differentiate the input alone take shortcuts; the map they read off must not change."""
    module = make()
    torch.nn.init.normal_(module.weight)
    width = module.in_features if isinstance(module, BcosLinear) else 8
    x = torch.randn(3, 4, width, dtype=torch.float64)
    upstream = torch.randn_like(module(x))
    results = []
    for input_only in (False, True):
        inputs = x.clone().requires_grad_(True)
        with explanation_mode(module, input_gradient_only=input_only):
            out = module(inputs)
            (gradient,) = torch.autograd.grad((out * upstream).sum(), inputs)
        results.append((out.detach(), gradient))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "quick_gelu"])
def test_activation_in_place_without_autograd_gives_the_same_values(name):
    activation = GatedActivation(name).double()
    x = torch.randn(4, 9, dtype=torch.float64)
    expected = activation(x)
    temporary = x.clone()
    with torch.no_grad():
        out = activation(temporary, inplace=True)
    assert torch.allclose(out, expected, rtol=1e-12) and out.data_ptr() == temporary.data_ptr()
    recorded = x.clone().requires_grad_(True)
    assert torch.allclose(activation(recorded * 1, inplace=True), expected, rtol=1e-12)  # recorded: never in place
    assert torch.equal(recorded.detach(), x)


@pytest.mark.parametrize("block_elements", [1, 10, 1 << 18], ids=["row-by-row", "uneven-blocks", "one-block"])
def test_the_blockwise_b2_passes_cover_every_row_once(monkeypatch, block_elements):
    """The signed square and the backward's sums go a block of rows at a time; blocks that do not divide the rows,
    single rows and a transposed (non-contiguous) input all give the whole-tensor formulas."""
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    y = torch.randn(3, 7, 4, dtype=torch.float64)
    rows = torch.rand(3, 7, 1, dtype=torch.float64) + 0.5
    columns = torch.rand(4, dtype=torch.float64) + 0.5
    assert torch.equal(bcos_layers.signed_square_(y.clone()), y * y.abs())
    expected = y * y.abs() * rows * columns
    assert torch.allclose(bcos_layers.signed_square_(y.clone(), rows, columns), expected, rtol=1e-15)
    assert torch.allclose(bcos_layers.signed_square_(y.clone(), rows[:1], columns), y * y.abs() * rows[:1] * columns)
    transposed = y.clone().transpose(0, 1)
    assert torch.equal(bcos_layers.signed_square_(transposed), y.transpose(0, 1) * y.transpose(0, 1).abs())
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bcos_layers._BcosSquareLinear.apply, (x, w, 1e-12))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("widths", [(3, 5), (5, 3)], ids=["wider-inside", "narrower-inside"])
def test_the_mlp_trained_as_one_function_has_the_gradient_of_its_two_units(monkeypatch, activation, widths):
    """In training a B = 2 MLP without biases is one Function whose backward crosses both units a block of rows at a
    time: its gradient is that of the composition (gradcheck) and equals what the units give one by one."""
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", 12)  # several blocks, the last one partial
    torch.manual_seed(0)
    hidden, inner = widths
    x = torch.randn(2, 5, hidden, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(inner, hidden, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(hidden, inner, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bcos_layers._BcosSquareMLP.apply, (x, w1, w2, 1e-12, activation))

    mlp = bcos_layers.BcosMLP(hidden, inner, activation, bias=False, b=2.0).double()
    with torch.no_grad():
        mlp.fc1.weight.copy_(w1)
        mlp.fc2.weight.copy_(w2)
    upstream = torch.randn(2, 5, hidden, dtype=torch.float64)
    assert mlp._trains_as_one(x)
    together = mlp(x)
    together_grads = torch.autograd.grad(together, (x, mlp.fc1.weight, mlp.fc2.weight), upstream)
    mlp.fc1.register_full_backward_pre_hook(lambda *args: None)  # a hook on a unit: the units run one by one
    assert not mlp._trains_as_one(x)
    apart = mlp(x)
    apart_grads = torch.autograd.grad(apart, (x, mlp.fc1.weight, mlp.fc2.weight), upstream)
    assert torch.allclose(together, apart, rtol=1e-13)
    for grad, expected in zip(together_grads, apart_grads):
        assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.bfloat16, 0.02), (torch.float16, 0.003), (torch.float32, 1e-5)]
)
def test_the_mlp_function_in_lower_precision_is_the_float64_gradient_to_that_precision(monkeypatch, dtype, tolerance):
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", 512)  # the blockwise passes cross many blocks
    torch.manual_seed(0)
    x = torch.randn(4, 50, 32, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(128, 32, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(32, 128, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 50, 32, dtype=torch.float64)
    expected = torch.autograd.grad(bcos_layers._BcosSquareMLP.apply(x, w1, w2, 1e-12, "gelu"), (x, w1, w2), upstream)
    half = [t.detach().to(dtype).requires_grad_(True) for t in (x, w1, w2)]
    out = bcos_layers._BcosSquareMLP.apply(*half, 1e-12, "gelu")
    grads = torch.autograd.grad(out, half, upstream.to(dtype))
    for grad, reference in zip(grads, expected):
        assert grad.dtype == dtype
        assert (grad.double() - reference).norm() / reference.norm() < tolerance


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
@pytest.mark.parametrize("input_gradient_only", [True, False], ids=["input-gradient", "differentiable"])
def test_mlp_in_explanation_mode_is_the_unit_and_gate_detached_separately(monkeypatch, activation, input_gradient_only):
    """Explanation mode scales fc1's linear output by one detached factor, ``|cos|`` times the gate: the same values
    and the same input gradient as the unit and the activation, each with its factor detached."""
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", 16)
    torch.manual_seed(0)
    mlp = bcos_layers.BcosMLP(6, 10, activation, bias=False, b=2.0).double()
    for param in mlp.parameters():
        torch.nn.init.normal_(param)
    x = torch.randn(3, 7, 6, dtype=torch.float64, requires_grad=True)
    with explanation_mode(mlp, input_gradient_only=input_gradient_only):
        fused = mlp(x)
        (fused_grad,) = torch.autograd.grad(fused.square().sum(), x)
        separate = mlp.fc2(mlp.act(mlp.fc1(x)))
        (separate_grad,) = torch.autograd.grad(separate.square().sum(), x)
    assert torch.allclose(fused, separate, rtol=1e-12)
    assert torch.allclose(fused_grad, separate_grad, rtol=1e-10)


def test_encoder_layer_without_autograd_gives_the_recorded_values_and_leaves_its_input_alone():
    from bcos_zoo.modeling.bcos_layers import BcosEncoderLayer
    from bcos_zoo.modeling.configuration_bcos_vit import BcosViTConfig

    torch.manual_seed(0)
    config = BcosViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    layer = BcosEncoderLayer(config).double().eval()
    for param in layer.parameters():
        torch.nn.init.normal_(param, std=0.3)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64)
    recorded = layer(hidden.clone().requires_grad_(True))
    kept = hidden.clone()
    with torch.no_grad():
        out = layer(hidden)
    assert torch.allclose(out, recorded, rtol=1e-12) and torch.equal(hidden, kept)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.bfloat16, 0.02), (torch.float16, 0.003), (torch.float32, 1e-5)]
)
def test_the_b2_backward_in_lower_precision_is_the_float64_gradient_to_that_precision(monkeypatch, dtype, tolerance):
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", 256)  # the per-output sums cross many blocks
    torch.manual_seed(0)
    x = torch.randn(4, 300, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 300, 64, dtype=torch.float64)
    expected = torch.autograd.grad(bcos_layers._BcosSquareLinear.apply(x, w, 1e-12), (x, w), upstream)
    half = [t.detach().to(dtype).requires_grad_(True) for t in (x, w)]
    grads = torch.autograd.grad(bcos_layers._BcosSquareLinear.apply(*half, 1e-12), half, upstream.to(dtype))
    for grad, reference in zip(grads, expected):
        assert grad.dtype == dtype
        assert (grad.double() - reference).norm() / reference.norm() < tolerance


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("block_elements", [10, 1 << 18], ids=["uneven-blocks", "one-block"])
def test_mlp_without_autograd_applies_the_activation_block_by_block_to_the_recorded_values(
    monkeypatch, activation, block_elements
):
    """Inference applies the activation to each block of the first unit's output as soon as it is squared."""
    monkeypatch.setattr(bcos_layers, "_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    mlp = bcos_layers.BcosMLP(6, 11, activation, bias=False, b=2.0).double()
    for param in mlp.parameters():
        torch.nn.init.normal_(param, std=0.5)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    recorded = mlp(x.clone().requires_grad_(True))
    with torch.no_grad():
        out = mlp(x)
    assert torch.allclose(out, recorded, rtol=1e-12, atol=1e-14)


needs_onednn = pytest.mark.skipif(bcos_layers._ONEDNN_LINEAR is None, reason="oneDNN's kernel is not used here")


def float32_linear_case(shape=(3, 5, 16), bias=True):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(24, shape[-1], generator=generator)
    return x, weight, torch.randn(24, generator=generator) if bias else None


@pytest.mark.parametrize(
    "make_input",
    [lambda x: x, lambda x: x[:, :1], lambda x: x[0, 0], lambda x: x[:, :0], lambda x: x.transpose(0, 1)],
    ids=["3d", "strided", "one-vector", "no-rows", "transposed"],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_in_float32_on_the_cpu_is_f_linear(make_input, bias):
    x, weight, b = float32_linear_case(bias=bias)
    x = make_input(x)
    with torch.no_grad():
        out = linear(x, weight, b)
    assert out.shape == F.linear(x, weight, b).shape
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)


def test_linear_input_gradient_is_that_of_f_linear_and_differentiates_again():
    x, weight, b = float32_linear_case()
    upstream = torch.randn(3, 5, 24, requires_grad=True)
    gradients = []
    for fn in (linear, F.linear):
        inputs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad((fn(inputs, weight, b) * upstream).sum(), inputs, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), upstream)
        (plain,) = torch.autograd.grad((fn(inputs, weight, b) * upstream.detach()).sum(), inputs)
        gradients.append((grad, second, plain))
    for ours, reference in zip(*gradients):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_linear_records_weight_and_bias_gradients_as_f_linear_does():
    x, weight, b = float32_linear_case()
    weight.requires_grad_(), b.requires_grad_()
    linear(x, weight, b).square().sum().backward()
    grads = weight.grad.clone(), b.grad.clone()
    weight.grad = b.grad = None
    F.linear(x, weight, b).square().sum().backward()
    torch.testing.assert_close(grads, (weight.grad, b.grad))


@needs_onednn
def test_linear_runs_on_onednn_unless_it_is_switched_off():
    x, weight, b = float32_linear_case()
    with torch.no_grad(), torch.profiler.profile() as trace:
        linear(x, weight, b)
    assert "mkldnn::_linear_pointwise" in {event.name for event in trace.events()}
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(linear(x, weight, b), F.linear(x, weight, b))


def test_linear_under_a_flop_counter_is_counted_as_a_matmul():
    x, weight, b = float32_linear_case()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        linear(x, weight, b)
    assert counter.get_total_flops() == 2 * 15 * 16 * 24


@needs_onednn
@pytest.mark.parametrize("mode", ["inference", "explanation", "training"])
def test_every_matmul_of_an_encoder_layer_in_float32_on_the_cpu_runs_on_onednn_but_weight_gradients(mode):
    from bcos_zoo.modeling.bcos_layers import BcosEncoderLayer
    from bcos_zoo.modeling.configuration_bcos_vit import BcosViTConfig

    torch.manual_seed(0)
    config = BcosViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, b=2.0)
    layer = BcosEncoderLayer(config).train(mode == "training")
    hidden = torch.randn(2, 5, 8, requires_grad=mode != "inference")
    with torch.profiler.profile() as trace, torch.set_grad_enabled(mode != "inference"):
        if mode == "explanation":
            with explanation_mode(layer, input_gradient_only=True):
                torch.autograd.grad(layer(hidden).sum(), hidden)
        else:
            out = layer(hidden)
            if mode == "training":
                out.sum().backward()
    names = [event.name for event in trace.events()]
    # inference: q, k, v, o, fc1 and fc2; explanation: those, and the input gradients of v, o, fc1 and fc2 (q and k
    # are detached); training: the B-cos units o, fc1 and fc2 forward and their input gradients (q, k and v, and
    # every weight gradient, are F.linear's and autograd's)
    expected = {"inference": 6, "explanation": 10, "training": 6}[mode]
    assert names.count("mkldnn::_linear_pointwise") == expected
    if mode != "training":
        assert "aten::mm" not in names and "aten::addmm" not in names
