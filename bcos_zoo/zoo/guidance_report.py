"""The report of the training-with-explanations miniature (:mod:`bcos_zoo.zoo.guidance_reproduction` runs it):
the premises and verdicts decided from the seeds, the figures, and ``report.md``, all from the numbers the run
records in ``guidance.json``, so that a report can be written again from them alone."""

from pathlib import Path

from ..data.decoys import spec_canvas
from ..training.explanation_losses import INPUT_LAYER
from ..visualize import subplots
from . import reproduction_report
from .reproduction_report import PREMISES_NOT_MET, command_block, machine_sentence
from .seed_statistics import compare, mean_std


LOSS_NAMES = {"energy": "energy", "l1": "L1", "rrr": "RRR", "ppce": "PPCE"}
METHOD_NAMES = {"bcos": "B-cos", "ixg": "IxG", "gradcam": "GradCAM"}
# minimal effects: a claimed rise smaller than this (accuracy and agreement as fractions) does not count as one
MINIMAL_EFFECT = {"accuracy": 0.02, "agreement": 0.02, "epg": 0.02, "iou": 0.02, "explanation_cosine": 0.02}


# -- statistics and verdicts -----------------------------------------------------------------------------------------


def claim(text: str, baseline: dict, treated: dict, metric: str, baseline_metric: str | None = None) -> dict:
    """One claim ("treated has a higher ``metric`` than baseline's ``baseline_metric``, by default the same") with
    its numbers and verdict."""
    values = baseline["values"][baseline_metric or metric]
    decided = compare(values, treated["values"][metric], MINIMAL_EFFECT[metric])
    return {"claim": text, "metric": metric, **decided}


def epg_of(run: dict | None) -> str:
    """The key of a model's EPG under the attribution and place a guided ``run`` (``asdict(GuidanceRun)``) trains:
    ``epg`` for B-cos at the input (what every run is scored with), else ``epg <attribution> <place>``, which the
    unguided model is also scored with, so that each guided run is compared with the same attribution of it."""
    if run is None or (run["attribution"], run["layer"]) == ("bcos", INPUT_LAYER):
        return "epg"
    return f"epg {run['attribution']} {run['layer']}"


def verdicts(guidance: dict[str, dict], distillation: dict[str, dict]) -> list[dict]:
    """Every claim, decided from the seeds: for each guided configuration against ``none`` (EPG and accuracy on
    shuffled decoys), and e2KD against KD for each data size (accuracy, agreement, explanation cosine, EPG)."""
    decided = []
    none = guidance["none"]
    for name, row in guidance.items():
        if name == "none":
            continue
        decided.append(claim(f"guidance ({name}) raises EPG", none, row, "epg", baseline_metric=epg_of(row["run"])))
        decided.append(claim(f"guidance ({name}) raises accuracy on shuffled decoys", none, row, "accuracy"))
    labels = {
        "accuracy": "accuracy on shuffled decoys",
        "agreement": "top-1 agreement with the teacher",
        "explanation_cosine": "explanation similarity to the teacher",
        "epg": "EPG",
    }
    for size in ("few-shot", "full"):
        kd, e2kd = distillation[f"KD, {size}"], distillation[f"e2KD, {size}"]
        for metric, label in labels.items():
            if metric in kd["values"] and metric in e2kd["values"]:
                decided.append(claim(f"e2KD ({size}) gives a higher {label} than KD", kd, e2kd, metric))
    return decided


def premises(unguided: dict, clean: dict) -> list[dict]:
    """The miniature's premises, measured: the unguided model learnt the decoy as a shortcut, and the same model
    learns the garments from clean canvases."""
    drop = [c - s for c, s in zip(unguided["values"]["class_accuracy"], unguided["values"]["accuracy"])]
    checks = [
        ("unguided model, accuracy on class-coloured decoys", unguided["values"]["class_accuracy"], ">=", 0.90),
        ("unguided model, accuracy lost on shuffled decoys (points)", drop, ">=", 0.20),
        ("the same model trained on clean canvases, accuracy on clean canvases", clean["values"]["clean_accuracy"],
         ">=", 0.85),
    ]  # fmt: skip
    rows = []
    for text, values, _, threshold in checks:
        mean, std = mean_std(values)
        rows.append(
            dict(
                premise=text, mean=mean, std=std, lowest=min(values), threshold=threshold, met=min(values) >= threshold
            )
        )
    return rows


