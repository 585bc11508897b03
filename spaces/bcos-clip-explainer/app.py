"""B-cos CLIP explainer: a Gradio Space that shows which pixels make an image match free-text prompts.

Only CLIP's image tower is a B-cos network; the text tower is the original. The similarity of an image to a prompt,
with the image embedding's norm held fixed, is then a dynamic linear function of the pixels, ``W(x) x + bias``, and
``model.explain(x, text_embeds=...)`` returns that exact explanation. The model is loaded as remote code (this Space
needs only transformers); this file only reads images robustly and turns explanations into pictures.

Settings (environment): MODEL_ID (a Hub id or a local model folder), MODEL_REVISION, QUEUE_MAX_SIZE, and
Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import functools
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer  # noqa: E402


MODEL_ID = os.environ.get("MODEL_ID", "bcos-zoo/bcos-clip-vit-b32")
REVISION = os.environ.get("MODEL_REVISION") or None
QUEUE_MAX_SIZE = int(os.environ.get("QUEUE_MAX_SIZE", "32"))
MAX_PIXELS = 100_000_000  # checked from the header, before anything is decoded
Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check is replaced by MAX_PIXELS, with a clear message
MAX_PROMPTS = 8
DISPLAY_SIZE = 320  # pictures are enlarged (nearest neighbour, so pixels stay visible) to at least this size
HERE = Path(__file__).resolve().parent
EXAMPLES = [
    [str(HERE / "examples" / "chelsea.jpg"), "a photo of a cat\na photo of a dog\na cup of coffee"],
    [str(HERE / "examples" / "coffee.jpg"), "a cup of coffee\na spoon\na photo of a cat"],
    [str(HERE / "examples" / "rocket.jpg"), "a rocket\nthe sky\na tree"],
]
UPLOADS = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")  # where Gradio puts them
READABLE = (UPLOADS.resolve(), HERE / "examples")  # the only files a request may have read
CACHE_LIFETIME = (1800, 3600)  # every 30 minutes, drop uploads and results older than an hour
DOWNLOAD = ["download", "fullscreen"]  # PNG downloads; no share button, the Space stays self-contained

log = logging.getLogger("bcos-clip-explainer")
model = AutoModel.from_pretrained(MODEL_ID, revision=REVISION, trust_remote_code=True).eval()
model.to("cuda" if torch.cuda.is_available() else "cpu")
processor = AutoImageProcessor.from_pretrained(MODEL_ID, revision=REVISION)
tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, revision=REVISION, trust_remote_code=True)
# One explanation at a time: a model saved before explanation mode was per thread switches flags on its shared
# modules (a pinned revision may be such a model), and one at a time also bounds the memory in use.
MODEL_LOCK = threading.Lock()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as the 8-bit RGB a viewer shows: transparency laid on white, and deep greyscale brought to 8
    bits (Pillow's own conversion clips it, turning a 16-bit image white): integer modes (``I;16``, ``I``: how Pillow
    opens 16-bit files) as 0..65535, up to their maximum if larger; ``F`` as 0..1 when no value exceeds 1, else as
    0..255 (how Pillow converts an 8-bit image), up to its maximum if larger. NaN is black."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=np.inf, neginf=0.0)
        most = float(values[np.isfinite(values)].max(initial=0))
        scale = 65535.0 if image.mode != "F" else 255.0 if most > 1 else 1.0
        top = max(most, scale)
        grey = (values / top * 255).clip(0, 255).round().astype(np.uint8)
        if "transparency" in image.info:  # a tRNS key names a 16-bit value, which the rescale would merge
            grey[np.asarray(image) == image.info["transparency"]] = 255  # with others: key it here, on white
        image = Image.fromarray(grey)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:  # an alpha band or a tRNS colour
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def upload_path(upload: str | dict | None) -> str | None:
    """The file an upload names, refused with a ``gr.Error`` unless it is an upload or a bundled example.

    Events take the raw upload (``preprocess=False``), and Gradio checks where a file lies only when the request
    marks it with ``meta``: without this check, a request could have any image on the server read and shown back.
    """
    path = upload.get("path") if isinstance(upload, dict) else upload
    if path and not any(Path(str(path)).resolve().is_relative_to(folder) for folder in READABLE):
        raise gr.Error("Only images uploaded to this page, or its examples, can be explained.")
    return path


def read_image(upload: str | dict | None) -> Image.Image:
    """Decode an upload into an upright RGB image, or raise a short ``gr.Error``.

    The image is not resized here: the model's own image processor does that, so the Space sees exactly the pixels
    that evaluation and any user of the model's repo get from the same image.

    Events take the raw upload (``preprocess=False``) so that a file Pillow cannot read is answered with a message
    instead of a server error.
    """
    path = upload_path(upload)
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
    image.info.update(Title=title, Source=MODEL_ID, Software="bcos-clip-explainer", Id=uuid.uuid4().hex)
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


def parse_prompts(text: str | None) -> list[str]:
    """One prompt per line; blank lines and repeats are dropped. A prompt longer than the text tower reads is
    refused: cut silently, two prompts that differ only past the limit would get the same score."""
    prompts = list(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))
    if not prompts:
        raise gr.Error("Enter at least one prompt, one per line.")
    if len(prompts) > MAX_PROMPTS:
        raise gr.Error(f"Enter at most {MAX_PROMPTS} prompts; got {len(prompts)}.")
    limit = tokenizer.model_max_length
    lengths = [len(ids) for ids in tokenizer(prompts, verbose=False)["input_ids"]]
    too_long = [prompt for prompt, length in zip(prompts, lengths) if length > limit]
    if too_long:
        named = ", ".join(repr(prompt[:40] + "…" if len(prompt) > 40 else prompt) for prompt in too_long)
        raise gr.Error(f"The model reads at most {limit} tokens of a prompt; shorten {named}.")
    return prompts


def localisation_view(pixel_values: torch.Tensor, contributions: torch.Tensor) -> torch.Tensor:
    """(H, W, 3): the image where the contributions are positive, dimmed to a fifth where they are not."""
    positive = contributions.clamp_min(0)
    scale = torch.quantile(positive.flatten().float(), 0.995).clamp_min(1e-12)
    heat = (positive / scale).clamp(0, 1)[..., None]
    image = pixel_values.permute(1, 2, 0)
    return image * (0.2 + 0.8 * heat)


@friendly_errors
def zero_shot(upload: str | dict | None, prompts_text: str | None, localise: bool = False) -> tuple:
    """Zero-shot scores over the prompts, each prompt's explanation and, if asked, the localisation view."""
    prompts = parse_prompts(prompts_text)
    image = read_image(upload)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    count = len(prompts)
    batch = pixel_values.expand(count, -1, -1, -1)
    targets = torch.arange(count, device=model.device)
    with MODEL_LOCK:
        tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        explanation = model.explain(batch, text_embeds=text, target=targets)
        contrast = None
        if localise and count > 1:
            # Each prompt against the others: cos(prompt) - mean cos(others) is linear in the image embedding, so
            # it is explained exactly; what all prompts share cancels and each prompt's own evidence stays.
            others = (text.sum(0, keepdim=True) - text) / (count - 1)
            contrast = model.explain(batch, text_embeds=text - others, target=targets)
    cosines = explanation.logits[0].float()
    scores = (model.logit_scale.exp().float() * cosines).softmax(-1)
    rendered = explanation.render()
    explanations = []
    for k, prompt in enumerate(prompts):
        pixels = float(explanation.contributions[k].double().sum())
        caption = f"{prompt}: cosine {cosines[k]:.4f} = pixels {pixels:.4f} + bias {float(explanation.bias[k]):.4f}"
        explanations.append((picture(rendered[k], f"B-cos explanation of {prompt!r}"), caption))
    localised = []
    if localise:
        source = contrast if contrast is not None else explanation  # a single prompt has no others to beat
        for k, prompt in enumerate(prompts):
            view = localisation_view(pixel_values[0], source.contributions[k])
            localised.append((picture(view, f"Localisation of {prompt!r}"), prompt))
    return (
        {prompt: float(score) for prompt, score in zip(prompts, scores)},
        picture(pixel_values[0].permute(1, 2, 0), "Input, as the model sees it"),
        explanations,
        gr.Gallery(value=localised, visible=bool(localise)),
    )


