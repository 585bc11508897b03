"""The zoo catalogue: one named recipe per published model, each reproducible with one command.

``python scripts/finetune.py --recipe bcos-vit-s --push`` B-cosifies the recipe's source checkpoint, fine-tunes it
on the recipe's data with the recipe's hyper-parameters and publishes it under the recipe's Hub repo. Command-line
flags override single fields (``dataclasses.replace``), so a recipe is a starting point, not a cage.

The ImageNet and CLIP recipes follow the B-cos papers' optimiser recipe (Adam, cosine decay after a linear warm-up,
adaptive gradient clipping, B=2, biases removed) and need GPUs and the gated ImageNet / CC3M data on the Hub.
``bcos-vit-fashion-mnist`` runs offline on a laptop CPU in minutes, from the small standard ViT that
``vit-fashion-mnist`` trains first (``scripts/fashion_mnist.py`` runs both).
"""

import json
import os
import shlex
from dataclasses import fields
from pathlib import Path

from ..training.recipe import Recipe


IMAGENET = "ILSVRC/imagenet-1k"  # gated on the Hub: accept its terms and log in first
CC3M = "pixparse/cc3m-wds"

# The B-cosification paper's ViT recipe: Adam lr 1e-3 (ten times the CNNs'), cosine with warm-up, AGC; the
# reproduction in docs/reproductions.md B-cosifies its ViT at the same rate.
_IMAGENET_VIT = dict(
    dataset=IMAGENET,
    epochs=90.0,
    learning_rate=1e-3,
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

# The B-cosification paper's simple ViTs (Arya et al., NeurIPS 2024): the bcos package's standard simple ViTs and
# ViT-Cs B-cosified (b=2, biases removed) and fine-tuned. Top-1 on ImageNet-1k as reported, not measured here:
# B-cosified and B-cos v2 from scratch (the paper), the standard source (the bcos package's docstrings), per size
# ti, s, b, l.
_PAPER_SIMPLE_VITS = {
    "simple-vit": ("Simple ViT-{}/16", "standard_simple_vit_{}_patch16_224", (69.3, 75.2, 75.3, 75.5),
                   (60.0, 69.2, 74.4, 75.1), (70.2, 74.5, 75.3, 75.7)),
    "vitc": ("ViT-C-{} (convolutional stem)", "standard_vitc_{}_patch1_14", (72.3, 76.0, 76.7, 77.1),
             (67.3, 74.5, 77.1, 77.8), (72.6, 75.8, 76.8, 77.9)),
}  # fmt: skip


def _paper_simple_vit_recipes() -> list[Recipe]:
    """``bcos-simple-vit-{ti,s,b,l}-paper`` and ``bcos-vitc-{ti,s,b,l}-paper``: from the package's standard twins,
    named ``bcos:<entry>``; their release weights are given with ``--weights``."""
    recipes = []
    for kind, (title, entry, bcosified, scratch, standard) in _PAPER_SIMPLE_VITS.items():
        for index, size in enumerate(("ti", "s", "b", "l")):
            name = f"bcos-{kind}-{size}-paper"
            recipes.append(
                Recipe(
                    name=name,
                    source=f"bcos:{entry.format(size)}",
                    hub_model_id=f"bcos-zoo/{name}",
                    summary=(
                        f"{title.format(size.upper() if size != 'ti' else 'Ti')} of the bcos package B-cosified on "
                        f"ImageNet-1k. Reported top-1, not measured here: B-cosified {bcosified[index]} and B-cos "
                        f"from scratch {scratch[index]} (B-cosification paper), the standard source "
                        f"{standard[index]} (bcos package)."
                    ),
                    **_IMAGENET_VIT,
                )
            )
    return recipes


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
# the redesigned miniature (scripts/reproduce_guidance.py): a small B-cos ResNet on 36 px canvases with a 4 px decoy,
# which learns the decoy as a shortcut and, on clean canvases, the garments to about 86% in 4 epochs of 60,000 images
DECOY_RESNET = dict(
    model_type="bcos_resnet",
    image_size=36,
    crop_pct=1.0,  # the processor leaves a 36 px canvas as it is
    embedding_size=16,
    hidden_sizes=[16, 32, 64],
    depths=[1, 1, 1],
    layer_type="basic",
    use_bias=True,  # centred BatchNorm: explanations carry a bias term, and training is faster
    loss="cross_entropy",
)
_DECOY_RESNET_TRAINING = dict(
    source="scratch",
    architecture=DECOY_RESNET,
    epochs=4.0,
    learning_rate=2e-3,
    batch_size=128,
    warmup_ratio=0.1,
    agc_clip=0.05,
    crop_scale=(1.0, 1.0),  # canvases as drawn: their random placement is the augmentation
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
        # The B-cosification paper's released CLIP (shrebox/B-cosification, clip_bcosification): OpenAI's RN50 as
        # open_clip's Hub repo holds it (weights and tokenizer, no config.json), its attention pool B-cosified with
        # queries and keys detached, position embedding and biases removed; 90 epochs, no warm-up.
        Recipe(
            name="bcos-clip-rn50",
            source="timm/resnet50_clip.openai",
            dataset=IMAGENET,
            image_column="image",
            hub_model_id="bcos-zoo/bcos-clip-rn50",
            summary=(
                "OpenAI CLIP ResNet-50 (open_clip) image tower B-cosified by distillation on ImageNet images, the "
                "B-cosification paper's CLIP: B=2, biases and the attention pool's position embedding removed, "
                "uncentred BatchNorm, SigLIP-style distillation, Adam lr 1e-4, cosine, 90 epochs, batch 256, AGC."
            ),
            **{**_CLIP_DISTILLATION, "epochs": 90.0, "warmup_ratio": 0.0},
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
        Recipe(
            name="bcos-resnet-decoys",
            dataset="fashion-mnist-decoys-36",
            hub_model_id="bcos-zoo/bcos-resnet-decoys",
            task="guided-classification",
            guidance_weight=0.0,
            summary="A small B-cos ResNet trained on Fashion-MNIST canvases whose class-coloured decoy is a shortcut.",
            **_DECOY_RESNET_TRAINING,
        ),
        Recipe(
            name="bcos-resnet-canvas",
            dataset="fashion-mnist-canvas-36",
            hub_model_id="bcos-zoo/bcos-resnet-canvas",
            task="guided-classification",
            guidance_weight=0.0,
            summary="A small B-cos ResNet trained on clean Fashion-MNIST canvases (the e2KD miniature's teacher).",
            **_DECOY_RESNET_TRAINING,
        ),
        Recipe(
            name="bcos-resnet-guided-decoys",
            dataset="fashion-mnist-decoys-36",
            hub_model_id="bcos-zoo/bcos-resnet-guided-decoys",
            task="guided-classification",
            summary="bcos-resnet-decoys fine-tuned with model guidance (energy loss on boxes) past its decoy shortcut.",
            **{
                **_DECOY_RESNET_TRAINING,
                "source": "outputs/bcos-resnet-decoys/repo",
                "epochs": 1.0,
                "learning_rate": 1e-3,
                "guidance_weight": 0.01,
            },
        ),
        Recipe(
            name="bcos-resnet-e2kd-decoys",
            dataset="fashion-mnist-decoys-36",
            hub_model_id="bcos-zoo/bcos-resnet-e2kd-decoys",
            task="explanation-distillation",
            teacher="outputs/bcos-resnet-canvas/repo",
            kd_temperature=1.0,
            explanation_weight=1.0,
            summary="A small B-cos ResNet distilled with e2KD on decoy canvases from a teacher trained on clean ones.",
            **{**_DECOY_RESNET_TRAINING, "epochs": 1.0},
        ),
        *_paper_simple_vit_recipes(),
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
