"""B-cosification of standard ResNets: read a transformers, timm or torchvision ResNet and map its weights exactly.

Two conversions (``bias`` argument):

* ``"keep"``: exact. The source's normalisation folds into the stem convolution, BatchNorm keeps its inference form
  (scale and shift), max-pooling stays, the classifier reads the averaged features. At ``b=1`` the logits are the
  source's.
* ``"remove"`` (the B-cosification paper's recipe): every constant goes. BatchNorm only divides by its standard
  deviation (times its weight), the stem max-pool becomes 3x3 stride-2 average pooling, the classifier is applied as
  a 1x1 B-cos convolution before global average pooling, and the logits get the bias ``-log(C - 1)``.

Every weight of the B-cos model comes from the source; anything that does not fit raises a ``ValueError`` naming
what is supported. A timm model is read by duck typing; a timm Hub folder is built by timm first (see
:func:`~.common.load_timm_folder`).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import ResNetForImageClassification
from transformers.utils import logging

from ..modeling import BcosResNetConfig, BcosResNetForImageClassification
from .bcos_package import build_port, read_bcos_cnn, torchvision_port_fields
from .common import (
    IMAGENET_NORMALIZATION,
    PIL_RESAMPLE,
    bcos_crop,
    fold_normalization,
    load_exactly,
    load_timm_folder,
    processor_resize,
    read_json,
    resolve_folder,
    source_normalization,
    source_processor,
    standard_labels,
    timm_resize,
)


logger = logging.get_logger(__name__)

SUPPORTED_RESNET_SOURCES = (
    "a transformers ResNetForImageClassification (microsoft/resnet-*); a timm ResNet with the plain 7x7 stem "
    "(resnet18/26/34/50/101/152/200, wide_resnet50_2/101_2, resnext*_*x*d; e.g. timm/resnet50.tv_in1k) as a "
    "folder or Hub id in timm's layout (config.json with 'architecture', model.safetensors) or in memory; or an "
    "in-memory torchvision resnet*/wide_resnet*/resnext* model"
)
TIMM_RESNET_ARCHITECTURE = re.compile(r"^(resnet\d+|wide_resnet\d+_2|resnext\d+_\d+x\d+d)$")
# Module types a torchvision/timm ResNet or DenseNet may hold; anything else (attention, blur pooling, other
# activations or norms) changes the function and is refused. Dropout, DropPath (stochastic depth) and DropBlock2d
# act in training only: in evaluation they pass their input on.
PLAIN_CNN_MODULES = {
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BasicBlock",
    "BatchNorm2d",
    "BatchNormAct2d",
    "Bottleneck",
    "Conv2d",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "DenseTransition",
    "DropBlock2d",
    "DropPath",
    "Dropout",
    "Flatten",
    "Identity",
    "Linear",
    "MaxPool2d",
    "ReLU",
    "ResNet",
    "SelectAdaptivePool2d",
    "Sequential",
    "_DenseBlock",
    "_DenseLayer",
    "_Transition",
}


@dataclass
class StandardCNN:
    """A source CNN in B-cos naming: config fields, weights, normalisation, and (in memory) the source module."""

    architecture: dict
    state: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    module: nn.Module | None = None
    # B-cos parameter name of each source parameter name, for checking an in-memory source's layer geometry
    rename: Callable[[str], str] | None = None
    stem_weight: str = ""


def is_from(module: nn.Module, package: str, class_name: str) -> bool:
    return type(module).__name__ == class_name and type(module).__module__.startswith(package + ".")


def check_plain_modules(module: nn.Module, supported: str) -> None:
    """Refuse a source holding layers the B-cos model has no counterpart for (by type, activation, pooling)."""
    for name, sub in module.named_modules():
        kind = type(sub).__name__
        if kind not in PLAIN_CNN_MODULES:
            raise ValueError(
                f"The source's {name or 'model'} is a {kind}, which is not supported. Supported: {supported}."
            )
        if kind == "BatchNormAct2d" and not (isinstance(sub.act, nn.ReLU) and isinstance(sub.drop, nn.Identity)):
            raise ValueError(f"The source's {name} is not BatchNorm + ReLU. Supported: {supported}.")
        if kind == "SelectAdaptivePool2d" and getattr(sub, "pool_type", "avg") not in ("avg", ""):
            raise ValueError(f"The source's global pooling is {sub.pool_type!r}, not 'avg'. Supported: {supported}.")


def check_geometry(standard: StandardCNN, model: nn.Module, supported: str) -> None:
    """Every convolution and BatchNorm of an in-memory source matches its B-cos counterpart in shape of operation
    (kernel, stride, padding, dilation, groups, eps), so that weights that fit also compute the same function."""
    if standard.module is None:
        return
    for name, sub in standard.module.named_modules():
        if not isinstance(sub, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        if isinstance(sub, (nn.MaxPool2d, nn.AvgPool2d)):
            expected = (3, 2, 1) if isinstance(sub, nn.MaxPool2d) else (2, 2, 0)
            found = tuple(v if isinstance(v, int) else v[0] for v in (sub.kernel_size, sub.stride, sub.padding))
            if found != expected or getattr(sub, "ceil_mode", False):
                raise ValueError(f"The source's {name} pools with (kernel, stride, padding) {found}, not {expected}.")
            continue
        target = model.get_submodule(standard.rename(f"{name}.weight").rsplit(".", 1)[0])
        if isinstance(sub, nn.Conv2d):
            ours = (target.kernel_size, target.stride, target.padding, target.dilation, target.groups)
            theirs = (tuple(sub.kernel_size), tuple(sub.stride), tuple(sub.padding), tuple(sub.dilation), sub.groups)
            if ours != theirs or sub.padding_mode != "zeros":
                raise ValueError(
                    f"The source's convolution {name} (kernel, stride, padding, dilation, groups) {theirs} differs "
                    f"from the standard layout {ours}. Supported: {supported}."
                )
        elif abs(sub.eps - target.eps) > 1e-12:
            raise ValueError(f"The source's {name} has BatchNorm eps {sub.eps}, the architecture {target.eps}.")


def processor_geometry(pretrained_cfg: dict | None = None, processor: dict | None = None) -> dict:
    """``image_size``, ``crop_pct`` and ``resample`` of the source's evaluation preprocessing, where its timm
    ``pretrained_cfg`` or transformers image processor states them (see :func:`~.common.processor_resize`).

    A CNN's processor always crops: a source that squashes the whole image gets ``crop_pct=1``, the same pixels for a
    square image."""
    fields = {**timm_resize(pretrained_cfg or {}), **processor_resize(processor or {})}
    if "crop_pct" in fields:
        fields["crop_pct"] = bcos_crop(BcosResNetConfig, fields["crop_pct"])
    return fields


def module_geometry(source: nn.Module) -> dict:
    """:func:`processor_geometry` of a timm or torchvision CNN in memory: a timm model's ``pretrained_cfg``; for a
    torchvision model the bilinear resize that torchvision evaluates all its ResNet and DenseNet weights with (its
    ``weights.transforms()``; the sizes are those of the V1 weights, the config's defaults)."""
    if type(source).__module__.startswith("torchvision."):
        return {"resample": PIL_RESAMPLE["bilinear"]}
    return processor_geometry(getattr(source, "pretrained_cfg", None) or {})


def load_standard_resnet(source) -> StandardCNN:
    """Read a supported standard ResNet from a module, a folder or a Hub id."""
    if isinstance(source, ResNetForImageClassification):
        return from_transformers_resnet(source)
    if isinstance(source, nn.Module):
        if not (is_from(source, "timm", "ResNet") or is_from(source, "torchvision", "ResNet")):
            raise ValueError(
                f"Cannot B-cosify a {type(source).__name__} as a ResNet. Supported: {SUPPORTED_RESNET_SOURCES}."
            )
        check_plain_modules(source, SUPPORTED_RESNET_SOURCES)
        cfg = getattr(source, "pretrained_cfg", None) or {}
        eps = source.bn1.eps
        standard = from_torchvision_layout(source.state_dict(), cfg.get("mean"), cfg.get("std"), eps, cfg)
        standard.module = source
        standard.architecture.update(module_geometry(source))
        return standard
    folder = resolve_folder(source, SUPPORTED_RESNET_SOURCES)
    config = read_json(folder / "config.json")
    if config is None:
        raise ValueError(f"{folder} has no config.json. Supported sources: {SUPPORTED_RESNET_SOURCES}.")
    mean, std = source_normalization(folder) or (None, None)
    if "architecture" in config:
        return load_standard_resnet(
            load_timm_folder(folder, config, SUPPORTED_RESNET_SOURCES, TIMM_RESNET_ARCHITECTURE)
        )
    if config.get("model_type") != "resnet":
        raise ValueError(f"{folder} holds a {config.get('model_type')!r} model. Supported: {SUPPORTED_RESNET_SOURCES}.")
    model, info = ResNetForImageClassification.from_pretrained(folder, output_loading_info=True)
    problems = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
    if problems:
        raise ValueError(
            f"The weights in {folder} do not fit a ResNet image classifier (missing or mismatched: {problems[:8]})."
        )
    standard = from_transformers_resnet(model, mean, std)
    standard.architecture.update(processor_geometry(processor=source_processor(folder)))
    return standard


def from_transformers_resnet(model: ResNetForImageClassification, mean=None, std=None) -> StandardCNN:
    """transformers' ResNet names are the B-cos ResNet's (the classifier is a 1x1 convolution here)."""
    config = model.config
    if config.hidden_act != "relu":
        raise ValueError(f"Only ReLU ResNets are supported, this one uses {config.hidden_act!r}.")
    if config.num_labels < 1 or not isinstance(model.classifier[1], nn.Linear):
        raise ValueError("This ResNet has no classification head (num_labels=0); B-cosify a classifier.")
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("classifier.1."):
            state[key.replace("classifier.1.", "classifier.")] = value
        else:
            state[re.sub(r"^resnet\.", "", key)] = value
    architecture = dict(
        num_channels=config.num_channels,
        embedding_size=config.embedding_size,
        hidden_sizes=list(config.hidden_sizes),
        depths=list(config.depths),
        layer_type=config.layer_type,
        downsample_in_first_stage=config.downsample_in_first_stage,
        downsample_in_bottleneck=config.downsample_in_bottleneck,
        id2label=dict(config.id2label),
    )
    return StandardCNN(architecture, state, mean, std, stem_weight="embedder.embedder.convolution.weight")


def _torchvision_resnet_name(key: str) -> str:
    """B-cos name of a torchvision/timm ResNet parameter (``key`` must be one of the known ones)."""
    if key.startswith("conv1."):
        return "embedder.embedder.convolution." + key[6:]
    if key.startswith("bn1."):
        return "embedder.embedder.normalization." + key[4:]
    if key.startswith("fc."):
        return "classifier." + key[3:]
    match = re.match(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(.+)$", key)
    if match:
        stage, block, kind, index, rest = match.groups()
        part = "convolution" if kind == "conv" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(index) - 1}.{part}.{rest}"
    match = re.match(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)$", key)
    if match:
        stage, block, index, rest = match.groups()
        part = "convolution" if index == "0" else "normalization"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{rest}"
    raise KeyError(key)


def from_torchvision_layout(
    sd: dict[str, torch.Tensor], mean, std, eps: float, pretrained_cfg: dict | None = None
) -> StandardCNN:
    """Read a ResNet in torchvision's naming (which timm shares); the architecture follows from the weight shapes,
    the class names from a timm model's ``pretrained_cfg`` (see :func:`~.common.standard_labels`)."""
    supported = SUPPORTED_RESNET_SOURCES
    if "fc.weight" not in sd:
        heads = sorted({key.split(".")[1] for key in sd if key.startswith("fc.")})  # fc = Sequential(Dropout, Linear)?
        raise ValueError(
            f"This ResNet's classification head is not one linear layer fc"
            f"{f' (fc holds layers {heads})' if heads else ''}. Supported: {supported}."
        )
    if "conv1.weight" not in sd:
        raise ValueError(f"This ResNet has no single stem convolution conv1 (a deep stem?). Supported: {supported}.")
    state, unknown = {}, []
    for key, value in sd.items():
        try:
            state[_torchvision_resnet_name(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Weights {sorted(unknown)[:6]} have no counterpart in a plain ResNet. Supported: {supported}."
        )
    stages = sorted({int(k.split(".")[0][5:]) for k in sd if k.startswith("layer")})
    if stages != list(range(1, len(stages) + 1)) or not stages:
        raise ValueError(f"Unexpected ResNet stages {stages}. Supported: {supported}.")
    bottleneck = "layer1.0.conv3.weight" in sd
    last_conv = "conv3" if bottleneck else "conv2"
    depths, hidden_sizes, widths = [], [], []
    groups = 1
    for stage in stages:
        depths.append(len({k.split(".")[1] for k in sd if k.startswith(f"layer{stage}.")}))
        hidden_sizes.append(sd[f"layer{stage}.0.{last_conv}.weight"].shape[0])
        widths.append(sd[f"layer{stage}.0.conv1.weight"].shape[0])
        if bottleneck:
            conv2 = sd[f"layer{stage}.0.conv2.weight"]
            groups = conv2.shape[0] // conv2.shape[1] if conv2.shape[1] else 1
    num_classes = sd["fc.weight"].shape[0]
    architecture = dict(
        num_channels=sd["conv1.weight"].shape[1],
        embedding_size=sd["conv1.weight"].shape[0],
        hidden_sizes=hidden_sizes,
        depths=depths,
        layer_type="bottleneck" if bottleneck else "basic",
        bottleneck_widths=widths if bottleneck else None,
        groups=groups,
        batch_norm_eps=eps,
        id2label=standard_labels(num_classes, pretrained_cfg),
    )
    return StandardCNN(
        architecture,
        state,
        mean,
        std,
        rename=_torchvision_resnet_name,
        stem_weight="embedder.embedder.convolution.weight",
    )


def build_bcos_cnn(
    cls, config_class, standard: StandardCNN, b: float, bias: str, image_mean, image_std, overrides, supported
):
    """Fold the normalisation, build ``cls`` for the chosen conversion and load every weight from the source."""
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}.")
    mean = image_mean if image_mean is not None else standard.mean
    std = image_std if image_std is not None else standard.std
    if mean is None or std is None:
        mean, std = IMAGENET_NORMALIZATION
        logger.warning(
            "The source came without its preprocessing settings, so its normalisation is unknown; assuming the "
            "ImageNet mean/std (what torchvision, timm and microsoft/resnet-* CNNs use). Pass image_mean=/image_std= "
            "if the source used others."
        )
    keep = bias == "keep"
    state = dict(standard.state)
    state[standard.stem_weight] = fold_normalization(state[standard.stem_weight], mean, std)
    if not keep:
        state = {k: v for k, v in state.items() if not k.endswith(".running_mean")}
    if "classifier.weight" in state:
        state["classifier.weight"] = state["classifier.weight"].reshape(*state["classifier.weight"].shape, 1, 1)
    fields = {
        **standard.architecture,
        "b": b,
        "use_bias": keep,
        "stem_pool": "max" if keep else "avg",
        "classify_before_pooling": not keep,
        "logit_bias": 0.0 if keep else None,
        **overrides,
    }
    model = cls(config_class(**fields)).to(state[standard.stem_weight].dtype)  # the source's, as from_pretrained's
    prefix = model.base_model_prefix
    backbone = getattr(model, prefix, None)
    if backbone is None:  # a backbone class: no classifier to load
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        backbone, prefix = model, ""
    else:
        prefix += "."
    check_geometry(standard, backbone, supported)
    load_exactly(model, state, prefix, not keep, supported)
    return model


def bcosify_resnet(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` (a B-cos ResNet) from a standard ResNet; see ``from_pretrained_standard`` and this module."""
    standard = load_standard_resnet(source)
    return build_bcos_cnn(
        cls, BcosResNetConfig, standard, b, bias, image_mean, image_std, overrides, SUPPORTED_RESNET_SOURCES
    )


BCOS_RESNET_ENTRIES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50_long",
    "resnet152_long",
    "resnext50_32x4d",
)
SUPPORTED_BCOS_RESNETS = "the bcos package's ImageNet B-cos ResNets (entries " + ", ".join(BCOS_RESNET_ENTRIES) + ")"


def port_bcos_resnet(model: nn.Module) -> BcosResNetForImageClassification:
    """The B-cos ResNet that computes exactly what a ``bcos`` package ``BcosResNet`` computes (see ``from_bcos``).

    The package's ResNets are torchvision's layout with every convolution (the classifier included) a B-cos
    convolution with unit-norm weights, uncentred BatchNorm without bias, no ReLU anywhere, 3x3 stride-2 average
    pooling after the stem, the classifier before global average pooling and the logit bias ``-log(C - 1)``.
    """
    package = read_bcos_cnn(model, "BcosResNet", SUPPORTED_BCOS_RESNETS)
    standard = from_torchvision_layout(package.state, None, None, package.batch_norm_eps)
    fields = torchvision_port_fields(standard.architecture, package.state, "conv1.weight", "fc.weight")
    cls, rename = BcosResNetForImageClassification, _torchvision_resnet_name
    return build_port(cls, fields, package, model, standard.state, rename, SUPPORTED_BCOS_RESNETS)
