"""B-cos explainer: a Gradio Space that shows which pixels make a B-cos image classifier predict a class.

A B-cos network computes a dynamic linear map of its input, ``logit = W(x) x + bias``, so ``W(x)`` is the model's
own exact explanation rather than a post-hoc estimate. The models are loaded as remote code (this Space needs only
transformers, not the package that trained them) and return that explanation from ``model.explain``; this file
only reads images robustly, keeps the offered models, and turns explanations into pictures.

The offered models are those the ``models:`` list of this Space's README header names (the zoo's B-cos image
classifiers: vision transformers and CNNs), each loaded on first use and then kept.

Settings (environment): MODEL_ID (the model shown first: a Hub id or a local model folder), MODEL_IDS (a
comma-separated list that replaces the README's), MODEL_REVISION, QUEUE_MAX_SIZE, and Gradio's own
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import functools
import logging
import os
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402


HERE = Path(__file__).resolve().parent
MODEL_ID = os.environ.get("MODEL_ID", "bcos-zoo/bcos-vit-s")
REVISION = os.environ.get("MODEL_REVISION") or None
QUEUE_MAX_SIZE = int(os.environ.get("QUEUE_MAX_SIZE", "32"))
MAX_PIXELS = 100_000_000  # checked from the header, before anything is decoded
Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check is replaced by MAX_PIXELS, with a clear message
DISPLAY_SIZE = 320  # pictures are enlarged (nearest neighbour, so pixels stay visible) to at least this size
EXAMPLES = sorted(str(path) for path in (HERE / "examples").glob("*.jpg"))
UPLOADS = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")  # where Gradio puts them
READABLE = (UPLOADS.resolve(), HERE / "examples")  # the only files a request may have read
CACHE_LIFETIME = (1800, 3600)  # every 30 minutes, drop uploads and results older than an hour
DOWNLOAD = ["download", "fullscreen"]  # PNG downloads; no share button, the Space stays self-contained
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

log = logging.getLogger("bcos-vit-explainer")


def readme_models(readme: Path) -> list[str]:
    """The ``models:`` list of a Space README's YAML header: the models the Hub links this Space to."""
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if not text.startswith("---\n") or "\n---" not in text[3:]:
        return []
    header = yaml.safe_load(text[4 : text.index("\n---", 3)]) or {}
    return [str(name) for name in header.get("models") or []]


def offered_models(default: str, listed: str | None, readme: Path) -> list[str]:
    """The models the user may choose: ``listed`` (comma-separated) if given, else the README's, and ``default``
    first when neither names it. Only these are ever loaded, whatever a request asks for."""
    names = [name.strip() for name in listed.split(",")] if listed else readme_models(readme)
    names = list(dict.fromkeys(name for name in names if name))
    return names if default in names else [default, *names]


MODEL_CHOICES = offered_models(MODEL_ID, os.environ.get("MODEL_IDS"), HERE / "README.md")


def unique_labels(id2label: dict[int, str]) -> list[str]:
    """Class names by index, made unique (ImageNet repeats a few), so a name always identifies one class."""
    names = [str(id2label[i]) for i in range(len(id2label))]
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name} ({i})" for i, name in enumerate(names)]


@dataclass(frozen=True)
class Classifier:
    """One offered model, ready to explain: the model, its own image processor and its class names."""

    name: str
    model: torch.nn.Module
    processor: Callable
    labels: list[str]
    label_index: dict[str, int]


def load_classifier(name: str) -> Classifier:
    """Load a model with its processor; ``MODEL_REVISION`` pins the default model (the others load their latest)."""
    revision = REVISION if name == MODEL_ID else None
    model = AutoModelForImageClassification.from_pretrained(name, revision=revision, trust_remote_code=True)
    model.eval().to(DEVICE)
    processor = AutoImageProcessor.from_pretrained(name, revision=revision)
    labels = unique_labels(model.config.id2label)
    return Classifier(name, model, processor, labels, {label: i for i, label in enumerate(labels)})


# Loaded models by name. The default one is loaded at start, so a broken default stops the Space with its
# traceback; the others on first use, each under its own lock so two users asking for it load it once.
LOADED: dict[str, Classifier] = {MODEL_ID: load_classifier(MODEL_ID)}
LOADING = {name: threading.Lock() for name in MODEL_CHOICES}
# One explanation at a time per model: models saved before explanation mode was per thread switch flags on their
# shared modules (a pinned revision may be such a model), and one at a time also bounds the memory in use.
MODEL_LOCK = threading.Lock()


