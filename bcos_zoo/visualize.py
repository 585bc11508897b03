"""Pictures of explanations: the colour rendering, the contribution map, and panels saved as PNG."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .modeling.explanation import BcosExplanation


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, upright (EXIF orientation applied)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _to_uint8(array: torch.Tensor) -> np.ndarray:
    return (array.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def rgba_image(explanation: BcosExplanation, index: int = 0, smooth: int = 0) -> Image.Image:
    """The B-cos colour rendering of one image as an RGBA picture (transparent where nothing contributes)."""
    return Image.fromarray(_to_uint8(explanation.render(smooth=smooth)[index]), mode="RGBA")


def contribution_image(explanation: BcosExplanation, index: int = 0) -> Image.Image:
    """Per-pixel contributions, red positive and blue negative, as an RGB picture."""
    return Image.fromarray(_to_uint8(explanation.contribution_map()[index]), mode="RGB")


def explanation_panel(
    pixel_values: torch.Tensor, explanation: BcosExplanation, index: int = 0, smooth: int = 0, scale: int = 1
) -> Image.Image:
    """Input, colour explanation (over black) and contribution map, side by side."""
    image = Image.fromarray(_to_uint8(pixel_values[index].permute(1, 2, 0)), mode="RGB")
    explained = Image.new("RGBA", image.size, (0, 0, 0, 255))
    explained.alpha_composite(rgba_image(explanation, index, smooth))
    parts = [image, explained.convert("RGB"), contribution_image(explanation, index)]
    width, height = image.size
    panel = Image.new("RGB", (3 * width, height), "white")
    for i, part in enumerate(parts):
        panel.paste(part, (i * width, 0))
    return panel.resize((3 * width * scale, height * scale), Image.NEAREST) if scale > 1 else panel


def explain_image_file(
    model,
    path: str | Path,
    target: int | None = None,
    processor=None,
    output: str | Path | None = None,
    smooth: int = 0,
) -> Path:
    """Explain the image at ``path`` and write the panel next to it as ``<name>_explanation.png``.

    ``processor`` defaults to the model's own (resize and rescale to [0, 1], no normalisation).
    """
    path = Path(path)
    processor = processor or model.default_image_processor()
    pixel_values = processor(images=load_image(path), return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(model.device, model.dtype)
    explanation = model.explain(pixel_values, target=target)
    output = Path(output) if output else path.with_name(f"{path.stem}_explanation.png")
    explanation_panel(pixel_values, explanation, smooth=smooth).save(output)
    return output
