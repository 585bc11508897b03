"""The one path from a PIL image to a model's pixels.

Evaluation, localisation, the example explanations and the Spaces all see an image through the image processor
saved beside the model's weights (for a B-cos model: resize and rescale to [0, 1], never normalise), so the same
image gives the same pixels everywhere, including to a user who loads the model from the Hub. Only training adds
random augmentation (timm's random-resized crop and flip) on top.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor


ImageTransform = Callable[[Image.Image], torch.Tensor]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as the 8-bit RGB a viewer shows: 16-bit and float greyscale rescaled to 8 bits (Pillow's own
    conversion clips them, turning a 16-bit image white), transparency laid on white."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I") else max(float(values.max()), 1e-12)
        grey = (values / top * 255).clip(0, 255).round().astype(np.uint8)
        if "transparency" in image.info:  # a tRNS key names a 16-bit value, which the rescale would merge
            grey[np.asarray(image) == image.info["transparency"]] = 255  # with others: key it here, on white
        image = Image.fromarray(grey)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # an alpha band or a tRNS colour
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (see :func:`to_rgb`), upright (EXIF orientation applied)."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


def processor_transform(processor: BaseImageProcessor) -> ImageTransform:
    """PIL image -> (3, H, W) float tensor, exactly as ``processor`` prepares it for the model."""

    def transform(image: Image.Image) -> torch.Tensor:
        return processor(images=to_rgb(image), return_tensors="pt")["pixel_values"][0]

    return transform


def model_transform(model) -> ImageTransform:
    """The evaluation transform of a B-cos model: its own saved processor (see ``default_image_processor``)."""
    return processor_transform(model.default_image_processor())


def training_transform(
    image_size: int,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> ImageTransform:
    """timm's training transform (random-resized crop and horizontal flip, no colour jitter), by default without
    normalisation: a B-cos model takes images in [0, 1]. A standard model being trained passes its own mean/std."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, image_size, image_size),
        is_training=True,
        scale=crop_scale,
        color_jitter=None,
        mean=mean,
        std=std,
    )
