"""B-cosification of open_clip's CLIP ResNets (OpenAI's RN50 and its kin), exactly.

The ``ModifiedResNet`` image tower maps onto :class:`BcosCLIPResNetModel` (its attention pool's output projection
``c_proj`` becomes the CLIP model's ``visual_projection``), the text transformer onto transformers'
``CLIPTextModel`` (the same architecture: causal pre-norm blocks, the end-of-text token's features, a bias-free
projection), and ``logit_scale`` is copied. The source is read as weights plus the few facts the weights do not show
(attention heads, the text activation, the input size), from a model in memory or from open_clip's Hub layout
(``open_clip_config.json`` beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``, e.g.
``timm/resnet50_clip.openai``), so open_clip itself is needed only to build models in memory. The tokenizer is the
folder's (transformers' files, as open_clip's Hub repos hold them) or a ``CLIPTokenizer`` made from open_clip's
BPE vocabulary, whose ids equal open_clip's own tokenizer's.

``bias="remove"`` is the B-cosification paper's recipe for its released CLIP: every bias, BatchNorm's mean and
shift, and the attention pool's position embedding dropped.
"""

import gzip
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.utils import logging

from ..modeling import BcosCLIPConfig, BcosCLIPResNetConfig, BcosCLIPResNetVisionModel
from .common import OPENAI_CLIP_NORMALIZATION, fold_normalization, load_exactly, read_json


logger = logging.get_logger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
# open_clip's names for a Hub repo's weights, in the order its own loader prefers them
OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)
SUPPORTED_OPEN_CLIP_SOURCES = (
    "an open_clip CLIP with a ModifiedResNet image tower (RN50, RN101, RN50x4, ...: open_clip.create_model('RN50')) "
    "in memory, or as a folder or Hub id in open_clip's Hub layout (open_clip_config.json beside "
    "open_clip_model.safetensors or open_clip_pytorch_model.bin, e.g. timm/resnet50_clip.openai)"
)
# open_clip text settings this conversion maps exactly, at their defaults; any other value is refused
_TEXT_DEFAULTS = {
    "embed_cls": False,
    "no_causal_mask": False,
    "pool_type": "argmax",
    "proj_type": "linear",
    "proj_bias": False,
    "ls_init_value": None,
    "final_ln_after_pool": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "hf_model_name": None,
}
_STEM = {"conv1": 0, "bn1": 0, "conv2": 1, "bn2": 1, "conv3": 2, "bn3": 2}
_BLOCK = {"1": "layer.0", "2": "layer.1", "3": "layer.3"}  # conv/bn k of a bottleneck; layer.2 is the pooling


@dataclass
class OpenCLIPSource:
    """An open_clip CLIP ResNet read for conversion: its weights (open_clip's names) and what they do not show."""

    state: dict[str, torch.Tensor]
    vision_heads: int
    text_heads: int
    quick_gelu: bool
    image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    tokenizer: CLIPTokenizer | None


def is_open_clip_module(source: object) -> bool:
    return isinstance(source, nn.Module) and type(source).__module__.split(".")[0] == "open_clip"


def read_open_clip_module(model: nn.Module) -> OpenCLIPSource:
    """Read an open_clip ``CLIP`` in memory (built by ``open_clip.create_model``)."""
    visual = getattr(model, "visual", None)
    if type(model).__name__ != "CLIP" or type(visual).__name__ != "ModifiedResNet":
        raise ValueError(
            f"A {type(model).__name__} with a {type(visual).__name__} image tower is not supported: "
            f"{SUPPORTED_OPEN_CLIP_SOURCES}; open_clip's ViT CLIPs are B-cosified from their transformers checkpoints "
            "(openai/clip-vit-*, laion/CLIP-ViT-*)."
        )
    block = model.transformer.resblocks[0]
    plain = all(
        isinstance(getattr(b, name, None), nn.Identity)
        for b in model.transformer.resblocks
        for name in ("ls_1", "ls_2")
    )
    if model.text_pool_type != "argmax" or model.attn_mask is None or not plain or block.ln_1.eps != 1e-5:
        raise ValueError(f"This open_clip text tower differs from CLIP's. Supported: {SUPPORTED_OPEN_CLIP_SOURCES}.")
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    return OpenCLIPSource(
        state=dict(model.state_dict()),
        vision_heads=visual.attnpool.num_heads,
        text_heads=block.attn.num_heads,
        quick_gelu=type(block.mlp.gelu).__name__ == "QuickGELU",
        image_size=int(visual.image_size),
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        tokenizer=open_clip_tokenizer(model.context_length),
    )


