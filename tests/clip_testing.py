"""Tiny random CLIP sources for the B-cos CLIP tests: built in-process, with a byte-level tokenizer and no download."""

import math
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 32
PROMPTS = ["a photo of a cat", "a photo of a dog", "a diagram", "a red car at night"]

# Two source layouts: an openai/clip-vit-b-32-like one (quick-GELU, two blocks) and a laion-H-like one (exact GELU,
# other widths, LayerNorm eps 1e-6, its own normalisation).
SHAPES = {
    "openai_like": dict(
        vision=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, patch_size=8),
        text=dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64),
        projection_dim=16,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
    ),
    "laion_like": dict(
        vision=dict(
            hidden_size=48,
            num_attention_heads=3,
            num_hidden_layers=1,
            intermediate_size=96,
            patch_size=16,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
        ),
        text=dict(hidden_size=40, num_attention_heads=5, num_hidden_layers=2, intermediate_size=80, hidden_act="gelu"),
        projection_dim=24,
        mean=(0.5, 0.45, 0.4),
        std=(0.25, 0.3, 0.2),
    ),
}


def byte_level_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (word-internal and word-final), with no merges."""
    symbols = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for symbol in symbols:
            vocab[symbol + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=64)


def tiny_clip(shape: str = "openai_like", seed: int = 0) -> CLIPModel:
    """A random CLIP whose biases and LayerNorm parameters are non-trivial, so dropping one would show."""
    spec = SHAPES[shape]
    vocab_size = len(byte_level_tokenizer())
    text = dict(
        spec["text"], vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=64
    )
    vision = dict(spec["vision"], image_size=IMAGE_SIZE)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=spec["projection_dim"])
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        model.logit_scale.fill_(math.log(50.0))
    return model


def source_processor(shape: str = "openai_like") -> CLIPProcessor:
    spec = SHAPES[shape]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(spec["mean"]),
        image_std=list(spec["std"]),
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=byte_level_tokenizer())


def save_source(folder: Path, shape: str = "openai_like", seed: int = 0) -> CLIPModel:
    """Save a tiny CLIP as a transformers CLIPModel folder (weights, config, tokenizer, image processor)."""
    model = tiny_clip(shape, seed)
    model.save_pretrained(folder)
    source_processor(shape).save_pretrained(folder)
    return model


def normalize(pixel_values: torch.Tensor, shape: str = "openai_like") -> torch.Tensor:
    """What the source CLIP sees: the [0, 1] images normalised with its mean/std."""
    spec = SHAPES[shape]
    mean = torch.tensor(spec["mean"], dtype=pixel_values.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], dtype=pixel_values.dtype).view(1, 3, 1, 1)
    return (pixel_values - mean) / std


def images(n: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)
