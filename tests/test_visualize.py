"""Explanation pictures: the panel written next to the input image."""

import numpy as np
from PIL import Image
from sources import hf_vit

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.visualize import explain_image_file


def test_explanation_png_is_written_next_to_the_input(tmp_path):
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(), b=2.0).eval()
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photo)
    written = explain_image_file(model, photo, target=2)
    assert written == tmp_path / "photo_explanation.png"
    with Image.open(written) as panel:
        assert panel.size == (3 * 32, 32) and panel.mode == "RGB"
        left = np.asarray(panel)[:, :32].astype(float) / 255
    assert left.std() > 0.05  # the input itself, resized, not a blank tile
