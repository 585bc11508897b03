"""What ``scripts/fashion_mnist.py`` (the main job) does with the stages an earlier call left in its --output-root:
re-uses them for the same flags, wherever the folder now lies, and refuses, before anything trains, those that
other flags or a retrained source would make stale. The stages here are finished runs written by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

from bcos_zoo.training.recipe import recipe_record
from bcos_zoo.training.trainer import with_precision
from bcos_zoo.zoo.recipes import get_recipe
from bcos_zoo.zoo.reproduction import INPUTS_RECORD


ROOT = Path(__file__).resolve().parents[1]


def script():
    spec = importlib.util.spec_from_file_location("fashion_mnist", ROOT / "scripts" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_stages(root: Path, trained_under: Path) -> None:
    """Both stages at the recipes' default epochs, as a call with ``--output-root trained_under`` left them."""
    source = get_recipe("vit-fashion-mnist")
    bcos = get_recipe("bcos-vit-fashion-mnist").with_overrides(source=str(trained_under / "vit-fashion-mnist/repo"))
    metrics = {
        "vit-fashion-mnist": {"accuracy": 0.75, "train_seconds": 120.0},
        "bcos-vit-fashion-mnist": {"accuracy": 0.79, "source_accuracy": 0.75, "train_seconds": 170.0},
    }
    for recipe in (source, bcos):
        folder = root / recipe.name
        (folder / "repo" / "examples").mkdir(parents=True)
        (folder / "recipe.json").write_text(json.dumps(recipe_record(with_precision(recipe))))
        (folder / "results.json").write_text(json.dumps({"metrics": metrics[recipe.name]}))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_rerun_with_the_same_flags_reuses_both_stages_of_an_output_root_that_was_moved(tmp_path, capsys):
    finished_stages(tmp_path / "moved", trained_under=Path("/elsewhere/outputs"))
    script().main(["--output-root", str(tmp_path / "moved")])
    printed = capsys.readouterr().out
    assert printed.count("Re-using the finished run") == 2
    assert "|   79.00% |" in printed and "|   75.00% |" in printed


@pytest.mark.parametrize("flag", ["--source-epochs", "--epochs"])
def test_a_rerun_with_other_epochs_is_refused_before_anything_trains_naming_the_flag_and_output_root(tmp_path, flag):
    finished_stages(tmp_path, trained_under=tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"trained with {flag} 1, not 3: pass {flag} 1 to re-use it.*--output-root"):
        script().main(["--output-root", str(tmp_path), flag, "3"])
    assert snapshot(tmp_path) == before


def test_a_bcos_stage_from_a_source_trained_again_since_is_refused(tmp_path):
    finished_stages(tmp_path, trained_under=tmp_path)
    (tmp_path / "bcos-vit-fashion-mnist" / INPUTS_RECORD).write_text(json.dumps({"source": "0" * 64}))
    with pytest.raises(ValueError, match="other weights than its source .* holds now.*another --output-root"):
        script().main(["--output-root", str(tmp_path)])


def test_a_stage_of_another_recipe_is_refused_before_anything_trains_naming_the_field(tmp_path):
    finished_stages(tmp_path, trained_under=tmp_path)
    stored = tmp_path / "vit-fashion-mnist" / "recipe.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "learning_rate": 0.5}))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"different recipe \(learning_rate 0.5 -> .*another --output-root"):
        script().main(["--output-root", str(tmp_path)])
    assert snapshot(tmp_path) == before
