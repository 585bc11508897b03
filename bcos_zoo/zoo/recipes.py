"""The zoo catalogue: one named recipe per published model, each reproducible with one command.

``python scripts/finetune.py --recipe bcos-vit-s --push`` B-cosifies the recipe's source checkpoint, fine-tunes it
on the recipe's data with the recipe's hyper-parameters and publishes it under the recipe's Hub repo. Command-line
flags override single fields (``dataclasses.replace``), so a recipe is a starting point, not a cage.

The ImageNet and CLIP recipes follow the B-cos papers' optimiser recipe (Adam, cosine decay after a linear warm-up,
adaptive gradient clipping, B=2, biases removed) and need GPUs and the gated ImageNet / CC3M data on the Hub.
``bcos-vit-fashion-mnist`` runs offline on a laptop CPU in minutes, from a small standard ViT that
``vit-fashion-mnist`` (or ``scripts/train_fashion_mnist_source.py``) trains first.
"""

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Recipe:
    """Everything one fine-tuning run needs; the names match the ``scripts/finetune.py`` flags."""

    name: str
    source: str  # Hub id or folder: a standard HF ViT/DeiT, timm ViT or HF CLIP checkpoint, or a B-cos checkpoint
    dataset: str  # "fashion-mnist", an image folder, or a Hub dataset name
    hub_model_id: str
    task: str = "classification"  # "classification" (BCE, uniform off-labels) or "clip-distillation" (images only)
    b: float = 2.0
    bias: str = "remove"
    epochs: float = 1.0
    max_steps: int = -1  # overrides epochs when positive
    learning_rate: float = 1e-4
    batch_size: int = 64  # per device
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    agc_clip: float | None = 0.01  # adaptive gradient clipping factor; None for the Trainer's global-norm clipping
    crop_scale: tuple[float, float] = (0.5, 1.0)  # timm's random-resized-crop scale during training
    image_column: str = "image"
    label_column: str | None = "label"  # None for image-only data (distillation)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    save_steps: int = 500
    seed: int = 0
    architecture: dict | None = None  # config fields of a model trained from scratch (source="scratch")
    card_template: str = "model_card.md"
    license: str = "apache-2.0"
    summary: str = ""

    def with_overrides(self, **overrides) -> "Recipe":
        """A copy with the given fields replaced; ``None`` values mean "keep the recipe's"."""
        known = {field.name for field in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


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
            agc_clip=None,
            crop_scale=(0.8, 1.0),
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
    ]
}


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name, with the list of names in the error."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; the zoo has: {', '.join(RECIPES)}") from None
