"""The B-cosification paper's central comparison in miniature, run by ``scripts/reproduce.py`` (:func:`reproduce`).

The paper's claims are that a B-cosified model (a standard model turned into a B-cos one and fine-tuned) reaches
the accuracy of a B-cos model trained from scratch several times faster, and explains itself as well as that model
does, far better than post-hoc methods explain the standard model. Checking that needs three runs of one recipe,
accuracy after every epoch, the first epoch at which one curve reaches the other's final value, and pictures.
This module holds the whole run: the three recipes, reading the curves, the speed-up, the machine description
(timings mean little without it), the grid pointing game of all three models, the three figures and the report.
One flow serves every model family that has a reproduction (:data:`REPRODUCTIONS`: a ViT pair and a ResNet pair);
a reproduction only says which recipes it starts from, what its from-scratch B-cos model is, and where its outputs
go. What the family itself is (its name in reports, the post-hoc methods of its standard model) comes from
``bcos_zoo.families``.
"""

import inspect
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, set_seed

from ..data.datasets import DatasetSplits, limit, load_dataset_splits
from ..data.preprocessing import model_transform
from ..evaluation.baselines import (
    DEFAULT_METHODS,
    METHOD_NAMES,
    POSTHOC_METHODS,
    load_standard_classifier,
    posthoc_attribution,
)
from ..evaluation.localisation import bcos_attribution
from ..evaluation.report import localise_model, plot_localisation
from ..families import FAMILIES, bcos_classifier_class
from ..modeling.explanation import colorize_contributions
from ..training import get_task
from .finetune import finetune, last_complete_checkpoint
from .recipes import Recipe, get_recipe


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


def run_record(command: str, settings, load_start: list[float]) -> dict:
    """The head of a reproduction's report: the command, the machine (load at the start and the end of the run, as
    timings mean little without it) and the settings, with paths as strings."""
    machine = machine_description()
    machine["load_average_start"], machine["load_average_end"] = load_start, machine.pop("load_average")
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(settings).items()}
    return dict(command=command, machine=machine, settings=settings)


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
    standard_label: str = "standard ViT",
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
            label=f"{standard_label} ({100 * standard_accuracy:.1f}%)",
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


def same_architecture(standard: Recipe, bcosified: Recipe) -> dict:
    """A B-cos ViT from scratch takes the standard ViT's config fields as they are."""
    return dict(standard.architecture)


def converted_architecture(standard: Recipe, bcosified: Recipe) -> dict:
    """The architecture of the model that B-cosifying ``standard``'s model with ``bcosified``'s B and bias gives.

    The conversion decides what "the same shape" is (for a ResNet with biases removed: average instead of max
    pooling after the stem, the classifier before pooling, the crop of the source's processor), so it is asked: a
    random-initialised standard model, saved as its task saves it, is B-cosified, and the B-cos config's fields are
    read back, all but B (the recipe's) and the labels (the data's).
    """
    task = get_task(standard)
    with tempfile.TemporaryDirectory() as folder:
        task.save_model(task.build_model(["a", "b", "c"]), Path(folder))
        config = (
            bcos_classifier_class(folder).from_pretrained_standard(folder, b=bcosified.b, bias=bcosified.bias).config
        )
    names = [
        name for name in inspect.signature(type(config).__init__).parameters if name not in ("self", "kwargs", "b")
    ]
    return {"model_type": config.model_type, **{name: getattr(config, name) for name in names}}


@dataclass(frozen=True)
class Reproduction:
    """One model family's reproduction: its two catalogue recipes (the standard source from scratch and its
    B-cosification), how the from-scratch B-cos model's architecture follows from them, and its folders."""

    standard_recipe: str
    bcosified_recipe: str
    scratch_architecture: Callable[[Recipe, Recipe], dict]
    output_dir: str
    work_dir: str


