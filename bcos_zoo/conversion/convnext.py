"""Exact ports of the B-cos ConvNeXts released with the authors' ``bcos`` package (B-cos v2).

The package's entries ``convnext_tiny`` / ``convnext_base`` normalise with a position norm (LayerNorm over the channels
at each position, without its bias: the experiments' "pn"), ``convnext_tiny_bnu`` / ``convnext_base_bnu`` with an
uncentred BatchNorm without bias ("bnu"). Its B-cos convolutions normalise their weights to unit norm in every forward
pass, and its logit layer divides by an optional temperature and adds a logit bias.

A ``BcosConvNextForImageClassification`` computes the same function: each unit-norm weight ``w / ||w||`` is stored
scaled by the ``s`` for which our B-cos convolution, whose weight norm carries the norm guard
(``sqrt(||w||^2 + NORM_EPS)``), gives exactly the package's output; the temperature is folded into the classifier's
weight the same way (a B = 2 unit is homogeneous of degree one in its weight).
"""

import math

import torch
from torch import nn

from ..modeling import BcosConvNextConfig, BcosConvNextForImageClassification
from ..modeling.bcos_layers import NORM_EPS
from .bcos_package import processor_fields
from .common import bcos_package_labels


SUPPORTED_CONVNEXT_SOURCES = (
    "none: the B-cos ConvNeXts are the bcos package's models (convnext_tiny, convnext_base and their _bnu variants), "
    "ported exactly with bcos_zoo.from_bcos; standard ConvNeXts are not B-cosified"
)
SUPPORTED_BCOS_CONVNEXTS = (
    "bcos.models.convnext.BcosConvNeXt with B-cos convolutions (B = 1 or 2, no MaxOut) and position norms "
    "(DetachablePositionNorm2d) or uncentred BatchNorms without bias (BatchNormUncentered2d)"
)


def bcosify_convnext(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """The family's ``from_pretrained_standard`` hook: there is no standard ConvNeXt conversion."""
    raise ValueError(f"{cls.__name__} has no standard sources. Supported: {SUPPORTED_CONVNEXT_SOURCES}.")


def _kind(module: nn.Module) -> str:
    return type(module).__name__


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"Cannot port this bcos ConvNeXt: {what}. Supported: {SUPPORTED_BCOS_CONVNEXTS}.")


def stored_scale(b: float, gain: float = 1.0) -> float:
    """The ``s`` for which our B-cos unit with weight ``s * w_hat`` (``||w_hat|| = 1``) is ``gain`` times the
    package's unit with weight ``w_hat``.

    At B = 2 ours is ``s^2 / sqrt(s^2 + NORM_EPS)`` times the package's, so ``u = s^2`` solves
    ``u^2 = gain^2 (u + NORM_EPS)``; at B = 1 both are linear and ``s = gain``.
    """
    if b == 1:
        return gain
    g2 = gain * gain
    return math.sqrt((g2 + math.sqrt(g2 * g2 + 4 * g2 * NORM_EPS)) / 2)


class _Porter:
    """Collects the state dict of the port while checking each module of the package's model."""

    def __init__(self, b: float):
        self.b = b
        self.state: dict[str, torch.Tensor] = {}
        self.norms: set[tuple] = set()

    def conv(self, name: str, conv: nn.Module, gain: float = 1.0) -> None:
        _require(_kind(conv) == "BcosConv2d", f"{name} is a {_kind(conv)}, not a BcosConv2d")
        _require(conv.max_out == 1, f"{name} uses MaxOut ({conv.max_out})")
        _require(float(conv.b) == self.b, f"{name} has B = {conv.b}, another layer B = {self.b}")
        _require(conv.linear.padding_mode == "zeros", f"{name} pads with {conv.linear.padding_mode!r}")
        weight = conv.linear.weight.detach().double()
        unit = weight / torch.linalg.vector_norm(weight, dim=(1, 2, 3), keepdim=True)
        self.state[f"{name}.weight"] = unit * stored_scale(self.b, gain)

    def norm(self, name: str, norm: nn.Module) -> None:
        kind = _kind(norm)
        _require(norm.weight is not None, f"{name} has no affine weight")
        if kind == "DetachablePositionNorm2d":
            self.norms.add(("position", norm.eps, norm.bias is not None))
            if norm.bias is not None:
                self.state[f"{name}.bias"] = norm.bias.detach()
        elif kind == "BatchNormUncentered2d":
            _require(norm.bias is None, f"{name} is an uncentred BatchNorm with a bias")
            _require(norm.running_var is not None, f"{name} tracks no running variance")
            self.norms.add(("batch", norm.eps, False))
            self.state[f"{name}.running_var"] = norm.running_var.detach()
            self.state[f"{name}.num_batches_tracked"] = norm.num_batches_tracked.detach()
        else:
            _require(False, f"{name} is a {kind}")
        self.state[f"{name}.weight"] = norm.weight.detach()


