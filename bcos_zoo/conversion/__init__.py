"""B-cosification: turning standard pretrained checkpoints into B-cos models, one module per source family.

The model classes' ``from_pretrained_standard`` call into here; this package is not part of the remote code that
travels with the weights (a loaded model needs none of it).
"""

from transformers import PretrainedConfig

from .clip import bcosify_clip
from .densenet import TIMM_DENSENET_ARCHITECTURE, bcosify_densenet
from .resnet import TIMM_RESNET_ARCHITECTURE, bcosify_resnet
from .vit import bcosify_vit


__all__ = ["bcosify_clip", "bcosify_densenet", "bcosify_resnet", "bcosify_vit", "bcos_classifier_class"]


def bcos_classifier_class(source: str) -> type:
    """The B-cos image-classifier class that a standard checkpoint (folder or Hub id) B-cosifies into, read from its
    ``config.json``: a transformers ``model_type``, or a timm ``architecture`` name."""
    from .. import BcosDenseNetForImageClassification, BcosResNetForImageClassification, BcosViTForImageClassification

    config, _ = PretrainedConfig.get_config_dict(source)
    model_type, architecture = config.get("model_type"), str(config.get("architecture", "")).split(".")[0]
    if model_type == "vit" or architecture.startswith(("vit_", "deit_", "deit3_")):
        return BcosViTForImageClassification
    if model_type == "resnet" or TIMM_RESNET_ARCHITECTURE.match(architecture):
        return BcosResNetForImageClassification
    if TIMM_DENSENET_ARCHITECTURE.match(architecture):
        return BcosDenseNetForImageClassification
    raise ValueError(
        f"{source} holds a {model_type or architecture or 'model'} that no B-cos classifier is made from; supported: "
        "transformers ViT and ResNet classifiers, timm ViT/DeiT, ResNet and DenseNet classifiers"
    )
