"""The zoo catalogue: one named recipe per published model, each reproducible with one command.

``python scripts/finetune.py --recipe bcos-vit-s --push`` B-cosifies the recipe's source checkpoint, fine-tunes it
on the recipe's data with the recipe's hyper-parameters and publishes it under the recipe's Hub repo. Command-line
flags override single fields (``dataclasses.replace``), so a recipe is a starting point, not a cage.

The ImageNet and CLIP recipes follow the B-cos papers' optimiser recipe (Adam, cosine decay after a linear warm-up,
adaptive gradient clipping, B=2, biases removed) and need GPUs and the gated ImageNet / CC3M data on the Hub.
``bcos-vit-fashion-mnist`` runs offline on a laptop CPU in minutes, from the small standard ViT that
``vit-fashion-mnist`` trains first (``scripts/fashion_mnist.py`` runs both).
"""

import argparse
import json
import os
import shlex
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints


def _flag(help: str, default=MISSING, **metadata):
    """A recipe field that is also a ``scripts/finetune.py`` flag (see :func:`add_recipe_flags`)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class Recipe:
    """Everything one fine-tuning run needs. Each field is also a command-line flag of the same name
    (``max_steps`` -> ``--max-steps``), generated from this class, so a field and its flag cannot drift."""

    name: str = _flag("the run's name (default output folder: outputs/<name>)")
    source: str = _flag(
        "Hub id or folder: a standard HF ViT/DeiT, timm ViT or HF CLIP checkpoint, a B-cos checkpoint, or 'scratch'",
        aliases=("--model",),
    )
    dataset: str = _flag("'fashion-mnist', an image folder (one sub-folder per class) or a Hub dataset name")
    hub_model_id: str = _flag("org/name of the Hub repo --push uploads to")
    task: str = _flag("what is trained and how (see bcos_zoo.training.TASKS)", "classification")
    b: float = _flag("the B-cos alignment exponent B", 2.0)
    bias: str = _flag("'remove' (the paper's conversion) or 'keep' (exact at B=1) the source's biases", "remove")
    epochs: float = _flag("training epochs", 1.0)
    max_steps: int = _flag("stop after this many optimiser steps (overrides --epochs when positive)", -1)
    learning_rate: float = _flag("peak learning rate", 1e-4)
    batch_size: int = _flag("images per device and step", 64)
    gradient_accumulation_steps: int = _flag("steps whose gradients are summed before each update", 1)
    weight_decay: float = _flag("decoupled weight decay", 0.0)
    warmup_ratio: float = _flag("fraction of the steps spent in linear warm-up", 0.05)
    agc_clip: float = _flag("adaptive gradient clipping factor; 0 means global-norm clipping at 1.0 instead", 0.01)
    crop_scale: tuple[float, float] = _flag("area range of the random-resized crop during training", (0.5, 1.0))
    image_column: str = _flag("image column of a Hub dataset", "image")
    label_column: str | None = _flag("label column of a Hub dataset ('none' for image-only data)", "label")
    max_train_samples: int | None = _flag("use only the first N training images", None)
    max_eval_samples: int | None = _flag("evaluate on the first N evaluation images only", None)
    save_steps: int = _flag("checkpoint every N steps (what --resume continues from)", 500)
    seed: int = _flag("seed of initialisation, data order and augmentation", 0)
    architecture: dict | None = _flag("config fields of a model trained from scratch (JSON)", None)
    guidance_weight: float = _flag("guided-classification: lambda of the energy loss (summed over boxed images)", 1e-3)
    guidance_layer: str = _flag("guided-classification: 'input' or a module name whose explanation is guided", "input")
    box_fraction: float = _flag("guided-classification: share of training images whose boxes the loss uses", 1.0)
    teacher: str | None = _flag("explanation-distillation: the B-cos teacher (folder or Hub id)", None)
    kd_temperature: float = _flag("explanation-distillation: softmax temperature T of the KD term", 1.0)
    explanation_weight: float = _flag("explanation-distillation: lambda_exp of 1 - cos(E_s, E_t); 0 = plain KD", 1.0)
    fixed_teaching: bool = _flag(
        "explanation-distillation: compute the teacher's outputs once per image (no augmentation)", False
    )
    card_template: str = _flag("model card template in hub_cards/", "model_card.md")
    license: str = _flag("license of the published model", "apache-2.0")
    summary: str = _flag("one line for the model card", "")

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the given fields replaced; ``None`` values mean "keep the recipe's"."""
        known = {field.name for field in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


_NONE = object()  # "--label-column none": an explicit None, unlike an absent flag


def _parser_type(annotation) -> tuple[Callable, dict]:
    """argparse ``type`` and extra keywords for a recipe field's annotation."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    base = args[0] if get_origin(annotation) in (Union, UnionType) else annotation
    if get_origin(base) is tuple:
        return get_args(base)[0], {"nargs": len(get_args(base))}
    if base is dict:
        return json.loads, {}
    if base is bool:
        return (lambda value: value.lower() in ("1", "true", "yes", "on")), {}
    if annotation == str | None:
        return (lambda value: _NONE if value.lower() == "none" else value), {}
    return base, {}


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


IMAGENET = "ILSVRC/imagenet-1k"  # gated on the Hub: accept its terms and log in first
CC3M = "pixparse/cc3m-wds"

_IMAGENET_VIT = dict(
    dataset=IMAGENET,
    epochs=90.0,
    learning_rate=1e-4,
    batch_size=128,
    warmup_ratio=0.02,
    agc_clip=0.01,
    save_steps=2000,
)
# The B-cosification paper's CNN recipe: B = 2, biases removed, Adam lr 1e-4, cosine, 90 epochs, batch 256, AGC.
_IMAGENET_CNN = dict(
    dataset=IMAGENET,
    epochs=90.0,
    learning_rate=1e-4,
    batch_size=256,
    warmup_ratio=0.0,
    agc_clip=0.01,
    save_steps=2000,
)
_CLIP_DISTILLATION = dict(
    task="clip-distillation",
    epochs=30.0,
    learning_rate=1e-4,
    batch_size=256,
    warmup_ratio=0.02,
    agc_clip=0.01,
    label_column=None,
    save_steps=2000,
)

# the miniature of training with explanations: Fashion-MNIST on 48 px canvases (bcos_zoo.data.decoys)
_DECOY_VIT = dict(
    image_size=48, patch_size=8, hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=96
)
_DECOY_TEACHER_VIT = dict(
    image_size=48, patch_size=8, hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=192
)
_DECOY_TRAINING = dict(
    source="scratch",
    epochs=2.0,
    learning_rate=1e-3,
    batch_size=64,
    warmup_ratio=0.1,
    agc_clip=0.05,
    crop_scale=(0.8, 1.0),
    max_train_samples=2000,
)

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in [
        Recipe(
            name="bcos-vit-ti",
            source="timm/deit_tiny_patch16_224.fb_in1k",
            hub_model_id="bcos-zoo/bcos-vit-ti",
            summary="DeiT-Ti/16 (timm) B-cosified on ImageNet-1k.",
            **_IMAGENET_VIT,
        ),
        Recipe(
            name="bcos-vit-s",
            source="timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
            hub_model_id="bcos-zoo/bcos-vit-s",
            summary="ViT-S/16 (timm, AugReg) B-cosified on ImageNet-1k.",
            **_IMAGENET_VIT,
        ),
        Recipe(
            name="bcos-vit-b",
            source="google/vit-base-patch16-224",
            hub_model_id="bcos-zoo/bcos-vit-b",
            summary="ViT-B/16 (google) B-cosified on ImageNet-1k.",
            **_IMAGENET_VIT,
        ),
        Recipe(
            name="bcos-resnet18",
            source="timm/resnet18.tv_in1k",
            hub_model_id="bcos-zoo/bcos-resnet18",
            summary="ResNet-18 (torchvision weights) B-cosified on ImageNet-1k.",
            **_IMAGENET_CNN,
        ),
        Recipe(
            name="bcos-resnet50",
            source="timm/resnet50.tv_in1k",
            hub_model_id="bcos-zoo/bcos-resnet50",
            summary="ResNet-50 (torchvision weights) B-cosified on ImageNet-1k.",
            **_IMAGENET_CNN,
        ),
        Recipe(
            name="bcos-densenet121",
            source="timm/densenet121.tv_in1k",
            hub_model_id="bcos-zoo/bcos-densenet121",
            summary="DenseNet-121 (torchvision weights) B-cosified on ImageNet-1k.",
            **_IMAGENET_CNN,
        ),
        Recipe(
            name="bcos-clip-vit-b32",
            source="openai/clip-vit-base-patch32",
            dataset=IMAGENET,
            image_column="image",
            hub_model_id="bcos-zoo/bcos-clip-vit-b32",
            summary="OpenAI CLIP ViT-B/32 image tower B-cosified by distillation on ImageNet images.",
            **_CLIP_DISTILLATION,
        ),
        Recipe(
            name="bcos-clip-vit-b16",
            source="openai/clip-vit-base-patch16",
            dataset=CC3M,
            image_column="jpg",
            hub_model_id="bcos-zoo/bcos-clip-vit-b16",
            summary="OpenAI CLIP ViT-B/16 image tower B-cosified by distillation on CC3M images.",
            **_CLIP_DISTILLATION,
        ),
        Recipe(
            name="vit-fashion-mnist",
            source="scratch",
            dataset="fashion-mnist",
            hub_model_id="bcos-zoo/vit-fashion-mnist",
            task="standard-classification",
            architecture=dict(
                image_size=32,
                patch_size=4,
                hidden_size=96,
                num_hidden_layers=4,
                num_attention_heads=3,
                intermediate_size=192,
            ),
            epochs=1.0,
            learning_rate=2e-3,
            batch_size=128,
            weight_decay=0.05,
            warmup_ratio=0.1,
            agc_clip=0.0,
            crop_scale=(0.8, 1.0),
            card_template="standard_model_card.md",
            summary="The small standard ViT (patch 4, 32 px) that bcos-vit-fashion-mnist starts from, from scratch.",
        ),
        Recipe(
            name="bcos-vit-fashion-mnist",
            source="outputs/vit-fashion-mnist/repo",
            dataset="fashion-mnist",
            hub_model_id="bcos-zoo/bcos-vit-fashion-mnist",
            epochs=1.0,
            learning_rate=1e-3,
            batch_size=128,
            warmup_ratio=0.1,
            agc_clip=0.05,
            crop_scale=(0.8, 1.0),
            summary="The offline recipe: a small ViT B-cosified on Fashion-MNIST on a CPU in minutes.",
        ),
        Recipe(
            name="resnet-fashion-mnist",
            source="scratch",
            dataset="fashion-mnist",
            hub_model_id="bcos-zoo/resnet-fashion-mnist",
            task="standard-classification",
            architecture=dict(
                model_type="resnet",
                image_size=32,
                embedding_size=32,
                hidden_sizes=[32, 64, 128],
                depths=[1, 1, 1],
                layer_type="basic",
            ),
            epochs=1.0,
            learning_rate=2e-3,
            batch_size=128,
            weight_decay=0.05,
            warmup_ratio=0.1,
            agc_clip=0.0,
            crop_scale=(0.8, 1.0),
            card_template="standard_model_card.md",
            summary="The small standard ResNet (3 basic stages, 32 px) that bcos-resnet-fashion-mnist starts from.",
        ),
        Recipe(
            name="bcos-resnet-fashion-mnist",
            source="outputs/resnet-fashion-mnist/repo",
            dataset="fashion-mnist",
            hub_model_id="bcos-zoo/bcos-resnet-fashion-mnist",
            epochs=1.0,
            learning_rate=1e-3,
            batch_size=128,
            warmup_ratio=0.1,
            agc_clip=0.05,
            crop_scale=(0.8, 1.0),
            summary="A small ResNet B-cosified on Fashion-MNIST on a CPU in minutes.",
        ),
        Recipe(
            name="bcos-vit-guided-decoys",
            dataset="fashion-mnist-decoys-48",
            hub_model_id="bcos-zoo/bcos-vit-guided-decoys",
            task="guided-classification",
            architecture=_DECOY_VIT,
            guidance_weight=0.01,
            guidance_layer="input",
            box_fraction=1.0,
            summary="A small B-cos ViT guided by boxes (energy loss) past a class-coloured decoy on Fashion-MNIST.",
            **_DECOY_TRAINING,
        ),
        Recipe(
            name="bcos-vit-canvas-teacher",
            dataset="fashion-mnist-canvas-48",
            hub_model_id="bcos-zoo/bcos-vit-canvas-teacher",
            task="guided-classification",
            architecture=_DECOY_TEACHER_VIT,
            guidance_weight=0.0,
            summary="The e2KD miniature's teacher: a B-cos ViT trained on clean Fashion-MNIST canvases.",
            **{**_DECOY_TRAINING, "epochs": 3.0},
        ),
        Recipe(
            name="bcos-vit-e2kd-decoys",
            dataset="fashion-mnist-decoys-48",
            hub_model_id="bcos-zoo/bcos-vit-e2kd-decoys",
            task="explanation-distillation",
            architecture=_DECOY_VIT,
            teacher="outputs/bcos-vit-canvas-teacher/repo",
            kd_temperature=1.0,
            explanation_weight=1.0,
            summary="A small B-cos ViT distilled with e2KD from a teacher trained on clean data, on decoy data.",
            **_DECOY_TRAINING,
        ),
    ]
}


def _flag_values(value) -> list[str]:
    if isinstance(value, (tuple, list)):
        return [str(item) for item in value]
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, str) and Path(value).is_absolute():  # a public card shows no local absolute path
        relative = os.path.relpath(value)
        return [relative if not relative.startswith("..") else f"<folder {Path(value).name}>"]
    return ["none" if value is None else str(value)]


def recipe_command(recipe: Recipe) -> str:
    """The command that runs ``recipe`` exactly: its catalogue name and every field that differs from the catalogue
    (or, for a recipe not in the catalogue, every field that differs from the defaults)."""
    base = RECIPES.get(recipe.name)
    arguments = ["--recipe", recipe.name] if base is not None else []
    for spec in fields(Recipe):
        value = getattr(recipe, spec.name)
        reference = getattr(base, spec.name) if base is not None else spec.default
        if value != reference and not (base is not None and spec.name == "name"):
            arguments += [f"--{spec.name.replace('_', '-')}", *_flag_values(value)]
    return "python scripts/finetune.py " + shlex.join(arguments)


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name, with the list of names in the error."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; the zoo has: {', '.join(RECIPES)}") from None
