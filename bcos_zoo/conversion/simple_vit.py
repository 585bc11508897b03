"""The ``bcos`` package's simple ViTs and ViT-Cs (B-cos v2) as :class:`BcosSimpleViTForImageClassification`.

* Its 8 B-cos models (``simple_vit_{ti,s,b,l}_patch16_224``, ``vitc_{ti,s,b,l}_patch1_14``) port exactly
  (:func:`port_bcos_simple_vit`, reached through ``bcos_zoo.from_bcos``). The package's B-cos units divide their
  weights by their norm at every forward pass; the port stores the unit-norm weights, which our units use as they
  are (their norm guard changes the output by about 5e-7 relative).
* Its 8 standard twins (``standard_simple_vit_*``, ``standard_vitc_*``: plain linear maps and convolutions with
  biases, GELU, ImageNet normalisation in the test transform) are sources of ``from_pretrained_standard``
  (:func:`bcosify_simple_vit`): exact at ``b=1, bias="keep"``, the B-cosification paper's recipe at
  ``b=2, bias="remove"``. The normalisation folds into the first layer (patch embedding or first stem convolution).

The package is read by its module layout (``to_patch_embedding``, ``transformer.encoder_<i>``, ``linear_head``), so
it is needed only to build its models.
"""

import re

import torch
from torch import nn
from transformers.initialization import no_init_weights

from ..modeling import BcosSimpleViTConfig, BcosSimpleViTForImageClassification
from .bcos_package import portable_exponent
from .common import IMAGENET_NORMALIZATION, bcos_package_labels, fold_normalization, load_exactly


SIZES = ("ti", "s", "b", "l")
BCOS_SIMPLE_VIT_ENTRIES = tuple(f"simple_vit_{size}_patch16_224" for size in SIZES) + tuple(
    f"vitc_{size}_patch1_14" for size in SIZES
)
SUPPORTED_SIMPLE_VIT_SOURCES = (
    "a standard simple ViT or ViT-C of the bcos package (bcos.models.pretrained.standard_simple_vit_*_patch16_224 "
    "or standard_vitc_*_patch1_14), loaded, or named 'bcos:<entry>' in a recipe with its release weights"
)
# the package's module names -> ours (the backbone's; "classifier" is the head)
RENAMES = (
    (r"^to_patch_embedding\.conv_stem\.", "embeddings.stem."),
    (r"^to_patch_embedding\.linear$", "embeddings.projection"),
    (r"^transformer\.encoder_(\d+)\.attn\.norm$", r"layers.\1.layernorm_before"),
    (r"^transformer\.encoder_(\d+)\.attn\.to_qkv$", r"layers.\1.attention.qkv"),
    (r"^transformer\.encoder_(\d+)\.attn\.to_out$", r"layers.\1.attention.o_proj"),
    (r"^transformer\.encoder_(\d+)\.ff\.net\.norm$", r"layers.\1.layernorm_after"),
    (r"^transformer\.encoder_(\d+)\.ff\.net\.linear(\d)$", r"layers.\1.fc\2"),
    (r"^linear_head\.norm$", "layernorm"),
    (r"^linear_head\.linear$", "classifier"),
)
BCOS_UNITS = ("BcosLinear", "BcosConv2d")


def _is_simple_vit(module: nn.Module) -> bool:
    return type(module).__name__ == "SimpleViT" and type(module).__module__.startswith("bcos.")


def _rename(name: str) -> str:
    for pattern, replacement in RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    raise ValueError(f"Unsupported bcos SimpleViT: module {name!r} has no counterpart here.")


