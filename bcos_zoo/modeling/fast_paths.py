"""Faster forms of reference computations, each behind its own switch (``BCOS_FAST_PATHS=0`` turns all off at import,
:func:`set_fast_paths` one by one). Each returns what the reference layer computes, up to round-off, in fewer passes
over memory; a layer asks :func:`use_fast_path` first. What each pays is measured by the benchmarks of the bcos_zoo
repository (``scripts/benchmark*.py --reference``, docs/speed.md).
"""

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F


_SWITCHES = {
    "square_unit": True,  # the B = 2 unit outside explanation mode (a convolution only without autograd)
    "conv_norm_act": True,  # a B = 2 convolution, BatchNorm and ReLU in evaluation without autograd, in place
    "residual_in_place": True,  # a residual block's sum and ReLU without autograd, in place
}
if os.environ.get("BCOS_FAST_PATHS", "1") == "0":
    _SWITCHES = dict.fromkeys(_SWITCHES, False)


def use_fast_path(name: str, x: torch.Tensor) -> bool:
    """Whether fast path ``name`` is on and ``x`` is on the CPU, the one device where each was measured to pay (on a
    GPU they did not; docs/speed.md), outside autocast (whose low-precision products the reference path lifts to the
    factor's float32, and an in-place factor would not), and not while ``torch.jit.trace`` records (which checks its
    graph against one recorded without autograd, where the fast paths take another form)."""
    return _SWITCHES[name] and x.is_cpu and not (torch.is_autocast_enabled("cpu") or torch.jit.is_tracing())


@contextlib.contextmanager
def set_fast_paths(enabled: bool | None = None, **switches: bool) -> Iterator[None]:
    """Within the block, switch every fast path to ``enabled`` and then the named ones to their values, for the whole
    process (a switch for comparing with the reference path, not a per-thread setting)."""
    if unknown := set(switches) - set(_SWITCHES):
        raise ValueError(f"Unknown fast paths {sorted(unknown)}; the fast paths are {sorted(_SWITCHES)}.")
    previous = dict(_SWITCHES)
    _SWITCHES.update({} if enabled is None else dict.fromkeys(_SWITCHES, enabled), **switches)
    try:
        yield
    finally:
        _SWITCHES.update(previous)


def square_linear(x: torch.Tensor, weight: torch.Tensor, input_norm: torch.Tensor, weight_norm: torch.Tensor):
    """The B = 2 unit ``(w . x) |w . x| / (||w|| ||x||)``. Without autograd the factor is applied in place (no copy
    of the weight); with autograd the norms scale the matmul's operands, ``y = (x / sqrt(||x||)) . (w / sqrt(||w||))``
    and the unit is ``y |y|``, so autograd keeps fewer output-sized tensors."""
    if not torch.is_grad_enabled():
        out = F.linear(x, weight)
        return out.mul_(out.abs().div_(input_norm).div_(weight_norm))
    out = F.linear(x * input_norm.rsqrt(), weight * weight_norm.rsqrt()[:, None])
    return out * out.abs()


def square_conv2d(conv, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """A B = 2 ``BcosConv2d`` without autograd, in place as :func:`square_linear`, its output channels times
    ``scale`` (a following BatchNorm's, joined to the B-cos factor)."""
    out = F.conv2d(x, conv.applied_weight(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    channel_scale = 1 / conv.weight_norm() if scale is None else scale / conv.weight_norm()
    return out.mul_(out.abs().div_(conv.patch_norms(x)).mul_(channel_scale.view(1, -1, 1, 1)))


def square_conv_norm_act(block, x: torch.Tensor) -> torch.Tensor:
    """``relu(batch_norm(bcos_conv(x)))`` of a ``BcosConvNormAct`` at B = 2 in evaluation, without autograd:
    BatchNorm's scale joins the B-cos factor; its shift and the ReLU run in place."""
    norm = block.normalization
    scale, shift = norm.scale_and_shift(norm.running_var, norm.running_mean)
    out = square_conv2d(block.convolution, x, scale)
    if shift is not None:
        out = out.add_(shift.view(1, -1, 1, 1))
    return out.relu_() if block.activation else out


def residual_relu_(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(branch + shortcut)`` written over ``branch`` (a block's fresh output), without autograd."""
    return branch.add_(shortcut).relu_()
