"""The interface every training task implements, and what tasks share.

A task knows everything about a run that depends on *what* is trained: how to build the model (and a teacher), the
pixels it trains and evaluates on, its ``Trainer``, how it is evaluated, which example explanations it shows and
what its model card says. ``bcos_zoo.zoo.finetune`` only sequences these steps and never names a task; a new task
is a new module with a :class:`Task` subclass and its entry in ``bcos_zoo.training.TASKS``.
"""

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from torch import nn
from torch.utils.data import Dataset
from transformers import PretrainedConfig, Trainer, TrainingArguments

from ..data.datasets import (
    DatasetSplits,
    TransformedImages,
    dataset_needs_hub,
    load_dataset_splits,
    looks_like_path,
)
from ..data.preprocessing import ImageTransform, model_channels, model_transform, training_transform
from ..families import FAMILIES
from ..ports import BCOS_SOURCE_PREFIX, is_bcos_source
from ..visualize import explanation_panel, save_png
from .recipe import Recipe
from .trainer import ZooTrainer, collate_images


# model_type of the checkpoints a run continues as they are, instead of B-cosifying them
BCOS_MODEL_TYPES = {model_type for family in FAMILIES.values() for model_type in family.bcos_model_types}
EXAMPLE_COUNT = 4


@dataclass(frozen=True)
class CardFields:
    """What a task's model card says about it (``None`` for a task that publishes no card)."""

    pipeline_tag: str
    # the headline metric in the run's metrics, a fraction (shown in percent); ``source_<key>`` is the source's
    metric_key: str
    metric_label: str
    objective: str
    tags: tuple[str, ...]
    bcos: bool = True  # a B-cos model (B, biases, remote code, explanations); False for a standard source
    hyperparameters: tuple[tuple[str, object], ...] = ()  # extra (name, value) rows of the card's training table
    metric_type: str = "accuracy"  # the headline metric's id in the card's metadata (the Hub's metric names)
    # (metric key, sentence) lines under the results, for the metrics the run returned: the sentence is formatted
    # with the metric's ``value``, the ``dataset`` name and the ``evaluation`` split as the card describes it
    measured: tuple[tuple[str, str], ...] = ()
    citation: str = ""  # a BibTeX entry of the task's own paper, after the B-cos papers'


def source_config(source: str) -> dict | None:
    """The config of a source (folder or Hub id), or ``None`` when training from scratch or from a ``bcos:`` entry."""
    if source == "scratch" or is_bcos_source(source):
        return None
    config, _ = PretrainedConfig.get_config_dict(source)
    return config


def source_model_type(source: str) -> str | None:
    """The ``model_type`` in a source's config (folder or Hub id), or ``None`` when training from scratch."""
    return (source_config(source) or {}).get("model_type")


def hub_id_or_none(source: str) -> str | None:
    """``source`` when it names a Hub repo (``org/name`` that is not a local path), else None."""
    return source if "/" in source and not looks_like_path(source) and not Path(source).exists() else None


def describe_source(source: str) -> tuple[str, str | None]:
    """How a card names a run's source, and its Hub id (``base_model``) when the source came from the Hub.

    A Hub id names itself. A local folder is named by what it is, never by its path: the Hub repo it was downloaded
    from when its config (timm's ``pretrained_cfg.hf_hub_id``) or its place in the HF cache says so, else the model
    name on its own model card, else its architecture.
    """
    if source == "scratch":
        return "scratch", None  # "trained from scratch on ..."
    if is_bcos_source(source):
        return f"the bcos package's {source.removeprefix(BCOS_SOURCE_PREFIX)} (B-cos v2 release)", None
    if hub_id_or_none(source):
        return source, source
    folder = Path(source).expanduser().resolve()
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    cached = re.search(r"models--([^/]+)--([^/]+)/snapshots/", folder.as_posix())
    hub_id = (config.get("pretrained_cfg") or {}).get("hf_hub_id") or (
        f"{cached.group(1)}/{cached.group(2)}" if cached else None
    )
    if hub_id:
        return hub_id, hub_id
    if (folder / "README.md").is_file():
        card = ModelCard.load(folder / "README.md").data
        name = getattr(card, "model_name", None) or card.to_dict().get("model_name")
        if name:
            return f"{name} (a local checkpoint)", None
    architecture = config.get("architecture") or (config.get("architectures") or [config.get("model_type", "model")])[0]
    return f"a local {architecture} checkpoint", None


