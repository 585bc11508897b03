"""Publishing: `finetune.py --push` against a loopback Hub, failures mid-push, missing credentials, dry runs."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from tiny_models import TINY_CLASSIFIERS
from training_testing import REPO, child_env, finetune_command, make_image_folder, make_vit_source

from bcos_zoo import BcosViTForImageClassification


pytestmark = pytest.mark.subprocess


SOURCE_ID = "org/tiny-vit"
TARGET_ID = "org/bcos-tiny"
REPO_FILES = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_bcos_vit.py"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("push_inputs")
    source = make_vit_source(root / "source")
    return source, make_image_folder(root / "data")


@pytest.fixture
def hub(inputs):
    """A loopback Hub that already hosts the standard source, so the run B-cosifies a Hub checkpoint."""
    source, _ = inputs
    with FakeHub() as hub:
        hub.seed(SOURCE_ID, {path.name: path.read_bytes() for path in source.iterdir()})
        yield hub


@pytest.fixture(scope="module")
def pushed(inputs, tmp_path_factory):
    """One successful ``finetune.py --push`` run: the hub, the local output folder and a scratch folder."""
    source, _ = inputs
    root = tmp_path_factory.mktemp("pushed")
    with FakeHub() as hub:
        hub.seed(SOURCE_ID, {path.name: path.read_bytes() for path in source.iterdir()})
        completed = run(push_command(inputs, root / "out"), hub.env(root / "home"), root)
        assert completed.returncode == 0, completed.stderr[-3000:]
        yield hub, root / "out", root


def push_command(inputs, output, *extra) -> list[str]:
    _, data = inputs
    return finetune_command(SOURCE_ID, data, output, "--max-steps", "4", "--push", "--hub-model-id", TARGET_ID, *extra)


def run(command, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def pushed_commits(hub: FakeHub) -> list[str]:
    return [commit.message for commit in hub.commits(TARGET_ID) if commit.message != "initial commit"]


def test_push_uploads_one_commit_that_loads_with_remote_code(pushed, tmp_path):
    hub, output, _ = pushed
    assert len(pushed_commits(hub)) == 1
    assert set(hub.files(TARGET_ID)) >= REPO_FILES
    assert hub.files(TARGET_ID)["model.safetensors"] == (output / "repo" / "model.safetensors").read_bytes()

    pixel_values = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = BcosViTForImageClassification.from_pretrained(output / "repo")(pixel_values=pixel_values).logits
    code = f"""
        import sys, json, torch
        sys.modules["bcos_zoo"] = None  # the Hub repo must stand on its own
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained("{TARGET_ID}", trust_remote_code=True)
        pixel_values = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        print(json.dumps(model(pixel_values=pixel_values).logits.tolist()))
    """
    child = run([sys.executable, "-c", textwrap.dedent(code)], hub.env(tmp_path / "home2"), tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    logits = torch.tensor(json.loads(child.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(logits, expected.detach(), rtol=1e-5, atol=1e-6)


def test_pushed_card_parses_names_its_base_model_and_round_trips_its_model_index(pushed):
    hub, _, _ = pushed
    card = ModelCard(hub.files(TARGET_ID)["README.md"].decode())
    assert card.data.base_model == SOURCE_ID
    assert "custom_code" in card.data.tags and card.data.library_name == "transformers"
    model_index = card.data.to_dict()["model-index"]
    name, results = model_index_to_eval_results(model_index)
    assert eval_results_to_model_index(name, results) == model_index
    assert results[0].metric_type == "accuracy"


@pytest.mark.parametrize("failure", ["500", "drop"])
def test_push_failing_mid_commit_keeps_the_local_repo_and_a_second_push_succeeds(hub, inputs, tmp_path, failure):
    output = tmp_path / "out"
    hub.fail_next("commit", failure)
    env = hub.env(tmp_path / "home", HF_HUB_DISABLE_XET="1")  # the plain client path sends a commit exactly once
    completed = run(push_command(inputs, output), env, tmp_path)
    assert completed.returncode == 2
    assert f"Pushing to {TARGET_ID} failed" in completed.stderr and "scripts/push.py" in completed.stderr
    assert pushed_commits(hub) == []
    assert {path.name for path in (output / "repo").iterdir()} >= REPO_FILES
    BcosViTForImageClassification.from_pretrained(output / "repo")  # intact and loadable

    retry = [sys.executable, str(REPO / "scripts" / "push.py"), str(output / "repo"), "--hub-model-id", TARGET_ID]
    completed = run(retry, env, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(pushed_commits(hub)) == 1
    assert hub.files(TARGET_ID)["model.safetensors"] == (output / "repo" / "model.safetensors").read_bytes()


def test_push_without_a_token_fails_before_training(inputs, tmp_path):
    with FakeHub() as hub:
        env = hub.env(tmp_path / "home")
        del env["HF_TOKEN"]
        completed = run(push_command(inputs, tmp_path / "out"), env, tmp_path)
    assert completed.returncode == 2
    assert "No Hugging Face token" in completed.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_push_without_network_fails_before_training(inputs, tmp_path):
    with FakeHub() as hub:
        env = hub.env(tmp_path / "home")
    completed = run(push_command(inputs, tmp_path / "out"), env, tmp_path)  # the server is gone
    assert completed.returncode == 2
    assert "Cannot use the Hub" in completed.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_dry_run_writes_the_repo_tree_and_uploads_nothing(inputs, tmp_path):
    source, data = inputs
    output = tmp_path / "out"
    command = finetune_command(source, data, output, "--max-steps", "2", "--push", "--dry-run")
    completed = run(command, child_env(HF_HUB_OFFLINE="1"), tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "exact tree" in completed.stdout
    for name in REPO_FILES:
        assert (output / "repo" / name).is_file() and name in completed.stdout


PUSHES = {
    "push_to_hub": 'model.push_to_hub("test-user/tiny")',
    "save_pretrained": 'model.save_pretrained("local", push_to_hub=True, repo_id="test-user/tiny")',
}


@pytest.mark.parametrize("how", list(PUSHES))
@pytest.mark.parametrize("family", ["resnet", "clip"])
def test_model_push_to_hub_uploads_its_code_and_processor_and_loads_as_remote_code(family, how, tmp_path):
    """transformers' own ways to publish a model (``push_to_hub``; ``save_pretrained(push_to_hub=True)``), as a user
    publishes without the finetune script."""
    push = f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import torch
        from tiny_models import TINY_CLASSIFIERS
        torch.manual_seed(0)
        model = TINY_CLASSIFIERS[{family!r}]()
        {PUSHES[how]}
    """
    load = """
        import sys, json, torch
        sys.modules["bcos_zoo"] = None  # the Hub repo must stand on its own
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained("test-user/tiny", trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained("test-user/tiny")
        print(json.dumps([type(model).__name__, bool(processor.do_normalize)]))
    """
    with FakeHub() as hub:
        pushed = run([sys.executable, "-c", textwrap.dedent(push)], hub.env(tmp_path / "home1"), tmp_path)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        files = set(hub.files("test-user/tiny"))
        loaded = run([sys.executable, "-c", textwrap.dedent(load)], hub.env(tmp_path / "home2"), tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "bcos_layers.py"} <= files
    assert ("pipeline_bcos_explanation.py" in files) == (family == "resnet")  # a classifier's pipeline
    expected = "BcosCLIPModel" if family == "clip" else "BcosResNetForImageClassification"
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == [expected, False]  # [0, 1] images, no normalisation


