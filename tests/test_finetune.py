"""The fine-tuning path: B-cosify, train with the HF Trainer, evaluate, write the repo folder."""

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from training_testing import CLASSES, child_env, finetune_command, make_image_folder, make_vit_source

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.zoo.finetune import finetune, last_complete_checkpoint
from bcos_zoo.zoo.recipes import Recipe


# every test reads one twelve-step fine-tuning run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short run on tiny data, shared by the tests that only read its outputs."""
    root = tmp_path_factory.mktemp("run")
    source = make_vit_source(root / "source")
    data = make_image_folder(root / "data")
    recipe = Recipe(
        name="bcos-tiny",
        source=str(source),
        dataset=str(data),
        hub_model_id="org/bcos-tiny",
        max_steps=12,
        batch_size=8,
        learning_rate=1e-3,
        save_steps=6,
    )
    umask = os.umask(0o022)  # a shared machine's: files readable by all
    try:
        result = finetune(recipe, root / "out", device="cpu")
    finally:
        os.umask(umask)
    return source, result


def test_training_changes_the_converted_weights(tiny_run):
    source, result = tiny_run
    converted = BcosViTForImageClassification.from_pretrained_standard(str(source))
    trained = load_file(result.repo_dir / "model.safetensors")
    assert not torch.equal(trained["classifier.weight"], converted.classifier.weight.detach())


def test_repo_folder_holds_weights_code_processor_card_and_examples(tiny_run):
    _, result = tiny_run
    names = {path.relative_to(result.repo_dir).as_posix() for path in result.repo_dir.rglob("*") if path.is_file()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
    assert "modeling_bcos_vit.py" in names and "bcos_layers.py" in names
    assert any(name.startswith("examples/") and name.endswith(".png") for name in names)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)


def held_out_accuracy(model_folder, data_folder) -> float:
    """Top-1 accuracy of the classifier in ``model_folder`` (a plain transformers ViT or the B-cos one), on the held-out
    images of ``data_folder``, each prepared by the folder's own image processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from bcos_zoo.data.datasets import load_dataset_splits

    model = AutoModelForImageClassification.from_pretrained(model_folder).eval()
    processor = AutoImageProcessor.from_pretrained(model_folder)
    images, labels = zip(*load_dataset_splits(str(data_folder)).validation)
    with torch.no_grad():
        predicted = model(**processor(list(images), return_tensors="pt")).logits.argmax(dim=1)
    return float((predicted == torch.tensor(labels)).double().mean())


def test_model_is_evaluated_against_its_source(tiny_run):
    source, result = tiny_run
    data = result.output_dir.parent / "data"
    assert result.metrics["accuracy"] == pytest.approx(held_out_accuracy(result.repo_dir, data))
    assert result.metrics["source_accuracy"] == pytest.approx(held_out_accuracy(source, data))  # the standard ViT
    saved = json.loads((result.output_dir / "results.json").read_text())
    assert saved["metrics"]["accuracy"] == result.metrics["accuracy"]


def test_classes_are_named_after_the_data(tiny_run):
    _, result = tiny_run
    model = BcosViTForImageClassification.from_pretrained(result.repo_dir)
    assert [model.config.id2label[i] for i in range(len(CLASSES))] == sorted(CLASSES)  # folder order


def test_card_shows_the_measured_accuracy_in_its_model_index(tiny_run):
    _, result = tiny_run
    card = ModelCard.load(result.repo_dir / "README.md")
    (evaluation,) = card.data.eval_results
    assert evaluation.metric_value == pytest.approx(result.metrics["accuracy"], abs=1e-4)
    assert card.data.library_name == "transformers"
    assert "trust_remote_code=True" in card.text and "revision=" in card.text


def test_checkpoints_are_kept_for_resuming(tiny_run):
    _, result = tiny_run
    checkpoint = last_complete_checkpoint(result.output_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.endswith("checkpoint-12")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_run_s_weights_are_as_readable_as_its_other_files(tiny_run):
    """The safetensors writer makes its files 0600: another user, or a container's, could read all but the weights."""
    _, result = tiny_run
    checkpoint = Path(last_complete_checkpoint(result.output_dir / "checkpoints"))
    for folder in (result.repo_dir, checkpoint):
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == stat.S_IMODE(
            (folder / "config.json").stat().st_mode
        ), folder


@pytest.mark.subprocess
def test_rerun_into_used_output_dir_without_resume_is_refused(tiny_run, tmp_path):
    source, result = tiny_run
    command = finetune_command(source, tmp_path, result.output_dir, "--max-steps", "12")
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300)
    assert completed.returncode == 2
    assert "--resume" in completed.stderr
