"""Bad input gets a clear error that says how to fix it."""

import inspect

import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessor

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.families import FAMILIES


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = BcosViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return BcosViTForImageClassification(config).eval()


def test_normalised_images_are_rejected_with_the_fix(model):
    normalised = (torch.rand(2, 3, 32, 32) - 0.485) / 0.229
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*do_normalize=False.*x \* std \+ mean"):
        model(pixel_values=normalised)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model.explain(normalised)


def test_a_float_image_a_bicubic_resize_pushed_past_the_range_is_refused_naming_the_clamp(model):
    edge = torch.zeros(3, 40, 40)
    edge[:, :, 20:] = 1.0  # a hard edge: bicubic resampling rings past 0 and 1 on both sides
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, resample=Image.BICUBIC, do_normalize=False)
    resized = processor(edge, do_rescale=False, return_tensors="pt").pixel_values
    assert resized.min() < -1e-3 and resized.max() > 1 + 1e-3  # what a user's pipeline hands the model
    with pytest.raises(ValueError, match=r"bicubic filter overshoots \[0, 1\] a little: clamp it"):
        model(pixel_values=resized)
    assert model(pixel_values=resized.clamp(0, 1)).logits.shape == (1, model.config.num_labels)


def test_uint8_images_are_rejected_with_the_fix(model):
    with pytest.raises(ValueError, match=r"floating point.*float\(\) / 255"):
        model(pixel_values=torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 4, 32, 32)], ids=["grayscale", "rgba"])
def test_wrong_channel_count_is_rejected(model, shape):
    with pytest.raises(ValueError, match=r"shape \(batch, 3, height, width\).*this model takes RGB images") as refusal:
        model(pixel_values=torch.rand(shape))
    assert "Convert them to RGB" in str(refusal.value) and "unsqueeze" not in str(refusal.value)  # it has a batch


def test_missing_batch_dimension_is_rejected(model):
    with pytest.raises(ValueError, match="unsqueeze"):
        model(pixel_values=torch.rand(3, 32, 32))


def test_other_image_size_is_rejected_with_the_options(model):
    with pytest.raises(ValueError, match="takes 32x32 images, got 48x48.*interpolate_pos_encoding=True"):
        model(pixel_values=torch.rand(1, 3, 48, 48))


def test_interpolated_position_embeddings_take_other_sizes(model):
    out = model(pixel_values=torch.rand(2, 3, 48, 40), interpolate_pos_encoding=True)
    assert out.logits.shape == (2, 2)
    explanation = model.explain(torch.rand(1, 3, 48, 40), interpolate_pos_encoding=True)
    assert explanation.contributions.shape == (1, 48, 40)


def test_size_that_is_not_a_multiple_of_the_patch_is_rejected_with_how_to_resize(model):
    with pytest.raises(ValueError, match="8x8 patches and cannot take a 36x36 image: resize it"):
        model(pixel_values=torch.rand(1, 3, 36, 36), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match="cannot take a 30x45 image.*image processor"):
        model(pixel_values=torch.rand(1, 3, 30, 45))


def test_nan_input_is_rejected(model):
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(pixel_values=x)


def test_an_empty_batch_is_explained_as_empty(model):
    # the forward of an empty batch fails inside transformers' SDPA, as transformers' own ViT does
    explanation = model.explain(torch.rand(0, 3, 32, 32))
    assert explanation.contributions.shape == (0, 32, 32) and explanation.logits.shape == (0, 2)
    assert explanation.rgba.shape == (0, 32, 32, 4) and explanation.contribution_map().shape == (0, 32, 32, 3)


def test_invalid_config_values_are_rejected():
    with pytest.raises(ValueError, match="use_class_token"):
        BcosViTConfig(use_class_token=False, pooling="cls")
    with pytest.raises(ValueError, match="b must be a finite number >= 1"):
        BcosViTConfig(b=0.5)


def test_a_vit_whose_image_size_its_patches_do_not_tile_is_refused_at_its_config(tmp_path):
    """The saved processor resizes every image to image_size: a model that cannot take that size is no model."""
    from sources import hf_vit

    with pytest.raises(ValueError, match="image_size 36 must be a multiple of patch_size 8"):
        BcosViTConfig(image_size=36, patch_size=8)
    with pytest.raises(ValueError, match="image_size 36 must be a multiple of patch_size 8"):
        BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=2), image_size=36)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(image_size=30, patch_size=4), r"image_size 30 does not fit 4x4 patches .*use a multiple of 4\."),
        (dict(image_size=36, patch_size=2, conv_stem=[8, 16]), r"stem's 9x9 output\): use a multiple of 8\."),
    ],
)
def test_a_simple_vit_whose_image_size_its_patches_do_not_tile_is_refused(fields, message):
    from bcos_zoo import BcosSimpleViTConfig, BcosSimpleViTForImageClassification

    small = dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=3, intermediate_size=48)
    with pytest.raises(ValueError, match=message):
        BcosSimpleViTForImageClassification(BcosSimpleViTConfig(**small, **fields))
    # a size that the stem's output does tile is taken: 30 -> 15 -> 8 with 1x1 patches
    BcosSimpleViTForImageClassification(BcosSimpleViTConfig(**small, image_size=30, patch_size=1, conv_stem=[8, 16]))


def test_the_device_side_range_message_fits_cuda_s_assert():
    # torch._assert_async on a CUDA tensor refuses messages of 255 characters or more (seen on an H200): the
    # check would break every GPU forward pass instead of guarding it
    from bcos_zoo.modeling.bcos_layers import _DEVICE_RANGE_MESSAGE

    assert len(_DEVICE_RANGE_MESSAGE) < 255


B_CONFIGS = [
    config_class
    for family in FAMILIES.values()
    for config_class in family.config_classes
    if "b" in inspect.signature(config_class.__init__).parameters
]


@pytest.mark.parametrize("config_class", B_CONFIGS, ids=lambda config_class: config_class.__name__)
@pytest.mark.parametrize("b", [0.5, float("nan"), float("inf")])
def test_every_family_config_refuses_an_exponent_that_is_not_a_finite_number_of_at_least_one(config_class, b):
    # NaN passes a plain ``b < 1`` check and makes every output NaN; an infinite B makes every cosine power 0 or NaN
    with pytest.raises(ValueError, match="b must be a finite number >= 1"):
        config_class(b=b)


@pytest.mark.parametrize("config_class", B_CONFIGS, ids=lambda config_class: config_class.__name__)
def test_every_family_config_reads_an_exponent_written_as_a_string(config_class):
    # a hand-edited config.json: "b": "3" compared a string with a number and failed with a TypeError about "<="
    assert config_class(b="3").b == 3.0
    with pytest.raises(ValueError, match="could not convert string to float: 'three'"):
        config_class(b="three")
