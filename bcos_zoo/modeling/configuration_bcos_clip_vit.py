"""Configuration of the B-cos CLIP ViT image tower; registers it with :class:`BcosCLIPConfig`."""

from .configuration_bcos_clip import BcosCLIPConfig, register_vision_config
from .configuration_bcos_vit import BcosViTConfig


class BcosCLIPVisionConfig(BcosViTConfig):
    """A :class:`BcosViTConfig` with CLIP's defaults (those of openai/clip-vit-base-patch32: class token, position
    embeddings, pre-LayerNorm, quick-GELU) plus ``projection_dim``, the width of the joint image-text space."""

    model_type = "bcos_clip_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 32,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "quick_gelu",
        layer_norm_eps: float = 1e-5,
        pre_layernorm: bool = True,
        projection_dim: int = 512,
        **kwargs,
    ):
        self.projection_dim = projection_dim
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            hidden_act=hidden_act,
            layer_norm_eps=layer_norm_eps,
            pre_layernorm=pre_layernorm,
            **kwargs,
        )

    @property
    def pooled_size(self) -> int:
        """Width of the pooled features the visual projection maps into the joint space."""
        return self.hidden_size


register_vision_config(BcosCLIPVisionConfig)
__all__ = ["BcosCLIPConfig", "BcosCLIPVisionConfig"]
