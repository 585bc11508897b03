"""A run evaluated after every epoch keeps every epoch's evaluation when it is resumed from a checkpoint saved at an
epoch's end: the Trainer saves such a checkpoint before it evaluates that epoch."""

import json
import shutil

import pytest
from training_testing import make_image_folder, make_vit_source

from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


pytestmark = pytest.mark.slow


@pytest.fixture
def recipe(tmp_path):
    """Two epochs of two steps each (12 images, batches of 8)."""
    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=4)
    return Recipe(name="bcos-tiny", source=str(source), dataset=str(data), hub_model_id="org/t", epochs=2, batch_size=8)


def evaluations(output) -> list[tuple[float, int, float]]:
    history = json.loads((output / "results.json").read_text())["eval_history"]
    return [(entry["epoch"], entry["step"], entry["eval_loss"]) for entry in history]


def test_a_run_resumed_from_its_last_checkpoint_keeps_the_last_epochs_evaluation(recipe, tmp_path):
    output = tmp_path / "out"
    finetune(recipe, output, device="cpu", eval_each_epoch=True)
    uninterrupted = evaluations(output)
    assert [(epoch, step) for epoch, step, _ in uninterrupted] == [(1.0, 2), (2.0, 4)]
    shutil.rmtree(output / "repo")  # what a kill after the last checkpoint leaves
    (output / "results.json").unlink()
    finetune(recipe, output, device="cpu", eval_each_epoch=True, resume=True)
    resumed = evaluations(output)
    assert [(epoch, step) for epoch, step, _ in resumed] == [(1.0, 2), (2.0, 4)]
    assert [loss for *_, loss in resumed] == pytest.approx([loss for *_, loss in uninterrupted])
