r"""Accuracy and localisation of a B-cos model, and of post-hoc explanations of its standard source, side by side.

    python scripts/evaluate.py --model outputs/bcos-vit-s --source outputs/vit-s --dataset fashion-mnist \
        --num-grids 50 --output-dir outputs/evaluation

For each model: top-1 accuracy on the split; the grid pointing game (GridPG) on ``--num-grids`` grids of
``--grid-size`` x ``--grid-size`` images of distinct classes, each classified correctly with softmax confidence
>= ``--min-confidence`` by that model, every cell's class explained in sliding windows of the model's input size
(stride half of it) and the window attributions summed; the energy pointing game (EPG) where the dataset's items
carry object boxes. The B-cos model is explained by its own contributions, the source by each post-hoc method.
Prints a table, writes ``<output-dir>/evaluation.json`` (summary rows and every score) and
``<output-dir>/localisation.png`` (bar plot).
"""

import argparse
import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path

import torch

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.data.datasets import limit, load_dataset_splits
from bcos_zoo.evaluation.baselines import METHOD_NAMES, POSTHOC_METHODS, load_standard_classifier, posthoc_attribution


GAMES = {"grid_pointing_game": "GridPG", "energy_pointing_game": "EPG"}


def load_evaluate_package() -> None:
    """Put the ``evaluate`` package (which scores the games) in ``sys.modules``, found without this file's folder.

    Running a file in ``scripts/`` puts that folder first on the import path, where this file shadows the package.
    Run as a script, the harness would import this file as ``evaluate``; imported by a sibling script as
    ``evaluate``, this file replaces itself with the package, which is what the importer then receives.
    """
    here = Path(__file__).resolve().parent
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    spec = importlib.machinery.PathFinder.find_spec("evaluate", path)
    if spec is None:
        raise ImportError("The evaluate package is not installed: pip install 'bcos_zoo[eval]'.")
    package = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = package
    spec.loader.exec_module(package)


