"""Reading the CNNs of the authors' ``bcos`` package for the ports: what a port may hold, the weights in
torchvision's naming, the shared settings and the evaluation preprocessing, and building the port from them. The
front door, ``from_bcos``, and which family ports which entry are in ``bcos_zoo.ports``."""

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .common import PIL_RESAMPLE, bcos_package_labels, load_exactly


# What a ported CNN may hold, by class name: the package's B-cos convolution (and the normalised convolution inside
# it), uncentred BatchNorm, pooling, the logit layer, the containers, and what is the identity in evaluation.
PORTABLE_MODULES = {
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BasicBlock",
    "BatchNormUncentered2d",
    "BcosConv2d",
    "BcosDenseNet",
    "BcosResNet",
    "BcosVGG",
    "Bottleneck",
    "LogitLayer",
    "NormedConv2d",
    "Sequential",
    "StochasticDepth",
    "_DenseBlock",
    "_DenseLayer",
    "_Transition",
}


@dataclass
class BcosPackageModel:
    """A loaded ``bcos`` CNN as a port reads it: its weights in torchvision's naming (a B-cos convolution's
    ``<name>.linear.weight`` is ``<name>.weight``; uncentred BatchNorm's ``running_mean``, which it never reads, is
    left out), the settings its B-cos units and norms share, and its evaluation preprocessing."""

    state: dict[str, torch.Tensor]
    b: float
    batch_norm_eps: float
    logit_bias: float
    parameter: torch.Tensor  # one of its parameters: the dtype and device of the port
    processor_fields: dict


def portable_exponent(exponents: set[float]) -> float:
    """The one B of a ``bcos`` model's B-cos units, if a port computes what the package does: for B other than 1 and 2
    the package raises ``|cos| + 1e-6`` to the power B - 1, which the port (``|cos|`` itself) does not."""
    if len(exponents) != 1:
        raise ValueError(f"The B-cos units of this model have different exponents {sorted(exponents)}.")
    b = next(iter(exponents))
    if b not in (1.0, 2.0):
        raise ValueError(
            f"A bcos model of B = {b} does not port exactly: for B other than 1 and 2 the bcos package raises "
            "|cos| + 1e-6 to the power B - 1. Every released B-cos model has B = 2."
        )
    return b


def read_bcos_cnn(model: nn.Module, class_name: str, supported: str) -> BcosPackageModel:
    """Read a ``bcos`` CNN of class ``class_name``, refusing what the port has no counterpart for: MaxOut, B-cos units
    with different B, a normalisation other than uncentred BatchNorm without bias ("bnu"), a logit temperature."""
    if type(model).__name__ != class_name:
        name = class_name.removeprefix("Bcos")
        raise ValueError(f"A {type(model).__name__} is not a bcos {name}. Supported: {supported}.")
    exponents, eps, logit_bias = set(), set(), 0.0
    for name, module in model.named_modules():
        kind, where = type(module).__name__, name or "model"
        if kind not in PORTABLE_MODULES:
            raise ValueError(
                f"The bcos model's {where} is a {kind}, which has no counterpart here. Supported: {supported}."
            )
        if kind == "BcosConv2d":
            if module.max_out != 1 or module.linear.padding_mode != "zeros":
                raise ValueError(f"The bcos model's {where} uses MaxOut or non-zero padding. Supported: {supported}.")
            exponents.add(float(module.b))
        elif kind == "BatchNormUncentered2d":
            if module.bias is not None or module.weight is None or module.running_var is None:
                raise ValueError(
                    f"The bcos model's {where} is not uncentred BatchNorm with a weight, no bias and running "
                    f"statistics (the released models' 'bnu'). Supported: {supported}."
                )
            eps.add(float(module.eps))
        elif kind == "LogitLayer":
            if module.logit_temperature is not None:
                raise ValueError(f"The bcos model's logit layer has a temperature. Supported: {supported}.")
            logit_bias = float(module.logit_bias or 0.0)
    if len(eps) > 1:
        raise ValueError(f"The bcos model mixes BatchNorm eps {sorted(eps)}.")
    state = {
        re.sub(r"\.linear\.weight$", ".weight", key): value
        for key, value in model.state_dict().items()
        if not key.endswith(".running_mean")
    }
    return BcosPackageModel(
        state=state,
        b=portable_exponent(exponents),
        batch_norm_eps=eps.pop() if eps else 1e-5,
        logit_bias=logit_bias,
        parameter=next(model.parameters()),
        processor_fields=processor_fields(model),
    )


