"""Ports of the models released with the authors' ``bcos`` package (``pip install bcos``) into bcos_zoo classes.

The package's torch.hub entries (``bcos.models.pretrained``: ``resnet50``, ``convnext_tiny_bnu``,
``simple_vit_b_patch16_224``, ...) build B-cos networks that take the 6-channel encoding ``[x, 1 - x]``; a port
computes exactly what the package's model computes, but takes [0, 1] images and encodes them itself. Which family
ports which entry is the registry's ``bcos_entries``; each family's ``bcos_port`` does the work.
"""

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .common import PIL_RESAMPLE, bcos_package_labels, load_exactly


RANDOM = "random"  # ``weights=RANDOM``: the entry's architecture with the package's random initialisation
# A recipe names a standard twin of the package (a B-cosification source) as "bcos:<entry>", e.g.
# "bcos:standard_simple_vit_s_patch16_224", with its release weights file in the recipe's ``weights``.
BCOS_SOURCE_PREFIX = "bcos:"
STANDARD_PREFIX = "standard_"


def bcos_entry_family(entry: str):
    """The registered family that ports a ``bcos`` torch.hub entry; a clear error naming the supported ones."""
    from ..families import FAMILIES

    for family in FAMILIES.values():
        if entry in family.bcos_entries:
            return family
    supported = ", ".join(sorted(name for family in FAMILIES.values() for name in family.bcos_entries))
    raise ValueError(f"{entry!r} is not a bcos model this package ports. Supported entries: {supported}.")


def bcos_module_family(model: nn.Module):
    """The registered family that ports a loaded ``bcos`` model, by its class."""
    from ..families import FAMILIES

    kind = f"{type(model).__module__.split('.')[0]}.{type(model).__name__}"
    for family in FAMILIES.values():
        if family.bcos_port is not None and kind in family.bcos_module_types:
            return family
    supported = ", ".join(sorted(t for family in FAMILIES.values() for t in family.bcos_module_types))
    raise ValueError(f"A {kind} is not a bcos model this package ports. Supported: {supported}.")


def build_bcos_entry(entry: str, weights: str | os.PathLike | dict | None) -> nn.Module:
    """The package's model for ``entry`` with the release state dict ``weights`` (a file read with
    ``weights_only=True``, or a state dict), or its random initialisation when ``weights == "random"``."""
    bcos_entry_family(entry.removeprefix(STANDARD_PREFIX))  # unknown entries fail here, before the import
    try:
        from bcos.models import pretrained
    except ImportError as error:
        raise ImportError("Porting a bcos entry by name needs the authors' package: pip install bcos einops") from error
    if weights is None:
        raise ValueError(
            f"from_bcos({entry!r}) needs the release weights: weights='path/to/{entry}.pth' (the file the bcos "
            "package downloads), or weights='random' for the architecture with random weights."
        )
    random = isinstance(weights, str) and weights == RANDOM
    if not (random or isinstance(weights, dict)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"No weights file at {path}")
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} is not a plain state dict (read with weights_only=True, as release files are): "
                f"{str(error).strip().splitlines()[0]}"
            ) from None
        if not isinstance(weights, dict):
            raise ValueError(f"{path} holds a {type(weights).__name__}, not a state dict.")
    model = getattr(pretrained, entry)(pretrained=False)
    if random:
        return model.eval()
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        # the first line only names the model class; the next one says what does not fit
        detail = (str(error).strip().splitlines() + [""])[1].strip()[:300]
        raise ValueError(
            f"The weights do not fit bcos entry {entry!r} ({detail}); is it the release file of another entry?"
        ) from None
    return model.eval()


def is_bcos_source(source: object) -> bool:
    """Whether a recipe's source names a standard model of the ``bcos`` package (``"bcos:<entry>"``)."""
    return isinstance(source, str) and source.startswith(BCOS_SOURCE_PREFIX)


def bcos_source_entry(source: str, weights: str | os.PathLike | None) -> str:
    """The standard twin a ``"bcos:<entry>"`` source names; a one-line error when it is none or lacks its weights."""
    from ..families import FAMILIES

    entry = source.removeprefix(BCOS_SOURCE_PREFIX)
    twins = sorted(  # the twins of the B-cos entries of families that take the package's standard models
        STANDARD_PREFIX + name
        for family in FAMILIES.values()
        if any(kind.startswith("bcos.") for kind in family.module_types)
        for name in family.bcos_entries
    )
    if entry not in twins:
        raise ValueError(f"{source!r} names no standard model of the bcos package. Supported: bcos:<one of {twins}>.")
    if weights is None or (weights != RANDOM and not Path(weights).is_file()):
        raise ValueError(
            f"The source {source!r} needs its release weights file (--weights path/to/{entry}.pth, as the bcos "
            f"package downloads it); got {weights!r}."
        )
    return entry


def load_bcos_source(source: str, weights: str | os.PathLike | None) -> nn.Module:
    """The ``bcos`` package's standard model that ``source = "bcos:<entry>"`` names, with its release weights."""
    return build_bcos_entry(bcos_source_entry(source, weights), weights)


def from_bcos(source: str | nn.Module, weights: str | os.PathLike | dict | None = None) -> PreTrainedModel:
    """The bcos_zoo transformers model that computes exactly what a ``bcos`` package model computes.

    ``source`` is a loaded ``bcos`` model, or a torch.hub entry name of the package with ``weights`` its release
    state-dict file (``weights="random"`` for random weights, never by default). The returned model takes [0, 1]
    images; the package's model takes their encoding ``[x, 1 - x]``.
    """
    if isinstance(source, str):
        family = bcos_entry_family(source)
        model = build_bcos_entry(source, weights)
    else:
        if weights is not None:
            raise ValueError("Pass weights only with an entry name; a loaded bcos model already has its weights.")
        family = bcos_module_family(source)
        model = source
    return family.bcos_port(model)


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


def read_bcos_cnn(model: nn.Module, supported: str) -> BcosPackageModel:
    """Read a ``bcos`` CNN, refusing what the port has no counterpart for: MaxOut, B-cos units with different B,
    a normalisation other than uncentred BatchNorm without bias ("bnu"), a logit temperature."""
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
    if len(exponents) != 1 or len(eps) > 1:
        raise ValueError(f"The bcos model mixes B-cos exponents {exponents} or BatchNorm eps {eps}.")
    state = {
        re.sub(r"\.linear\.weight$", ".weight", key): value
        for key, value in model.state_dict().items()
        if not key.endswith(".running_mean")
    }
    return BcosPackageModel(
        state=state,
        b=exponents.pop(),
        batch_norm_eps=eps.pop() if eps else 1e-5,
        logit_bias=logit_bias,
        parameter=next(model.parameters()),
        processor_fields=processor_fields(model),
    )


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
