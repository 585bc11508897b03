"""B-cosification of transformers CLIP models: map the image tower onto the B-cos ViT backbone, exactly.

The CLIP image tower is a ViT (class embedding, position embedding, pre-LayerNorm, pre-norm blocks, post-LayerNorm on
the class token) followed by a bias-free visual projection, so every weight has a B-cos counterpart; the text tower,
text projection and ``logit_scale`` are copied unchanged. Anything that does not fit raises a ``ValueError`` instead
of leaving a parameter randomly initialised.
"""

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPVisionModelWithProjection
from transformers.utils import logging

from ..modeling import BcosCLIPConfig, BcosCLIPVisionConfig
from .common import (
    OPENAI_CLIP_NORMALIZATION,
    fold_normalization,
    load_exactly,
    read_json,
    resolve_folder,
    source_normalization,
)
from .open_clip import (
    OPEN_CLIP_CONFIG,
    SUPPORTED_OPEN_CLIP_SOURCES,
    OpenCLIPSource,
    bcosify_open_clip,
    is_open_clip_module,
    read_open_clip_folder,
    read_open_clip_module,
)
from .vit import PATCH_WEIGHT, transformers_vit_fields


logger = logging.get_logger(__name__)

SUPPORTED_CLIP_SOURCES = (
    "a transformers CLIPModel (openai/clip-vit-*, laion/CLIP-ViT-*), given as a local folder, a Hub id or a loaded "
    "model; BcosCLIPVisionModel also takes a CLIPVisionModelWithProjection; or " + SUPPORTED_OPEN_CLIP_SOURCES
)
# CLIP vision-tower names (without the "vision_model." prefix) -> B-cos ViT backbone names
_VISION_RENAMES = (
    (r"^pre_layrnorm\.", "pre_layernorm."),
    (r"^post_layernorm\.", "layernorm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.([qkv]_proj)\.", r"layers.\1.attention.\2."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"layers.\1.layernorm_before."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"layers.\1.layernorm_after."),
    (r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"layers.\1.mlp.\2."),
)


@dataclass
class StandardCLIP:
    """A loaded source CLIP and what its folder says about preprocessing."""

    model: CLIPModel | CLIPVisionModelWithProjection
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    tokenizer: object | None
    image_processor: CLIPImageProcessor | None