# The families (keys of bcos_zoo.families.FAMILIES) that have a reproduction.
REPRODUCTIONS = {
    "vit": Reproduction(
        "vit-fashion-mnist", "bcos-vit-fashion-mnist", same_architecture, "docs/reproduction", "outputs/reproduction"
    ),
    "resnet": Reproduction(
        "resnet-fashion-mnist", "bcos-resnet-fashion-mnist", converted_architecture, "docs/reproduction_cnn",
        "outputs/reproduction_cnn",
    ),
}  # fmt: skip


def model_names(family: str) -> dict[str, str]:
    """How reports name the three models of a family's reproduction."""
    return {
        "bcosified": "B-cosified",
        "scratch": "B-cos from scratch",
        "standard": f"standard {FAMILIES[family].label}",
    }


MODEL_NAMES = model_names("vit")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ReproductionSettings:
    """What one reproduction runs; each field is a flag of ``scripts/reproduce.py`` (``--source-epochs`` ...).

    ``output_dir``, ``work_dir`` and ``methods`` left as None become the family's (:data:`REPRODUCTIONS`; the
    post-hoc methods that apply to its standard model).
    """

    family: str = "vit"  # a key of REPRODUCTIONS: which pair of models is compared
    epochs: float = 4.0  # epochs of both B-cos runs
    source_epochs: float = 3.0  # epochs of the standard model
    max_train_samples: int | None = None  # train on the first N training images (quick runs)
    max_eval_samples: int | None = None  # test accuracy on the first N test images
    dataset: str = "fashion-mnist"  # 'fashion-mnist' or an image folder
    num_grids: int = 25
    grid_size: int = 2
    min_confidence: float = 0.5
    localisation_images: int = 2000  # grids are drawn from the first N test images
    methods: list[str] | None = None
    ig_steps: int = 8  # integrated gradients steps
    num_examples: int = 8  # columns of the explanation grid
    example_method: str = "integrated_gradients"  # the standard model's row of the explanation grid
    output_dir: Path | None = None
    work_dir: Path | None = None
    device: str = field(default_factory=_default_device)
    seed: int = 0
    # torch's CPU threads; None keeps torch's choice. On a shared CPU, 1 thread can be many times faster for small
    # CNNs: threads that wait on each other across a busy machine cost far more than they share.
    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")
        if self.family not in REPRODUCTIONS:
            raise ValueError(f"Unknown model family {self.family!r}; available: {', '.join(REPRODUCTIONS)}.")
        reproduction, family = REPRODUCTIONS[self.family], FAMILIES[self.family]
        self.output_dir = Path(self.output_dir if self.output_dir is not None else reproduction.output_dir)
        self.work_dir = Path(self.work_dir if self.work_dir is not None else reproduction.work_dir)
        applicable = family.posthoc_methods
        default = [method for method in applicable if method in DEFAULT_METHODS]  # Occlusion, LIME, RISE: on request
        self.methods = list(self.methods if self.methods is not None else default)
        for method in [*self.methods, self.example_method]:
            if method not in POSTHOC_METHODS:
                raise ValueError(f"Unknown post-hoc method {method!r}; available: {', '.join(POSTHOC_METHODS)}.")
            if method not in applicable:
                raise ValueError(
                    f"{METHOD_NAMES[method]} does not apply to the {family.label} family; methods for it: "
                    f"{', '.join(applicable)}."
                )

    @property
    def names(self) -> dict[str, str]:
        return model_names(self.family)


