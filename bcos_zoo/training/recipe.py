"""The recipe of one fine-tuning run: everything it needs, as a frozen dataclass whose fields are also the flags of
``scripts/finetune.py``. The catalogue of named recipes is ``bcos_zoo.zoo.recipes``; the tasks read their settings
from here.
"""

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints


def _flag(help: str, default=MISSING, task: str | None = None, **metadata):
    """A recipe field that is also a ``scripts/finetune.py`` flag (see :func:`add_recipe_flags`).

    ``publishing=True`` marks a field that only names or describes the published model (its card and Hub repo), so
    a resumed run may change it without mixing two trainings (see :func:`training_differences`). ``task`` marks a
    field that only that task reads: another task's recipe refuses a value other than its default.
    """
    return field(default=default, metadata={"help": f"{task}: {help}" if task else help, "task": task, **metadata})


PRECISIONS = ("auto", "fp32", "bf16")
GUIDED, E2KD = "guided-classification", "explanation-distillation"  # the tasks with fields of their own


@dataclass(frozen=True)
class Recipe:
    """Everything one fine-tuning run needs. Each field is also a command-line flag of the same name
    (``max_steps`` -> ``--max-steps``), generated from this class, so a field and its flag cannot drift."""

    name: str = _flag("the run's name (default output folder: outputs/<name>)", publishing=True)
    source: str = _flag(
        "Hub id or folder: a standard checkpoint (transformers, timm or open_clip) of a family docs/models.md "
        "lists, a B-cos checkpoint, or 'scratch'; "
        "or 'bcos:<entry>', a standard model of the bcos package (with --weights)",
        aliases=("--model",),
    )
    dataset: str = _flag("'fashion-mnist', an image folder (one sub-folder per class) or a Hub dataset name")
    hub_model_id: str = _flag("org/name of the Hub repo --push uploads to", publishing=True)
    weights: str | None = _flag(
        "the release weights file of a source named 'bcos:<entry>' (a standard model of the bcos package)", None
    )
    task: str = _flag("what is trained and how (see bcos_zoo.training.TASKS)", "classification")
    b: float = _flag("the B-cos alignment exponent B", 2.0)
    bias: str = _flag("'remove' (the paper's conversion) or 'keep' (exact at B=1) the source's biases", "remove")
    epochs: float = _flag("training epochs", 1.0)
    max_steps: int = _flag("stop after this many optimiser steps (overrides --epochs when positive)", -1)
    learning_rate: float = _flag("peak learning rate", 1e-4)
    batch_size: int = _flag("images per device and step", 64)
    gradient_accumulation_steps: int = _flag("batches whose gradients are averaged into each update", 1)
    weight_decay: float = _flag("decoupled weight decay", 0.0)
    warmup_ratio: float = _flag("fraction of the steps spent in linear warm-up", 0.05)
    agc_clip: float = _flag("adaptive gradient clipping factor; 0 means global-norm clipping at 1.0 instead", 0.01)
    crop_scale: tuple[float, float] = _flag("area range of the random-resized crop during training", (0.5, 1.0))
    image_column: str = _flag("image column of a Hub dataset", "image")
    label_column: str | None = _flag("label column of a Hub dataset ('none' for image-only data)", "label")
    max_train_samples: int | None = _flag("use only N training images (docs/training.md says which)", None)
    max_eval_samples: int | None = _flag("evaluate on N evaluation images only (docs/training.md says which)", None)
    save_steps: int = _flag("checkpoint every N steps (what --resume continues from)", 500)
    seed: int = _flag("seed of initialisation, data order and augmentation", 0)
    precision: str = _flag(
        "'fp32', 'bf16' (bfloat16 mixed precision) or 'auto' (bf16 on a GPU that has it, else fp32); a run records "
        "the one it used",
        "auto",
    )
    architecture: dict | None = _flag("config fields of a model trained from scratch (JSON)", None)
    guidance_weight: float = _flag(
        "lambda of the localisation loss (summed over an optimiser step's boxed images)", 1e-3, task=GUIDED
    )
    guidance_loss: str = _flag("localisation loss: 'energy', 'l1', 'rrr' or 'ppce'", "energy", task=GUIDED)
    attribution: str = _flag("'bcos', 'ixg' or 'gradcam' (a hidden layer) attributions", "bcos", task=GUIDED)
    guidance_layer: str = _flag("'input' or a module name whose explanation is guided", "input", task=GUIDED)
    box_fraction: float = _flag("share of training images whose boxes the loss uses", 1.0, task=GUIDED)
    box_dilation: float = _flag("grow each training box by this share of its size per side", 0.0, task=GUIDED)
    teacher: str | None = _flag("the B-cos teacher (folder or Hub id)", None, task=E2KD)
    kd_temperature: float = _flag("softmax temperature T of the KD term", 1.0, task=E2KD)
    explanation_weight: float = _flag("lambda_exp of 1 - cos(E_s, E_t); 0 = plain KD", 1.0, task=E2KD)
    fixed_teaching: bool = _flag("compute the teacher's outputs once per image (no augmentation)", False, task=E2KD)
    card_template: str = _flag("model card template in hub_cards/", "model_card.md", publishing=True)
    license: str = _flag("license of the published model", "apache-2.0", publishing=True)
    summary: str = _flag("one line for the model card", "", publishing=True)

    def __post_init__(self) -> None:
        """Refuse values no run can use when the recipe is made (from the catalogue or from flags), rather than deep
        inside the run, or, for a share above 1, not at all."""
        at_least = {"batch_size": 1, "gradient_accumulation_steps": 1, "save_steps": 1, "max_train_samples": 1}
        at_least |= {"max_eval_samples": 1, "epochs": 0, "weight_decay": 0, "agc_clip": 0, "guidance_weight": 0}
        at_least |= {"explanation_weight": 0, "box_dilation": 0}
        problems = [
            f"{name} must be at least {low}, got {getattr(self, name)}"
            for name, low in at_least.items()
            if getattr(self, name) is not None and not getattr(self, name) >= low
        ]
        problems += [
            f"{name} must be positive, got {getattr(self, name)}"
            for name in ("learning_rate", "kd_temperature")
            if not getattr(self, name) > 0
        ]
        if self.max_steps <= 0 and self.epochs == 0:  # no step: the card would call the starting model fine-tuned
            problems.append("epochs must be positive (or max_steps set), got 0: a run of no step trains nothing")
        problems += [
            f"{name} must lie in [0, 1], got {getattr(self, name)}"
            for name in ("warmup_ratio", "box_fraction")
            if not 0 <= getattr(self, name) <= 1
        ]
        if not 0 <= self.seed < 2**32:  # numpy's generators take no other (set_seed seeds them)
            problems.append(f"seed must lie in [0, 2**32), got {self.seed}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not math.isfinite(self.epochs):
            problems.append(f"epochs must be finite, got {self.epochs}")
        if taken := sorted({"b", "num_labels", "id2label", "label2id"} & set(self.architecture or {})):
            problems.append(f"architecture sets {taken}: B comes from b (--b), the classes from the data")
        problems += [
            f"{spec.name} is read by the {spec.metadata['task']} task only (--task), and this recipe's is {self.task}"
            for spec in fields(self)
            if spec.metadata["task"] not in (None, self.task) and getattr(self, spec.name) != spec.default
        ]
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            problems.append(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {tuple(self.crop_scale)}")
        if problems:
            raise ValueError(f"recipe {self.name!r}: " + "; ".join(problems))

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the given fields replaced; ``None`` values mean "keep the recipe's"."""
        known = {field.name for field in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


_NONE = object()  # "--label-column none": an explicit None, unlike an absent flag
_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _parse_bool(text: str) -> bool:
    """An argparse ``type`` for a bool field: a typo such as ``ture`` is refused, not read as false."""
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def recipe_record(recipe: Recipe) -> dict:
    """A recipe as plain JSON values (tuples become lists): what ``recipe.json`` holds, and what a fresh recipe is
    compared with."""
    return json.loads(json.dumps(asdict(recipe), default=str))


# the recipe fields that name folders: a run's source and teacher may lie in its work folder, the data anywhere
PATH_FIELDS = ("source", "teacher", "dataset")


def same_place(stored: str | None, given: str | None, work_dir: Path | None = None) -> bool:
    """Whether a path field of a stored recipe names what ``given`` names: the same spelling, the same place by
    another spelling (relative or absolute), or, for a path in ``work_dir``, the same place in the work folder as it
    lay when the run was trained (a moved work folder, or one reached from another directory)."""
    if stored == given:
        return True
    if stored is None or given is None:
        return False
    old, new = Path(stored).expanduser(), Path(given).expanduser().resolve()
    if old.resolve() == new:
        return True
    if work_dir is None or not new.is_relative_to(work_dir.resolve()):
        return False
    inside = new.relative_to(work_dir.resolve()).parts
    return old.parts[-len(inside) :] == inside


def training_differences(stored: dict, recipe: Recipe, work_dir: Path | None = None) -> list[str]:
    """The fields, other than those that only describe the published model, in which ``recipe`` trains differently
    from the ``stored`` record of another (see :func:`recipe_record`); a folder named by another path is the same
    folder (see :func:`same_place`). Resuming a run and re-using a reproduction's stage both ask this."""
    record = recipe_record(recipe)
    # a record from before runs recorded their precision is taken to match: they chose it by the rule of "auto"
    stored = {"precision": record["precision"], **stored}
    return [
        spec.name
        for spec in fields(Recipe)
        if not spec.metadata.get("publishing")
        and spec.metadata["task"] in (None, recipe.task)  # another task's field trains nothing here
        and stored.get(spec.name) != record[spec.name]
        and not (spec.name in PATH_FIELDS and same_place(stored.get(spec.name), record[spec.name], work_dir))
    ]


def publishing_differences(stored: dict, recipe: Recipe) -> list[str]:
    """The fields that only describe the published model (name, Hub id, card, licence, summary) in which ``recipe``
    differs from the ``stored`` record: what a finished run's ``repo/`` was written with and a resume cannot change."""
    record = recipe_record(recipe)
    return [
        spec.name
        for spec in fields(Recipe)
        if spec.metadata.get("publishing") and spec.name in stored and stored[spec.name] != record[spec.name]
    ]


def _parser_type(annotation) -> tuple[Callable, dict]:
    """argparse ``type`` and extra keywords for a recipe field's annotation; an optional field takes ``none``."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    base = args[0] if get_origin(annotation) in (Union, UnionType) else annotation
    if get_origin(base) is tuple:
        return get_args(base)[0], {"nargs": len(get_args(base))}
    if base is bool:  # a bare ``--flag`` is true
        return _parse_bool, {"nargs": "?", "const": True}
    convert = json.loads if base is dict else base
    if type(None) not in get_args(annotation):
        return convert, {}

    def convert_or_none(value: str):  # "--max-train-samples none", as a card's command writes it
        return _NONE if value.lower() == "none" else convert(value)

    convert_or_none.__name__ = convert.__name__  # argparse names the type in its error: "invalid int value"
    return convert_or_none, {}


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`Recipe` field, all defaulting to ``None`` ("keep the recipe's value")."""
    group = parser.add_argument_group("recipe fields (override the recipe's values)")
    hints = get_type_hints(Recipe)
    for spec in fields(Recipe):
        convert, extra = _parser_type(hints[spec.name])
        names = [f"--{spec.name.replace('_', '-')}", *spec.metadata.get("aliases", ())]
        group.add_argument(*names, dest=spec.name, type=convert, default=None, help=spec.metadata["help"], **extra)


def recipe_overrides(namespace: argparse.Namespace) -> dict:
    """The recipe fields given on the command line (for ``dataclasses.replace``; ``none`` gives ``None``)."""
    given = {spec.name: getattr(namespace, spec.name) for spec in fields(Recipe)}
    given = {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}
    return {name: None if value is _NONE else value for name, value in given.items() if value is not None}
