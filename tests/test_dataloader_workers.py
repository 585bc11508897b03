"""Data loading in worker processes: the transforms a dataset holds survive pickling, which DataLoader workers
started by spawn or forkserver (the default on macOS, Windows and, from Python 3.14, Linux) need, and a run loaded
by such workers trains exactly as one loaded in the main process."""

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_models import TINY_CLASSIFIERS
from training_testing import child_env, make_image_folder, make_vit_source

from bcos_zoo.data.boxes import BoxResizeTransform, BoxTrainingTransform
from bcos_zoo.data.datasets import FileImages
from bcos_zoo.data.preprocessing import ProcessorTransform, model_transform, training_transform
from bcos_zoo.evaluation.localisation import ModelInputs
from bcos_zoo.training import TASKS, get_task
from bcos_zoo.training.guided_classification import processor_box_transform
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
BOXES = np.array([[4.0, 6.0, 30.0, 28.0]])
MODEL = TINY_CLASSIFIERS["resnet"]()

TRANSFORMS = {
    "the model's processor": lambda: ProcessorTransform(MODEL.default_image_processor()),
    "the model's transform": lambda: model_transform(MODEL),
    "training augmentation": lambda: training_transform(32),
    "boxes, training augmentation": lambda: BoxTrainingTransform(32, (0.3, 1.0)),
    "boxes, resized": lambda: BoxResizeTransform(32),
    "boxes, the model's processor": lambda: processor_box_transform(MODEL),
}


def applied(transform, takes_boxes: bool):
    state = random.getstate()
    with torch.random.fork_rng():  # the same augmentation for the transform and its copy (timm draws from random)
        random.seed(0), torch.manual_seed(0)
        try:
            return transform(IMAGE, BOXES) if takes_boxes else transform(IMAGE)
        finally:
            random.setstate(state)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_transform_gives_the_same_pixels_after_a_pickle_round_trip(name):
    transform = TRANSFORMS[name]()
    copy = pickle.loads(pickle.dumps(transform))
    takes_boxes = name.startswith("boxes")
    expected, result = applied(transform, takes_boxes), applied(copy, takes_boxes)
    for left, right in zip(*((x,) if torch.is_tensor(x) else x for x in (expected, result))):
        assert torch.equal(left, right)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_task_s_collate_pickles_without_the_task(task):
    """Workers receive the collate function pickled: a bound method would carry the task, a teacher included."""
    collate = get_task(Recipe(name="t", source="scratch", dataset="d", hub_model_id="o/t", task=task)).collate
    assert len(pickle.dumps(collate)) < 200


