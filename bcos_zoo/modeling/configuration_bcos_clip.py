"""Configurations of the B-cos CLIP models. Hub-facing: transformers and sibling files only."""

from transformers import CLIPTextConfig, PretrainedConfig

from .configuration_bcos_clip_resnet import BcosCLIPResNetConfig
from .configuration_bcos_vit import BcosViTConfig


class BcosCLIPVisionConfig(BcosViTConfig):
    """Configuration of :class:`BcosCLIPVisionModel`: a B-cos ViT backbone plus a B-cos projection to the shared
    image-text space.

    The CLIP image tower is a ViT with a class token, position embeddings, a pre-LayerNorm, quick-GELU MLPs and a
    final LayerNorm on the class token, so every field of :class:`BcosViTConfig` keeps its meaning and only the
    defaults change (those of openai/clip-vit-base-patch32).

    Args:
        projection_dim: width of the image embedding (the joint image-text space).
        Every other argument: see :class:`BcosViTConfig`.
    """

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


# The image-tower configurations a BcosCLIPConfig can hold, by model_type (see IMAGE_TOWERS in modeling_bcos_clip).
VISION_CONFIGS = {BcosCLIPVisionConfig.model_type: BcosCLIPVisionConfig}
VISION_CONFIGS[BcosCLIPResNetConfig.model_type] = BcosCLIPResNetConfig  # OpenAI CLIP's ResNets


class BcosCLIPConfig(PretrainedConfig):
    """Configuration of :class:`BcosCLIPModel`: a B-cos image tower beside the original CLIP text tower.

    Args:
        text_config: the original tower's ``CLIPTextConfig`` (or its dict).
        vision_config: the B-cos image tower's :class:`BcosCLIPVisionConfig` (or its dict); its ``projection_dim`` is
            set to this config's.
        projection_dim: width of the joint image-text space.
        logit_scale_init_value: initial log of the temperature that scales cosines into zero-shot logits.
        freeze_text_model: keep the text tower, the text projection and ``logit_scale`` frozen (``requires_grad``
            False), as B-cosification does: only the image tower learns, distilled to the original image embeddings.
    """

    model_type = "bcos_clip"
    sub_configs = {"text_config": CLIPTextConfig, "vision_config": BcosCLIPVisionConfig}

    def __init__(
        self,
        text_config: dict | CLIPTextConfig | None = None,
        vision_config: dict | BcosCLIPVisionConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,
        freeze_text_model: bool = True,
        initializer_factor: float = 1.0,
        **kwargs,
    ):
        if text_config is None:
            text_config = CLIPTextConfig(projection_dim=projection_dim)
        elif isinstance(text_config, dict):
            text_config = CLIPTextConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        if vision_config is None:
            vision_config = BcosCLIPVisionConfig(projection_dim=projection_dim)
        elif isinstance(vision_config, dict):
            kind = vision_config.get("model_type", BcosCLIPVisionConfig.model_type)
            if kind not in VISION_CONFIGS:
                raise ValueError(f"No B-cos CLIP image tower {kind!r}; supported: {sorted(VISION_CONFIGS)}.")
            vision_config = VISION_CONFIGS[kind](**{k: v for k, v in vision_config.items() if k != "model_type"})
        vision_config.projection_dim = projection_dim
        text_config.projection_dim = projection_dim
        self.text_config = text_config
        self.vision_config = vision_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.freeze_text_model = freeze_text_model
        self.initializer_factor = initializer_factor
        super().__init__(**kwargs)
