"""The loopback Hub works with the real clients: pushes land whole, downloads return the same bytes, faults don't leak.

In-process calls pass ``endpoint=`` and rely on the ``fake_hub`` fixture turning huggingface_hub's offline switch off;
anything that reads ``HF_ENDPOINT`` (transformers, plain ``hf_hub_download``) runs in a subprocess with ``hub.env``.
"""

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import numpy as np
import pytest
from fake_hub import GITATTRIBUTES, fake_hub_fixture  # noqa: F401 - provides the `fake_hub` fixture
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.numpy import save_file


README = "---\nlicense: mit\ntags:\n- image-classification\n---\n# A model\n"


def _model_folder(path):
    """A folder shaped like a checkpoint: config, card, code and a ~3 MB binary safetensors file."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "vit", "num_labels": 3}))
    (path / "README.md").write_text(README)
    (path / "modeling_x.py").write_text("X = 1\n")
    weights = np.random.default_rng(0).standard_normal(750_000).astype(np.float32)
    save_file({"weight": weights}, str(path / "model.safetensors"))
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _push(hub, repo_id, folder, message="Upload model"):
    """What a push script does: create the repo if needed, then upload the folder."""
    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    api.create_repo(repo_id, private=False, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)


def _run_client(hub, tmp_path, code):
    """Run ``code`` in a fresh interpreter pointed at the hub, with its own HF_HOME; return its last line as JSON."""
    home = tmp_path / "client_home"
    home.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=home,  # so "org/name" can never resolve to a local folder
        env=hub.env(home=home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upload_folder_lands_as_one_commit_with_identical_bytes(fake_hub, tmp_path):
    local = _model_folder(tmp_path / "model")
    assert len(local["model.safetensors"]) > 3_000_000

    info = _push(fake_hub, "org/name", tmp_path / "model")

    commits = fake_hub.commits("org/name")
    assert [commit.message for commit in commits] == ["initial commit", "Upload model"]
    assert info.oid == commits[-1].sha
    assert fake_hub.files("org/name") == {".gitattributes": GITATTRIBUTES, **local}
    # Nothing but the commit request carried file contents: no LFS batch, no Xet, no unknown endpoint.
    assert [fake_hub.count(route) for route in ("create", "validate-yaml", "preupload", "commit")] == [1, 1, 1, 1]
    assert len(fake_hub.requests) == 4 and not fake_hub.unhandled


@pytest.mark.subprocess
def test_push_from_a_subprocess_uses_hf_endpoint_and_hf_token_from_the_environment(fake_hub, tmp_path):
    local = _model_folder(tmp_path / "model")

    _run_client(
        fake_hub,
        tmp_path,
        f"""
        import json
        from huggingface_hub import HfApi

        HfApi().create_repo("org/pushed", private=True, exist_ok=True)
        HfApi().upload_folder(repo_id="org/pushed", folder_path={str(tmp_path / "model")!r}, commit_message="Push")
        print(json.dumps({{}}))
        """,
    )

    assert [commit.message for commit in fake_hub.commits("org/pushed")] == ["initial commit", "Push"]
    assert fake_hub.files("org/pushed") == {".gitattributes": GITATTRIBUTES, **local}


@pytest.mark.subprocess
def test_hf_hub_download_and_snapshot_download_in_a_subprocess_return_the_pushed_bytes(fake_hub, tmp_path):
    local = _model_folder(tmp_path / "model")
    (tmp_path / "model" / "docs").mkdir()
    (tmp_path / "model" / "docs" / "read me.txt").write_bytes(b"a path that needs quoting")
    _push(fake_hub, "org/name", tmp_path / "model")
    pushed = fake_hub.commits("org/name")[-1]

    out = _run_client(
        fake_hub,
        tmp_path,
        """
        import hashlib, json, pathlib
        from huggingface_hub import hf_hub_download, snapshot_download

        digest = lambda path: hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
        single = {name: digest(hf_hub_download("org/name", name)) for name in ("model.safetensors", "docs/read me.txt")}
        root = pathlib.Path(snapshot_download("org/name"))
        snapshot = {p.relative_to(root).as_posix(): digest(p) for p in root.rglob("*") if p.is_file()}
        print(json.dumps({"single": single, "snapshot": snapshot, "root": str(root)}))
        """,
    )

    expected = {path: _sha256(data) for path, data in pushed.files.items()}
    assert set(expected) == {".gitattributes", "docs/read me.txt", *local}
    assert out["single"] == {name: expected[name] for name in ("model.safetensors", "docs/read me.txt")}
    assert out["snapshot"] == expected
    assert out["root"].endswith(pushed.sha)  # the cache is keyed by the commit the hub reported
    assert not fake_hub.unhandled


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyRemoteConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""

# Imports its config as a sibling module, as Hub remote code must.
REMOTE_MODEL = """
import torch
from transformers import PreTrainedModel

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = torch.nn.Linear(config.width, 2)
        self.post_init()

    def forward(self, x):
        return self.linear(x)
"""


def _tiny_vit_folder(path):
    """Save a random tiny ViT with its processor; return input pixels and the logits they must give."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return {"pixels": pixels, "logits": model(pixel_values=pixels).logits}


