"""Small random-initialised standard ViTs of the kinds the zoo B-cosifies, built in-process."""

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def perturb_(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every parameter, biases and LayerNorm affines included, a non-trivial random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model.eval()


def hf_vit(hidden=48, layers=2, heads=3, mlp=96, image=32, patch=8, labels=5, act="gelu", qkv_bias=True, seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp,
        image_size=image,
        patch_size=patch,
        num_labels=labels,
        hidden_act=act,
        qkv_bias=qkv_bias,
        id2label={i: f"class_{i}" for i in range(labels)},
    )
    return perturb_(ViTForImageClassification(config), seed=seed)


def save_hf_source(model: ViTForImageClassification, folder, mean, std) -> None:
    """Save as a Hub checkpoint is laid out: weights, config and the (normalising) image processor."""
    model.save_pretrained(folder)
    size = model.config.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std)).save_pretrained(
        folder
    )


def timm_vit(seed=0, **kwargs):
    import timm

    torch.manual_seed(seed)
    args = dict(pretrained=False, num_classes=6, depth=2, img_size=32)
    args.update(kwargs)
    name = args.pop("name", "vit_small_patch16_224")
    return perturb_(timm.create_model(name, **args), seed=seed)


def normalize(pixel_values: torch.Tensor, mean, std) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    return (pixel_values - mean) / std