# -- figures ---------------------------------------------------------------------------------------------------------


def plot_metrics(rows: dict[str, dict], metrics: dict[str, str], path: Path, title: str) -> None:
    """One panel per metric, one horizontal bar per row (mean over seeds, the standard deviation as an error bar),
    so that the names stay readable for the whole grid's forty-odd rows."""
    names = list(rows)
    figure, axes = subplots(
        1, len(metrics), figsize=(3.2 * len(metrics) + 3.0, 1.6 + 0.26 * len(names)), sharey=True, squeeze=False
    )
    for axis, (key, label) in zip(axes[0], metrics.items()):
        means = [rows[name]["mean"].get(key) for name in names]
        stds = [rows[name]["std"].get(key, 0.0) for name in names]
        bars = axis.barh(range(len(names)), [m or 0 for m in means], xerr=stds, capsize=2, color="tab:red")
        axis.bar_label(bars, labels=["n/a" if m is None else f"{m:.2f}" for m in means], fontsize="x-small", padding=2)
        axis.set_yticks(range(len(names)), names, fontsize="x-small")
        axis.set_xlim(0, 1.2)
        axis.set_title(label, fontsize="medium")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()  # the first row on top
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better in each), by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any((ox >= x and oy >= y) and (ox > x or oy > y) for ox, oy in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def at_final_layer(run: dict) -> bool:
    """Whether a recorded guided run (its ``GuidanceRun`` as a dict; empty for ``none``) guides a hidden layer."""
    return run.get("layer") not in (None, INPUT_LAYER)


def plot_pareto(guidance: dict[str, dict], path: Path) -> None:
    """The model guidance paper's trade-off view: EPG of the guided attribution against accuracy on shuffled
    decoys, one point per configuration (mean over seeds, standard deviations as error bars), the Pareto front
    joined."""
    names = list(guidance)
    points = [(guidance[n]["mean"]["epg"], guidance[n]["mean"]["accuracy"]) for n in names]
    markers = {"bcos": "o", "ixg": "s", "gradcam": "^", None: "*"}
    colours = {"energy": "tab:red", "l1": "tab:blue", "rrr": "tab:green", "ppce": "tab:purple", None: "black"}
    figure, axis = subplots(figsize=(7.5, 5.2))
    for name, (x, y) in zip(names, points):
        run = guidance[name].get("run") or {}
        axis.errorbar(
            x,
            100 * y,
            xerr=guidance[name]["std"].get("epg", 0),
            yerr=100 * guidance[name]["std"].get("accuracy", 0),
            marker=markers[run.get("attribution")],
            color=colours[run.get("loss")],
            markerfacecolor="none" if at_final_layer(run) else None,
            markersize=8 if name != "none" else 13,
            capsize=2,
            linestyle="none",
            alpha=0.85,
        )
    front = pareto_front(points)
    for i in range(len(names)) if len(names) <= 8 else front:  # the whole grid: only the front is named
        axis.annotate(names[i], (points[i][0], 100 * points[i][1]), fontsize="x-small", xytext=(4, 4),
                      textcoords="offset points")  # fmt: skip
    axis.plot([points[i][0] for i in front], [100 * points[i][1] for i in front], "k--", linewidth=1, alpha=0.6)
    from matplotlib.lines import Line2D

    used = [guidance[name].get("run") or {} for name in names]
    handles = [
        Line2D([], [], color=colour, marker="o", linestyle="none", label=LOSS_NAMES[loss])
        for loss, colour in colours.items()
        if loss and any(run.get("loss") == loss for run in used)
    ]
    handles += [
        Line2D([], [], color="gray", marker=marker, linestyle="none", label=METHOD_NAMES[method])
        for method, marker in markers.items()
        if method and any(run.get("attribution") == method for run in used)
    ]
    if any(at_final_layer(run) for run in used):
        handles.append(Line2D([], [], color="gray", marker="o", markerfacecolor="none", linestyle="none",
                              label="at the final layer"))  # fmt: skip
    handles.append(Line2D([], [], color="black", marker="*", linestyle="none", label="none (no guidance)"))
    handles.append(Line2D([], [], color="k", linestyle="--", label="Pareto front"))
    axis.legend(handles=handles, fontsize="small", loc="best")
    axis.set_xlabel("EPG of the guided attribution (shuffled-decoy test images)")
    axis.set_ylabel("accuracy on shuffled decoys (%)")
    axis.set_title("Model guidance: accuracy against localisation")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# -- report ----------------------------------------------------------------------------------------------------------


def _pm(row: dict, key: str, percent: bool = False) -> str:
    """Mean ± std of ``key`` over the seeds: in percent to 0.1, else to 0.001; ``-`` where the row has none."""
    if key not in row["mean"]:
        return "-"
    if percent:
        return f"{100 * row['mean'][key]:.1f} ± {100 * row['std'][key]:.1f}"
    return f"{row['mean'][key]:.3f} ± {row['std'][key]:.3f}"


def _difference(decided: dict) -> str:
    scale = 100 if decided["metric"] in ("accuracy", "agreement") else 1
    unit = " points" if scale == 100 else ""
    p_value = "-" if decided["p_value"] is None else f"{decided['p_value']:.3f}"
    return f"{scale * decided['difference']:+.{1 if scale == 100 else 3}f}{unit} (p = {p_value})"


def _wall_parts(wall: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in wall.items() if name != "total")


def markdown(report: dict) -> str:
    """``report.md``: what was run, where, how long it took, the premises, every row, and the verdicts."""
    machine, settings = report["machine"], report["settings"]
    seeds = ", ".join(str(seed) for seed in settings["seeds"])
    canvas = spec_canvas(report["guidance"]["none"]["recipe"]["dataset"])
    lines = [
        "# Training with explanations in miniature: Fashion-MNIST with decoys",
        "",
        *command_block(report["command"]),
        machine_sentence(machine),
        "",
        f"Wall time: {report['wall_seconds']['total'] / 60:.1f} min in all ({_wall_parts(report['wall_seconds'])}). "
        f"Training time, summed over the runs as each ran (here or in an earlier call whose runs this one re-used): "
        f"{sum(report['training_seconds'].values()) / 60:.1f} min ({_wall_parts(report['training_seconds'])}).",
        "",
        f"Data: each Fashion-MNIST image placed at random on a {canvas} px black canvas (its box known), plus a "
        f"{report['decoy_size']} px square outside the garment's 28 px placement in the colour of the image's class "
        "(training) or of a random other class (test: *shuffled decoys*); the same test canvases with class-coloured "
        "decoys and with none measure the shortcut. "
        f"{settings['train_samples']:,} training images, the first {settings['eval_samples']:,} test images. Model: a "
        "small B-cos ResNet from scratch (recipe `bcos-resnet-decoys`: 16-32-64 channels, one basic block per stage, "
        "B = 2, centred BatchNorm, cross-entropy), Adam, batch 128. Every row: seeds "
        f"{seeds}, mean ± standard deviation over the seeds.",
        "",
        "## Premises",
        "",
        "| premise | measured | lowest seed | needed | met |",
        "|---|---|---|---|---|",
    ]
    for row in report["premises"]:
        lines.append(
            f"| {row['premise']} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {100 * row['lowest']:.1f} | "
            f">= {100 * row['threshold']:.0f} | {'yes' if row['met'] else '**no**'} |"
        )
    base = report["base"]
    lines += [
        "",
        "| model (trained from scratch, "
        f"{settings['base_epochs']:g} epochs) | class decoys | shuffled decoys | clean canvases |",
        "|---|---|---|---|",
        *[
            f"| {name} | {_pm(row, 'class_accuracy', True)} | {_pm(row, 'accuracy', True)} | "
            f"{_pm(row, 'clean_accuracy', True)} |"
            for name, row in base.items()
        ],
        "",
        "## Model guidance",
        "",
        f"Each run fine-tunes the unguided model of its seed for {settings['guidance_epochs']:g} epoch(s) (lr 1e-3); "
        "`none` is the same fine-tuning without guidance. Lambda (summed over the boxed images of a batch): "
        + ", ".join(f"{LOSS_NAMES[k]} {settings[k + '_weight']:g}" for k in LOSS_NAMES)
        + ". EPG and IoU are those of the guided attribution for the label, on the shuffled-decoy test images; "
        "B-cos EPG is that of the model's own explanation at the input.",
        "",
        "| run | accuracy, shuffled decoys (%) | accuracy, class decoys (%) | EPG | IoU | B-cos EPG |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["guidance"].items():
        bcos_epg = "bcos_epg" if "bcos_epg" in row["mean"] else "epg"
        lines.append(
            f"| {name} | {_pm(row, 'accuracy', True)} | {_pm(row, 'class_accuracy', True)} | {_pm(row, 'epg')} | "
            f"{_pm(row, 'iou')} | {_pm(row, bcos_epg)} |"
        )
    lines += [
        "",
        "Where the shortcut acts: accuracy on the same test canvases without decoys, and the mean B-cos contribution "
        "of the decoy square (shuffled-decoy test canvases) to the logit of the label and to that of the class whose "
        "colour the square has.",
        "",
        "| model | accuracy, no decoys (%) | decoy -> label logit | decoy -> its colour's class logit |",
        "|---|---|---|---|",
        *[
            f"| {name} | {_pm(row, 'clean_accuracy', True)} | {_pm(row, 'decoy_to_label')} | "
            f"{_pm(row, 'decoy_to_decoy_class')} |"
            for name, row in [
                ("unguided (before fine-tuning)", report["base"]["unguided"]),
                *report["guidance"].items(),
            ]
        ],
    ]
    lines += ["", "![guidance](guidance.png)", "", "![accuracy against EPG](pareto.png)", "", "## e2KD", ""]
    teacher = report["teacher"]
    lines += [
        "Teacher: the clean-canvas model of each seed (the third premise): "
        f"{_pm(teacher, 'clean_accuracy', True)}% on clean test canvases, {_pm(teacher, 'accuracy', True)}% on the "
        "shuffled-decoy ones. Students: the same architecture from scratch, taught on decoy canvases by the teacher "
        f"of their seed; few-shot = the first {settings['few_shot_per_class'] * 10} training images "
        f"({settings['few_shot_epochs']:g} epochs), full = {settings['train_samples']:,} "
        f"({settings['student_epochs']:g} epoch(s)); lambda_exp = {settings['explanation_weight']:g}, "
        f"T = {settings['kd_temperature']:g}, lr 2e-3.",
        "",
        "| student | accuracy, shuffled decoys (%) | agreement with the teacher (%) | explanation cosine | EPG |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["distillation"].items():
        lines.append(
            f"| {name} | {_pm(row, 'accuracy', True)} | {_pm(row, 'agreement', True)} | "
            f"{_pm(row, 'explanation_cosine')} | {_pm(row, 'epg')} |"
        )
    lines += [
        "",
        "![e2KD](e2kd.png)",
        "",
        "## Explanations",
        "",
        "Shuffled-decoy test images, explained for their label by each model of seed "
        f"{settings['seeds'][0]} (its own contributions at the input; red positive, blue negative).",
        "",
        "![explanations](explanations.png)",
        "",
        "## Verdicts",
        "",
        "From the seeds, with Welch's t-test: **holds** when the claimed rise is significant (p < 0.05), **does not "
        "hold** when the difference is significantly the other way or its 95% confidence interval ends below the "
        "least rise that would count (2 points of accuracy or agreement, 0.02 of EPG or cosine; however significant "
        "the rise), **not resolved at this size** otherwise.",
        *([] if all(row["met"] for row in report["premises"]) else ["", PREMISES_NOT_MET]),
        "",
        "| claim | difference (mean) | verdict |",
        "|---|---|---|",
        *[f"| {v['claim']} | {_difference(v)} | {v['verdict']} |" for v in report["verdicts"]],
        "",
    ]
    return "\n".join(lines)


def printed_premises(rows: list[dict]) -> str:
    """The premises as the B-cosification reproductions print them, in points of percent to one decimal."""
    return reproduction_report.printed_premises(rows, digits=1, unit="")