class Task(ABC):
    """One training task. Instantiated per run with its recipe; defaults suit a B-cos image classifier. A task must
    define :meth:`build_model` and :meth:`evaluate`; a task without them is refused when the run is set up."""

    name: str = ""
    card: CardFields | None = None
    trainer_class: type[Trainer] = ZooTrainer

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        # DataLoader worker processes that read the evaluation images: the run's (--dataloader-num-workers), which
        # the run sets; None: as ``bcos_zoo.evaluation.localisation.predict`` chooses by device
        self.workers: int | None = None

    # -- model -------------------------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self, class_names: list[str]) -> nn.Module:
        """The model to train, with its classes named after the data."""

    def source_model(self) -> nn.Module | None:
        """The standard source as an exactly equivalent model that takes [0, 1] images like the trained one, so that
        both are measured by the same code on the same pixels; ``None`` when there is no such source."""
        return None

    # -- data and training -------------------------------------------------------------------------------------

    def load_data(self) -> DatasetSplits:
        """The run's training and evaluation splits, from ``recipe.dataset``."""
        recipe = self.recipe
        return load_dataset_splits(recipe.dataset, recipe.image_column, recipe.label_column)

    def data_needs_hub(self) -> bool:
        """Whether :meth:`load_data` reads from the Hub (asked before training, so that an offline run fails at once);
        a task that makes or finds its data itself says ``False``."""
        return dataset_needs_hub(self.recipe.dataset)

    def dataset(self, items: Dataset, transform, seed: int | None = None) -> Dataset:
        """The dataset the ``Trainer`` reads: items seen through ``transform`` (augmentation seeded when ``seed``)."""
        return TransformedImages(items, transform, seed=seed)

    # The batches of :meth:`dataset`'s items: a plain function, which DataLoader workers started by spawn receive
    # pickled (a method would take the whole task with them, a distillation teacher included).
    collate = staticmethod(collate_images)

    def image_size(self, model: nn.Module) -> int:
        """The side of the square training crops: the model's (a CLIP task reads its image tower's)."""
        return model.config.image_size

    def train_transform(self, model: nn.Module) -> ImageTransform:
        """Training augmentation (random-resized crop at ``--crop-scale``, flip) to [0, 1] pixels in the model's
        channels."""
        return training_transform(self.image_size(model), self.recipe.crop_scale, channels=model_channels(model))

    def eval_transform(self, model: nn.Module) -> ImageTransform:
        """The pixels a user gets from the model's saved image processor (see ``bcos_zoo.data.preprocessing``)."""
        return model_transform(model)

    def training_arguments(self) -> dict:
        """``TrainingArguments`` fields this task needs beyond the recipe's."""
        return {}

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> Trainer:
        """The task's ``Trainer``, a :class:`~bcos_zoo.training.trainer.ZooTrainer` (which saves the steps done when
        the training data cannot be read); ``common`` holds what every run passes (``train_dataset``,
        ``eval_dataset``, ``data_collator``, ``callbacks``)."""
        return self.trainer_class(model=model, args=arguments, **common)

    # -- evaluation and publishing -----------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset) -> dict[str, float]:
        """The run's metrics on the evaluation split (``card.metric_key`` among them, for the card's results)."""

    def explain_examples(self, model: nn.Module, data: DatasetSplits, pixel_values: torch.Tensor):
        """Explanations of a few evaluation images for the card's example pictures, or ``None`` for no pictures."""
        return None

    def write_examples(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset, folder: Path) -> list[str]:
        """Explain a few evaluation images and save titled panels (input | explanation | contributions) as PNG.

        Classes are named after the data (for CLIP, the prompts are made from the same names)."""
        count = min(EXAMPLE_COUNT, len(eval_dataset))
        items = [eval_dataset[i] for i in range(count)]
        pixel_values = torch.stack([item["pixel_values"] for item in items])
        explanation = self.explain_examples(model, data, pixel_values.to(next(model.parameters()).device))
        if explanation is None:
            return []
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for index, item in enumerate(items):
            name = f"explanation_{index}.png"
            label = item.get("labels")  # a class number, -1 for none; a task's other labels (multi-hot) are not titled
            known = label is not None and torch.as_tensor(label).ndim == 0 and int(label) >= 0
            panel = explanation_panel(
                pixel_values, explanation, index, class_names=data.class_names, true_label=int(label) if known else None
            )
            save_png(panel, folder / name)
            names.append(name)
        return names

    def save_model(self, model: nn.Module, repo_dir: Path) -> None:
        """Weights, config, remote code and image processor (B-cos models save their processor themselves)."""
        model.save_pretrained(repo_dir)
