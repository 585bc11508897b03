"""The B-cosification reproduction's report: its rows over seeds (mean +- std), premises, verdicts and markdown.

:mod:`.reproduction` trains and measures every seed and hands the per-seed numbers here; what a claim is, how much
difference counts, and how the report reads live in this module alone.
"""

from ..evaluation.baselines import METHOD_NAMES
from ..families import FAMILIES
from .seed_statistics import HOLDS, NOT_RESOLVED, all_of, compare, mean_std, not_worse, summarise


Curve = list[tuple[float, float]]
"""``[(epoch, test accuracy), ...]`` in increasing epochs; epoch 0 is the model before any training."""


def model_names(family: str) -> dict[str, str]:
    """How reports name the three models of a family's reproduction."""
    return {
        "bcosified": "B-cosified",
        "scratch": "B-cos from scratch",
        "standard": f"standard {FAMILIES[family].label}",
    }


def mean_curve(curves: list[Curve]) -> list[dict]:
    """The seeds' curves of one model as one: per evaluated epoch, each seed's accuracy, their mean and standard
    deviation (seeds of one recipe evaluate at the same epochs; an epoch some seed lacks is averaged over the
    others)."""
    by_epoch: dict[float, list[float]] = {}
    for curve in curves:
        for epoch, value in curve:
            by_epoch.setdefault(round(float(epoch), 6), []).append(float(value))
    return [
        dict(epoch=epoch, values=values, mean=mean_std(values)[0], std=mean_std(values)[1])
        for epoch, values in sorted(by_epoch.items())
    ]


# -- over seeds: rows, premises, verdicts ----------------------------------------------------------------------------

# The least difference that counts as one (a claimed rise whose whole 95% interval lies below it does not hold):
# one point of accuracy, 0.02 of GridPG, one evaluation interval (an epoch) of epochs to reach the target.
MINIMAL_EFFECT = {"accuracy": 0.01, "gridpg": 0.02, "epochs": 1.0}
# "Localises as well as" (the paper: comparable) holds when the B-cosified model's GridPG is, with 95% confidence,
# at most this much below the from-scratch model's: a fifth of the way from a uniform map (0.25) to perfect.
LOCALISATION_MARGIN = 0.05
# Each seed's standard model and B-cos model from scratch must learn: 70% is far above chance (10%) on Fashion-MNIST.
PREMISE_ACCURACY = 0.70
MODEL_KEYS = ("standard", "bcosified", "scratch")


def accuracy_rows(per_seed: dict[int, dict]) -> dict:
    """Final accuracy of the three models (values per seed, mean, std) and both B-cos curves merged over seeds."""
    finals = summarise(
        {seed: {key: run["accuracy"][key]["final"] for key in MODEL_KEYS} for seed, run in per_seed.items()}
    )
    curves = {
        key: mean_curve([per_seed[seed]["accuracy"][key]["curve"] for seed in sorted(per_seed)])
        for key in ("bcosified", "scratch")
    }
    return dict(final=finals, curves=curves)


def speed_up_rows(per_seed: dict[int, dict], epochs: float) -> dict:
    """Epochs to reach the from-scratch model's final accuracy, per seed and over seeds, and the speed-up.

    A B-cosified run that never reached its seed's target counts as ``epochs + 1`` in ``bcosified_epochs_for_test``
    (the first evaluation after the budget: the least it could have needed); its seed is listed in
    ``never_reached``.
    """
    found = {seed: run["speed_up"] for seed, run in per_seed.items()}
    never = [seed for seed in sorted(found) if found[seed]["bcosified_epochs"] is None]
    keys = ("target_accuracy", "scratch_epochs", "bcosified_epochs", "speed_up")
    summary = summarise({seed: {key: found[seed][key] for key in keys} for seed in found})
    censored = {
        seed: epochs + 1 if found[seed]["bcosified_epochs"] is None else found[seed]["bcosified_epochs"]
        for seed in sorted(found)
    }
    return dict(**summary, never_reached=never, bcosified_epochs_for_test=list(censored.values()))


