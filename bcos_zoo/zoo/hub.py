"""Publishing to the Hub: a fail-fast access check before training, a repo folder built whole (its weights as
readable as its other files), and a one-commit push of it.

The repo folder (``<output-dir>/repo``) is the exact tree that lands on the Hub, so a dry run is simply that folder,
and a failed push leaves it intact for ``scripts/push.py`` to retry.
"""

import contextlib
import json
import os
import shlex
import shutil
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml
from huggingface_hub import HfApi, constants, get_token, metadata_load
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open
from transformers.dynamic_module_utils import get_relative_imports


class PushError(RuntimeError):
    """The Hub could not be reached, refused the token, or failed during the upload."""


def check_repo_id(repo_id: str) -> None:
    """Refuse a ``--hub-model-id`` that is not an ``org/name`` the Hub accepts, before anything is trained or
    written with it (a card names its repo)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--hub-model-id {repo_id!r} is not a Hub repo id: {error}") from None
    if "/" not in repo_id:
        raise PushError(f"--hub-model-id must look like 'org/name', got {repo_id!r}")


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Make sure a push can work before any training starts; returns the user name the token belongs to."""
    check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise PushError(
            "HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (scripts/finetune.py: or drop --push, or add "
            "--dry-run to write the repo folder only)."
        )
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token found: run `hf auth login` or set HF_TOKEN, then try again.")
    try:
        return HfApi(endpoint=constants.ENDPOINT).whoami(token=token)["name"]
    except Exception as error:  # any failure here means the push would fail later: say so before training
        raise PushError(f"Cannot use the Hub at {constants.ENDPOINT} with this token: {error}") from error


def hub_unavailable(timeout: float = 5.0) -> str | None:
    """Why the Hub cannot be used right now (offline mode, or no answer within ``timeout`` s), or ``None``.

    Asked once, before anything that needs the Hub, so that a run without it fails at once with a clear line
    instead of after the libraries' retries.
    """
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, even an error page, means the Hub is there
    except OSError as error:
        reason = getattr(error, "reason", error)
        return f"{constants.ENDPOINT} cannot be reached: {reason}"
    return None


