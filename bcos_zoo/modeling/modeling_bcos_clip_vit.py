"""B-cos CLIP on a ViT image tower: registers the tower; a saved ViT CLIP repo loads its classes from here.
Hub-facing: sibling files only."""

from .configuration_bcos_clip import BcosCLIPVisionConfig
from .modeling_bcos_clip import BcosCLIPModel, BcosCLIPVisionModel, register_image_tower
from .modeling_bcos_vit import BcosViTModel


register_image_tower(BcosCLIPVisionConfig.model_type, BcosViTModel, __file__)

__all__ = ["BcosCLIPModel", "BcosCLIPVisionModel"]