def read_simple_vit(vit: nn.Module) -> tuple[dict, dict[str, torch.Tensor], set[float]]:
    """A package ``SimpleViT``'s architecture (``BcosSimpleViTConfig`` fields), its weights in our names (patch
    weights in (channel, row, column) order, B-cos weights at unit norm) and the exponents of its B-cos units."""
    embedding, first = vit.to_patch_embedding, vit.transformer[0]
    stem = getattr(embedding, "conv_stem", None)
    act = first.ff.net.act
    if not isinstance(act, (nn.Identity, nn.GELU)) or getattr(act, "approximate", "none") != "none":
        raise ValueError(f"Unsupported bcos SimpleViT activation {act}; supported: identity, GELU.")
    state, exponents, units = {}, set(), set()
    for name, module in vit.named_modules():
        if name.rpartition(".")[0] in units or not name:  # a B-cos unit's inner map is read with the unit
            continue
        if type(module).__name__ in BCOS_UNITS:
            if module.max_out != 1:
                raise ValueError("bcos B-cos units with max_out > 1 (MaxOut) are not supported.")
            units.add(name)
            exponents.add(float(module.b))
            weight = module.linear.weight
            dims = tuple(range(1, weight.ndim))
            params = {"weight": weight / torch.linalg.vector_norm(weight, dim=dims, keepdim=True)}
        else:
            params = dict(module.named_parameters(recurse=False))
        for kind, value in params.items():
            state[f"{_rename(name)}.{kind}"] = value.detach()
    patch = embedding.rearrage.axes_lengths["p1"]
    projection = state["embeddings.projection.weight"]
    hidden = projection.shape[0]  # the package flattens patches as (row, column, channel); ours as a conv weight
    state["embeddings.projection.weight"] = projection.view(hidden, patch, patch, -1).permute(0, 3, 1, 2)
    head = state["classifier.weight"]
    architecture = dict(
        num_channels=3,
        conv_stem=[module.out_channels for module in stem if hasattr(module, "out_channels")] if stem else None,
        patch_size=patch,
        hidden_size=hidden,
        num_hidden_layers=len(vit.transformer),
        num_attention_heads=first.attn.heads,
        intermediate_size=state["layers.0.fc1.weight"].shape[0],
        hidden_act="identity" if isinstance(act, nn.Identity) else "gelu",
        layer_norm_eps=first.attn.norm.eps,
        id2label=bcos_package_labels(head.shape[0]),
    )
    return architecture, state, exponents


def _build(config: BcosSimpleViTConfig, state: dict, dtype: torch.dtype, drop_biases: bool, cls=None):
    state["embeddings.projection.weight"] = state["embeddings.projection.weight"].flatten(1)
    with no_init_weights():  # every weight comes from the source: skip initialising it first
        model = (cls or BcosSimpleViTForImageClassification)._from_config(config, dtype=dtype)
    load_exactly(model, state, f"{model.base_model_prefix}.", drop_biases, SUPPORTED_SIMPLE_VIT_SOURCES)
    return model.eval()


def port_bcos_simple_vit(model: nn.Module) -> BcosSimpleViTForImageClassification:
    """The exact equivalent of a loaded ``bcos`` B-cos simple ViT or ViT-C (its ``SimpleViT`` and ``LogitLayer``)."""
    vit, logit_layer = (model[0], model[1]) if len(model) == 2 else (None, None)
    if not _is_simple_vit(vit) or type(logit_layer).__name__ != "LogitLayer":
        raise ValueError("Not a bcos B-cos SimpleViT (a BcosSequential of a SimpleViT and a LogitLayer).")
    architecture, state, exponents = read_simple_vit(vit)
    config = BcosSimpleViTConfig(
        **architecture,
        b=portable_exponent(exponents),
        use_bias=False,
        logit_bias=float(logit_layer.logit_bias or 0.0),  # the package's None is no bias; ours would be -log(C - 1)
        logit_temperature=logit_layer.logit_temperature,
    )
    return _build(config, state, next(vit.parameters()).dtype, drop_biases=False)


def bcosify_simple_vit(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` from a ``bcos`` standard simple ViT or ViT-C; see ``from_pretrained_standard``.

    Its normalisation (the package's test transform: ImageNet mean and std) folds into the first layer.
    """
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}.")
    if not isinstance(source, nn.Module) or not _is_simple_vit(source):
        raise ValueError(f"Cannot B-cosify {type(source).__name__}. Supported sources: {SUPPORTED_SIMPLE_VIT_SOURCES}.")
    architecture, state, exponents = read_simple_vit(source)
    if exponents:
        raise ValueError("This is a B-cos model of the bcos package; port it with bcos_zoo.from_bcos instead.")
    mean = image_mean if image_mean is not None else IMAGENET_NORMALIZATION[0]
    std = image_std if image_std is not None else IMAGENET_NORMALIZATION[1]
    first = "embeddings.stem.0.weight" if architecture["conv_stem"] else "embeddings.projection.weight"
    state[first] = fold_normalization(state[first], mean, std)
    keep = bias == "keep"
    fields = {**architecture, "b": b, "use_bias": keep, "logit_bias": 0.0 if keep else None, **overrides}
    return _build(BcosSimpleViTConfig(**fields), state, next(source.parameters()).dtype, not keep, cls)
