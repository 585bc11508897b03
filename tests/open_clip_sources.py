"""open_clip CLIP ResNets for the CLIP RN50 tests, built offline with open_clip's own classes: a reduced
ModifiedResNet (small widths, one or two blocks per stage, 64 px) beside a one-block text transformer with OpenAI's
vocabulary, and the folder open_clip's Hub repos hold."""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 64
PROMPTS = ["a photo of a cat.", "A DIAGRAM of   two dogs!", "naïve café, 42 € — ok?", "it's a red car's wheel"]


def reduced_config(quick_gelu: bool = False) -> dict:
    """open_clip's ``model_cfg`` of a reduced RN50: 8 attention heads on 256 channels, a 2x2 final grid."""
    return {
        "embed_dim": 16,
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [2, 1, 1, 1], "width": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
    }


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, biases and residual branches (open_clip zeroes each block's last BatchNorm
    weight), so that a dropped or misplaced constant shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "bn" in name or name.endswith("downsample.1.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2 + name.endswith("weight"))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def reduced_rn(quick_gelu: bool = False, seed: int = 0) -> torch.nn.Module:
    """A random open_clip ``CLIP`` with a reduced ModifiedResNet, as ``create_model`` would build it."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    config = reduced_config(quick_gelu)
    model = CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"], quick_gelu=quick_gelu)
    model.visual.image_mean, model.visual.image_std = OPENAI_MEAN, OPENAI_STD  # as create_model sets them
    return perturb(model, seed).eval()


def save_open_clip_folder(model: torch.nn.Module, folder: Path, config: dict, weights: str = "safetensors") -> Path:
    """Write ``model`` as open_clip's Hub repos hold it: ``open_clip_config.json`` (``model_cfg`` and
    ``preprocess_cfg``) beside ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``."""
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(model.visual.image_mean), "std": list(model.visual.image_std)}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    state = {name: value.contiguous() for name, value in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, folder / "open_clip_model.safetensors")
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


def normalized(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as the source sees them."""
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / torch.tensor(OPENAI_STD, dtype=x.dtype).view(1, 3, 1, 1)


def images(batch: int = 2, size: int = IMAGE_SIZE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def calibrate(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """BatchNorm running statistics of one batch (train mode, momentum 1), so that a random B = 2 tower keeps its
    signal instead of shrinking it by a cosine in every layer; the model comes back in eval mode."""
    norms = [module for module in model.modules() if type(module).__name__ == "BcosBatchNorm2d"]
    for norm in norms:
        norm.momentum = 1.0
    model.train().get_image_features(pixel_values=x)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()
