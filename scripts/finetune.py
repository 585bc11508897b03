"""B-cosify a pretrained model, fine-tune it with the HF Trainer, evaluate, write its Hub repo folder, and push.

    python scripts/finetune.py --recipe bcos-vit-s --push                  # a zoo recipe, as published
    python scripts/finetune.py --model google/vit-base-patch16-224 --dataset ./my_images --epochs 5
    accelerate launch --multi_gpu --num_processes 8 scripts/finetune.py --recipe bcos-vit-b   # data-parallel, 8 GPUs

Flags override the recipe's fields. Outputs go to --output-dir (default outputs/<recipe>): checkpoints/ (for
--resume), repo/ (exactly what --push uploads; --dry-run stops there), results.json.
"""

import argparse
import json
import shlex
import sys
from dataclasses import replace

from bcos_zoo.training.recipe import Recipe, add_recipe_flags, recipe_overrides
from bcos_zoo.zoo.cards import launch_command
from bcos_zoo.zoo.cli import at_least, run_script
from bcos_zoo.zoo.finetune import is_main_process, processes_now
from bcos_zoo.zoo.recipes import RECIPES, get_recipe


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="a zoo recipe (see README); flags override it")
    parser.add_argument("--output-dir", help="default: outputs/<recipe name>")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="default: cuda when available (pick GPUs with CUDA_VISIBLE_DEVICES, or use accelerate launch)",
    )
    parser.add_argument(
        "--dataloader-num-workers",
        type=at_least(0),
        help="processes that load and augment images (default: none on the CPU, up to 8 beside a GPU)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    parser.add_argument("--push", action="store_true", help="upload repo/ to the Hub as one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--dry-run", action="store_true", help="with --push: write and list repo/, upload nothing")
    add_recipe_flags(parser)
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The named recipe, or one made from --model and --dataset, with the given flags applied."""
    overrides = recipe_overrides(args)
    if args.recipe:
        return replace(get_recipe(args.recipe), **overrides)
    if not (args.source and args.dataset):
        raise ValueError("give --recipe, or both --model and --dataset")  # a usage error: exit 2
    name = args.source.rstrip("/").split("/")[-1]
    defaults = {"name": f"bcos-{name}", "hub_model_id": f"bcos-{name}"}
    return Recipe(**{**defaults, **overrides})


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = recipe_from_args(args)
    from bcos_zoo.zoo.finetune import finetune

    result = finetune(
        recipe,
        args.output_dir or f"outputs/{recipe.name}",
        resume=args.resume,
        push=args.push,
        private=args.private,
        dry_run=args.dry_run,
        device=args.device,
        dataloader_num_workers=args.dataloader_num_workers,
    )
    if result.repo_dir is not None:  # the main process
        print(json.dumps({"repo_dir": str(result.repo_dir), "commit_url": result.commit_url, **result.metrics}))
    return 0


def resume_command(argv: list[str], script: str = "scripts/finetune.py") -> str:
    """The command that continues this run, on as many processes as it runs on (the batch size is per process), with
    the script named as this run named it (so that it runs from where this one was started)."""
    if not is_main_process():  # under accelerate launch, the main process alone says it
        return ""
    command = "python " + shlex.join([script, *argv, *(["--resume"] if "--resume" not in argv else [])])
    return "continue with: " + launch_command(command, processes_now())


if __name__ == "__main__":
    sys.exit(run_script(main, on_interrupt=resume_command(sys.argv[1:], sys.argv[0])))
