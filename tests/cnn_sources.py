"""Small random-initialised standard CNNs of the kinds the zoo B-cosifies, built in-process, with non-trivial
BatchNorm statistics and affine parameters (so that folding BatchNorm is actually tested)."""

import pytest
import torch
from torch import nn


MEAN = (0.45, 0.5, 0.55)
STD = (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny CNNs run thousands of small ops; on a shared CPU, two threads waiting on each other cost 100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def settle_(model: nn.Module, size: int = 40, seed: int = 0) -> nn.Module:
    """Perturb every parameter, give BatchNorm random affines and running statistics from real batches (then
    perturbed, so that they are not exactly the batch statistics)."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1 + 0.2 * torch.randn(param.shape, generator=generator))
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))
            norm.momentum = None  # cumulative average: the running statistics become the batches' statistics
        model.train()
        for _ in range(2):
            model(normalize(torch.rand(6, 3, size, size, generator=generator)))
        for norm in norms:
            norm.running_mean.add_(0.1 * torch.randn(norm.running_mean.shape, generator=generator))
            norm.running_var.mul_(0.8 + 0.4 * torch.rand(norm.running_var.shape, generator=generator))
    return model.eval()


def normalize(pixel_values: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    mean = torch.tensor(mean, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=pixel_values.dtype).view(1, -1, 1, 1)
    return (pixel_values - mean) / std


def hf_resnet(layer_type: str = "bottleneck", labels: int = 5, seed: int = 0, **kwargs):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    args = dict(embedding_size=8, hidden_sizes=[16, 24, 32], depths=[1, 2, 1], layer_type=layer_type)
    args.update(kwargs)
    config = ResNetConfig(num_labels=labels, id2label={i: f"class_{i}" for i in range(labels)}, **args)
    return settle_(ResNetForImageClassification(config), seed=seed)


def timm_cnn(name: str, labels: int = 5, seed: int = 0, **kwargs):
    import timm

    torch.manual_seed(seed)
    args = {
        "resnet18": dict(channels=(8, 8, 16, 16), stem_width=8),
        "resnet50": dict(channels=(4, 8, 8, 8), stem_width=8),
        "resnext50_32x4d": dict(channels=(8, 8, 8, 8), stem_width=8, cardinality=4, base_width=8),
        "densenet121": dict(growth_rate=4),
    }.get(name, {})
    args.update(kwargs)
    model = timm.create_model(name, pretrained=False, num_classes=labels, **args)
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=MEAN, std=STD, input_size=(3, 40, 40), crop_pct=0.9)
    return settle_(model, seed=seed)


def save_timm(model: nn.Module, folder) -> None:
    """timm's own Hub layout: config.json with "architecture" and "pretrained_cfg", model.safetensors."""
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), safe_serialization=True)


def torchvision_resnet18(labels: int = 5, seed: int = 0, **kwargs):
    import torchvision

    torch.manual_seed(seed)
    return settle_(torchvision.models.resnet18(weights=None, num_classes=labels, **kwargs), seed=seed)


def torchvision_densenet121(labels: int = 5, seed: int = 0):
    """DenseNet-121's depth (blocks of 6, 12, 24, 16 layers) at a tiny width."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.DenseNet(growth_rate=4, block_config=(6, 12, 24, 16), num_init_features=8, bn_size=2)
    model.classifier = nn.Linear(model.classifier.in_features, labels)
    return settle_(model, seed=seed)
