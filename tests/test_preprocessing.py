"""One image, one set of pixels: every path from an image to a B-cos model's input agrees, for any aspect ratio."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sources import hf_vit, save_hf_source
from transformers import AutoImageProcessor

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.conversion.common import source_normalization
from bcos_zoo.data.datasets import TransformedImages, image_folder
from bcos_zoo.data.preprocessing import load_image, model_transform
from bcos_zoo.training import get_task
from bcos_zoo.zoo.recipes import Recipe


SPACE = "spaces/bcos-vit-explainer"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model = BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3), b=2.0, bias="remove").eval()
    model.save_pretrained(folder)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (150, 257, 3), dtype=np.uint8))  # wide, over twice the model size
    image.save(folder / "wide.png")
    return folder, model, image


def test_saved_processor_and_model_transform_give_the_same_pixels(saved):
    folder, model, image = saved
    from_repo = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(model_transform(model)(image), from_repo, rtol=0, atol=0)
    assert from_repo.shape == (3, model.config.image_size, model.config.image_size)


def test_an_image_with_an_exif_rotation_is_taken_upright_as_the_pipeline_takes_it(saved, tmp_path):
    from bcos_zoo.modeling.pipeline_bcos_explanation import read_image

    _, model, _ = saved
    picture = np.zeros((40, 64, 3), dtype=np.uint8)
    picture[:, :32, 0] = 255  # red left, black right: a quarter turn puts red on top
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: shown turned a quarter clockwise
    Image.fromarray(picture).save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as opened:
        pixels = model_transform(model)(opened)
    upright = model_transform(model)(read_image(str(tmp_path / "turned.png")))
    torch.testing.assert_close(pixels, upright, rtol=0, atol=0)
    half = model.config.image_size // 2
    assert pixels[0, :half].mean() > 0.9 and pixels[0, half:].mean() < 0.1


def test_finetune_evaluation_sees_the_processor_pixels(saved):
    folder, model, image = saved
    recipe = Recipe(name="run", source=str(folder), dataset="unused", hub_model_id="org/run")
    dataset = TransformedImages([(image, 0)], get_task(recipe).eval_transform(model))
    torch.testing.assert_close(dataset[0]["pixel_values"], model_transform(model)(image), rtol=0, atol=0)


@pytest.mark.subprocess
def test_space_sees_the_processor_pixels(saved, clean_python):
    folder, model, image = saved
    output = folder / "space_pixels.safetensors"
    clean_python(
        f"""
        import os, sys
        os.environ["MODEL_ID"] = {str(folder)!r}
        os.environ["GRADIO_TEMP_DIR"] = {str(folder)!r}  # the app reads only its uploads: wide.png is one
        sys.path.insert(0, os.getcwd())
        import app
        from safetensors.torch import save_file

        processor = app.LOADED[app.MODEL_ID].processor  # the default model's
        pixels = processor(images=app.read_image({str(folder / "wide.png")!r}), return_tensors="pt")
        save_file({{"pixel_values": pixels["pixel_values"][0].contiguous()}}, {str(output)!r})
        """,
        cwd=SPACE,
    )
    torch.testing.assert_close(load_file(output)["pixel_values"], model_transform(model)(image), rtol=0, atol=0)


def test_a_source_that_does_not_normalise_is_converted_without_normalisation(tmp_path):
    source = hf_vit(labels=3).eval()
    folder = tmp_path / "source"
    save_hf_source(source, folder, (0.3, 0.4, 0.5), (0.2, 0.2, 0.2))
    assert source_normalization(folder) == ((0.3, 0.4, 0.5), (0.2, 0.2, 0.2))
    config = folder / "preprocessor_config.json"
    config.write_text(config.read_text().replace('"do_normalize": true', '"do_normalize": false'))
    assert source_normalization(folder) == ((0.0,), (1.0,))  # every channel's

    converted = BcosViTForImageClassification.from_pretrained_standard(str(folder), b=1.0, bias="keep").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            converted(pixel_values=x).logits, source(pixel_values=x).logits, rtol=1e-4, atol=1e-4
        )


def test_a_16_bit_greyscale_file_is_rescaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 20000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I")  # what Pillow's own convert("RGB") would clip at 255
    pixels = np.asarray(load_image(tmp_path / "deep.png"))
    assert pixels.shape == (2, 3, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], np.round(values / 65535 * 255).astype(np.uint8))


def test_transparency_lies_on_white_as_a_viewer_shows_it(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 10, 10, 255)  # opaque red; the rest is transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    pixels = np.asarray(load_image(tmp_path / "cutout.png"))
    assert tuple(pixels[0, 0]) == (200, 10, 10) and (pixels.reshape(-1, 3)[1:] == 255).all()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_transparent_colour_key_lies_on_white_too(mode, tmp_path):
    image = Image.new(mode, (2, 1), (10, 20, 30) if mode == "RGB" else 10)
    image.putpixel((1, 0), (200, 10, 10) if mode == "RGB" else 200)
    image.save(tmp_path / "keyed.png", transparency=(10, 20, 30) if mode == "RGB" else 10)  # a tRNS chunk
    pixels = np.asarray(load_image(tmp_path / "keyed.png"))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == ((200, 10, 10) if mode == "RGB" else (200, 200, 200))


def test_a_16_bit_colour_key_lies_on_white_and_spares_values_that_share_its_8_bits(tmp_path):
    values = np.array([[1000, 1001, 50000]], dtype=np.uint16)  # 1000 and 1001 both rescale to 4
    Image.fromarray(values).save(tmp_path / "keyed16.png", transparency=1000)  # a 16-bit tRNS chunk
    pixels = np.asarray(load_image(tmp_path / "keyed16.png"))[0]
    assert pixels.tolist() == [[255] * 3, [4] * 3, [195] * 3]


def test_an_image_folder_dataset_reads_16_bit_files_as_load_image_does(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16)).save(tmp_path / name / "x.png")
    data = image_folder(tmp_path, validation_fraction=0.5)
    image, _ = data.train[0]
    assert np.asarray(image).max() == round(30000 / 65535 * 255)
