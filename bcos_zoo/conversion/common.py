"""What every B-cosification shares: finding a source's files, reading its normalisation, folding that
normalisation into the first layer, and loading weights so that no parameter is left randomly initialised.

This is the one reader of a source's mean/std: the converters and the post-hoc baselines ask
:func:`source_normalization`, so a source means the same pixels to all of them. How a source resizes and crops for
evaluation is read here too (:func:`processor_resize`, :func:`timm_resize`), so that a B-cos model's saved processor
gives the pixels its source was evaluated on.
"""

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging


logger = logging.get_logger(__name__)

# interpolation names (torchvision's modes by value, timm's pretrained_cfg) as the PIL filter numbers that
# transformers' image processors take
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


Normalization = tuple[tuple[float, ...], tuple[float, ...]]
IDENTITY_NORMALIZATION: Normalization = ((0.0,), (1.0,))  # one value: every channel's, however many
# what OpenAI's CLIP models (and laion's CLIP-ViTs) were trained with, assumed for a CLIP without its processor
OPENAI_CLIP_NORMALIZATION: Normalization = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)
# what torchvision's, timm's and microsoft/resnet-* CNNs were trained with, assumed for a CNN without its settings
IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def vit_default_normalization(channels: int = 3) -> Normalization:
    """transformers' ViTImageProcessor default, 0.5 in every channel: assumed for a transformers ViT that comes
    without its processor (and used by the standard models trained here)."""
    return (0.5,) * channels, (0.5,) * channels


def read_json(path: Path) -> dict | None:
    """The parsed JSON file, or ``None`` when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def resolve_folder(source: str | Path, supported: str, patterns: Sequence[str] = ("*.json", "*.safetensors")) -> Path:
    """A local folder as it is; anything else is taken as a Hub repo id and its files matching ``patterns`` fetched."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{source!r} is a file; pass the folder that holds config.json and the weights.")
    try:
        return Path(snapshot_download(str(source), allow_patterns=list(patterns)))
    except Exception as error:
        raise ValueError(
            f"{source!r} is neither a local folder nor a Hub repo that could be downloaded ({error}). "
            f"Supported sources: {supported}."
        ) from error


def _as_normalization(settings: dict) -> Normalization | None:
    if settings.get("do_normalize", True) is False:
        return IDENTITY_NORMALIZATION
    mean, std = settings.get("image_mean", settings.get("mean")), settings.get("image_std", settings.get("std"))
    if mean is None or std is None:
        return None
    return _values(mean), _values(std)


def _values(setting) -> tuple[float, ...]:
    """A mean or std as a tuple: one value (transformers' processors take a number for every channel) or one per
    channel."""
    return tuple(torch.as_tensor(setting, dtype=torch.float64).flatten().tolist())


def source_processor(folder: Path) -> dict | None:
    """The settings of a source folder's transformers image processor: ``preprocessor_config.json``, else the image
    processor that newer folders nest in ``processor_config.json``; ``None`` when the folder has neither."""
    processor = read_json(folder / "preprocessor_config.json")
    if processor is None:
        processor = (read_json(folder / "processor_config.json") or {}).get("image_processor")
    return processor


def source_normalization(folder: Path) -> Normalization | None:
    """The mean/std a source folder's model expects its images normalised with, or ``None`` if the folder does not say.

    Read from, in order: the folder's transformers image processor (:func:`source_processor`; ``do_normalize: false``
    means no normalisation) and the ``pretrained_cfg`` of a timm ``config.json``.
    """
    processor = source_processor(folder)
    if processor is not None:
        return _as_normalization(processor)
    pretrained = (read_json(folder / "config.json") or {}).get("pretrained_cfg")
    return _as_normalization(pretrained) if pretrained else None


def _crop_pct(crop: int, resized: int) -> float:
    """``crop / resized``, rounded down where needed so that the processors' ``int(crop / crop_pct)`` is ``resized``
    again (for 9 / 14 the quotient comes back as 13.999...)."""
    crop_pct = crop / resized
    while int(crop / crop_pct) < resized:
        crop_pct = math.nextafter(crop_pct, 0)
    return crop_pct


