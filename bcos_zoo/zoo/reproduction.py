"""The B-cosification paper's central comparison in miniature: pieces for ``scripts/reproduce.py``.

The paper's claims are that a B-cosified model (a standard model turned into a B-cos one and fine-tuned) reaches
the accuracy of a B-cos model trained from scratch several times faster, and explains itself as well as that model
does, far better than post-hoc methods explain the standard model. Checking that needs three runs of one recipe,
accuracy after every epoch, the first epoch at which one curve reaches the other's final value, and pictures.
This module holds what is not specific to one dataset: reading the curves, the speed-up, the machine description
(timings mean little without it) and the three figures.
"""

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import set_seed

from ..data.datasets import DatasetSplits, limit
from ..modeling.explanation import colorize_contributions
from ..training import get_task
from .finetune import finetune, last_complete_checkpoint
from .recipes import Recipe


Curve = list[tuple[float, float]]
"""``[(epoch, test accuracy), ...]`` in increasing epochs; epoch 0 is the model before any training."""


def accuracy_curve(eval_history: list[dict], initial: float | None = None) -> Curve:
    """The ``(epoch, eval_accuracy)`` points of a Trainer's log (``results.json``'s ``eval_history``).

    ``initial`` is the accuracy before training and becomes the point at epoch 0: a B-cosified model does not start
    at chance, and that head start is part of the comparison.
    """
    points = [
        (float(entry["epoch"]), float(entry["eval_accuracy"])) for entry in eval_history if "eval_accuracy" in entry
    ]
    if initial is not None:
        points.append((0.0, float(initial)))
    return sorted(points)


def epochs_to_reach(curve: Curve, target: float) -> float | None:
    """The first evaluated epoch whose accuracy is at least ``target``; None if the curve never gets there.

    Accuracy is only known at evaluated epochs, so the true crossing lies between this epoch and the one before.
    """
    return next((epoch for epoch, value in curve if value >= target), None)


@dataclass(frozen=True)
class SpeedUp:
    """How many times fewer epochs the B-cosified run needed to reach the from-scratch run's final accuracy."""

    target_accuracy: float  # the from-scratch B-cos model's final accuracy
    scratch_epochs: float | None  # first epoch the from-scratch run reached it (at most its last epoch)
    bcosified_epochs: float | None  # first epoch the B-cosified run reached it; None: never
    speed_up: float | None  # scratch_epochs / bcosified_epochs; None when not reached (or reached before training)
    lower_bound: bool  # True when reached at the first evaluation after training started: it may be faster still

    def describe(self) -> str:
        """One sentence for tables and logs, hedged the way the numbers require."""
        if self.bcosified_epochs is None:
            return f"the B-cosified model never reached {100 * self.target_accuracy:.2f}%"
        if self.speed_up is None:
            return f"the B-cosified model was at {100 * self.target_accuracy:.2f}% before fine-tuning"
        bound = ">= " if self.lower_bound else ""
        return (
            f"{bound}{self.speed_up:.1f}x fewer epochs ({self.bcosified_epochs:g} vs {self.scratch_epochs:g}) "
            f"to reach {100 * self.target_accuracy:.2f}%"
        )


def speed_up(bcosified: Curve, scratch: Curve) -> SpeedUp:
    """Compare the curves as the paper does: epochs to reach the from-scratch model's final accuracy.

    The from-scratch run is credited with the first epoch it reached its own final value (not necessarily its
    last), so a plateau does not inflate the speed-up.
    """
    if not scratch:
        raise ValueError("the from-scratch curve is empty: it needs at least one evaluated epoch")
    target = scratch[-1][1]
    scratch_epochs = epochs_to_reach(scratch, target)
    bcosified_epochs = epochs_to_reach(bcosified, target)
    ratio = scratch_epochs / bcosified_epochs if bcosified_epochs else None
    trained = [epoch for epoch, _ in bcosified if epoch > 0]
    lower_bound = bool(trained) and bcosified_epochs == trained[0]
    return SpeedUp(target, scratch_epochs, bcosified_epochs, ratio, lower_bound)


def recipe_record(recipe: Recipe) -> dict:
    """A recipe as plain JSON values (tuples become lists), so a stored copy compares equal to a fresh one."""
    return json.loads(json.dumps(asdict(recipe), default=str))


def train_or_reuse(recipe: Recipe, folder: Path, eval_each_epoch: bool = False, device: str | None = None) -> dict:
    """``results.json`` of a finished run of ``recipe`` in ``folder``: trained now, resumed, or re-used as it is.

    Training the three models is most of the reproduction's time, so a re-run (after a crash, or to redraw the
    figures) re-uses what is finished. ``recipe.json`` is written before training, and a folder that holds another
    recipe's run is refused rather than silently mixed in.
    """
    folder = Path(folder)
    stored = folder / "recipe.json"
    record = recipe_record(recipe)
    if stored.is_file() and json.loads(stored.read_text()) != record:
        raise ValueError(
            f"{folder} holds a run of a different recipe (see {stored}); delete the folder or choose another "
            "--work-dir."
        )
    results = folder / "results.json"
    if results.is_file() and (folder / "repo").is_dir():
        print(f"Re-using the finished run in {folder}")
        return json.loads(results.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(record, indent=2))
    resume = last_complete_checkpoint(folder / "checkpoints") is not None
    finetune(recipe, folder, resume=resume, device=device, eval_each_epoch=eval_each_epoch)
    return json.loads(results.read_text())


