"""A B-cos model and its standard source evaluated side by side: accuracy, grid and energy pointing games,
faithfulness (pixel deletion, insertion, ROAD), a table, a JSON report and plots.

The B-cos model is explained by its own contributions (and, on request, by post-hoc methods of its ordinary
forward), the source by each post-hoc method of :mod:`bcos_zoo.evaluation.baselines`; both see the pixels of their
own image processor and go through one harness (:func:`bcos_zoo.evaluation.localisation.evaluate_localisation`,
:func:`bcos_zoo.evaluation.faithfulness.evaluate_faithfulness`). ``scripts/evaluate_model.py`` is the command line.
"""

import itertools
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch.utils.data import Dataset
from transformers import AutoModelForImageClassification

from ..data.datasets import limit, model_needs_hub, shown
from ..data.decoys import load_boxed_splits
from ..data.preprocessing import model_transform
from ..visualize import subplots
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


MATCH_CLASSES = ("name", "index")


def _key(class_name: str) -> str:
    """A class name as matched: without white space, as the Hub's Fashion-MNIST writes "T - shirt / top", and in
    Unicode's composed form (a folder copied from macOS or out of many zip files spells "é" as "e" and an accent)."""
    return unicodedata.normalize("NFC", "".join(class_name.split()))


def class_order(name: str, id2label: dict, class_names: list[str], match: str = "name") -> list[int]:
    """The model's index of each of the dataset's classes: a model must score exactly the dataset's classes, or
    accuracy and grids mean nothing.

    The counts must agree. With ``match="name"``, a model that names its classes (not transformers' default
    ``LABEL_i``) must have the dataset's class names (white space aside), in any order (in the same order where a
    name repeats, as ImageNet's "crane" does: which is which cannot be told by name); a mere count check would
    let a dataset whose folders sort differently score each image against the wrong class. ``match="index"``:
    class ``i`` of the dataset is the model's class ``i``, whatever their names (folders that cannot carry the
    model's names, like ``T-shirt/top``, or ImageNet's folders named by WordNet id).
    """
    if match not in MATCH_CLASSES:
        raise ValueError(f"match_classes must be one of {MATCH_CLASSES}, got {match!r}")
    model_names = [str(id2label[index]) for index in range(len(id2label))]
    if len(model_names) != len(class_names):
        raise ValueError(f"{name} has {len(model_names)} classes but the dataset has {len(class_names)}.")
    in_order = list(range(len(class_names)))
    if match == "index" or model_names == [f"LABEL_{i}" for i in in_order]:
        return in_order
    model_keys, keys = [_key(name) for name in model_names], [_key(name) for name in class_names]
    if model_keys == keys:  # the same classes in the same order, even where a name repeats (ImageNet's two cranes)
        return in_order
    counts, model_counts = Counter(keys), Counter(model_keys)
    repeated = sorted(key for key in counts | model_counts if counts[key] > 1 or model_counts[key] > 1)
    if counts == model_counts and not repeated:  # the same classes, in any order
        model_index = {key: index for index, key in enumerate(model_keys)}
        return [model_index[key] for key in keys]
    missing = [class_name for class_name, key in zip(class_names, keys) if key not in model_counts]
    why = f"{shown(missing)} not among the model's" if missing else f"{shown(repeated)} repeat, so names cannot match"
    raise ValueError(
        f"{name}'s classes are {shown(model_names)} but the dataset's are {shown(class_names)} ({why}). Rename "
        "the class folders after the model's classes (in its order where a name repeats), or pass --match-classes "
        "index if the dataset's i-th class (folders in sorted order) is the model's class i."
    )


class Relabeled(Dataset):
    """A dataset's items ``(image, label, ...)`` with each label replaced by the model's index of that class."""

    def __init__(self, items: Dataset, order: list[int]):
        self.items, self.order = items, order

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple:
        image, label, *rest = self.items[index]
        return (image, self.order[label], *rest)


def for_model(name: str, config, images: Dataset, class_names: list[str], match: str = "name") -> Dataset:
    """``images`` as the model numbers their classes (see :func:`class_order`)."""
    order = class_order(name, config.id2label, class_names, match)
    return images if order == sorted(order) else Relabeled(images, order)


