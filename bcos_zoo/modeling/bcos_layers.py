"""B-cos building blocks shared by every B-cos model in this folder.

A B-cos network is a dynamic linear map: every input-dependent scaling in it (the B-cos factor, the LayerNorm
standard deviation, the activation gate, the attention matrix) can be detached, after which the network computes
``y = W(x) x + c`` exactly. Each such module derives from :class:`DynamicModule`, and
:func:`explanation_mode` switches all of them at once.

This file is hub-facing: it travels with the weights and may import only torch, transformers and sibling files.
"""

import contextlib
import math
import platform
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


# the hooks a module holds; a module computed differently from how it is called (fused with its neighbours, or for
# some tokens only) must look for them, since they would see what it skipped
MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

# Slack for resampling round-off; a normalised image is off by far more than this.
_RANGE_TOLERANCE = 1e-3
_RANGE_ADVICE = (
    "B-cos models take unnormalised images and encode them as [x, 1 - x]; the source model's mean/std normalisation "
    "is folded into the first layer. Use the image processor saved with the model (it has do_normalize=False), or "
    "undo the normalisation with `x * std + mean`."
)


def encode_inverse(pixel_values: torch.Tensor) -> torch.Tensor:
    """The B-cos input encoding ``[x, 1 - x]``: it makes every colour, black included, a non-zero vector."""
    return torch.cat([pixel_values, 1 - pixel_values], dim=1)


def _is_tracing() -> bool:
    """Whether the forward pass is being captured into a graph (torch.compile, torch.export, TorchScript tracing)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())


def _onednn_linear_kernel() -> Callable | None:
    """PyTorch's oneDNN (mkldnn) linear kernel, where this build of torch has one and the CPU is an x86 one (where
    it was measured; elsewhere PyTorch's own choice of kernel stands)."""
    if not torch.backends.mkldnn.is_available() or platform.machine().lower() not in {"x86_64", "amd64"}:
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_kernel()


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")


class _ConstantLinear(torch.autograd.Function):
    """``x w^T + b`` through oneDNN for a constant ``w`` and ``b``: the gradient is for the input alone (an
    explanation's). Under ``create_graph`` the input gradient is a recorded matmul, so it differentiates again."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        # for more than two dimensions the kernel returns a view of its result, which autograd would not let be
        # changed in place (or only through a copy); detached, it is a tensor of its own
        return _onednn(x, weight, bias).detach()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        if torch.is_grad_enabled():
            return torch.matmul(grad, weight), None, None
        return _onednn(grad.contiguous(), weight.t()), None, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, except that a float32 matmul on an x86 CPU runs on oneDNN, PyTorch's bundled mkldnn library,
    where no gradient with respect to the weight or bias is recorded: inference, explanations, and the forward passes
    and input gradients of the B-cos units' own autograd functions (their weight gradients stay on MKL: for some of
    those shapes oneDNN was slower).

    PyTorch computes float32 ``F.linear`` on a CPU with MKL; oneDNN's kernel, on the weight as it is (no repacked
    copy), measured 1.25-1.45x faster for the matmuls of ViT-S and CLIP B/32 on an AVX-512 AMD EPYC and about 10 us
    slower per call on tiny ones. ``torch.backends.mkldnn.flags(enabled=False)`` switches it off (as it does
    PyTorch's oneDNN convolutions). Graph captures keep ``F.linear``, for the compiler or exporter to choose, and so
    do dispatch modes (``FlopCounterMode`` counts no FLOPs in oneDNN's kernel).
    """
    constant = not torch.is_grad_enabled() or not (weight.requires_grad or (bias is not None and bias.requires_grad))
    if (
        _ONEDNN_LINEAR is None
        or not constant
        or not torch.backends.mkldnn.enabled
        or x.device.type != "cpu"
        or not (x.dtype == weight.dtype == torch.float32)
        or _is_tracing()
        or is_in_torch_dispatch_mode()
    ):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ConstantLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int = 3, eager_message: bool | None = None) -> None:
    """Reject inputs the model would silently misread, with a message that says how to fix them.

    Type, dtype and shape are checked always. The [0, 1] range check must not stall an accelerator or break a graph
    capture, so it takes one of two forms:

    * eager, on the CPU (or ``eager_message=True``): the values are read and a ``ValueError`` names the range found;
    * under torch.compile / torch.export / tracing, or on an accelerator: ``torch._assert_async``, which becomes part
      of the graph and, on a GPU, is a device-side assert, so there is no device-to-host synchronisation and no
      data-dependent Python branch. On the CPU the captured graph still raises with the same advice.
    """
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
    tracing = _is_tracing()
    if eager_message is None:
        eager_message = pixel_values.device.type == "cpu"
    if tracing or not eager_message:
        # NaN fails both comparisons, so it is refused too.
        in_range = (low >= -_RANGE_TOLERANCE) & (high <= 1 + _RANGE_TOLERANCE)
        torch._assert_async(in_range, "pixel_values must lie in [0, 1] and contain no NaN. " + _RANGE_ADVICE)
        return
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        raise ValueError("pixel_values contain NaN.")
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"pixel_values must lie in [0, 1], got values in [{low:.3f}, {high:.3f}]. " + _RANGE_ADVICE)


