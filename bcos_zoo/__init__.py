"""bcos_zoo: inherently interpretable B-cos vision models for the Hugging Face ecosystem."""

from . import modeling
from .conversion.bcos_package import from_bcos
from .families import FAMILIES, register
from .modeling import *  # noqa: F403  (every model class, config and helper, under the names modeling exports)
from .training.clip_distillation import siglip_distillation_loss


__version__ = "0.1.0"

for _family in FAMILIES.values():
    register(_family)

__all__ = [*modeling.__all__, "from_bcos", "siglip_distillation_loss"]
