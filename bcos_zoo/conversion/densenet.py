"""B-cosification of standard DenseNets (DenseNet-121/161/169/201) from timm or torchvision, exactly.

The two conversions are the ResNet's (see :mod:`bcos_zoo.conversion.resnet`): ``bias="keep"`` computes the source's
logits at ``b=1``; ``bias="remove"`` drops every constant, replaces the stem max-pool by average pooling and applies
the classifier before global average pooling. The transitions' 2x2 average pooling is linear and stays in both.
"""

import re

import torch
from torch import nn

from ..modeling import BcosDenseNetConfig, BcosDenseNetForImageClassification
from .bcos_package import build_port, read_bcos_cnn, torchvision_port_fields
from .common import load_timm_folder, read_json, resolve_folder, standard_labels
from .resnet import (
    StandardCNN,
    build_bcos_cnn,
    check_plain_modules,
    is_from,
    module_geometry,
)


SUPPORTED_DENSENET_SOURCES = (
    "a timm DenseNet with the plain 7x7 stem (densenet121/161/169/201; e.g. timm/densenet121.tv_in1k) as a folder "
    "or Hub id in timm's layout (config.json with 'architecture', model.safetensors) or in memory, or an in-memory "
    "torchvision densenet121/161/169/201 (torchvision.models.DenseNet)"
)
TIMM_DENSENET_ARCHITECTURE = re.compile(r"^densenet(121|161|169|201)$")
STEM_WEIGHT = "embedder.stem.convolution.weight"


def _densenet_name(key: str) -> str:
    """B-cos name of a torchvision/timm DenseNet parameter (``key`` must be one of the known ones)."""
    if key.startswith("classifier."):
        return key
    match = re.match(r"^features\.(conv0|norm0|norm5)\.(.+)$", key)
    if match:
        part, rest = match.groups()
        names = {"conv0": "embedder.stem.convolution", "norm0": "embedder.stem.normalization", "norm5": "norm"}
        return f"{names[part]}.{rest}"
    match = re.match(r"^features\.denseblock(\d+)\.denselayer(\d+)\.((?:norm|conv)[12])\.(.+)$", key)
    if match:
        block, layer, part, rest = match.groups()
        return f"stages.{int(block) - 1}.layers.{int(layer) - 1}.{part}.{rest}"
    match = re.match(r"^features\.transition(\d+)\.(norm|conv)\.(.+)$", key)
    if match:
        block, part, rest = match.groups()
        return f"stages.{int(block) - 1}.transition.{part}.{rest}"
    raise KeyError(key)