def classifier(name: str | None) -> Classifier:
    """The offered model ``name``, loaded once; anything not offered is refused (requests may name any string)."""
    if name not in LOADING:
        raise gr.Error("Pick one of the offered models.")
    with LOADING[name]:
        if name not in LOADED:
            try:
                LOADED[name] = load_classifier(name)
            except Exception:
                log.exception("loading %s failed", name)
                raise gr.Error(f"The model {name} could not be loaded; pick another one.") from None
        return LOADED[name]


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


def picture(array: torch.Tensor, title: str, source: str) -> Image.Image:
    """An (H, W, C) tensor in [0, 1] as an 8-bit picture, enlarged by a whole factor, titled for download.

    The PNG text chunks (title, and the model as source) travel with a download. The unique id also keeps identical
    results apart: Gradio writes a picture to a cache file named by its content, in place, and a concurrent download
    of the same file could otherwise read it half-written.
    """
    data = (array.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(data)
    scale = max(1, -(-DISPLAY_SIZE // max(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.info.update(Title=title, Source=source, Software="bcos-vit-explainer", Id=uuid.uuid4().hex)
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
            raise gr.Error("The model failed to explain this image; please try another model.") from None

    return wrapper


def explain(chosen: Classifier, image: Image.Image, target: int | None) -> tuple[torch.Tensor, object]:
    """Model input and explanation of one image for ``target`` (``None``: the top class). A one-channel model gets
    the image in greyscale, as the zoo's pipeline gives it."""
    model = chosen.model
    if getattr(model.config, "num_channels", 3) == 1:
        image = image.convert("L")
    pixel_values = chosen.processor(images=image, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
    with MODEL_LOCK:
        explanation = model.explain(pixel_values, target=target)
    return pixel_values, explanation


def views(chosen: Classifier, pixel_values: torch.Tensor, explanation) -> tuple:
    """Input as the model sees it, colour explanation (RGBA), contribution map, and the completeness line, each
    naming the model, so a result never passes for another model's."""
    label = chosen.labels[int(explanation.target[0])]
    logit = float(explanation.target_logits[0])
    pixels = float(explanation.contributions[0].double().sum())
    bias = float(explanation.bias[0])
    share = abs(pixels) / max(abs(pixels) + abs(bias), 1e-12)
    summary = (
        f"**{label}**: logit {logit:.4f} = pixel contributions {pixels:.4f} + bias {bias:.4f} "
        f"(the pixels account for {share:.0%}). Model: `{chosen.name}`"
    )
    seen = pixel_values[0].expand(3, -1, -1).permute(1, 2, 0)  # one channel is shown as grey
    return (
        picture(seen, f"Input, as {chosen.name} sees it", chosen.name),
        picture(explanation.render()[0], f"B-cos explanation of {label} by {chosen.name}", chosen.name),
        picture(explanation.contribution_map()[0], f"Contributions to {label} in {chosen.name}", chosen.name),
        summary,
    )


def class_scores(chosen: Classifier, logits: torch.Tensor) -> torch.Tensor:
    """The scores transformers' image-classification pipeline gives, so that the Space agrees with it: a
    regression's logits as they are, a sigmoid per label for a multi-label model or a single logit, else a softmax."""
    problem = chosen.model.config.problem_type
    if problem == "regression":
        return logits
    if problem == "multi_label_classification" or len(logits) == 1:
        return logits.sigmoid()
    return logits.softmax(-1)


def top_predictions(chosen: Classifier, upload: str | dict | None) -> tuple:
    """Top-5 predictions, the explanation of the top class, and that class's name."""
    pixel_values, explanation = explain(chosen, read_image(upload), None)
    scores = class_scores(chosen, explanation.logits[0].float())
    top = scores.topk(min(5, len(chosen.labels)))
    top5 = {chosen.labels[i]: float(s) for s, i in zip(top.values.tolist(), top.indices.tolist())}
    return top5, *views(chosen, pixel_values, explanation), chosen.labels[int(explanation.target[0])]


@friendly_errors
def predict(upload: str | dict | None, model_name: str | None = MODEL_ID) -> tuple:
    """Top-5 predictions and the explanation of the top class; the class picker is set to that class."""
    return top_predictions(classifier(model_name), upload)


@friendly_errors
def explain_class(upload: str | dict | None, class_name: str | None, model_name: str | None = MODEL_ID) -> tuple:
    """The explanation of the class the user picked."""
    chosen = classifier(model_name)
    if class_name not in chosen.label_index:
        raise gr.Error(f"Pick one of the classes of {chosen.name} to explain.")
    return views(chosen, *explain(chosen, read_image(upload), chosen.label_index[class_name]))


@friendly_errors
def choose_model(upload: str | dict | None, model_name: str | None) -> tuple:
    """Switch the page to another model: the class picker gets its classes, and the current image is explained by
    it; without an image the results are cleared, so nothing of the previous model stays under the new one."""
    chosen = classifier(model_name)
    if not upload_path(upload):
        return None, None, None, None, "", gr.Dropdown(choices=chosen.labels, value=None)
    *results, top_label = top_predictions(chosen, upload)
    return *results, gr.Dropdown(choices=chosen.labels, value=top_label)


INTRO = """# B-cos explainer
A B-cos network is a dynamic linear map, `logit = W(x) x + bias`: the explanation below is the model's own
`W(x)`, exact, not a post-hoc estimate. Colour: the colours the model looks for where they raise the logit.
Contributions: `W(x) x` per pixel, red for and blue against the class. Choose any of the zoo's B-cos image
classifiers (vision transformers and CNNs); each result names the model that produced it."""

with gr.Blocks(title="B-cos explainer", analytics_enabled=False, delete_cache=CACHE_LIFETIME) as demo:
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column():
            model_picker = gr.Dropdown(MODEL_CHOICES, value=MODEL_ID, label="Model", elem_id="model-picker")
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
            class_picker = gr.Dropdown(
                LOADED[MODEL_ID].labels, value=None, label="Explain another class", elem_id="class-picker"
            )
    with gr.Row():
        seen = gr.Image(label="Input, as the model sees it", format="png", interactive=False, buttons=["fullscreen"])
        colour = gr.Image(label="Explanation", format="png", interactive=False, buttons=DOWNLOAD, elem_id="explanation")
        contributions = gr.Image(
            label="Contributions", format="png", interactive=False, buttons=DOWNLOAD, elem_id="contributions"
        )
    summary = gr.Markdown(label="Completeness", elem_id="completeness")
    explained = [seen, colour, contributions, summary]
    examples = gr.Examples(EXAMPLES, inputs=upload, label="Examples")

    # The events take the raw inputs (preprocess=False): read_image answers unreadable files with a message, and
    # classifier() refuses models that are not offered.
    outputs = [top5, *explained, class_picker]
    running = [
        button.click(
            predict, [upload, model_picker], outputs, api_name="predict", preprocess=False, concurrency_id="model"
        ),
        examples.load_input_event.then(
            predict, [upload, model_picker], outputs, preprocess=False, api_visibility="private", concurrency_id="model"
        ),
    ]
    # A pick in a dropdown fires its input event twice, so the pickers listen to select (the class picker, which
    # the results also set) and change (the model picker, which only the user sets): one explanation per pick.
    class_picker.select(
        explain_class,
        [upload, class_picker, model_picker],
        explained,
        api_name="explain",
        preprocess=False,
        concurrency_id="model",
    )
    model_picker.change(
        choose_model,
        [upload, model_picker],
        outputs,
        preprocess=False,
        api_visibility="private",
        concurrency_id="model",
    )
    # A new or removed image clears the results at once, in the page, so they never stand beside another image
    # ({} empties a Label; null would leave it as it is), and cancels the top-5 explanations still running for the
    # old one. Not a model switch, which gives the class picker the new model's classes, nor a class pick (as the
    # target of a cancel, Gradio 6's dropdown stops offering its options).
    upload.input(None, None, outputs, js="() => [{}, null, null, null, '', null]", cancels=running)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    log.setLevel(logging.INFO)
    demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1).launch(
        share=False, show_error=False, max_file_size="50mb", run_history=False
    )
