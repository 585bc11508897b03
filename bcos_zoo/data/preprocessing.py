"""The one path from a PIL image to a model's pixels.

Evaluation, localisation, the example explanations and the Spaces all see an image through the image processor
saved beside the model's weights (for a B-cos model: resize and rescale to [0, 1], never normalise), so the same
image gives the same pixels everywhere, including to a user who loads the model from the Hub. Only training adds
random augmentation (timm's random-resized crop and flip) on top. An image is taken as a viewer shows it (upright,
``to_rgb``, which lives in the image-explanation pipeline's module, the one a saved classifier's users run), and in
greyscale by a one-channel model, as that pipeline gives it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor

from ..modeling.pipeline_bcos_explanation import read_image, to_rgb  # as the saved pipeline reads images


ImageTransform = Callable[[Image.Image], torch.Tensor]


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (see :func:`to_rgb`), upright (EXIF orientation applied)."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def config_channels(config) -> int:
    """The channels of the pixels a model of ``config`` takes: 1 for a greyscale model, else 3 (a CLIP model's are
    its image tower's)."""
    return getattr(getattr(config, "vision_config", config), "num_channels", 3)


def model_channels(model) -> int:
    """:func:`config_channels` of a model."""
    return config_channels(model.config)


@dataclass
class ProcessorTransform:
    """PIL image -> (C, H, W) float tensor, exactly as ``processor`` prepares it for the model. A transform is a
    class rather than a closure wherever a dataset holds it: DataLoader workers started by spawn or forkserver (the
    default on macOS, Windows and, from Python 3.14, Linux) receive the dataset pickled."""

    processor: BaseImageProcessor  # what localisation reads to carry boxes through the resize and crop
    channels: int = 3  # 1: the image in greyscale

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = read_image(image)  # upright, as a viewer shows it
        image = image.convert("L") if self.channels == 1 else image
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def model_transform(model) -> ImageTransform:
    """The evaluation transform of a B-cos model: its own saved processor (see ``default_image_processor``)."""
    return ProcessorTransform(model.default_image_processor(), model_channels(model))


def training_transform(
    image_size: int,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    channels: int = 3,
) -> ImageTransform:
    """timm's training transform (random-resized crop and horizontal flip, no colour jitter), by default without
    normalisation: a B-cos model takes images in [0, 1]. A standard model being trained passes its own mean/std.
    With ``channels=1`` the image is taken in greyscale first."""
    from timm.data import create_transform
    from torchvision.transforms import Compose, Grayscale

    augment = create_transform(
        input_size=(channels, image_size, image_size),
        is_training=True,
        scale=crop_scale,
        color_jitter=None,
        mean=mean or (0.0,) * channels,
        std=std or (1.0,) * channels,
    )
    return Compose([Grayscale(), augment]) if channels == 1 else augment
