"""The smallest model of every registered family, built from its config with random weights: for tests that must
cover each family (a registry family without an entry here fails them)."""

from collections.abc import Callable

from transformers import PreTrainedModel

from bcos_zoo import (
    BcosCLIPConfig,
    BcosCLIPModel,
    BcosConvNextConfig,
    BcosConvNextForImageClassification,
    BcosDenseNetConfig,
    BcosDenseNetForImageClassification,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosSimpleViTConfig,
    BcosSimpleViTForImageClassification,
    BcosVGGConfig,
    BcosVGGForImageClassification,
    BcosViTConfig,
    BcosViTForImageClassification,
)


TOWER = dict(
    image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=3, intermediate_size=48
)
TEXT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)

# family name -> its tiny classifier (CLIP: the image-text model)
TINY_CLASSIFIERS: dict[str, Callable[[], PreTrainedModel]] = {
    "vit": lambda: BcosViTForImageClassification(BcosViTConfig(**TOWER, num_labels=3)),
    "resnet": lambda: BcosResNetForImageClassification(
        BcosResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1])
    ),
    "densenet": lambda: BcosDenseNetForImageClassification(BcosDenseNetConfig(num_init_features=8, block_config=[1])),
    "convnext": lambda: BcosConvNextForImageClassification(BcosConvNextConfig(hidden_sizes=[8], depths=[1])),
    "simple_vit": lambda: BcosSimpleViTForImageClassification(
        BcosSimpleViTConfig(**{**TOWER, "patch_size": 2}, conv_stem=[8, 16], num_labels=3)
    ),
    "clip": lambda: BcosCLIPModel(BcosCLIPConfig(vision_config=TOWER, text_config=TEXT, projection_dim=8)),
    "vgg": lambda: BcosVGGForImageClassification(BcosVGGConfig(hidden_sizes=[8], depths=[1], head_size=8)),
}
