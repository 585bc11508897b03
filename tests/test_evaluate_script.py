"""scripts/evaluate_model.py and bcos_zoo.evaluation.report behind it, on a tiny B-cos model, its tiny source
and an image folder: table, JSON report, bar plot."""

import json
import os
import runpy
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import torch
from cnn_sources import hf_resnet
from PIL import Image
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, save_hf_source
from transformers import ConvNextImageProcessor

from bcos_zoo import BcosResNetForImageClassification, BcosViTForImageClassification
from bcos_zoo.data.preprocessing import model_transform
from bcos_zoo.evaluation.baselines import DEFAULT_METHODS, load_standard_classifier
from bcos_zoo.evaluation.report import class_order, evaluate_side_by_side, score_key
from bcos_zoo.zoo.cli import run_script


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
        "--faithfulness-images", "4",
        "--faithfulness-steps", "4",
        "--road-fractions", "0.25", "0.5",
        "--batch-size", "16",
        "--dataloader-num-workers", "1",
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
        faithfulness_images=4,
        faithfulness_steps=4,
        road_fractions=(0.25, 0.5),
        batch_size=16,
        device="cpu",
        dataloader_num_workers=1,
    )


@pytest.fixture(scope="module")
def full_run(workspace):
    """The script run as a file, the way users run it: B-cos model, source and every default method, and two
    post-hoc methods of the B-cos model itself."""
    output = workspace["root"] / "output"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    result = subprocess.run(
        [
            sys.executable,
            "scripts/evaluate_model.py",
            *common_args(workspace, output),
            "--source",
            str(workspace["source"]),
            "--bcos-methods",
            "gradient",
            "rise",
            "--rise-masks",
            "8",
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
    assert [(row["model"], row["method"]) for row in rows] == [
        ("bcos", "bcos"),
        ("bcos", "gradient"),
        ("bcos", "rise"),
        *[("source", method) for method in DEFAULT_METHODS],
    ]
    assert rows[1]["label"] == "Gradient (B-cos model)" and rows[3]["label"] == "Input x Gradient"


@pytest.mark.subprocess
def test_accuracy_is_the_share_of_images_in_the_folder_of_their_predicted_class(workspace, full_run):
    models = full_run["report"]["models"]
    assert models["bcos"]["accuracy"] == pytest.approx(workspace["accuracy"])
    assert models["source"]["accuracy"] == pytest.approx(workspace["accuracy"])


@pytest.mark.subprocess
def test_every_method_scores_each_cell_of_the_requested_grids(full_run):
    report = full_run["report"]
    for row in report["rows"]:
        scores = report["scores"][score_key(row["model"], row["method"])]["grid_pointing_game"]
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
    assert "| Deletion AUC ↓ | Insertion AUC ↑ | ROAD MoRF ↓ | ROAD LeRF ↑ |" in full_run["stdout"]
    for name in ("localisation.png", "faithfulness.png"):
        with Image.open(full_run["output"] / name) as plot:
            assert plot.format == "PNG" and plot.width > 200 and plot.height > 200


@pytest.mark.subprocess
def test_every_method_has_its_faithfulness_on_the_first_images_with_the_mean_curves(full_run):
    report = full_run["report"]
    faithfulness = report["faithfulness"]
    assert faithfulness["num_images"] == 4 and faithfulness["steps"] == 4
    assert faithfulness["fractions"]["deletion"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert faithfulness["fractions"]["road_morf"] == [0.25, 0.5]
    for row in report["rows"]:
        key = score_key(row["model"], row["method"])
        for metric in ("deletion", "insertion", "road_morf", "road_lerf"):
            scores = report["scores"][key][metric]
            assert len(scores) == 4 and row[f"{metric}_count"] == 4
            assert row[metric] == pytest.approx(sum(scores) / 4) and 0 <= row[metric] <= 1
            assert len(faithfulness["curves"][key][metric]) == len(faithfulness["fractions"][metric])


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


def test_the_bcos_models_faithfulness_is_the_deletion_insertion_and_road_of_its_contributions(workspace):
    """The harness recomputed: the first images in the model's processor's pixels, each explained for its predicted
    class by its contributions, through the faithfulness functions."""
    from transformers import AutoImageProcessor

    from bcos_zoo.data.datasets import load_dataset_splits
    from bcos_zoo.evaluation.faithfulness import deletion_curves, insertion_curves, road_curves

    report = evaluate_side_by_side(**common_settings(workspace), methods=["bcos"])
    model = BcosViTForImageClassification.from_pretrained(workspace["bcos"]).eval()
    images = [image for image, _ in list(load_dataset_splits(str(workspace["data"])).validation)[:4]]
    pixels = AutoImageProcessor.from_pretrained(workspace["bcos"])(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        targets = model(pixel_values=pixels).logits.argmax(1)
    maps = model.explain(pixels, target=targets).contributions.detach()

    def classify(x):
        return model(pixel_values=x).logits

    scores = report["scores"]["bcos"]
    expected = {
        "deletion": deletion_curves(classify, pixels, maps, targets, steps=4).auc(),
        "insertion": insertion_curves(classify, pixels, maps, targets, steps=4).auc(),
        "road_morf": road_curves(classify, pixels, maps, targets, (0.25, 0.5), "morf", batch_size=16).mean(),
        "road_lerf": road_curves(classify, pixels, maps, targets, (0.25, 0.5), "lerf", batch_size=16).mean(),
    }
    for metric, values in expected.items():
        assert scores[metric] == pytest.approx(values.tolist(), abs=1e-5), metric


def test_faithfulness_can_be_left_out_and_a_method_that_needs_a_standard_model_is_refused_for_the_bcos_model(
    workspace,
):
    report = evaluate_side_by_side(**{**common_settings(workspace), "faithfulness_images": 0}, methods=["bcos"])
    assert "faithfulness" not in report and report["rows"][0]["deletion"] is None
    with pytest.raises(ValueError, match="'gradcam' cannot explain the B-cos model"):
        evaluate_side_by_side(**common_settings(workspace), methods=["bcos"], bcos_methods=["gradcam"])


def copy_with_class_names(workspace, root: Path, names: list[str], relabel_model: bool) -> tuple[Path, Path]:
    """The workspace's data with class ``i``'s folders named ``names[i]`` and, with ``relabel_model``, its B-cos
    model calling class ``i`` ``names[i]`` too: the same images and predictions under other names."""
    data = root / "data"
    for folder in workspace["data"].glob("*/class_*"):
        shutil.copytree(folder, data / folder.parent.name / names[int(folder.name.removeprefix("class_"))])
    model = workspace["bcos"]
    if relabel_model:
        model = shutil.copytree(workspace["bcos"], root / "bcos")
        config = json.loads((model / "config.json").read_text())
        config["id2label"] = dict(enumerate(names))
        config["label2id"] = {name: index for index, name in enumerate(names)}
        (model / "config.json").write_text(json.dumps(config))
    return model, data


def accuracy_only(workspace) -> dict:
    return {**common_settings(workspace), "num_grids": 0, "faithfulness_images": 0, "methods": ["bcos"]}


def test_a_dataset_whose_class_folders_sort_otherwise_is_matched_to_the_model_by_name(workspace, tmp_path):
    names = ["f", "e", "d", "c", "b", "a"]  # the dataset's first class, "a", is the model's last
    model, data = copy_with_class_names(workspace, tmp_path, names, relabel_model=True)
    report = evaluate_side_by_side(**{**accuracy_only(workspace), "model": model, "dataset": str(data)})
    assert report["models"]["bcos"]["accuracy"] == pytest.approx(workspace["accuracy"])


def test_a_dataset_whose_class_names_are_not_the_model_s_is_refused_naming_both(workspace, tmp_path):
    _, data = copy_with_class_names(workspace, tmp_path, list("abcdef"), relabel_model=False)
    with pytest.raises(ValueError) as refusal:
        evaluate_side_by_side(**{**accuracy_only(workspace), "dataset": str(data)})
    message = str(refusal.value)
    assert str([f"class_{i}" for i in range(CLASSES)]) in message and str(list("abcdef")) in message
    assert "--match-classes index" in message


def test_matching_classes_by_index_takes_the_dataset_s_i_th_class_for_the_model_s_whatever_the_names(
    workspace, tmp_path
):
    _, data = copy_with_class_names(workspace, tmp_path, list("abcdef"), relabel_model=False)
    settings = {**accuracy_only(workspace), "dataset": str(data), "match_classes": "index"}
    assert evaluate_side_by_side(**settings)["models"]["bcos"]["accuracy"] == pytest.approx(workspace["accuracy"])


def test_a_model_with_the_dataset_s_class_names_in_its_order_is_accepted_even_where_a_name_repeats():
    """ImageNet-1k has two classes named "crane" (the bird and the machine), in the model's labels and the dataset's."""
    names = ["tench", "crane", "goldfish", "crane"]
    assert class_order("model", dict(enumerate(names)), list(names)) == [0, 1, 2, 3]


def test_repeated_class_names_in_another_order_are_refused_naming_the_repeated_name():
    with pytest.raises(ValueError, match=r"\(\['crane'\] repeat, so names cannot match\)") as refusal:
        class_order("model", dict(enumerate(["crane", "tench", "crane"])), ["tench", "crane", "crane"])
    assert "--match-classes index" in str(refusal.value)


def test_class_names_spelled_with_combining_accents_are_the_model_s_composed_names():
    """A folder copied from macOS names "école" as "e" + a combining accent; the model's labels have "é"."""
    model_names = ["zebra", "\u00e9cole", "caf\u00e9"]  # the model's order
    folders = sorted(unicodedata.normalize("NFD", name) for name in model_names)  # "école" sorts first spelt so
    order = class_order("model", dict(enumerate(model_names)), folders)
    assert [model_names[index] for index in order] == [unicodedata.normalize("NFC", name) for name in folders]
    assert order == [2, 1, 0]


def test_many_classes_in_another_order_each_find_their_own_index():
    """Which index each class finds (the matching is linear in the classes; its time is not asserted here)."""
    model_names = [f"class {i}" for i in range(5000)]
    folders = sorted(model_names)  # "class 10" before "class 2"
    order = class_order("model", dict(enumerate(model_names)), folders)
    assert [model_names[index] for index in order] == folders


def evaluate_script() -> dict:
    return runpy.run_path(str(ROOT / "scripts" / "evaluate_model.py"))


def test_an_output_dir_that_is_a_file_is_refused_in_one_line_before_evaluating(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    argv = ["--model", str(tmp_path / "no-such-model"), "--output-dir", str(tmp_path / "taken"), "--device", "cpu"]
    assert run_script(lambda: evaluate_script()["main"](argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"error: --output-dir {tmp_path / 'taken'} is a file; pass a folder (it is created when missing)."]


@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_a_device_this_machine_lacks_is_a_usage_error(name, capsys):
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as stopped:
        evaluate_script()["parse_args"](["--model", "m", "--device", name])
    assert stopped.value.code == 2
    assert "error: argument --device:" in capsys.readouterr().err


def test_by_default_a_resnet_source_gets_the_default_methods_that_apply_to_it(workspace, tmp_path):
    """Attention rollout needs attention: a CNN source gets the other default methods, unless one is named."""
    source, bcos = tmp_path / "resnet", tmp_path / "bcos-resnet"
    hf_resnet(labels=CLASSES).save_pretrained(source)
    ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0).save_pretrained(source)
    BcosResNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").save_pretrained(bcos)
    settings = {**common_settings(workspace), "model": bcos, "source": source, "faithfulness_images": 0}
    report = evaluate_side_by_side(**settings)
    methods = {row["method"] for row in report["rows"]}
    assert methods == {"bcos", *DEFAULT_METHODS} - {"attention_rollout"}
    with pytest.raises(ValueError, match="Attention Rollout does not apply to"):
        evaluate_side_by_side(**settings, methods=["bcos", "attention_rollout"])


def test_occlusion_explains_a_source_whose_input_size_its_default_squares_do_not_tile(workspace, tmp_path):
    """At 72 px the default squares are 5 px at stride 2, which do not tile 72 px; the last square of each row and
    column ends at the border, so the source is explained and the report written, not refused after the B-cos
    model was evaluated."""
    source, bcos = tmp_path / "source", tmp_path / "bcos"
    save_hf_source(
        hf_vit(hidden=24, layers=1, heads=2, mlp=48, image=72, patch=8, labels=CLASSES),
        source,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    BcosViTForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").save_pretrained(bcos)
    settings = {**common_settings(workspace), "model": bcos, "source": source, "num_grids": 0, "max_images": 2}
    settings.update(faithfulness_images=2, batch_size=256)
    report = evaluate_side_by_side(**settings, methods=["bcos", "occlusion"])
    occluded = report["scores"]["occlusion"]
    assert [row["method"] for row in report["rows"]] == ["bcos", "occlusion"]
    assert len(occluded["deletion"]) == 2 and all(0 <= score <= 1 for score in occluded["deletion"])


@pytest.mark.usefixtures("fashion_mnist")
def test_a_boxed_dataset_named_on_the_command_line_is_scored_by_the_energy_pointing_game(tmp_path):
    """fashion-mnist-canvas-36: garments on 36 px canvases, each item with its box. EPG recomputed: the B-cos model's
    contributions to each label in its 16 px pixels, the box the pixels whose centres, (j + 0.5) 36 / 16 in the
    canvas, lie in it."""
    from bcos_zoo.data.decoys import decoy_splits

    bcos = tmp_path / "bcos"
    vit = hf_vit(hidden=24, layers=1, heads=2, mlp=48, image=16, patch=4, labels=10)
    BcosViTForImageClassification.from_pretrained_standard(vit, b=2.0).save_pretrained(bcos)
    main = evaluate_script()["main"]
    argv = ["--model", str(bcos), "--dataset", "fashion-mnist-canvas-36", "--max-images", "4", "--num-grids", "0"]
    argv += ["--faithfulness-images", "0", "--match-classes", "index", "--device", "cpu"]
    report = main([*argv, "--output-dir", str(tmp_path / "output")])

    model = BcosViTForImageClassification.from_pretrained(bcos).eval()
    items = [decoy_splits(36, decoys=False).validation[index] for index in range(4)]
    pixels = model_transform(model)
    maps = model.explain(
        torch.stack([pixels(image) for image, _, _ in items]), target=torch.tensor([label for _, label, _ in items])
    )
    centres = (torch.arange(16) + 0.5) * 36 / 16
    expected = []
    for positive, (_, _, [[x0, y0, x1, y1]]) in zip(maps.contributions.double().clamp_min(0), items):
        inside = ((centres >= y0) & (centres < y1))[:, None] & ((centres >= x0) & (centres < x1))[None]
        expected.append(float(positive[inside].sum() / positive.sum()))
    assert report["scores"]["bcos"]["energy_pointing_game"] == pytest.approx(expected, abs=1e-6)
    assert report["models"]["bcos"]["energy_pointing_game_skipped"] == 0


@pytest.mark.parametrize("model", ["missing", "image file", "cut-off weights"])
def test_a_model_that_cannot_be_loaded_is_named_in_one_line(workspace, tmp_path, capsys, model):
    path = {"missing": tmp_path / "no-such-model", "image file": tmp_path / "0.png", "cut-off weights": tmp_path / "m"}
    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    shutil.copytree(workspace["bcos"], tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    argv = [*common_args(workspace, tmp_path / "out"), "--model", str(path[model])]  # the later --model counts
    assert run_script(lambda: evaluate_script()["main"](argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected = {
        "missing": "does not exist",
        "image file": "is a file, not a model folder",
        "cut-off weights": "weights cannot be read",
    }
    assert len(lines) == 1 and lines[0].startswith(f"error: --model {path[model]}") and expected[model] in lines[0], (
        lines
    )


def test_an_evaluation_without_faithfulness_leaves_no_earlier_faithfulness_figure_beside_it(full_run, tmp_path):
    """An earlier run's curves in the same --output-dir would pass for this one's."""
    from bcos_zoo.evaluation.report import write_report

    shutil.copy(full_run["output"] / "faithfulness.png", tmp_path / "faithfulness.png")
    report = {key: value for key, value in full_run["report"].items() if key != "faithfulness"}
    written = write_report(report, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in written)
    assert not (tmp_path / "faithfulness.png").exists()
