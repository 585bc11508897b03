"""Training with explanations in miniature, run by ``scripts/reproduce_guidance.py`` (:func:`reproduce_guidance`).

Two claims of the B-cos group's follow-ups, checked on Fashion-MNIST canvases with a class-coloured decoy outside
the object (:mod:`bcos_zoo.data.decoys`), evaluated on test images whose decoys are shuffled across classes:

- Model guidance (Rao et al., ICCV 2023): a localisation loss on boxes moves attribution into the box and, under a
  spurious cue, raises accuracy on the shifted test set, even with boxes for a small share of the images. Each
  guided run fine-tunes the unguided model of its seed for ``guidance_epochs`` (as the paper fine-tunes trained
  classifiers), beside a run fine-tuned as long without guidance (``none``). Measured: accuracy on shuffled and on
  class-coloured decoys, EPG and IoU of the guided attribution.
- e2KD (Parchami-Araghi et al., CVPR 2024): a teacher trained on clean canvases, distilled into a student on decoy
  data with plain KD and with e2KD, few-shot and on all training images. Measured: student accuracy, top-1 agreement
  with the teacher, explanation cosine to the teacher, EPG.

Every row is trained with each of ``seeds`` and reported as mean +- standard deviation; each claim gets a verdict
from the spread (:func:`~bcos_zoo.zoo.seed_statistics.compare`, shared with the B-cosification reproductions). The
premises of the miniature (the unguided model learnt the decoy as a shortcut; the same model learns the garments on
clean canvases) are measured and printed first.

Every run is a zoo recipe trained by ``finetune`` (:func:`~bcos_zoo.zoo.reproduction.train_or_reuse` re-uses
finished runs); this module sets the recipes up and scores the models, and
:mod:`~bcos_zoo.zoo.guidance_report` decides, draws and writes the report.
"""

import functools
import json
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification

from ..data.boxes import BoxedImages, as_is_transform, boxed_subset, collate_boxed
from ..data.datasets import FASHION_MNIST_CLASSES, limit
from ..data.decoys import DECOY_COLOURS, decoy_splits
from ..training.explanation_losses import INPUT_LAYER, attributions
from ..training.guided_classification import localisation_scores
from ..training.recipe import recipe_record
from .guidance_report import (
    LOSS_NAMES,
    METHOD_NAMES,
    epg_of,
    markdown,
    plot_metrics,
    plot_pareto,
    premises,
    printed_premises,
    verdicts,
)
from .recipes import Recipe, get_recipe
from .reproduction import default_device, machine_description, plot_explanations, run_record, train_or_reuse
from .seed_statistics import summarise


CANVAS = 36  # the canvases of the bcos-resnet-*decoys / -canvas recipes
DEFAULT_BOX_FRACTIONS = [1.0, 0.1, 0.01]
HIDDEN_LAYER = "bcos_resnet.encoder.stages.2"  # the last stage of the small B-cos ResNet: the paper's "final" layer


@dataclass(frozen=True)
class GuidanceRun:
    """One guided configuration: the localisation loss, the attribution it is applied to, where, and which boxes."""

    loss: str = "energy"
    attribution: str = "bcos"
    layer: str = INPUT_LAYER  # "input" or "hidden" (the settings' hidden layer)
    box_fraction: float = 1.0
    dilation: float = 0.0

    @property
    def name(self) -> str:
        where = "input" if self.layer == INPUT_LAYER else "final layer"
        name = f"{LOSS_NAMES[self.loss]}, {METHOD_NAMES[self.attribution]} at the {where}"
        name += f", {100 * self.box_fraction:g}% boxes"  # 0.5% is not 0% (nor 1%, the name of another run)
        return name + (f", dilated {100 * self.dilation:g}%" if self.dilation else "")

    @property
    def folder(self) -> str:
        parts = [self.loss, self.attribution, "input" if self.layer == INPUT_LAYER else "hidden"]
        parts += [f"boxes{self.box_fraction:g}"] + ([f"dilation{self.dilation:g}"] if self.dilation else [])
        return "-".join(parts)


