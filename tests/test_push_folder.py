"""Pushing a repo folder, in this process, against a loopback Hub: the Hub repo ends up equal to the folder, a folder
that cannot load is refused before anything is uploaded, and a failure says how to retry."""

import shlex
import shutil

import pytest
from fake_hub import GITATTRIBUTES, fake_hub_fixture  # noqa: F401
from huggingface_hub import constants
from sources import hf_vit

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.zoo.hub import PushError, check_push_access, check_repo_folder, push_folder


REPO_ID = "test-user/bcos-tiny"


@pytest.fixture
def hub(fake_hub, monkeypatch):
    """The loopback Hub as this process's endpoint, logged in with its token."""
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    return fake_hub


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A complete repo folder: weights, config, remote code, processor and a card."""
    folder = tmp_path_factory.mktemp("repo")
    BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3)).save_pretrained(folder)
    (folder / "README.md").write_text("# bcos-tiny\n")
    return folder


@pytest.fixture
def repo(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "repo")


def test_push_onto_an_existing_repo_leaves_exactly_the_folder_there(hub, repo):
    hub.seed(REPO_ID, {"pytorch_model.bin": b"old", "examples/explanation_3.png": b"old", "README.md": b"old"})
    push_folder(repo, REPO_ID)
    local = {path.relative_to(repo).as_posix(): path.read_bytes() for path in repo.rglob("*") if path.is_file()}
    assert hub.files(REPO_ID) == {**local, ".gitattributes": GITATTRIBUTES}


def test_a_failed_push_names_a_retry_command_the_shell_reads_back_whole(hub, saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "my runs" / "repo")
    hub.fail_next("commit", 403)  # refused, so the client does not retry
    with pytest.raises(PushError, match="Retry with: ") as failure:
        push_folder(folder, REPO_ID, private=True)
    retry = shlex.split(str(failure.value).split("Retry with: ")[1])
    assert retry == ["python", "scripts/push.py", str(folder), "--hub-model-id", REPO_ID, "--private"]


@pytest.mark.parametrize("name", ["modeling_bcos_vit.py", "configuration_bcos_vit.py", "pipeline_bcos_explanation.py"])
def test_a_folder_without_the_remote_code_its_config_names_is_refused(repo, name):
    (repo / name).unlink()
    with pytest.raises(PushError, match=f"{name} missing"):
        check_repo_folder(repo)


@pytest.mark.parametrize("name", ["bcos_layers.py", "explanation.py", "fast_paths.py"])
def test_a_folder_without_a_module_its_remote_code_imports_is_refused(repo, name):
    """config.json names the model's module; loading it also needs what it imports (``from .bcos_layers ...``)."""
    (repo / name).unlink()
    with pytest.raises(PushError, match=f"{name} missing"):
        check_repo_folder(repo)


def test_a_folder_without_a_model_card_is_refused(repo):
    (repo / "README.md").unlink()
    with pytest.raises(PushError, match="README.md missing"):
        check_repo_folder(repo)


def cut_off(path) -> None:
    path.write_bytes(path.read_bytes()[:1000])  # an interrupted copy


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda repo: cut_off(repo / "model.safetensors"), "model.safetensors cannot be read as safetensors weights"),
        (lambda repo: (repo / "model.safetensors").write_bytes(b""), "cannot be read as safetensors weights"),
        (lambda repo: (repo / "config.json").write_text("{'b': 2}"), "config.json is not valid JSON"),
        (lambda repo: (repo / "config.json").write_text("[]"), "config.json holds a JSON list, not an object"),
        (
            lambda repo: (repo / "preprocessor_config.json").unlink(),
            "preprocessor_config.json or processor_config.json missing",
        ),
        (lambda repo: (repo / "README.md").write_text("---\ntags: [a\n---\n"), "README.md is not valid YAML"),
    ],
    ids=["cut-off-weights", "empty-weights", "config-not-json", "config-not-object", "no-processor", "card-yaml"],
)
def test_a_folder_that_could_not_load_is_refused_by_the_push_itself_and_the_hub_repo_is_kept(
    hub, saved, repo, damage, message
):
    """``finetune --resume --push`` and ``port_bcos --push`` call the push directly: it checks the folder itself."""
    push_folder(saved, REPO_ID)
    before = hub.files(REPO_ID)
    damage(repo)
    with pytest.raises(PushError, match=message):
        push_folder(repo, REPO_ID)
    assert hub.files(REPO_ID) == before


def test_an_index_naming_a_shard_the_folder_lacks_is_refused(repo):
    BcosViTForImageClassification.from_pretrained(repo).save_pretrained(repo, max_shard_size="20KB")
    shards = sorted(repo.glob("model-*.safetensors"))
    assert len(shards) > 1 and (repo / "model.safetensors.index.json").is_file()
    shards[-1].unlink()
    with pytest.raises(PushError, match=f"{shards[-1].name} missing"):
        check_repo_folder(repo)


def test_a_clip_folder_whose_processor_holds_its_tokenizer_is_accepted(tmp_path):
    """transformers saves a CLIPProcessor (image processor and tokenizer) as processor_config.json."""
    from clip_testing import save_source

    from bcos_zoo import BcosCLIPModel

    save_source(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "source").save_pretrained(tmp_path / "repo")
    (tmp_path / "repo" / "README.md").write_text("# bcos-clip\n")
    assert (tmp_path / "repo" / "processor_config.json").is_file()
    assert check_repo_folder(tmp_path / "repo") == tmp_path / "repo"


def test_a_complete_folder_is_accepted(repo):
    assert check_repo_folder(repo) == repo


@pytest.mark.parametrize("repo_id", ["my org/bcos tiny", "org/bcos--tiny", "org/name/extra"])
def test_a_hub_model_id_the_hub_cannot_hold_is_refused_without_asking_it(hub, repo_id):
    with pytest.raises(PushError, match="is not a Hub repo id"):
        check_push_access(repo_id)
    assert hub.requests == []
