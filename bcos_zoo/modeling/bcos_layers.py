"""B-cos building blocks shared by every B-cos model in this folder.

A B-cos network is a dynamic linear map: every input-dependent scaling in it (the B-cos factor, the LayerNorm
standard deviation, the activation gate, the attention matrix) can be detached, after which the network computes
``y = W(x) x + c`` exactly. Each such module derives from :class:`DynamicModule`, and
:func:`explanation_mode` switches all of them at once.

This file is hub-facing: it travels with the weights and may import only torch and sibling files.
"""

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


# Slack for resampling round-off; a normalised image is off by far more than this.
_RANGE_TOLERANCE = 1e-3


def encode_inverse(pixel_values: torch.Tensor) -> torch.Tensor:
    """The B-cos input encoding ``[x, 1 - x]``: it makes every colour, black included, a non-zero vector."""
    return torch.cat([pixel_values, 1 - pixel_values], dim=1)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int = 3) -> None:
    """Reject inputs the model would silently misread, with a message that says how to fix them."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be floating point in [0, 1], got dtype {pixel_values.dtype}; "
            "convert with `pixel_values.float() / 255`."
        )
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}. "
            "Add a batch dimension with `unsqueeze(0)` for a single image; convert grayscale or RGBA images to RGB."
        )
    low, high = torch.aminmax(pixel_values.detach())
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        raise ValueError("pixel_values contain NaN.")
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"pixel_values must lie in [0, 1], got values in [{low:.3f}, {high:.3f}]. B-cos models take unnormalised "
            "images and encode them as [x, 1 - x]; the source model's mean/std normalisation is folded into the "
            "first layer. Use the image processor saved with the model (it has do_normalize=False), or undo the "
            "normalisation with `x * std + mean`."
        )


class DynamicModule(nn.Module):
    """A module with an input-dependent factor that :func:`explanation_mode` detaches."""

    detach_dynamic: bool = False


@contextlib.contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Detach every dynamic factor in ``model``, so that its gradient is the dynamic linear map ``W(x)``."""
    modules = [m for m in model.modules() if isinstance(m, DynamicModule)]
    previous = [m.detach_dynamic for m in modules]
    for module in modules:
        module.detach_dynamic = True
    try:
        yield model
    finally:
        for module, flag in zip(modules, previous):
            module.detach_dynamic = flag


class BcosLinear(DynamicModule):
    """``out = |cos(x, w)|^(B-1) * (w . x) + bias``, with the pretrained, un-normalised ``w``.

    At ``b == 1`` this is exactly ``nn.Linear``, which is what makes B-cosification function-preserving.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, b: float, eps: float = 1e-12):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.b = float(b)
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.b == 1:
            return F.linear(x, self.weight, self.bias)
        input_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)
        weight_norm = torch.linalg.vector_norm(self.weight, dim=-1, keepdim=True).clamp_min(self.eps)
        if self.b == 2 and not self.detach_dynamic:
            # (w.x)|w.x| / (|w||x|) as y|y| with y = (w/sqrt|w|).(x/sqrt|x|): the norms scale the operands of the
            # matmul rather than its output. |w| goes on the weight or on the output, whichever is smaller.
            scaled_input = x * input_norm.rsqrt()
            if x.numel() >= self.weight.numel():
                scaled = F.linear(scaled_input, self.weight * weight_norm.rsqrt())
                out = scaled * scaled.abs()
            else:
                scaled = F.linear(scaled_input, self.weight)
                out = scaled * scaled.abs() / weight_norm.T
        else:
            out = F.linear(x, self.weight)
            abs_cos = out.abs() / (input_norm * weight_norm.T)
            if self.b != 2:
                abs_cos = abs_cos.clamp_min(self.eps).pow(self.b - 1)
            if self.detach_dynamic:
                abs_cos = abs_cos.detach()
            out = out * abs_cos
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, b={self.b}, bias={bias}"


class BcosLayerNorm(DynamicModule):
    """LayerNorm whose standard deviation can be detached; the mean subtraction is linear and stays."""

    def __init__(self, hidden_size: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.detach_dynamic:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        centered = x - x.mean(dim=-1, keepdim=True)
        std = (centered.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        out = centered / std.detach() * self.weight
        return out if self.bias is None else out + self.bias


def _gelu_gate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _gelu_tanh_gate(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


def _quick_gelu_gate(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(1.702 * x)


_GATES = {"gelu": _gelu_gate, "gelu_tanh": _gelu_tanh_gate, "quick_gelu": _quick_gelu_gate}
# transformers' activation names that are one of the gates above
ACTIVATION_ALIASES = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


class GatedActivation(DynamicModule):
    """A GELU-type activation written as ``x * g(x)``; explanation mode detaches the gate ``g(x)``."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ACTIVATION_ALIASES:
            raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATION_ALIASES)}.")
        self.name = ACTIVATION_ALIASES[name]
        self.gate = _GATES[self.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.detach_dynamic:
            return x * self.gate(x).detach()
        if self.name == "gelu":
            return F.gelu(x)
        if self.name == "gelu_tanh":
            return F.gelu(x, approximate="tanh")
        return x * self.gate(x)

    def extra_repr(self) -> str:
        return self.name


class BcosSelfAttention(DynamicModule):
    """Multi-head self-attention; explanation mode detaches queries and keys, so ``A(x) V x`` is linear in ``x``.

    q, k and v are plain linear maps (q and k only shape the detached attention matrix); the output projection is a
    B-cos unit.
    """

    def __init__(self, hidden_size: int, num_heads: int, qk_bias: bool, bias: bool, b: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qk_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=qk_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.o_proj = BcosLinear(hidden_size, hidden_size, bias=bias, b=b)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if self.detach_dynamic:
            query, key = query.detach(), key.detach()
        context = F.scaled_dot_product_attention(query, key, value)
        return self.o_proj(context.transpose(1, 2).reshape(batch, length, width))


class BcosMLP(nn.Module):
    """Two B-cos units around a gated activation."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, bias: bool, b: float):
        super().__init__()
        self.fc1 = BcosLinear(hidden_size, intermediate_size, bias=bias, b=b)
        self.act = GatedActivation(activation)
        self.fc2 = BcosLinear(intermediate_size, hidden_size, bias=bias, b=b)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class BcosEncoderLayer(nn.Module):
    """A pre-norm transformer block: ``h + attn(ln(h))`` then ``h + mlp(ln(h))``."""

    def __init__(self, config):
        super().__init__()
        self.layernorm_before = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.attention = BcosSelfAttention(
            config.hidden_size, config.num_attention_heads, config.attention_qk_bias, config.use_bias, config.b
        )
        self.layernorm_after = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.mlp = BcosMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.use_bias, config.b)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))
        return hidden_states + self.mlp(self.layernorm_after(hidden_states))


class BcosPatchEmbedding(nn.Module):
    """Cuts the ``[x, 1 - x]`` image into non-overlapping patches and maps each with one B-cos unit.

    A stride-equals-kernel convolution is a linear map of each flattened patch, so the B-cos norm is the norm of that
    patch (all 6 channels). The weight is stored flattened in (channel, row, column) order, as a conv weight reshaped.
    """

    def __init__(self, num_channels: int, patch_size: int, hidden_size: int, bias: bool, b: float):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.projection = BcosLinear(2 * num_channels * patch_size * patch_size, hidden_size, bias=bias, b=b)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = encoded.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {p}.")
        patches = encoded.reshape(batch, channels, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)
        return self.projection(patches)
