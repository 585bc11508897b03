"""The B-cos unit and the layers every family shares, as the B-cos papers define them, written once.

A B-cos network is a dynamic linear map: each input-dependent factor in it (``|cos|^(B-1)``, a norm's standard
deviation, an activation's gate, the attention matrix) goes through ``DynamicModule.dynamic``, which
:func:`explanation_mode` detaches; then the network computes ``y = W(x) x + c`` exactly, with the same code.
"""

import contextvars
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fast_paths import square_conv2d, square_linear, use_fast_path


# The norm guard of every B-cos unit: ||x|| = sqrt(sum x^2 + NORM_EPS), finite on all-zero input (zero padding after
# a ReLU); the authors' convolution uses the same value.
NORM_EPS = 1e-6
_RANGE_TOLERANCE = 1e-3  # resampling round-off; a normalised image is off by far more
_DEVICE_RANGE_MESSAGE = (  # CUDA's device-side assert takes at most 254 characters
    "pixel_values must lie in [0, 1], no NaN: use the image processor saved with the model, or undo the normalisation"
)


def encode_inverse(pixel_values: torch.Tensor) -> torch.Tensor:
    """The B-cos input encoding ``[x, 1 - x]``: every colour, black included, becomes a non-zero vector."""
    return torch.cat([pixel_values, 1 - pixel_values], dim=1)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int = 3, eager_message: bool | None = None) -> None:
    """Reject inputs the model would silently misread. On the CPU (or with ``eager_message``) a ``ValueError`` names
    the range found; on an accelerator or in a graph capture an asynchronous assert avoids a host synchronisation (a
    failed one on CUDA leaves the process's CUDA context unusable, as torch documents: docs/models.md)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be floating point in [0, 1], got {pixel_values.dtype}; use `x.float() / 255`."
        )
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        mode = "RGB" if num_channels == 3 else "greyscale" if num_channels == 1 else f"{num_channels} channels"
        fix = "Add a batch dimension with `x.unsqueeze(0)`" if pixel_values.ndim == 3 else f"Convert them to {mode}"
        raise ValueError(
            f"pixel_values must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}. "
            f"{fix}; this model takes {mode} images."
        )
    if pixel_values.numel() == 0:  # an empty batch holds no value to check
        return
    low, high = torch.aminmax(pixel_values.detach())
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
    if tracing or not (pixel_values.device.type == "cpu" if eager_message is None else eager_message):
        torch._assert_async((low >= -_RANGE_TOLERANCE) & (high <= 1 + _RANGE_TOLERANCE), _DEVICE_RANGE_MESSAGE)
        return
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        raise ValueError("pixel_values contain NaN.")
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"pixel_values must lie in [0, 1], got values in [{low:.3f}, {high:.3f}]. B-cos models take unnormalised "
            "images (the source's mean/std normalisation is folded into the first layer): use the image processor "
            "saved with the model (do_normalize=False), or undo the normalisation with `x * std + mean`. (Resizing a "
            "float image with a bicubic filter overshoots [0, 1] a little: clamp it with `x.clamp(0, 1)`.)"
        )


def encode_pixel_values(
    pixel_values: torch.Tensor, num_channels: int, dtype: torch.dtype, eager_message: bool | None = None
) -> torch.Tensor:
    """Checked images in the model's dtype (float32 images work with a bfloat16 model), encoded as ``[x, 1 - x]``."""
    check_pixel_values(pixel_values, num_channels, eager_message=eager_message)
    return encode_inverse(pixel_values.to(dtype))


# The modules that explanation mode detaches in this thread (or asyncio task): explanation mode is per thread, so
# that threads sharing a model (a server's pool) explain at once, and a forward or training step in another thread
# keeps its whole gradient.
_DETACHED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("bcos_detached", default=frozenset())