def localisation_rows(per_seed: dict[int, dict]) -> list[dict]:
    """One row per model and explanation: each seed's GridPG (the mean over its cells; a seed without a grid is
    left out), their mean and standard deviation over seeds."""
    order = []
    for run in per_seed.values():
        for row in run["localisation"]["rows"]:
            if (row["model"], row["method"]) not in order:
                order.append((row["model"], row["method"]))
    rows = []
    for model, method in order:
        found = {
            seed: {"grid_pointing_game": row["grid_pointing_game"]}
            for seed, run in sorted(per_seed.items())
            for row in run["localisation"]["rows"]
            if (row["model"], row["method"]) == (model, method)
        }
        summary = summarise(found)
        values = summary["values"].get("grid_pointing_game", [])
        rows.append(
            dict(
                model=model,
                method=method,
                bcos=method == "bcos",
                seeds=summary["seeds"],
                values=values,
                mean=summary["mean"].get("grid_pointing_game"),
                std=summary["std"].get("grid_pointing_game"),
            )
        )
    return rows


def premises(accuracy: dict, names: dict[str, str]) -> list[dict]:
    """What the comparison rests on, measured: every seed's standard model and B-cos model from scratch learned
    (a B-cosified model of a source that learnt nothing, or a baseline that learnt nothing, shows nothing)."""
    rows = []
    for key, text in (
        ("standard", f"the {names['standard']} (the source) learned: test accuracy"),
        ("scratch", "the B-cos model from scratch learned: final test accuracy"),
    ):
        values = accuracy["final"]["values"][key]
        mean, std = mean_std(values)
        rows.append(
            dict(
                premise=text,
                mean=mean,
                std=std,
                lowest=min(values),
                threshold=PREMISE_ACCURACY,
                met=min(values) >= PREMISE_ACCURACY,
            )
        )
    return rows


def verdicts(accuracy: dict, speed: dict, localisation_summary: list[dict], names: dict[str, str]) -> list[dict]:
    """The paper's four claims, each decided from the spread over seeds (:mod:`.seed_statistics`).

    (a) the B-cosified model localises at least as well as the B-cos model from scratch (GridPG, non-inferiority
    within :data:`LOCALISATION_MARGIN`); (b) each B-cos model's contributions localise better than every post-hoc
    method on the standard model (one verdict per method, and one for all of them); (c) the B-cosified model ends
    more accurate than the B-cos model from scratch; (d) it reaches the from-scratch model's final accuracy in fewer
    epochs.
    """
    gridpg = {(row["model"], row["method"]): row["values"] for row in localisation_summary}
    decided = [
        dict(
            claim="(a) the B-cosified model localises at least as well as the B-cos model from scratch "
            f"(GridPG; margin {LOCALISATION_MARGIN:g})",
            metric="gridpg",
            test="non-inferiority",
            **not_worse(gridpg[("scratch", "bcos")], gridpg[("bcosified", "bcos")], LOCALISATION_MARGIN),
        )
    ]
    posthoc = [method for model, method in gridpg if model == "standard"]
    for key in ("bcosified", "scratch"):
        parts = [
            dict(
                claim=f"(b) {names[key]}: B-cos contributions localise better than {METHOD_NAMES[method]} on the "
                f"{names['standard']}",
                metric="gridpg",
                test="superiority",
                **compare(gridpg[("standard", method)], gridpg[(key, "bcos")], MINIMAL_EFFECT["gridpg"]),
            )
            for method in posthoc
        ]
        decided.append(
            dict(
                claim=f"(b) {names[key]}: B-cos contributions localise better than every post-hoc method on the "
                f"{names['standard']} (the smallest lead shown)",
                metric="gridpg",
                test="all of the rows below",
                difference=min((part["difference"] for part in parts if part["difference"] is not None), default=None),
                p_value=None,
                ci_low=None,
                ci_high=None,
                verdict=all_of([part["verdict"] for part in parts]),
            )
        )
        decided += parts
    finals = accuracy["final"]["values"]
    decided.append(
        dict(
            claim="(c) the B-cosified model is more accurate than the B-cos model from scratch after the "
            "same epochs (final test accuracy)",
            metric="accuracy",
            test="superiority",
            **compare(finals["scratch"], finals["bcosified"], MINIMAL_EFFECT["accuracy"]),
        )
    )
    # (d) "fewer epochs" is "the from-scratch model needs more": the from-scratch epochs are the treated side
    reach = compare(speed["bcosified_epochs_for_test"], speed["values"]["scratch_epochs"], MINIMAL_EFFECT["epochs"])
    note = None
    if speed["never_reached"] and reach["verdict"] == HOLDS:
        reach["verdict"] = NOT_RESOLVED  # a never-reached run counts at its least possible epochs: no proof
        note = "seeds whose B-cosified run never reached the target count at the least epochs they could need"
    decided.append(
        dict(
            claim="(d) the B-cosified model reaches the final accuracy of the B-cos model from scratch in "
            "fewer epochs (epochs to reach, from-scratch minus B-cosified)",
            metric="epochs",
            test="superiority",
            **reach,
            **({"note": note} if note else {}),
        )
    )
    return decided