def _remote_code_folder(path):
    """A model whose classes exist only as .py files next to its weights: y = W x + b with known W and b."""
    path.mkdir()
    (path / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (path / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    auto_map = {
        "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
        "AutoModel": "modeling_tiny_remote.TinyRemoteModel",
    }
    (path / "config.json").write_text(json.dumps({"model_type": "tiny-remote", "width": 4, "auto_map": auto_map}))
    weights = {
        "linear.weight": np.arange(8, dtype=np.float32).reshape(2, 4) / 10,
        "linear.bias": np.float32([0.5, -0.5]),
    }
    save_file(weights, str(path / "model.safetensors"))


@pytest.mark.subprocess
def test_transformers_from_pretrained_loads_pushed_models_from_the_hub(fake_hub, tmp_path):
    # One client process for both loading paths (built-in class, and remote code with trust_remote_code), since
    # importing transformers dominates the cost of this test.
    from safetensors.torch import save_file as save_tensors

    save_tensors(_tiny_vit_folder(tmp_path / "vit"), str(tmp_path / "expected.safetensors"))
    _remote_code_folder(tmp_path / "remote")
    _push(fake_hub, "org/tiny-vit", tmp_path / "vit")
    _push(fake_hub, "org/tiny-remote", tmp_path / "remote")

    out = _run_client(
        fake_hub,
        tmp_path,
        f"""
        import json, torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

        expected = load_file({str(tmp_path / "expected.safetensors")!r})
        vit = AutoModelForImageClassification.from_pretrained("org/tiny-vit").eval()
        processor = AutoImageProcessor.from_pretrained("org/tiny-vit")
        remote = AutoModel.from_pretrained("org/tiny-remote", trust_remote_code=True)
        with torch.no_grad():
            diff = (vit(pixel_values=expected["pixels"]).logits - expected["logits"]).abs().max().item()
            y = remote(torch.ones(1, 4))[0].tolist()
        print(json.dumps({{
            "vit": type(vit).__name__, "diff": diff, "size": dict(processor.size),
            "remote_module": type(remote).__module__, "y": y,
        }}))
        """,
    )

    assert out["vit"] == "ViTForImageClassification" and out["diff"] < 1e-6
    assert out["size"] == {"height": 32, "width": 32}
    assert out["remote_module"].startswith("transformers_modules.")  # built from downloaded code, not a local class
    assert out["y"] == pytest.approx([0.6 + 0.5, 2.2 - 0.5])
    assert not fake_hub.unhandled


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_failed_commit_leaves_no_partial_commit_and_a_retry_lands(fake_hub, tmp_path, monkeypatch, mode):
    # With hf_xet installed, upload_folder retries a failed commit by itself (see the next test); without it, the
    # commit is sent once, so the injected failure reaches the caller as it would from a push script.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    local = _model_folder(tmp_path / "model")
    HfApi(endpoint=fake_hub.endpoint, token=fake_hub.token).create_repo("org/name")
    before = [commit.sha for commit in fake_hub.commits("org/name")]

    fake_hub.fail_next("commit", mode=mode)
    expected_error = HfHubHTTPError if mode == "500" else httpx2.TransportError
    with pytest.raises(expected_error):
        _push(fake_hub, "org/name", tmp_path / "model")
    assert [commit.sha for commit in fake_hub.commits("org/name")] == before
    assert fake_hub.files("org/name") == {".gitattributes": GITATTRIBUTES}

    _push(fake_hub, "org/name", tmp_path / "model")
    assert [commit.message for commit in fake_hub.commits("org/name")] == ["initial commit", "Upload model"]
    assert fake_hub.files("org/name") == {".gitattributes": GITATTRIBUTES, **local}
    assert fake_hub.count("commit") == 2


@pytest.mark.skipif(
    importlib.util.find_spec("hf_xet") is None or constants.HF_HUB_DISABLE_XET,
    reason="upload_folder only retries commits on its hf_xet code path",
)
def test_upload_folder_retries_a_transient_commit_failure_and_lands_once(fake_hub, tmp_path):
    local = _model_folder(tmp_path / "model")
    HfApi(endpoint=fake_hub.endpoint, token=fake_hub.token).create_repo("org/name")
    fake_hub.fail_next("commit", mode="503")

    _push(fake_hub, "org/name", tmp_path / "model")

    assert fake_hub.count("commit") == 2
    assert [commit.message for commit in fake_hub.commits("org/name")] == ["initial commit", "Upload model"]
    assert fake_hub.files("org/name") == {".gitattributes": GITATTRIBUTES, **local}


def test_whoami_needs_the_hub_token(fake_hub):
    assert HfApi(endpoint=fake_hub.endpoint, token=fake_hub.token).whoami()["name"] == fake_hub.user

    with pytest.raises(HfHubHTTPError) as wrong_token:
        HfApi(endpoint=fake_hub.endpoint, token="hf_wrong").whoami()
    assert wrong_token.value.response.status_code == 401
    with pytest.raises(urllib.error.HTTPError) as no_token:
        urllib.request.urlopen(f"{fake_hub.endpoint}/api/whoami-v2")
    no_token.value.close()
    assert no_token.value.code == 401


def test_missing_repo_revision_and_file_raise_the_matching_hub_errors(fake_hub, tmp_path):
    fake_hub.seed("org/present", {"a.txt": b"a"})
    api = HfApi(endpoint=fake_hub.endpoint, token=False)  # public reads; ignore any HF_TOKEN of the caller

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/present", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("org/present", "b.txt", endpoint=fake_hub.endpoint, cache_dir=tmp_path, token=False)


def test_private_repo_is_hidden_without_the_token(fake_hub, tmp_path):
    fake_hub.seed("org/secret", {"a.txt": b"a"}, private=True)

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/secret", "a.txt", endpoint=fake_hub.endpoint, cache_dir=tmp_path, token=False)
    path = hf_hub_download("org/secret", "a.txt", endpoint=fake_hub.endpoint, cache_dir=tmp_path, token=fake_hub.token)
    assert Path(path).read_bytes() == b"a"
