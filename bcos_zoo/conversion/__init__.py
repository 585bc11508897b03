"""B-cosification: turning standard pretrained checkpoints into B-cos models, one module per source family.

The model classes' ``from_pretrained_standard`` call into here (``bcos_zoo.families`` hooks each family's converter
into its classes); this package is not part of the remote code that travels with the weights (a loaded model needs
none of it).
"""

from .clip import bcosify_clip
from .densenet import bcosify_densenet
from .resnet import bcosify_resnet
from .vgg import bcosify_vgg
from .vit import bcosify_vit


__all__ = ["bcosify_clip", "bcosify_densenet", "bcosify_resnet", "bcosify_vgg", "bcosify_vit"]