# -- report ----------------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _pm(mean: float | None, std: float | None, percent: bool = False) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}%" if percent else f"{mean:.3f} ± {std:.3f}"


def _each(values: list[float], percent: bool = False) -> str:
    return " / ".join(f"{100 * value:.2f}" if percent else f"{value:.3f}" for value in values) or "-"


def _epochs(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


def _loads(values: list[float] | None) -> str:
    return "unknown" if values is None else " / ".join(f"{value:.2f}" for value in values)


def command_block(command: str) -> list[str]:
    """The markdown lines that quote a reproduction's command."""
    return ["Command:", "", "```bash", command, "```", ""]


def machine_sentence(machine: dict) -> str:
    """What a run's timings were measured on, as ``run_record`` describes it: CPU, threads, libraries, load."""
    threads = machine["torch_threads"]
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({threads} torch thread{'s' if threads != 1 else ''}), "
        f"{machine['gpu'] or 'no GPU'}; torch {machine['torch']}, transformers {machine['transformers']}, Python "
        f"{machine['python']}. Load average at the start {_loads(machine['load_average_start'])}, at the end "
        f"{_loads(machine['load_average_end'])} (the 1, 5 and 15 minute averages: above the core count means the "
        "machine was shared)."
    )


def _difference(decided: dict) -> tuple[str, str, str]:
    """Difference, 95% interval and p-value of a verdict, in the metric's unit."""
    scale, digits, unit = {"accuracy": (100, 2, " points"), "gridpg": (1, 3, ""), "epochs": (1, 2, " epochs")}[
        decided["metric"]
    ]

    def number(value: float | None, sign: str = "+") -> str:
        return "-" if value is None else f"{scale * value:{sign}.{digits}f}"

    difference = "-" if decided["difference"] is None else number(decided["difference"]) + unit
    interval = "-" if decided["ci_low"] is None else f"[{number(decided['ci_low'])}, {number(decided['ci_high'])}]"
    p_value = "-" if decided["p_value"] is None else f"{decided['p_value']:.3f}"
    return difference, interval, p_value


