"""Explanation pictures: titled panels written next to the input image, readable without the card beside them."""

import numpy as np
import pytest
import torch
from clip_testing import save_source as save_clip_source
from PIL import Image
from sources import hf_vit, timm_vit
from transformers import AutoProcessor, pipeline

from bcos_zoo import BcosCLIPModel, BcosViTForImageClassification
from bcos_zoo.visualize import CAPTION, TILE, explain_image_file, explanation_panel, explanation_title


@pytest.fixture(scope="module")
def model():
    return BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3), b=2.0).eval()


def test_explanation_png_is_written_next_to_the_input_with_its_title(model, tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    written = explain_image_file(model, photo, target=2)
    assert written == tmp_path / "photo_explanation.png"
    with Image.open(written) as panel:
        title = panel.text["Title"]
        assert panel.mode == "RGB" and panel.width > 3 * TILE
    explained_class = model.config.id2label[2]
    assert title.startswith(f"explained: {explained_class} (logit ") and "bias share" in title and "predicted:" in title


def test_title_names_explained_predicted_and_true_class(model):
    x = torch.rand(2, 3, 32, 32)
    explanation = model.explain(x, target=torch.tensor([0, 1]))
    names = ["cat", "dog", "bird"]
    first, second = explanation_title(explanation, 1, names, true_label=2)
    logit = float(explanation.target_logits[1])
    assert first == f"explained: dog (logit {logit:.2f}, bias share {float(explanation.bias_share[1]):.0%})"
    assert second == f"predicted: {names[int(explanation.logits[1].argmax())]}, true: bird"


def test_a_name_two_classes_share_is_titled_with_the_class_number(model):
    explanation = model.explain(torch.rand(1, 3, 32, 32), target=2)
    first, second = explanation_title(explanation, 0, {0: "crane", 1: "dog", 2: "crane"}, true_label=1)
    assert first.startswith("explained: crane (2) (logit ") and second.endswith(", true: dog")


def test_a_class_beyond_the_names_given_is_titled_by_its_number(model):
    explanation = model.explain(torch.rand(1, 3, 32, 32), target=2)
    assert explanation_title(explanation, 0, ["cat", "dog"])[0].startswith("explained: 2 (logit ")


LONG_NAME = "yellow lady's slipper, yellow lady-slipper, Cypripedium calceolus, Cypripedium parviflorum"  # ImageNet's


@pytest.mark.parametrize("name", [LONG_NAME, "x" * 200])
def test_a_long_class_name_wraps_inside_the_panel_and_the_title_keeps_it_whole(model, name):
    x = torch.rand(1, 3, 32, 32)
    panel = explanation_panel(x, model.explain(x, target=0), class_names=[name, "dog", "bird"])
    pixels = np.asarray(panel).astype(int)
    header = pixels[: pixels.shape[0] - TILE - CAPTION]
    assert header.shape[0] > 3 * 18  # more than the two lines of a short title
    assert (header[:, -4:] == 255).all()  # no text runs into the panel's edge
    assert panel.info["Title"].startswith(f"explained: {name} (logit ")


def test_a_newline_or_tab_in_a_class_name_is_a_space_in_the_title(model):
    explanation = model.explain(torch.rand(1, 3, 32, 32), target=0)
    assert explanation_title(explanation, 0, ["tabby\ncat\tsitting", "dog", "bird"])[0].startswith(
        "explained: tabby cat sitting (logit "
    )


def test_a_wide_photo_is_padded_for_a_square_model_not_squashed(model, tmp_path):
    photo = tmp_path / "wide.png"
    pixels = np.zeros((20, 80, 3), dtype=np.uint8)  # a black band, four times as wide as high
    Image.fromarray(pixels).save(photo)
    with Image.open(explain_image_file(model, photo)) as panel:
        array = np.asarray(panel.convert("RGB")).astype(int)
    top = array.shape[0] - CAPTION - TILE  # the input tile: bottom left, above its caption
    tile = array[top : top + TILE, :TILE]
    assert (tile[2] > 240).all() and (tile[-2] > 240).all()  # white above and below the band
    assert (tile[TILE // 2] < 15).all()  # the band itself, full width


def test_explanation_is_drawn_on_white_and_the_contribution_scale_runs_red_to_blue(model):
    x = torch.full((1, 3, 32, 32), 0.5)
    explanation = model.explain(x)
    explanation.dynamic_weights.zero_()  # nothing contributes: the explanation tile must be plain white
    panel = np.asarray(explanation_panel(x, explanation)).astype(int)
    row = panel.shape[0] // 2
    assert (panel[row, TILE + 20 : 2 * TILE - 20] == 255).all()
    column = panel[:, 3 * TILE + 20]  # through the colour scale, right of the three tiles
    bar = [tuple(pixel) for pixel in column if tuple(pixel) != (255, 255, 255)]
    assert bar[0][0] > bar[0][2] and bar[-1][2] > bar[-1][0]  # red at the top, blue at the bottom


def test_a_clip_model_explains_a_photo_against_the_prompts_it_is_given(tmp_path):
    save_clip_source(tmp_path / "clip")
    clip = BcosCLIPModel.from_pretrained_standard(tmp_path / "clip", b=2.0).eval()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    prompts = ["a photo of a cat", "a photo of a dog"]
    with Image.open(explain_image_file(clip, photo, target=1, text=prompts)) as panel:
        assert panel.text["Title"].startswith("explained: a photo of a dog (cosine ")  # not a logit
    pixels = clip.default_image_processor()(Image.open(photo).convert("RGB"), return_tensors="pt").pixel_values
    expected = clip.explain(pixels, text=prompts)
    with Image.open(explain_image_file(clip, photo, text=prompts)) as panel:  # the best match by default
        assert panel.text["Title"].startswith(f"explained: {prompts[int(expected.target[0])]} (")


def test_a_clip_model_s_own_processor_crops_a_wide_photo_as_its_image_processor_does(tmp_path):
    """Given the folder's AutoProcessor (a CLIPProcessor, tokenizer included), the photo is cropped by its image
    processor, not padded onto a white square."""
    save_clip_source(tmp_path / "clip")
    BcosCLIPModel.from_pretrained_standard(tmp_path / "clip", b=2.0).save_pretrained(tmp_path / "bcos")
    clip = BcosCLIPModel.from_pretrained(tmp_path / "bcos").eval()
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 80, 3), dtype=np.uint8)).save(photo)
    prompts = ["a photo of a cat", "a photo of a dog"]
    own = explain_image_file(clip, photo, text=prompts, output=tmp_path / "own.png")
    auto = explain_image_file(clip, photo, text=prompts, output=tmp_path / "auto.png",
                              processor=AutoProcessor.from_pretrained(tmp_path / "bcos"))  # fmt: skip
    with Image.open(own) as first, Image.open(auto) as second:
        assert np.array_equal(np.asarray(first), np.asarray(second))


