"""B-cosification of standard pretrained ViTs: read a transformers or timm ViT, map its weights exactly.

Every weight of the B-cos model comes from the source (a missing bias is a zero bias); anything that does not fit
raises a ``ValueError`` instead of leaving a parameter randomly initialised. A timm model is read by duck typing; a
timm Hub folder is built by timm (see :func:`~.common.load_timm_folder`), so it needs timm installed.
"""

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import ViTForImageClassification
from transformers.utils import logging

from ..modeling import BcosViTConfig
from ..modeling.bcos_layers import ACTIVATION_ALIASES
from .common import (
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
    vit_default_normalization,
)


logger = logging.get_logger(__name__)

SUPPORTED_VIT_SOURCES = (
    "a transformers ViTForImageClassification (google/vit-*, or facebook/deit-* without distillation token) or a "
    "timm VisionTransformer classifier (vit_*, deit_*, deit3_*), given as a local folder, a Hub id or a loaded model"
)
PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"


@dataclass
class StandardViT:
    """A source ViT in B-cos naming: fields of ``BcosViTConfig`` (its architecture, class names and evaluation resize),
    weights, and its normalisation."""

    architecture: dict
    state: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def load_standard_vit(source) -> StandardViT:
    """Read a supported standard ViT from a module, a folder or a Hub id."""
    if isinstance(source, ViTForImageClassification):
        return from_transformers_vit(source, mean=None, std=None)
    if is_timm_vit(source):
        cfg = getattr(source, "pretrained_cfg", None) or {}
        return from_timm_state(source.state_dict(), timm_module_meta(source), cfg.get("mean"), cfg.get("std"))
    if isinstance(source, nn.Module):
        raise ValueError(f"Cannot B-cosify a {type(source).__name__}. Supported sources: {SUPPORTED_VIT_SOURCES}.")
    folder = resolve_folder(source, SUPPORTED_VIT_SOURCES)
    config = read_json(folder / "config.json")
    if config is None:
        raise ValueError(f"{folder} has no config.json. Supported sources: {SUPPORTED_VIT_SOURCES}.")
    if "architecture" in config:
        return load_standard_vit(load_timm_folder(folder, config, SUPPORTED_VIT_SOURCES))
    model_type = config.get("model_type")
    if model_type == "deit":
        raise ValueError(
            f"{folder} is a DeiT with a distillation token, which is not supported. The non-distilled "
            "facebook/deit-*-patch16-224 checkpoints are ViT checkpoints and are supported."
        )
    if model_type != "vit":
        raise ValueError(f"{folder} holds a {model_type!r} model. Supported sources: {SUPPORTED_VIT_SOURCES}.")
    model, info = ViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    problems = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
    if problems:
        raise ValueError(
            f"The weights in {folder} do not fit a ViT image classifier (missing or mismatched: {problems[:8]}). "
            "A checkpoint without a classification head (e.g. *-in21k feature extractors) cannot be B-cosified "
            "as a classifier."
        )
    mean, std = source_normalization(folder) or (None, None)
    standard = from_transformers_vit(model, mean, std)
    standard.architecture.update(resize_fields(processor_resize(source_processor(folder) or {})))
    return standard


def resize_fields(resize: dict) -> dict:
    """The ``crop_pct`` and ``resample`` of a source's evaluation resize (see :func:`~.common.processor_resize`); its
    image size is the ViT's own, that of its position embeddings."""
    return {name: resize[name] for name in ("crop_pct", "resample") if name in resize}


def transformers_vit_fields(config) -> dict:
    """The ``BcosViTConfig`` fields a transformers ViT-style config (ViT, CLIP vision) states as they are."""
    if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int):
        raise ValueError("Only square images and patches (integer image_size and patch_size) are supported.")
    if config.image_size % config.patch_size:  # the source's patch convolution leaves the last pixels unread
        raise ValueError(
            f"The source's image_size {config.image_size} is not a multiple of its patch_size {config.patch_size}, "
            f"so it never reads its images' last {config.image_size % config.patch_size} rows and columns; a B-cos "
            "ViT reads every pixel. Set the source config's image_size to a multiple of patch_size "
            f"({config.image_size // config.patch_size * config.patch_size}) if its images may be resized to it."
        )
    if config.hidden_act not in ACTIVATION_ALIASES:
        raise ValueError(f"Unsupported activation {config.hidden_act!r}; supported: {sorted(ACTIVATION_ALIASES)}.")
    names = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads")
    names += ("intermediate_size", "hidden_act", "layer_norm_eps")
    return {name: getattr(config, name) for name in names}


def from_transformers_vit(model: ViTForImageClassification, mean, std) -> StandardViT:
    config = model.config
    architecture = dict(
        transformers_vit_fields(config),
        attention_qk_bias=config.qkv_bias,
        id2label=dict(config.id2label),
        pooling="cls",
    )
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("vit.pooler."):
            continue
        state[re.sub(r"^vit\.", "", key)] = value
    return StandardViT(architecture, state, mean, std)


