"""Pictures of explanations: the colour rendering, the contribution map, and titled panels saved as PNG.

How to read a panel: the explanation tile shows, in colour, the pixels whose dynamic weights increase the explained
logit (their colour is the colour the model's weights align with; opacity is how strongly), on white where nothing
contributes positively (a one-channel model's, black or white, on grey). The contributions tile shows each pixel's
signed share of the logit, red for, blue against, on the symmetric scale at its side.
"""

import bisect
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from .data.preprocessing import load_image, model_channels
from .modeling.explanation import BcosExplanation, colorize_contributions


def _to_uint8(array: torch.Tensor) -> np.ndarray:
    return (array.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def rgba_image(explanation: BcosExplanation, index: int = 0, smooth: int = 0) -> Image.Image:
    """The B-cos colour rendering of one image as an RGBA picture (transparent where nothing contributes)."""
    return Image.fromarray(_to_uint8(explanation.render(smooth=smooth)[index]), mode="RGBA")


def contribution_image(explanation: BcosExplanation, index: int = 0) -> Image.Image:
    """Per-pixel contributions, red positive and blue negative, as an RGB picture."""
    return Image.fromarray(_to_uint8(explanation.contribution_map()[index]), mode="RGB")


TILE = 160  # tiles are enlarged (nearest neighbour, so pixels stay visible) to at least this many pixels wide
BAR = 14  # width of the contribution map's colour scale
CAPTION = 22  # height of the captions under the tiles


def subplots(rows: int = 1, columns: int = 1, **options):
    """A matplotlib figure and its axes (``Figure.subplots``'s ``options``, ``figsize`` too), made without pyplot:
    a report plotted in a notebook switches no backend and leaves no figure open, also where saving it fails."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=options.pop("figsize", None))
    return figure, figure.subplots(rows, columns, **options)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _label(names, index: int) -> str:
    """The name of class ``index`` on one line (a newline or tab in it is a space), with its number where another
    class has the same name (ImageNet's two "crane" classes), else its number."""
    if names is None:
        return str(index)
    if isinstance(names, dict):
        name, every = names.get(index, names.get(str(index), index)), list(names.values())
    else:
        name, every = (names[index] if 0 <= index < len(names) else index), list(names)
    shared = every.count(name) > 1
    return " ".join(str(name).split()) + (f" ({index})" if shared else "")


def _wrapped(text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` in lines no wider than ``width``, broken between words (inside a word only where it is wider)."""
    lines = [""]
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}" if lines[-1] else word
        if lines[-1] and font.getlength(joined) > width:
            lines.append(word)
        else:
            lines[-1] = joined
        while len(line := lines[-1]) > 1 and font.getlength(line) > width:  # the longest start that fits
            fits = bisect.bisect_right(range(len(line) + 1), width, key=lambda n: font.getlength(line[:n])) - 1
            lines[-1:] = [line[: max(fits, 1)], line[max(fits, 1) :]]
    return lines


def explanation_title(
    explanation: BcosExplanation, index: int = 0, class_names=None, true_label: int | None = None
) -> list[str]:
    """The lines that say what a panel shows: the class explained with its output (a logit, or a CLIP cosine) and
    bias share, the predicted class and, when known, the true one."""
    target = int(explanation.target[index])
    predicted = int(explanation.logits[index].argmax())
    output = float(explanation.target_logits[index])
    share = float(explanation.bias_share[index])
    name = f"{_label(class_names, target)} ({explanation.output_name} {output:.2f}, bias share {share:.0%})"
    lines = [f"explained: {name}"]
    truth = f", true: {_label(class_names, true_label)}" if true_label is not None else ""
    lines.append(f"predicted: {_label(class_names, predicted)}{truth}")
    return lines


def _colour_scale(height: int, limit: float) -> Image.Image:
    """A vertical blue-white-red strip (+limit at the top, -limit at the bottom) with its end values written."""
    values = torch.linspace(1, -1, height)[:, None].expand(height, BAR)
    strip = Image.fromarray(_to_uint8(colorize_contributions(values[None], percentile=100)[0]), mode="RGB")
    scale = Image.new("RGB", (BAR + 56, height + 2), "white")
    scale.paste(strip, (0, 1))
    draw = ImageDraw.Draw(scale)
    font = _font(11)
    draw.text((BAR + 3, 0), f"+{limit:.2g}", fill="black", font=font)
    draw.text((BAR + 3, height // 2 - 6), "0", fill="black", font=font)
    draw.text((BAR + 3, height - 12), f"-{limit:.2g}", fill="black", font=font)
    return scale


def explanation_panel(
    pixel_values: torch.Tensor,
    explanation: BcosExplanation,
    index: int = 0,
    class_names=None,
    true_label: int | None = None,
    smooth: int = 0,
) -> Image.Image:
    """One explained image as a titled picture: input | colour explanation (on white; on grey for a one-channel
    model, whose explanation is black where dark pixels speak for the class and white where bright ones do) |
    contributions with their colour scale. The title says which class is explained (logit, bias share), what was
    predicted and, when given, the true class; it is also stored in the PNG's ``Title`` text (see :func:`save_png`)."""
    image = Image.fromarray(_to_uint8(pixel_values[index].expand(3, -1, -1).permute(1, 2, 0)), mode="RGB")
    grey = explanation.dynamic_weights.shape[1] == 2  # [x, 1 - x] of one channel
    explained = Image.new("RGBA", image.size, (128, 128, 128, 255) if grey else (255, 255, 255, 255))
    explained.alpha_composite(rgba_image(explanation, index, smooth))
    contributions = contribution_image(explanation, index)
    factor = max(1, -(-TILE // image.width))
    size = (image.width * factor, image.height * factor)
    tiles = [part.convert("RGB").resize(size, Image.NEAREST) for part in (image, explained, contributions)]
    limit = float(explanation.contributions[index].detach().abs().float().flatten().quantile(0.995))
    scale = _colour_scale(size[1], limit)

    lines = explanation_title(explanation, index, class_names, true_label)
    font, gap = _font(13), 6
    width = 3 * size[0] + 2 * gap + scale.width + gap
    drawn = [part for line in lines for part in _wrapped(line, font, width - 8)]  # a long class name wraps
    header = 18 * len(drawn) + 6
    panel = Image.new("RGB", (width, header + size[1] + CAPTION), "white")
    draw = ImageDraw.Draw(panel)
    for row, line in enumerate(drawn):
        draw.text((4, 4 + 18 * row), line, fill="black", font=font)
    captions = ("input", "explanation", "contributions")
    for column, (tile, caption) in enumerate(zip(tiles, captions)):
        left = column * (size[0] + gap)
        panel.paste(tile, (left, header))
        draw.text((left + 2, header + size[1] + 4), caption, fill="black", font=_font(11))
    panel.paste(scale, (3 * size[0] + 2 * gap + gap // 2, header - 1))
    panel.info["Title"] = " | ".join(lines)
    return panel


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Save a picture as PNG with its ``Title`` (and any other text info) as PNG text chunks."""
    text = PngImagePlugin.PngInfo()
    for key, value in picture.info.items():
        if isinstance(value, str):
            text.add_text(key, value)
    picture.save(path, format="PNG", pnginfo=text)
    return Path(path)


def _square_pad(image: Image.Image) -> Image.Image:
    """The image centred on a white square, so a model tied to square inputs sees it without squashing."""
    side = max(image.size)
    square = Image.new(image.mode, (side, side), "white")
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def explain_image_file(
    model,
    path: str | Path,
    target: int | None = None,
    processor=None,
    output: str | Path | None = None,
    smooth: int = 0,
    text: str | list[str] | None = None,
) -> Path:
    """Explain the image at ``path`` and write the titled panel next to it as ``<name>_explanation.png``.

    ``processor`` defaults to the model's own (resize and rescale to [0, 1], no normalisation). A processor that
    resizes to a fixed height and width (a ViT's) would squash a non-square photo, so the photo is first centred on
    a white square; one that resizes the shortest edge and crops keeps the aspect ratio by itself. A CLIP model
    explains the image's cosine to one of the prompts ``text`` (``target``, by default the best match).
    """
    path = Path(path)
    processor = processor or model.default_image_processor()
    processor = getattr(processor, "image_processor", processor)  # a CLIPProcessor (AutoProcessor) holds one
    image = load_image(path)
    if model_channels(model) == 1:  # a one-channel model takes the photo in greyscale
        image = image.convert("L")
    if "shortest_edge" not in (getattr(processor, "size", None) or {}):
        image = _square_pad(image)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.to(model.device, model.dtype)
    prompts = [text] if isinstance(text, str) else list(text or [])
    explanation = model.explain(pixel_values, target=target, **({"text": prompts} if prompts else {}))
    output = Path(output) if output else path.with_name(f"{path.stem}_explanation.png")
    names = dict(enumerate(prompts)) if prompts else model.config.id2label
    panel = explanation_panel(pixel_values, explanation, class_names=names, smooth=smooth)
    return save_png(panel, output)