@pytest.fixture(scope="module")
def one_channel_model():
    source = timm_vit(in_chans=1, seed=2)
    return BcosViTForImageClassification.from_pretrained_standard(source, image_mean=(0.3,), image_std=(0.2,)).eval()


def test_a_one_channel_model_explains_a_colour_photo_in_greyscale(one_channel_model, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(photo)
    with Image.open(explain_image_file(one_channel_model, photo, target=1)) as panel:
        assert panel.text["Title"].startswith(f"explained: {one_channel_model.config.id2label[1]} (logit ")


def test_a_one_channel_model_runs_the_explanation_pipeline_on_a_colour_photo(one_channel_model, tmp_path):
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    processor = one_channel_model.default_image_processor()
    pipe = pipeline("image-explanation", model=one_channel_model, image_processor=processor)
    explained = pipe(photo, top_k=1)[0]["explanation"]
    pixels = processor(photo.convert("L"), return_tensors="pt").pixel_values
    expected = one_channel_model.explain(pixels)
    np.testing.assert_allclose(explained["contributions"], expected.contributions[0].numpy(), rtol=1e-5, atol=1e-6)


def test_a_colour_image_given_to_a_one_channel_model_is_refused_asking_for_greyscale(one_channel_model):
    with pytest.raises(ValueError, match=r"shape \(batch, 1, height, width\).*this model takes greyscale images"):
        one_channel_model(pixel_values=torch.rand(1, 3, 32, 32))
