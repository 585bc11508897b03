"""What ``finetune`` refuses before it trains (and leaves untouched), what a ``resume`` may change, and that the repo
folder holds exactly one run's files."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fake_hub import GITATTRIBUTES, fake_hub_fixture  # noqa: F401
from huggingface_hub import ModelCard, constants
from training_testing import make_image_folder, make_vit_source
from transformers import ViTForImageClassification

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.training.recipe import recipe_record
from bcos_zoo.training.trainer import with_precision
from bcos_zoo.zoo.finetune import check_before_training, finetune, run_folder
from bcos_zoo.zoo.hub import PushError
from bcos_zoo.zoo.recipes import Recipe


REPO_ID = "test-user/bcos-tiny"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_vit_source(root / "source"), make_image_folder(root / "data", per_class=4)


@pytest.fixture(scope="module")
def bcos_checkpoint(inputs, tmp_path_factory):
    """A B-cos checkpoint at B = 1.5 with its biases kept: neither is the recipe's default."""
    folder = tmp_path_factory.mktemp("bcos_checkpoint")
    model = BcosViTForImageClassification.from_pretrained_standard(str(inputs[0]), b=1.5, bias="keep")
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def recipe(inputs):
    source, data = inputs
    return Recipe(
        name="bcos-tiny", source=str(source), dataset=str(data), hub_model_id=REPO_ID, max_steps=2, batch_size=8
    )


def snapshot(folder) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def finished_run(output, recipe: Recipe) -> None:
    """The outputs of a finished run whose checkpoints were deleted (to save disk): a repo/ that loads (a push
    checks that), results and the recipe (in the precision a run on the CPU records)."""
    recipe = with_precision(recipe, "cpu")
    BcosViTForImageClassification.from_pretrained_standard(recipe.source).save_pretrained(output / "repo")
    (output / "repo" / "examples").mkdir(parents=True)
    (output / "repo" / "README.md").write_text("# bcos-tiny\n")
    (output / "repo" / "examples" / "explanation_0.png").write_bytes(b"png")
    (output / "recipe.json").write_text(json.dumps(recipe_record(recipe)))
    results = {"recipe": recipe_record(recipe), "repo_id": recipe.hub_model_id, "metrics": {"accuracy": 0.5}}
    (output / "results.json").write_text(json.dumps(results))


