"""The ``image-explanation`` pipeline: labels and scores like ``image-classification``, and the model's exact
explanation of each label asked for. It travels with the weights (the config's ``custom_pipelines`` names it).

    pipe = pipeline("image-explanation", model="<org>/<bcos-model>", trust_remote_code=True)
    pipe("cat.jpg")            # [{"label", "score", "explanation": {"contributions", "rgba", "bias", "logit"}}, ...]
    pipe("cat.jpg", top_k=3, explain=3)        # explain each of the three top labels
    pipe("cat.jpg", labels=["tabby, tabby cat"])  # explain these labels, whatever their rank
"""

import os
from io import BytesIO

import numpy as np
import torch
from huggingface_hub.utils import httpx  # the HTTP client huggingface_hub (and transformers) use
from PIL import Image, ImageOps
from transformers import Pipeline
from transformers.image_utils import load_image


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


def read_image(image, timeout: float | None = None) -> Image.Image:
    """A path, URL or PIL image, upright, as :func:`to_rgb` reads it; a base64 string as transformers reads it. A URL
    is refused, naming it, when connecting to it or any read from it waits longer than ``timeout`` seconds (30 when
    not given), when it answers with an error, or with something that is not an image."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        url = image
        try:
            response = httpx.get(url, timeout=30.0 if timeout is None else timeout, follow_redirects=True)
            response.raise_for_status()
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            raise ValueError(f"The image at {url} could not be fetched: {error}") from None
        try:
            image = Image.open(BytesIO(response.content))
        except OSError as error:
            kind = response.headers.get("content-type", "no content type")
            raise ValueError(f"{url} answered with something that is not an image ({kind}): {error}") from None
    elif isinstance(image, str) and os.path.isfile(image):
        with Image.open(image) as opened:  # closed once read, also when reading fails
            return to_rgb(ImageOps.exif_transpose(opened))
    elif not isinstance(image, Image.Image):
        return load_image(image, timeout=timeout)
    return to_rgb(ImageOps.exif_transpose(image))


class ImageExplanationPipeline(Pipeline):
    """Classify an image and explain the chosen labels with the B-cos model's own dynamic linear map."""

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, top_k=None, explain=None, labels=None, timeout=None):
        preprocess = {} if timeout is None else {"timeout": timeout}
        forward, postprocess = {}, {}
        for name, count in (("top_k", top_k), ("explain", explain)):
            whole = isinstance(count, (int, np.integer)) and not isinstance(count, bool)  # numpy's ints too
            if count is not None and not (whole and count >= 0):
                raise ValueError(
                    f"{name} takes how many of the top labels to list or explain, an int >= 0; got {count!r}."
                )
        if top_k is not None:
            postprocess["top_k"] = int(top_k)
        if explain is not None:
            forward["explain"] = postprocess["explain"] = int(explain)
        if labels is not None:
            single = isinstance(labels, (str, int, np.integer)) or getattr(labels, "ndim", None) == 0
            asked = [labels] if single else list(labels)
            asked = [label.item() if hasattr(label, "item") else label for label in asked]  # numpy, torch scalars
            forward["targets"] = list(dict.fromkeys(self._label_index(label) for label in asked))  # each class once
        return preprocess, forward, postprocess

    def _label_index(self, label: str | int) -> int:
        """The class a label names (its name in ``id2label``, or its index): exactly one."""
        id2label = self.model.config.id2label
        by_index = isinstance(label, int) and not isinstance(label, bool)
        found = [int(index) for index, name in id2label.items() if name == label or by_index and int(index) == label]
        if len(found) != 1:
            problem = f"names classes {found}: pass the index instead" if found else "is not one of this model's"
            raise ValueError(f"The label {label!r} {problem} (labels= takes names or indices of config.id2label).")
        return found[0]

    def preprocess(self, image, timeout=None):
        """An image as a viewer shows it; a one-channel model takes it in greyscale. Arrays and tensors are taken as
        image-classification takes them (channels first or last, 0..255), but for three things: floats no greater
        than 1 are the [0, 1] images the model takes (not divided by 255 again: the picture would be black), a 2-D
        array is a greyscale picture, and a batch of several images is refused (the pipeline explains one per call:
        pass a list)."""
        channels = getattr(self.model.config, "num_channels", 3)
        if not isinstance(image, (np.ndarray, torch.Tensor)):
            image = read_image(image, timeout=timeout)
            return self.image_processor(images=image.convert("L") if channels == 1 else image, return_tensors="pt")
        if image.ndim == 4 and len(image) > 1:
            raise ValueError(f"One image per call, got a batch of {len(image)}: pass them as a list of images.")
        if image.ndim == 2:  # greyscale, in as many channels as the model takes (channels first in a tensor)
            if isinstance(image, torch.Tensor):
                image = image[None].expand(channels, -1, -1)
            else:
                image = np.repeat(image[..., None], channels, axis=-1)
        floating = (
            image.is_floating_point() if isinstance(image, torch.Tensor) else np.issubdtype(image.dtype, np.floating)
        )
        if not floating or image.max() > 1:
            return self.image_processor(images=image, return_tensors="pt")
        inputs = self.image_processor(images=image, do_rescale=False, return_tensors="pt")
        if image.min() >= 0 and not getattr(self.image_processor, "do_normalize", False):  # resampling overshoots
            inputs["pixel_values"] = inputs["pixel_values"].clamp(0, 1)  # [0, 1] a little; anything else is refused
        return inputs

    def _forward(self, model_inputs, explain=1, targets=None):
        """One forward pass for the scores, then one batched explanation of every label asked for, of every image
        (the pipeline's ``batch_size`` images at a time): each output has one row per image."""
        pixel_values = model_inputs["pixel_values"].to(self.model.device, self.model.dtype)
        logits = self.model(pixel_values=pixel_values).logits
        if targets is None:
            chosen = logits.argsort(dim=1, descending=True)[:, :explain]
        else:
            chosen = torch.tensor(targets, dtype=torch.long, device=logits.device).expand(len(logits), -1)
        rows = chosen.shape  # (images, explained labels per image)
        explanation = self.model.explain(pixel_values.repeat_interleave(rows[1], dim=0), target=chosen.flatten())
        contributions, rgba = explanation.contributions, explanation.rgba
        return {
            "logits": logits,
            "targets": chosen,
            "contributions": contributions.reshape(*rows, *contributions.shape[1:]),
            "rgba": rgba.reshape(*rows, *rgba.shape[1:]),
            "bias": explanation.bias.reshape(rows),
            "explained_logits": explanation.target_logits.reshape(rows),
        }

    def postprocess(self, model_outputs, top_k=5, explain=1):
        id2label = self.model.config.id2label
        logits, problem = model_outputs["logits"][0].float(), self.model.config.problem_type
        if problem == "regression":  # the scores image-classification gives: the logits themselves,
            probabilities = logits
        elif problem == "multi_label_classification" or len(logits) == 1:  # one sigmoid per label,
            probabilities = logits.sigmoid()
        else:  # or a softmax over the labels
            probabilities = logits.softmax(dim=-1)
        order = logits.argsort(descending=True).tolist()
        chosen = model_outputs["targets"][0].tolist()
        shown = order[:top_k] + [index for index in chosen if index not in order[:top_k]]
        results = []
        for index in shown:
            entry = {"label": id2label[index], "score": float(probabilities[index])}
            if index in chosen:
                row = chosen.index(index)
                entry["explanation"] = {
                    "contributions": model_outputs["contributions"][0, row].float().cpu().numpy(),
                    "rgba": model_outputs["rgba"][0, row].float().cpu().numpy(),
                    "bias": float(model_outputs["bias"][0, row]),
                    "logit": float(model_outputs["explained_logits"][0, row]),
                }
            results.append(entry)
        return results
