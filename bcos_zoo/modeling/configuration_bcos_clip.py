"""Configuration of B-cos CLIP: any registered B-cos image tower beside the original CLIP text tower."""

from transformers import CLIPTextConfig, PretrainedConfig


# The image-tower configurations a BcosCLIPConfig can hold, by model_type. Each registers itself from its own module
# (configuration_bcos_clip_vit, configuration_bcos_clip_resnet), which a saved model's auto_map names, so that a repo
# holds its own tower's code and no other.
VISION_CONFIGS: dict[str, type[PretrainedConfig]] = {}
DEFAULT_TOWER = "bcos_clip_vision_model"  # the ViT tower, where its module is loaded


def register_vision_config(config_class: type[PretrainedConfig]) -> None:
    VISION_CONFIGS[config_class.model_type] = config_class


class BcosCLIPConfig(PretrainedConfig):
    """Configuration of :class:`BcosCLIPModel`: a B-cos image tower beside the original CLIP text tower.

    Args:
        text_config: the original tower's ``CLIPTextConfig`` (or its dict).
        vision_config: the B-cos image tower's config (or its dict, whose ``model_type`` names the tower).
        projection_dim: width of the joint image-text space (set on both towers' configs).
        logit_scale_init_value: initial log of the temperature that scales cosines into zero-shot logits.
        freeze_text_model: keep the text tower, the text projection and ``logit_scale`` frozen, as B-cosification
            does: only the image tower learns, distilled to the original image embeddings.
    """

    model_type = "bcos_clip"
    sub_configs = {"text_config": CLIPTextConfig, "vision_config": PretrainedConfig}  # any registered tower

    def __init__(
        self,
        text_config: dict | CLIPTextConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,  # log(1 / 0.07), CLIP's initial temperature
        freeze_text_model: bool = True,
        **kwargs,
    ):
        if not isinstance(text_config, CLIPTextConfig):
            text_config = CLIPTextConfig(**{k: v for k, v in (text_config or {}).items() if k != "model_type"})
        if not isinstance(vision_config, PretrainedConfig):
            vision_config = dict(vision_config or {})
            kind = vision_config.pop("model_type", DEFAULT_TOWER if DEFAULT_TOWER in VISION_CONFIGS else None)
            if kind not in VISION_CONFIGS:
                raise ValueError(f"No B-cos CLIP image tower {kind!r}; supported: {sorted(VISION_CONFIGS)}.")
            vision_config = VISION_CONFIGS[kind](**vision_config)
        vision_config.projection_dim = text_config.projection_dim = projection_dim
        self.text_config, self.vision_config = text_config, vision_config
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.freeze_text_model = freeze_text_model
        super().__init__(**kwargs)