def prepare_pixel_values(
    pixel_values: torch.Tensor, num_channels: int, dtype: torch.dtype, eager_message: bool | None = None
) -> torch.Tensor:
    """Check ``pixel_values`` (see :func:`check_pixel_values`) and cast them to the model's floating dtype.

    Images arrive in float32 from the processors; a model loaded in bfloat16 or float16 takes them as transformers'
    own vision models do. The check runs before the cast, on the values the caller passed.
    """
    check_pixel_values(pixel_values, num_channels, eager_message=eager_message)
    return pixel_values if pixel_values.dtype == dtype else pixel_values.to(dtype)


class DynamicModule(nn.Module):
    """A module with an input-dependent factor that :func:`explanation_mode` detaches."""

    detach_dynamic: bool = False
    # set while an explanation is computed with create_graph=True: the backward pass will itself be differentiated
    double_backward: bool = False
    # set while an explanation is computed without it: only the gradient with respect to the input is asked for
    input_gradient_only: bool = False


@contextlib.contextmanager
def explanation_mode(
    model: nn.Module, double_backward: bool = False, input_gradient_only: bool = False
) -> Iterator[nn.Module]:
    """Detach every dynamic factor in ``model``, so that its gradient is the dynamic linear map ``W(x)``.

    ``double_backward=True`` tells the modules that the gradient will be differentiated again (differentiable
    explanations), so that they avoid kernels without a second derivative. ``input_gradient_only=True`` tells them
    that no gradient with respect to their parameters will be asked for, so that they may use constant copies.
    """
    modules = [m for m in model.modules() if isinstance(m, DynamicModule)]
    previous = [(m.detach_dynamic, m.double_backward, m.input_gradient_only) for m in modules]
    for module in modules:
        module.detach_dynamic = True
        module.double_backward = double_backward
        module.input_gradient_only = input_gradient_only
    try:
        yield model
    finally:
        for module, flags in zip(modules, previous):
            module.detach_dynamic, module.double_backward, module.input_gradient_only = flags


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": _gelu_tanh, "quick_gelu": _quick_gelu}
# transformers' activation names that are one of the activations above
ACTIVATION_ALIASES = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
}