def hub_repo_exists(repo_id: str, repo_type: str) -> bool:
    """Whether the Hub knows ``repo_id`` (a gated or private repo exists even when this token cannot read it)."""
    try:
        HfApi(endpoint=constants.ENDPOINT).repo_info(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return True
    except RepositoryNotFoundError:
        return False
    except HfHubHTTPError as error:  # rate-limited, server trouble: loading it will say what is wrong
        return getattr(error.response, "status_code", None) != 404
    return True


def remote_code_modules(config: dict) -> set[str]:
    """The ``.py`` files a repo's ``config.json`` names as its remote code: the modules of ``auto_map`` and of its
    custom pipelines (code that ``auto_map`` takes from another repo, ``org/name--module.Class``, excluded)."""
    references = [pipeline.get("impl") for pipeline in (config.get("custom_pipelines") or {}).values()]
    for value in (config.get("auto_map") or {}).values():  # a tokenizer's entry is a [slow, fast] pair
        references += value if isinstance(value, list) else [value]
    return {f"{name.rsplit('.', 1)[0]}.py" for name in references if name and "--" not in name}


def check_repo_folder(folder: str | Path) -> Path:
    """``folder`` as a path, when it holds a complete model repo: a readable config, weights whose every file opens
    (an index's shards included), the remote code its config names, the image processor and a model card whose
    metadata parses; else a one-line error, before anything is uploaded (a push replaces the Hub repo's files)."""
    folder = Path(folder)
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")] if folder.is_dir() else []
    if not (folder / "config.json").is_file() or not weights:
        raise PushError(
            f"{folder} is not a model repo folder (it needs config.json and *.safetensors weights): pass the repo/ "
            "folder a run wrote, <output-dir>/repo."
        )
    config = _json_object(folder / "config.json")
    needed = {"README.md"} | remote_code_modules(config)
    unread = [name for name in needed if name.endswith(".py")]
    while unread:  # and the modules those import (``from .bcos_layers import ...``), as loading them does
        if (folder / (name := unread.pop())).is_file():
            imported = {f"{module}.py" for module in get_relative_imports(str(folder / name))} - needed
            needed |= imported
            unread += imported
    for index in folder.glob("*.safetensors.index.json"):  # the shards it names
        weight_map = _json_object(index).get("weight_map")
        needed |= set(weight_map.values()) if isinstance(weight_map, dict) else {f"{index.name}'s weight_map"}
    missing = sorted(name for name in needed if not (folder / name).is_file())
    processors = ("preprocessor_config.json", "processor_config.json")  # an image processor, or one with a tokenizer
    if not any((folder / name).is_file() for name in processors):
        missing.append(" or ".join(processors))
    if missing:
        raise PushError(
            f"{folder} is not a complete model repo: {', '.join(missing)} missing (config.json names the code, an "
            "index its shards, README.md is the model card, the card's code loads the image processor); pass the "
            "repo/ folder a run wrote, or re-write it with model.save_pretrained and a card."
        )
    for path in folder.glob("*.safetensors"):
        try:
            with safe_open(path, "pt") as weights_file:
                weights_file.keys()
        except Exception as error:  # a cut-off or empty file: its header does not parse
            raise PushError(
                f"{path} cannot be read as safetensors weights ({error}); write the folder again."
            ) from None
    try:
        metadata_load(folder / "README.md")
    except yaml.YAMLError as error:
        raise PushError(f"the metadata at the top of {folder / 'README.md'} is not valid YAML: {error}") from None
    return folder


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PushError(f"{path} is not valid JSON ({error}); write the folder again.") from None
    if not isinstance(value, dict):
        raise PushError(f"{path} holds a JSON {type(value).__name__}, not an object; write the folder again.")
    return value


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str = ""
) -> str:
    """Upload ``folder`` as one commit to ``repo_id`` (created if missing); returns the commit URL.

    The commit also deletes every remote file the folder does not hold (``.gitattributes`` aside), so the Hub repo
    is the folder, not the folder over an earlier push: a folder that could not load is refused first
    (:func:`check_repo_folder`). A failure says where the untouched local folder is and how to retry.
    """
    folder = check_repo_folder(folder)
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {repo_id} from bcos_zoo",
            delete_patterns="*",
        )
    except Exception as error:  # network, HTTP and server errors alike: the local folder is what matters
        retry = shlex.join(["python", "scripts/push.py", str(folder), "--hub-model-id", repo_id])
        raise PushError(
            f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). Nothing local was changed: "
            f"{folder} holds the complete repo. Retry with: {retry}{' --private' if private else ''}"
        ) from error
    return commit.commit_url


@contextlib.contextmanager
def new_repo_folder(folder: Path) -> Iterator[Path]:
    """A fresh folder beside ``folder`` to build a repo in, put in ``folder``'s place (replacing what was there) when
    the block ends without error, its weights as readable as its other files: a build stopped part-way leaves
    ``folder`` as it was, and the new one holds exactly this build's files (nothing of an earlier build stays behind
    to be pushed)."""
    partial = folder.with_name(f".{folder.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial
    readable_weights(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)


def readable_weights(folder: str | Path) -> None:
    """Give the weights files of a model folder the mode of its ``config.json``: the safetensors writer (0.8) makes
    them 0600 whatever the umask, so that another user of a shared machine, or a container's user, could read every
    file of a model but its weights (and loading then says the file does not exist)."""
    config = Path(folder) / "config.json"
    if os.name == "posix" and config.is_file():
        for path in Path(folder).glob("*.safetensors"):
            path.chmod(stat.S_IMODE(config.stat().st_mode))


def describe_tree(folder: str | Path) -> list[str]:
    """``path  size`` lines for every file a push of ``folder`` would upload."""
    folder = Path(folder)
    return [
        f"{path.relative_to(folder).as_posix()}  {path.stat().st_size:,} B"
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