def reproduction_recipes(settings: ReproductionSettings) -> tuple[Recipe, Recipe, Recipe]:
    """The three recipes of the settings' family: the standard source, its B-cosification, and the same B-cos recipe
    from scratch, for a B-cos model of the B-cosified model's shape."""
    reproduction, label = REPRODUCTIONS[settings.family], FAMILIES[settings.family].label
    common = dict(
        dataset=settings.dataset,
        max_train_samples=settings.max_train_samples,
        max_eval_samples=settings.max_eval_samples,
        seed=settings.seed,
    )
    standard = get_recipe(reproduction.standard_recipe).with_overrides(epochs=settings.source_epochs, **common)
    bcosified = get_recipe(reproduction.bcosified_recipe).with_overrides(
        source=str(settings.work_dir / "standard" / "repo"), epochs=settings.epochs, **common
    )
    scratch = replace(
        bcosified,
        name=f"{bcosified.name}-scratch",
        hub_model_id=f"{bcosified.hub_model_id}-scratch",
        source="scratch",
        architecture=reproduction.scratch_architecture(standard, bcosified),
        summary=f"A B-cos {label} trained from scratch with the B-cosification recipe: the papers' baseline.",
    )
    return standard, bcosified, scratch


def _bcos_model(settings: ReproductionSettings, key: str):
    folder = settings.work_dir / key / "repo"
    return AutoModelForImageClassification.from_pretrained(folder).to(settings.device).eval()


def _posthoc(standard, method: str, settings: ReproductionSettings):
    options = {"steps": settings.ig_steps} if method == "integrated_gradients" else {}
    return posthoc_attribution(standard, method, **options)


def localisation(settings: ReproductionSettings, data: DatasetSplits) -> tuple[list[dict], dict, dict]:
    """GridPG of both B-cos models (own contributions) and of the standard model under each post-hoc method:
    summary rows, every cell's score per ``model/method``, and the seconds each model took."""
    dataset = limit(data.validation, settings.localisation_images)
    options = dict(
        grid_size=settings.grid_size,
        num_grids=settings.num_grids,
        min_confidence=settings.min_confidence,
        device=settings.device,
        seed=settings.seed,
    )
    evaluations, seconds = {}, {}
    for key in ("bcosified", "scratch"):
        model = _bcos_model(settings, key)
        start = time.perf_counter()
        evaluations[key] = localise_model(model, {"bcos": bcos_attribution(model)}, dataset, **options)
        seconds[key] = time.perf_counter() - start
    standard = load_standard_classifier(settings.work_dir / "standard" / "repo").to(settings.device)
    explainers = {method: _posthoc(standard, method, settings) for method in settings.methods}
    start = time.perf_counter()
    evaluations["standard"] = localise_model(standard, explainers, dataset, **options)
    seconds["standard"] = time.perf_counter() - start

    rows, scores = [], {}
    for key, evaluation in evaluations.items():
        for method in evaluation.grid_pointing_game:
            summary = evaluation.summary(method)
            rows.append(
                dict(
                    model=key,
                    method=method,
                    label=f"{settings.names[key]}\n{METHOD_NAMES[method]}",
                    bcos=method == "bcos",
                    num_grid_classes=evaluation.num_grid_classes,
                    **{name: value for name, value in summary.items() if not name.startswith("energy")},
                )
            )
            scores[f"{key}/{method}"] = evaluation.grid_pointing_game[method]
    return rows, scores, seconds


def explanation_grid(settings: ReproductionSettings, data: DatasetSplits, path: Path) -> list[int]:
    """The first test image of each of ``num_examples`` classes, explained for its label by every model; the
    images' indices. Every model sees the pixels of its own processor (the same resize for all three)."""
    firsts: dict[int, int] = {}
    for index in range(len(data.validation)):
        label = int(data.validation[index][1])
        firsts.setdefault(label, index)
        if len(firsts) == min(settings.num_examples, len(data.class_names)):
            break
    chosen = [firsts[label] for label in sorted(firsts)]
    standard = load_standard_classifier(settings.work_dir / "standard" / "repo").to(settings.device)
    transform = model_transform(standard)
    images = torch.stack([transform(data.validation[i][0]) for i in chosen]).to(settings.device)
    labels = torch.tensor([int(data.validation[i][1]) for i in chosen], device=settings.device)
    rows = {}
    for key in ("bcosified", "scratch"):
        model = _bcos_model(settings, key)
        rows[settings.names[key]] = bcos_attribution(model)(images, labels).detach()
    posthoc = _posthoc(standard, settings.example_method, settings)
    rows[f"{settings.names['standard']},\n{METHOD_NAMES[settings.example_method]}"] = posthoc(images, labels).detach()
    titles = [data.class_names[int(label)] for label in labels]
    plot_explanations(images.cpu(), titles, rows, path)
    return chosen


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _gridpg(row: dict) -> str:
    if row["grid_pointing_game"] is None:
        return "- (no grid: too few confidently classified classes)"
    return (
        f"{row['grid_pointing_game']:.3f} ± {row['grid_pointing_game_std']:.3f} (n={row['grid_pointing_game_count']})"
    )


