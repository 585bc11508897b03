"""Shared test set-up: offline Hub, a private HF cache, and a clean interpreter for remote-code checks."""

import os
import subprocess
import sys
import textwrap

import pytest


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def private_hf_home(tmp_path_factory):
    """Each run gets its own HF cache, so nothing from an earlier run (or the user's cache) can leak in."""
    home = tmp_path_factory.mktemp("hf_home")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_MODULES_CACHE"] = str(home / "modules")
    yield home


# Makes `import bcos_zoo` fail in the child, so a remote-code test proves the saved folder stands on its own.
_BLOCK_BCOS_ZOO = "import sys\nsys.modules['bcos_zoo'] = None\n"


def run_clean_python(code: str, cwd, timeout: int = 300) -> str:
    """Run ``code`` in a fresh interpreter that cannot import ``bcos_zoo``; return its stdout, fail on error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_BCOS_ZOO + textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def clean_python():
    return run_clean_python
