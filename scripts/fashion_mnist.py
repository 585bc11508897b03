"""The offline recipe end to end: Fashion-MNIST from Debian's package, no network, a 2-core CPU, minutes.

    python scripts/fashion_mnist.py [--output-root outputs] [--source-epochs 1] [--epochs 1]

1. trains the small standard ViT the recipe starts from (recipe ``vit-fashion-mnist``),
2. B-cosifies it and fine-tunes it (recipe ``bcos-vit-fashion-mnist``) with the HF Trainer,
3. evaluates both on the 10k test images, writes the Hub repo folder (weights, remote code, processor, model card,
   explanation PNGs), and prints a table.

Re-running with the same flags re-uses a finished stage and resumes an interrupted one. A stage trained with other
flags (``--source-epochs``, ``--epochs``), or a B-cos stage B-cosified from a standard source that was trained again
since, is refused before anything trains: the finished models are kept. Pass another ``--output-root`` to train
the new settings beside them, or delete the stage's folder to train it anew.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from bcos_zoo.training.recipe import training_differences
from bcos_zoo.zoo.cli import run_script
from bcos_zoo.zoo.finetune import with_run_precision
from bcos_zoo.zoo.recipes import Recipe, get_recipe
from bcos_zoo.zoo.reproduction import check_run_folder, train_or_reuse


def check_stage(folder: Path, recipe: Recipe, stage: str, flag: str, root: Path) -> None:
    """Refuse, before anything trains, a stage folder that holds a run of another recipe: one trained for other
    epochs says which ``flag`` re-uses it; anything else is refused as every reproduction refuses it."""
    stored, recipe = folder / "recipe.json", with_run_precision(recipe, folder)  # as the run records it
    earlier = json.loads(stored.read_text()) if stored.is_file() else {}
    if earlier and training_differences(earlier, recipe, work_dir=root) == ["epochs"]:
        trained, asked = earlier["epochs"], recipe.epochs
        raise ValueError(
            f"{folder} holds the {stage} trained with {flag} {trained:g}, not {asked:g}: pass {flag} {trained:g} "
            f"to re-use it, another --output-root to train it with {flag} {asked:g} beside it, or delete {folder} to "
            "train it anew. Nothing was changed."
        )
    check_run_folder(folder, recipe, root, "--output-root")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-root", type=Path, default=Path("outputs"), help="where both runs are trained (default: %(default)s)"
    )
    parser.add_argument("--source-epochs", type=float, help="default: the vit-fashion-mnist recipe's")
    parser.add_argument("--epochs", type=float, help="default: the bcos-vit-fashion-mnist recipe's")
    args = parser.parse_args(argv)

    start, root = time.perf_counter(), args.output_root
    source_dir, output = root / "vit-fashion-mnist", root / "bcos-vit-fashion-mnist"
    source_recipe = get_recipe("vit-fashion-mnist").with_overrides(epochs=args.source_epochs)
    recipe = get_recipe("bcos-vit-fashion-mnist").with_overrides(source=str(source_dir / "repo"), epochs=args.epochs)
    check_stage(source_dir, source_recipe, "standard source", "--source-epochs", root)
    check_stage(output, recipe, "B-cos stage", "--epochs", root)

    print("== 1/2 the standard source ViT ==")
    source_metrics = train_or_reuse(source_recipe, source_dir, work_dir=root, work_flag="--output-root")["metrics"]
    print("== 2/2 B-cosify and fine-tune ==")
    metrics = train_or_reuse(recipe, output, work_dir=root, work_flag="--output-root")["metrics"]
    total = time.perf_counter() - start

    rows = [
        ("standard ViT (source)", source_metrics["accuracy"], source_metrics.get("train_seconds", 0.0)),
        ("B-cos ViT at B=1, before fine-tuning", metrics["source_accuracy"], 0.0),
        (f"B-cos ViT (B={recipe.b:g}), fine-tuned", metrics["accuracy"], metrics["train_seconds"]),
    ]
    print(f"\nFashion-MNIST test accuracy (10,000 images); {total / 60:.1f} min in all")
    print(f"| {'model':<38} | accuracy | training time |")
    print(f"|{'-' * 40}|----------|---------------|")
    for name, accuracy, seconds in rows:
        print(f"| {name:<38} | {100 * accuracy:7.2f}% | {seconds / 60:10.1f} min |")
    repo_dir = output / "repo"
    print(f"\nRepo folder (what --push uploads): {repo_dir}")
    print(f"Model card: {repo_dir / 'README.md'}")
    print("Explanations: " + ", ".join(str(path) for path in sorted((repo_dir / "examples").glob("*.png"))))


if __name__ == "__main__":
    sys.exit(run_script(main, on_interrupt="run the same command again to continue"))