def read_open_clip_folder(folder: Path, source: str | Path | None = None) -> OpenCLIPSource:
    """Read a folder (or, from ``source``, a Hub repo) in open_clip's Hub layout; weights load as safetensors or
    with ``torch.load(weights_only=True)``, which refuses pickled code."""
    settings = read_json(folder / OPEN_CLIP_CONFIG) or {}
    config = settings.get("model_cfg")
    if not isinstance(config, dict):
        raise ValueError(f"{folder / OPEN_CLIP_CONFIG} has no model_cfg. Supported: {SUPPORTED_OPEN_CLIP_SOURCES}.")
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    unsupported = {key: text[key] for key, default in _TEXT_DEFAULTS.items() if text.get(key, default) != default}
    if not isinstance(vision.get("layers"), list) or vision.get("timm_model_name") or unsupported:
        raise ValueError(
            f"{folder} holds an open_clip model without a ModifiedResNet image tower or with a text tower unlike "
            f"CLIP's ({unsupported or vision}). Supported: {SUPPORTED_OPEN_CLIP_SOURCES}."
        )
    weights = _weights_file(folder, source)
    if weights.suffix == ".safetensors":
        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {re.sub(r"^module\.", "", name): value for name, value in state.items()}
    preprocess = settings.get("preprocess_cfg", {})
    mean, std = preprocess.get("mean"), preprocess.get("std")
    image_size = vision.get("image_size", 224)
    return OpenCLIPSource(
        state=state,
        vision_heads=vision.get("width", 64) * 32 // vision.get("head_width", 64),
        text_heads=text.get("heads", 8),
        quick_gelu=bool(config.get("quick_gelu", False)),
        image_size=int(image_size if isinstance(image_size, int) else image_size[0]),
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        tokenizer=folder_tokenizer(folder, text.get("context_length", 77)),
    )


def _weights_file(folder: Path, source: str | Path | None) -> Path:
    found = [folder / name for name in OPEN_CLIP_WEIGHTS if (folder / name).is_file()]
    if not found and source is not None and not Path(source).is_dir():  # a Hub repo: fetch one weights file
        for name in OPEN_CLIP_WEIGHTS:
            try:
                fetched = Path(snapshot_download(str(source), allow_patterns=[name])) / name
            except Exception:  # noqa: BLE001 (offline, or not in this repo: try the next name, then say so)
                continue
            if fetched.is_file():
                found.append(fetched)
                break
    if not found:
        raise ValueError(
            f"{folder} holds none of {', '.join(OPEN_CLIP_WEIGHTS)}. Supported: {SUPPORTED_OPEN_CLIP_SOURCES}."
        )
    return found[0]


def folder_tokenizer(folder: Path, context_length: int) -> CLIPTokenizer | None:
    """The folder's transformers tokenizer files (open_clip's Hub repos hold them), else open_clip's vocabulary."""
    if any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        try:
            return CLIPTokenizer.from_pretrained(folder, model_max_length=context_length)
        except (OSError, ValueError) as error:
            logger.warning(f"Could not load the tokenizer in {folder} ({error}); using open_clip's vocabulary.")
    return open_clip_tokenizer(context_length)


def open_clip_tokenizer(context_length: int = 77) -> CLIPTokenizer | None:
    """A ``CLIPTokenizer`` with open_clip's BPE vocabulary (the file open_clip ships), giving open_clip's token ids:
    its 256 byte symbols, the same word-final, the merges and the two special tokens, in its order. It pads with the
    end-of-text token where open_clip pads with id 0; the causal text tower never reads either.
    ``None`` (with a warning) when open_clip is not installed."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz" if spec else None
    if path is None or not path.is_file():
        logger.warning("open_clip's vocabulary file is not available; explain(text=...) will need a tokenizer set.")
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : 49152 - 256 - 2 + 1]  # the merges open_clip uses
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)


def _vision_name(name: str) -> str | None:
    """The B-cos name of an open_clip ``visual.`` weight (None if it has none)."""
    match = re.match(r"^(conv[123]|bn[123])\.(.+)$", name)
    if match:
        part = "convolution" if match[1].startswith("conv") else "normalization"
        return f"vision_model.embedder.{_STEM[match[1]]}.{part}.{match[2]}"
    match = re.match(r"^layer(\d+)\.(\d+)\.(conv|bn)([123])\.(.+)$", name)
    if match:
        part = "convolution" if match[3] == "conv" else "normalization"
        return f"vision_model.stages.{int(match[1]) - 1}.layers.{match[2]}.{_BLOCK[match[4]]}.{part}.{match[5]}"
    match = re.match(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.+)$", name)
    if match:
        part = "convolution" if match[3] == "0" else "normalization"
        return f"vision_model.stages.{int(match[1]) - 1}.layers.{match[2]}.shortcut.1.{part}.{match[4]}"
    match = re.match(r"^attnpool\.([qkv])_proj\.(.+)$", name)
    if match:
        return f"vision_model.attention_pool.{match[1]}_proj.{match[2]}"
    if name == "attnpool.positional_embedding":
        return "vision_model.attention_pool.position_embeddings"
    match = re.match(r"^attnpool\.c_proj\.(.+)$", name)
    return f"visual_projection.{match[1]}" if match else None


def _text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower, projection and logit scale under transformers' CLIP names; any other weight is refused."""
    renames = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    layer_renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj"}
    layer_renames.update({"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"})
    out, unknown = {}, []
    for name, value in state.items():
        match = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias|in_proj_weight|in_proj_bias)$", name)
        prefix = f"text_model.encoder.layers.{match[1]}." if match else ""
        if name in renames:
            out[renames[name]] = value
        elif name == "text_projection" and value.ndim == 2:  # applied as x @ P
            out["text_projection.weight"] = value.T.contiguous()
        elif match and match[3].startswith("in_proj_"):  # q, k and v stacked
            for projection, part in zip("qkv", value.chunk(3)):
                out[f"{prefix}self_attn.{projection}_proj.{match[3][8:]}"] = part
        elif match and match[2] in layer_renames:
            out[f"{prefix}{layer_renames[match[2]]}.{match[3]}"] = value
        elif not name.startswith("visual.") and name != "attn_mask":  # the causal mask, in older checkpoints
            unknown.append(name)
    if unknown or "text_projection.weight" not in out:
        raise ValueError(f"Unsupported open_clip text tower (weights {unknown[:5]}). {SUPPORTED_OPEN_CLIP_SOURCES}.")
    return out


