"""bcos_zoo: inherently interpretable B-cos vision models for the Hugging Face ecosystem."""

from transformers import AutoModelForImageClassification as _AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY as _PIPELINE_REGISTRY

from . import modeling
from .families import FAMILIES, register
from .modeling import *  # noqa: F403  (every model class, config and helper, under the names modeling exports)
from .modeling.pipeline_bcos_explanation import ImageExplanationPipeline
from .ports import from_bcos


__version__ = "0.1.0"

for _family in FAMILIES.values():
    register(_family)
# pipeline("image-explanation", model=<a model in memory>, image_processor=model.default_image_processor()); a saved
# classifier's config names the same pipeline as remote code
_PIPELINE_REGISTRY.register_pipeline(
    "image-explanation", ImageExplanationPipeline, pt_model=_AutoModelForImageClassification, type="image"
)

__all__ = [
    *modeling.__all__,
    "FAMILIES",
    "ImageExplanationPipeline",
    "from_bcos",
    "register",
    "siglip_distillation_loss",  # noqa: F405  (imported on first use: see __getattr__)
]


def __getattr__(name: str):
    """``siglip_distillation_loss``, imported when first asked for: the training package it lives in imports the
    Trainer and datasets (half a second), which loading and explaining a model do not need."""
    if name == "siglip_distillation_loss":
        from .training.clip_distillation import siglip_distillation_loss

        return siglip_distillation_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with those :func:`__getattr__` imports on first use (for tab completion and ``dir``)."""
    return sorted({*globals(), *__all__})