def _loads(values: list[float] | None) -> str:
    return "unknown" if values is None else " / ".join(f"{value:.2f}" for value in values)


def markdown(report: dict) -> str:
    """``reproduction.md``: what was run, where, how long it took, and what came out."""
    acc, machine, wall = report["accuracy"], report["machine"], report["wall_seconds"]
    settings = report["settings"]
    epochs, family = settings["epochs"], settings.get("family", "vit")
    names = model_names(family)
    title = "Fashion-MNIST" if family == "vit" else f"Fashion-MNIST, {FAMILIES[family].label}s"
    lines = [
        f"# B-cosification in miniature: {title}",
        "",
        "Command:",
        "",
        "```bash",
        report["command"],
        "```",
        "",
    ]
    if settings.get("max_train_samples"):
        lines += [f"Training images: the first {settings['max_train_samples']} of the training split.", ""]
    lines += [
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch "
        f"thread{'s' if machine['torch_threads'] != 1 else ''}), "
        f"{machine['gpu'] or 'no GPU'}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}, Python {machine['python']}. Load average at the start "
        f"{_loads(machine['load_average_start'])}, at the end {_loads(machine['load_average_end'])} "
        "(the 1, 5 and 15 minute averages: above the core count means the machine was shared).",
        "",
        "Wall time: " + ", ".join(f"{name} {seconds / 60:.2f} min" for name, seconds in wall.items()) + ".",
        "",
        f"## Test accuracy ({acc['test_images']} test images)",
        "",
        "| model | training | accuracy per epoch (epoch 0 = before training) | final |",
        "|---|---|---|---|",
        f"| {names['standard']}, from scratch | {settings['source_epochs']:g} epochs | - | "
        f"{_percent(acc['standard'])} |",
    ]
    for key in ("bcosified", "scratch"):
        curve = " → ".join(f"{100 * value:.1f}" for _, value in acc[key]["curve"])
        lines.append(f"| {names[key]} | {epochs:g} epochs | {curve} | {_percent(acc[key]['final'])} |")
    lines += [
        "",
        f"Speed-up: {report['speed_up']['description']}.",
        "",
        "![accuracy per epoch](accuracy_per_epoch.png)",
        "",
        f"## Grid pointing game ({report['localisation']['grid_size']}x{report['localisation']['grid_size']} grids)",
        "",
        "| model | explanation | GridPG mean ± std (cells) |",
        "|---|---|---|",
    ]
    for row in report["localisation"]["rows"]:
        lines.append(f"| {names[row['model']]} | {METHOD_NAMES[row['method']]} | {_gridpg(row)} |")
    lines += [
        "",
        "![grid pointing game](localisation.png)",
        "",
        "## Explanations",
        "",
        "Each column: a test image, explained for its label by each model (red positive, blue negative).",
        "",
        "![explanations](explanations.png)",
        "",
    ]
    return "\n".join(lines)