def is_timm_vit(module) -> bool:
    return type(module).__name__ == "VisionTransformer" and type(module).__module__.startswith("timm.")


def _timm_activation(act: nn.Module) -> str:
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    names = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}
    if type(act).__name__ not in names:
        raise ValueError(f"Unsupported timm activation {type(act).__name__}; supported: GELU, GELUTanh, QuickGELU.")
    return names[type(act).__name__]


def _is_layer_norm(module: nn.Module) -> bool:
    kind = type(module)
    timm_layer_norm = kind.__module__.startswith("timm.") and kind.__name__ in ("LayerNorm", "LayerNormFp32")
    return kind is nn.LayerNorm or timm_layer_norm


def check_timm_norms(model: nn.Module) -> None:
    """The B-cos ViT normalises with LayerNorm, so a timm ViT built with another ``norm_layer`` (RMSNorm: no mean
    taken out, no bias) is refused by name: its weights would fit and compute another function."""
    blocks = [f"blocks.{i}.{norm}" for i in range(len(model.blocks)) for norm in ("norm1", "norm2")]
    names = ["norm_pre", *blocks, "norm", "fc_norm"]
    for name in names:
        module = model.get_submodule(name)
        if not (isinstance(module, nn.Identity) or _is_layer_norm(module)):
            raise ValueError(
                f"The timm ViT's {name} is a {type(module).__name__}; only LayerNorm (torch's or timm's) is supported "
                "(the B-cos ViT's normalisation): build it with timm's default norm_layer."
            )


def timm_module_meta(model: nn.Module) -> dict:
    """What a timm VisionTransformer's weights do not say: heads, activation, eps, pooling, and its ``pretrained_cfg``
    (class names, evaluation resize)."""
    block = model.blocks[0]
    if type(block).__name__ != "Block" or not hasattr(block, "attn"):
        raise ValueError(f"Unsupported timm block type {type(block).__name__}; only the standard ViT Block is.")
    if not isinstance(block.attn.q_norm, nn.Identity):
        raise ValueError("timm ViTs with qk_norm are not supported.")
    check_timm_norms(model)
    return dict(
        num_heads=block.attn.num_heads,
        activation=_timm_activation(block.mlp.act),
        eps=block.norm1.eps,
        global_pool=model.global_pool,
        # an average that takes the class token in with the patch tokens (with a class token to take in)
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False) and model.num_prefix_tokens),
        image_size=tuple(model.patch_embed.img_size),
        no_embed_class=bool(getattr(model, "no_embed_class", False)),
        pretrained_cfg=dict(getattr(model, "pretrained_cfg", None) or {}),
    )


