"""The B-cos CLIP image tower alone with a ResNet backbone. Hub-facing: transformers and sibling files only."""

from .configuration_bcos_clip_resnet import BcosCLIPResNetConfig
from .modeling_bcos_clip import BcosCLIPVisionModel


class BcosCLIPResNetVisionModel(BcosCLIPVisionModel):
    """:class:`BcosCLIPVisionModel` on a :class:`BcosCLIPResNetConfig`: the same model, under the config class that
    transformers' Auto classes require a loaded class to name."""

    config_class = BcosCLIPResNetConfig


BcosCLIPResNetConfig.register_for_auto_class()
BcosCLIPResNetVisionModel.register_for_auto_class("AutoModel")
