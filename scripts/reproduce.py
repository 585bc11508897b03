r"""The B-cosification paper's central claims in miniature, on Fashion-MNIST, offline, on a CPU.

    python scripts/reproduce.py --epochs 4 --source-epochs 3 --max-train-samples 10000 --num-grids 25 --ig-steps 8

Three models of one architecture (the ``vit-fashion-mnist`` ViT: 32 px, patch 4, 4 layers, width 96):

1. a standard ViT trained from scratch (recipe ``vit-fashion-mnist``, ``--source-epochs``),
2. that ViT B-cosified (B = 2, biases removed) and fine-tuned (recipe ``bcos-vit-fashion-mnist``, ``--epochs``),
3. a B-cos ViT trained from scratch with the same recipe and optimiser settings as 2 (``--epochs``).

Both B-cos runs are evaluated on the test set after every epoch (and before the first step). Then: the first
epoch at which the B-cosified run reaches the from-scratch run's final accuracy (the paper's speed-up), the grid
pointing game of both B-cos models (their own contributions) and of the standard model under each post-hoc method,
and an explanation grid. ``--output-dir`` receives ``reproduction.json``, ``reproduction.md`` and three PNGs;
``--work-dir`` holds the models and checkpoints, and finished runs there are re-used by a later call.
"""

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path


# Run as a file, this folder comes first on the import path, and scripts/evaluate.py would shadow the `evaluate`
# package that scores the pointing games.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import torch  # noqa: E402

from bcos_zoo import BcosViTForImageClassification  # noqa: E402
from bcos_zoo.data.datasets import limit, load_dataset_splits  # noqa: E402
from bcos_zoo.evaluation.baselines import METHOD_NAMES, POSTHOC_METHODS, load_standard_classifier, posthoc_attribution  # noqa: E402
from bcos_zoo.zoo.recipes import get_recipe  # noqa: E402
from bcos_zoo.zoo.reproduction import (  # noqa: E402
    accuracy_curve,
    initial_accuracy,
    machine_description,
    plot_accuracy_curves,
    plot_explanations,
    plot_localisation,
    recipe_record,
    speed_up,
    train_or_reuse,
)


MODEL_NAMES = {"bcosified": "B-cosified", "scratch": "B-cos from scratch", "standard": "standard ViT"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=4.0, help="epochs of both B-cos runs")
    parser.add_argument("--source-epochs", type=float, default=3.0, help="epochs of the standard ViT")
    parser.add_argument("--max-train-samples", type=int, help="train on the first N training images (quick runs)")
    parser.add_argument("--max-eval-samples", type=int, help="test accuracy on the first N test images")
    parser.add_argument("--dataset", default="fashion-mnist", help="'fashion-mnist' or an image folder")
    parser.add_argument("--num-grids", type=int, default=25)
    parser.add_argument("--grid-size", type=int, default=2)
    parser.add_argument("--min-confidence", type=float, default=0.5)
    parser.add_argument(
        "--localisation-images", type=int, default=2000, help="grids are drawn from the first N test images"
    )
    parser.add_argument("--methods", nargs="+", default=list(POSTHOC_METHODS), choices=list(POSTHOC_METHODS))
    parser.add_argument("--ig-steps", type=int, default=8, help="integrated gradients steps")
    parser.add_argument("--num-examples", type=int, default=8, help="columns of the explanation grid")
    parser.add_argument(
        "--example-method", default="integrated_gradients", choices=list(POSTHOC_METHODS), help="standard model's row"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("docs/reproduction"))
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/reproduction"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def recipes(args: argparse.Namespace):
    """The three recipes: the standard source, its B-cosification, and the same B-cos recipe from scratch."""
    common = dict(
        dataset=args.dataset,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        seed=args.seed,
    )
    standard = get_recipe("vit-fashion-mnist").with_overrides(epochs=args.source_epochs, **common)
    bcosified = get_recipe("bcos-vit-fashion-mnist").with_overrides(
        source=str(args.work_dir / "standard" / "repo"), epochs=args.epochs, **common
    )
    scratch = replace(
        bcosified,
        name="bcos-vit-fashion-mnist-scratch",
        hub_model_id="bcos-zoo/bcos-vit-fashion-mnist-scratch",
        source="scratch",
        architecture=standard.architecture,
        summary="A B-cos ViT trained from scratch with the B-cosification recipe: the papers' baseline.",
    )
    return standard, bcosified, scratch


