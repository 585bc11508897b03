"""Shared test set-up: offline Hub, a private HF cache, a clean interpreter for remote-code checks, the markers that
select the quick tests, and Debian's Fashion-MNIST for the tests that train on it."""

import os
import subprocess
import sys
import textwrap

import pytest


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Set to 1 to let the tests that read Debian's Fashion-MNIST skip when its IDX files are missing (they fail otherwise).
ALLOW_MISSING_DATA = "BCOS_ZOO_ALLOW_MISSING_DATA"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config, items):
    """A test that drives Chromium or starts a Python process is slow: ``-m "not slow"`` leaves it out too."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("subprocess"):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture
def fashion_mnist():
    """The folder of Debian's Fashion-MNIST IDX files. Missing files fail the test, so that a machine without the
    data cannot pass by skipping; with BCOS_ZOO_ALLOW_MISSING_DATA=1 the test is skipped instead."""
    from bcos_zoo.data.datasets import FASHION_MNIST_DIR

    missing = [name for name in FASHION_MNIST_FILES if not (FASHION_MNIST_DIR / name).is_file()]
    if missing:
        message = (
            f"Fashion-MNIST is missing from {FASHION_MNIST_DIR} ({', '.join(missing)}): run `bash scripts/setup.sh dev`"
            " as root, or `apt-get install dataset-fashion-mnist`; to skip these tests instead, set "
            f"{ALLOW_MISSING_DATA}=1"
        )
        if os.environ.get(ALLOW_MISSING_DATA) == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return FASHION_MNIST_DIR


# Shared by the Space test modules, each of which defines the ``space`` it runs


@pytest.fixture(scope="module")
def client(space):
    """A gradio_client of the module's running Space."""
    from gradio_client import Client

    return Client(space[0].url, verbose=False)


@pytest.fixture(scope="module")
def private_image(tmp_path_factory):
    """An image on the server outside Gradio's upload folder and the app's examples."""
    from space_testing import photo

    path = tmp_path_factory.mktemp("private") / "secret.png"
    photo(seed=9).save(path)
    return path
