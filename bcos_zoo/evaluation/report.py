"""A B-cos model and its standard source evaluated side by side: accuracy, grid and energy pointing games, a table,
a JSON report and a bar plot.

The B-cos model is explained by its own contributions, the source by each post-hoc method of
:mod:`bcos_zoo.evaluation.baselines`; both see the pixels of their own image processor and go through one harness
(:func:`bcos_zoo.evaluation.localisation.evaluate_localisation`). ``scripts/evaluate_model.py`` is the command line.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

from ..data.datasets import limit, load_dataset_splits
from ..data.preprocessing import model_transform
from .baselines import METHOD_NAMES, POSTHOC_METHODS, load_standard_classifier, posthoc_attribution
from .localisation import (
    ModelEvaluation,
    bcos_attribution,
    bcos_classifier,
    evaluate_localisation,
    explanation_window,
)


GAMES = {"grid_pointing_game": "GridPG", "energy_pointing_game": "EPG"}


def check_classes(name: str, num_labels: int, class_names: list[str]) -> None:
    """A model must score exactly the dataset's classes, or accuracy and grids mean nothing."""
    if num_labels != len(class_names):
        raise ValueError(f"{name} has {num_labels} classes but the dataset has {len(class_names)}.")


def localise_model(model, attributions: dict, dataset, **settings) -> ModelEvaluation:
    """The harness on one model (a B-cos model, or a baselines ``StandardClassifier``): its classifier, its own
    processor's pixels, and its explanation window."""
    classify = bcos_classifier(model) if hasattr(model, "explain") else model
    transform, window = model_transform(model), explanation_window(model)
    return evaluate_localisation(classify, attributions, dataset, transform, window, **settings)


def summary_rows(evaluation: ModelEvaluation, model: str) -> list[dict]:
    """One row per explanation method of a model (one row with ``method`` None when none was scored)."""
    methods = list(evaluation.grid_pointing_game) or [None]
    return [
        dict(model=model, method=method, label=METHOD_NAMES.get(method, "-"), **evaluation.summary(method))
        for method in methods
    ]


def evaluate_side_by_side(
    model: str | Path,
    dataset: str,
    source: str | Path | None = None,
    split: str = "validation",
    max_images: int | None = None,
    grid_size: int = 2,
    num_grids: int = 50,
    min_confidence: float = 0.5,
    methods: Sequence[str] = tuple(METHOD_NAMES),
    ig_steps: int = 32,
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Run the harness on the B-cos ``model`` and, given a ``source``, on the source: the report as a JSON-able dict.

    ``methods`` chooses among :data:`~bcos_zoo.evaluation.baselines.METHOD_NAMES` ("bcos" for the B-cos model's
    own contributions; post-hoc ones need ``source``). Rows hold each method's mean, std and count per game;
    ``scores`` every cell's and image's score. ``seed`` seeds torch and the choice of grids.
    """
    torch.manual_seed(seed)
    splits = load_dataset_splits(dataset)
    images = limit(getattr(splits, split), max_images)
    settings = dict(
        grid_size=grid_size,
        num_grids=num_grids,
        min_confidence=min_confidence,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    evaluated = {}
    bcos = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
    if not hasattr(bcos, "explain"):
        raise ValueError(f"{model} is not a B-cos model (it has no explain()); pass a standard model as the source.")
    check_classes(str(model), bcos.config.num_labels, splits.class_names)
    explainers = {"bcos": bcos_attribution(bcos)} if "bcos" in methods else {}
    evaluated["bcos"] = (model, localise_model(bcos, explainers, images, **settings))
    posthoc = [method for method in methods if method in POSTHOC_METHODS]
    if source:
        classifier = load_standard_classifier(source).to(device)
        check_classes(str(source), classifier.config.num_labels, splits.class_names)
        options = {"integrated_gradients": {"steps": ig_steps}}
        explainers = {method: posthoc_attribution(classifier, method, **options.get(method, {})) for method in posthoc}
        evaluated["source"] = (source, localise_model(classifier, explainers, images, **settings))
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
        if evaluation.grid_pointing_game and evaluation.num_grid_classes < grid_size**2:
            print(
                f"GridPG skipped for {path}: only {evaluation.num_grid_classes} classes have an image it classifies "
                f"correctly with confidence >= {min_confidence}; a grid needs {grid_size**2}."
            )
        rows.extend(summary_rows(evaluation, role))
        for method in evaluation.grid_pointing_game:
            scores[method] = {game: getattr(evaluation, game).get(method, []) for game in GAMES}
    return dict(
        dataset=dataset,
        split=split,
        grid_size=grid_size,
        num_grids=num_grids,
        min_confidence=min_confidence,
        seed=seed,
        models=models,
        rows=rows,
        scores=scores,
    )


def format_score(row: dict, game: str) -> str:
    if row.get(game) is None:
        return "-"
    return f"{row[game]:.3f} ± {row[f'{game}_std']:.3f} (n={row[f'{game}_count']})"


def format_table(rows: list[dict]) -> str:
    """The summary as a markdown table: one row per model and explanation method."""
    lines = ["| model | explanation | accuracy | GridPG | EPG |", "|---|---|---|---|---|"]
    for row in rows:
        games = " | ".join(format_score(row, game) for game in GAMES)
        lines.append(f"| {row['model']} | {row['label']} | {row['accuracy']:.4f} | {games} |")
    return "\n".join(lines)


def plot_localisation(rows: list[dict], grid_size: int, path: Path, title: str = "Localisation") -> None:
    """One bar per row (a model and explanation method) and game: mean, with the standard deviation as error bar.

    ``rows`` hold ``label``, ``method`` ("bcos" bars are red, post-hoc gray) and, per game of :data:`GAMES`, the
    mean and ``<game>_std`` (None or absent where the game was not played, shown as n/a). A game gets a panel when
    any row has its score; the grid pointing game always does, with the score of a uniform map as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if row.get("method") is not None]
    games = [game for game in GAMES if any(row.get(game) is not None for row in rows)] or ["grid_pointing_game"]
    figure, axes = plt.subplots(1, len(games), figsize=(1.8 + 1.3 * max(len(rows), 1) * len(games), 4.2), squeeze=False)
    for axis, game in zip(axes[0], games):
        means = [row.get(game) or 0.0 for row in rows]
        errors = [row.get(f"{game}_std") or 0.0 for row in rows]
        colours = ["tab:red" if row["method"] == "bcos" else "tab:gray" for row in rows]
        bars = axis.bar(range(len(rows)), means, yerr=errors, color=colours, capsize=3)
        labels = [f"{m:.2f}" if row.get(game) is not None else "n/a" for m, row in zip(means, rows)]
        axis.bar_label(bars, labels=labels, label_type="center", color="white")
        if game == "grid_pointing_game":
            chance = 1 / grid_size**2
            axis.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"uniform map ({chance:.2f})")
            axis.legend(loc="upper right", fontsize="small")
        axis.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=30, ha="right", fontsize="small")
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("positive attribution inside")
        grids = f" ({grid_size}x{grid_size} grids)" if game == "grid_pointing_game" else ""
        axis.set_title(GAMES[game] + grids)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """``evaluation.json`` (summary rows and every score) and ``localisation.png`` (bar plot) in ``output_dir``."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = output / "evaluation.json", output / "localisation.png"
    json_path.write_text(json.dumps(report, indent=2))
    title = f"Localisation on {report['dataset']} ({report['split']})"
    plot_localisation(report["rows"], report["grid_size"], plot_path, title=title)
    return json_path, plot_path
