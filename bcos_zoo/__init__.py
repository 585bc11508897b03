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
    BcosExplanation,
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

__all__ = [
    "BcosCLIPConfig",
    "BcosCLIPModel",
    "BcosCLIPVisionConfig",
    "BcosCLIPVisionModel",
    "BcosExplanation",
    "BcosViTConfig",
    "BcosViTForImageClassification",
    "BcosViTModel",
    "explanation_mode",
    "siglip_distillation_loss",
]