def processor_resize(processor: dict) -> dict:
    """How a transformers image processor resizes for evaluation, in the fields of the B-cos configs, as far as its
    settings state it: ``image_size`` (the side of what the model sees), ``crop_pct`` and ``resample`` (the PIL filter).

    ``crop_pct`` is the B-cos processors' resize: the shortest edge to ``image_size / crop_pct``, then the centre
    ``image_size`` cropped; ``None`` where the whole image is squashed to a square (transformers' ViT processor). A
    processor that squashes to a larger square before its centre crop (DeiT's: 256, then 224) becomes
    ``crop_pct = 224 / 256``: the same pixels for a square image, and for another the aspect ratio kept, as DeiT's
    authors evaluate (timm's transform).
    """
    fields = {}
    if processor.get("resample") is not None:
        fields["resample"] = int(processor["resample"])
    size, crop = processor.get("size"), processor.get("crop_size")
    if isinstance(size, int):  # older files: ConvNext's processor (with crop_pct) reads a shortest edge, ViT's a square
        size = {"shortest_edge": size} if "crop_pct" in processor else {"height": size, "width": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if not isinstance(size, dict) or not (size.get("shortest_edge") or size.get("height")):
        return fields
    resized = size.get("shortest_edge") or size["height"]
    if processor.get("do_center_crop") and isinstance(crop, dict) and crop.get("height"):
        fields.update(image_size=int(crop["height"]), crop_pct=_crop_pct(int(crop["height"]), int(resized)))
    elif "shortest_edge" in size:  # ConvNext's: the shortest edge to size / crop_pct, then the centre crop
        fields["image_size"] = int(resized)
        if processor.get("crop_pct"):
            fields["crop_pct"] = float(processor["crop_pct"])
    else:
        fields.update(image_size=int(resized), crop_pct=None)
    return fields


def bcos_crop(config_class: type, crop_pct: float | None) -> float | None:
    """``crop_pct`` as a B-cos config of ``config_class`` holds it: a ViT's processor may squash the whole image
    (``None``), a CNN's always crops, so a source that squashes gets 1 (all of a square image)."""
    return 1.0 if crop_pct is None and config_class().crop_pct is not None else crop_pct


def timm_resize(pretrained_cfg: dict) -> dict:
    """How timm evaluates a model (``timm.data.create_transform`` of its ``pretrained_cfg``), in the fields of
    :func:`processor_resize`: ``image_size`` from ``input_size``, ``crop_pct``, ``resample`` from ``interpolation``.

    timm's ``crop_mode="squash"`` at ``crop_pct=1`` squashes the whole image (``crop_pct=None``); its other crop modes
    give the centre crop's pixels for a square image, and become it.
    """
    fields = {}
    if pretrained_cfg.get("input_size"):
        fields["image_size"] = int(pretrained_cfg["input_size"][-1])
    if pretrained_cfg.get("crop_pct"):
        crop_pct = float(pretrained_cfg["crop_pct"])
        fields["crop_pct"] = None if crop_pct == 1 and pretrained_cfg.get("crop_mode") == "squash" else crop_pct
    if pretrained_cfg.get("interpolation") in PIL_RESAMPLE:
        fields["resample"] = PIL_RESAMPLE[pretrained_cfg["interpolation"]]
    return fields


def load_timm_folder(folder: Path, config: dict, supported: str, architectures: re.Pattern | None = None) -> nn.Module:
    """A folder in timm's Hub layout (``config.json`` naming an ``architecture``, ``model.safetensors``) as the timm
    model it describes: timm builds the architecture with the folder's ``model_args`` and ``pretrained_cfg``, and the
    weights are loaded into it. The converters then read it as a model in memory, so that every setting of the folder
    (pooling, activation, strides) meets the same checks, and none is left unread."""
    architecture = config.get("architecture", "")
    if architectures is not None and not architectures.match(architecture):
        raise ValueError(f"{folder} holds a timm {architecture!r}, which is not supported. Supported: {supported}.")
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise ValueError(f"{folder} holds no model.safetensors; only safetensors weights are loaded.")
    try:
        import timm
    except ImportError as error:
        message = f"{folder} is a timm checkpoint: reading it needs timm (pip install 'bcos_zoo[timm]')."
        raise ImportError(message) from error
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except (RuntimeError, TypeError) as error:  # an architecture timm does not know, arguments it does not take
        raise ValueError(f"timm cannot build the {architecture!r} that {folder} describes ({error}).") from error
    state, expected = load_file(weights), model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"The weights in {folder} do not fit timm's {architecture!r} as its config.json describes it (missing: "
            f"{missing[:5]}, unexpected: {unexpected[:5]}, wrong shape: {wrong[:5]})."
        )
    model.load_state_dict(state)
    normalization = source_normalization(folder)  # the one reader of a source's mean/std
    if normalization is not None:
        model.pretrained_cfg = dict(model.pretrained_cfg, mean=normalization[0], std=normalization[1])
    return model.eval()


