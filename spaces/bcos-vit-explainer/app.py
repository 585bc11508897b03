"""B-cos ViT explainer: a Gradio Space that shows which pixels make a B-cos Vision Transformer predict a class.

A B-cos network computes a dynamic linear map of its input, ``logit = W(x) x + bias``, so ``W(x)`` is the model's
own exact explanation rather than a post-hoc estimate. The model is loaded as remote code (this Space needs only
transformers, not the package that trained it) and returns that explanation from ``model.explain``; this file only
reads images robustly and turns explanations into pictures.

Settings (environment): MODEL_ID (a Hub id or a local model folder), MODEL_REVISION, QUEUE_MAX_SIZE, and
Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import functools
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402


MODEL_ID = os.environ.get("MODEL_ID", "bcos-zoo/bcos-vit-s")
REVISION = os.environ.get("MODEL_REVISION") or None
QUEUE_MAX_SIZE = int(os.environ.get("QUEUE_MAX_SIZE", "32"))
MAX_PIXELS = 100_000_000  # checked from the header, before anything is decoded
Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check is replaced by MAX_PIXELS, with a clear message
DISPLAY_SIZE = 320  # pictures are enlarged (nearest neighbour, so pixels stay visible) to at least this size
EXAMPLES = sorted(str(path) for path in (Path(__file__).parent / "examples").glob("*.jpg"))
CACHE_LIFETIME = (1800, 3600)  # every 30 minutes, drop uploads and results older than an hour
DOWNLOAD = ["download", "fullscreen"]  # PNG downloads; no share button, the Space stays self-contained

log = logging.getLogger("bcos-vit-explainer")
model = AutoModelForImageClassification.from_pretrained(MODEL_ID, revision=REVISION, trust_remote_code=True).eval()
model.to("cuda" if torch.cuda.is_available() else "cpu")
processor = AutoImageProcessor.from_pretrained(MODEL_ID, revision=REVISION)
SIZE = model.config.image_size
# explain() switches the shared model into explanation mode, so two explanations must never overlap.
MODEL_LOCK = threading.Lock()


def unique_labels(id2label: dict[int, str]) -> list[str]:
    """Class names by index, made unique (ImageNet repeats a few), so a name always identifies one class."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name} ({i})" for i, name in enumerate(names)]


