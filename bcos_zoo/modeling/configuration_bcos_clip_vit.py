"""Configuration of the B-cos CLIP ViT image tower; registers it with :class:`BcosCLIPConfig`."""

from .configuration_bcos_clip import BcosCLIPConfig, register_vision_config
from .configuration_bcos_vit import BcosViTConfig


# openai/clip-vit-base-patch32's settings, where they differ from BcosViTConfig's defaults
CLIP_VIT_DEFAULTS = {"patch_size": 32, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
CLIP_VIT_DEFAULTS |= {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "pre_layernorm": True}


class BcosCLIPVisionConfig(BcosViTConfig):
    """A :class:`BcosViTConfig` with CLIP's defaults (those of openai/clip-vit-base-patch32: class token, position
    embeddings, pre-LayerNorm, quick-GELU) plus ``projection_dim``, the width of the joint image-text space."""

    model_type = "bcos_clip_vision_model"
    base_config_key = "vision_config"

    def __init__(self, projection_dim: int = 512, **kwargs):
        self.projection_dim = projection_dim
        super().__init__(**{**CLIP_VIT_DEFAULTS, **kwargs})

    @property
    def pooled_size(self) -> int:
        """Width of the pooled features the visual projection maps into the joint space."""
        return self.hidden_size


register_vision_config(BcosCLIPVisionConfig)
__all__ = ["BcosCLIPConfig", "BcosCLIPVisionConfig"]