def from_densenet_state(
    sd: dict[str, torch.Tensor], mean, std, eps: float, pretrained_cfg: dict | None = None
) -> StandardCNN:
    """Read a DenseNet in torchvision's naming (which timm shares); the architecture follows from the weight shapes,
    the class names from a timm model's ``pretrained_cfg`` (see :func:`~.common.standard_labels`)."""
    supported = SUPPORTED_DENSENET_SOURCES
    if "classifier.weight" not in sd:
        raise ValueError(f"This DenseNet has no classification head. Supported: {supported}.")
    if "features.conv0.weight" not in sd:
        raise ValueError(f"This DenseNet has no single 7x7 stem convolution (a deep stem?). Supported: {supported}.")
    state, unknown = {}, []
    for key, value in sd.items():
        try:
            state[_densenet_name(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(f"Weights {sorted(unknown)[:6]} have no counterpart in a DenseNet. Supported: {supported}.")
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^features\.denseblock(\d+)\.", k))})
    if not blocks or blocks != list(range(1, len(blocks) + 1)):
        raise ValueError(f"Unexpected DenseNet blocks {blocks}. Supported: {supported}.")
    block_config = [
        len({m.group(1) for k in sd if (m := re.match(rf"^features\.denseblock{i}\.denselayer(\d+)\.", k))})
        for i in blocks
    ]
    growth_rate = sd["features.denseblock1.denselayer1.conv2.weight"].shape[0]
    bottleneck = sd["features.denseblock1.denselayer1.conv1.weight"].shape[0]
    if bottleneck % growth_rate:
        raise ValueError(f"Bottleneck width {bottleneck} is not a multiple of the growth rate {growth_rate}.")
    num_classes = sd["classifier.weight"].shape[0]
    architecture = dict(
        num_channels=sd["features.conv0.weight"].shape[1],
        num_init_features=sd["features.conv0.weight"].shape[0],
        growth_rate=growth_rate,
        block_config=block_config,
        bn_size=bottleneck // growth_rate,
        batch_norm_eps=eps,
        id2label=standard_labels(num_classes, pretrained_cfg),
    )
    return StandardCNN(architecture, state, mean, std, rename=_densenet_name, stem_weight=STEM_WEIGHT)


def load_standard_densenet(source) -> StandardCNN:
    """Read a supported standard DenseNet from a module, a folder or a Hub id."""
    if isinstance(source, nn.Module):
        if not (is_from(source, "timm", "DenseNet") or is_from(source, "torchvision", "DenseNet")):
            raise ValueError(
                f"Cannot B-cosify a {type(source).__name__} as a DenseNet. Supported: {SUPPORTED_DENSENET_SOURCES}."
            )
        check_plain_modules(source, SUPPORTED_DENSENET_SOURCES)
        cfg = getattr(source, "pretrained_cfg", None) or {}
        eps = source.features.norm0.eps
        standard = from_densenet_state(source.state_dict(), cfg.get("mean"), cfg.get("std"), eps, cfg)
        standard.module = source
        standard.architecture.update(module_geometry(source))
        return standard
    folder = resolve_folder(source, SUPPORTED_DENSENET_SOURCES)
    config = read_json(folder / "config.json")
    if config is None or "architecture" not in config:
        kind = "no config.json" if config is None else f"a {config.get('model_type')!r} model"
        raise ValueError(f"{folder} holds {kind}. Supported sources: {SUPPORTED_DENSENET_SOURCES}.")
    return load_standard_densenet(
        load_timm_folder(folder, config, SUPPORTED_DENSENET_SOURCES, TIMM_DENSENET_ARCHITECTURE)
    )


def bcosify_densenet(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` (a B-cos DenseNet) from a standard DenseNet; see ``from_pretrained_standard``."""
    standard = load_standard_densenet(source)
    return build_bcos_cnn(
        cls, BcosDenseNetConfig, standard, b, bias, image_mean, image_std, overrides, SUPPORTED_DENSENET_SOURCES
    )


BCOS_DENSENET_ENTRIES = ("densenet121", "densenet161", "densenet169", "densenet201", "densenet121_long")
SUPPORTED_BCOS_DENSENETS = (
    "the bcos package's ImageNet B-cos DenseNets (entries " + ", ".join(BCOS_DENSENET_ENTRIES) + ")"
)


def port_bcos_densenet(model: nn.Module) -> BcosDenseNetForImageClassification:
    """The B-cos DenseNet that computes exactly what a ``bcos`` package ``BcosDenseNet`` computes (see ``from_bcos``).

    The package's DenseNets are torchvision's layout with every convolution (the classifier included) a B-cos
    convolution with unit-norm weights, uncentred BatchNorm without bias, no ReLU anywhere (not after the final norm
    either), 3x3 stride-2 average pooling after the stem, the classifier before global average pooling and the logit
    bias ``-log(C - 1)``.
    """
    package = read_bcos_cnn(model, "BcosDenseNet", SUPPORTED_BCOS_DENSENETS)
    standard = from_densenet_state(package.state, None, None, package.batch_norm_eps)
    fields = torchvision_port_fields(standard.architecture, package.state, "features.conv0.weight", "classifier.weight")
    cls, rename = BcosDenseNetForImageClassification, _densenet_name
    return build_port(cls, fields, package, model, standard.state, rename, SUPPORTED_BCOS_DENSENETS)