def initial_accuracy(
    recipe: Recipe, data: DatasetSplits, device: str | None = None, cache: Path | None = None
) -> float:
    """Test accuracy of the model ``finetune(recipe)`` starts from, before its first step (the curve's epoch 0).

    The seed is set as ``finetune`` sets it, so a from-scratch model is the same random initialisation. With
    ``cache`` (a JSON file), the value is kept beside the run and re-used while the recipe is unchanged.
    """
    record = recipe_record(recipe)
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("recipe") == record:
            return float(stored["accuracy"])
    set_seed(recipe.seed)
    task = get_task(recipe)
    model = task.build_model(data.class_names)
    from ..evaluation.localisation import bcos_classifier, predict

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pairs, transform = limit(data.validation, recipe.max_eval_samples), task.eval_transform(model)
    value = predict(bcos_classifier(model.to(device).eval()), pairs, transform, recipe.batch_size, device).accuracy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"recipe": record, "accuracy": value}, indent=2))
    return value


def machine_description() -> dict:
    """What the timings were measured on: CPU model, cores, load, library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        cpu=cpu,
        cores=cores,
        torch_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        platform=platform.platform(),
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_curves(
    bcosified: Curve,
    scratch: Curve,
    result: SpeedUp,
    path: Path,
    standard_accuracy: float | None = None,
    title: str = "Test accuracy per epoch",
) -> None:
    """The paper's Figure 1 in miniature: both B-cos curves, the from-scratch final accuracy as a dashed line and
    a marker where the B-cosified curve first reaches it (the standard source's accuracy dotted, for scale)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for curve, label, colour in ((bcosified, "B-cosified", "tab:red"), (scratch, "B-cos from scratch", "tab:blue")):
        axis.plot([e for e, _ in curve], [100 * a for _, a in curve], "o-", color=colour, label=label)
    axis.axhline(
        100 * result.target_accuracy,
        color="tab:blue",
        linestyle="--",
        linewidth=1,
        label=f"from-scratch final ({100 * result.target_accuracy:.1f}%)",
    )
    if standard_accuracy is not None:
        axis.axhline(
            100 * standard_accuracy,
            color="gray",
            linestyle=":",
            linewidth=1,
            label=f"standard ViT ({100 * standard_accuracy:.1f}%)",
        )
    if result.bcosified_epochs is not None:
        reached = dict(bcosified)[result.bcosified_epochs]
        axis.plot(
            [result.bcosified_epochs],
            [100 * reached],
            marker="*",
            markersize=16,
            color="gold",
            markeredgecolor="black",
            linestyle="none",
            label=f"B-cosified reaches it at epoch {result.bcosified_epochs:g}"
            + (f" ({'>= ' if result.lower_bound else ''}{result.speed_up:.1f}x sooner)" if result.speed_up else ""),
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_localisation(rows: list[dict], grid_size: int, path: Path, title: str = "Grid pointing game") -> None:
    """GridPG per model and explanation (mean, standard deviation as error bar); B-cos red, post-hoc gray.

    ``rows`` hold ``label``, ``bcos`` (bool) and ``grid_pointing_game`` / ``grid_pointing_game_std`` (None where
    no grid could be drawn, shown as n/a).
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.8 + 1.2 * len(rows), 4.2))
    means = [row["grid_pointing_game"] or 0.0 for row in rows]
    errors = [row["grid_pointing_game_std"] or 0.0 for row in rows]
    colours = ["tab:red" if row["bcos"] else "tab:gray" for row in rows]
    bars = axis.bar(range(len(rows)), means, yerr=errors, color=colours, capsize=3)
    labels = [f"{m:.2f}" if row["grid_pointing_game"] is not None else "n/a" for m, row in zip(means, rows)]
    axis.bar_label(bars, labels=labels, label_type="center", color="white")
    chance = 1 / grid_size**2
    axis.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"uniform map ({chance:.2f})")
    axis.set_xticks(range(len(rows)), [row["label"] for row in rows], fontsize="small")
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("positive attribution in the right cell")
    axis.set_title(f"{title} ({grid_size}x{grid_size} grids)")
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_explanations(
    images: torch.Tensor, titles: list[str], rows: dict[str, torch.Tensor], path: Path, percentile: float = 99.5
) -> None:
    """A grid of explanations: the images on top, then one row per method of (N, H, W) attribution maps.

    Every map is drawn alike (red positive, blue negative, clipped symmetrically at its own ``percentile`` of
    absolute values), so B-cos contributions and post-hoc attributions are compared on one footing.
    """
    plt = _pyplot()
    columns = len(images)
    figure, axes = plt.subplots(1 + len(rows), columns, figsize=(1.3 * columns + 1.6, 1.35 * (1 + len(rows))))
    axes = axes.reshape(1 + len(rows), columns)
    pictures = [images.permute(0, 2, 3, 1).clamp(0, 1)]
    pictures += [colorize_contributions(maps.detach().float().cpu(), percentile) for maps in rows.values()]
    names = ["input", *rows]
    for r, (name, picture) in enumerate(zip(names, pictures)):
        for c in range(columns):
            axis = axes[r, c]
            axis.imshow(picture[c].cpu().numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(titles[c], fontsize="small")
            if c == 0:
                axis.set_ylabel(name, fontsize="small", rotation=0, ha="right", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