def from_timm_state(sd: dict[str, torch.Tensor], meta: dict, mean, std) -> StandardViT:
    """Map timm ViT weights to B-cos names, folding layer scale into the layer before it."""
    sd = dict(sd)
    if meta["global_pool"] not in ("token", "avg"):
        raise ValueError(f"Unsupported timm global_pool {meta['global_pool']!r}; supported: 'token', 'avg'.")
    if meta["global_pool"] == "avg" and meta.get("pool_include_prefix"):
        raise ValueError(
            "This timm ViT averages its class token in with the patch tokens (pool_include_prefix=True), which the "
            "B-cos ViT does not: only global_pool='avg' over the patch tokens (pool_include_prefix=False) is supported."
        )
    if "reg_token" in sd:
        raise ValueError("timm ViTs with register tokens (reg_token) are not supported.")
    if "head.weight" not in sd:
        raise ValueError("This timm ViT has no classification head (num_classes=0); B-cosify a classifier.")
    patch = sd.pop("patch_embed.proj.weight")
    hidden, channels, patch_size, _ = patch.shape
    has_cls = "cls_token" in sd
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    state = {PATCH_WEIGHT: patch}
    _move(sd, state, "patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias")
    _move(sd, state, "cls_token", "embeddings.cls_token")
    positions = sd.pop("pos_embed", None)
    if positions is None:
        raise ValueError("timm ViTs without position embeddings are not supported.")
    image_size = meta.get("image_size")
    if image_size and image_size[0] != image_size[1]:
        raise ValueError(
            f"This timm ViT takes {image_size[0]}x{image_size[1]} images; only square images and patch grids are "
            "supported."
        )
    length = positions.shape[1]
    if meta.get("no_embed_class") is None:  # a timm Hub config does not say: a square remainder tells
        embeds_class = has_cls and math.isqrt(length - 1) ** 2 == length - 1
    else:
        embeds_class = has_cls and not meta["no_embed_class"]
    grid = math.isqrt(length - embeds_class)
    if grid * grid != length - embeds_class:
        raise ValueError(f"Only square patch grids are supported, got {length} position embeddings.")
    if has_cls and not embeds_class:  # timm's no_embed_class: the class token gets no position, i.e. a zero one
        positions = torch.cat([positions.new_zeros(1, 1, hidden), positions], dim=1)
    state["embeddings.position_embeddings"] = positions
    for name in ("weight", "bias"):
        _move(sd, state, f"norm_pre.{name}", f"pre_layernorm.{name}")
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            _move(sd, state, f"{src}norm1.{part}", f"{dst}layernorm_before.{part}")
            _move(sd, state, f"{src}norm2.{part}", f"{dst}layernorm_after.{part}")
            _move(sd, state, f"{src}attn.proj.{part}", f"{dst}attention.o_proj.{part}")
            _move(sd, state, f"{src}mlp.fc1.{part}", f"{dst}mlp.fc1.{part}")
            _move(sd, state, f"{src}mlp.fc2.{part}", f"{dst}mlp.fc2.{part}")
            qkv = sd.pop(f"{src}attn.qkv.{part}", None)
            if qkv is not None:
                for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), qkv.chunk(3, dim=0)):
                    state[f"{dst}attention.{proj}.{part}"] = chunk
        for scale, layer in (("ls1", "attention.o_proj"), ("ls2", "mlp.fc2")):
            gamma = sd.pop(f"{src}{scale}.gamma", None)
            if gamma is not None:  # gamma * (W x + b) == (gamma W) x + gamma b
                state[f"{dst}{layer}.weight"] = state[f"{dst}{layer}.weight"] * gamma[:, None]
                if f"{dst}{layer}.bias" in state:
                    state[f"{dst}{layer}.bias"] = state[f"{dst}{layer}.bias"] * gamma
    # the LayerNorm before the head: timm's "norm" on every token, or "fc_norm" on the pooled one (the same for the
    # class token: a LayerNorm acts token by token)
    final_norm = "norm" if meta["global_pool"] == "token" and "norm.weight" in sd else "fc_norm"
    for part in ("weight", "bias"):
        _move(sd, state, f"{final_norm}.{part}", f"layernorm.{part}")
        _move(sd, state, f"head.{part}", f"classifier.{part}")
    if "layernorm.weight" not in state:  # the B-cos ViT normalises what its head reads, as timm's defaults do
        raise ValueError(
            f"This timm ViT has no LayerNorm on what its head reads ({final_norm}): only ViTs with one are supported "
            "(timm's defaults; not final_norm=False, nor fc_norm=False with global_pool='avg')."
        )
    if sd:
        raise ValueError(f"Unsupported timm ViT: weights {sorted(sd)[:8]} have no B-cos counterpart.")
    num_classes = state["classifier.weight"].shape[0]
    pretrained_cfg = meta.get("pretrained_cfg") or {}
    architecture = dict(
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=meta["num_heads"],
        intermediate_size=state["layers.0.mlp.fc1.weight"].shape[0] if depth else 4 * hidden,
        hidden_act=meta["activation"],
        layer_norm_eps=meta["eps"],
        attention_qk_bias="layers.0.attention.q_proj.bias" in state,
        use_class_token=has_cls,
        pooling="cls" if meta["global_pool"] == "token" else "mean",
        pre_layernorm="pre_layernorm.weight" in state,
        id2label=standard_labels(num_classes, pretrained_cfg),
        **resize_fields(timm_resize(pretrained_cfg)),
    )
    return StandardViT(architecture, state, mean, std)


def _move(source: dict, target: dict, old: str, new: str) -> None:
    if old in source:
        target[new] = source.pop(old)


def bcosify_vit(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` (a B-cos ViT classifier) from a standard ViT; see ``from_pretrained_standard``."""
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}.")
    standard = load_standard_vit(source)
    mean = image_mean if image_mean is not None else standard.mean
    std = image_std if image_std is not None else standard.std
    if mean is None or std is None:
        mean, std = vit_default_normalization(standard.architecture["num_channels"])
        logger.warning(
            "The source came without its image processor, so its normalisation is unknown; assuming mean=std=0.5 "
            "(transformers' ViTImageProcessor default). Pass image_mean=/image_std= if the source used others."
        )
    state = dict(standard.state)
    state[PATCH_WEIGHT] = fold_normalization(state[PATCH_WEIGHT], mean, std).flatten(1)
    keep = bias == "keep"
    fields = {**standard.architecture, "b": b, "use_bias": keep, "logit_bias": 0.0 if keep else None, **overrides}
    model = cls(BcosViTConfig(**fields)).to(state[PATCH_WEIGHT].dtype)  # the source's dtype, as from_pretrained's
    load_exactly(model, state, f"{model.base_model_prefix}.", not keep, SUPPORTED_VIT_SOURCES)
    return model