def test_the_evaluation_s_images_pickle_with_their_transform_for_its_workers(tmp_path):
    """``evaluate_model.py --dataloader-num-workers``: its workers receive the images and the model's transform."""
    IMAGE.save(tmp_path / "image.png")
    inputs = ModelInputs(FileImages([tmp_path / "image.png"], [1]), model_transform(MODEL))
    copy = pickle.loads(pickle.dumps(inputs))
    assert torch.equal(copy[0][0], inputs[0][0]) and copy[0][1] == 1


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_loaded_by_spawned_workers_trains_and_evaluates_as_one_loaded_in_process(tmp_path):
    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=4)
    recipe = Recipe(
        name="bcos-tiny", source=str(source), dataset=str(data), hub_model_id="org/t", epochs=1, batch_size=8
    )
    finetune(recipe, tmp_path / "in-process", device="cpu", eval_each_epoch=True)
    code = f"""
        import multiprocessing
        from bcos_zoo.zoo.finetune import finetune
        from bcos_zoo.zoo.recipes import Recipe
        if __name__ == "__main__":
            multiprocessing.set_start_method("spawn")
            recipe = Recipe(**{recipe.__dict__!r})
            workers = {str(tmp_path / "workers")!r}
            finetune(recipe, workers, device="cpu", eval_each_epoch=True, dataloader_num_workers=1)
    """
    (tmp_path / "run.py").write_text(textwrap.dedent(code))
    completed = subprocess.run(
        [sys.executable, str(tmp_path / "run.py")], env=child_env(), capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected = load_file(tmp_path / "in-process" / "repo" / "model.safetensors")
    trained = load_file(tmp_path / "workers" / "repo" / "model.safetensors")
    assert expected.keys() == trained.keys()
    assert all(torch.equal(expected[name], trained[name]) for name in expected)


def _ctrl_c_run(tmp_path, start: str, at: str, signum: int = signal.SIGINT) -> str:
    """A tiny run with one data-loading worker started by ``start`` in a process group of its own, given a terminal's
    Ctrl-C (or ``signum``) to every process of the group when its output shows ``at``; what it printed."""
    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=16)
    recipe = Recipe(
        name="t", source=str(source), dataset=str(data), hub_model_id="org/t", epochs=8, batch_size=4, save_steps=1000
    )
    code = f"""
        import multiprocessing, sys, time
        from transformers import TrainerCallback
        import bcos_zoo.zoo.finetune as finetuning
        from bcos_zoo.zoo.recipes import Recipe

        class Steps(TrainerCallback):  # says where training is, and gives the signal time to land mid-run
            def on_step_end(self, args, state, control, **kwargs):
                print(f"step {{state.global_step}}", flush=True)
                time.sleep(0.2)

            def on_epoch_begin(self, args, state, control, **kwargs):
                print(f"epoch {{state.epoch:g}} begins", flush=True)

        if __name__ == "__main__":
            multiprocessing.set_start_method({start!r})
            callbacks = finetuning.trainer_callbacks
            finetuning.trainer_callbacks = lambda *args, **kwargs: [*callbacks(*args, **kwargs), Steps()]
            try:
                finetuning.finetune(Recipe(**{recipe.__dict__!r}), {str(tmp_path / "run")!r}, device="cpu",
                                    dataloader_num_workers=1)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """
    (tmp_path / "run.py").write_text(textwrap.dedent(code))
    child = subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py")],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's
    )
    try:
        lines = []
        for line in child.stdout:
            lines.append(line)
            if line.rstrip().endswith(at):  # after the progress bar, on its line
                time.sleep(0.5)
                os.killpg(child.pid, signum)
                break
        return "".join(lines) + child.communicate(timeout=300)[0]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_ctrl_c_to_a_run_with_spawned_workers_saves_the_step_and_ends_as_interrupted(tmp_path, start):
    """A terminal's Ctrl-C reaches every process of the group, the workers too (Windows' console likewise)."""
    output = _ctrl_c_run(tmp_path, start, "step 3")
    assert "interrupted" in output.splitlines() and "Stopped after step " in output, output[-3000:]
    saved = [path.name for path in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")]
    assert len(saved) == 1 and f"saved as {saved[0]}" in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_while_an_epoch_s_spawned_worker_starts_ends_the_run_as_interrupted_with_the_steps_done_saved(tmp_path):
    """Each epoch starts its workers anew, and a spawned one dies of a Ctrl-C in its seconds of start-up, before it
    can leave Ctrl-C to the main process."""
    output = _ctrl_c_run(tmp_path, "spawn", "epoch 1 begins")
    assert "interrupted" in output.splitlines(), output[-3000:]
    assert "A data-loading worker died of the same signal." in output
    saved = sorted(int(path.name.split("-")[1]) for path in (tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert f"Saved the steps done as checkpoint-{saved[-1]}." in output, output[-3000:]
    assert "RuntimeError" not in output, output[-3000:]  # the worker's own dying words are its KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigterm_to_every_process_of_a_run_with_workers_ends_it_as_interrupted(tmp_path):
    """As a cluster's scheduler sends it at a time limit: the workers die of it, the main process takes note."""
    output = _ctrl_c_run(tmp_path, "fork", "step 3", signal.SIGTERM)
    assert "interrupted" in output.splitlines() and "SIGTERM: a checkpoint" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow  # a short run
def test_a_run_s_final_evaluation_reads_its_images_with_the_run_s_worker_count(tmp_path, monkeypatch):
    """A user who turns workers off (e.g. where shared memory is too small for them) keeps them off to the end."""
    import bcos_zoo.training.classification as classification

    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=3)
    recipe = Recipe(name="t", source=str(source), dataset=str(data), hub_model_id="org/t", max_steps=1, batch_size=8)
    counts, predict = [], classification.predict

    def counted_predict(*args, num_workers=None, **kwargs):
        counts.append(num_workers)
        return predict(*args, num_workers=num_workers, **kwargs)

    monkeypatch.setattr(classification, "predict", counted_predict)
    finetune(recipe, tmp_path / "run", device="cpu", dataloader_num_workers=1)
    assert counts == [1, 1]  # the B-cos model and its source
