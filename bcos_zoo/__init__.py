"""bcos_zoo: inherently interpretable B-cos vision models for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .modeling import (
    BcosExplanation,
    BcosViTConfig,
    BcosViTForImageClassification,
    BcosViTModel,
    explanation_mode,
)


__version__ = "0.1.0"

AutoConfig.register(BcosViTConfig.model_type, BcosViTConfig, exist_ok=True)
AutoModel.register(BcosViTConfig, BcosViTForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(BcosViTConfig, BcosViTForImageClassification, exist_ok=True)

__all__ = [
    "BcosExplanation",
    "BcosViTConfig",
    "BcosViTForImageClassification",
    "BcosViTModel",
    "explanation_mode",
]
