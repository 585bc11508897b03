"""Faster forms of reference computations in ``bcos_layers``, each behind its own switch.

Every function here returns what the reference layer computes (up to float round-off), in fewer passes over memory.
A layer asks :func:`use_fast_path` before taking one, so the reference code stays the first thing a reader sees,
and the fast path is a short, separate detour. ``tests/test_fast_paths.py`` checks each against the reference for
every family, with the switches on and off. The environment variable ``BCOS_FAST_PATHS=0`` switches them all off
(read once, at import); :func:`set_fast_paths` switches them one by one. What each pays is printed by the
benchmark scripts (``--reference`` runs with them off).

Hub-facing: torch and sibling files only.
"""

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F


_SWITCHES = {
    # the B = 2 unit outside explanation mode: in place without autograd, norms on the operands with it
    "square_unit": True,
    # a B = 2 convolution, BatchNorm and ReLU in evaluation without autograd: BatchNorm's scale joins the B-cos factor
    "conv_norm_act": True,
    # a residual block's sum and ReLU without autograd, written over the branch's fresh output
    "residual_in_place": True,
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
    """The B = 2 unit ``(w . x) |w . x| / (||w|| ||x||)``, its factor not detached (norms guarded as the reference's).

    Without autograd the factor is formed and applied in place: four passes over the output and one buffer, where
    the reference takes four buffers and an output-sized product of the two norms. No copy of the weight is made (a
    freed weight-sized buffer stays with the allocator: resident memory would grow by the largest weight).

    With autograd, ``y = (x / sqrt(||x||)) . (w / sqrt(||w||))`` and the unit is ``y |y|``: the norms scale the matmul's
    operands instead of its (wider) output, and autograd records three elementwise products instead of five, keeping
    fewer output-sized tensors for the backward pass.
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
    """``relu(batch_norm(bcos_conv(x)))`` of a :class:`BcosConvNormAct` at B = 2 in evaluation, without autograd.

    BatchNorm's scale ``s`` is a per-channel factor like the B-cos unit's ``1 / ||w||``, so it joins the factor:
    ``s (w * x) |w * x| / (||w|| ||x_patch||)``; its shift (if any) and the ReLU run in place. Two passes over the
    output and one buffer fewer than convolution, BatchNorm and ReLU one after the other.
    """
    conv, norm = block.convolution, block.normalization
    scale, shift = norm.scale_and_shift(norm.running_var, norm.running_mean)
    out = F.conv2d(x, conv.applied_weight(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = out.mul_(out.abs().div_(conv.patch_norms(x)).mul_((scale / conv.weight_norm()).view(1, -1, 1, 1)))
    if shift is not None:
        out = out.add_(shift.view(1, -1, 1, 1))
    return out.relu_() if block.activation else out


def residual_relu_(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``relu(branch + shortcut)`` written over ``branch`` (a block's fresh output), without autograd: no buffer
    and one pass instead of two of each."""
    return branch.add_(shortcut).relu_()
