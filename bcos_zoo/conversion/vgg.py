"""The B-cos VGG family's conversions: the port of the authors' B-cos VGG-11 (the ``bcos`` package's ``vgg11_bnu``).

B-cosifying standard VGGs (torchvision's, timm's) is not implemented: :func:`bcosify_vgg` says so, naming what the
family takes instead.
"""

from torch import nn

from ..modeling import BcosVGGForImageClassification
from .bcos_package import build_port, read_bcos_cnn


BCOS_VGG_ENTRIES = ("vgg11_bnu",)
SUPPORTED_BCOS_VGGS = "the bcos package's ImageNet B-cos VGG (entry vgg11_bnu), through bcos_zoo.from_bcos"
SUPPORTED_VGG_SOURCES = "none yet: standard VGGs are not B-cosified; " + SUPPORTED_BCOS_VGGS


def bcosify_vgg(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """B-cosification of standard VGGs is not implemented; ``from_bcos`` ports the authors' B-cos VGG."""
    raise ValueError(f"B-cosifying a standard VGG is not supported. Supported: {SUPPORTED_VGG_SOURCES}.")


def vgg_layout(model: nn.Module) -> tuple[dict, dict[str, str]]:
    """The package VGG's architecture fields and the bcos_zoo name of each of its weights (torchvision naming).

    Its ``features`` are B-cos convolution and BatchNorm pairs, each run of them closed by 2x2 average pooling; its
    ``classifier`` is three B-cos convolutions: two fully connected layers and the logits.
    """
    names, hidden_sizes, depths = {}, [], [0]
    for index, module in enumerate(model.features):
        kind = type(module).__name__
        prefix = f"stages.{len(depths) - 1}.layers.{depths[-1]}."
        if kind == "BcosConv2d":
            names[f"features.{index}"] = prefix + "convolution"
        elif kind == "BatchNormUncentered2d":
            names[f"features.{index}"] = prefix + "normalization"
            if depths[-1] == 0:
                hidden_sizes.append(module.num_features)
            depths[-1] += 1
        elif kind == "AvgPool2d" and depths[-1]:
            depths.append(0)
        else:
            raise ValueError(
                f"The bcos VGG's features.{index} is a {kind} where a B-cos convolution with uncentred BatchNorm, or "
                f"the pooling after them, belongs. Supported: {SUPPORTED_BCOS_VGGS}."
            )
    if depths.pop() or len(model.classifier) != 3:
        raise ValueError(f"The bcos VGG's layers end unlike the released VGG's. Supported: {SUPPORTED_BCOS_VGGS}.")
    names.update({"classifier.0": "head.fc1", "classifier.1": "head.fc2", "classifier.2": "classifier"})
    first, last = model.classifier[0].linear, model.classifier[2].linear
    fields = dict(
        num_channels=model.features[0].in_channels // 2,
        hidden_sizes=hidden_sizes,
        depths=depths,
        head_size=first.out_channels,
        head_kernel_size=first.kernel_size[0],
        num_labels=last.out_channels,
    )
    return fields, names


def port_bcos_vgg(model: nn.Module) -> BcosVGGForImageClassification:
    """The B-cos VGG that computes exactly what a ``bcos`` package ``BcosVGG`` computes (see ``from_bcos``).

    The package's VGG-11 BNU: 3x3 B-cos convolutions with unit-norm weights and uncentred BatchNorm without bias, no
    ReLU, 2x2 average pooling closing each stage; then B-cos convolutions 7x7 (padding 3) and 1x1 to 4096 channels
    and 1x1 to the classes, all before global average pooling, and the logit bias ``-log(C - 1)``.
    """
    package = read_bcos_cnn(model, "BcosVGG", SUPPORTED_BCOS_VGGS)
    fields, names = vgg_layout(model)

    def rename(key: str) -> str:
        module, _, rest = key.rpartition(".")
        return f"{names[module]}.{rest}"

    state = {rename(key): value for key, value in package.state.items()}
    return build_port(BcosVGGForImageClassification, fields, package, model, state, rename, SUPPORTED_BCOS_VGGS)
