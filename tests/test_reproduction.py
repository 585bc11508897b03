"""The reproduction's arithmetic on constructed curves and its verdicts on constructed seeds, and the reproduction
end to end on a tiny image folder: for two seeds through bcos_zoo.zoo.reproduction (the rows over seeds recomputed
here from each seed's numbers), again through scripts/reproduce.py, and for one seed of the ResNet family."""

import json
import os
import shlex
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from training_testing import make_image_folder

from bcos_zoo.evaluation.report import plot_localisation
from bcos_zoo.zoo.reproduction import ReproductionSettings, accuracy_curve, epochs_to_reach, reproduce, speed_up
from bcos_zoo.zoo.reproduction_report import LOCALISATION_MARGIN, verdicts
from bcos_zoo.zoo.seed_statistics import all_of, not_worse


ROOT = Path(__file__).resolve().parents[1]
SCRATCH = [(0.0, 0.10), (1.0, 0.60), (2.0, 0.70), (3.0, 0.74), (4.0, 0.75)]


def test_accuracy_curve_reads_eval_entries_of_the_trainer_log_and_puts_the_initial_accuracy_at_epoch_0():
    history = [
        {"loss": 0.4, "epoch": 0.5},
        {"eval_accuracy": 0.8, "eval_loss": 0.3, "epoch": 2.0},
        {"eval_accuracy": 0.7, "eval_loss": 0.4, "epoch": 1.0},
    ]
    assert accuracy_curve(history, initial=0.2) == [(0.0, 0.2), (1.0, 0.7), (2.0, 0.8)]


def test_epochs_to_reach_is_the_first_evaluated_epoch_at_or_above_the_target():
    assert epochs_to_reach(SCRATCH, 0.70) == 2.0
    assert epochs_to_reach(SCRATCH, 0.71) == 3.0


def test_epochs_to_reach_is_none_when_the_curve_never_gets_there():
    assert epochs_to_reach(SCRATCH, 0.9) is None


def test_speed_up_divides_the_from_scratch_epochs_by_the_bcosified_epochs():
    bcosified = [(0.0, 0.30), (1.0, 0.72), (2.0, 0.76), (3.0, 0.78), (4.0, 0.79)]
    result = speed_up(bcosified, SCRATCH)
    assert (result.target_accuracy, result.scratch_epochs, result.bcosified_epochs) == (0.75, 4.0, 2.0)
    assert result.speed_up == 2.0 and not result.lower_bound


def test_speed_up_credits_the_from_scratch_run_with_the_first_epoch_it_reached_its_final_accuracy():
    plateau = [(1.0, 0.60), (2.0, 0.75), (3.0, 0.74), (4.0, 0.75)]
    assert speed_up([(1.0, 0.80)], plateau).scratch_epochs == 2.0


def test_speed_up_reached_at_the_first_evaluation_is_only_a_lower_bound():
    result = speed_up([(0.0, 0.30), (1.0, 0.80), (2.0, 0.82)], SCRATCH)
    assert result.speed_up == 4.0 and result.lower_bound
    assert result.describe().startswith(">= 4.0x")


def test_speed_up_is_none_when_the_bcosified_run_never_reaches_the_target():
    result = speed_up([(0.0, 0.30), (1.0, 0.50), (2.0, 0.60)], SCRATCH)
    assert result.bcosified_epochs is None and result.speed_up is None
    assert "never reached" in result.describe()


def test_localisation_plot_shows_rows_without_a_score_as_not_available(tmp_path):
    rows = [
        dict(label="B-cos", method="bcos", grid_pointing_game=0.8, grid_pointing_game_std=0.1),
        dict(label="GradCAM", method="gradcam", grid_pointing_game=None, grid_pointing_game_std=None),
    ]
    plot_localisation(rows, 2, tmp_path / "localisation.png")
    assert (tmp_path / "localisation.png").stat().st_size > 0