def bcosify_open_clip(cls, source: OpenCLIPSource, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """Build ``cls`` (``BcosCLIPModel``; for the image tower alone, ``BcosCLIPResNetVisionModel``, the
    ``BcosCLIPVisionModel`` of a ResNet tower) from an open_clip CLIP ResNet; see ``from_pretrained_standard``."""
    if bias not in ("keep", "remove"):
        raise ValueError(f"bias must be 'keep' or 'remove', got {bias!r}.")
    keep = bias == "keep"
    state = source.state
    mean = image_mean if image_mean is not None else source.mean or OPENAI_CLIP_NORMALIZATION[0]
    std = image_std if image_std is not None else source.std or OPENAI_CLIP_NORMALIZATION[1]
    vision, unknown = {}, []
    for name, value in state.items():
        if name.startswith("visual."):
            renamed = _vision_name(name[len("visual.") :])
            if renamed is None:
                unknown.append(name)
            else:
                vision[renamed] = value
    if unknown or "visual.attnpool.c_proj.weight" not in state:
        raise ValueError(f"Unsupported open_clip image tower (weights {unknown[:5]}). {SUPPORTED_OPEN_CLIP_SOURCES}.")
    stem = "vision_model.embedder.0.convolution.weight"
    vision[stem] = fold_normalization(vision[stem], mean, std)
    if not keep:  # the paper's recipe: no constants anywhere
        vision = {k: v for k, v in vision.items() if not k.endswith((".running_mean", "position_embeddings"))}
    stages = sorted({int(k.split(".")[1][5:]) for k in state if k.startswith("visual.layer")})
    vision_config = BcosCLIPResNetConfig(
        **{
            "num_channels": state["visual.conv1.weight"].shape[1],
            "width": state["visual.conv3.weight"].shape[0],
            "depths": [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{s}.")}) for s in stages],
            "num_attention_heads": source.vision_heads,
            "image_size": source.image_size,
            "projection_dim": state["visual.attnpool.c_proj.weight"].shape[0],
            "b": b,
            "use_bias": keep,
            "attention_qk_bias": keep,
            "use_position_embeddings": keep,
            "projection_bias": keep,
            **overrides,
        }
    )
    if cls.config_class.model_type != BcosCLIPConfig.model_type:  # the image tower alone
        model = BcosCLIPResNetVisionModel(vision_config).to(state["visual.conv1.weight"].dtype)  # before loading
        load_exactly(model, vision, "", not keep, SUPPORTED_OPEN_CLIP_SOURCES)
        return model
    text = _text_state(state)
    width, vocab_size = state["token_embedding.weight"].shape[1], state["token_embedding.weight"].shape[0]
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
        num_attention_heads=source.text_heads,
        max_position_embeddings=state["positional_embedding"].shape[0],
        hidden_act="quick_gelu" if source.quick_gelu else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=vision_config.projection_dim,
        bos_token_id=vocab_size - 2,  # open_clip's tokenizer appends its two special tokens to the vocabulary
        eos_token_id=vocab_size - 1,  # (the text features are those of the first end-of-text token)
        pad_token_id=vocab_size - 1,  # as the tokenizer pads (never read: the text tower is causal)
    )
    config = BcosCLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=vision_config.projection_dim,
        logit_scale_init_value=float(state["logit_scale"]),
    )
    model = cls(config).to(state["visual.conv1.weight"].dtype)  # the source's dtype, before loading
    expected = model.state_dict()
    if "text_model.embeddings.position_ids" in expected:
        text["text_model.embeddings.position_ids"] = expected["text_model.embeddings.position_ids"]
    load_exactly(model, {**vision, **text}, "", not keep, SUPPORTED_OPEN_CLIP_SOURCES)
    model.tokenizer = source.tokenizer
    return model
