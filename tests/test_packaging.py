"""What ships: a built wheel carries the card templates and the evaluate modules, and works from outside the repo."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


pytestmark = pytest.mark.subprocess


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, unpacked: what a non-editable install puts on the path."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    for name in ("bcos_zoo", "hub_cards"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source)]
    subprocess.run([*command, "-w", str(root / "dist")], check=True, capture_output=True, cwd=source, timeout=300)
    (wheel,) = (root / "dist").glob("bcos_zoo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root / "site")
    return root / "site"


def test_wheel_carries_card_templates_and_evaluate_modules(unpacked_wheel):
    assert (unpacked_wheel / "bcos_zoo" / "hub_cards" / "model_card.md").is_file()
    assert (unpacked_wheel / "bcos_zoo" / "hub_cards" / "space_card.md").is_file()
    metrics = unpacked_wheel / "bcos_zoo" / "evaluation" / "metrics"
    assert (metrics / "grid_pointing_game" / "grid_pointing_game.py").is_file()


def test_model_card_renders_from_an_installed_wheel(unpacked_wheel, tmp_path):
    code = """
import bcos_zoo
from bcos_zoo.data.datasets import DatasetSplits
from bcos_zoo.training import TASKS
from bcos_zoo.zoo.cards import render_model_card
from bcos_zoo.zoo.recipes import get_recipe

recipe = get_recipe("bcos-vit-s")
data = DatasetSplits(train=[], validation=[0] * 10, class_names=["a", "b"], name="data", evaluation_split="test")
card = render_model_card(recipe, TASKS[recipe.task].card, "org/bcos-vit-s", {"accuracy": 0.5}, data, evaluated=10)
print(bcos_zoo.__file__)
print("Top-1 accuracy" in card.text)
"""
    env = {"PYTHONPATH": str(unpacked_wheel), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    location, rendered = result.stdout.split()
    assert Path(location).is_relative_to(unpacked_wheel)
    assert rendered == "True"