def test_plotting_a_report_switches_no_backend_and_leaves_no_figure_open_also_when_saving_fails(tmp_path):
    """In a notebook, a report's plot must leave the user's plotting as it was."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # as a notebook's own backend
    try:
        rows = [dict(label="B-cos", method="bcos", grid_pointing_game=0.8, grid_pointing_game_std=0.1)]
        plot_localisation(rows, 2, tmp_path / "localisation.png")
        with pytest.raises(FileNotFoundError):
            plot_localisation(rows, 2, tmp_path / "missing" / "localisation.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
    finally:
        matplotlib.use(backend)


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory):
    """The whole reproduction for seeds 0 and 1 on 48 training and 12 test images of 3 colour classes: one optimiser
    step per epoch.

    ``argv`` is the command line that asks ``scripts/reproduce.py`` for the same ``settings``."""
    root = tmp_path_factory.mktemp("reproduction")
    make_image_folder(root / "data" / "train", per_class=16)
    make_image_folder(root / "data" / "validation", per_class=4, seed=1)
    argv = [
        "--dataset", str(root / "data"), "--epochs", "2", "--source-epochs", "1",
        "--num-grids", "2", "--grid-size", "1", "--min-confidence", "0", "--ig-steps", "2", "--num-examples", "3",
        "--output-dir", str(root / "docs"), "--work-dir", str(root / "work"), "--device", "cpu", "--seeds", "0", "1",
    ]  # fmt: skip
    settings = ReproductionSettings(
        dataset=str(root / "data"),
        epochs=2,
        source_epochs=1,
        num_grids=2,
        grid_size=1,
        min_confidence=0,
        ig_steps=2,
        num_examples=3,
        output_dir=root / "docs",
        work_dir=root / "work",
        device="cpu",
        seeds=[0, 1],
    )
    report = reproduce(settings, command="python scripts/reproduce.py " + shlex.join(argv))
    return root, argv, settings, report


@pytest.mark.slow
def test_script_writes_the_json_report_the_markdown_and_three_figures(tiny_reproduction):
    root, _, _, report = tiny_reproduction
    names = sorted(path.name for path in (root / "docs").iterdir())
    assert names == [
        "accuracy_per_epoch.png",
        "explanations.png",
        "localisation.png",
        "reproduction.json",
        "reproduction.md",
    ]
    assert json.loads((root / "docs" / "reproduction.json").read_text()) == json.loads(json.dumps(report))


@pytest.mark.slow
def test_script_records_a_curve_from_epoch_0_to_the_last_epoch_for_both_bcos_models_of_each_seed(tiny_reproduction):
    root, _, _, report = tiny_reproduction
    assert sorted(report["per_seed"]) == ["0", "1"]
    for seed, run in report["per_seed"].items():
        assert (root / "work" / f"seed{seed}" / "standard" / "repo").is_dir()  # each seed in its own folder
        for key in ("standard", "bcosified", "scratch"):
            assert run["accuracy"][key]["recipe"]["seed"] == int(seed)
        for key in ("bcosified", "scratch"):
            assert [epoch for epoch, _ in run["accuracy"][key]["curve"]] == [0.0, 1.0, 2.0]
        assert run["accuracy"]["bcosified"]["recipe"]["source"] == str(root / "work" / f"seed{seed}/standard/repo")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


@pytest.mark.slow
def test_every_row_is_the_mean_and_std_of_the_seeds_numbers(tiny_reproduction):
    _, _, _, report = tiny_reproduction
    runs = [report["per_seed"][seed] for seed in ("0", "1")]
    finals = report["accuracy"]["final"]
    for key in ("standard", "bcosified", "scratch"):
        values = [run["accuracy"][key]["final"] for run in runs]
        assert finals["values"][key] == values
        assert (finals["mean"][key], finals["std"][key]) == pytest.approx(_mean_std(values))
    for key in ("bcosified", "scratch"):
        merged = report["accuracy"]["curves"][key]
        assert [point["epoch"] for point in merged] == [0.0, 1.0, 2.0]
        for index, point in enumerate(merged):
            values = [run["accuracy"][key]["curve"][index][1] for run in runs]
            assert (point["mean"], point["std"]) == pytest.approx(_mean_std(values))
    for row in report["localisation"]["rows"]:
        values = [
            found["grid_pointing_game"]
            for run in runs
            for found in run["localisation"]["rows"]
            if (found["model"], found["method"]) == (row["model"], row["method"])
        ]
        assert row["values"] == [value for value in values if value is not None]
        if len(row["values"]) == 2:
            assert (row["mean"], row["std"]) == pytest.approx(_mean_std(row["values"]))
    speed = report["speed_up"]
    scratch_epochs = [run["speed_up"]["scratch_epochs"] for run in runs]
    assert speed["values"]["scratch_epochs"] == scratch_epochs
    assert speed["mean"]["scratch_epochs"] == pytest.approx(statistics.mean(scratch_epochs))


@pytest.mark.slow
def test_the_report_checks_the_premises_and_decides_every_claim(tiny_reproduction):
    root, _, _, report = tiny_reproduction
    premises = report["premises"]
    assert [row["lowest"] for row in premises] == [
        min(run["accuracy"][key]["final"] for run in report["per_seed"].values()) for key in ("standard", "scratch")
    ]
    assert all(row["met"] == (row["lowest"] >= 0.7) for row in premises)
    claims = [decided["claim"][:3] for decided in report["verdicts"]]
    # (a); (b) for each B-cos model: all four post-hoc methods together, then each; (c); (d)
    assert claims == ["(a)", *["(b)"] * 10, "(c)", "(d)"]
    verdict_names = {"holds", "does not hold", "not resolved at this size"}
    assert all(decided["verdict"] in verdict_names for decided in report["verdicts"])
    text = (root / "docs" / "reproduction.md").read_text()
    assert "## Premises" in text and "## Verdicts" in text and "Seeds: 0, 1." in text
    assert "non-inferiority" in text and "| mean ± std |" in text


@pytest.mark.slow
def test_script_scores_both_bcos_models_and_every_posthoc_method_of_the_standard_model(tiny_reproduction):
    _, _, _, report = tiny_reproduction
    posthoc = [
        ("standard", method) for method in ("input_x_gradient", "integrated_gradients", "gradcam", "attention_rollout")
    ]
    for localisation in [report["localisation"], *(run["localisation"] for run in report["per_seed"].values())]:
        scored = [(row["model"], row["method"]) for row in localisation["rows"]]
        assert scored == [("bcosified", "bcos"), ("scratch", "bcos"), *posthoc]
    for run in report["per_seed"].values():
        for row in run["localisation"]["rows"]:
            scores = run["localisation"]["scores"][f"{row['model']}/{row['method']}"]
            # two 1x1 grids: the cell is the whole grid, so a map scores 1 if it has positive attribution, else 0
            assert len(scores) == row["grid_pointing_game_count"] == 2 and set(scores) <= {0.0, 1.0}
            assert row["grid_pointing_game"] == pytest.approx(sum(scores) / 2)


@pytest.mark.subprocess
def test_script_run_again_reuses_the_finished_models(tiny_reproduction):
    """The script, run as users run it, asks for the same settings: it re-uses all three runs."""
    root, argv, _, report = tiny_reproduction
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [sys.executable, "scripts/reproduce.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Re-using the finished run") == 6  # three models for each of two seeds
    assert result.stdout.count("premise: ") == 4  # printed before the figures and again at the end
    again = json.loads((root / "docs" / "reproduction.json").read_text())
    assert again["accuracy"] == json.loads(json.dumps(report["accuracy"]))
    assert "python scripts/reproduce.py --dataset" in (root / "docs" / "reproduction.md").read_text()


@pytest.mark.slow
def test_script_refuses_a_work_dir_trained_with_other_settings(tiny_reproduction):
    _, _, settings, _ = tiny_reproduction
    with pytest.raises(ValueError, match="different recipe"):
        reproduce(replace(settings, max_train_samples=24), command="python scripts/reproduce.py")


def test_an_output_dir_that_is_a_file_is_refused_before_anything_is_read_or_made(tmp_path):
    (tmp_path / "taken").write_text("a file")
    settings = ReproductionSettings(output_dir=tmp_path / "taken", work_dir=tmp_path / "work", dataset="./nowhere")
    with pytest.raises(ValueError, match="--output-dir .*taken is a file"):
        reproduce(settings, command="python scripts/reproduce.py")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]


def test_a_family_brings_its_folders_and_the_posthoc_methods_that_apply_to_its_standard_model():
    vit, resnet = ReproductionSettings(family="vit"), ReproductionSettings(family="resnet")
    assert (vit.output_dir, vit.work_dir) == (Path("docs/reproduction"), Path("outputs/reproduction"))
    assert (resnet.output_dir, resnet.work_dir) == (Path("docs/reproduction_cnn"), Path("outputs/reproduction_cnn"))
    assert "attention_rollout" in vit.methods
    assert resnet.methods == ["input_x_gradient", "integrated_gradients", "gradcam"]


def test_settings_refuse_an_unknown_family_and_a_method_that_does_not_apply_to_the_family():
    with pytest.raises(ValueError, match="available: vit, resnet"):
        ReproductionSettings(family="densenet")
    with pytest.raises(ValueError, match="Attention Rollout does not apply to the ResNet family.*gradcam"):
        ReproductionSettings(family="resnet", methods=["gradcam", "attention_rollout"])
    with pytest.raises(ValueError, match="does not apply"):
        ReproductionSettings(family="resnet", example_method="attention_rollout")


def test_the_resnet_recipes_train_a_standard_resnet_b_cosify_it_and_train_a_bcos_resnet_of_its_shape():
    from bcos_zoo.zoo.reproduction import reproduction_recipes

    settings = ReproductionSettings(family="resnet", work_dir="work")
    standard, bcosified, scratch = reproduction_recipes(settings, 0)
    assert (standard.task, standard.architecture["model_type"]) == ("standard-classification", "resnet")
    assert (bcosified.source, bcosified.b, bcosified.bias) == ("work/seed0/standard/repo", 2.0, "remove")
    assert [recipe.seed for recipe in reproduction_recipes(settings, 2)] == [2, 2, 2]
    assert reproduction_recipes(settings, 2)[1].source == "work/seed2/standard/repo"
    assert scratch.source == "scratch" and scratch.name == "bcos-resnet-fashion-mnist-scratch"
    assert replace(scratch, name=bcosified.name, hub_model_id=bcosified.hub_model_id, summary="") == replace(
        bcosified, source="scratch", architecture=scratch.architecture, summary=""
    )  # the same recipe in every other field
    for name in ("embedding_size", "hidden_sizes", "depths", "layer_type", "image_size"):
        assert scratch.architecture[name] == standard.architecture[name]
    # what bias="remove" makes of a ResNet: average pooling after the stem, the classifier before pooling
    assert scratch.architecture["model_type"] == "bcos_resnet"
    assert (scratch.architecture["stem_pool"], scratch.architecture["classify_before_pooling"]) == ("avg", True)
    assert scratch.architecture["use_bias"] is False and scratch.architecture["crop_pct"] == 1.0


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_cnn_reproduction(tmp_path_factory):
    """The ResNet reproduction through ``scripts/reproduce.py --family resnet --seed 0`` (one seed) on the first 36
    of 48 training images (one optimiser step per epoch)."""
    root = tmp_path_factory.mktemp("cnn_reproduction")
    make_image_folder(root / "data" / "train", per_class=16)
    make_image_folder(root / "data" / "validation", per_class=4, seed=1)
    argv = [
        "--family", "resnet", "--dataset", str(root / "data"), "--epochs", "2", "--source-epochs", "1",
        "--max-train-samples", "36", "--num-grids", "2", "--grid-size", "1", "--min-confidence", "0",
        "--ig-steps", "2", "--num-examples", "3", "--output-dir", str(root / "docs"),
        "--work-dir", str(root / "work"), "--device", "cpu", "--threads", "1", "--seed", "0",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    report = _load_script("reproduce").main(argv)
    assert torch.get_num_threads() == threads  # --threads holds for the run only
    return root, report


@pytest.mark.slow
def test_the_resnet_reproduction_scores_its_bcos_models_and_the_posthoc_methods_that_apply_to_a_cnn(
    tiny_cnn_reproduction,
):
    root, report = tiny_cnn_reproduction
    assert sorted(path.name for path in (root / "docs").iterdir()) == [
        "accuracy_per_epoch.png",
        "explanations.png",
        "localisation.png",
        "reproduction.json",
        "reproduction.md",
    ]
    assert report["seeds"] == [0] and list(report["per_seed"]) == ["0"]
    run = report["per_seed"]["0"]
    scored = [(row["model"], row["method"]) for row in run["localisation"]["rows"]]
    posthoc = [("standard", method) for method in ("input_x_gradient", "integrated_gradients", "gradcam")]
    assert scored == [("bcosified", "bcos"), ("scratch", "bcos"), *posthoc]
    rows = run["localisation"]["rows"]
    # a 1x1 grid needs one correctly classified test image; two optimiser steps do not promise one to a B-cos model
    assert all((row["grid_pointing_game"] is not None) == (row["num_grid_classes"] >= 1) for row in rows)
    assert all(row["grid_pointing_game"] is not None for row in rows if row["model"] == "standard")
    for key in ("bcosified", "scratch"):
        assert [epoch for epoch, _ in run["accuracy"][key]["curve"]] == [0.0, 1.0, 2.0]
    assert report["settings"]["family"] == "resnet"
    assert report["settings"]["threads"] == report["machine"]["torch_threads"] == 1
    assert run["accuracy"]["standard"]["recipe"]["name"] == "resnet-fashion-mnist"
    # one seed: the rows have no spread and no claim can be decided
    assert all(std == 0 for std in report["accuracy"]["final"]["std"].values())
    assert {decided["verdict"] for decided in report["verdicts"]} == {"not resolved at this size"}


@pytest.mark.slow
def test_the_resnet_report_names_the_resnets_and_the_training_subset(tiny_cnn_reproduction):
    root, report = tiny_cnn_reproduction
    text = (root / "docs" / "reproduction.md").read_text()
    assert text.startswith("# B-cosification in miniature: Fashion-MNIST, ResNets")
    assert "python scripts/reproduce.py --family resnet --dataset" in text
    assert "Training images: the first 36 of the training split." in text
    assert "| standard ResNet, from scratch | 1 epochs |" in text and "| standard ResNet | GradCAM |" in text
    assert "ViT" not in text


@pytest.mark.slow
def test_the_bcos_resnet_from_scratch_has_exactly_the_shape_of_the_bcosified_one(tiny_cnn_reproduction):
    from transformers import AutoModelForImageClassification

    root, _ = tiny_cnn_reproduction
    bcosified, scratch = (
        AutoModelForImageClassification.from_pretrained(root / "work" / "seed0" / key / "repo")
        for key in ("bcosified", "scratch")
    )
    assert type(scratch) is type(bcosified) and type(scratch).__name__ == "BcosResNetForImageClassification"
    assert scratch.config.to_diff_dict() == bcosified.config.to_diff_dict()
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {
        k: v.shape for k, v in bcosified.state_dict().items()
    }
    assert not torch.equal(scratch.classifier.weight, bcosified.classifier.weight)  # trained apart


def _constructed(bcosified: list[float], scratch: list[float], posthoc: list[float], scratch_epochs, bcos_epochs):
    """The inputs of :func:`verdicts` for two B-cos models and one post-hoc method, from per-seed numbers."""
    names = {"bcosified": "B-cosified", "scratch": "B-cos from scratch", "standard": "standard ViT"}
    accuracy = {"final": {"values": {"bcosified": bcosified, "scratch": scratch}}}
    speed = {
        "values": {"scratch_epochs": scratch_epochs},
        "bcosified_epochs_for_test": bcos_epochs,
        "never_reached": [],
    }
    rows = [
        dict(model="bcosified", method="bcos", values=bcosified),
        dict(model="scratch", method="bcos", values=scratch),
        dict(model="standard", method="gradcam", values=posthoc),
    ]
    return {
        decided["claim"][:3] + str(i): decided["verdict"]
        for i, decided in enumerate(verdicts(accuracy, speed, rows, names))
    }


def test_verdicts_hold_for_a_clear_win_fail_for_a_clear_loss_and_stay_open_when_the_seeds_overlap():
    win = _constructed([0.86, 0.87, 0.88], [0.80, 0.81, 0.80], [0.30, 0.28, 0.31], [4, 4, 4], [2, 2, 2])
    assert win == {"(a)0": "holds", "(b)1": "holds", "(b)2": "holds", "(b)3": "holds", "(b)4": "holds",
                   "(c)5": "holds", "(d)6": "holds"}  # fmt: skip
    # the B-cosified model far behind: (a) fails by more than the margin, (c) significantly the other way, and it
    # needs more epochs; the post-hoc method beats both B-cos models
    loss = _constructed([0.50, 0.52, 0.51], [0.80, 0.81, 0.80], [0.90, 0.91, 0.92], [2, 2, 2], [4, 4, 4])
    assert set(loss.values()) == {"does not hold"}
    overlap = _constructed([0.70, 0.85, 0.78], [0.75, 0.82, 0.72], [0.60, 0.85, 0.70], [2, 4, 3], [1, 4, 2])
    assert set(overlap.values()) == {"not resolved at this size"}


def test_comparable_holds_only_when_the_whole_interval_clears_the_margin():
    scratch = [0.80, 0.81, 0.79]
    assert not_worse(scratch, [0.79, 0.80, 0.78], LOCALISATION_MARGIN)["verdict"] == "holds"  # slightly lower: fine
    wide = not_worse(scratch, [0.60, 0.95, 0.80], LOCALISATION_MARGIN)  # the same mean, seeds far apart
    assert wide["verdict"] == "not resolved at this size" and wide["ci_low"] < -LOCALISATION_MARGIN
    assert not_worse(scratch, [0.60, 0.61, 0.62], LOCALISATION_MARGIN)["verdict"] == "does not hold"
    assert not_worse([0.8], [0.8], LOCALISATION_MARGIN)["verdict"] == "not resolved at this size"  # one seed
    assert all_of(["holds", "holds"]) == "holds"
    assert all_of(["holds", "not resolved at this size"]) == "not resolved at this size"
    assert all_of(["holds", "does not hold", "not resolved at this size"]) == "does not hold"


def test_the_script_takes_three_seeds_by_default_one_with_seed_and_a_list_with_seeds():
    script = _load_script("reproduce")
    assert script.parse_args([]).seeds == [0, 1, 2]
    assert script.parse_args(["--seed", "5"]).seeds == [5]
    assert script.parse_args(["--seeds", "3", "4"]).seeds == [3, 4]
    with pytest.raises(SystemExit):
        script.parse_args(["--seed", "1", "--seeds", "2"])
    with pytest.raises(ValueError, match="each once"):
        ReproductionSettings(seeds=[1, 1])


def _finished_run(folder: Path, recipe) -> dict:
    """What a finished run of ``recipe`` leaves in ``folder`` (its recipe, results and repo), without training it."""
    from bcos_zoo.training.recipe import recipe_record
    from bcos_zoo.training.trainer import with_precision

    results = {"metrics": {"accuracy": 0.5, "train_seconds": 1.0}, "eval_history": []}
    (folder / "repo").mkdir(parents=True)
    (folder / "recipe.json").write_text(json.dumps(recipe_record(with_precision(recipe))))
    (folder / "results.json").write_text(json.dumps(results))
    return results


def _bcosified(source: Path | str, **overrides):
    from bcos_zoo.zoo.recipes import get_recipe

    return get_recipe("bcos-vit-fashion-mnist").with_overrides(source=str(source), **overrides)


def test_a_finished_run_is_reused_from_its_work_folder_given_by_a_relative_or_an_absolute_path(tmp_path, monkeypatch):
    from bcos_zoo.zoo.reproduction import train_or_reuse

    monkeypatch.chdir(tmp_path)
    work = Path("work")
    results = _finished_run(work / "seed0" / "bcosified", _bcosified(work / "seed0" / "standard" / "repo"))
    absolute = tmp_path / "work"
    recipe = _bcosified(absolute / "seed0" / "standard" / "repo")
    assert train_or_reuse(recipe, absolute / "seed0" / "bcosified") == results


def test_a_finished_run_is_reused_from_a_moved_work_folder(tmp_path):
    from bcos_zoo.zoo.reproduction import train_or_reuse

    work = tmp_path / "moved"
    results = _finished_run(work / "seed0" / "bcosified", _bcosified("/elsewhere/work/seed0/standard/repo"))
    recipe = _bcosified(work / "seed0" / "standard" / "repo")
    assert train_or_reuse(recipe, work / "seed0" / "bcosified", work_dir=work) == results


def test_a_finished_run_trained_in_another_precision_is_reused_here(tmp_path):
    from bcos_zoo.zoo.reproduction import train_or_reuse

    source = tmp_path / "work" / "seed0" / "standard" / "repo"
    results = _finished_run(tmp_path / "work" / "seed0" / "bcosified", _bcosified(source, precision="bf16"))
    assert train_or_reuse(_bcosified(source), tmp_path / "work" / "seed0" / "bcosified", device="cpu") == results


def test_a_run_folder_of_another_recipe_is_refused_naming_the_fields_that_differ(tmp_path):
    from bcos_zoo.zoo.reproduction import train_or_reuse

    source = tmp_path / "work" / "seed0" / "standard" / "repo"
    _finished_run(tmp_path / "work" / "seed0" / "bcosified", _bcosified(source, epochs=1))
    with pytest.raises(ValueError, match=r"different recipe \(epochs 1 -> 2; .*another --work-dir"):
        train_or_reuse(_bcosified(source, epochs=2), tmp_path / "work" / "seed0" / "bcosified")


def test_a_run_whose_source_was_trained_again_since_is_refused(tmp_path):
    from bcos_zoo.zoo.reproduction import INPUTS_RECORD, input_digests, train_or_reuse

    source = tmp_path / "work" / "seed0" / "standard" / "repo"
    source.mkdir(parents=True)
    (source / "model.safetensors").write_bytes(b"the weights it was B-cosified from")
    folder, recipe = tmp_path / "work" / "seed0" / "bcosified", _bcosified(source)
    _finished_run(folder, recipe)
    (folder / INPUTS_RECORD).write_text(json.dumps(input_digests(recipe)))
    (source / "model.safetensors").write_bytes(b"the weights of a second training")
    with pytest.raises(ValueError, match="other weights than its source .* holds now"):
        train_or_reuse(recipe, folder)
    source.rename(source.with_name("moved"))
    with pytest.raises(ValueError, match=r"trained from its source .*repo, which is no folder here \(moved\?\)"):
        train_or_reuse(recipe, folder)


@pytest.mark.slow
def test_an_interrupted_run_resumes_in_a_moved_work_folder(tmp_path):
    """A run stopped after its last checkpoint, in a work folder moved since, resumes there (``finetune``'s own
    check of the recipe sees the paths of the call that resumes it)."""
    from training_testing import make_vit_source

    from bcos_zoo.zoo.recipes import Recipe
    from bcos_zoo.zoo.reproduction import train_or_reuse

    data = make_image_folder(tmp_path / "data", per_class=4)

    def recipe(work: Path) -> Recipe:
        source = str(work / "seed0" / "standard" / "repo")
        return Recipe(name="t", source=source, dataset=str(data), hub_model_id="org/t", epochs=1, batch_size=8)

    first, moved = tmp_path / "work", tmp_path / "moved"
    make_vit_source(first / "seed0" / "standard" / "repo")
    results = train_or_reuse(recipe(first), first / "seed0" / "bcosified", device="cpu", work_dir=first)
    (first / "seed0" / "bcosified" / "results.json").unlink()
    first.rename(moved)
    again = train_or_reuse(recipe(moved), moved / "seed0" / "bcosified", device="cpu", work_dir=moved)
    assert again["metrics"]["accuracy"] == results["metrics"]["accuracy"]


def test_printed_premises_give_each_premise_and_warn_when_one_is_not_met():
    from bcos_zoo.zoo import guidance_report, reproduction_report

    met = {"premise": "source accuracy", "mean": 0.8123, "std": 0.0101, "lowest": 0.8, "threshold": 0.5, "met": True}
    missed = {**met, "premise": "B-cos accuracy", "mean": 0.31, "lowest": 0.29, "met": False}
    printed = reproduction_report.printed_premises([met])
    assert printed == ("premise: source accuracy: 81.23 ± 1.01% (lowest seed 80.00%, needed >= 50% in every seed): met")
    assert guidance_report.printed_premises([met]).startswith("premise: source accuracy: 81.2 ± 1.0 (lowest seed 80.0,")
    lines = reproduction_report.printed_premises([met, missed]).splitlines()
    assert lines[1].endswith("NOT MET") and lines[2].startswith("A premise is not met") and "**" not in lines[2]


def test_a_cached_starting_accuracy_cut_off_by_a_kill_is_measured_again(tmp_path):
    from bcos_zoo.data.datasets import load_dataset_splits
    from bcos_zoo.zoo.recipes import Recipe
    from bcos_zoo.zoo.reproduction import initial_accuracy

    data = make_image_folder(tmp_path / "data", per_class=4)
    architecture = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=3)
    recipe = Recipe(name="t", source="scratch", dataset=str(data), hub_model_id="o/t", architecture=architecture)
    splits, cache = load_dataset_splits(str(data)), tmp_path / "initial_accuracy.json"
    measured = initial_accuracy(recipe, splits, "cpu", cache=cache)
    written = cache.read_text()
    cache.write_text(written[: len(written) // 2])
    assert initial_accuracy(recipe, splits, "cpu", cache=cache) == measured
    assert json.loads(cache.read_text())["accuracy"] == measured  # written again, whole