def test_a_model_loaded_at_a_pinned_revision_is_saved_with_that_revision_s_pipeline(tmp_path):
    """A user who read the code of one commit and loads the model at it (``revision=``) saves that commit's pipeline
    again, not the one a later commit to the repo holds, which nobody read."""
    torch.manual_seed(0)
    TINY_CLASSIFIERS["vit"]().save_pretrained(tmp_path / "model")
    files = {path.name: path.read_bytes() for path in (tmp_path / "model").iterdir() if path.is_file()}
    reviewed_pipeline = files["pipeline_bcos_explanation.py"]
    save = """
        import sys
        sys.modules["bcos_zoo"] = None  # the model's code is the repo's, as a user without bcos_zoo loads it
        from transformers import AutoModelForImageClassification
        reviewed = sys.argv[1]
        model = AutoModelForImageClassification.from_pretrained("org/tiny", revision=reviewed, trust_remote_code=True)
        model.save_pretrained("saved")
    """
    with FakeHub() as hub:
        reviewed = hub.seed("org/tiny", files, "reviewed")
        hub.seed("org/tiny", {"pipeline_bcos_explanation.py": reviewed_pipeline + b"\nLATER = 1\n"}, "not reviewed")
        command = [sys.executable, "-c", textwrap.dedent(save), reviewed.sha]
        saved = run(command, hub.env(tmp_path / "home"), tmp_path)
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert (tmp_path / "saved" / "pipeline_bcos_explanation.py").read_bytes() == reviewed_pipeline


@pytest.mark.parametrize("content", ["nothing", "images only", "config without weights"])
def test_push_script_refuses_a_folder_that_is_not_a_model_repo_before_touching_the_hub(content, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    if content == "images only":
        make_image_folder(folder)
    elif content == "config without weights":
        (folder / "config.json").write_text("{}")
    script = [sys.executable, str(REPO / "scripts" / "push.py"), str(folder), "--hub-model-id", TARGET_ID]
    with FakeHub() as hub:
        completed = run(script, hub.env(tmp_path / "home"), tmp_path)
        assert hub.repos() == [] and hub.count("commit") == 0
    assert completed.returncode == 2 and "is not a model repo folder" in completed.stderr, completed.stderr[-2000:]
