"""Accumulated batches train as one batch of all their images, a short last batch of an epoch included: a step's
gradient is the mean over its images, however they are split into batches (models without BatchNorm)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback, TrainingArguments

from bcos_zoo.training import get_task
from bcos_zoo.training.recipe import Recipe
from bcos_zoo.training.trainer import ZooTrainer, training_arguments


VIT = dict(
    image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=48
)
CLASSES = ["red", "green", "blue"]


def colour_items(count: int) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(0)
    items = []
    for index in range(count):
        pixels = rng.uniform(0, 120, size=(32, 32, 3))
        pixels[..., index % 3] += 120
        items.append((Image.fromarray(pixels.astype(np.uint8)), index % 3))
    return items


class FirstStepGradients(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def first_step(task_name: str, items, batch_size: int, accumulation: int, tmp_path) -> tuple[dict, list[dict]]:
    """The gradients of a run's first optimiser step, and its training log."""
    architecture = VIT if task_name == "classification" else {**VIT, "model_type": "vit"}
    recipe = Recipe(
        name="t", source="scratch", dataset="d", hub_model_id="o/t", task=task_name, architecture=architecture,
        batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1, precision="fp32",
    )  # fmt: skip
    task = get_task(recipe)
    torch.manual_seed(0)
    model = task.build_model(CLASSES)
    arguments = training_arguments(
        recipe, tmp_path / f"{batch_size}x{accumulation}", device="cpu", save_strategy="no", logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    grab = FirstStepGradients()
    trainer = task.build_trainer(
        model, arguments, train_dataset=task.dataset(items, task.train_transform(model), seed=0),
        data_collator=task.collate, callbacks=[grab],
    )  # fmt: skip
    trainer.train()
    return grab.gradients, trainer.state.log_history


@pytest.mark.slow  # two short trainings per task
@pytest.mark.parametrize("task_name", ["classification", "standard-classification"])
def test_a_step_of_a_batch_of_four_and_a_short_one_of_two_trains_as_one_batch_of_six(task_name, tmp_path):
    items = colour_items(6)  # one epoch: batches (6) or (4, 2)
    whole, whole_log = first_step(task_name, items, 8, 1, tmp_path)
    split, split_log = first_step(task_name, items, 4, 2, tmp_path)
    assert whole.keys() == split.keys()
    for name, gradient in whole.items():
        torch.testing.assert_close(split[name], gradient, rtol=1e-4, atol=1e-7, msg=name)
    assert split_log[0]["loss"] == pytest.approx(whole_log[0]["loss"], rel=1e-5)


def test_a_logged_loss_term_is_its_mean_over_the_images_it_was_computed_on(tmp_path):
    """Not the mean of its batches' means, which would depend on how a step's images are split into batches."""
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = ZooTrainer(model=torch.nn.Linear(1, 1), args=arguments)
    trainer.tally("energy_loss", torch.tensor(1.0), count=1)
    trainer.tally("energy_loss", 4.0, count=3)
    trainer.log({"loss": 0.5})
    assert trainer.state.log_history[-1]["energy_loss"] == 3.25
