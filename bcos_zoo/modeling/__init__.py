"""The hub-facing model code: this flat folder is copied next to the weights as the model's remote code."""

from . import modeling_bcos_clip_vit  # noqa: F401  (registers the ViT image tower)
from .bcos_layers import explanation_mode
from .configuration_bcos_clip import BcosCLIPConfig
from .configuration_bcos_clip_resnet import BcosCLIPResNetConfig
from .configuration_bcos_clip_vit import BcosCLIPVisionConfig
from .configuration_bcos_convnext import BcosConvNextConfig
from .configuration_bcos_densenet import BcosDenseNetConfig
from .configuration_bcos_resnet import BcosResNetConfig
from .configuration_bcos_simple_vit import BcosSimpleViTConfig
from .configuration_bcos_vgg import BcosVGGConfig
from .configuration_bcos_vit import BcosViTConfig
from .explanation import BcosExplanation
from .modeling_bcos_clip import BcosCLIPModel, BcosCLIPVisionModel
from .modeling_bcos_clip_resnet import BcosCLIPResNetModel, BcosCLIPResNetVisionModel
from .modeling_bcos_convnext import BcosConvNextForImageClassification, BcosConvNextModel
from .modeling_bcos_densenet import BcosDenseNetForImageClassification, BcosDenseNetModel
from .modeling_bcos_resnet import BcosResNetForImageClassification, BcosResNetModel
from .modeling_bcos_simple_vit import BcosSimpleViTForImageClassification, BcosSimpleViTModel
from .modeling_bcos_vgg import BcosVGGForImageClassification, BcosVGGModel
from .modeling_bcos_vit import BcosViTForImageClassification, BcosViTModel


__all__ = [
    "BcosCLIPConfig",
    "BcosCLIPModel",
    "BcosCLIPResNetConfig",
    "BcosCLIPResNetModel",
    "BcosCLIPResNetVisionModel",
    "BcosCLIPVisionConfig",
    "BcosCLIPVisionModel",
    "BcosConvNextConfig",
    "BcosConvNextForImageClassification",
    "BcosConvNextModel",
    "BcosDenseNetConfig",
    "BcosDenseNetForImageClassification",
    "BcosDenseNetModel",
    "BcosExplanation",
    "BcosResNetConfig",
    "BcosResNetForImageClassification",
    "BcosResNetModel",
    "BcosSimpleViTConfig",
    "BcosSimpleViTForImageClassification",
    "BcosSimpleViTModel",
    "BcosVGGConfig",
    "BcosVGGForImageClassification",
    "BcosVGGModel",
    "BcosViTConfig",
    "BcosViTForImageClassification",
    "BcosViTModel",
    "explanation_mode",
]