def _activation_backward(name: str, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient ``grad * act'(x)`` through the activation ``name`` at ``x`` (a new tensor)."""
    if name == "quick_gelu":
        # d/dx x s(ax) = s (1 + a x (1 - s)) with s = sigmoid(a x)
        gate = torch.sigmoid(1.702 * x)
        return (1 - gate).mul_(x).mul_(1.702).add_(1).mul_(gate).mul_(grad)
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh" if name == "gelu_tanh" else "none")


# Elements per block of the blockwise passes below: large enough that the per-block op overhead is small, small
# enough that a block's temporaries stay in the cache and come from memory the allocator already holds.
_BLOCK_ELEMENTS = 1 << 18


def _row_blocks(*tensors: torch.Tensor, per_row: tuple = ()) -> Iterator[tuple[torch.Tensor, ...]]:
    """Matching blocks of rows of ``tensors`` (same leading dimensions), followed by the matching rows of the
    per-row values ``per_row`` (shape (..., 1), broadcast to those rows). The blocks are views: writes land in the
    tensors, and in a per-row tensor of the full leading shape.

    Blocks only on a CPU, for contiguous tensors, outside a graph capture; otherwise everything whole, as one block:
    a compiler fuses the passes itself, and a loop over blocks would fix the batch size.
    """
    # tracing is asked first and no generator expression is used: torch.compile cannot trace one in a generator
    if _is_tracing() or tensors[0].device.type != "cpu" or not all([t.is_contiguous() for t in tensors]):
        yield (*tensors, *per_row)
        return
    leading = tensors[0].shape[:-1]
    width = tensors[0].shape[-1]
    rows = [t.view(-1, t.shape[-1]) for t in tensors]
    rows += [scale.expand(*leading, 1).contiguous().view(-1, 1) for scale in per_row]
    step = max(1, _BLOCK_ELEMENTS // width)
    for start in range(0, rows[0].shape[0], step):
        yield tuple(r[start : start + step] for r in rows)


def signed_square_(
    y: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    column_scale: torch.Tensor | None = None,
    then: Callable[[torch.Tensor, torch.Tensor], object] | None = None,
) -> torch.Tensor:
    """``y |y| * row_scale * column_scale`` in place, without autograd (``row_scale`` one value per row, shape
    (..., 1); ``column_scale`` one per output, shape (out,)); then ``then(block, scratch)`` on each block of the
    result, in place (an activation: the block is still in the cache, and ``scratch``, a spent buffer of the block's
    shape, spares it a fresh one).

    The factor ``|y| * row_scale * column_scale`` is formed first: for the B-cos unit it is ``|cos| <= 1``, so half
    precision cannot overflow. Done a block of rows at a time: a whole-tensor ``y.abs()`` would be a fresh buffer the
    size of ``y``, and on a CPU a fresh large buffer is page faults (and, freed, lets the allocator return memory
    that the next layer asks for again); a block's factor stays small and in the cache (see :func:`_row_blocks`).
    """
    for block, *row in _row_blocks(y, per_row=() if row_scale is None else (row_scale,)):
        factor = block.abs()
        if row:
            factor = factor.mul_(row[0])
        if column_scale is not None:
            factor = factor.mul_(column_scale)
        block.mul_(factor)
        if then is not None:
            then(block, factor)
    return y


def _dynamic_factor(
    y: torch.Tensor, row_scale: torch.Tensor, column_scale: torch.Tensor, activation: nn.Module | None = None
) -> torch.Tensor:
    """``|y| * row_scale * column_scale`` (the B = 2 unit's ``|cos|``), times ``activation.gate`` at the unit's output
    ``y |cos|`` when an activation is given: the whole factor by which explanation mode scales ``y``. Without
    autograd; formed a block of rows at a time into one new buffer (see :func:`signed_square_`)."""
    factor = torch.empty_like(y)
    for y_block, factor_block, row_block in _row_blocks(y, factor, per_row=(row_scale,)):
        torch.abs(y_block, out=factor_block).mul_(row_block).mul_(column_scale)
        if activation is not None:
            factor_block.mul_(activation.gate(y_block * factor_block))
    return factor


def cached_derivation(owner: nn.Module, name: str, sources: tuple, compute: Callable[[], object]):
    """``compute()``, run without autograd and kept on ``owner`` under ``name`` until a tensor in ``sources`` changes.

    For weights in the form a forward pass wants (their inverse norms, BatchNorm folded in), so that inference and
    input-only explanations skip those passes over every weight. A tensor changed in place (an optimiser step),
    replaced (``load_state_dict``), moved or cast gets a new key. A value made under ``torch.inference_mode`` is made
    again once autograd records, since an inference tensor cannot enter a recorded graph.
    """
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources if t is not None)
    store = owner.__dict__.setdefault("_derived_tensors", {})
    entry = store.get(name)
    if entry is not None and entry[0] == key and not (entry[2] and torch.is_grad_enabled()):
        return entry[1]
    with torch.no_grad():
        value = compute()
    store[name] = (key, value, torch.is_inference_mode_enabled())
    return value


def _inverse_norms(t: torch.Tensor, eps: float, keepdim: bool = False) -> torch.Tensor:
    """``1 / max(|t|, eps)`` over the last dimension, without autograd: the B = 2 unit's row and column scales."""
    with torch.no_grad():
        return torch.linalg.vector_norm(t, dim=-1, keepdim=keepdim).clamp_min_(eps).reciprocal_()


def _backward_terms(
    out: torch.Tensor,
    grad: torch.Tensor,
    row_scale: torch.Tensor,
    column_scale: torch.Tensor,
    row_sums: bool = True,
    activation: str | None = None,
    correction: tuple[torch.Tensor, torch.Tensor] | None = None,
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From the output ``o`` of the B = 2 unit and the upstream gradient ``g``: ``h = g sqrt(|o| row col)`` and, with
    ``row_sums``, the sums of ``g o`` per row (shape (..., 1)).

    With ``activation``, ``grad`` is the gradient of ``act(o)`` and is first taken through the activation. With
    ``in_place``, ``h`` is written over ``grad`` (a buffer of the caller's own), and ``correction = (d, s)`` first
    subtracts ``d * s`` from it (``s`` one value per row): the last term of the next unit's input gradient, applied
    here. Only ``h`` is a full-size buffer, and not even that in place; the rest is formed a block of rows at a time
    (see :func:`signed_square_`).
    """
    h = grad if in_place else torch.empty_like(out)
    row = out.new_empty(*out.shape[:-1], 1) if row_sums else None
    subtracted, per_row_factor = ([correction[0]], [correction[1]]) if correction is not None else ([], [])
    sums = [row] if row_sums else []
    for out_block, grad_block, h_block, *rest in _row_blocks(
        out, grad, h, *subtracted, per_row=(row_scale, *sums, *per_row_factor)
    ):
        if correction is not None:  # rest: [d, row_scale, (row,) s]
            grad_block = grad_block.addcmul_(rest.pop(0), rest.pop(), value=-1)
        scale_block, *row_block = rest
        if activation is not None:
            grad_block = _activation_backward(activation, grad_block, out_block)
        if row_sums:
            torch.sum(out_block * grad_block, dim=-1, keepdim=True, out=row_block[0])
        factor = torch.abs(out_block).mul_(scale_block).mul_(column_scale).sqrt_()
        torch.mul(grad_block, factor, out=h_block)
    return h, row


def _remove_half_projection_(
    gradient: torch.Tensor, direction: torch.Tensor, inverse_norm: torch.Tensor
) -> torch.Tensor:
    """``P - (P . d) d / (2 |d|^2)`` per row of ``P = gradient``, in place (``inverse_norm``: ``1 / |d|`` per row).

    For the B = 2 unit, ``h w . x = sum_j h_j (w_j . x) = 2 sum_j g_j o_j``: the gradient with respect to the input
    is ``P = h w`` less half its projection on ``x``, and with respect to a weight row, ``P = h^T x`` less half its
    projection on that row. The sums of ``g o`` then need no pass over the output, only over the narrower ``P``.
    """
    accumulate = torch.promote_types(gradient.dtype, torch.float32)
    for gradient_block, direction_block, norm_block in _row_blocks(gradient, direction, per_row=(inverse_norm,)):
        dots = torch.sum(gradient_block * direction_block, dim=-1, keepdim=True, dtype=accumulate)
        scale = (dots * norm_block.square() / 2).to(gradient.dtype)
        gradient_block.addcmul_(direction_block, scale, value=-1)
    return gradient


def _input_gradient(
    h: torch.Tensor, row: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor, inverse_input_norm: torch.Tensor
) -> torch.Tensor:
    """``dx = h w - x r / |x|^2`` of the B = 2 unit, with ``r`` the row sums of ``g o`` if they were formed from the
    output, else from the half projection (see :func:`_remove_half_projection_`)."""
    grad = linear(h, weight.t())
    if row is None:
        return _remove_half_projection_(grad, x, inverse_input_norm)
    return grad.addcmul_(x, row * inverse_input_norm.square(), value=-1)


def _weight_gradient(
    h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, inverse_weight_norm: torch.Tensor
) -> torch.Tensor:
    """``dw = h^T x - w c / |w|^2`` of the B = 2 unit, ``c`` from the half projection."""
    grad = torch.matmul(h.reshape(-1, h.shape[-1]).T, x.reshape(-1, x.shape[-1]))
    return _remove_half_projection_(grad, weight, inverse_weight_norm[:, None])


class _BcosSquareLinear(torch.autograd.Function):
    """The B = 2 unit ``o = (w . x)|w . x| / (|w||x|)`` with a backward pass written out.

    With ``|cos| = |w . x| / (|w||x|) = sqrt(|o| / (|w||x|))``, an upstream gradient ``g`` and ``q = g o`` summed
    per row (``r``) and per output (``c``): ``dx = (2 g|cos|) w - x r / |x|^2`` and
    ``dw = (2 g|cos|)^T x - w c / |w|^2``. Forward and backward are one matmul each way and blockwise passes; the
    weight is used as it is (no copy scaled by its norms) and only the output and the norms are kept beside the
    input and weight that a linear layer keeps. The row sums come from the output (in blocks, beside h) unless the
    input is narrower, the
    column sums from the weight gradient (see :func:`_remove_half_projection_`). Differentiating the gradient again
    raises (explanations, which may, detach the norms and take the plain autograd path).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        inverse_input_norm, inverse_weight_norm = _inverse_norms(x, eps, keepdim=True), _inverse_norms(weight, eps)
        out = signed_square_(linear(x, weight), inverse_input_norm, inverse_weight_norm)
        ctx.save_for_backward(x, weight, out, inverse_input_norm, inverse_weight_norm)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, out, inverse_input_norm, inverse_weight_norm = ctx.saved_tensors
        # 2|cos| = sqrt(|o| * 4 / |x| / |w|): the factor 2 rides inside the square root
        h, row = _backward_terms(out, grad, 4 * inverse_input_norm, inverse_weight_norm, out.shape[-1] <= x.shape[-1])
        grad_input = _input_gradient(h, row, x, weight, inverse_input_norm) if ctx.needs_input_grad[0] else None
        grad_weight = _weight_gradient(h, x, weight, inverse_weight_norm) if ctx.needs_input_grad[1] else None
        return grad_input, grad_weight, None


class _BcosSquareMLP(torch.autograd.Function):
    """``fc2(act(fc1(x)))`` for two B = 2 units without biases, with the backward written out across both.

    The units' formulas are those of :class:`_BcosSquareLinear`. Between them the backward keeps one full-size
    buffer: fc2's input gradient ``h2 w2`` is finished, taken through the activation and turned into fc1's ``h`` in
    place, a block of rows at a time; unit by unit, the activation's gradient and fc1's ``h`` were two more buffers
    of the MLP's width and fc2's last term another pass over one.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor, eps: float, activation: str
    ) -> torch.Tensor:
        inverse_input_norm1, inverse_weight_norm1 = _inverse_norms(x, eps, keepdim=True), _inverse_norms(weight1, eps)
        out1 = signed_square_(linear(x, weight1), inverse_input_norm1, inverse_weight_norm1)
        hidden = _ACTIVATIONS[activation](out1)
        inverse_input_norm2 = _inverse_norms(hidden, eps, keepdim=True)
        inverse_weight_norm2 = _inverse_norms(weight2, eps)
        out2 = signed_square_(linear(hidden, weight2), inverse_input_norm2, inverse_weight_norm2)
        ctx.activation = activation
        ctx.save_for_backward(
            x, weight1, weight2, out1, hidden, out2,
            inverse_input_norm1, inverse_weight_norm1, inverse_input_norm2, inverse_weight_norm2,
        )  # fmt: skip
        return out2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight1, weight2, out1, hidden, out2, input_norm1, weight_norm1, input_norm2, weight_norm2 = (
            ctx.saved_tensors
        )
        rows2_from_output = out2.shape[-1] <= hidden.shape[-1]
        h2, row2 = _backward_terms(out2, grad, 4 * input_norm2, weight_norm2, rows2_from_output)
        grad_weight2 = _weight_gradient(h2, hidden, weight2, weight_norm2) if ctx.needs_input_grad[2] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_weight2, None, None
        through = linear(h2, weight2.t())  # fc2's input gradient, less its last term
        correction = None
        if rows2_from_output:
            correction = (hidden, row2 * input_norm2.square())
        else:
            through = _remove_half_projection_(through, hidden, input_norm2)
        h1, row1 = _backward_terms(
            out1,
            through,
            4 * input_norm1,
            weight_norm1,
            out1.shape[-1] <= x.shape[-1],
            activation=ctx.activation,
            correction=correction,
            in_place=True,
        )
        grad_input = _input_gradient(h1, row1, x, weight1, input_norm1) if ctx.needs_input_grad[0] else None
        grad_weight1 = _weight_gradient(h1, x, weight1, weight_norm1) if ctx.needs_input_grad[1] else None
        return grad_input, grad_weight1, grad_weight2, None, None


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

    def weight_norms(self) -> torch.Tensor:
        """``|w|`` per output row, shape (out_features, 1)."""
        return torch.linalg.vector_norm(self.weight, dim=-1, keepdim=True).clamp_min(self.eps)

    def derived_weight(self, name: str, compute: Callable[[], object]):
        """``compute()`` (a function of the weight); kept between calls while the weight is a constant.

        That is in evaluation without autograd, and in explanations that need no parameter gradient, unless the
        forward pass is being captured into a graph (see :func:`cached_derivation`); ``train()`` drops what was kept.
        """
        constant = self.input_gradient_only or not torch.is_grad_enabled()
        if constant and (self.input_gradient_only or not self.training) and not _is_tracing():
            return cached_derivation(self, name, (self.weight,), compute)
        with torch.set_grad_enabled(not constant):
            return compute()

    def _inverse_weight_norms(self) -> torch.Tensor:
        """``1 / |w|`` per output, shape (out_features,), without a graph (the B = 2 unit's detached factor)."""
        return self.derived_weight("inverse_norms", lambda: _inverse_norms(self.weight, self.eps))

    def train(self, mode: bool = True) -> "BcosLinear":
        self.__dict__.pop("_derived_tensors", None)
        return super().train(mode)

    def forward(self, x: torch.Tensor, activation: "GatedActivation | None" = None) -> torch.Tensor:
        """The unit's output; with ``activation`` (an MLP's GELU), ``activation(output)``, fused with the B = 2 unit
        without a bias where that saves passes over the output: in inference and in explanations."""
        if self.b == 1:
            out = linear(x, self.weight, self.bias)
        elif self.b == 2:
            recorded = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
            if recorded and not self.detach_dynamic:
                out = _BcosSquareLinear.apply(x, self.weight, self.eps)
            else:
                # each module keeps its own switch: fused only where the activation is in the same mode as the unit
                fused = activation is not None and self.bias is None
                fused = fused and activation.detach_dynamic == self.detach_dynamic
                out = self._square_unit(x, recorded, activation if fused else None)
                if fused:
                    return out
            out = out if self.bias is None else out + self.bias
        else:
            input_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(self.eps)
            out = self.scale_linear_output(linear(x, self.weight), input_norm)
        # the output is a fresh temporary: the activation may overwrite it where autograd keeps no copy
        return out if activation is None else activation(out, inplace=True)

    def _square_unit(
        self, x: torch.Tensor, recorded: bool, activation: "GatedActivation | None" = None
    ) -> torch.Tensor:
        """The B = 2 unit (then ``activation``) as ``(w . x)`` times a factor computed without a graph: inference (in
        place) and explanation mode, where the factor, ``|cos|`` times the activation's gate, is detached and the
        gradient is ``factor * w``.

        Only built-in ops are differentiated, so that a gradient with respect to the input alone skips the weight's
        matmul and an explanation can be differentiated again. One factor for unit and activation is one full-size
        buffer kept for the backward pass, and one product in it, instead of two.
        """
        weight = self.weight.detach() if self.input_gradient_only else self.weight
        inverse_input_norm = _inverse_norms(x, self.eps, keepdim=True)
        y = linear(x, weight)
        if not recorded:
            # without a graph a detached gate changes nothing: the activation's value is all there is
            then = None if activation is None else activation.apply_
            return signed_square_(y, inverse_input_norm, self._inverse_weight_norms(), then=then)
        with torch.no_grad():
            factor = _dynamic_factor(y, inverse_input_norm, self._inverse_weight_norms(), activation)
        return y.mul_(factor)  # the matmul's backward keeps its inputs, not y: y may be overwritten

    def scale_linear_output(self, linear: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
        """The B-cos unit from its plain linear output ``w . x`` and the input norm ``||x||`` (shape (..., 1)).

        Lets a caller that computes ``w . x`` and ``||x||`` more cheaply than from ``x`` itself (the patch embedding
        of ``[x, 1 - x]``) share the unit's B-cos factor, its detaching in explanation mode and its bias.
        """
        if self.b == 1:
            out = linear
        else:
            abs_cos = linear.abs() / (input_norm.clamp_min(self.eps) * self.weight_norms().T)
            if self.b != 2:
                abs_cos = abs_cos.clamp_min(self.eps).pow(self.b - 1)
            if self.detach_dynamic:
                abs_cos = abs_cos.detach()
            out = linear * abs_cos
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, b={self.b}, bias={bias}"


class _LayerNormWithDetachedScale(torch.autograd.Function):
    """LayerNorm's value, and as gradient the map ``x -> (x - mean(x)) / std * weight`` with ``std`` held fixed.

    For explanations that differentiate the input alone: one fused LayerNorm kernel forward, and backward
    ``(g w - mean(g w)) / std`` in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
        out, _, inverse_std = torch.native_layer_norm(x, weight.shape, weight, bias, eps)
        ctx.save_for_backward(weight, inverse_std)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        weight, inverse_std = ctx.saved_tensors
        scaled = grad * weight
        return scaled.sub_(scaled.mean(dim=-1, keepdim=True)).mul_(inverse_std), None, None, None


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
        if self.input_gradient_only and torch.is_grad_enabled():
            return _LayerNormWithDetachedScale.apply(x, self.weight, self.bias, self.eps)
        # the mean subtraction is linear and keeps its gradient; the standard deviation is a detached factor
        _, _, inverse_std = torch.native_layer_norm(x.detach(), self.weight.shape, None, None, self.eps)
        out = (x - x.mean(dim=-1, keepdim=True)) * inverse_std * self.weight
        return out if self.bias is None else out + self.bias


class GatedActivation(DynamicModule):
    """A GELU-type activation written as ``x * g(x)``; explanation mode detaches the gate ``g(x)``."""

    def __init__(self, name: str):
        super().__init__()
        if name not in ACTIVATION_ALIASES:
            raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATION_ALIASES)}.")
        self.name = ACTIVATION_ALIASES[name]
        self.activation = _ACTIVATIONS[self.name]

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``g(x) = act(x) / x``, with ``g(0) = 1/2`` (the limit for every GELU type), computed without a graph.

        Read off the fused activation kernel: on a CPU the normal CDF itself (``torch.special.ndtr``) costs about
        fifteen times as much as ``F.gelu`` and was a tenth of a ViT explanation. ``x * g(x)`` equals ``act(x)`` up
        to float round-off.
        """
        with torch.no_grad():
            return self.activation(x).div_(x).nan_to_num_(nan=0.5)

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """``act(x)``; ``inplace=True`` may overwrite ``x`` (a caller's temporary) where autograd keeps no copy of it:
        without a recorded gradient, and in explanation mode."""
        if self.detach_dynamic:
            # the product's backward keeps the gate, not x: a caller's temporary x may be overwritten
            return x.mul_(self.gate(x)) if inplace else x * self.gate(x)
        if inplace and not torch.is_grad_enabled():
            return self.apply_(x)
        return self.activation(x)

    def apply_(self, x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """``act(x)`` written over ``x``, without autograd; ``scratch``, a buffer of ``x``'s shape that may be
        overwritten, spares quick GELU its temporary."""
        with torch.no_grad():
            if self.name != "quick_gelu":
                return torch.ops.aten.gelu_(x, approximate="tanh" if self.name == "gelu_tanh" else "none")
            gate = 1.702 * x if scratch is None else torch.mul(x, 1.702, out=scratch)
            return x.mul_(gate.sigmoid_())

    def extra_repr(self) -> str:
        return self.name


def eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, so that the attention probabilities can be returned.

    Same calling convention as transformers' attention functions: (batch, heads, length, head_dim) in, the output as
    (batch, length, heads, head_dim) and the (batch, heads, length, length) probabilities out. The softmax runs in
    float32 for half-precision inputs and in the input's precision otherwise (float64 stays exact).
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    # the queries are scaled rather than the (length x length) scores: fewer values whenever length > head_dim
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    softmax_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    probabilities = F.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities


class BcosSelfAttention(DynamicModule):
    """Multi-head self-attention; explanation mode detaches queries and keys, so ``A(x) V x`` is linear in ``x``.

    q, k and v are plain linear maps (q and k only shape the detached attention matrix); the output projection is a
    B-cos unit. They are three matmuls, as in the source: on a CPU one fused matmul was some 10% slower (its weight
    leaves the cache) and, in training, would copy the weights on every step. The attention itself is
    transformers' choice of ``config._attn_implementation`` ("sdpa" by default, "eager" to get the attention
    probabilities); detaching q and k works the same way for every implementation.
    """

    def __init__(self, hidden_size: int, num_heads: int, qk_bias: bool, bias: bool, b: float, config=None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}.")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qk_bias)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=qk_bias)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.o_proj = BcosLinear(hidden_size, hidden_size, bias=bias, b=b)

    @property
    def attn_implementation(self) -> str:
        """The attention function in use: the config's ``_attn_implementation``, "sdpa" without a config."""
        implementation = getattr(self.config, "_attn_implementation", None)
        return implementation or "sdpa"

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        first_tokens: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of every token to every token; with ``first_tokens``, of the first ``first_tokens`` tokens alone
        (queries from those, keys and values from all), output of shape (batch, first_tokens, width)."""
        batch, _, width = hidden_states.shape
        attending = hidden_states if first_tokens is None else hidden_states[:, :first_tokens]

        def project(projection: nn.Linear, tokens: torch.Tensor, constant: bool = False) -> torch.Tensor:
            weight, bias = projection.weight, projection.bias
            if constant:  # autograd then keeps no copy of the input for a weight gradient
                weight, bias = weight.detach(), None if bias is None else bias.detach()
            heads = (batch, tokens.shape[1], self.num_heads, self.head_dim)
            return linear(tokens, weight, bias).view(heads).transpose(1, 2)

        if self.detach_dynamic:
            # q and k only shape the detached attention matrix: computed without a graph, so that a backward pass
            # differentiates the value projection alone
            with torch.no_grad():
                query, key = project(self.q_proj, attending), project(self.k_proj, hidden_states)
            value = project(self.v_proj, hidden_states, constant=self.input_gradient_only)
        else:
            query = project(self.q_proj, attending)
            key, value = project(self.k_proj, hidden_states), project(self.v_proj, hidden_states)
        implementation = self.attn_implementation
        if implementation == "eager" or self.double_backward or self.detach_dynamic:
            # fused attention kernels have no second derivative, and their backward computes the gradients of q and
            # k too; with q and k detached the written-out attention is a fixed matrix times v, whose backward is one
            # matmul and differentiates again
            attention = eager_attention
        else:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        context, probabilities = attention(
            self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs
        )
        return self.o_proj(context.reshape(batch, attending.shape[1], width)), probabilities


class BcosMLP(nn.Module):
    """Two B-cos units around a gated activation."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str, bias: bool, b: float):
        super().__init__()
        self.fc1 = BcosLinear(hidden_size, intermediate_size, bias=bias, b=b)
        self.act = GatedActivation(activation)
        self.fc2 = BcosLinear(intermediate_size, hidden_size, bias=bias, b=b)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._trains_as_one(hidden_states):
            return _BcosSquareMLP.apply(hidden_states, self.fc1.weight, self.fc2.weight, self.fc1.eps, self.act.name)
        # fc1 applies the activation itself: fused with the B-cos unit where that saves passes over its output
        return self.fc2(self.fc1(hidden_states, activation=self.act))

    def _trains_as_one(self, hidden_states: torch.Tensor) -> bool:
        """Whether a recorded forward pass goes through :class:`_BcosSquareMLP`: both units B = 2 without biases,
        nothing detached, and no hooks on the three modules (they would not see their own calls)."""
        if not torch.is_grad_enabled():
            return False
        fc1, act, fc2 = self.fc1, self.act, self.fc2
        if not (isinstance(fc1, BcosLinear) and isinstance(act, GatedActivation) and isinstance(fc2, BcosLinear)):
            return False
        if not (fc1.b == fc2.b == 2 and fc1.bias is None and fc2.bias is None and fc1.eps == fc2.eps):
            return False
        if fc1.detach_dynamic or act.detach_dynamic or fc2.detach_dynamic:
            return False
        if any(getattr(m, name) for m in (fc1, act, fc2) for name in MODULE_HOOKS):
            return False
        return hidden_states.requires_grad or fc1.weight.requires_grad or fc2.weight.requires_grad


class BcosEncoderLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block: ``h + attn(ln(h))`` then ``h + mlp(ln(h))``.

    A ``GradientCheckpointingLayer``: ``model.gradient_checkpointing_enable()`` recomputes it in the backward pass.
    """

    def __init__(self, config):
        super().__init__()
        self.layernorm_before = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.attention = BcosSelfAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.attention_qk_bias,
            config.use_bias,
            config.b,
            config=config,
        )
        self.layernorm_after = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.mlp = BcosMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.use_bias, config.b)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        first_tokens: int | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The block's output tokens; with ``first_tokens``, those of the first ``first_tokens`` tokens alone, which
        still attend to every token (what a class-token head reads of the last block)."""
        attended, _ = self.attention(
            self.layernorm_before(hidden_states), attention_mask, first_tokens=first_tokens, **kwargs
        )
        residual = hidden_states if first_tokens is None else hidden_states[:, :first_tokens]
        if torch.is_grad_enabled():
            hidden_states = residual + attended
            return hidden_states + self.mlp(self.layernorm_after(hidden_states))
        # without autograd each sum overwrites the sublayer's fresh output rather than allocate another
        hidden_states = attended.add_(residual)
        return self.mlp(self.layernorm_after(hidden_states)).add_(hidden_states)


def _encoded_patch_norms(patches: torch.Tensor, eps: float) -> torch.Tensor:
    """``|[p, 1 - p]|`` per patch of ``x`` (shape (..., 1)): ``n - 2 sum p + 2 sum p^2`` under the root, two
    reductions and no copy of the patches."""
    squared = patches.shape[-1] - 2 * patches.sum(dim=-1, keepdim=True)
    squared = squared + 2 * torch.linalg.vector_norm(patches, dim=-1, keepdim=True).square()
    return squared.clamp_min(eps**2).sqrt()


class _BcosSquarePixelPatches(torch.autograd.Function):
    """The B = 2 patch embedding of ``[x, 1 - x]`` from the patches ``p`` of ``x`` alone, with a backward written out.

    With the weight split as ``[W_x, W_(1-x)]``: ``w . [p, 1 - p] = (W_x - W_(1-x)) p + W_(1-x) 1``. For ``h``,
    ``r`` and ``c`` as in :class:`_BcosSquareLinear` and ``A = h^T p``: ``dW_x = A - c W_x / |w|^2``,
    ``dW_(1-x) = (h summed over patches) - A - c W_(1-x) / |w|^2`` and ``dp = h (W_x - W_(1-x)) - r (2p - 1) / |e|^2``.
    Autograd through the two halves of the weight and its norm wrote several copies of the 6-channel weight,
    some zero-filled, per training step.
    """

    @staticmethod
    def forward(ctx, patches: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        n = patches.shape[-1]
        inverse_patch_norm = _encoded_patch_norms(patches, eps).reciprocal_()
        inverse_weight_norm = _inverse_norms(weight, eps)
        projected = linear(patches, weight[:, :n] - weight[:, n:], weight[:, n:].sum(dim=1))
        out = signed_square_(projected, inverse_patch_norm, inverse_weight_norm)
        ctx.save_for_backward(patches, weight, out, inverse_patch_norm, inverse_weight_norm)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        patches, weight, out, inverse_patch_norm, inverse_weight_norm = ctx.saved_tensors
        n = patches.shape[-1]
        h, row = _backward_terms(out, grad, 4 * inverse_patch_norm, inverse_weight_norm)
        grad_patches = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_patches = linear(h, (weight[:, :n] - weight[:, n:]).t())
            grad_patches = grad_patches.addcmul_(2 * patches - 1, row * inverse_patch_norm.square(), value=-1)
        if ctx.needs_input_grad[1]:
            flat_h = h.reshape(-1, h.shape[-1])
            across_patches = torch.matmul(flat_h.T, patches.reshape(-1, n))
            grad_weight = torch.cat([across_patches, flat_h.sum(dim=0)[:, None] - across_patches], dim=1)
            grad_weight = _remove_half_projection_(grad_weight, weight, inverse_weight_norm[:, None])
        return grad_patches, grad_weight, None


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

    def _patches(self, images: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"This model cuts images into {p}x{p} patches and cannot take a {height}x{width} image. Resize it "
                "to the model's size with its image processor (AutoImageProcessor.from_pretrained(<model>), saved "
                "beside the weights), or to any multiple of the patch size with interpolate_pos_encoding=True."
            )
        patches = images.reshape(batch, channels, height // p, p, width // p, p)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """Tokens of an encoded ``[x, 1 - x]`` image (what explanations differentiate)."""
        return self.projection(self._patches(encoded))

    def _pixel_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_x - W_(1-x), W_(1-x) 1)``, the patch embedding as an affine map of ``x``."""
        projection = self.projection

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            n = projection.in_features // 2
            weight_x, weight_inverse = projection.weight[:, :n], projection.weight[:, n:]
            return weight_x - weight_inverse, weight_inverse.sum(dim=1)

        return projection.derived_weight("pixels", compute)

    def forward_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The same tokens computed from ``x`` alone, without building the 6-channel encoding.

        With the weight split as ``[W_x, W_(1-x)]``: ``W [x, 1 - x] = (W_x - W_(1-x)) x + W_(1-x) 1``, and the
        patch norm is ``||[x, 1 - x]||^2 = n - 2 sum x + 2 sum x^2`` over the patch's ``n`` values (two reductions,
        no copy). Half the matmul of :meth:`forward`, and equal to it up to float round-off.
        """
        patches = self._patches(pixel_values)
        projection = self.projection
        recorded = torch.is_grad_enabled() and (patches.requires_grad or projection.weight.requires_grad)
        if projection.b == 2 and recorded and not projection.detach_dynamic:
            out = _BcosSquarePixelPatches.apply(patches, projection.weight, projection.eps)
            return out if projection.bias is None else out + projection.bias
        projected = linear(patches, *self._pixel_parameters())
        if projection.b == 1:
            return projected if projection.bias is None else projected + projection.bias
        norm = _encoded_patch_norms(patches, projection.eps)
        if projection.b != 2 or recorded:
            return projection.scale_linear_output(projected, norm)
        # (w . e) |w . e| / (|w| |e|), in place
        out = signed_square_(projected, norm.reciprocal_(), projection._inverse_weight_norms())
        return out if projection.bias is None else out + projection.bias