def output_folder(output_dir: str | Path) -> Path:
    """``output_dir``, created when missing: checked before an evaluation that can take hours, so that a bad
    ``--output-dir`` does not lose it at the end."""
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output-dir {output} is a file; pass a folder (it is created when missing).")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--output-dir {output} cannot be created ({error.strerror}); pass another folder.") from None
    if not os.access(output, os.W_OK | os.X_OK):
        raise ValueError(f"--output-dir {output} is not writable; pass a folder you can write to.")
    return output


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
    methods: Sequence[str] | None = None,
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
    match_classes: str = "name",
    dataloader_num_workers: int | None = None,
) -> dict:
    """Run the harness on the B-cos ``model`` and, given a ``source``, on the source: the report as a JSON-able dict.

    ``methods`` chooses among :data:`~bcos_zoo.evaluation.baselines.METHOD_NAMES` ("bcos" for the B-cos model's
    own contributions; post-hoc ones need ``source``, and one that does not apply to it is refused); ``None``: "bcos"
    and those of :data:`~bcos_zoo.evaluation.baselines.DEFAULT_METHODS` that apply to the source. ``bcos_methods`` are
    post-hoc methods of
    :data:`~bcos_zoo.evaluation.baselines.FUNCTION_METHODS` run on the B-cos model itself. Rows hold each
    method's mean, std and count per game and faithfulness metric; ``scores`` every cell's and image's score
    (keyed by method; ``bcos/<method>`` for post-hoc methods of the B-cos model); ``faithfulness`` the mean curves.
    Faithfulness is measured on the first ``faithfulness_images`` images (0: not at all) with ``faithfulness_steps``
    deletion/insertion steps and ROAD at ``road_fractions``. ``seed`` seeds torch, the choice of grids and the methods'
    random draws. ``match_classes`` says how the dataset's classes are matched to each model's (:func:`class_order`);
    ``dataloader_num_workers`` processes read the images classified (``None``: none on the CPU, up to 8 beside a GPU).
    ``dataset`` is what ``load_dataset_splits`` takes or a boxed dataset (``fashion-mnist-canvas[-<px>]``,
    ``fashion-mnist-decoys[-<px>]``: ``bcos_zoo.data.decoys.load_boxed_splits``), whose boxes the energy pointing game
    scores.
    """
    torch.manual_seed(seed)
    model_needs_hub(str(model))  # a folder that does not exist is refused before the data is read
    splits = load_boxed_splits(dataset)  # the boxed datasets by name (their items carry boxes), else any other
    images = limit(getattr(splits, split), max_images)
    settings = dict(
        grid_size=grid_size,
        num_grids=num_grids,
        min_confidence=min_confidence,
        batch_size=batch_size,
        device=device,
        seed=seed,
        num_workers=dataloader_num_workers,
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
    try:
        bcos = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
    except SafetensorError as error:  # a cut-off copy: say which model
        raise ValueError(
            f"--model {model}: its weights cannot be read ({error}); copy or download them again."
        ) from None
    if not hasattr(bcos, "explain"):
        raise ValueError(f"{model} is not a B-cos model (it has no explain()); pass a standard model as the source.")
    bcos_images = for_model(str(model), bcos.config, images, splits.class_names, match_classes)
    unfit = [method for method in bcos_methods if method not in FUNCTION_METHODS]
    if unfit:
        raise ValueError(f"{unfit[0]!r} cannot explain the B-cos model; methods for it: {', '.join(FUNCTION_METHODS)}.")
    explainers = {"bcos": bcos_attribution(bcos)} if methods is None or "bcos" in methods else {}
    explainers.update({m: posthoc_attribution(bcos, m, **options.get(m, {})) for m in bcos_methods})
    evaluated["bcos"] = (model, bcos, explainers, bcos_images)
    posthoc = [method for method in methods or DEFAULT_METHODS if method in POSTHOC_METHODS]
    if source:
        classifier = load_standard_classifier(source).to(device)
        if methods is None:  # the defaults that apply to this source (no attention rollout of a CNN)
            posthoc = [method for method in posthoc if method in classifier.methods]
        source_images = for_model(str(source), classifier.config, images, splits.class_names, match_classes)
        explainers = {m: posthoc_attribution(classifier, m, **options.get(m, {})) for m in posthoc}
        evaluated["source"] = (source, classifier, explainers, source_images)
    elif posthoc:
        print(f"No --source given: skipping {', '.join(posthoc)}.")

    rows, scores, models, curves, fractions = [], {}, {}, {}, {}
    for role, (path, evaluated_model, explainers, model_images) in evaluated.items():
        evaluation = localise_model(evaluated_model, explainers, model_images, **settings)
        faithfulness = None
        if faithfulness_images > 0 and faithfulness_metrics and explainers:
            faithfulness = faithfulness_of_model(evaluated_model, explainers, model_images, **faithfulness_settings)
            fractions.update(faithfulness.fractions)
        models[role] = dict(
            path=str(path),
            accuracy=evaluation.accuracy,
            num_images=evaluation.num_images,
            num_grid_classes=evaluation.num_grid_classes,
            energy_pointing_game_skipped=evaluation.energy_pointing_game_skipped,
        )
        if evaluation.energy_pointing_game_skipped:
            print(
                f"EPG skipped {evaluation.energy_pointing_game_skipped} images for {path}: its processor crops their "
                "boxes away."
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
    rows = [row for row in rows if row.get("method") is not None]
    games = [game for game in GAMES if any(row.get(game) is not None for row in rows)] or ["grid_pointing_game"]
    figure, axes = subplots(1, len(games), figsize=(1.8 + 1.3 * max(len(rows), 1) * len(games), 4.2), squeeze=False)
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


def plot_faithfulness(report: dict, path: Path, title: str = "Faithfulness") -> None:
    """One panel per faithfulness metric: the mean curve of each row (a model and explanation method), its mean
    score in the legend (deletion and insertion: area under the curve; ROAD: mean of the curve)."""
    faithfulness = report["faithfulness"]
    metrics = [metric for metric in FAITHFULNESS_METRICS if metric in faithfulness["fractions"]]
    figure, axes = subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.0), squeeze=False)
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


def write_report(report: dict, output_dir: str | Path) -> list[Path]:
    """``evaluation.json`` (summary rows, every score, the faithfulness curves), ``localisation.png`` (bar plot)
    and, where faithfulness was measured, ``faithfulness.png`` (its curves) in ``output_dir``; the paths written."""
    output = output_folder(output_dir)
    json_path, plot_path = output / "evaluation.json", output / "localisation.png"
    json_path.write_text(json.dumps(report, indent=2))
    title = f"Localisation on {report['dataset']} ({report['split']})"
    plot_localisation(report["rows"], report["grid_size"], plot_path, title=title)
    written = [json_path, plot_path]
    if report.get("faithfulness"):
        written.append(output / "faithfulness.png")
        plot_faithfulness(report, written[-1], title=f"Faithfulness on {report['dataset']} ({report['split']})")
    else:  # an earlier evaluation's curves would pass for this one's
        (output / "faithfulness.png").unlink(missing_ok=True)
    return written
