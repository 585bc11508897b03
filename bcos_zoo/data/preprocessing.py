"""The one path from a PIL image to a model's pixels.

Evaluation, localisation, the example explanations and the Spaces all see an image through the image processor
saved beside the model's weights (for a B-cos model: resize and rescale to [0, 1], never normalise), so the same
image gives the same pixels everywhere, including to a user who loads the model from the Hub. Only training adds
random augmentation (timm's random-resized crop and flip) on top. An image file is read as a viewer shows it
(``to_rgb``, which lives in the image-explanation pipeline's module, the one a saved classifier's users run).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor

from ..modeling.pipeline_bcos_explanation import to_rgb  # the saved pipeline reads images as the package does


ImageTransform = Callable[[Image.Image], torch.Tensor]


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (see :func:`to_rgb`), upright (EXIF orientation applied)."""
    with Image.open(path) as image:
        return to_rgb(ImageOps.exif_transpose(image))


@dataclass
class ProcessorTransform:
    """PIL image -> (3, H, W) float tensor, exactly as ``processor`` prepares it for the model. A transform is a
    class rather than a closure wherever a dataset holds it: DataLoader workers started by spawn or forkserver (the
    default on macOS, Windows and, from Python 3.14, Linux) receive the dataset pickled."""

    processor: BaseImageProcessor  # what localisation reads to carry boxes through the resize and crop

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=to_rgb(image), return_tensors="pt")["pixel_values"][0]


def model_transform(model) -> ImageTransform:
    """The evaluation transform of a B-cos model: its own saved processor (see ``default_image_processor``)."""
    return ProcessorTransform(model.default_image_processor())


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