def default_grid(box_fractions: list[float]) -> list[GuidanceRun]:
    """The default runs: the energy loss on B-cos attributions at the input, for each share of boxed images."""
    return [GuidanceRun(box_fraction=fraction) for fraction in box_fractions]


def full_grid() -> list[GuidanceRun]:
    """The model guidance paper's grid in miniature: every loss on B-cos, IxG and GradCAM attributions at the input
    and at the final layer (GradCAM only there) with all boxes; every loss on B-cos at the input with 10% and 1% of
    the boxes and with boxes dilated by 10%, 25% and 50%."""
    places = [("bcos", "input"), ("bcos", "hidden"), ("ixg", "input"), ("ixg", "hidden"), ("gradcam", "hidden")]
    grid = [GuidanceRun(loss, method, layer) for loss in LOSS_NAMES for method, layer in places]
    grid += [GuidanceRun(loss, box_fraction=fraction) for loss in LOSS_NAMES for fraction in (0.1, 0.01)]
    grid += [GuidanceRun(loss, dilation=dilation) for loss in LOSS_NAMES for dilation in (0.1, 0.25, 0.5)]
    return grid


def _setting(help: str, default=MISSING, factory=MISSING):
    """A GuidanceSettings field and its flag's help."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class GuidanceSettings:
    """What one run of the miniature trains and measures; each field is a flag of ``scripts/reproduce_guidance.py``."""

    seeds: list[int] = _setting("seeds of every run", factory=lambda: [0, 1, 2])
    grid: str = "default"  # "default" (energy loss, B-cos at the input, box_fractions) or "full" (full_grid())
    train_samples: int = _setting("the first N decoy (or clean) training images", 60_000)
    eval_samples: int = _setting("the first N test images", 2_000)
    base_epochs: float = _setting("epochs of the unguided model and the clean-canvas model (e2KD's teacher)", 4.0)
    guidance_epochs: float = _setting("epochs of guided fine-tuning (and of the unguided fine-tuning beside it)", 1.0)
    student_epochs: float = _setting("epochs of the e2KD and KD students, from scratch on all images", 1.0)
    few_shot_per_class: int = _setting("few-shot students train on the first 10 x N images", 50)
    few_shot_epochs: float = _setting("epochs of the few-shot students", 30.0)
    energy_weight: float = _setting("lambda of the energy loss (summed over a batch's boxed images)", 0.05)
    l1_weight: float = _setting("lambda of the L1 loss", 0.05)
    rrr_weight: float = _setting("lambda of the RRR loss", 0.001)
    ppce_weight: float = _setting("lambda of the PPCE loss", 0.005)
    box_fractions: list[float] = _setting(
        "shares of boxed images of the default runs", factory=lambda: list(DEFAULT_BOX_FRACTIONS)
    )
    hidden_layer: str = _setting("the hidden layer of the whole grid (--full)", HIDDEN_LAYER)
    explanation_weight: float = _setting("lambda_exp of e2KD", 1.0)
    kd_temperature: float = _setting("e2KD's and KD's temperature", 1.0)
    num_examples: int = _setting("images in the example figures", 6)
    output_dir: Path = _setting("where guidance.json, report.md and the figures go", Path("docs/guidance"))
    work_dir: Path = _setting(
        "where the runs train (re-used while their recipes are unchanged)", Path("outputs/guidance")
    )
    device: str = _setting("cpu or cuda, cuda where there is one", factory=default_device)

    def __post_init__(self):
        self.output_dir, self.work_dir = Path(self.output_dir), Path(self.work_dir)
        self.seeds = [int(seed) for seed in self.seeds]
        if any(not 0 < fraction <= 1 for fraction in self.box_fractions):
            raise ValueError(f"box fractions must lie in (0, 1], got {self.box_fractions}")
        folders = [GuidanceRun(box_fraction=fraction).folder for fraction in self.box_fractions]
        if len(set(folders)) != len(folders):  # one run each, by the name its folder and row take
            raise ValueError(f"give each box fraction once; got {self.box_fractions}")
        if self.grid not in ("default", "full"):
            raise ValueError(f"grid must be 'default' or 'full', got {self.grid!r}")
        if self.grid == "default" and self.hidden_layer != HIDDEN_LAYER:  # a setting no run would read
            raise ValueError("--hidden-layer is the whole grid's (--full): the default runs guide at the input")
        if self.grid == "full" and self.box_fractions != DEFAULT_BOX_FRACTIONS:
            raise ValueError(
                "--box-fractions are the default runs': the whole grid (--full) has its own (1, 0.1, 0.01)"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give at least one seed, each once; got {self.seeds}.")

    @classmethod
    def quick(cls, **overrides) -> "GuidanceSettings":
        """A smoke run in a minute or two on a CPU: every step of the default run at toy size, two seeds."""
        toy = dict(
            seeds=[0, 1],
            train_samples=192,
            eval_samples=48,
            base_epochs=1.0,
            guidance_epochs=1.0,  # two steps: the first, in warm-up, has a learning rate of 0
            student_epochs=0.5,
            few_shot_per_class=2,
            few_shot_epochs=1.0,
            box_fractions=[1.0, 0.1],
            num_examples=2,
            work_dir=Path("outputs/guidance-quick"),
            output_dir=Path("outputs/guidance-quick/report"),
        )
        return cls(**{**toy, **overrides})

    def runs(self) -> list[GuidanceRun]:
        return full_grid() if self.grid == "full" else default_grid(self.box_fractions)

    def weight(self, loss: str) -> float:
        return getattr(self, f"{loss}_weight")


# -- recipes ---------------------------------------------------------------------------------------------------------


def base_recipes(settings: GuidanceSettings, seed: int) -> dict[str, Recipe]:
    """The unguided model on decoy canvases and the same model on clean canvases (the premise and the teacher)."""
    common = dict(
        epochs=settings.base_epochs,
        max_train_samples=settings.train_samples,
        max_eval_samples=settings.eval_samples,
        seed=seed,
    )
    return {
        "unguided": get_recipe("bcos-resnet-decoys").with_overrides(**common),
        "clean": get_recipe("bcos-resnet-canvas").with_overrides(**common),
    }


def guidance_recipes(settings: GuidanceSettings, seed: int) -> dict[str, tuple[Recipe, GuidanceRun | None]]:
    """``none`` (the unguided model fine-tuned as long, lambda 0) and one recipe per guided configuration."""
    base = get_recipe("bcos-resnet-guided-decoys").with_overrides(
        source=str(settings.work_dir / f"seed{seed}" / "unguided" / "repo"),
        epochs=settings.guidance_epochs,
        max_train_samples=settings.train_samples,
        max_eval_samples=settings.eval_samples,
        seed=seed,
    )
    recipes = {"none": (base.with_overrides(name="bcos-resnet-decoys-finetuned", guidance_weight=0.0), None)}
    for run in settings.runs():
        recipes[run.name] = (
            base.with_overrides(
                name=f"bcos-resnet-guided-decoys-{run.folder}",
                guidance_loss=run.loss,
                attribution=run.attribution,
                guidance_layer=INPUT_LAYER if run.layer == INPUT_LAYER else settings.hidden_layer,
                guidance_weight=settings.weight(run.loss),
                box_fraction=run.box_fraction,
                box_dilation=run.dilation,
            ),
            run,
        )
    return recipes


def student_recipes(settings: GuidanceSettings, seed: int) -> dict[str, Recipe]:
    """The four students: KD and e2KD, few-shot and on all training images, each taught by the seed's teacher."""
    base = get_recipe("bcos-resnet-e2kd-decoys").with_overrides(
        teacher=str(settings.work_dir / f"seed{seed}" / "clean" / "repo"),
        max_eval_samples=settings.eval_samples,
        kd_temperature=settings.kd_temperature,
        seed=seed,
    )
    students = {}
    sizes = (
        ("few-shot", settings.few_shot_per_class * 10, settings.few_shot_epochs),
        ("full", settings.train_samples, settings.student_epochs),
    )
    for size, samples, epochs in sizes:
        for method, weight in (("KD", 0.0), ("e2KD", settings.explanation_weight)):
            students[f"{method}, {size}"] = base.with_overrides(
                name=f"bcos-resnet-{method.lower()}-decoys-{size}",
                explanation_weight=weight,
                max_train_samples=samples,
                epochs=epochs,
            )
    return students