class DynamicModule(nn.Module):
    """A module with an input-dependent factor, which :func:`explanation_mode` detaches."""

    @property
    def detach_dynamic(self) -> bool:
        """Whether explanation mode detaches this module's factor in the current thread."""
        return self in _DETACHED.get()

    def dynamic(self, factor: torch.Tensor) -> torch.Tensor:
        """``factor``, detached in explanation mode: what the mode changes (the fast paths, which compute the same
        values, stand aside in it)."""
        return factor.detach() if self.detach_dynamic else factor


class explanation_mode:  # a context manager, named as torch.no_grad is
    """``with explanation_mode(model):`` detaches every dynamic factor in ``model`` in the current thread, so that its
    gradient is the dynamic linear map ``W(x)``. With ``detach=None`` it detaches what is detached now, again at each
    entry, in whichever thread enters: how a gradient-checkpointed layer's recomputation in the backward pass
    detaches what its forward detached. A mode is left in the thread that entered it; a mode object is entered by
    one thread at a time."""

    def __init__(self, model: nn.Module, detach: bool | None = True):
        self.model, self.modules = model, frozenset(m for m in model.modules() if isinstance(m, DynamicModule))
        self.detached = frozenset(m for m in self.modules if (m.detach_dynamic if detach is None else detach))
        self.previous = []  # at each entry, this model's modules detached before it

    def __enter__(self) -> nn.Module:
        current = _DETACHED.get()
        self.previous.append(current & self.modules)
        _DETACHED.set(current - self.modules | self.detached)
        return self.model

    def __exit__(self, *exc_info) -> None:  # puts back this model's modules only: modes may close in any order
        _DETACHED.set(_DETACHED.get() - self.modules | self.previous.pop())


def guarded_norm(squared_sum: torch.Tensor) -> torch.Tensor:
    """``sqrt(squared_sum + NORM_EPS)``: the norm of a vector or patch from the sum of its squares."""
    return (squared_sum + NORM_EPS).sqrt()


def bcos_factor(linear_output: torch.Tensor, input_norm: torch.Tensor, weight_norm: torch.Tensor, b: float):
    """``|cos(x, w)|^(B-1)`` from ``w . x`` and the two norms. Other exponents than 2 raise a cosine clamped away
    from 0 (at 1e-12, or float16's smallest normal number, which 1e-12 is below): below B = 2 the power's gradient at
    0 is infinite."""
    abs_cos = linear_output.abs() / (input_norm * weight_norm)
    return abs_cos if b == 2 else abs_cos.clamp_min(max(1e-12, torch.finfo(abs_cos.dtype).tiny)).pow(b - 1)