def reproduce(settings: ReproductionSettings, command: str) -> dict:
    """Train (or re-use) the three models, score them, draw the figures; write ``reproduction.json`` and
    ``reproduction.md`` (which quotes ``command``) to ``settings.output_dir``. Returns the report.

    ``settings.threads`` holds for the run only; torch's thread count is restored afterwards."""
    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _reproduce(settings, command)
    finally:
        torch.set_num_threads(previous_threads)


def _reproduce(settings: ReproductionSettings, command: str) -> dict:
    load_start = machine_description()["load_average"]
    started = time.perf_counter()
    work, output = settings.work_dir, settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    data = load_dataset_splits(settings.dataset)
    standard_recipe, bcosified_recipe, scratch_recipe = reproduction_recipes(settings)
    names = settings.names
    wall: dict[str, float] = {}

    print(f"== 1/5 the {names['standard']}, from scratch ==")
    start = time.perf_counter()
    standard = train_or_reuse(standard_recipe, work / "standard", device=settings.device)
    wall[f"{names['standard']} training"] = time.perf_counter() - start

    trained = {}
    for step, (key, recipe) in enumerate((("bcosified", bcosified_recipe), ("scratch", scratch_recipe)), start=2):
        print(f"== {step}/5 {names[key]}: {recipe.epochs:g} epochs, evaluated after each ==")
        start = time.perf_counter()
        results = train_or_reuse(recipe, work / key, eval_each_epoch=True, device=settings.device)
        initial = initial_accuracy(recipe, data, settings.device, cache=work / key / "initial_accuracy.json")
        trained[key] = dict(
            curve=accuracy_curve(results["eval_history"], initial),
            final=results["metrics"]["accuracy"],
            train_seconds=results["metrics"]["train_seconds"],
            recipe=recipe_record(recipe),
        )
        wall[f"{names[key]} training"] = time.perf_counter() - start
    result = speed_up(trained["bcosified"]["curve"], trained["scratch"]["curve"])

    print("== 4/5 grid pointing game ==")
    start = time.perf_counter()
    rows, scores, localisation_seconds = localisation(settings, data)
    wall["grid pointing game"] = time.perf_counter() - start

    print("== 5/5 figures ==")
    start = time.perf_counter()
    plot_accuracy_curves(
        trained["bcosified"]["curve"],
        trained["scratch"]["curve"],
        result,
        output / "accuracy_per_epoch.png",
        standard_accuracy=standard["metrics"]["accuracy"],
        title=f"Fashion-MNIST test accuracy, {FAMILIES[settings.family].label}s, {settings.epochs:g} epochs each",
        standard_label=names["standard"],
    )
    plot_localisation(
        rows,
        settings.grid_size,
        output / "localisation.png",
        title=f"Fashion-MNIST grid pointing game, {FAMILIES[settings.family].label}s",
    )
    examples = explanation_grid(settings, data, output / "explanations.png")
    wall["figures"] = time.perf_counter() - start
    wall["total"] = time.perf_counter() - started

    report = dict(
        **run_record(command, settings, load_start),
        accuracy=dict(
            test_images=len(limit(data.validation, settings.max_eval_samples)),
            standard=standard["metrics"]["accuracy"],
            standard_train_seconds=standard["metrics"]["train_seconds"],
            standard_recipe=recipe_record(standard_recipe),
            **trained,
        ),
        speed_up=dict(asdict(result), description=result.describe()),
        localisation=dict(
            grid_size=settings.grid_size,
            num_grids=settings.num_grids,
            min_confidence=settings.min_confidence,
            images=len(limit(data.validation, settings.localisation_images)),
            seconds=localisation_seconds,
            rows=[{key: value for key, value in row.items() if key != "label"} for row in rows],
            scores=scores,
        ),
        explanation_examples=examples,
        wall_seconds=wall,
    )
    (output / "reproduction.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (output / "reproduction.md").write_text(text)
    print("\n" + text)
    print(f"Wrote {', '.join(str(output / name) for name in sorted(p.name for p in output.iterdir()))}")
    return report