if "evaluate" not in sys.modules or __name__ == "evaluate":
    load_evaluate_package()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="B-cos model folder or Hub id")
    parser.add_argument("--source", help="its standard ViT source (folder or Hub id), for post-hoc methods")
    parser.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist', an image folder or a Hub dataset")
    parser.add_argument("--split", default="validation", choices=("train", "validation"))
    parser.add_argument("--max-images", type=int, help="use only the split's first images (quick runs)")
    parser.add_argument("--grid-size", type=int, default=2)
    parser.add_argument("--num-grids", type=int, default=50)
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated gradients steps")
    parser.add_argument("--output-dir", default="outputs/evaluation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def check_classes(name: str, num_labels: int, class_names: list[str]) -> None:
    if num_labels != len(class_names):
        raise ValueError(f"{name} has {num_labels} classes but the dataset has {len(class_names)}.")


def evaluate_models(args: argparse.Namespace) -> dict:
    """Run the harness on the B-cos model and, with ``--source``, on the source; the report saved as JSON."""
    from bcos_zoo.evaluation.localisation import (  # needs `evaluate`
        bcos_attribution,
        bcos_classifier,
        evaluate_localisation,
    )

    splits = load_dataset_splits(args.dataset)
    dataset = limit(getattr(splits, args.split), args.max_images)
    settings = dict(
        dataset=dataset,
        grid_size=args.grid_size,
        num_grids=args.num_grids,
        min_confidence=args.min_confidence,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    evaluated = {}
    bcos = BcosViTForImageClassification.from_pretrained(args.model).to(args.device).eval()
    check_classes(args.model, bcos.config.num_labels, splits.class_names)
    explainers = {"bcos": bcos_attribution(bcos)} if "bcos" in args.methods else {}
    evaluated["bcos"] = (
        args.model,
        evaluate_localisation(bcos_classifier(bcos), explainers, image_size=bcos.config.image_size, **settings),
    )
    posthoc = [method for method in args.methods if method in POSTHOC_METHODS]
    if args.source:
        source = load_standard_classifier(args.source).to(args.device)
        check_classes(args.source, source.model.config.num_labels, splits.class_names)
        options = {"integrated_gradients": {"steps": args.ig_steps}}
        explainers = {method: posthoc_attribution(source, method, **options.get(method, {})) for method in posthoc}
        evaluated["source"] = (
            args.source,
            evaluate_localisation(source, explainers, image_size=source.image_size, **settings),
        )
    elif posthoc:
        print(f"No --source given: skipping {', '.join(posthoc)}.")

    rows, scores, models = [], {}, {}
    for role, (path, evaluation) in evaluated.items():
        models[role] = dict(
            path=str(path),
            accuracy=evaluation.accuracy,
            num_images=evaluation.num_images,
            num_grid_classes=evaluation.num_grid_classes,
        )
        if evaluation.grid_pointing_game and evaluation.num_grid_classes < args.grid_size**2:
            print(
                f"GridPG skipped for {path}: only {evaluation.num_grid_classes} classes have an image it classifies "
                f"correctly with confidence >= {args.min_confidence}; a grid needs {args.grid_size**2}."
            )
        methods = evaluation.grid_pointing_game or {None: []}
        for method in methods:
            row = dict(model=role, method=method, label=METHOD_NAMES.get(method, "-"), **evaluation.summary(method))
            rows.append(row)
            if method is not None:
                scores[method] = {game: getattr(evaluation, game).get(method, []) for game in GAMES}
    return dict(
        dataset=args.dataset,
        split=args.split,
        grid_size=args.grid_size,
        num_grids=args.num_grids,
        min_confidence=args.min_confidence,
        seed=args.seed,
        models=models,
        rows=rows,
        scores=scores,
    )


def format_score(row: dict, game: str) -> str:
    if row[game] is None:
        return "-"
    return f"{row[game]:.3f} ± {row[f'{game}_std']:.3f} (n={row[f'{game}_count']})"


def format_table(rows: list[dict]) -> str:
    """The summary as a markdown table: one row per model and explanation method."""
    lines = ["| model | explanation | accuracy | GridPG | EPG |", "|---|---|---|---|---|"]
    for row in rows:
        games = " | ".join(format_score(row, game) for game in GAMES)
        lines.append(f"| {row['model']} | {row['label']} | {row['accuracy']:.4f} | {games} |")
    return "\n".join(lines)


def plot_localisation(report: dict, path: Path) -> None:
    """One bar per explanation method and game (mean, with the standard deviation as error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["rows"] if row["method"] is not None]
    games = [game for game in GAMES if any(row[game] is not None for row in rows)] or ["grid_pointing_game"]
    figure, axes = plt.subplots(1, len(games), figsize=(1.6 + 1.3 * max(len(rows), 1) * len(games), 4), squeeze=False)
    for axis, game in zip(axes[0], games):
        means = [row[game] or 0.0 for row in rows]
        errors = [row[f"{game}_std"] or 0.0 for row in rows]
        colours = ["tab:red" if row["method"] == "bcos" else "tab:gray" for row in rows]
        bars = axis.bar(range(len(rows)), means, yerr=errors, color=colours, capsize=3)
        labels = [f"{m:.2f}" if row[game] is not None else "n/a" for m, row in zip(means, rows)]
        axis.bar_label(bars, labels=labels, label_type="center", color="white")
        if game == "grid_pointing_game":
            chance = 1 / report["grid_size"] ** 2
            axis.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"uniform ({chance:.2f})")
            axis.legend(loc="upper right", fontsize="small")
        axis.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=30, ha="right")
        axis.set_ylim(0, 1.05)
        grids = f" ({report['grid_size']}x{report['grid_size']} grids)" if game == "grid_pointing_game" else ""
        axis.set_title(GAMES[game] + grids)
    figure.suptitle(f"Localisation on {report['dataset']} ({report['split']})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    report = evaluate_models(args)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    plot_localisation(report, output / "localisation.png")
    print(format_table(report["rows"]))
    print(f"Wrote {output / 'evaluation.json'} and {output / 'localisation.png'}")
    return report


if __name__ == "__main__":
    main()