LABELS = unique_labels(model.config.id2label)
LABEL_INDEX = {name: i for i, name in enumerate(LABELS)}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit and float greyscale are rescaled, transparency lies on white."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I") else max(float(values.max()), 1e-12)
        image = Image.fromarray((values / top * 255).clip(0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def read_image(upload: str | dict | None) -> Image.Image:
    """Decode an upload into an upright RGB image, or raise a short ``gr.Error``.

    The image is not resized here: the model's own image processor does that, so the Space sees exactly the pixels
    that evaluation and any user of the model's repo get from the same image.

    Events take the raw upload (``preprocess=False``) so that a file Pillow cannot read is answered with a message
    instead of a server error.
    """
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error("Upload an image first, or pick an example.")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                limit = MAX_PIXELS // 1_000_000
                raise gr.Error(
                    f"The image is too large ({image.width}x{image.height}); the limit is {limit} megapixels."
                )
            image = to_rgb(ImageOps.exif_transpose(image))
    except gr.Error:
        raise
    except Exception as error:  # Pillow reports unreadable files with many exception types
        log.info("unreadable upload %s: %r", path, error)
        raise gr.Error("This file could not be read as an image: not an image, or truncated or corrupt.") from None
    return image


def picture(array: torch.Tensor, title: str) -> Image.Image:
    """An (H, W, C) tensor in [0, 1] as an 8-bit picture, enlarged by a whole factor, titled for download.

    The PNG text chunks travel with a download. The unique id also keeps identical results apart: Gradio writes a
    picture to a cache file named by its content, in place, and a concurrent download of the same file could
    otherwise read it half-written.
    """
    data = (array.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(data)
    scale = max(1, -(-DISPLAY_SIZE // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.info.update(Title=title, Source=MODEL_ID, Software="bcos-vit-explainer", Id=uuid.uuid4().hex)
    return image


def friendly_errors(fn: Callable) -> Callable:
    """Turn an unexpected failure into a short message; the details go to the server log, never to the page."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except Exception:
            log.exception("explaining failed")
            raise gr.Error("Something went wrong while explaining this image; please try another one.") from None

    return wrapper


def explain(image: Image.Image, target: int | None) -> tuple[torch.Tensor, object]:
    """Model input and explanation of one image for ``target`` (``None``: the top class)."""
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with MODEL_LOCK:
        explanation = model.explain(pixel_values, target=target)
    return pixel_values, explanation


def views(pixel_values: torch.Tensor, explanation) -> tuple[Image.Image, Image.Image, Image.Image, str]:
    """Input as the model sees it, colour explanation (RGBA), contribution map, and the completeness line."""
    target = int(explanation.target[0])
    logit = float(explanation.target_logits[0])
    pixels = float(explanation.contributions[0].double().sum())
    bias = float(explanation.bias[0])
    share = abs(pixels) / max(abs(pixels) + abs(bias), 1e-12)
    summary = (
        f"**{LABELS[target]}**: logit {logit:.4f} = pixel contributions {pixels:.4f} + bias {bias:.4f} "
        f"(the pixels account for {share:.0%})"
    )
    return (
        picture(pixel_values[0].permute(1, 2, 0), "Input, as the model sees it"),
        picture(explanation.render()[0], f"B-cos explanation of {LABELS[target]}"),
        picture(explanation.contribution_map()[0], f"Contributions to {LABELS[target]}"),
        summary,
    )


@friendly_errors
def predict(upload: str | dict | None) -> tuple:
    """Top-5 predictions and the explanation of the top class; the class picker is set to that class."""
    pixel_values, explanation = explain(read_image(upload), None)
    scores = explanation.logits[0].float().softmax(-1)
    top = scores.topk(min(5, len(LABELS)))
    top5 = {LABELS[i]: float(s) for s, i in zip(top.values.tolist(), top.indices.tolist())}
    return top5, *views(pixel_values, explanation), LABELS[int(explanation.target[0])]


@friendly_errors
def explain_class(upload: str | dict | None, class_name: str | None) -> tuple:
    """The explanation of the class the user picked."""
    if class_name not in LABEL_INDEX:
        raise gr.Error("Pick one of the model's classes to explain.")
    return views(*explain(read_image(upload), LABEL_INDEX[class_name]))


INTRO = f"""# B-cos ViT explainer
A B-cos network is a dynamic linear map, `logit = W(x) x + bias`: the explanation below is the model's own
`W(x)`, exact, not a post-hoc estimate. Colour: the colours the model looks for where they raise the logit.
Contributions: `W(x) x` per pixel, red for and blue against the class. Model: `{MODEL_ID}`."""

with gr.Blocks(title="B-cos ViT explainer", analytics_enabled=False, delete_cache=CACHE_LIFETIME) as demo:
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column():
            upload = gr.Image(
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                label="Image",
                elem_id="upload",
                height=320,
            )
            button = gr.Button("Explain", variant="primary")
        with gr.Column():
            top5 = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="predictions")
            class_picker = gr.Dropdown(LABELS, value=None, label="Explain another class", elem_id="class-picker")
    with gr.Row():
        seen = gr.Image(label="Input, as the model sees it", format="png", interactive=False, buttons=["fullscreen"])
        colour = gr.Image(label="Explanation", format="png", interactive=False, buttons=DOWNLOAD, elem_id="explanation")
        contributions = gr.Image(
            label="Contributions", format="png", interactive=False, buttons=DOWNLOAD, elem_id="contributions"
        )
    summary = gr.Markdown(label="Completeness", elem_id="completeness")
    explained = [seen, colour, contributions, summary]
    examples = gr.Examples(EXAMPLES, inputs=upload, label="Examples")

    # The events take the raw upload (preprocess=False): read_image answers unreadable files with a message.
    outputs = [top5, *explained, class_picker]
    button.click(predict, upload, outputs, api_name="predict", preprocess=False, concurrency_id="model")
    examples.load_input_event.then(
        predict, upload, outputs, preprocess=False, api_visibility="private", concurrency_id="model"
    )
    class_picker.input(
        explain_class, [upload, class_picker], explained, api_name="explain", preprocess=False, concurrency_id="model"
    )

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1).launch(
        share=False, show_error=False, max_file_size="50mb", run_history=False
    )