SeedRecipes = tuple[dict[str, Recipe], dict[str, tuple[Recipe, GuidanceRun | None]], dict[str, Recipe]]


def planned_recipes(settings: GuidanceSettings) -> dict[int, SeedRecipes]:
    """Every seed's recipes (base models, guided runs, students), made before anything trains: a setting no recipe
    accepts is refused at once, not when its stage is reached after the training before it."""
    return {
        seed: (base_recipes(settings, seed), guidance_recipes(settings, seed), student_recipes(settings, seed))
        for seed in settings.seeds
    }


# -- scores ----------------------------------------------------------------------------------------------------------


def _load(folder: Path, device: str):
    return AutoModelForImageClassification.from_pretrained(folder).to(device).eval()


@functools.cache
def _test_split():
    return decoy_splits(CANVAS).validation


def test_images(mode: str | None, count: int) -> BoxedImages:
    """The first ``count`` test canvases with ``shuffled`` decoys (what every run is evaluated on), ``class``
    decoys (as in training) or none (clean), as boxed tensors: the same garments, placements and decoy squares."""
    return BoxedImages(limit(_test_split().with_decoys(mode), count), as_is_transform)


@torch.no_grad()
def accuracy_on(folder: Path, mode: str | None, settings: GuidanceSettings) -> float:
    """Top-1 accuracy of a saved model on the first ``eval_samples`` test canvases of a decoy mode."""
    model = _load(folder, settings.device)
    correct = 0
    dataset = test_images(mode, settings.eval_samples)
    for batch in DataLoader(dataset, batch_size=256, collate_fn=collate_boxed):
        logits = model(pixel_values=batch["pixel_values"].to(settings.device)).logits
        correct += int((logits.argmax(dim=1).cpu() == batch["labels"]).sum())
    return correct / len(dataset)


