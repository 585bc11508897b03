"""scripts/evaluate_model.py and bcos_zoo.evaluation.report behind it, on a tiny B-cos model, its tiny source
and an image folder: table, JSON report, bar plot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, save_hf_source

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.data.preprocessing import model_transform
from bcos_zoo.evaluation.baselines import POSTHOC_METHODS, load_standard_classifier
from bcos_zoo.evaluation.report import evaluate_side_by_side


ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES, NUM_GRIDS = 16, 6, 2


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A source ViT, its B-cos form at B = 1 with biases kept (so both predict alike), and an image folder whose
    validation images sit in the folder of the class the models predict, except every fourth, which is misfiled."""
    root = tmp_path_factory.mktemp("evaluation")
    source_dir, bcos_dir, data_dir = root / "source", root / "bcos", root / "data"
    save_hf_source(hf_vit(image=SIZE, patch=4, labels=CLASSES), source_dir, IMAGENET_MEAN, IMAGENET_STD)
    BcosViTForImageClassification.from_pretrained_standard(source_dir, b=1.0, bias="keep").save_pretrained(bcos_dir)

    generator = torch.Generator().manual_seed(0)
    colours = torch.rand(32, 3, 1, 1, generator=generator)
    pixels = (colours + 0.3 * torch.rand(32, 3, SIZE, SIZE, generator=generator)).clamp(0, 1)
    images = [Image.fromarray((255 * p.permute(1, 2, 0)).round().byte().numpy()) for p in pixels]
    classifier = load_standard_classifier(source_dir)
    with torch.no_grad():
        seen = torch.stack([model_transform(classifier)(image) for image in images])
        predicted = classifier(seen).argmax(1).tolist()
    for split in ("train", "validation"):
        for label in range(CLASSES):
            (data_dir / split / f"class_{label}").mkdir(parents=True)
    filed = [(label + 1) % CLASSES if i % 4 == 3 else label for i, label in enumerate(predicted)]
    for i, (image, label) in enumerate(zip(images, filed)):
        for split in ("train", "validation"):
            image.save(data_dir / split / f"class_{label}" / f"{i:02d}.png")
    assert len(set(predicted)) >= 4, "the synthetic images must cover enough classes for 2x2 grids"
    accuracy = sum(p == f for p, f in zip(predicted, filed)) / len(filed)
    return dict(root=root, source=source_dir, bcos=bcos_dir, data=data_dir, accuracy=accuracy)


def common_args(workspace, output: Path) -> list[str]:
    return [
        "--model", str(workspace["bcos"]),
        "--dataset", str(workspace["data"]),
        "--num-grids", str(NUM_GRIDS),
        "--min-confidence", "0",
        "--ig-steps", "4",
        "--batch-size", "16",
        "--output-dir", str(output),
        "--device", "cpu",
    ]  # fmt: skip


def common_settings(workspace) -> dict:
    """The settings of :func:`common_args`, for calling the package directly."""
    return dict(
        model=workspace["bcos"],
        dataset=str(workspace["data"]),
        num_grids=NUM_GRIDS,
        min_confidence=0.0,
        ig_steps=4,
        batch_size=16,
        device="cpu",
    )


@pytest.fixture(scope="module")
def full_run(workspace):
    """The script run as a file, the way users run it: B-cos model, source and every method."""
    output = workspace["root"] / "output"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate_model.py",
            *common_args(workspace, output),
            "--source",
            str(workspace["source"]),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(stdout=result.stdout, output=output, report=json.loads((output / "evaluation.json").read_text()))


@pytest.mark.subprocess
def test_the_report_has_a_row_for_the_bcos_model_and_one_per_posthoc_method(full_run):
    rows = full_run["report"]["rows"]
    assert [(row["model"], row["method"]) for row in rows] == [("bcos", "bcos")] + [
        ("source", method) for method in POSTHOC_METHODS
    ]


