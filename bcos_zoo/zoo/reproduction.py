"""The B-cosification paper's central comparison in miniature, run by ``scripts/reproduce.py`` (:func:`reproduce`).

The paper's claims are that a B-cosified model (a standard model turned into a B-cos one and fine-tuned) reaches
the accuracy of a B-cos model trained from scratch several times faster, and explains itself as well as that model
does, far better than post-hoc methods explain the standard model. Checking that needs three runs of one recipe,
accuracy after every epoch, the first epoch at which one curve reaches the other's final value, and pictures; and,
since two seeds of a small model can differ by more than these effects, all of it for several seeds, every row as
mean +- standard deviation and each claim decided from the spread (:mod:`.seed_statistics`, shared with the
guidance miniature), after checking its premises (the standard source and the from-scratch baseline learned).
This module holds the run: the three recipes, reading the curves, the speed-up, the machine description (timings
mean little without it), the grid pointing game of all three models and the three figures; the rows over seeds,
premises, verdicts and the markdown report are :mod:`.reproduction_report`'s.
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
    check_packages,
    load_standard_classifier,
    posthoc_attribution,
)
from ..evaluation.localisation import bcos_attribution, bcos_classifier, predict
from ..evaluation.report import localise_model, plot_localisation
from ..families import FAMILIES, bcos_classifier_class
from ..modeling.explanation import colorize_contributions
from ..training import get_task
from ..training.recipe import recipe_record, training_differences
from ..visualize import subplots
from .finetune import (
    changed_inputs,
    earlier_run,
    finetune,
    input_digests,
    last_complete_checkpoint,
    with_run_precision,
    write_json,
)
from .recipes import Recipe, get_recipe
from .reproduction_report import (
    Curve,
    accuracy_rows,
    localisation_rows,
    markdown,
    mean_curve,
    model_names,
    premises,
    printed_premises,
    speed_up_rows,
    verdicts,
)
from .seed_statistics import mean_std


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


# beside a run: digests of the weights of the models it started from (its source, its teacher), as it started
INPUTS_RECORD = ".inputs.json"


def check_run_folder(folder: Path, recipe: Recipe, work_dir: Path | None, work_flag: str) -> None:
    """Refuse a run folder that holds a run of another recipe (``recipe`` with its precision as the run takes it:
    :func:`~bcos_zoo.zoo.finetune.with_run_precision`), or one trained from other weights of its source or teacher
    than the folder holds now (retrained since), in the terms of the script that was run."""
    stored, inputs = folder / "recipe.json", folder / INPUTS_RECORD
    if stored.is_file():
        earlier, record = json.loads(stored.read_text()), recipe_record(recipe)
        changed = training_differences(earlier, recipe, work_dir)
        if changed:
            details = ", ".join(f"{name} {earlier.get(name)!r} -> {record[name]!r}" for name in changed)
            raise ValueError(
                f"{folder} holds a run of a different recipe ({details}; see {stored}): run again with the settings "
                f"it was trained with, pass another {work_flag}, or delete {folder} to train it anew. Nothing was "
                "changed."
            )
    if inputs.is_file() and (retrained := changed_inputs(json.loads(inputs.read_text()), recipe)):
        names = " and ".join(f"its {name} {getattr(recipe, name)}" for name in retrained)
        if gone := [name for name in retrained if not Path(getattr(recipe, name)).expanduser().is_dir()]:
            raise ValueError(
                f"{folder} holds a run trained from its {gone[0]} {getattr(recipe, gone[0])}, which is no folder here "
                f"(moved?): put it back, or pass another {work_flag}."
            )
        raise ValueError(
            f"{folder} holds a run trained from other weights than {names} holds now (retrained since): delete "
            f"{folder} to train it from them, or pass another {work_flag}."
        )


def train_or_reuse(
    recipe: Recipe,
    folder: Path,
    eval_each_epoch: bool = False,
    device: str | None = None,
    work_dir: Path | None = None,
    work_flag: str = "--work-dir",
) -> dict:
    """``results.json`` of a finished run of ``recipe`` in ``folder``: trained now, resumed, or re-used as it is.

    Training the models is most of a reproduction's time, so a re-run (after a crash, or to redraw the figures)
    re-uses what is finished. A folder that holds another recipe's run, or a run from a source or teacher that was
    retrained since, is refused (naming ``work_flag``, the script's flag for the folder) rather than silently mixed
    in; the same ``work_dir`` by another path, or moved, holds the same runs (see :func:`same_place`).
    ``recipe.json`` (with this call's paths, which a resume checks) and the inputs' digests are written before
    training.
    """
    folder = Path(folder)
    recipe = with_run_precision(recipe, folder, device)
    check_run_folder(folder, recipe, work_dir, work_flag)
    results = folder / "results.json"
    if results.is_file() and (folder / "repo").is_dir():
        print(f"Re-using the finished run in {folder}")
        return json.loads(results.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "recipe.json", recipe_record(recipe))
    if not (folder / INPUTS_RECORD).is_file():
        write_json(folder / INPUTS_RECORD, input_digests(recipe))
    resume = bool(earlier_run(folder, last_complete_checkpoint(folder / "checkpoints")))
    finetune(recipe, folder, resume=resume, device=device, eval_each_epoch=eval_each_epoch)
    return json.loads(results.read_text())


def initial_accuracy(
    recipe: Recipe,
    data: DatasetSplits,
    device: str,
    cache: Path | None = None,
    work_dir: Path | None = None,
) -> float:
    """Test accuracy of the model ``finetune(recipe)`` starts from, before its first step (the curve's epoch 0).

    The seed is set as ``finetune`` sets it, so a from-scratch model is the same random initialisation. With
    ``cache`` (a JSON file), the value is kept beside the run and re-used while the recipe is unchanged (as
    :func:`train_or_reuse` compares it, in ``work_dir``).
    """
    record = recipe_record(recipe)
    try:  # a file cut off by a kill (before it was written whole) is measured again
        stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else None
    except ValueError:
        stored = None
    if stored is not None and not training_differences(stored.get("recipe", {}), recipe, work_dir):
        return float(stored["accuracy"])
    set_seed(recipe.seed)
    task = get_task(recipe)
    model = task.build_model(data.class_names)
    pairs, transform = limit(data.validation, recipe.max_eval_samples), task.eval_transform(model)
    value = predict(bcos_classifier(model.to(device).eval()), pairs, transform, recipe.batch_size, device).accuracy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, {"recipe": record, "accuracy": value})
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


def plot_accuracy_curves(
    curves: dict[str, list[Curve]],
    path: Path,
    standard_accuracies: list[float] | None = None,
    title: str = "Test accuracy per epoch",
    standard_label: str = "standard ViT",
) -> None:
    """The paper's Figure 1 in miniature, over seeds: each B-cos model's mean curve with a band of one standard
    deviation and each seed's curve as a thin line, the from-scratch model's mean final accuracy (the speed-up's
    target) as a dashed line and the standard model's mean accuracy as a dotted one."""
    figure, axis = subplots(figsize=(6.4, 4.2))
    colours = {"bcosified": "tab:red", "scratch": "tab:blue"}
    labels = {"bcosified": "B-cosified", "scratch": "B-cos from scratch"}
    for key, runs in curves.items():
        colour, merged = colours[key], mean_curve(runs)
        for curve in runs:
            axis.plot([e for e, _ in curve], [100 * a for _, a in curve], "-", color=colour, linewidth=0.8, alpha=0.35)
        epochs = [point["epoch"] for point in merged]
        means = [100 * point["mean"] for point in merged]
        stds = [100 * point["std"] for point in merged]
        axis.fill_between(
            epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], color=colour, alpha=0.2
        )
        axis.plot(epochs, means, "o-", color=colour, label=f"{labels[key]} (mean of {len(runs)}, ± std)")
    if curves.get("scratch"):
        target = mean_std([curve[-1][1] for curve in curves["scratch"]])[0]
        axis.axhline(
            100 * target,
            color="tab:blue",
            linestyle="--",
            linewidth=1,
            label=f"from-scratch final, mean ({100 * target:.1f}%)",
        )
    if standard_accuracies:
        standard = mean_std(standard_accuracies)[0]
        axis.axhline(
            100 * standard,
            color="gray",
            linestyle=":",
            linewidth=1,
            label=f"{standard_label}, mean ({100 * standard:.1f}%)",
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_explanations(
    images: torch.Tensor, titles: list[str], rows: dict[str, torch.Tensor], path: Path, percentile: float = 99.5
) -> None:
    """A grid of explanations: the images on top, then one row per method of (N, H, W) attribution maps.

    Every map is drawn alike (red positive, blue negative, clipped symmetrically at its own ``percentile`` of
    absolute values), so B-cos contributions and post-hoc attributions are compared on one footing.
    """
    columns = len(images)
    figure, axes = subplots(1 + len(rows), columns, figsize=(1.3 * columns + 1.6, 1.35 * (1 + len(rows))))
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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class ReproductionSettings:
    """What one reproduction runs; each field is a flag of ``scripts/reproduce.py`` (``--source-epochs`` ...).

    ``output_dir``, ``work_dir`` and ``methods`` left as None become the family's (:data:`REPRODUCTIONS`; the
    post-hoc methods that apply to its standard model). Each of ``seeds`` trains all three models and draws its own
    grids, in its own folder ``work_dir/seed<N>``.
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
    device: str = field(default_factory=default_device)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # torch's CPU threads; None keeps torch's choice. On a shared CPU, 1 thread can be many times faster for small
    # CNNs: threads that wait on each other across a busy machine cost far more than they share.
    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}.")
        self.seeds = [int(seed) for seed in self.seeds]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give at least one seed, each once; got {self.seeds}.")
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
        check_packages([*self.methods, self.example_method])  # before any model trains

    @property
    def names(self) -> dict[str, str]:
        return model_names(self.family)

    def seed_dir(self, seed: int) -> Path:
        """Where one seed's three models are trained: finished seeds are re-used by a later call."""
        return self.work_dir / f"seed{seed}"


def reproduction_recipes(settings: ReproductionSettings, seed: int) -> tuple[Recipe, Recipe, Recipe]:
    """The three recipes of the settings' family for one seed: the standard source, its B-cosification, and the
    same B-cos recipe from scratch, for a B-cos model of the B-cosified model's shape."""
    reproduction, label = REPRODUCTIONS[settings.family], FAMILIES[settings.family].label
    common = dict(
        dataset=settings.dataset,
        max_train_samples=settings.max_train_samples,
        max_eval_samples=settings.max_eval_samples,
        seed=seed,
    )
    standard = get_recipe(reproduction.standard_recipe).with_overrides(epochs=settings.source_epochs, **common)
    bcosified = get_recipe(reproduction.bcosified_recipe).with_overrides(
        source=str(settings.seed_dir(seed) / "standard" / "repo"), epochs=settings.epochs, **common
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


def _bcos_model(settings: ReproductionSettings, key: str, seed: int):
    folder = settings.seed_dir(seed) / key / "repo"
    return AutoModelForImageClassification.from_pretrained(folder).to(settings.device).eval()


def _standard_model(settings: ReproductionSettings, seed: int):
    return load_standard_classifier(settings.seed_dir(seed) / "standard" / "repo").to(settings.device)


def _posthoc(standard, method: str, settings: ReproductionSettings):
    options = {"steps": settings.ig_steps} if method == "integrated_gradients" else {}
    return posthoc_attribution(standard, method, **options)


def localisation(settings: ReproductionSettings, data: DatasetSplits, seed: int) -> tuple[list[dict], dict, dict]:
    """GridPG of one seed's B-cos models (own contributions) and standard model under each post-hoc method, on
    grids drawn with that seed: summary rows, every cell's score per ``model/method``, and the seconds each model
    took."""
    dataset = limit(data.validation, settings.localisation_images)
    options = dict(
        grid_size=settings.grid_size,
        num_grids=settings.num_grids,
        min_confidence=settings.min_confidence,
        device=settings.device,
        seed=seed,
    )
    evaluations, seconds = {}, {}
    for key in ("bcosified", "scratch"):
        model = _bcos_model(settings, key, seed)
        start = time.perf_counter()
        evaluations[key] = localise_model(model, {"bcos": bcos_attribution(model)}, dataset, **options)
        seconds[key] = time.perf_counter() - start
    standard = _standard_model(settings, seed)
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
                    bcos=method == "bcos",
                    num_grid_classes=evaluation.num_grid_classes,
                    **{name: value for name, value in summary.items() if not name.startswith("energy")},
                )
            )
            scores[f"{key}/{method}"] = evaluation.grid_pointing_game[method]
    return rows, scores, seconds


def explanation_grid(settings: ReproductionSettings, data: DatasetSplits, path: Path, seed: int) -> list[int]:
    """The first test image of each of ``num_examples`` classes, explained for its label by the three models of
    one seed; the images' indices. Every model sees the pixels of its own processor (the same resize for all
    three)."""
    firsts: dict[int, int] = {}
    for index in range(len(data.validation)):
        label = int(data.validation[index][1])
        firsts.setdefault(label, index)
        if len(firsts) == min(settings.num_examples, len(data.class_names)):
            break
    chosen = [firsts[label] for label in sorted(firsts)]
    standard = _standard_model(settings, seed)
    transform = model_transform(standard)
    images = torch.stack([transform(data.validation[i][0]) for i in chosen]).to(settings.device)
    labels = torch.tensor([int(data.validation[i][1]) for i in chosen], device=settings.device)
    rows = {}
    for key in ("bcosified", "scratch"):
        model = _bcos_model(settings, key, seed)
        rows[settings.names[key]] = bcos_attribution(model)(images, labels).detach()
    posthoc = _posthoc(standard, settings.example_method, settings)
    rows[f"{settings.names['standard']},\n{METHOD_NAMES[settings.example_method]}"] = posthoc(images, labels).detach()
    titles = [data.class_names[int(label)] for label in labels]
    plot_explanations(images.cpu(), titles, rows, path)
    return chosen


# -- one seed --------------------------------------------------------------------------------------------------------


def run_seed(settings: ReproductionSettings, data: DatasetSplits, seed: int, position: str = "") -> dict:
    """Train (or re-use) one seed's three models, read both B-cos curves, the speed-up and the seed's grid pointing
    game: everything the report keeps of the seed."""
    standard_recipe, bcosified_recipe, scratch_recipe = reproduction_recipes(settings, seed)
    names, folder = settings.names, settings.seed_dir(seed)
    wall: dict[str, float] = {}

    print(f"== seed {seed}{position}: 1/4 the {names['standard']}, from scratch ==")
    start = time.perf_counter()
    standard = train_or_reuse(standard_recipe, folder / "standard", device=settings.device, work_dir=settings.work_dir)
    wall[f"{names['standard']} training"] = time.perf_counter() - start
    record = dict(
        standard=dict(
            final=standard["metrics"]["accuracy"],
            train_seconds=standard["metrics"]["train_seconds"],
            recipe=recipe_record(standard_recipe),
        )
    )
    for step, (key, recipe) in enumerate((("bcosified", bcosified_recipe), ("scratch", scratch_recipe)), start=2):
        print(f"== seed {seed}{position}: {step}/4 {names[key]}: {recipe.epochs:g} epochs, evaluated after each ==")
        start = time.perf_counter()
        results = train_or_reuse(
            recipe, folder / key, eval_each_epoch=True, device=settings.device, work_dir=settings.work_dir
        )
        cache = folder / key / "initial_accuracy.json"
        initial = initial_accuracy(recipe, data, settings.device, cache=cache, work_dir=settings.work_dir)
        record[key] = dict(
            curve=accuracy_curve(results["eval_history"], initial),
            final=results["metrics"]["accuracy"],
            train_seconds=results["metrics"]["train_seconds"],
            recipe=recipe_record(recipe),
        )
        wall[f"{names[key]} training"] = time.perf_counter() - start
    result = speed_up(record["bcosified"]["curve"], record["scratch"]["curve"])

    print(f"== seed {seed}{position}: 4/4 grid pointing game ==")
    start = time.perf_counter()
    rows, scores, seconds = localisation(settings, data, seed)
    wall["grid pointing game"] = time.perf_counter() - start
    return dict(
        seed=seed,
        accuracy=record,
        speed_up=dict(asdict(result), description=result.describe()),
        localisation=dict(rows=rows, scores=scores, seconds=seconds),
        wall_seconds=wall,
    )


def reproduce(settings: ReproductionSettings, command: str) -> dict:
    """Train (or re-use) the three models for every seed, score them, decide, draw the figures; write
    ``reproduction.json`` and ``reproduction.md`` (which quotes ``command``) to ``settings.output_dir``. Returns the
    report.

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
    output = settings.output_dir
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output-dir {output} is a file; pass a folder (it is created when missing).")
    data = load_dataset_splits(settings.dataset)
    names, label = settings.names, FAMILIES[settings.family].label

    per_seed: dict[int, dict] = {}
    for index, seed in enumerate(settings.seeds, start=1):
        per_seed[seed] = run_seed(settings, data, seed, position=f" ({index}/{len(settings.seeds)})")
    wall: dict[str, float] = {}
    for run in per_seed.values():
        for name, seconds in run["wall_seconds"].items():
            wall[name] = wall.get(name, 0.0) + seconds

    accuracy = accuracy_rows(per_seed)
    speed = speed_up_rows(per_seed, settings.epochs)
    rows = localisation_rows(per_seed)
    checked = premises(accuracy, names)
    print(printed_premises(checked))
    decided = verdicts(accuracy, speed, rows, names)

    print("== figures ==")
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    count = f"mean ± std over {len(settings.seeds)} seed{'s' if len(settings.seeds) != 1 else ''}"
    plot_accuracy_curves(
        {
            key: [per_seed[seed]["accuracy"][key]["curve"] for seed in settings.seeds]
            for key in ("bcosified", "scratch")
        },
        output / "accuracy_per_epoch.png",
        standard_accuracies=accuracy["final"]["values"]["standard"],
        title=f"Fashion-MNIST test accuracy, {label}s, {settings.epochs:g} epochs each",
        standard_label=names["standard"],
    )
    plot_localisation(
        [
            dict(
                label=f"{names[row['model']]}\n{METHOD_NAMES[row['method']]}",
                method=row["method"],
                grid_pointing_game=row["mean"],
                grid_pointing_game_std=row["std"],
            )
            for row in rows
        ],
        settings.grid_size,
        output / "localisation.png",
        title=f"Fashion-MNIST grid pointing game, {label}s ({count})",
    )
    examples = explanation_grid(settings, data, output / "explanations.png", settings.seeds[0])
    wall["figures"] = time.perf_counter() - start
    wall["total"] = time.perf_counter() - started

    report = dict(
        **run_record(command, settings, load_start),
        seeds=list(settings.seeds),
        premises=checked,
        accuracy=dict(test_images=len(limit(data.validation, settings.max_eval_samples)), **accuracy),
        speed_up=speed,
        localisation=dict(
            grid_size=settings.grid_size,
            num_grids=settings.num_grids,
            min_confidence=settings.min_confidence,
            images=len(limit(data.validation, settings.localisation_images)),
            rows=rows,
        ),
        verdicts=decided,
        per_seed={str(seed): run for seed, run in per_seed.items()},
        explanation_examples=examples,
        wall_seconds=wall,
    )
    (output / "reproduction.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (output / "reproduction.md").write_text(text, encoding="utf-8")  # Windows would write its code page
    print("\n" + text)
    print(printed_premises(checked))
    print(f"Wrote {', '.join(str(output / name) for name in sorted(p.name for p in output.iterdir()))}")
    return report
