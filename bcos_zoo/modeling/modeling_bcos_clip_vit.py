"""B-cos CLIP on a ViT image tower: registers the tower; a saved ViT CLIP repo loads its classes from here."""

from .configuration_bcos_clip_vit import BcosCLIPVisionConfig
from .modeling_bcos_clip import BcosCLIPModel, BcosCLIPVisionModel, register_image_tower
from .modeling_bcos_vit import BcosViTModel


BcosCLIPVisionModel.config_class = BcosCLIPVisionConfig  # the vision-only model's config, where the ViT tower is loaded
register_image_tower(BcosCLIPVisionConfig.model_type, BcosViTModel, __file__)
BcosCLIPVisionConfig.register_for_auto_class()

__all__ = ["BcosCLIPModel", "BcosCLIPVisionModel"]
