"""Faster forms of reference computations, each behind its own switch.

Each function returns what the reference layer computes (up to round-off) in fewer passes over memory; a layer asks
:func:`use_fast_path` first, so the reference code is what a reader sees first. ``BCOS_FAST_PATHS=0`` switches all
off (read at import), :func:`set_fast_paths` one by one; the benchmarks' ``--reference`` shows what each pays.
Hub-facing: torch only.
"""

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F


_SWITCHES = {
    "square_unit": True,  # the B = 2 unit outside explanation mode
    "conv_norm_act": True,  # a B = 2 convolution, BatchNorm and ReLU in evaluation, in place
    "residual_in_place": True,  # a residual block's sum and ReLU in evaluation, in place
}
if os.environ.get("BCOS_FAST_PATHS", "1") == "0":
    _SWITCHES = dict.fromkeys(_SWITCHES, False)


def use_fast_path(name: str, x: torch.Tensor) -> bool:
    """Whether the fast path ``name`` is switched on and ``x`` is on the CPU, the one device where each was measured
    to pay; on a GPU they did not (an H200 ran a ResNet-50 explanation 24% slower with them), so the reference runs."""
    return _SWITCHES[name] and x.device.type == "cpu"


@contextlib.contextmanager
def set_fast_paths(enabled: bool | None = None, **switches: bool) -> Iterator[None]:
    """Within the block, switch every fast path to ``enabled`` and then the named ones to their values."""
    unknown = set(switches) - set(_SWITCHES)
    if unknown:
        raise ValueError(f"Unknown fast paths {sorted(unknown)}; the fast paths are {sorted(_SWITCHES)}.")
    previous = dict(_SWITCHES)
    if enabled is not None:
        _SWITCHES.update(dict.fromkeys(_SWITCHES, enabled))
    _SWITCHES.update(switches)
    try:
        yield
    finally:
        _SWITCHES.update(previous)


def square_linear(x: torch.Tensor, weight: torch.Tensor, input_norm: torch.Tensor, weight_norm: torch.Tensor):
    """The B = 2 unit ``(w . x) |w . x| / (||w|| ||x||)``, its factor not detached.

    Without autograd the factor is applied in place, with no copy of the weight (resident memory would grow by it).
    With autograd, ``y = (x / sqrt(||x||)) . (w / sqrt(||w||))`` and the unit is ``y |y|``: the norms scale the
    matmul's operands instead of its wider output, and autograd keeps fewer output-sized tensors.
    """
    if not torch.is_grad_enabled():
        out = F.linear(x, weight)
        return out.mul_(out.abs().div_(input_norm).div_(weight_norm))
    out = F.linear(x * input_norm.rsqrt(), weight * weight_norm.rsqrt()[:, None])
    return out * out.abs()


def square_conv2d(conv, x: torch.Tensor, patch_norms: torch.Tensor, weight_norm: torch.Tensor) -> torch.Tensor:
    """The B = 2 convolution of :class:`BcosConv2d` without autograd, in place as :func:`square_linear`."""
    out = F.conv2d(x, conv.applied_weight(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.mul_(out.abs().div_(patch_norms).div_(weight_norm.view(1, -1, 1, 1)))


def square_conv_norm_act(block, x: torch.Tensor) -> torch.Tensor:
    """``relu(batch_norm(bcos_conv(x)))`` of a :class:`BcosConvNormAct` at B = 2 in evaluation, without autograd:
    BatchNorm's per-channel scale joins the B-cos factor; its shift and the ReLU run in place."""
    conv, norm = block.convolution, block.normalization
    scale, shift = norm.scale_and_shift(norm.running_var, norm.running_mean)
    out = F.conv2d(x, conv.applied_weight(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = out.mul_(out.abs().div_(conv.patch_norms(x)).mul_((scale / conv.weight_norm()).view(1, -1, 1, 1)))
    if shift is not None:
        out = out.add_(shift.view(1, -1, 1, 1))
    return out.relu_() if block.activation else out


def residual_relu_(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(branch + shortcut)`` written over ``branch`` (a block's fresh output), without autograd."""
    return branch.add_(shortcut).relu_()