def base_scores(folder: Path, settings: GuidanceSettings) -> dict[str, float]:
    """Accuracy on class-coloured, shuffled and no decoys: what the premises are about."""
    modes = {"class_accuracy": "class", "accuracy": "shuffled", "clean_accuracy": None}
    return {key: accuracy_on(folder, mode, settings) for key, mode in modes.items()}


@functools.cache
def _decoy_squares(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) masks of the decoy squares of the first ``count`` shuffled-decoy test canvases (the pixels that
    differ from the clean canvas) and (N,) the class whose colour each square has."""
    shuffled, clean = _test_split(), _test_split().with_decoys(None)
    masks, classes = [], []
    for index in range(count):
        picture, clean_picture = shuffled.render(index)[0], clean.render(index)[0]
        square = (picture != clean_picture).any(axis=2)
        colour = tuple(int(c) for c in picture[square][0])
        masks.append(torch.from_numpy(square))
        classes.append(DECOY_COLOURS.index(colour))
    return torch.stack(masks), torch.tensor(classes)


def decoy_evidence(folder: Path, settings: GuidanceSettings) -> dict[str, float]:
    """Where the shortcut acts, from the exact B-cos contributions on the shuffled-decoy test canvases: the mean
    contribution of the decoy square to the logit of the label and to the logit of the class whose colour it has.
    A model that reads the square as evidence *for* its colour's class has a large second number; one that reads it
    as evidence *against* the other classes has a negative first number (guidance on the label's explanation alone
    cannot see the second way)."""
    model = _load(folder, settings.device)
    dataset = test_images("shuffled", settings.eval_samples)
    squares, decoy_classes = _decoy_squares(len(dataset))
    sums = {"decoy_to_label": 0.0, "decoy_to_decoy_class": 0.0}
    start = 0
    for batch in DataLoader(dataset, batch_size=256, collate_fn=collate_boxed):
        pixels = batch["pixel_values"].to(settings.device)
        square = squares[start : start + len(pixels)].to(settings.device)
        targets = {
            "decoy_to_label": batch["labels"],
            "decoy_to_decoy_class": decoy_classes[start : start + len(pixels)],
        }
        for key, target in targets.items():
            contributions = attributions(model, pixels, target.to(settings.device), "bcos", create_graph=False)
            sums[key] += float((contributions * square).sum())
        start += len(pixels)
    return {key: value / len(dataset) for key, value in sums.items()}


def unguided_epg(folder: Path, settings: GuidanceSettings) -> dict[str, float]:
    """The unguided model's EPG under every other attribution and place than B-cos at the input that a guided run
    trains (IxG, GradCAM, the final layer), keyed by :func:`epg_of`: each guided run's EPG is compared with its own
    attribution of the unguided model, whose attributions localise differently."""
    pairs = sorted({(run.attribution, run.layer) for run in settings.runs()} - {("bcos", INPUT_LAYER)})
    if not pairs:
        return {}
    model, dataset = _load(folder, settings.device), test_images("shuffled", settings.eval_samples)
    return {
        epg_of({"attribution": method, "layer": layer}): localisation_scores(
            model, dataset, 256, INPUT_LAYER if layer == INPUT_LAYER else settings.hidden_layer, method
        )["epg"]
        for method, layer in pairs
    }


def explanation_examples(folders: dict[str, Path], settings: GuidanceSettings, path: Path) -> list[int]:
    """The first shuffled-decoy test image of each of ``num_examples`` classes, explained for its label by every
    model (its own contributions at the input)."""
    test = test_images("shuffled", len(_test_split()))
    firsts: dict[int, int] = {}
    for index in range(len(test)):
        firsts.setdefault(int(test[index]["labels"]), index)
        if len(firsts) == settings.num_examples:
            break
    chosen = [firsts[label] for label in sorted(firsts)]
    pixels = torch.stack([test[i]["pixel_values"] for i in chosen]).to(settings.device)
    labels = torch.tensor([test[i]["labels"] for i in chosen], device=settings.device)
    rows = {}
    for name, folder in folders.items():
        model = _load(folder, settings.device)
        rows[name] = attributions(model, pixels, labels, "bcos", INPUT_LAYER, create_graph=False).cpu()
    plot_explanations(pixels.cpu(), [FASHION_MNIST_CLASSES[int(label)] for label in labels], rows, path)
    return chosen


def drawn_in_examples(run: GuidanceRun | None) -> bool:
    """Whether the explanation figure shows a guided run: every run of the default grid; of the full one, ``none``,
    each loss on B-cos attributions at the input with every box, and the energy loss with fewer boxes."""
    if run is None:
        return True
    at_input = run.attribution == "bcos" and run.layer == INPUT_LAYER and not run.dilation
    return at_input and (run.loss == "energy" or run.box_fraction == 1.0)


def reproduce_guidance(settings: GuidanceSettings, command: str) -> dict:
    """Train (or re-use) every run for every seed, score, decide, draw; write ``guidance.json`` and ``report.md``."""
    plan = planned_recipes(settings)
    load_start = machine_description()["load_average"]
    started = time.perf_counter()
    work, output = settings.work_dir, settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    training: dict[str, float] = {}  # the runs' own training times, which a call that re-uses them did not spend

    def timed(name: str, seconds: float) -> None:
        wall[name] = wall.get(name, 0.0) + seconds

    def trained(name: str, results: dict) -> dict:
        """A run's metrics, its training time (as it ran, whether now or in an earlier call) counted to ``name``."""
        training[name] = training.get(name, 0.0) + results["metrics"].get("train_seconds", 0.0)
        return results["metrics"]

    base_rows: dict[str, dict[int, dict]] = {"unguided": {}, "clean": {}}
    guided_rows: dict[str, dict[int, dict]] = {}
    runs: dict[str, GuidanceRun | None] = {}
    student_rows: dict[str, dict[int, dict]] = {}
    examples: dict[str, Path] = {}
    for seed, (bases, guided, students) in plan.items():
        folder = work / f"seed{seed}"
        for name, recipe in bases.items():
            print(f"== seed {seed}: the {name} model ==")
            start = time.perf_counter()
            trained(f"{name} models", train_or_reuse(recipe, folder / name, device=settings.device, work_dir=work))
            base_rows[name][seed] = base_scores(folder / name / "repo", settings)
            base_rows[name][seed].update(decoy_evidence(folder / name / "repo", settings))
            timed(f"{name} models", time.perf_counter() - start)
        examples.setdefault("clean (teacher)", folder / "clean" / "repo")
        examples.setdefault("unguided", folder / "unguided" / "repo")
        for name, (recipe, run) in guided.items():
            print(f"== seed {seed}: guidance {name} ==")
            part = "guided fine-tuning" if run else "unguided fine-tuning"
            start = time.perf_counter()
            place = folder / "guided" / (run.folder if run else "none")
            metrics = dict(trained(part, train_or_reuse(recipe, place, device=settings.device, work_dir=work)))
            metrics["class_accuracy"] = accuracy_on(place / "repo", "class", settings)
            metrics["clean_accuracy"] = accuracy_on(place / "repo", None, settings)
            metrics.update(decoy_evidence(place / "repo", settings))
            if run is None:
                metrics.update(unguided_epg(place / "repo", settings))
            metrics["boxed_training_images"] = (
                len(boxed_subset(min(settings.train_samples, 60_000), run.box_fraction)) if run else 0
            )
            guided_rows.setdefault(name, {})[seed] = metrics
            runs[name] = run
            if drawn_in_examples(run):
                examples.setdefault(f"guided: {name}", place / "repo")
            timed(part, time.perf_counter() - start)
        for name, recipe in students.items():
            print(f"== seed {seed}: student {name} ==")
            start = time.perf_counter()
            place = folder / "students" / name.replace(", ", "-")
            student_rows.setdefault(name, {})[seed] = trained(
                "students", train_or_reuse(recipe, place, device=settings.device, work_dir=work)
            )
            examples.setdefault(f"student: {name}", place / "repo")
            timed("students", time.perf_counter() - start)

    base = {name: summarise(rows) for name, rows in base_rows.items()}
    guidance = {name: summarise(rows) for name, rows in guided_rows.items()}
    for name, summary in guidance.items():
        summary["run"] = asdict(runs[name]) if runs[name] else None
        summary["recipe"] = recipe_record(plan[settings.seeds[0]][1][name][0])
    distillation = {name: summarise(rows) for name, rows in student_rows.items()}
    checked = premises(base["unguided"], base["clean"])
    print(printed_premises(checked))

    print("== figures ==")
    start = time.perf_counter()
    plot_metrics(
        guidance,
        {"accuracy": "accuracy, shuffled decoys", "class_accuracy": "accuracy, class decoys", "epg": "EPG",
         "iou": "IoU"},
        output / "guidance.png",
        f"Model guidance on Fashion-MNIST with decoys (mean ± std over {len(settings.seeds)} seeds)",
    )  # fmt: skip
    plot_pareto(guidance, output / "pareto.png")
    plot_metrics(
        distillation,
        {"accuracy": "accuracy, shuffled decoys", "agreement": "agreement", "explanation_cosine": "explanation cosine",
         "epg": "EPG"},
        output / "e2kd.png",
        f"KD vs e2KD on decoy canvases (mean ± std over {len(settings.seeds)} seeds)",
    )  # fmt: skip
    chosen = explanation_examples(examples, settings, output / "explanations.png")
    timed("figures", time.perf_counter() - start)
    wall["total"] = time.perf_counter() - started

    decided = verdicts(guidance, distillation)
    report = dict(
        **run_record(command, settings, load_start),
        decoy_size=decoy_splits(CANVAS).train.decoy_size,
        premises=checked,
        base=base,
        guidance=guidance,
        teacher=base["clean"],
        distillation=distillation,
        verdicts=decided,
        explanation_examples=chosen,
        wall_seconds=wall,
        training_seconds=training,
    )
    (output / "guidance.json").write_text(json.dumps(report, indent=2, default=str))
    text = markdown(report)
    (output / "report.md").write_text(text, encoding="utf-8")  # Windows would write its code page
    print("\n" + text)
    print(printed_premises(checked))
    return report