def load_standard_clip(source, vision_only: bool) -> StandardCLIP | OpenCLIPSource:
    """Read a supported CLIP from a module, a folder or a Hub id (an open_clip CLIP ResNet as an
    :class:`OpenCLIPSource`); a source already read is taken as it is (so that one read serves several conversions)."""
    allowed = (CLIPModel, CLIPVisionModelWithProjection) if vision_only else (CLIPModel,)
    if isinstance(source, OpenCLIPSource) or (isinstance(source, StandardCLIP) and isinstance(source.model, allowed)):
        return source
    if isinstance(source, allowed):
        return StandardCLIP(source, None, None, None, None)
    if is_open_clip_module(source):
        return read_open_clip_module(source)
    if isinstance(source, torch.nn.Module) or not isinstance(source, (str, Path)):
        raise ValueError(f"Cannot B-cosify a {type(source).__name__}. Supported sources: {SUPPORTED_CLIP_SOURCES}.")
    # model*.safetensors skips the open_clip copy of the weights that laion repos also hold
    folder = resolve_folder(source, SUPPORTED_CLIP_SOURCES, ("*.json", "*.txt", "model*.safetensors"))
    if (folder / OPEN_CLIP_CONFIG).is_file() and not (folder / "config.json").is_file():
        return read_open_clip_folder(folder, source)
    config = read_json(folder / "config.json")
    if config is None:
        raise ValueError(f"{folder} has no config.json. Supported sources: {SUPPORTED_CLIP_SOURCES}.")
    model_type = config.get("model_type") or (f"timm {config['architecture']}" if "architecture" in config else None)
    if model_type == "clip":
        model_class = CLIPModel
    elif model_type == "clip_vision_model" and vision_only:
        model_class = CLIPVisionModelWithProjection
    else:
        raise ValueError(f"{folder} holds a {model_type!r} model. Supported sources: {SUPPORTED_CLIP_SOURCES}.")
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    problems = sorted(info["missing_keys"]) + [str(k) for k in info["mismatched_keys"]]
    if problems:
        raise ValueError(
            f"The weights in {folder} do not fit a {model_class.__name__} (missing or mismatched: {problems[:8]})."
        )
    image_processor = _source_image_processor(folder)
    mean, std = source_normalization(folder) or (None, None)
    tokenizer = None
    if model_class is CLIPModel and any((folder / name).exists() for name in ("tokenizer.json", "vocab.json")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            logger.warning(f"Could not load the tokenizer in {folder} ({error}); explain(text=...) will need one set.")
    return StandardCLIP(model, mean, std, tokenizer, image_processor)


def _source_image_processor(folder: Path) -> CLIPImageProcessor | None:
    """The folder's image processor, kept for ``save_pretrained`` (its normalisation is read by
    :func:`source_normalization`, like every source's)."""
    if not any((folder / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        return None
    try:
        return CLIPImageProcessor.from_pretrained(folder)
    except (OSError, ValueError) as error:
        logger.warning(f"Could not read the image processor in {folder} ({error}).")
        return None


def vision_architecture(model: CLIPModel | CLIPVisionModelWithProjection) -> dict:
    """The ``BcosCLIPVisionConfig`` fields that describe the source's image tower."""
    config = model.config.vision_config if isinstance(model, CLIPModel) else model.config
    return dict(
        transformers_vit_fields(config),
        attention_qk_bias=True,
        use_class_token=True,
        use_position_embeddings=True,
        pooling="cls",
        pre_layernorm=True,
        projection_dim=model.visual_projection.out_features,
    )


def vision_state(model: CLIPModel | CLIPVisionModelWithProjection, mean, std) -> dict[str, torch.Tensor]:
    """The image tower's weights under B-cos names, with the normalisation folded into the patch embedding."""
    source = dict(model.vision_model.state_dict())
    source.pop("embeddings.position_ids", None)
    state = {}
    patch = source.pop("embeddings.patch_embedding.weight")
    state[PATCH_WEIGHT] = fold_normalization(patch, mean, std).flatten(1)
    state["embeddings.cls_token"] = source.pop("embeddings.class_embedding").reshape(1, 1, -1)
    state["embeddings.position_embeddings"] = source.pop("embeddings.position_embedding.weight").unsqueeze(0)
    for name, value in source.items():
        for pattern, replacement in _VISION_RENAMES:
            renamed, count = re.subn(pattern, replacement, name)
            if count:
                state[renamed] = value
                break
        else:
            raise ValueError(f"Unsupported CLIP image tower: weight {name!r} has no B-cos counterpart.")
    state = {f"vision_model.{name}": value for name, value in state.items()}
    state["visual_projection.weight"] = model.visual_projection.weight.detach()
    if model.visual_projection.bias is not None:
        raise ValueError("CLIP visual projections have no bias; this one has one, so it is not a supported CLIP.")
    return state


def bcosify_clip(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` (``BcosCLIPVisionModel`` or ``BcosCLIPModel``) from a CLIP; see ``from_pretrained_standard``."""
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}.")
    vision_only = cls.config_class.model_type == BcosCLIPVisionConfig.model_type
    standard = load_standard_clip(source, vision_only)
    if isinstance(standard, OpenCLIPSource):
        return bcosify_open_clip(cls, standard, b, bias, image_mean, image_std, **overrides)
    mean = image_mean if image_mean is not None else standard.mean
    std = image_std if image_std is not None else standard.std
    if mean is None or std is None:
        mean, std = OPENAI_CLIP_NORMALIZATION
        logger.warning(
            "The source came without its image processor, so its normalisation is unknown; assuming OpenAI CLIP's "
            "mean/std (also laion's). Pass image_mean=/image_std= if the source used others."
        )
    source_model = standard.model
    keep = bias == "keep"
    vision_config = BcosCLIPVisionConfig(**{**vision_architecture(source_model), "b": b, "use_bias": keep, **overrides})
    state = vision_state(source_model, mean, std)
    if vision_only:
        model = cls(vision_config)
    else:
        source_config = source_model.config
        config = BcosCLIPConfig(
            text_config=copy.deepcopy(source_config.text_config),
            vision_config=vision_config,
            projection_dim=source_config.projection_dim,
            logit_scale_init_value=source_config.logit_scale_init_value,
        )
        model = cls(config)
        for name, value in source_model.state_dict().items():
            if name.startswith(("text_model.", "text_projection.", "logit_scale")):
                state[name] = value
        state.pop("text_model.embeddings.position_ids", None)
        model.tokenizer = standard.tokenizer
    model.to(next(source_model.parameters()).dtype)  # the source's dtype (before loading: float64 stays exact)
    load_exactly(model, state, "", not keep, SUPPORTED_CLIP_SOURCES)
    model._image_processor = standard.image_processor
    return model
