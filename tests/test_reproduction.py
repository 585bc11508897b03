"""The reproduction's arithmetic on constructed curves, and the reproduction end to end on a tiny image folder:
through bcos_zoo.zoo.reproduction, and again through scripts/reproduce.py."""

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from training_testing import make_image_folder

from bcos_zoo.evaluation.report import plot_localisation
from bcos_zoo.zoo.reproduction import ReproductionSettings, accuracy_curve, epochs_to_reach, reproduce, speed_up


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


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory):
    """The whole reproduction on 48 training and 12 test images of 3 colour classes: one optimiser step per epoch.

    ``argv`` is the command line that asks ``scripts/reproduce.py`` for the same ``settings``."""
    root = tmp_path_factory.mktemp("reproduction")
    make_image_folder(root / "data" / "train", per_class=16)
    make_image_folder(root / "data" / "validation", per_class=4, seed=1)
    argv = [
        "--dataset", str(root / "data"), "--epochs", "2", "--source-epochs", "1",
        "--num-grids", "2", "--grid-size", "1", "--min-confidence", "0", "--ig-steps", "2", "--num-examples", "3",
        "--output-dir", str(root / "docs"), "--work-dir", str(root / "work"), "--device", "cpu",
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
def test_script_records_a_curve_from_epoch_0_to_the_last_epoch_for_both_bcos_models(tiny_reproduction):
    _, _, _, report = tiny_reproduction
    for key in ("bcosified", "scratch"):
        assert [epoch for epoch, _ in report["accuracy"][key]["curve"]] == [0.0, 1.0, 2.0]


@pytest.mark.slow
def test_script_scores_both_bcos_models_and_every_posthoc_method_of_the_standard_model(tiny_reproduction):
    _, _, _, report = tiny_reproduction
    scored = [(row["model"], row["method"]) for row in report["localisation"]["rows"]]
    posthoc = [
        ("standard", method) for method in ("input_x_gradient", "integrated_gradients", "gradcam", "attention_rollout")
    ]
    assert scored == [("bcosified", "bcos"), ("scratch", "bcos"), *posthoc]
    for row in report["localisation"]["rows"]:
        scores = report["localisation"]["scores"][f"{row['model']}/{row['method']}"]
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
    assert result.stdout.count("Re-using the finished run") == 3
    again = json.loads((root / "docs" / "reproduction.json").read_text())
    assert again["accuracy"]["bcosified"]["curve"] == json.loads(json.dumps(report["accuracy"]["bcosified"]["curve"]))
    assert "python scripts/reproduce.py --dataset" in (root / "docs" / "reproduction.md").read_text()


@pytest.mark.slow
def test_script_refuses_a_work_dir_trained_with_other_settings(tiny_reproduction):
    _, _, settings, _ = tiny_reproduction
    with pytest.raises(ValueError, match="different recipe"):
        reproduce(replace(settings, max_train_samples=24), command="python scripts/reproduce.py")


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

    standard, bcosified, scratch = reproduction_recipes(ReproductionSettings(family="resnet", work_dir="work"))
    assert (standard.task, standard.architecture["model_type"]) == ("standard-classification", "resnet")
    assert (bcosified.source, bcosified.b, bcosified.bias) == ("work/standard/repo", 2.0, "remove")
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
    """The ResNet reproduction through ``scripts/reproduce.py --family resnet`` on the first 36 of 48 training
    images (one optimiser step per epoch)."""
    root = tmp_path_factory.mktemp("cnn_reproduction")
    make_image_folder(root / "data" / "train", per_class=16)
    make_image_folder(root / "data" / "validation", per_class=4, seed=1)
    argv = [
        "--family", "resnet", "--dataset", str(root / "data"), "--epochs", "2", "--source-epochs", "1",
        "--max-train-samples", "36", "--num-grids", "2", "--grid-size", "1", "--min-confidence", "0",
        "--ig-steps", "2", "--num-examples", "3", "--output-dir", str(root / "docs"),
        "--work-dir", str(root / "work"), "--device", "cpu", "--threads", "1",
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
    scored = [(row["model"], row["method"]) for row in report["localisation"]["rows"]]
    posthoc = [("standard", method) for method in ("input_x_gradient", "integrated_gradients", "gradcam")]
    assert scored == [("bcosified", "bcos"), ("scratch", "bcos"), *posthoc]
    rows = report["localisation"]["rows"]
    # a 1x1 grid needs one correctly classified test image; two optimiser steps do not promise one to a B-cos model
    assert all((row["grid_pointing_game"] is not None) == (row["num_grid_classes"] >= 1) for row in rows)
    assert all(row["grid_pointing_game"] is not None for row in rows if row["model"] == "standard")
    for key in ("bcosified", "scratch"):
        assert [epoch for epoch, _ in report["accuracy"][key]["curve"]] == [0.0, 1.0, 2.0]
    assert report["settings"]["family"] == "resnet"
    assert report["settings"]["threads"] == report["machine"]["torch_threads"] == 1
    assert report["accuracy"]["standard_recipe"]["name"] == "resnet-fashion-mnist"


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
        AutoModelForImageClassification.from_pretrained(root / "work" / key / "repo")
        for key in ("bcosified", "scratch")
    )
    assert type(scratch) is type(bcosified) and type(scratch).__name__ == "BcosResNetForImageClassification"
    assert scratch.config.to_diff_dict() == bcosified.config.to_diff_dict()
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {
        k: v.shape for k, v in bcosified.state_dict().items()
    }
    assert not torch.equal(scratch.classifier.weight, bcosified.classifier.weight)  # trained apart
