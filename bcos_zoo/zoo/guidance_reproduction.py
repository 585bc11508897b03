"""Training with explanations in miniature, run by ``scripts/reproduce_guidance.py`` (:func:`reproduce_guidance`).

Two claims of the B-cos group's follow-ups, checked on Fashion-MNIST canvases with a class-coloured decoy outside
the object (:mod:`bcos_zoo.data.decoys`), evaluated on test images whose decoys are shuffled across classes:

- Model guidance (Rao et al., 2023): the energy loss on boxes moves attribution into the box and, under a spurious
  cue, raises accuracy on the shifted test set, even with boxes for a small share of the images. Runs: no guidance,
  then guidance with every box and with ``box_fractions`` of them. Measured: accuracy (shuffled and, for reference,
  class-correlated decoys), EPG and IoU.
- e2KD (Parchami-Araghi et al., 2024): a teacher trained on clean canvases, distilled into a smaller student on
  decoy data with plain KD and with e2KD, few-shot and on all training images. Measured: student accuracy, top-1
  agreement with the teacher, explanation cosine to the teacher, EPG.

Every run is a zoo recipe trained by ``finetune`` (:func:`~bcos_zoo.zoo.reproduction.train_or_reuse` re-uses
finished runs); this module sets the recipes up, scores, draws and writes the report.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

from ..data.boxes import BoxedImages, boxed_subset
from ..data.datasets import FASHION_MNIST_CLASSES, limit
from ..data.decoys import DecoyImages, decoy_splits
from ..training.guided_classification import localisation_scores, processor_box_transform
from .recipes import Recipe, get_recipe
from .reproduction import _pyplot, machine_description, plot_explanations, recipe_record, run_record, train_or_reuse


CANVAS = 48  # the canvases of the recipes bcos-vit-guided-decoys and bcos-vit-e2kd-decoys


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class GuidanceSettings:
    """What one run of the miniature trains and measures; each field is a flag of ``scripts/reproduce_guidance.py``."""

    train_samples: int = 2000  # the first N decoy training images (all runs but the few-shot students)
    eval_samples: int = 500  # the first N test images
    epochs: float = 2.0  # guided models and full-data students
    teacher_epochs: float = 3.0
    few_shot_per_class: int = 50  # few-shot students train on the first 10 x N images
    few_shot_epochs: float = 8.0  # about as many steps as a full-data student
    guidance_weight: float = 0.01  # lambda of the energy loss
    guidance_layer: str = "input"
    box_fractions: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.01])
    explanation_weight: float = 1.0  # lambda_exp of e2KD
    kd_temperature: float = 1.0
    num_examples: int = 6
    output_dir: Path = Path("docs/guidance")
    work_dir: Path = Path("outputs/guidance")
    device: str = field(default_factory=_default_device)
    seed: int = 0

    def __post_init__(self):
        self.output_dir, self.work_dir = Path(self.output_dir), Path(self.work_dir)
        if any(not 0 < fraction <= 1 for fraction in self.box_fractions):
            raise ValueError(f"box fractions must lie in (0, 1], got {self.box_fractions}")


def guidance_recipes(settings: GuidanceSettings) -> dict[str, Recipe]:
    """``none`` (lambda 0: plain BCE on the same data and pipeline) and one guided recipe per box fraction."""
    base = get_recipe("bcos-vit-guided-decoys").with_overrides(
        epochs=settings.epochs,
        max_train_samples=settings.train_samples,
        max_eval_samples=settings.eval_samples,
        guidance_layer=settings.guidance_layer,
        seed=settings.seed,
    )
    recipes = {"none": base.with_overrides(name="bcos-vit-decoys-unguided", guidance_weight=0.0)}
    for fraction in settings.box_fractions:
        recipes[f"boxes {fraction:.0%}"] = base.with_overrides(
            name=f"bcos-vit-guided-decoys-{fraction:g}", guidance_weight=settings.guidance_weight, box_fraction=fraction
        )
    return recipes


def distillation_recipes(settings: GuidanceSettings) -> tuple[Recipe, dict[str, Recipe]]:
    """The teacher (clean canvases) and the four students: KD and e2KD, few-shot and on all training images."""
    teacher = get_recipe("bcos-vit-canvas-teacher").with_overrides(
        epochs=settings.teacher_epochs,
        max_train_samples=settings.train_samples,
        max_eval_samples=settings.eval_samples,
        seed=settings.seed,
    )
    base = get_recipe("bcos-vit-e2kd-decoys").with_overrides(
        teacher=str(settings.work_dir / "teacher" / "repo"),
        max_eval_samples=settings.eval_samples,
        kd_temperature=settings.kd_temperature,
        seed=settings.seed,
    )
    few = settings.few_shot_per_class * 10
    students = {}
    for size, samples, epochs in (
        ("few-shot", few, settings.few_shot_epochs),
        ("full", settings.train_samples, settings.epochs),
    ):
        for method, weight in (("KD", 0.0), ("e2KD", settings.explanation_weight)):
            students[f"{method}, {size}"] = base.with_overrides(
                name=f"bcos-vit-{method.lower()}-decoys-{size}",
                explanation_weight=weight,
                max_train_samples=samples,
                epochs=epochs,
            )
    return teacher, students


def _folder(key: str) -> str:
    return key.replace(", ", "-").replace(" ", "-").replace("%", "pct")


def _load(folder: Path, device: str):
    return AutoModelForImageClassification.from_pretrained(folder).to(device).eval()


def _scores(folder: Path, test, settings: GuidanceSettings) -> dict[str, float]:
    model = _load(folder, settings.device)
    dataset = BoxedImages(limit(test, settings.eval_samples), processor_box_transform(model))
    return localisation_scores(model, dataset, 64, settings.guidance_layer)


def correlated_scores(folder: Path, settings: GuidanceSettings) -> dict[str, float]:
    """Scores on the same test images with class-coloured decoys, as in training (the shortcut's home ground)."""
    test = decoy_splits(CANVAS).validation
    return _scores(folder, DecoyImages(test.pairs, CANVAS, "class", seed=test.seed), settings)


def shuffled_scores(folder: Path, settings: GuidanceSettings) -> dict[str, float]:
    """Scores on the test images with decoys shuffled across classes (what every run is evaluated on)."""
    return _scores(folder, decoy_splits(CANVAS).validation, settings)


def plot_metrics(rows: dict[str, dict], metrics: dict[str, str], path: Path, title: str) -> None:
    """One panel per metric, one bar per run."""
    plt = _pyplot()
    names = list(rows)
    figure, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 0.9 * len(names) * len(metrics), 3.8), squeeze=False)
    for axis, (key, label) in zip(axes[0], metrics.items()):
        values = [rows[name].get(key) for name in names]
        bars = axis.bar(range(len(names)), [v or 0 for v in values], color="tab:red")
        axis.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize="small")
        axis.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize="small")
        axis.set_ylim(0, 1.1)
        axis.set_title(label, fontsize="medium")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def explanation_examples(folders: dict[str, Path], settings: GuidanceSettings, path: Path) -> list[int]:
    """The first shuffled-decoy test image of each of ``num_examples`` classes, explained for its label by every
    model (its own contributions, on its own processor's pixels)."""
    test = decoy_splits(CANVAS).validation
    firsts: dict[int, int] = {}
    for index in range(len(test)):
        firsts.setdefault(int(test.pairs[index][1]), index)
        if len(firsts) == settings.num_examples:
            break
    chosen = [firsts[label] for label in sorted(firsts)]
    rows, images = {}, None
    for name, folder in folders.items():
        model = _load(folder, settings.device)
        dataset = BoxedImages(test, processor_box_transform(model))
        pixels = torch.stack([dataset[i]["pixel_values"] for i in chosen]).to(settings.device)
        labels = torch.tensor([dataset[i]["labels"] for i in chosen], device=settings.device)
        images = pixels.cpu() if images is None else images
        rows[name] = model.explain(pixels, target=labels).contributions.detach()
    titles = [FASHION_MNIST_CLASSES[int(test.pairs[i][1])] for i in chosen]
    plot_explanations(images, titles, rows, path)
    return chosen


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(report: dict) -> str:
    """``guidance.md``: what was run, where, how long it took, what came out, and whether the claims hold here."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        "# Training with explanations in miniature: Fashion-MNIST with decoys",
        "",
        "Command:",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['gpu'] or 'no GPU'}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}. Load average at the start "
        f"{' / '.join(f'{v:.2f}' for v in machine['load_average_start'] or [])}, at the end "
        f"{' / '.join(f'{v:.2f}' for v in machine['load_average_end'] or [])} (a shared machine).",
        "",
        "Wall time: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in report["wall_seconds"].items()),
        "",
        "Data: each Fashion-MNIST image placed at random on a 48 px black canvas (its box known), plus an 8 px square "
        "outside the box in the colour of the image's class (training) or of a random other class (test). "
        f"Models: B-cos ViTs from scratch (48 px, patch 8); {settings['train_samples']} training images, "
        f"{report['test_images']} test images.",
        "",
        "## Model guidance",
        "",
        f"Energy loss at the `{settings['guidance_layer']}`, lambda = {settings['guidance_weight']:g} (summed over the "
        f"boxed images of a batch), {settings['epochs']:g} epochs each.",
        "",
        "| run | accuracy, shuffled decoys | accuracy, class decoys | EPG | IoU | boxed images used |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["guidance"].items():
        lines.append(
            f"| {name} | {_percent(row['accuracy'])} | {_percent(row['correlated_accuracy'])} | {_score(row['epg'])} "
            f"| {_score(row['iou'])} | {row['boxed_training_images']} |"
        )
    lines += ["", "![guidance](guidance.png)", "", "## e2KD", ""]
    teacher = report["teacher"]
    lines += [
        f"Teacher: a wider B-cos ViT (width 96, 4 layers) trained {settings['teacher_epochs']:g} epochs on clean "
        f"canvases: {_percent(teacher['accuracy'])} on the shuffled-decoy test images (EPG {_score(teacher['epg'])}). "
        f"Students: width 48, 3 layers; few-shot = the first {settings['few_shot_per_class'] * 10} training images "
        f"({settings['few_shot_epochs']:g} epochs), full = {settings['train_samples']} ({settings['epochs']:g} "
        f"epochs); lambda_exp = {settings['explanation_weight']:g}, T = {settings['kd_temperature']:g}.",
        "",
        "| student | accuracy | agreement with the teacher | explanation cosine to the teacher | EPG |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["distillation"].items():
        lines.append(
            f"| {name} | {_percent(row['accuracy'])} | {_percent(row['agreement'])} | "
            f"{_score(row['explanation_cosine'])} | {_score(row.get('epg'))} |"
        )
    lines += [
        "",
        "![e2KD](e2kd.png)",
        "",
        "## Explanations",
        "",
        "Shuffled-decoy test images, explained for their label by each model (red positive, blue negative).",
        "",
        "![explanations](explanations.png)",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in report["verdict"]],
        "",
    ]
    return "\n".join(lines)


def verdict(guidance: dict[str, dict], distillation: dict[str, dict]) -> list[str]:
    """Each claim against the numbers, in words (no claim is assumed to hold)."""
    lines = []
    none = guidance["none"]
    for name, row in guidance.items():
        if name == "none":
            continue
        moved = row["epg"] - none["epg"]
        gained = row["accuracy"] - none["accuracy"]
        lines.append(
            f"Guidance with {name}: EPG {none['epg']:.3f} -> {row['epg']:.3f} ({'+' if moved >= 0 else ''}"
            f"{moved:.3f}), shuffled-decoy accuracy {_percent(none['accuracy'])} -> {_percent(row['accuracy'])} "
            f"({'+' if gained >= 0 else ''}{100 * gained:.1f} points): the claim "
            + ("holds here." if moved > 0 and gained > 0 else "does not hold here.")
        )
    for size in ("few-shot", "full"):
        kd, e2kd = distillation[f"KD, {size}"], distillation[f"e2KD, {size}"]
        better = [
            metric
            for metric in ("accuracy", "agreement", "explanation_cosine", "epg")
            if (e2kd.get(metric) or 0) > (kd.get(metric) or 0)
        ]
        lines.append(
            f"e2KD vs KD, {size}: accuracy {_percent(kd['accuracy'])} -> {_percent(e2kd['accuracy'])}, agreement "
            f"{_percent(kd['agreement'])} -> {_percent(e2kd['agreement'])}, explanation cosine "
            f"{kd['explanation_cosine']:.3f} -> {e2kd['explanation_cosine']:.3f}, EPG {_score(kd.get('epg'))} -> "
            f"{_score(e2kd.get('epg'))}; higher with e2KD: {', '.join(better) or 'none'}."
        )
    return lines


def reproduce_guidance(settings: GuidanceSettings, command: str) -> dict:
    """Train (or re-use) every run, score, draw; write ``guidance.json`` and ``guidance.md`` to ``output_dir``."""
    load_start = machine_description()["load_average"]
    started = time.perf_counter()
    work, output = settings.work_dir, settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}

    guidance, folders = {}, {}
    for name, recipe in guidance_recipes(settings).items():
        print(f"== guidance: {name} ==")
        start = time.perf_counter()
        folder = work / _folder(name)
        results = train_or_reuse(recipe, folder, device=settings.device)
        correlated = correlated_scores(folder / "repo", settings)
        metrics = results["metrics"]
        guidance[name] = dict(
            accuracy=metrics["accuracy"],
            epg=metrics.get("epg"),
            iou=metrics.get("iou"),
            correlated_accuracy=correlated["accuracy"],
            correlated_epg=correlated.get("epg"),
            boxed_training_images=len(boxed_subset(recipe.max_train_samples, recipe.box_fraction))
            if recipe.guidance_weight
            else 0,
            train_seconds=metrics["train_seconds"],
            recipe=recipe_record(recipe),
        )
        folders[f"guidance: {name}"] = folder / "repo"
        wall[f"guidance {name}"] = time.perf_counter() - start

    teacher_recipe, students = distillation_recipes(settings)
    print("== e2KD: the teacher, on clean canvases ==")
    start = time.perf_counter()
    teacher_results = train_or_reuse(teacher_recipe, work / "teacher", device=settings.device)
    teacher_scores = correlated_scores(work / "teacher" / "repo", settings)
    wall["teacher"] = time.perf_counter() - start
    teacher = dict(
        accuracy=teacher_results["metrics"]["accuracy"],  # its own evaluation split: clean canvases
        epg=None,
        correlated_accuracy=teacher_scores["accuracy"],
        recipe=recipe_record(teacher_recipe),
    )
    distillation = {}
    for name, recipe in students.items():
        print(f"== e2KD: {name} ==")
        start = time.perf_counter()
        folder = work / _folder(name)
        metrics = train_or_reuse(recipe, folder, device=settings.device)["metrics"]
        distillation[name] = dict(
            {key: metrics.get(key) for key in ("accuracy", "teacher_accuracy", "agreement", "explanation_cosine")},
            epg=metrics.get("epg"),
            train_seconds=metrics["train_seconds"],
            recipe=recipe_record(recipe),
        )
        folders[f"student: {name}"] = folder / "repo"
        wall[f"student {name}"] = time.perf_counter() - start
    shuffled = shuffled_scores(work / "teacher" / "repo", settings)
    teacher.update(clean_accuracy=teacher["accuracy"], accuracy=shuffled["accuracy"], epg=shuffled.get("epg"))

    print("== figures ==")
    start = time.perf_counter()
    plot_metrics(
        guidance,
        {"accuracy": "accuracy (shuffled decoys)", "correlated_accuracy": "accuracy (class decoys)", "epg": "EPG",
         "iou": "IoU"},
        output / "guidance.png",
        "Model guidance on Fashion-MNIST with decoys",
    )  # fmt: skip
    plot_metrics(
        distillation,
        {"accuracy": "accuracy", "agreement": "agreement", "explanation_cosine": "explanation cosine", "epg": "EPG"},
        output / "e2kd.png",
        "KD vs e2KD, shuffled-decoy test images",
    )
    examples = explanation_examples(
        {"teacher": work / "teacher" / "repo", **folders}, settings, output / "explanations.png"
    )
    wall["figures"] = time.perf_counter() - start
    wall["total"] = time.perf_counter() - started

    report = dict(
        **run_record(command, settings, load_start),
        test_images=settings.eval_samples,
        guidance=guidance,
        teacher=teacher,
        distillation=distillation,
        verdict=verdict(guidance, distillation),
        explanation_examples=examples,
        wall_seconds=wall,
    )
    (output / "guidance.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (output / "report.md").write_text(text)
    print("\n" + text)
    return report
