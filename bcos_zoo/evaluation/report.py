"""A B-cos model and its standard source evaluated side by side: accuracy, grid and energy pointing games,
faithfulness (pixel deletion, insertion, ROAD), a table, a JSON report and plots.

The B-cos model is explained by its own contributions (and, on request, by post-hoc methods of its ordinary
forward), the source by each post-hoc method of :mod:`bcos_zoo.evaluation.baselines`; both see the pixels of their
own image processor and go through one harness (:func:`bcos_zoo.evaluation.localisation.evaluate_localisation`,
:func:`bcos_zoo.evaluation.faithfulness.evaluate_faithfulness`). ``scripts/evaluate_model.py`` is the command line.
"""

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

from ..data.datasets import limit, load_dataset_splits
from ..data.preprocessing import model_transform
from .baselines import (
    DEFAULT_METHODS,
    FUNCTION_METHODS,
    METHOD_NAMES,
    POSTHOC_METHODS,
    load_standard_classifier,
    posthoc_attribution,
)
from .faithfulness import FAITHFULNESS_METRICS, ROAD_FRACTIONS, FaithfulnessEvaluation, evaluate_faithfulness
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


def _classifier(model):
    return bcos_classifier(model) if hasattr(model, "explain") else model


def localise_model(model, attributions: dict, dataset, **settings) -> ModelEvaluation:
    """The harness on one model (a B-cos model, or a baselines ``StandardClassifier``): its classifier, its own
    processor's pixels, and its explanation window."""
    transform, window = model_transform(model), explanation_window(model)
    return evaluate_localisation(_classifier(model), attributions, dataset, transform, window, **settings)


def faithfulness_of_model(model, attributions: dict, dataset, **settings) -> FaithfulnessEvaluation:
    """Deletion, insertion and ROAD of each attribution of one model, on its own processor's pixels."""
    return evaluate_faithfulness(_classifier(model), attributions, dataset, model_transform(model), **settings)


def method_label(role: str, method: str | None) -> str:
    """How a row is named: the method's name; a post-hoc method of the B-cos model says so."""
    label = METHOD_NAMES.get(method, "-")
    return f"{label} (B-cos model)" if role == "bcos" and method not in (None, "bcos") else label


def score_key(role: str, method: str) -> str:
    """The key of a row's scores in the report: the method, or ``bcos/<method>`` for a post-hoc method of the
    B-cos model (the source's rows keep the bare method name)."""
    return f"{role}/{method}" if role == "bcos" and method != "bcos" else method


def summary_rows(
    evaluation: ModelEvaluation, model: str, faithfulness: FaithfulnessEvaluation | None = None
) -> list[dict]:
    """One row per explanation method of a model (one row with ``method`` None when none was scored), with its
    faithfulness summary when it was measured."""
    methods = list(evaluation.grid_pointing_game) or [None]
    rows = []
    for method in methods:
        row = dict(model=model, method=method, label=method_label(model, method), **evaluation.summary(method))
        row.update((faithfulness or FaithfulnessEvaluation(num_images=0)).summary(method))
        rows.append(row)
    return rows


