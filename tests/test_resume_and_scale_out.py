"""Interrupted runs resume to the same result, and accelerate runs data-parallel over several processes."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from training_testing import child_env, finetune_command, make_image_folder, make_vit_source

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.training.trainer import weights_digest


pytestmark = pytest.mark.subprocess


STEPS = ["--max-steps", "40", "--save-steps", "10", "--seed", "3"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_vit_source(root / "source"), make_image_folder(root / "data")


def run(command: list[str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def kill_after_first_checkpoint(command: list[str], last_file) -> None:
    """Start a run and SIGKILL it as soon as ``last_file`` of its first checkpoint is written."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env())
    deadline = time.monotonic() + 300
    while not last_file.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"


def final_state(output) -> tuple[dict, dict]:
    return load_file(output / "repo" / "model.safetensors"), json.loads((output / "results.json").read_text())


def test_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(inputs, tmp_path):
    source, data = inputs
    run(finetune_command(source, data, tmp_path / "straight", *STEPS))
    interrupted = tmp_path / "interrupted"
    command = finetune_command(source, data, interrupted, *STEPS)
    kill_after_first_checkpoint(command, interrupted / "checkpoints" / "checkpoint-10" / "training_time.json")
    assert not (interrupted / "repo").exists()
    run(command + ["--resume"])

    straight_weights, straight = final_state(tmp_path / "straight")
    resumed_weights, resumed = final_state(interrupted)
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["metrics"]["accuracy"] == straight["metrics"]["accuracy"]
    # the whole run's mean loss, not only that of the steps after the resume
    assert resumed["metrics"]["train_loss"] == pytest.approx(straight["metrics"]["train_loss"], rel=1e-6)
    report = json.loads((interrupted / "ranks" / "rank-0.json").read_text())
    assert (report["global_step"], report["samples_seen_here"]) == (40, 40 * 8)  # the whole run's, not since step 10


@pytest.mark.slow
def test_an_unreadable_training_image_saves_the_steps_done_and_resume_reaches_the_uninterrupted_result(
    inputs, tmp_path
):
    source, _ = inputs
    data = tmp_path / "data"
    make_image_folder(data / "train")
    make_image_folder(data / "validation", per_class=2, seed=1)
    steps = ["--max-steps", "12", "--save-steps", "100", "--seed", "3"]  # no checkpoint before the run ends
    run(finetune_command(source, data, tmp_path / "straight", *steps))
    image = data / "train" / "red" / "5.png"
    readable = image.read_bytes()
    image.write_bytes(readable[:100])  # truncated: read when its batch comes, not when the folder is listed
    output = tmp_path / "broken"
    command = finetune_command(source, data, output, *steps)
    failed = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600)
    assert failed.returncode == 2 and str(image) in failed.stderr, failed.stderr[-3000:]
    (saved,) = [line for line in failed.stderr.splitlines() if line.startswith("Saved the steps done as checkpoint-")]
    step = int(saved.rstrip(".").rsplit("-", 1)[1])
    assert step >= 1, "the seed put the image in the first step: nothing to save"
    assert (output / "checkpoints" / f"checkpoint-{step}" / "training_time.json").is_file()

    image.write_bytes(readable)
    resumed = run(command + ["--resume"])
    assert f"checkpoint-{step}" in resumed.stdout.split("Resuming from")[1].split()[0]
    straight_weights, straight = final_state(tmp_path / "straight")
    resumed_weights, result = final_state(output)
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert result["metrics"]["train_loss"] == pytest.approx(straight["metrics"]["train_loss"], rel=1e-6)


SHORT = ["--max-steps", "20", "--save-steps", "10"]


@pytest.fixture(scope="module")
def finished_run(inputs, tmp_path_factory):
    """A finished run of 20 steps, with checkpoints at steps 10 and 20."""
    source, data = inputs
    output = tmp_path_factory.mktemp("finished") / "out"
    run(finetune_command(source, data, output, *SHORT))
    return output


@pytest.mark.parametrize(
    "cut_off", ["trainer_state.json missing", "training_time.json missing", "training_time.json empty"]
)
def test_resume_skips_a_checkpoint_that_was_cut_off_while_saving_and_counts_the_whole_run_s_time(
    inputs, finished_run, tmp_path, cut_off
):
    output = tmp_path / "out"
    shutil.copytree(finished_run, output)
    # as if killed while saving checkpoint-20 (the Trainer's files first, the training time last), before anything
    # after it was written
    name, state = cut_off.split()
    cut = output / "checkpoints" / "checkpoint-20" / name
    if state == "empty":
        cut.write_text("")
    else:
        cut.unlink()
    shutil.rmtree(output / "repo")
    (output / "results.json").unlink()
    before = json.loads((output / "checkpoints" / "checkpoint-10" / "training_time.json").read_text())["seconds"]

    completed = run(finetune_command(*inputs, output, *SHORT, "--resume"))
    assert "not completely written" in completed.stderr
    assert "Resuming from" in completed.stdout and completed.stdout.split("Resuming from")[1].split()[0].endswith("-10")
    # the time up to checkpoint-10 and that of the steps trained since, not only the latter
    assert json.loads((output / "results.json").read_text())["metrics"]["train_seconds"] > before


@pytest.mark.slow
def test_resume_makes_the_end_of_a_run_again_when_its_results_were_cut_off(inputs, finished_run, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(finished_run, output)
    written = (output / "results.json").read_text()
    (output / "results.json").write_text(written[: len(written) // 2])  # as a write killed part-way leaves it

    completed = run(finetune_command(*inputs, output, *SHORT, "--resume"))
    assert "results.json is cut off" in completed.stderr
    assert (
        json.loads((output / "results.json").read_text())["metrics"]["accuracy"]
        == json.loads(written)["metrics"]["accuracy"]
    )


def test_two_accelerate_processes_train_the_same_model(inputs, tmp_path):
    source, data = inputs
    output = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = finetune_command(source, data, output, "--max-steps", "6", "--save-steps", "6")
    run(launcher + command[1:])

    reports = [json.loads((output / "ranks" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [report["world_size"] for report in reports] == [2, 2]
    # six steps of a batch of 8 per process (finetune_command's --batch-size is per process)
    assert all(report["global_step"] == 6 and report["samples_seen_here"] == 6 * 8 for report in reports)
    assert all(report["start_weights"] != report["end_weights"] for report in reports), "a rank did not train"
    assert reports[0]["end_weights"] == reports[1]["end_weights"], "the ranks ended on different weights"
    saved = BcosViTForImageClassification.from_pretrained(output / "repo")
    assert weights_digest(saved) == reports[0]["end_weights"]


def test_two_processes_distil_clip_as_one_process_with_their_global_batch(inputs, tmp_path):
    import clip_testing

    _, data = inputs
    source = tmp_path / "clip"
    clip_testing.save_source(source)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    steps = ["--task", "clip-distillation", "--max-steps", "3", "--save-steps", "3", "--seed", "3"]
    one = finetune_command(source, data, tmp_path / "one", *steps, "--batch-size", "8")
    two = finetune_command(source, data, tmp_path / "two", *steps, "--batch-size", "4")
    run(one)
    run(launcher + two[1:])
    alone, together = (load_file(tmp_path / name / "repo" / "model.safetensors") for name in ("one", "two"))
    assert alone.keys() == together.keys()
    for name, value in alone.items():
        torch.testing.assert_close(together[name], value, rtol=1e-4, atol=1e-5, msg=name)
    report = json.loads((tmp_path / "two" / "ranks" / "rank-0.json").read_text())
    assert report["world_size"] == 2 and report["start_weights"] != report["end_weights"]
