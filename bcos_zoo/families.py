"""The zoo's model families, listed once.

Every part of the package that depends on *which* families exist reads :data:`FAMILIES`: the Auto-class
registration (``bcos_zoo/__init__.py``), the converter behind each class's ``from_pretrained_standard``, which
B-cos class a standard checkpoint becomes, which checkpoints a run continues as B-cos models, how a model card
names a model, and which post-hoc baselines and preprocessing a standard classifier has. A new family is one
entry here, next to its files in ``modeling/`` and ``conversion/``.
"""

import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from .conversion.clip import SUPPORTED_CLIP_SOURCES, bcosify_clip
from .conversion.common import SourceMismatchError, check_class_numbers
from .conversion.convnext import SUPPORTED_CONVNEXT_SOURCES, bcosify_convnext, port_bcos_convnext
from .conversion.densenet import (
    BCOS_DENSENET_ENTRIES,
    SUPPORTED_DENSENET_SOURCES,
    TIMM_DENSENET_ARCHITECTURE,
    bcosify_densenet,
    port_bcos_densenet,
)
from .conversion.open_clip import OPEN_CLIP_CONFIG
from .conversion.resnet import (
    BCOS_RESNET_ENTRIES,
    SUPPORTED_RESNET_SOURCES,
    TIMM_RESNET_ARCHITECTURE,
    bcosify_resnet,
    port_bcos_resnet,
)
from .conversion.simple_vit import (
    BCOS_SIMPLE_VIT_ENTRIES,
    SUPPORTED_SIMPLE_VIT_SOURCES,
    bcosify_simple_vit,
    port_bcos_simple_vit,
)
from .conversion.vgg import BCOS_VGG_ENTRIES, SUPPORTED_VGG_SOURCES, bcosify_vgg, port_bcos_vgg
from .conversion.vit import SUPPORTED_VIT_SOURCES, bcosify_vit
from .modeling import (
    BcosCLIPModel,
    BcosCLIPResNetVisionModel,
    BcosCLIPVisionModel,
    BcosConvNextForImageClassification,
    BcosConvNextModel,
    BcosDenseNetForImageClassification,
    BcosDenseNetModel,
    BcosResNetForImageClassification,
    BcosResNetModel,
    BcosSimpleViTForImageClassification,
    BcosSimpleViTModel,
    BcosVGGForImageClassification,
    BcosVGGModel,
    BcosViTForImageClassification,
    BcosViTModel,
)