def markdown(report: dict) -> str:
    """``reproduction.md``: what was run, where, how long it took, every row over seeds, and the verdicts."""
    acc, machine, wall = report["accuracy"], report["machine"], report["wall_seconds"]
    settings, seeds = report["settings"], report["seeds"]
    epochs, family = settings["epochs"], settings.get("family", "vit")
    names = model_names(family)
    title = "Fashion-MNIST" if family == "vit" else f"Fashion-MNIST, {FAMILIES[family].label}s"
    finals, curves = acc["final"], acc["curves"]
    lines = [
        f"# B-cosification in miniature: {title}",
        "",
        *command_block(report["command"]),
    ]
    if settings.get("max_train_samples"):
        lines += [f"Training images: the first {settings['max_train_samples']} of the training split.", ""]
    lines += [
        f"Seeds: {', '.join(str(seed) for seed in seeds)}. Each seed trains all three models and draws its own grids; "
        "every row is the mean ± standard deviation over the seeds, each seed's value after it (and in "
        "reproduction.json).",
        "",
        machine_sentence(machine),
        "",
        f"Wall time: {wall['total'] / 60:.2f} min in all; over all seeds: "
        + ", ".join(f"{name} {seconds / 60:.2f} min" for name, seconds in wall.items() if name != "total")
        + ".",
        "",
        "## Premises",
        "",
        "| premise | mean ± std | lowest seed | needed in every seed | met |",
        "|---|---|---|---|---|",
        *[
            f"| {row['premise']} | {_pm(row['mean'], row['std'], True)} | {_percent(row['lowest'])} | "
            f">= {100 * row['threshold']:.0f}% | {'yes' if row['met'] else '**no**'} |"
            for row in report["premises"]
        ],
        "",
        f"## Test accuracy ({acc['test_images']} test images)",
        "",
        "| model | training | accuracy per epoch, mean over seeds (epoch 0 = before training) | final, mean ± std | "
        "final per seed |",
        "|---|---|---|---|---|",
        f"| {names['standard']}, from scratch | {settings['source_epochs']:g} epochs | - | "
        f"{_pm(finals['mean']['standard'], finals['std']['standard'], True)} | "
        f"{_each(finals['values']['standard'], True)} |",
    ]
    for key in ("bcosified", "scratch"):
        curve = " → ".join(f"{100 * point['mean']:.1f}" for point in curves[key])
        lines.append(
            f"| {names[key]} | {epochs:g} epochs | {curve} | {_pm(finals['mean'][key], finals['std'][key], True)} | "
            f"{_each(finals['values'][key], True)} |"
        )
    speed = report["speed_up"]
    lines += [
        "",
        "![accuracy per epoch](accuracy_per_epoch.png)",
        "",
        "### Epochs to reach the from-scratch model's final accuracy",
        "",
        "Each seed's target is its own B-cos model from scratch's final accuracy; that model is credited with the "
        "first epoch it reached it. Accuracy is known only at evaluated epochs, so each count is the first evaluation "
        "at or above the target; `>=` marks a B-cosified run that was there at its first evaluation (it may be "
        "faster still).",
        "",
        f"| seed | target | {names['scratch']} | {names['bcosified']} | speed-up |",
        "|---|---|---|---|---|",
    ]
    for seed in seeds:
        found = report["per_seed"][str(seed)]["speed_up"]
        ratio = "-" if found["speed_up"] is None else f"{'>= ' if found['lower_bound'] else ''}{found['speed_up']:.2f}x"
        lines.append(
            f"| {seed} | {_percent(found['target_accuracy'])} | {_epochs(found['scratch_epochs'])} | "
            f"{_epochs(found['bcosified_epochs'])} | {ratio} |"
        )
    mean, std = speed["mean"], speed["std"]

    def epochs_pm(key: str) -> str:
        return "-" if key not in mean else f"{mean[key]:.2f} ± {std[key]:.2f}"

    lines.append(
        f"| mean ± std | {_pm(mean.get('target_accuracy'), std.get('target_accuracy'), True)} | "
        f"{epochs_pm('scratch_epochs')} | {epochs_pm('bcosified_epochs')} | "
        + ("-" if "speed_up" not in mean else f"{mean['speed_up']:.2f} ± {std['speed_up']:.2f}x")
        + " |"
    )
    if speed["never_reached"]:
        lines += ["", f"The B-cosified run never reached the target for seed(s) {speed['never_reached']}."]
    local = report["localisation"]
    grid = f"{local['grid_size']}x{local['grid_size']}"
    lines += [
        "",
        f"## Grid pointing game ({grid} grids)",
        "",
        f"Each seed draws up to {local['num_grids']} grids of {grid} test images of distinct classes from the first "
        f"{local['images']} test images, each image classified correctly with confidence >= "
        f"{local['min_confidence']:g} by the model being explained; a seed's GridPG is the mean over its cells, and a "
        f"uniform map scores {1 / local['grid_size'] ** 2:.2f}.",
        "",
        "| model | explanation | GridPG, mean ± std over seeds | per seed |",
        "|---|---|---|---|",
    ]
    for row in local["rows"]:
        score = _pm(row["mean"], row["std"]) if row["values"] else "- (no grid: too few confidently classified classes)"
        lines.append(f"| {names[row['model']]} | {METHOD_NAMES[row['method']]} | {score} | {_each(row['values'])} |")
    lines += [
        "",
        "![grid pointing game](localisation.png)",
        "",
        "## Verdicts",
        "",
        "From the seeds, with Welch's t-test (difference = the claimed better model minus the other; the interval "
        "is its 95% confidence interval). A claim that one model is better **holds** when the difference is "
        "positive and significant (p < 0.05) and **does not hold** when it is significantly negative or its whole "
        "interval lies below the least difference that counts (1 point of accuracy, 0.02 of GridPG, 1 epoch). "
        'Claim (a) is the paper\'s "comparable", a non-inferiority claim: the absence of a significant difference '
        "is no evidence for it (too few seeds never show one), so it **holds** only when the whole interval lies "
        f"above -{LOCALISATION_MARGIN:g} GridPG (any shortfall of the B-cosified model is smaller than that) and "
        f"**does not hold** when the whole interval lies below -{LOCALISATION_MARGIN:g}. Anything else is **not "
        "resolved at this size**, and so is every claim with fewer than two seeds.",
    ]
    if not all(row["met"] for row in report["premises"]):
        lines += ["", PREMISES_NOT_MET]
    lines += [
        "",
        "| claim | difference (mean) | 95% interval | p | verdict |",
        "|---|---|---|---|---|",
    ]
    for decided in report["verdicts"]:
        difference, interval, p_value = _difference(decided)
        note = f" ({decided['note']})" if decided.get("note") else ""
        lines.append(f"| {decided['claim']} | {difference} | {interval} | {p_value} | {decided['verdict']}{note} |")
    lines += [
        "",
        "## Explanations",
        "",
        f"Each column: a test image, explained for its label by each model of seed {seeds[0]} (red positive, blue "
        "negative).",
        "",
        "![explanations](explanations.png)",
        "",
    ]
    return "\n".join(lines)


PREMISES_NOT_MET = (
    "**A premise is not met** (see Premises): a model that did not learn decides nothing, so the verdicts say "
    "nothing about the paper's claims."
)


def printed_premises(rows: list[dict], digits: int = 2, unit: str = "%") -> str:
    """One line per premise (mean ± spread over the seeds, the lowest seed, the threshold, in percent with ``unit``
    after each figure), and the warning when any is not met."""
    lines = [
        f"premise: {row['premise']}: {100 * row['mean']:.{digits}f} ± {100 * row['std']:.{digits}f}{unit} (lowest "
        f"seed {100 * row['lowest']:.{digits}f}{unit}, needed >= {100 * row['threshold']:.0f}{unit} in every seed): "
        f"{'met' if row['met'] else 'NOT MET'}"
        for row in rows
    ]
    return "\n".join(lines if all(row["met"] for row in rows) else [*lines, PREMISES_NOT_MET.replace("**", "")])