@pytest.mark.subprocess
def test_accuracy_is_the_share_of_images_in_the_folder_of_their_predicted_class(workspace, full_run):
    models = full_run["report"]["models"]
    assert models["bcos"]["accuracy"] == pytest.approx(workspace["accuracy"])
    assert models["source"]["accuracy"] == pytest.approx(workspace["accuracy"])


@pytest.mark.subprocess
def test_every_method_scores_each_cell_of_the_requested_grids(full_run):
    report = full_run["report"]
    for row in report["rows"]:
        scores = report["scores"][row["method"]]["grid_pointing_game"]
        assert len(scores) == NUM_GRIDS * 4 and all(0 <= s <= 1 for s in scores)
        assert row["grid_pointing_game"] == pytest.approx(sum(scores) / len(scores))
        assert row["energy_pointing_game"] is None  # an image folder has no object boxes


@pytest.mark.subprocess
def test_bcos_scores_are_its_contributions_on_grids_of_its_most_confident_correct_images(workspace, full_run):
    """The B-cos row recomputed: the model's predictions on its processor's pixels, each class's correctly classified
    images most confident first, the seeded grids drawn from them, and each cell explained by hand."""
    from test_localisation import grid_scores_by_hand
    from transformers import AutoImageProcessor

    from bcos_zoo.data.datasets import load_dataset_splits
    from bcos_zoo.evaluation.localisation import sample_grids

    model = BcosViTForImageClassification.from_pretrained(workspace["bcos"]).eval()
    images, labels = zip(*load_dataset_splits(str(workspace["data"])).validation)
    pixels = AutoImageProcessor.from_pretrained(workspace["bcos"])(list(images), return_tensors="pt").pixel_values
    with torch.no_grad():
        probabilities = model(pixel_values=pixels).logits.softmax(dim=1)
    pools = {}
    for index in sorted(range(len(labels)), key=lambda i: -float(probabilities[i].max())):
        if int(probabilities[index].argmax()) == labels[index]:  # --min-confidence 0: every correct image
            pools.setdefault(labels[index], []).append(index)
    grids = sample_grids(dict(sorted(pools.items())), grid_size=2, num_grids=NUM_GRIDS, seed=0)
    expected = grid_scores_by_hand(model, grids, dict(enumerate(pixels)))
    assert full_run["report"]["scores"]["bcos"]["grid_pointing_game"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.subprocess
def test_the_table_is_printed_and_the_bar_plot_written(full_run):
    for label in ("B-cos contributions", "Input x Gradient", "Integrated Gradients", "GradCAM", "Attention Rollout"):
        assert f"| {label} |" in full_run["stdout"]
    with Image.open(full_run["output"] / "localisation.png") as plot:
        assert plot.format == "PNG" and plot.width > 200 and plot.height > 200


def test_without_a_source_the_posthoc_methods_are_skipped(workspace, capsys):
    report = evaluate_side_by_side(**common_settings(workspace), methods=["bcos", "gradcam"])
    assert [row["method"] for row in report["rows"]] == ["bcos"] and "source" not in report["models"]
    assert "skipping gradcam" in capsys.readouterr().out


def test_when_too_few_classes_are_confidently_classified_gridpg_is_reported_as_skipped(workspace, capsys):
    report = evaluate_side_by_side(**{**common_settings(workspace), "min_confidence": 0.99}, methods=["bcos"])
    assert report["rows"][0]["grid_pointing_game"] is None
    assert "GridPG skipped" in capsys.readouterr().out


def test_a_model_whose_classes_do_not_match_the_dataset_is_rejected(workspace, tmp_path):
    (tmp_path / "data" / "only_class").mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "data" / "only_class" / "a.png")
    with pytest.raises(ValueError, match="6 classes but the dataset has 1"):
        evaluate_side_by_side(workspace["bcos"], str(tmp_path / "data"))


@pytest.mark.subprocess
def test_a_script_that_imports_evaluate_gets_the_package_not_a_script():
    """Files run from scripts/ have that folder first on the import path: no script there may shadow a package."""
    code = "import sys; sys.path.insert(0, 'scripts'); import evaluate; print(evaluate.load.__module__)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("evaluate.")
