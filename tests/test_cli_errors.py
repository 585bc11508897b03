"""A user's mistake ends a script with one clear line on stderr and exit code 2, at once; Ctrl-C says how to resume."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from fake_hub import FakeHub
from training_testing import CLASSES, REPO, child_env, finetune_command, make_image_folder, make_vit_source


pytestmark = pytest.mark.subprocess


FINETUNE = str(REPO / "scripts" / "finetune.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_vit_source(root / "source"), make_image_folder(root / "data")


def run_script(arguments: list[str], env: dict, cwd, script: str = FINETUNE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *arguments], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    """The error line of a run that failed as a user error should: exit code 2, one line, no traceback."""
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, completed.stderr[-3000:]
    return lines[0]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def unreachable_hub_env() -> dict:
    env = child_env(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    env.pop("HF_HUB_OFFLINE", None)
    return env


def test_missing_model_folder_is_named(inputs, tmp_path):
    _, data = inputs
    line = one_line_error(run_script(["--model", "./nope", "--dataset", str(data)], child_env(), tmp_path))
    assert "./nope" in line and "does not exist" in line


def test_a_model_without_a_dataset_is_a_usage_error(inputs, tmp_path):
    source, _ = inputs
    line = one_line_error(run_script(["--model", str(source)], child_env(), tmp_path))
    assert line == "error: give --recipe, or both --model and --dataset"


def test_missing_dataset_folder_says_what_a_dataset_folder_is(inputs, tmp_path):
    source, _ = inputs
    line = one_line_error(run_script(["--model", str(source), "--dataset", "./missing"], child_env(), tmp_path))
    assert "does not exist" in line and "class sub-folders" in line


def test_an_output_dir_holding_other_files_is_refused_and_left_as_it_was(inputs, tmp_path):
    source, data = inputs
    before = sorted(path.relative_to(data) for path in data.rglob("*"))
    line = one_line_error(
        run_script(["--model", str(source), "--dataset", str(data), "--output-dir", str(data)], child_env(), tmp_path)
    )
    assert "holds other files" in line and sorted(path.relative_to(data) for path in data.rglob("*")) == before
    (tmp_path / "a_file").write_text("")
    line = one_line_error(
        run_script(
            ["--model", str(source), "--dataset", str(data), "--output-dir", str(tmp_path / "a_file")],
            child_env(),
            tmp_path,
        )
    )
    assert "is a file" in line


@pytest.mark.parametrize("task", ["classification", "standard-classification"])
def test_a_truncated_source_weights_file_ends_the_run_in_one_line(inputs, tmp_path, task):
    source, data = inputs
    copy = shutil.copytree(source, tmp_path / "source")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = one_line_error(
        run_script(["--model", str(copy), "--dataset", str(data), "--task", task], child_env(), tmp_path)
    )
    assert "deserializing header" in line


@pytest.mark.parametrize("task", ["classification", "standard-classification"])
def test_a_dataset_of_one_class_is_refused_before_training(inputs, tmp_path, task):
    source, data = inputs
    one_class = tmp_path / "one_class"
    one_class.mkdir()
    shutil.copytree(data / CLASSES[0], one_class / CLASSES[0])
    line = one_line_error(
        run_script(["--model", str(source), "--dataset", str(one_class), "--task", task], child_env(), tmp_path)
    )
    assert "at least two classes" in line and "has 1" in line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("hub", "expected"),
    [("offline", "HF_HUB_OFFLINE is set"), ("unreachable", "cannot be reached")],
)
def test_dataset_name_that_needs_an_unavailable_hub_fails_at_once(inputs, tmp_path, hub, expected):
    source, _ = inputs
    env = child_env() if hub == "offline" else unreachable_hub_env()
    start = time.monotonic()
    line = one_line_error(run_script(["--model", str(source), "--dataset", "my_images"], env, tmp_path))
    assert "'my_images'" in line and expected in line and "--dataset" in line
    assert time.monotonic() - start < 60  # no retries: the import of torch and transformers is most of it


def test_dataset_name_the_hub_does_not_know_is_refused_before_training(inputs, tmp_path):
    source, _ = inputs
    with FakeHub() as hub:
        completed = run_script(["--model", str(source), "--dataset", "my_images"], hub.env(tmp_path / "h"), tmp_path)
    line = one_line_error(completed)
    assert "neither a local folder nor a dataset on the Hub" in line
    assert not (tmp_path / "outputs").exists()


def test_push_while_offline_suggests_a_dry_run(inputs, tmp_path):
    source, data = inputs
    line = one_line_error(run_script(["--model", str(source), "--dataset", str(data), "--push"], child_env(), tmp_path))
    assert "--dry-run" in line


def test_dry_run_of_a_hub_recipe_offline_says_what_needs_the_hub(tmp_path):
    line = one_line_error(run_script(["--recipe", "bcos-vit-s", "--push", "--dry-run"], child_env(), tmp_path))
    assert "the model 'timm/vit_small_patch16_224.augreg_in21k_ft_in1k'" in line
    assert "the dataset 'ILSVRC/imagenet-1k'" in line and "the push" not in line


def test_other_scripts_end_user_errors_in_one_line(tmp_path):
    evaluate = str(REPO / "scripts" / "evaluate_model.py")
    one_line_error(run_script(["--model", "./nope"], child_env(), tmp_path, script=evaluate))
    push = str(REPO / "scripts" / "push.py")
    one_line_error(run_script([str(tmp_path), "--hub-model-id", "org/name"], child_env(), tmp_path, script=push))


def test_ctrl_c_prints_the_resume_command_and_resume_finishes_the_run(inputs, tmp_path):
    source, data = inputs
    output = tmp_path / "out"
    command = finetune_command(source, data, output, "--max-steps", "30", "--save-steps", "2")
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        # Ctrl-C reaches the run as at a terminal, also where the tests were started with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not (output / "checkpoints" / "checkpoint-2" / "training_time.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "interrupted" in line]
    # the script as the run named it: the command runs from where the run was started
    assert line.startswith(f"interrupted; continue with: python {FINETUNE} ") and line.endswith("--resume")
    (stopped,) = [line for line in stderr.splitlines() if line.startswith("Stopped after step ")]
    step = int(stopped.split()[3].rstrip(","))  # the step Ctrl-C landed in: its checkpoint is the one resumed from

    checkpoints = sorted((output / "checkpoints").glob("checkpoint-*/training_time.json"))
    seconds_before = json.loads(checkpoints[-1].read_text())["seconds"]
    assert seconds_before > 0
    resume = command + ["--resume"]
    resumed = subprocess.run(resume, capture_output=True, text=True, env=child_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and f"checkpoint-{step}" in resumed.stdout.split("Resuming from")[1]
    # the card and results count the time before the interruption too
    assert json.loads((output / "results.json").read_text())["metrics"]["train_seconds"] > seconds_before
    again = subprocess.run(resume, capture_output=True, text=True, env=child_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished run" in again.stdout and "nothing to resume" in again.stdout


def test_an_unreadable_image_ends_the_run_in_one_line_and_resume_finishes_it(inputs, tmp_path):
    source, _ = inputs
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=4)
    make_image_folder(data / "validation", per_class=2, seed=1)
    broken = data / "train" / CLASSES[0] / "broken.png"
    broken.write_bytes(b"not an image")
    command = finetune_command(source, data, tmp_path / "out", "--save-steps", "1")
    line = one_line_error(subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=600))
    assert str(broken) in line and "could not be read as an image" in line and "--resume" in line
    broken.unlink()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=child_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "out" / "results.json").is_file()