@dataclass(frozen=True)
class Family:
    """One model family: its B-cos classes, how they are registered and made, and the standard models they come from.

    A standard source (a folder or Hub id, read through its ``config.json``, or a model in memory) belongs to the
    family whose ``model_types``, ``timm_architectures`` or ``module_types`` name it (:func:`family_for_source`).
    """

    name: str  # "vit": the key of FAMILIES, the Hub tag of its models' cards, a reproduction's ``--family``
    label: str  # "ViT": how reports and messages name it
    card_name: str  # "vision transformer": how a model card names the architecture ("A B-cos vision transformer")
    backbone: type[PreTrainedModel]  # the model without a head
    classifier: type[PreTrainedModel]  # the model with the family's head (CLIP: the image-text model)
    auto_classes: Mapping[type[PreTrainedModel], tuple[type, ...]]  # the Auto classes that load a class in-process
    converter: Callable[..., PreTrainedModel]  # conversion.<family>.bcosify_<family>(cls, source, b, bias, ...)
    sources: str  # the standard sources the converter takes, in words (for error messages)
    model_types: tuple[str, ...] = ()  # transformers model_type of its standard checkpoints
    timm_architectures: re.Pattern | None = None  # timm architecture names of its standard checkpoints
    module_types: tuple[str, ...] = ()  # "package.ClassName" of its standard models in memory
    marker_files: tuple[str, ...] = ()  # files that mark a standard source folder as its own (before config.json)
    posthoc_methods: tuple[str, ...] = ()  # the post-hoc baselines (evaluation.baselines) of its standard classifier
    bcos_entries: tuple[str, ...] = ()  # the ``bcos`` package's torch.hub entries it ports (bcos_zoo.ports)
    bcos_module_types: tuple[str, ...] = ()  # "bcos.ClassName" of those models in memory
    bcos_port: Callable[[nn.Module], PreTrainedModel] | None = None  # a loaded bcos model -> the equivalent model

    @property
    def model_classes(self) -> tuple[type[PreTrainedModel], ...]:
        return (self.backbone, self.classifier)

    @property
    def config_classes(self) -> tuple[type[PretrainedConfig], ...]:
        classes = (*self.model_classes, *self.auto_classes)
        return tuple(dict.fromkeys(model_class.config_class for model_class in classes))

    @property
    def bcos_model_types(self) -> tuple[str, ...]:
        """The ``model_type`` of its B-cos checkpoints."""
        return tuple(config_class.model_type for config_class in self.config_classes)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="vit",
            label="ViT",
            card_name="vision transformer",
            backbone=BcosViTModel,
            classifier=BcosViTForImageClassification,
            auto_classes={BcosViTForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_vit,
            sources=SUPPORTED_VIT_SOURCES,
            model_types=("vit",),
            timm_architectures=re.compile(r"^(vit|deit|deit3)_"),
            module_types=("transformers.ViTForImageClassification", "timm.VisionTransformer"),
            posthoc_methods=(
                "input_x_gradient",
                "integrated_gradients",
                "gradcam",
                "attention_rollout",
                "gradient",
                "guided_backprop",
                "deeplift",
                "occlusion",
                "lime",
                "rise",
            ),  # fmt: skip
        ),
        Family(
            name="clip",
            label="CLIP",
            card_name="CLIP model",
            backbone=BcosCLIPVisionModel,
            classifier=BcosCLIPModel,
            auto_classes={
                BcosCLIPVisionModel: (AutoModel,),
                BcosCLIPModel: (AutoModel, AutoModelForZeroShotImageClassification),
                BcosCLIPResNetVisionModel: (AutoModel,),  # the image tower alone, of a ResNet
            },
            converter=bcosify_clip,
            sources=SUPPORTED_CLIP_SOURCES,
            model_types=("clip", "clip_vision_model"),
            module_types=("transformers.CLIPModel", "transformers.CLIPVisionModelWithProjection", "open_clip.CLIP"),
            marker_files=(OPEN_CLIP_CONFIG,),  # open_clip's Hub layout: no config.json
        ),
        Family(
            name="resnet",
            label="ResNet",
            card_name="ResNet",
            backbone=BcosResNetModel,
            classifier=BcosResNetForImageClassification,
            auto_classes={BcosResNetForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_resnet,
            sources=SUPPORTED_RESNET_SOURCES,
            model_types=("resnet",),
            timm_architectures=TIMM_RESNET_ARCHITECTURE,
            module_types=("transformers.ResNetForImageClassification", "timm.ResNet", "torchvision.ResNet"),
            posthoc_methods=(
                "input_x_gradient",
                "integrated_gradients",
                "gradcam",
                "gradient",
                "guided_backprop",
                "deeplift",
                "occlusion",
                "lime",
                "rise",
            ),  # fmt: skip
            bcos_entries=BCOS_RESNET_ENTRIES,
            bcos_module_types=("bcos.BcosResNet",),
            bcos_port=port_bcos_resnet,
        ),
        Family(
            name="densenet",
            label="DenseNet",
            card_name="DenseNet",
            backbone=BcosDenseNetModel,
            classifier=BcosDenseNetForImageClassification,
            auto_classes={BcosDenseNetForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_densenet,
            sources=SUPPORTED_DENSENET_SOURCES,
            timm_architectures=TIMM_DENSENET_ARCHITECTURE,
            module_types=("timm.DenseNet", "torchvision.DenseNet"),
            bcos_entries=BCOS_DENSENET_ENTRIES,
            bcos_module_types=("bcos.BcosDenseNet",),
            bcos_port=port_bcos_densenet,
        ),
        Family(
            name="vgg",
            label="VGG",
            card_name="VGG",
            backbone=BcosVGGModel,
            classifier=BcosVGGForImageClassification,
            auto_classes={BcosVGGForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_vgg,
            sources=SUPPORTED_VGG_SOURCES,
            bcos_entries=BCOS_VGG_ENTRIES,
            bcos_module_types=("bcos.BcosVGG",),
            bcos_port=port_bcos_vgg,
        ),
        Family(
            name="convnext",
            label="ConvNeXt",
            card_name="ConvNeXt",
            backbone=BcosConvNextModel,
            classifier=BcosConvNextForImageClassification,
            auto_classes={BcosConvNextForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_convnext,
            sources=SUPPORTED_CONVNEXT_SOURCES,
            bcos_entries=("convnext_tiny", "convnext_base", "convnext_tiny_bnu", "convnext_base_bnu"),
            bcos_module_types=("bcos.BcosConvNeXt",),
            bcos_port=port_bcos_convnext,
        ),
        Family(
            name="simple_vit",
            label="simple ViT",
            card_name="simple vision transformer",
            backbone=BcosSimpleViTModel,
            classifier=BcosSimpleViTForImageClassification,
            auto_classes={BcosSimpleViTForImageClassification: (AutoModel, AutoModelForImageClassification)},
            converter=bcosify_simple_vit,
            sources=SUPPORTED_SIMPLE_VIT_SOURCES,
            module_types=("bcos.SimpleViT",),  # the bcos package's standard twins
            bcos_entries=BCOS_SIMPLE_VIT_ENTRIES,
            bcos_module_types=("bcos.BcosSequential",),  # the package wraps its B-cos ViTs with their logit layer
            bcos_port=port_bcos_simple_vit,
        ),
    )
}


def register(family: Family) -> None:
    """Make the family's classes load through the Auto classes and B-cosify through ``from_pretrained_standard``.

    ``from_pretrained_standard`` calls ``cls._standard_converter(cls, source, b=..., bias=..., ...)``; the remote
    code that travels with the weights cannot import this package, so the converter is set here, on import.
    """
    for config_class in family.config_classes:
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for model_class, auto_classes in family.auto_classes.items():
        for auto_class in auto_classes:
            auto_class.register(model_class.config_class, model_class, exist_ok=True)
    for model_class in family.model_classes:
        model_class._standard_converter = staticmethod(_converter_of(family))


def _converter_of(family: Family) -> Callable[..., PreTrainedModel]:
    """The family's converter, which first sends a loaded model of another family's sources to that family's class."""

    @functools.wraps(family.converter)
    def convert(cls, source, **kwargs) -> PreTrainedModel:
        if isinstance(source, nn.Module):
            kind = f"{type(source).__module__.split('.')[0]}.{type(source).__name__}"
            owner = next((other for other in FAMILIES.values() if kind in other.module_types), family)
            if owner is not family:
                raise ValueError(
                    f"The {type(source).__name__} is a source of the {owner.label} family, not of {cls.__name__}: use "
                    f"{owner.classifier.__name__}.from_pretrained_standard(...)."
                )
        if (kwargs.get("image_mean") is None) != (kwargs.get("image_std") is None):
            raise ValueError("Pass image_mean and image_std together: the normalisation folded in needs both.")
        overrides = sorted(set(kwargs) - {"b", "bias", "image_mean", "image_std"})
        if unknown := [name for name in overrides if name not in _config_fields(family)]:
            raise ValueError(
                f"Unknown arguments {unknown}: from_pretrained_standard takes b, bias, image_mean, image_std and the "
                f"fields of {' or '.join(c.__name__ for c in family.config_classes)} (which override the source's)."
            )
        if "id2label" in kwargs:
            check_class_numbers(kwargs["id2label"], "id2label=")
        try:
            model = family.converter(cls, source, **kwargs)
        except SourceMismatchError as error:
            if not overrides:
                raise
            raise ValueError(
                f"{error} The overrides {overrides} may be why: they may set what the weights do not fix (dropout, "
                "label names, outputs) but not a weight's shape (num_labels, sizes). For other classes, B-cosify with "
                "the source's head and fine-tune a new one (scripts/finetune.py --dataset does)."
            ) from error
        except SafetensorError as error:  # a truncated download, most often: say which source and what to do
            raise ValueError(
                f"The weights of {source} cannot be read ({error}): the file is incomplete or corrupt; download it "
                "again (for a Hub id, pass force_download=True or delete it from the HF cache)."
            ) from error
        named = isinstance(source, (str, os.PathLike))
        check_class_numbers(model.config.id2label, f"The id2label of {source}" if named else "The source's id2label")
        return model

    return convert


def _config_fields(family: Family) -> set[str]:
    """What a conversion may override: the fields of the family's configs and those every transformers config has."""
    fields = set(PretrainedConfig().to_dict()) | {"num_labels"}
    for config_class in family.config_classes:
        fields |= set(inspect.signature(config_class.__init__).parameters)
    return fields - {"self", "kwargs"}


def family_of(model_or_config: PreTrainedModel | PretrainedConfig | str) -> Family | None:
    """The family of a B-cos or standard transformers model, its config, or a ``model_type``; None if none has it."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types or model_type in family.bcos_model_types:
            return family
    return None


def family_for_source(source: str | os.PathLike | nn.Module) -> Family:
    """The family a standard source B-cosifies into: a folder or Hub id by its ``config.json`` (a transformers
    ``model_type`` or a timm ``architecture``), a model in memory by its type."""
    if isinstance(source, nn.Module):
        kind = f"{type(source).__module__.split('.')[0]}.{type(source).__name__}"
        matches = [family for family in FAMILIES.values() if kind in family.module_types]
        what = f"The {type(source).__name__}"
    else:
        folder = os.fspath(source)
        for family in FAMILIES.values():
            if any(os.path.isfile(os.path.join(folder, name)) for name in family.marker_files):
                return family
        config, _ = PretrainedConfig.get_config_dict(os.fspath(source))
        model_type, architecture = config.get("model_type"), str(config.get("architecture", "")).split(".")[0]
        matches = [
            family
            for family in FAMILIES.values()
            if model_type in family.model_types
            or (family.timm_architectures is not None and family.timm_architectures.match(architecture))
        ]
        what = f"The model in {folder} ({architecture or model_type or 'no architecture named'})"
    if not matches:
        supported = "; ".join(f"{family.label}: {family.sources}" for family in FAMILIES.values())
        raise ValueError(f"{what} is not a source of any B-cos family. Supported: {supported}.")
    return matches[0]


def bcos_classifier_class(source: str | os.PathLike | nn.Module) -> type[PreTrainedModel]:
    """The B-cos image classifier that a standard source B-cosifies into."""
    family = family_for_source(source)
    if AutoModelForImageClassification not in family.auto_classes.get(family.classifier, ()):
        raise ValueError(
            f"A {family.label} source B-cosifies into {family.classifier.__name__}, not into an image classifier."
        )
    return family.classifier