def port_bcos_convnext(model: nn.Module) -> BcosConvNextForImageClassification:
    """The ``BcosConvNextForImageClassification`` that computes exactly what a ``bcos`` package ConvNeXt computes
    (in evaluation; see the module docstring for how)."""
    _require(_kind(model) == "BcosConvNeXt", f"a {_kind(model)} is not a BcosConvNeXt")
    features = list(model.features)
    _require(len(features) >= 3 and len(features) % 2 == 1, f"unexpected features of {len(features)} modules")
    stem_conv, stem_norm, block_lists, downsamplings = features[0], features[1], features[2::2], features[3::2]
    _require(all(_kind(block) == "CNBlock" for blocks in block_lists for block in blocks), "a stage holds other blocks")
    _require(
        stem_conv.linear.kernel_size == stem_conv.linear.stride and stem_conv.linear.padding == (0, 0),
        "the stem convolution's patches overlap",
    )
    porter = _Porter(float(stem_conv.b))
    _require(porter.b in (1.0, 2.0), f"B = {porter.b}")
    prefix = "bcos_convnext."
    porter.conv(prefix + "embeddings.patch_embeddings", stem_conv)
    porter.norm(prefix + "embeddings.norm", stem_norm)
    blocks_done = []
    for i, blocks in enumerate(block_lists):
        stage = f"{prefix}encoder.stages.{i}."
        if i > 0:
            norm, conv = downsamplings[i - 1]
            porter.norm(stage + "downsampling_layer.0", norm)
            porter.conv(stage + "downsampling_layer.1", conv)
        for j, block in enumerate(blocks):
            dwconv, norm, pwconv1, pwconv2 = block.block
            porter.conv(f"{stage}layers.{j}.dwconv", dwconv)
            porter.norm(f"{stage}layers.{j}.norm", norm)
            porter.conv(f"{stage}layers.{j}.pwconv1", pwconv1)
            porter.conv(f"{stage}layers.{j}.pwconv2", pwconv2)
            porter.state[f"{stage}layers.{j}.layer_scale_parameter"] = block.layer_scale.detach().flatten()
            blocks_done.append(block)
    head_norm, head_conv = model.classifier
    porter.norm(prefix + "norm", head_norm)
    temperature = model.logit_layer.logit_temperature
    porter.conv("classifier", head_conv, gain=1.0 if temperature is None else 1.0 / float(temperature))
    _require(len(porter.norms) == 1, f"the normalisations differ: {sorted(porter.norms)}")
    ((norm_type, eps, use_bias),) = porter.norms
    _require(not use_bias or norm_type == "position", "biased uncentred BatchNorms")
    num_classes = head_conv.out_channels
    logit_bias = model.logit_layer.logit_bias
    config = BcosConvNextConfig(
        num_channels=stem_conv.in_channels // 2,
        patch_size=stem_conv.linear.kernel_size[0],
        hidden_sizes=[blocks[0].layer_scale.numel() for blocks in block_lists],
        depths=[len(blocks) for blocks in block_lists],
        norm_type=norm_type,
        layer_norm_eps=eps if norm_type == "position" else 1e-6,
        batch_norm_eps=eps if norm_type == "batch" else 1e-5,
        drop_path_rate=float(blocks_done[-1].stochastic_depth.p),
        b=porter.b,
        use_bias=use_bias,
        logit_bias=0.0 if logit_bias is None else float(logit_bias),
        id2label=bcos_package_labels(num_classes),
        **(processor_fields(model) if hasattr(model, "transform") else {}),  # an entry's test transform
    )
    dtype = next(model.parameters()).dtype
    port = BcosConvNextForImageClassification(config).to(dtype)
    expected = port.state_dict()
    state = dict(porter.state)
    if use_bias:  # the package's convolutions have no biases: ours are zero
        state.update({k: torch.zeros_like(v) for k, v in expected.items() if k.endswith(".bias") and k not in state})
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    _require(not missing and not unexpected, f"weights without counterpart ({missing[:4]}, {unexpected[:4]})")
    port.load_state_dict(state, strict=True)
    return port.eval()