INTRO = f"""# B-cos CLIP explainer
Zero-shot classification with a B-cos CLIP image tower: enter prompts, one per line. For each prompt, the picture
shows the colours and places in the image that raise its similarity (the model's own exact explanation, not a
post-hoc estimate). The localisation view explains each prompt against the others and shows the image only where
it supports that prompt. Model: `{MODEL_ID}`."""

with gr.Blocks(title="B-cos CLIP explainer", analytics_enabled=False, delete_cache=CACHE_LIFETIME) as demo:
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
            prompts = gr.Textbox(
                "a photo of a cat\na photo of a dog",
                lines=4,
                label=f"Prompts (one per line, at most {MAX_PROMPTS})",
                elem_id="prompts",
            )
            localise = gr.Checkbox(False, label="Localisation view (each prompt against the others)")
            button = gr.Button("Explain", variant="primary")
        with gr.Column():
            scores = gr.Label(label="Zero-shot scores", elem_id="scores")
            seen = gr.Image(
                label="Input, as the model sees it", format="png", interactive=False, buttons=["fullscreen"]
            )
    explanations = gr.Gallery(
        label="Explanation per prompt", format="png", columns=4, buttons=DOWNLOAD, elem_id="explanations"
    )
    localised = gr.Gallery(
        label="Localisation view", format="png", columns=4, buttons=DOWNLOAD, visible=False, elem_id="localised"
    )
    examples = gr.Examples(EXAMPLES, inputs=[upload, prompts], label="Examples")

    # The events take the raw upload (preprocess=False): read_image answers unreadable files with a message.
    inputs, outputs = [upload, prompts, localise], [scores, seen, explanations, localised]
    running = [
        button.click(zero_shot, inputs, outputs, api_name="explain", preprocess=False, concurrency_id="model"),
        examples.load_input_event.then(
            zero_shot, inputs, outputs, preprocess=False, api_visibility="private", concurrency_id="model"
        ),
    ]
    # A new or removed image clears the results at once, in the page, so they never stand beside another image
    # ({} empties a Label; null empties an Image or a Gallery); what was still being computed for it is cancelled.
    upload.input(None, None, outputs, js="() => [{}, null, null, null]", cancels=running)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1).launch(
        share=False, show_error=False, max_file_size="50mb", run_history=False
    )
