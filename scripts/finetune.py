"""B-cosify a pretrained model, fine-tune it with the HF Trainer, evaluate, write its Hub repo folder, and push.

    python scripts/finetune.py --recipe bcos-vit-s --push                  # a zoo recipe, as published
    python scripts/finetune.py --model google/vit-base-patch16-224 --dataset ./my_images --epochs 5
    accelerate launch --num_processes 8 scripts/finetune.py --recipe bcos-vit-b   # data-parallel on 8 GPUs

Flags override the recipe's fields. Outputs go to --output-dir (default outputs/<recipe>): checkpoints/ (for
--resume), repo/ (exactly what --push uploads; --dry-run stops there), results.json.
"""

import argparse
import json
import sys
from dataclasses import replace

from bcos_zoo.zoo.hub import PushError
from bcos_zoo.zoo.recipes import RECIPES, Recipe, get_recipe


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="a zoo recipe (see README); flags override it")
    parser.add_argument("--model", dest="source", help="standard source (Hub id or folder) or a B-cos checkpoint")
    parser.add_argument("--dataset", help="'fashion-mnist', an image folder (one sub-folder per class) or a Hub id")
    parser.add_argument("--image-column", help="image column of a Hub dataset (default: image)")
    parser.add_argument("--label-column", help="label column of a Hub dataset (default: label)")
    parser.add_argument("--task", choices=["classification", "clip-distillation", "standard-classification"])
    parser.add_argument("--output-dir", help="default: outputs/<recipe name>")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--batch-size", type=int, help="per device")
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--warmup-ratio", type=float)
    parser.add_argument("--agc-clip", type=float, help="adaptive gradient clipping factor (0: global-norm clipping)")
    parser.add_argument("--b", type=float, help="the B-cos alignment exponent B")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--save-steps", type=int, help="checkpoint every N steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--push", action="store_true", help="upload repo/ to the Hub as one commit")
    parser.add_argument("--hub-model-id", help="org/name on the Hub (default: the recipe's)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="with --push: write and list repo/, upload nothing")
    return parser.parse_args(argv)


RECIPE_FLAGS = [
    "source",
    "dataset",
    "image_column",
    "label_column",
    "task",
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "agc_clip",
    "b",
    "max_train_samples",
    "max_eval_samples",
    "save_steps",
    "seed",
]


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    if args.recipe:
        recipe = get_recipe(args.recipe)
    elif args.source and args.dataset:
        name = args.source.rstrip("/").split("/")[-1]
        recipe = Recipe(name=f"bcos-{name}", source=args.source, dataset=args.dataset, hub_model_id=f"bcos-{name}")
    else:
        raise SystemExit("error: give --recipe, or both --model and --dataset")
    recipe = recipe.with_overrides(**{flag: getattr(args, flag) for flag in RECIPE_FLAGS})
    return replace(recipe, agc_clip=None) if args.agc_clip == 0 else recipe


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = recipe_from_args(args)
    from bcos_zoo.zoo.finetune import finetune

    try:
        result = finetune(
            recipe,
            args.output_dir or f"outputs/{recipe.name}",
            resume=args.resume,
            push=args.push,
            hub_model_id=args.hub_model_id,
            private=args.private,
            dry_run=args.dry_run,
            device=args.device,
        )
    except (PushError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.repo_dir is not None:  # the main process
        print(json.dumps({"repo_dir": str(result.repo_dir), "commit_url": result.commit_url, **result.metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