def localisation(args: argparse.Namespace, data, work: Path) -> tuple[list[dict], dict, dict]:
    """GridPG of both B-cos models (own contributions) and of the standard model under each post-hoc method."""
    from bcos_zoo.evaluation.localisation import bcos_attribution, bcos_classifier, evaluate_localisation

    dataset = limit(data.validation, args.localisation_images)
    settings = dict(
        dataset=dataset,
        grid_size=args.grid_size,
        num_grids=args.num_grids,
        min_confidence=args.min_confidence,
        device=args.device,
        seed=args.seed,
    )
    evaluations, seconds = {}, {}
    for key in ("bcosified", "scratch"):
        model = BcosViTForImageClassification.from_pretrained(work / key / "repo").to(args.device).eval()
        start = time.perf_counter()
        evaluations[key] = evaluate_localisation(
            bcos_classifier(model), {"bcos": bcos_attribution(model)}, image_size=model.config.image_size, **settings
        )
        seconds[key] = time.perf_counter() - start
    standard = load_standard_classifier(work / "standard" / "repo").to(args.device)
    options = {"integrated_gradients": {"steps": args.ig_steps}}
    explainers = {method: posthoc_attribution(standard, method, **options.get(method, {})) for method in args.methods}
    start = time.perf_counter()
    evaluations["standard"] = evaluate_localisation(standard, explainers, image_size=standard.image_size, **settings)
    seconds["standard"] = time.perf_counter() - start

    rows, scores = [], {}
    for key, evaluation in evaluations.items():
        for method in evaluation.grid_pointing_game:
            summary = evaluation.summary(method)
            rows.append(
                dict(
                    model=key,
                    method=method,
                    label=f"{MODEL_NAMES[key]}\n{METHOD_NAMES[method]}",
                    bcos=method == "bcos",
                    num_grid_classes=evaluation.num_grid_classes,
                    **{name: value for name, value in summary.items() if not name.startswith("energy")},
                )
            )
            scores[f"{key}/{method}"] = evaluation.grid_pointing_game[method]
    return rows, scores, seconds


def explanation_grid(args: argparse.Namespace, data, work: Path, path: Path) -> list[int]:
    """The first test image of each of ``--num-examples`` classes, explained for its label by every model."""
    from bcos_zoo.evaluation.localisation import bcos_attribution, image_transform

    firsts: dict[int, int] = {}
    for index in range(len(data.validation)):
        label = int(data.validation[index][1])
        firsts.setdefault(label, index)
        if len(firsts) == min(args.num_examples, len(data.class_names)):
            break
    chosen = [firsts[label] for label in sorted(firsts)]
    standard = load_standard_classifier(work / "standard" / "repo").to(args.device)
    transform = image_transform(standard.image_size)
    images = torch.stack([transform(data.validation[i][0]) for i in chosen]).to(args.device)
    labels = torch.tensor([int(data.validation[i][1]) for i in chosen], device=args.device)
    rows = {}
    for key in ("bcosified", "scratch"):
        model = BcosViTForImageClassification.from_pretrained(work / key / "repo").to(args.device).eval()
        rows[MODEL_NAMES[key]] = bcos_attribution(model)(images, labels).detach()
    options = {"steps": args.ig_steps} if args.example_method == "integrated_gradients" else {}
    posthoc = posthoc_attribution(standard, args.example_method, **options)
    rows[f"standard ViT,\n{METHOD_NAMES[args.example_method]}"] = posthoc(images, labels).detach()
    titles = [data.class_names[int(label)] for label in labels]
    plot_explanations(images.cpu(), titles, rows, path)
    return chosen


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def gridpg(row: dict) -> str:
    if row["grid_pointing_game"] is None:
        return "- (no grid: too few confidently classified classes)"
    return (
        f"{row['grid_pointing_game']:.3f} ± {row['grid_pointing_game_std']:.3f} (n={row['grid_pointing_game_count']})"
    )


def loads(values: list[float] | None) -> str:
    return "unknown" if values is None else " / ".join(f"{value:.2f}" for value in values)