def standard_labels(num_classes: int, pretrained_cfg: dict | None = None) -> dict[int, str]:
    """Class names for a timm or torchvision classifier, whose weights carry none.

    A timm model's ``pretrained_cfg`` may name them: ``label_names`` (what ``save_for_hf(model, folder,
    model_config={"label_names": [...]})`` writes to a folder's config.json, and timm reads back), each shown by its
    ``label_descriptions`` entry where it has one; they are used when they name every output of the head. Otherwise
    ImageNet's for the class counts of its subsets (1k, and timm's 12k, 21k and 22k heads; timm's descriptions, as
    transformers' ImageNet checkpoints name them), else ``LABEL_i``; a source trained on other classes passes
    ``id2label=`` to ``from_pretrained_standard``."""
    names = (pretrained_cfg or {}).get("label_names")
    if isinstance(names, dict):  # timm allows id -> name (JSON keys are strings)
        names = {int(i): name for i, name in names.items()}
    elif names:
        names = dict(enumerate(names))
    if names and sorted(names) == list(range(num_classes)):
        descriptions = (pretrained_cfg or {}).get("label_descriptions") or {}
        return {i: str(descriptions.get(names[i], names[i])) for i in range(num_classes)}
    if names:
        logger.warning(
            f"The source's label_names name {len(names)} classes, its head has {num_classes} outputs: the names are "
            "not used. Pass id2label= to name its classes."
        )
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # timm is optional: without it, the classes keep their numbers
        subset = None
    else:
        subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return {i: f"LABEL_{i}" for i in range(num_classes)}
    info = ImageNetInfo(subset)
    return {i: info.index_to_description(i) for i in range(num_classes)}


def check_class_numbers(id2label: object, whose: str) -> None:
    """Refuse class names that are not numbered 0 to N - 1, the rows of the head they name: a pipeline, the Space and
    evaluation look each output's name up by its number, and would fail on the first one missing."""
    if not isinstance(id2label, Mapping):
        raise ValueError(f"{whose} must be a dict {{class number: name}}, got a {type(id2label).__name__}.")
    if set(map(str, id2label)) != {str(number) for number in range(len(id2label))}:
        numbers = list(id2label)
        raise ValueError(
            f"{whose} numbers its {len(numbers)} classes {numbers[:8]}{' ...' if len(numbers) > 8 else ''}; the "
            f"outputs of a head are numbered 0 to {len(numbers) - 1}: pass id2label= numbered so, in the order of "
            "the head's outputs."
        )


def bcos_package_labels(num_classes: int) -> dict[int, str]:
    """The ImageNet class names the ``bcos`` package ships (``"tench"``), for its 1000-class models (its ports
    and standard twins); else ``LABEL_i``."""
    if num_classes == 1000:
        from bcos.data.categories import IMAGENET_CATEGORIES

        return dict(enumerate(IMAGENET_CATEGORIES))
    return {i: f"LABEL_{i}" for i in range(num_classes)}


def fold_normalization(weight: torch.Tensor, mean, std) -> torch.Tensor:
    """Make a first-layer weight acting on ``(x - mean) / std`` act on ``[x, 1 - x]`` instead, exactly and bias-free.

    ``W (x - mu) / sigma = W (1 - mu) / sigma * x  -  W mu / sigma * (1 - x)``, because ``x + (1 - x) = 1``. One
    value of mean or std stands for every channel's, as in transformers' processors.
    """
    channels = weight.shape[1]
    mean, std = (values * channels if len(values) == 1 else values for values in (_values(mean), _values(std)))
    if not len(mean) == len(std) == channels:
        raise ValueError(
            f"The source's first layer takes {channels}-channel images, but its normalisation has mean {tuple(mean)} "
            f"and std {tuple(std)}: pass image_mean= and image_std= with {channels} value(s) each."
        )
    shape = (1, -1) + (1,) * (weight.ndim - 2)
    mean = torch.as_tensor(mean, dtype=torch.float64).view(shape)
    std = torch.as_tensor(std, dtype=torch.float64).view(shape)
    w = weight.double()
    return torch.cat([w * (1 - mean) / std, -w * mean / std], dim=1).to(weight.dtype)


class SourceMismatchError(ValueError):
    """The source's weights do not fit the B-cos model built for them (see :func:`load_exactly`)."""


def load_exactly(
    model: nn.Module, state: dict[str, torch.Tensor], prefix: str, drop_biases: bool, supported: str
) -> None:
    """Load ``state`` (B-cos names without the backbone prefix) so that every parameter comes from it.

    A bias the source lacks is a zero bias; with ``drop_biases``, biases the model does not have are dropped.
    Anything else missing, extra or of the wrong shape raises a :class:`SourceMismatchError` naming the supported
    sources.
    """
    prefixed = {(k if k.startswith("classifier.") else prefix + k): v for k, v in state.items()}
    expected = model.state_dict()
    for name, param in expected.items():
        if name not in prefixed and name.endswith(".bias"):
            prefixed[name] = torch.zeros_like(param)
    missing = sorted(set(expected) - set(prefixed))
    extra = sorted(k for k in set(prefixed) - set(expected) if not (drop_biases and k.endswith(".bias")))
    wrong = sorted(k for k in expected if k in prefixed and prefixed[k].shape != expected[k].shape)
    if missing or extra or wrong:
        raise SourceMismatchError(
            f"The source weights do not fit the B-cos model (missing: {missing[:5]}, unexpected: {extra[:5]}, "
            f"wrong shape: {wrong[:5]}). Supported sources: {supported}."
        )
    model.load_state_dict({k: prefixed[k] for k in expected}, strict=True)
