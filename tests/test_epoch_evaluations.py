"""A run evaluated after every epoch keeps every epoch's evaluation when it is resumed from a checkpoint saved at an
epoch's end: the Trainer saves such a checkpoint before it evaluates that epoch."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
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


def test_a_run_resumed_from_its_last_checkpoint_part_way_through_an_epoch_trains_no_step_more(tmp_path):
    """transformers would train one step more, at learning rate 0: BatchNorm would count its batch."""
    data = make_image_folder(tmp_path / "data", per_class=8)
    resnet = {"model_type": "bcos_resnet", "image_size": 32, "embedding_size": 8, "hidden_sizes": [8, 16]}
    recipe = Recipe(
        name="t", source="scratch", architecture={**resnet, "depths": [1, 1], "layer_type": "basic"},
        dataset=str(data), hub_model_id="org/t", max_steps=2, batch_size=8,
    )  # fmt: skip
    output = tmp_path / "out"
    finetune(recipe, output, device="cpu", eval_each_epoch=True)
    uninterrupted, weights = evaluations(output), load_file(output / "repo" / "model.safetensors")
    assert [(epoch, step) for epoch, step, _ in uninterrupted] == [(pytest.approx(2 / 3), 2)]  # 3 batches an epoch
    shutil.rmtree(output / "repo")  # what a kill after the last checkpoint leaves
    (output / "results.json").unlink()
    finetune(recipe, output, device="cpu", eval_each_epoch=True, resume=True)
    resumed = load_file(output / "repo" / "model.safetensors")
    assert [name for name in weights if not torch.equal(weights[name], resumed[name])] == []  # running statistics too
    assert json.loads((output / "ranks" / "rank-0.json").read_text())["global_step"] == 2
    assert [entry[:2] for entry in evaluations(output)] == [entry[:2] for entry in uninterrupted]
    assert [entry[2] for entry in evaluations(output)] == pytest.approx([entry[2] for entry in uninterrupted])