def markdown(report: dict) -> str:
    """``reproduction.md``: what was run, where, how long it took, and what came out."""
    acc, machine, wall = report["accuracy"], report["machine"], report["wall_seconds"]
    epochs = report["settings"]["epochs"]
    lines = [
        "# B-cosification in miniature: Fashion-MNIST",
        "",
        "Command:",
        "",
        "```bash",
        report["command"],
        "```",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['gpu'] or 'no GPU'}; torch {machine['torch']}, "
        f"transformers {machine['transformers']}, Python {machine['python']}. Load average at the start "
        f"{loads(machine['load_average_start'])}, at the end {loads(machine['load_average_end'])} "
        "(the 1, 5 and 15 minute averages: above the core count means the machine was shared).",
        "",
        "Wall time: " + ", ".join(f"{name} {seconds / 60:.2f} min" for name, seconds in wall.items()) + ".",
        "",
        f"## Test accuracy ({acc['test_images']} test images)",
        "",
        "| model | training | accuracy per epoch (epoch 0 = before training) | final |",
        "|---|---|---|---|",
        f"| standard ViT, from scratch | {report['settings']['source_epochs']:g} epochs | - | "
        f"{percent(acc['standard'])} |",
    ]
    for key in ("bcosified", "scratch"):
        curve = " → ".join(f"{100 * value:.1f}" for _, value in acc[key]["curve"])
        lines.append(f"| {MODEL_NAMES[key]} | {epochs:g} epochs | {curve} | {percent(acc[key]['final'])} |")
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
        lines.append(f"| {MODEL_NAMES[row['model']]} | {METHOD_NAMES[row['method']]} | {gridpg(row)} |")
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


def main(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(arguments)
    load_start = machine_description()["load_average"]
    started = time.perf_counter()
    work, output = args.work_dir, args.output_dir
    output.mkdir(parents=True, exist_ok=True)
    data = load_dataset_splits(args.dataset)
    standard_recipe, bcosified_recipe, scratch_recipe = recipes(args)
    wall: dict[str, float] = {}

    print("== 1/5 the standard ViT, from scratch ==")
    start = time.perf_counter()
    standard = train_or_reuse(standard_recipe, work / "standard", device=args.device)
    wall["standard ViT training"] = time.perf_counter() - start

    trained = {}
    for step, (key, recipe) in enumerate((("bcosified", bcosified_recipe), ("scratch", scratch_recipe)), start=2):
        print(f"== {step}/5 {MODEL_NAMES[key]}: {recipe.epochs:g} epochs, evaluated after each ==")
        start = time.perf_counter()
        results = train_or_reuse(recipe, work / key, eval_each_epoch=True, device=args.device)
        initial = initial_accuracy(recipe, data, args.device, cache=work / key / "initial_accuracy.json")
        trained[key] = dict(
            curve=accuracy_curve(results["eval_history"], initial),
            final=results["metrics"]["accuracy"],
            train_seconds=results["metrics"]["train_seconds"],
            recipe=recipe_record(recipe),
        )
        wall[f"{MODEL_NAMES[key]} training"] = time.perf_counter() - start
    result = speed_up(trained["bcosified"]["curve"], trained["scratch"]["curve"])

    print("== 4/5 grid pointing game ==")
    start = time.perf_counter()
    rows, scores, localisation_seconds = localisation(args, data, work)
    wall["grid pointing game"] = time.perf_counter() - start

    print("== 5/5 figures ==")
    start = time.perf_counter()
    plot_accuracy_curves(
        trained["bcosified"]["curve"],
        trained["scratch"]["curve"],
        result,
        output / "accuracy_per_epoch.png",
        standard_accuracy=standard["metrics"]["accuracy"],
        title=f"Fashion-MNIST test accuracy, {args.epochs:g} epochs each",
    )
    plot_localisation(rows, args.grid_size, output / "localisation.png", title="Fashion-MNIST grid pointing game")
    examples = explanation_grid(args, data, work, output / "explanations.png")
    wall["figures"] = time.perf_counter() - start
    wall["total"] = time.perf_counter() - started

    machine = machine_description()
    machine["load_average_start"], machine["load_average_end"] = load_start, machine.pop("load_average")
    report = dict(
        command="python scripts/reproduce.py " + shlex.join(arguments),
        machine=machine,
        settings={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        accuracy=dict(
            test_images=len(limit(data.validation, args.max_eval_samples)),
            standard=standard["metrics"]["accuracy"],
            standard_train_seconds=standard["metrics"]["train_seconds"],
            standard_recipe=recipe_record(standard_recipe),
            **trained,
        ),
        speed_up=dict(asdict(result), description=result.describe()),
        localisation=dict(
            grid_size=args.grid_size,
            num_grids=args.num_grids,
            min_confidence=args.min_confidence,
            images=len(limit(data.validation, args.localisation_images)),
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


if __name__ == "__main__":
    main()
