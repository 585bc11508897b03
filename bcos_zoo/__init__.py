"""bcos_zoo: inherently interpretable B-cos vision models for the Hugging Face ecosystem."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
)

from .modeling import (
    BcosCLIPConfig,
    BcosCLIPModel,
    BcosCLIPVisionConfig,
    BcosCLIPVisionModel,
    BcosDenseNetConfig,
    BcosDenseNetForImageClassification,
    BcosDenseNetModel,
    BcosExplanation,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosResNetModel,
    BcosViTConfig,
    BcosViTForImageClassification,
    BcosViTModel,
    explanation_mode,
    siglip_distillation_loss,
)


__version__ = "0.1.0"

AutoConfig.register(BcosViTConfig.model_type, BcosViTConfig, exist_ok=True)
AutoModel.register(BcosViTConfig, BcosViTForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(BcosViTConfig, BcosViTForImageClassification, exist_ok=True)
AutoConfig.register(BcosCLIPVisionConfig.model_type, BcosCLIPVisionConfig, exist_ok=True)
AutoModel.register(BcosCLIPVisionConfig, BcosCLIPVisionModel, exist_ok=True)
AutoConfig.register(BcosCLIPConfig.model_type, BcosCLIPConfig, exist_ok=True)
AutoModel.register(BcosCLIPConfig, BcosCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(BcosCLIPConfig, BcosCLIPModel, exist_ok=True)
AutoConfig.register(BcosResNetConfig.model_type, BcosResNetConfig, exist_ok=True)
AutoModel.register(BcosResNetConfig, BcosResNetForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(BcosResNetConfig, BcosResNetForImageClassification, exist_ok=True)
AutoConfig.register(BcosDenseNetConfig.model_type, BcosDenseNetConfig, exist_ok=True)
AutoModel.register(BcosDenseNetConfig, BcosDenseNetForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(BcosDenseNetConfig, BcosDenseNetForImageClassification, exist_ok=True)

__all__ = [
    "BcosCLIPConfig",
    "BcosCLIPModel",
    "BcosCLIPVisionConfig",
    "BcosCLIPVisionModel",
    "BcosDenseNetConfig",
    "BcosDenseNetForImageClassification",
    "BcosDenseNetModel",
    "BcosExplanation",
    "BcosResNetConfig",
    "BcosResNetForImageClassification",
    "BcosResNetModel",
    "BcosViTConfig",
    "BcosViTForImageClassification",
    "BcosViTModel",
    "explanation_mode",
    "siglip_distillation_loss",
]

from . import conversion as _conversion  # noqa: E402


for _cls, _name in [
    (BcosViTForImageClassification, "bcosify_vit"),
    (BcosCLIPModel, "bcosify_clip"),
    (BcosCLIPVisionModel, "bcosify_clip"),
    (BcosResNetForImageClassification, "bcosify_resnet"),
    (BcosResNetModel, "bcosify_resnet"),
    (BcosDenseNetForImageClassification, "bcosify_densenet"),
    (BcosDenseNetModel, "bcosify_densenet"),
    (BcosViTModel, "bcosify_vit"),
]:
    _cls._standard_converter = staticmethod(getattr(_conversion, _name))
