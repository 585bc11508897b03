"""The offline recipe end to end: Fashion-MNIST from Debian's package, no network, a 2-core CPU, minutes.

    python scripts/fashion_mnist.py [--output-root outputs] [--source-epochs 1] [--epochs 1]

1. trains the small standard ViT the recipe starts from (recipe ``vit-fashion-mnist``; skipped when it exists),
2. B-cosifies it and fine-tunes it (recipe ``bcos-vit-fashion-mnist``) with the HF Trainer,
3. evaluates both on the 10k test images, writes the Hub repo folder (weights, remote code, processor, model card,
   explanation PNGs), and prints a table. Re-running resumes or re-uses what is already there.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from bcos_zoo.zoo.cli import run_script
from bcos_zoo.zoo.finetune import finetune, last_complete_checkpoint
from bcos_zoo.zoo.recipes import get_recipe


def train_source(output: Path, epochs: float | None) -> dict:
    """The standard ViT, trained from scratch; its repo folder is the B-cos run's source."""
    results = output / "results.json"
    if results.is_file() and (output / "repo" / "model.safetensors").is_file():
        print(f"Re-using the standard source in {output / 'repo'}")
        return json.loads(results.read_text())["metrics"]
    recipe = get_recipe("vit-fashion-mnist").with_overrides(epochs=epochs)
    resume = last_complete_checkpoint(output / "checkpoints") is not None
    return finetune(recipe, output, resume=resume).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, default=Path("outputs"))
    parser.add_argument("--source-epochs", type=float, help="default: the vit-fashion-mnist recipe's")
    parser.add_argument("--epochs", type=float, help="default: the bcos-vit-fashion-mnist recipe's")
    args = parser.parse_args()

    start = time.perf_counter()
    source_dir = args.output_root / "vit-fashion-mnist"
    print("== 1/2 the standard source ViT ==")
    source_metrics = train_source(source_dir, args.source_epochs)

    print("== 2/2 B-cosify and fine-tune ==")
    output = args.output_root / "bcos-vit-fashion-mnist"
    recipe = get_recipe("bcos-vit-fashion-mnist").with_overrides(source=str(source_dir / "repo"), epochs=args.epochs)
    resume = last_complete_checkpoint(output / "checkpoints") is not None
    result = finetune(recipe, output, resume=resume)
    metrics = result.metrics
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
    print(f"\nRepo folder (what --push uploads): {result.repo_dir}")
    print(f"Model card: {result.repo_dir / 'README.md'}")
    print("Explanations: " + ", ".join(str(path) for path in sorted((result.repo_dir / "examples").glob("*.png"))))


if __name__ == "__main__":
    sys.exit(run_script(main))
