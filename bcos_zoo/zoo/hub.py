"""Publishing to the Hub: a fail-fast access check before training, and a one-commit push of the repo folder.

The repo folder (``<output-dir>/repo``) is the exact tree that lands on the Hub, so a dry run is simply that folder,
and a failed push leaves it intact for ``scripts/push.py`` to retry.
"""

import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError


class PushError(RuntimeError):
    """The Hub could not be reached, refused the token, or failed during the upload."""


def check_push_access(repo_id: str, token: str | None = None) -> str:
    """Make sure a push can work before any training starts; returns the user name the token belongs to."""
    if "/" not in repo_id:
        raise PushError(f"--hub-model-id must look like 'org/name', got {repo_id!r}")
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


def check_repo_folder(folder: str | Path) -> Path:
    """``folder`` as a path, when it holds a model repo (a config and weights); else a one-line error."""
    folder = Path(folder)
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.safetensors.index.json")] if folder.is_dir() else []
    if not (folder / "config.json").is_file() or not weights:
        raise PushError(
            f"{folder} is not a model repo folder (it needs config.json and *.safetensors weights): pass the repo/ "
            "folder a run wrote, <output-dir>/repo."
        )
    return folder


def push_folder(
    folder: str | Path, repo_id: str, private: bool = False, token: str | None = None, commit_message: str = ""
) -> str:
    """Upload ``folder`` as one commit to ``repo_id`` (created if missing); returns the commit URL.

    A failure says where the untouched local folder is and how to retry.
    """
    folder = Path(folder)
    api = HfApi(endpoint=constants.ENDPOINT, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {repo_id} from bcos_zoo",
        )
    except Exception as error:  # network, HTTP and server errors alike: the local folder is what matters
        raise PushError(
            f"Pushing to {repo_id} failed ({type(error).__name__}: {error}). Nothing local was changed: "
            f"{folder} holds the complete repo. Retry with: python scripts/push.py {folder} --hub-model-id {repo_id}"
        ) from error
    return commit.commit_url


def describe_tree(folder: str | Path) -> list[str]:
    """``path  size`` lines for every file a push of ``folder`` would upload."""
    folder = Path(folder)
    return [
        f"{path.relative_to(folder).as_posix()}  {path.stat().st_size:,} B"
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