def test_a_rerun_into_a_used_output_dir_without_checkpoints_is_refused_and_changes_nothing(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    before = snapshot(tmp_path / "out")
    with pytest.raises(ValueError, match="holds an earlier run .*--resume"):
        finetune(recipe, tmp_path / "out", device="cpu")
    assert snapshot(tmp_path / "out") == before


MADE_BY_HAND = {  # a user's own folder that holds one of the names a run writes
    "repo": {"repo/notes.txt": "mine"},
    "results.json": {"results.json": "{}"},
    "checkpoint": {
        "checkpoints/checkpoint-1/trainer_state.json": "{}",
        "checkpoints/checkpoint-1/training_time.json": '{"seconds": 1}',
    },
}


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("made", list(MADE_BY_HAND))
def test_a_folder_with_a_run_s_names_but_no_recipe_is_refused_and_changes_nothing(recipe, tmp_path, made, resume):
    """A folder of the user's own that happens to hold ``repo/`` (or another of a run's names) is no run: resuming
    it would replace that ``repo/`` with the new run's."""
    for name, text in MADE_BY_HAND[made].items():
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_text(text)
    before = snapshot(tmp_path / "out")
    with pytest.raises(ValueError, match="no recipe.json, which every run writes before it trains"):
        finetune(recipe, tmp_path / "out", resume=resume, device="cpu")
    assert snapshot(tmp_path / "out") == before


def test_resume_with_a_recipe_that_trains_differently_is_refused_naming_the_fields(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    before = snapshot(tmp_path / "out")
    changed = replace(recipe, learning_rate=1e-2, dataset=str(tmp_path / "other"), hub_model_id="test-user/other")
    with pytest.raises(ValueError, match="another recipe") as refusal:
        finetune(changed, tmp_path / "out", resume=True, device="cpu")
    message = str(refusal.value)
    assert "learning_rate" in message and "dataset" in message and "fresh --output-dir" in message
    assert "hub_model_id" not in message
    assert snapshot(tmp_path / "out") == before


def test_a_run_records_its_precision_and_processes_and_a_resume_in_another_precision_is_refused(recipe, tmp_path):
    result = finetune(recipe, tmp_path / "out", device="cpu")
    record = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert record["precision"] == "fp32" and record["processes"] == 1
    card = (result.repo_dir / "README.md").read_text()
    assert "| precision | float32 |" in card and " --precision fp32" in card.split("Reproduce with `")[1]
    shutil.rmtree(tmp_path / "out" / "repo")  # as after an interruption: the run resumes from its checkpoint
    with pytest.raises(ValueError, match=r"another recipe \(precision 'fp32' -> 'bf16'"):
        finetune(replace(recipe, precision="bf16"), tmp_path / "out", resume=True, device="cpu")


def test_resume_on_another_number_of_processes_is_refused_with_the_launch_that_continues_it(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    (tmp_path / "out" / "results.json").unlink()  # not finished: the resume would train
    stored = tmp_path / "out" / "recipe.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "processes": 2}))
    before = snapshot(tmp_path / "out")
    with pytest.raises(ValueError, match=r"started on 2 process\(es\), this one has 1.*--multi_gpu --num_processes 2"):
        finetune(recipe, tmp_path / "out", resume=True, device="cpu")
    assert snapshot(tmp_path / "out") == before


def test_a_run_recorded_before_runs_recorded_their_precision_resumes(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    stored = tmp_path / "out" / "recipe.json"
    stored.write_text(json.dumps({k: v for k, v in json.loads(stored.read_text()).items() if k != "precision"}))
    assert finetune(recipe, tmp_path / "out", resume=True, device="cpu").metrics == {"accuracy": 0.5}


def test_a_finished_run_of_other_processes_and_precision_is_reported_here_as_it_was_recorded(recipe, tmp_path):
    finished_run(tmp_path / "out", replace(recipe, precision="bf16"))  # as two bf16 GPUs left it
    stored = tmp_path / "out" / "recipe.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "processes": 2}))
    assert finetune(recipe, tmp_path / "out", resume=True, device="cpu").metrics == {"accuracy": 0.5}


def test_a_run_that_fails_in_training_gives_ctrl_c_back(recipe, tmp_path):
    import signal

    data = tmp_path / "data"
    shutil.copytree(recipe.dataset, data)
    for image in data.rglob("*.png"):
        image.write_bytes(b"not an image")  # the first batch fails
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(ValueError, match="could not be read as an image"):
            finetune(replace(recipe, dataset=str(data)), tmp_path / "out", device="cpu")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_accepts_the_same_folders_named_by_another_path(recipe, tmp_path, monkeypatch):
    finished_run(tmp_path / "out", recipe)
    monkeypatch.chdir(Path(recipe.dataset).parent)
    respelled = replace(
        recipe, dataset=f"./{Path(recipe.dataset).name}", source=f"../{Path(recipe.source).parent.name}/source"
    )
    result = finetune(respelled, tmp_path / "out", resume=True, device="cpu")
    assert result.metrics == {"accuracy": 0.5}


def test_a_finished_run_reports_itself_again_with_the_card_fields_it_was_written_with(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    before = snapshot(tmp_path / "out")
    result = finetune(recipe, tmp_path / "out", resume=True, device="cpu")
    assert result.metrics == {"accuracy": 0.5} and result.commit_url is None
    assert snapshot(tmp_path / "out") == before


def test_a_finished_run_refuses_card_fields_its_written_card_does_not_have(recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    before = snapshot(tmp_path / "out")
    renamed = replace(recipe, summary="Mine.", license="mit")
    with pytest.raises(ValueError, match=r"were written with license 'apache-2.0', summary ''.*Nothing was changed"):
        finetune(renamed, tmp_path / "out", resume=True, device="cpu")
    assert snapshot(tmp_path / "out") == before


@pytest.fixture
def hub(fake_hub, monkeypatch):
    """The loopback Hub as this process's endpoint, logged in with its token."""
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    return fake_hub


def test_push_with_resume_uploads_the_repo_of_a_finished_run(hub, recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    result = finetune(recipe, tmp_path / "out", resume=True, push=True, device="cpu")
    assert result.commit_url is not None
    assert hub.files(REPO_ID) == {**snapshot(tmp_path / "out" / "repo"), ".gitattributes": GITATTRIBUTES}


def test_push_of_a_finished_run_to_another_repo_than_its_card_names_is_refused(hub, recipe, tmp_path):
    finished_run(tmp_path / "out", recipe)
    with pytest.raises(ValueError, match=f"were written with hub_model_id '{REPO_ID}'"):
        finetune(replace(recipe, hub_model_id="test-user/other"), tmp_path / "out", resume=True, push=True)
    assert hub.repos() == []


def test_an_invalid_hub_model_id_is_refused_before_training(hub, recipe):
    with pytest.raises(PushError, match="not a Hub repo id"):
        check_before_training(replace(recipe, hub_model_id="my org/bcos tiny"), push=True, dry_run=False)


def test_a_missing_card_template_is_refused_before_training(recipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.md"):
        finetune(replace(recipe, card_template="nope.md"), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_device_cuda_without_a_cuda_device_is_refused_before_training(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cuda"):
        finetune(recipe, tmp_path / "out", device="cuda")
    assert not (tmp_path / "out").exists()


def test_an_output_dir_inside_the_dataset_folder_is_refused(inputs, recipe):
    _, data = inputs
    before = snapshot(data)
    with pytest.raises(ValueError, match="inside the --dataset folder"):
        finetune(recipe, data / "runs" / "first", device="cpu")
    assert snapshot(data) == before


@pytest.mark.parametrize("asked", [{"b": 3.0}, {"bias": "keep", "b": 2.5}])
def test_a_bcos_checkpoint_is_refused_another_b_or_biases(bcos_checkpoint, recipe, tmp_path, asked):
    with pytest.raises(ValueError, match="is a B-cos checkpoint, which is fine-tuned at its own B"):
        finetune(replace(recipe, source=str(bcos_checkpoint), **asked), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_a_bcos_checkpoint_with_the_recipe_defaults_is_accepted(bcos_checkpoint, recipe):
    check_before_training(replace(recipe, source=str(bcos_checkpoint)), push=False, dry_run=False)


@pytest.fixture(scope="module")
def continued(inputs, bcos_checkpoint, tmp_path_factory):
    """A short run that continues the B-cos checkpoint with the recipe's defaults (B = 2, biases removed)."""
    _, data = inputs
    recipe = Recipe(
        name="bcos-tiny",
        source=str(bcos_checkpoint),
        dataset=str(data),
        hub_model_id=REPO_ID,
        max_steps=2,
        batch_size=8,
    )
    return recipe, finetune(recipe, tmp_path_factory.mktemp("continued") / "out", device="cpu")


def test_the_card_of_a_continued_bcos_checkpoint_states_the_checkpoints_b_and_biases(continued):
    _, result = continued
    card = ModelCard.load(result.repo_dir / "README.md").text
    assert "It continues the B-cos checkpoint" in card and "obtained by" not in card
    assert "(B = 1.5, biases\nkept)" in card and "| B | 1.5 |" in card and "| biases | keep |" in card


def test_a_rewritten_repo_holds_exactly_this_runs_files(continued, tmp_path):
    recipe, result = continued
    output = shutil.copytree(result.output_dir, tmp_path / "out")
    (output / "results.json").unlink()  # stopped after the last step, before the run was written down
    (output / "repo" / "pytorch_model.bin").write_bytes(b"stale")
    (output / "repo" / "examples" / "explanation_9.png").write_bytes(b"stale")
    finetune(recipe, output, resume=True, device="cpu")
    assert set(snapshot(output / "repo")) == set(snapshot(result.repo_dir))


def test_a_float16_source_is_trained_in_float32(inputs, recipe, tmp_path):
    """AdamW steps on float16 weights overflow to inf and NaN: the model trains, and is saved, in float32."""
    source, _ = inputs
    half = tmp_path / "half"
    ViTForImageClassification.from_pretrained(source).half().save_pretrained(half)
    shutil.copy(source / "preprocessor_config.json", half)
    result = finetune(replace(recipe, source=str(half)), tmp_path / "out", device="cpu")
    trained = BcosViTForImageClassification.from_pretrained(result.repo_dir)
    assert trained.dtype == torch.float32 and all(p.isfinite().all() for p in trained.parameters())


def test_a_run_whose_weights_diverge_writes_no_repo_and_says_so(inputs, recipe, tmp_path):
    source, _ = inputs
    broken = tmp_path / "broken"
    model = ViTForImageClassification.from_pretrained(source)
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if "mlp" in name or "intermediate" in name)[0, 0] = float("nan")
    model.save_pretrained(broken)
    shutil.copy(source / "preprocessor_config.json", broken)
    with pytest.raises(ValueError, match="Training diverged: .* not finite .* no repo/ is written"):
        finetune(replace(recipe, source=str(broken)), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "repo").exists() and (tmp_path / "out" / "checkpoints").is_dir()


def test_a_resume_from_a_source_retrained_since_the_run_started_is_refused(recipe, tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    shutil.copytree(recipe.source, source)
    run = replace(recipe, source=str(source), save_steps=1)
    finetune(run, out, device="cpu")
    shutil.rmtree(out / "repo")  # as after an interruption: the run resumes from its checkpoint
    (out / "results.json").unlink()
    assert json.loads((out / "recipe.json").read_text())["inputs"].keys() == {"source"}
    retrained = ViTForImageClassification.from_pretrained(source)
    with torch.no_grad():
        retrained.classifier.weight.add_(0.1)
    retrained.save_pretrained(source)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"--resume: --model .*source holds other weights than the run started from"):
        finetune(run, out, resume=True, device="cpu")
    shutil.rmtree(source)  # moved away: no folder to compare
    with pytest.raises(ValueError, match=r"--resume: --model .*source is no folder here \(moved, or a relative"):
        finetune(run, out, resume=True, device="cpu")
    assert snapshot(out) == before


@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_another_run_is_writing_is_refused_and_changes_nothing(recipe, tmp_path, resume):
    """Two runs in one folder would replace each other's checkpoints and repo/, and both report success."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "recipe.json").write_text(json.dumps(recipe_record(with_precision(recipe, "cpu"))))  # just started
    before = snapshot(output)
    refused = pytest.raises(ValueError, match="is being written by another run that has not ended")
    with run_folder(output), refused:  # the other run holds the folder, as a process of its own would
        finetune(recipe, output, resume=resume, device="cpu")
    assert snapshot(output) == before


def test_a_run_holds_its_folder_from_before_it_reads_it_until_it_ends(recipe, tmp_path, monkeypatch):
    """A run that started before another made the folder, and finished there, must not train over it unchecked."""
    import bcos_zoo.zoo.finetune as finetuning

    output, seen = tmp_path / "new" / "out", []
    earlier_run = finetuning.earlier_run

    def second_run_meanwhile(*args):
        with pytest.raises(ValueError, match="is being written by another run"):
            finetune(recipe, output, resume=True, device="cpu")
        seen.append(True)
        return earlier_run(*args)

    monkeypatch.setattr(finetuning, "earlier_run", second_run_meanwhile)
    finetune(recipe, output, device="cpu")
    assert seen == [True]
    with run_folder(output):  # given back at the end
        pass


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder_behind(recipe, tmp_path):
    output = tmp_path / "new"
    with pytest.raises(FileNotFoundError, match="card template"):
        finetune(replace(recipe, card_template="no_such_card.md"), output, device="cpu")
    assert not output.exists()
