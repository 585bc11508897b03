"""A run on a folder without a validation folder evaluates on a seeded share of all its files: resuming it on a folder
whose files changed would evaluate on images it trained on, so it is refused; a file replaced under its name is not a
change."""

import shutil

import numpy as np
import pytest
from PIL import Image
from training_testing import make_image_folder, make_vit_source

from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


def snapshot(folder) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture
def interrupted(tmp_path):
    """A recipe on a folder of 3 x 4 images, and the outputs of its run as if stopped after its last checkpoint."""
    source, data = make_vit_source(tmp_path / "source"), make_image_folder(tmp_path / "data", per_class=4)
    recipe = Recipe(
        name="bcos-tiny", source=str(source), dataset=str(data), hub_model_id="test-user/bcos-tiny", max_steps=2,
        save_steps=1, batch_size=4,
    )  # fmt: skip
    finetune(recipe, tmp_path / "out", device="cpu")
    shutil.rmtree(tmp_path / "out" / "repo")
    (tmp_path / "out" / "results.json").unlink()
    return recipe, tmp_path / "out"


def test_resuming_on_a_folder_with_a_file_removed_is_refused_and_changes_nothing(interrupted, tmp_path):
    recipe, output = interrupted
    (tmp_path / "data" / "red" / "3.png").unlink()
    before = snapshot(output)
    with pytest.raises(
        ValueError, match=r"files of --dataset .* changed since the run started \(12 images then, 11 now"
    ):
        finetune(recipe, output, resume=True, device="cpu")
    assert snapshot(output) == before


def test_resuming_on_a_folder_with_a_file_replaced_under_its_name_finishes_the_run(interrupted, tmp_path):
    recipe, output = interrupted
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(tmp_path / "data" / "red" / "3.png")
    result = finetune(recipe, output, resume=True, device="cpu")
    assert (output / "results.json").is_file() and result.repo_dir == output / "repo"