def evaluate_side_by_side(
    model: str | Path,
    dataset: str,
    source: str | Path | None = None,
    split: str = "validation",
    max_images: int | None = None,
    grid_size: int = 2,
    num_grids: int = 50,
    min_confidence: float = 0.5,
    methods: Sequence[str] = ("bcos", *DEFAULT_METHODS),
    bcos_methods: Sequence[str] = (),
    ig_steps: int = 32,
    lime_samples: int = 256,
    rise_masks: int = 1000,
    faithfulness_images: int = 32,
    faithfulness_steps: int = 20,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    faithfulness_metrics: Sequence[str] = tuple(FAITHFULNESS_METRICS),
    batch_size: int = 32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Run the harness on the B-cos ``model`` and, given a ``source``, on the source: the report as a JSON-able dict.

    ``methods`` chooses among :data:`~bcos_zoo.evaluation.baselines.METHOD_NAMES` ("bcos" for the B-cos model's
    own contributions; post-hoc ones need ``source``); ``bcos_methods`` are post-hoc methods of
    :data:`~bcos_zoo.evaluation.baselines.FUNCTION_METHODS` run on the B-cos model itself. Rows hold each
    method's mean, std and count per game and faithfulness metric; ``scores`` every cell's and image's score
    (keyed by method; ``bcos/<method>`` for post-hoc methods of the B-cos model); ``faithfulness`` the mean curves.
    Faithfulness is measured on the first ``faithfulness_images`` images (0: not at all) with
    ``faithfulness_steps`` deletion/insertion steps and ROAD at ``road_fractions``. ``seed`` seeds torch, the
    choice of grids and the methods' random draws.
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
    faithfulness_settings = dict(
        num_images=faithfulness_images,
        steps=faithfulness_steps,
        road_fractions=road_fractions,
        metrics=faithfulness_metrics,
        batch_size=batch_size,
        device=device,
        seed=seed,
    )
    options = {
        "integrated_gradients": {"steps": ig_steps},
        "lime": {"samples": lime_samples, "seed": seed},
        "rise": {"masks": rise_masks, "seed": seed},
    }
    evaluated = {}
    bcos = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
    if not hasattr(bcos, "explain"):
        raise ValueError(f"{model} is not a B-cos model (it has no explain()); pass a standard model as the source.")
    check_classes(str(model), bcos.config.num_labels, splits.class_names)
    unfit = [method for method in bcos_methods if method not in FUNCTION_METHODS]
    if unfit:
        raise ValueError(f"{unfit[0]!r} cannot explain the B-cos model; methods for it: {', '.join(FUNCTION_METHODS)}.")
    explainers = {"bcos": bcos_attribution(bcos)} if "bcos" in methods else {}
    explainers.update({m: posthoc_attribution(bcos, m, **options.get(m, {})) for m in bcos_methods})
    evaluated["bcos"] = (model, bcos, explainers)
    posthoc = [method for method in methods if method in POSTHOC_METHODS]
    if source:
        classifier = load_standard_classifier(source).to(device)
        check_classes(str(source), classifier.config.num_labels, splits.class_names)
        explainers = {m: posthoc_attribution(classifier, m, **options.get(m, {})) for m in posthoc}
        evaluated["source"] = (source, classifier, explainers)
    elif posthoc:
        print(f"No --source given: skipping {', '.join(posthoc)}.")

    rows, scores, models, curves, fractions = [], {}, {}, {}, {}
    for role, (path, evaluated_model, explainers) in evaluated.items():
        evaluation = localise_model(evaluated_model, explainers, images, **settings)
        faithfulness = None
        if faithfulness_images > 0 and faithfulness_metrics and explainers:
            faithfulness = faithfulness_of_model(evaluated_model, explainers, images, **faithfulness_settings)
            fractions.update(faithfulness.fractions)
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
        rows.extend(summary_rows(evaluation, role, faithfulness))
        for method in evaluation.grid_pointing_game:
            key = score_key(role, method)
            scores[key] = {game: getattr(evaluation, game).get(method, []) for game in GAMES}
            if faithfulness is not None:
                scores[key].update(faithfulness.scores.get(method, {}))
                curves[key] = faithfulness.curves.get(method, {})
    report = dict(
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
    if curves:
        num_images = min(faithfulness_images, len(images))
        report["faithfulness"] = dict(
            num_images=num_images, steps=faithfulness_steps, fractions=fractions, curves=curves
        )
    return report


def format_score(row: dict, game: str) -> str:
    if row.get(game) is None:
        return "-"
    return f"{row[game]:.3f} ± {row[f'{game}_std']:.3f} (n={row[f'{game}_count']})"


def format_table(rows: list[dict]) -> str:
    """The summary as a markdown table: one row per model and explanation method; faithfulness columns where it
    was measured (arrows: which way is better)."""
    measured = [metric for metric in FAITHFULNESS_METRICS if any(row.get(metric) is not None for row in rows)]
    headers = [f"{name} {'↑' if higher else '↓'}" for name, higher in (FAITHFULNESS_METRICS[m] for m in measured)]
    lines = [
        "| model | explanation | accuracy | GridPG | EPG |" + "".join(f" {header} |" for header in headers),
        "|---|---|---|---|---|" + "---|" * len(measured),
    ]
    for row in rows:
        games = " | ".join(format_score(row, game) for game in (*GAMES, *measured))
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


def plot_faithfulness(report: dict, path: Path, title: str = "Faithfulness") -> None:
    """One panel per faithfulness metric: the mean curve of each row (a model and explanation method), its mean
    score in the legend (deletion and insertion: area under the curve; ROAD: mean of the curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faithfulness = report["faithfulness"]
    metrics = [metric for metric in FAITHFULNESS_METRICS if metric in faithfulness["fractions"]]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
    rows = [row for row in report["rows"] if row.get("method") is not None]
    others = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive"]
    palette = itertools.cycle(others)  # B-cos contributions red, every other method its own colour
    colours = {id(row): "tab:red" if row["method"] == "bcos" else next(palette) for row in rows}
    for axis, metric in zip(axes[0], metrics):
        name, higher = FAITHFULNESS_METRICS[metric]
        for row in rows:
            curve = faithfulness["curves"].get(score_key(row["model"], row["method"]), {}).get(metric)
            if curve is None:
                continue
            style = dict(color=colours[id(row)], linewidth=2 if row["method"] == "bcos" else 1)
            style["linestyle"] = "--" if row["model"] == "bcos" and row["method"] != "bcos" else "-"  # B-cos post hoc
            label = f"{row['model']}: {row['label']} ({row[metric]:.3f})"
            axis.plot(faithfulness["fractions"][metric], curve, marker=".", label=label, **style)
        axis.set_xlabel("share of pixels " + ("inserted" if metric == "insertion" else "removed"))
        axis.set_ylabel("probability of the explained class")
        axis.set_ylim(0, 1.02)
        axis.set_title(f"{name} ({'higher' if higher else 'lower'} is better)")
        axis.legend(fontsize="x-small")
    figure.suptitle(f"{title} ({faithfulness['num_images']} images)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, output_dir: str | Path) -> list[Path]:
    """``evaluation.json`` (summary rows, every score, the faithfulness curves), ``localisation.png`` (bar plot)
    and, where faithfulness was measured, ``faithfulness.png`` (its curves) in ``output_dir``; the paths written."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    json_path, plot_path = output / "evaluation.json", output / "localisation.png"
    json_path.write_text(json.dumps(report, indent=2))
    title = f"Localisation on {report['dataset']} ({report['split']})"
    plot_localisation(report["rows"], report["grid_size"], plot_path, title=title)
    written = [json_path, plot_path]
    if report.get("faithfulness"):
        written.append(output / "faithfulness.png")
        plot_faithfulness(report, written[-1], title=f"Faithfulness on {report['dataset']} ({report['split']})")
    return written