class BcosLinear(DynamicModule):
    """``|cos(x, w)|^(B-1) * (w . x) + bias`` with the pretrained, un-normalised ``w``: ``nn.Linear`` at ``b == 1``,
    which makes B-cosification function-preserving."""

    def __init__(self, in_features: int, out_features: int, bias: bool, b: float):
        super().__init__()
        self.in_features, self.out_features, self.b = in_features, out_features, float(b)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.b == 1:
            out = F.linear(x, self.weight)
        else:
            input_norm = guarded_norm(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square())
            weight_norm = guarded_norm(torch.linalg.vector_norm(self.weight, dim=-1).square())
            if self.b == 2 and not self.detach_dynamic and use_fast_path("square_unit", x):
                out = square_linear(x, self.weight, input_norm, weight_norm)
            else:
                out = F.linear(x, self.weight)
                out = out * self.dynamic(bcos_factor(out, input_norm, weight_norm, self.b))
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, b={self.b}, bias={self.bias is not None}"


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class BcosConv2d(DynamicModule):
    """``|cos(x_patch, w_o)|^(B-1) * conv(x, w)_o + bias_o``, ``nn.Conv2d`` at ``b == 1``. ``x_patch`` is the window
    behind each output (for a grouped convolution, its group's channels). ``normalize_weight`` applies ``w / ||w||``,
    recomputed in every forward, as the authors' B-cos v2 networks do; otherwise the pretrained ``w`` is used."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        b: float = 2.0,
        normalize_weight: bool = False,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must divide by groups {groups}."
            )
        self.in_channels, self.out_channels, self.groups, self.b = in_channels, out_channels, groups, float(b)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.normalize_weight = normalize_weight
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    def patch_norms(self, x: torch.Tensor) -> torch.Tensor:
        """(N, out_channels or 1, H', W'): the guarded norm of each output's input window, as a convolution of the
        per-pixel sums of squares with a kernel of ones."""
        batch, channels, height, width = x.shape
        squares = x.square().view(batch, self.groups, channels // self.groups, height, width).sum(dim=2)
        ones = squares.new_ones(self.groups, 1, *self.kernel_size)
        sums = F.conv2d(squares, ones, None, self.stride, self.padding, self.dilation, self.groups)
        if self.groups > 1:  # one norm per group, for each of the group's output channels
            sums = sums.repeat_interleave(self.out_channels // self.groups, dim=1)
        return guarded_norm(sums)

    def applied_weight(self) -> torch.Tensor:
        """``w``, or ``w / ||w||`` per output channel with ``normalize_weight``."""
        if not self.normalize_weight:
            return self.weight
        return self.weight / torch.linalg.vector_norm(self.weight, dim=(1, 2, 3), keepdim=True)

    def weight_norm(self) -> torch.Tensor:
        """(out_channels,): the guarded norm of each applied weight (exactly 1 with ``normalize_weight``)."""
        if self.normalize_weight:
            return self.weight.new_ones(self.out_channels)
        return guarded_norm(self.weight.square().sum(dim=(1, 2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.b == 2 and not (self.detach_dynamic or torch.is_grad_enabled()) and use_fast_path("square_unit", x):
            out = square_conv2d(self, x)
        else:
            out = F.conv2d(x, self.applied_weight(), None, self.stride, self.padding, self.dilation, self.groups)
            if self.b != 1:
                factor = bcos_factor(out, self.patch_norms(x), self.weight_norm().view(1, -1, 1, 1), self.b)
                out = out * self.dynamic(factor)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, b={self.b}, bias={self.bias is not None}"
            + (", normalize_weight=True" if self.normalize_weight else "")
        )


class BcosLayerNorm(DynamicModule):
    """LayerNorm whose standard deviation is a dynamic factor; the mean subtraction is linear and stays."""

    def __init__(self, hidden_size: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=-1, keepdim=True)
        inverse_std = torch.rsqrt(centered.square().mean(dim=-1, keepdim=True) + self.eps)
        out = centered * self.dynamic(inverse_std) * self.weight
        return out if self.bias is None else out + self.bias


# transformers' names of the GELU-type activations a B-cos ViT takes, and what each computes
ACTIVATION_ALIASES = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATION_ALIASES |= {"gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def quick_gelu(x: torch.Tensor) -> torch.Tensor:  # functions, not lambdas: a model holding one pickles
    return x * torch.sigmoid(1.702 * x)  # OpenAI CLIP's sigmoid approximation of GELU


_ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "quick_gelu": quick_gelu}


class GatedActivation(DynamicModule):
    """A GELU-type activation written as ``x * g(x)``; the gate ``g(x) = act(x) / x`` is its dynamic factor."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ACTIVATION_ALIASES:
            raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATION_ALIASES)}.")
        self.name = ACTIVATION_ALIASES[name]
        self.activation = _ACTIVATIONS[self.name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.detach_dynamic:  # the same value, differentiated as act(x): act(x) / x has no gradient at 0
            return self.activation(x)
        with torch.no_grad():
            gate = self.activation(x).div_(x).nan_to_num_(nan=0.5)  # g(0) = 1/2 for every GELU type
        return x * gate

    def extra_repr(self) -> str:
        return self.name