def torchvision_port_fields(architecture: dict, state: dict[str, torch.Tensor], stem: str, head: str) -> dict:
    """The config fields of a port of a torchvision-layout CNN (ResNet, DenseNet) from its standard ``architecture``:
    channels and classes read from the ``stem`` and ``head`` convolutions' weights (the stem sees ``[x, 1 - x]``),
    the package's average pooling after the stem; the class names are the package's (``build_port``)."""
    fields = {**architecture, "num_channels": state[stem].shape[1] // 2, "num_labels": state[head].shape[0]}
    fields.pop("id2label")
    return {**fields, "stem_pool": "avg"}


def transform_resample(transform: object) -> int:
    """The PIL filter of a ``bcos`` test transform's resize (bilinear for every released entry)."""
    mode = (getattr(transform, "args", None) or {}).get("interpolation", "bilinear")
    return PIL_RESAMPLE[str(getattr(mode, "value", mode))]


def processor_fields(model: nn.Module) -> dict:
    """``image_size``, ``crop_pct`` and ``resample`` of the entry's test transform (resize the shorter side
    bilinearly to 256, or 232 for the longer-trained entries, then crop the centre 224), as the package attaches it
    to the models its entries build."""
    transform = getattr(model, "transform", None)
    args = getattr(transform, "args", None) or {}
    crop, resize = args.get("crop_size", 224), args.get("resize_size", 256)
    return {"image_size": int(crop), "crop_pct": crop / resize, "resample": transform_resample(transform)}


def _pool_geometry(pool: nn.AvgPool2d) -> tuple:
    as_int = [v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding)]
    return (*as_int, pool.ceil_mode, pool.count_include_pad)


def build_port(
    cls: type[PreTrainedModel],
    fields: dict,
    package: BcosPackageModel,
    source: nn.Module,
    state: dict[str, torch.Tensor],
    rename,
    supported: str,
) -> PreTrainedModel:
    """The ``cls`` model with the package model's weights (``state``, in ``cls``'s naming without the backbone
    prefix; ``rename`` maps torchvision names to it), in the package model's dtype and on its device, in evaluation
    mode.

    Every parameter comes from ``state``, and every B-cos convolution and average pooling has the package's
    geometry (kernel, stride, padding, dilation, groups), so that weights that fit also compute the same function.
    """
    fields = dict(fields)
    labels = bcos_package_labels(fields.pop("num_labels"))
    config = cls.config_class(
        **{
            **fields,
            **package.processor_fields,
            "hidden_act": None,
            "b": package.b,
            "normalize_weights": True,
            "use_bias": False,
            "batch_norm_eps": package.batch_norm_eps,
            "classify_before_pooling": True,
            "logit_bias": package.logit_bias,
            "id2label": labels,
        }
    )
    with no_init_weights():  # every weight is loaded next
        ours = cls(config)
    ours = ours.to(device=package.parameter.device, dtype=package.parameter.dtype)
    prefix = ours.base_model_prefix + "."
    load_exactly(ours, state, prefix, False, supported)
    for name, module in source.named_modules():
        if type(module).__name__ != "BcosConv2d":
            continue
        target = rename(f"{name}.weight").removesuffix(".weight")
        target = ours.get_submodule(target if target.startswith("classifier") else prefix + target)
        conv = module.linear
        theirs = tuple(tuple(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation)) + (conv.groups,)
        mine = (target.kernel_size, target.stride, target.padding, target.dilation, target.groups)
        if theirs != mine:
            raise ValueError(
                f"The bcos model's {name} (kernel, stride, padding, dilation, groups) {theirs} differs from the "
                f"released architecture's {mine}. Supported: {supported}."
            )
    pools = [[_pool_geometry(m) for m in model.modules() if type(m) is nn.AvgPool2d] for model in (source, ours)]
    if pools[0] != pools[1]:
        raise ValueError(f"The bcos model pools as {pools[0]}, the released architecture as {pools[1]}.")
    return ours.eval()
