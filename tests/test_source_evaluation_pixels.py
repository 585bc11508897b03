"""A B-cosified model's saved image processor gives the pixels its source is evaluated on (its resize, crop and
filter; without the normalisation, which the model folds in), to one 8-bit level, for every kind of source.

The images are noise, on which another filter, size or crop offset changes almost every pixel. Their sizes leave even
crop margins: torchvision (timm's transform) rounds half a pixel of margin to even, transformers down. timm and
torchvision resize PIL images, so the saved processor is compared to them with transformers' PIL backend (its default
torchvision backend resizes tensors, a few values in 100,000 then differ by two levels).
"""

import json

import numpy as np
import pytest
import torch
from cnn_sources import (
    MEAN,
    STD,
    hf_resnet,
    save_timm,
    single_thread,  # noqa: F401
    timm_cnn,
    torchvision_densenet121,
    torchvision_resnet18,
)
from PIL import Image
from sources import hf_vit, timm_vit
from transformers import (
    AutoImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    ViTImageProcessor,
)

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification, BcosViTForImageClassification


ONE_LEVEL = 1 / 255 + 1e-6
UNNORMALISED = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def saved_processor_pixels(model, folder, image: Image.Image, backend: str | None = None) -> torch.Tensor:
    """The pixels of the processor that ``save_pretrained`` writes beside the weights, loaded as a user loads it
    (with transformers' ``backend``, if given)."""
    model.save_pretrained(folder)
    options = {"backend": backend} if backend else {}
    return AutoImageProcessor.from_pretrained(folder, **options)(image, return_tensors="pt").pixel_values[0]


def timm_pixels(source, image: Image.Image) -> torch.Tensor:
    """timm's evaluation transform of ``source`` (its pretrained_cfg), without the normalisation."""
    from timm.data import create_transform, resolve_data_config

    return create_transform(**dict(resolve_data_config(model=source), **UNNORMALISED))(image)


def assert_same_pixels(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= ONE_LEVEL


SQUARE_IMAGE, WIDE_IMAGE = noise_image(60, 60), noise_image(72, 48)
TRANSFORMERS_VIT_PROCESSORS = {
    # google/vit-*: the whole image squashed to the input size, bilinear
    "vit": (ViTImageProcessor(size={"height": 32, "width": 32}, resample=2), WIDE_IMAGE),
    # facebook/deit-*: squashed to 40 x 40, bicubic, the centre 32 cropped; the B-cos processor keeps the aspect ratio
    # (DeiT's own evaluation), which gives the same pixels for a square image
    "deit": (
        DeiTImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, resample=3),
        SQUARE_IMAGE,
    ),
    "shortest-edge-and-crop-size": (
        CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, resample=3),
        noise_image(72, 54),  # 54 -> 36, 72 -> 48: margins 4 and 16
    ),
    "shortest-edge-and-crop-pct": (
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.8, resample=3),
        WIDE_IMAGE,
    ),
}


@pytest.mark.parametrize("kind", TRANSFORMERS_VIT_PROCESSORS, ids=list(TRANSFORMERS_VIT_PROCESSORS))
def test_a_transformers_vit_folder_s_processor_is_carried(kind, tmp_path):
    processor, image = TRANSFORMERS_VIT_PROCESSORS[kind]
    hf_vit().save_pretrained(tmp_path / "source")
    processor.save_pretrained(tmp_path / "source")
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path / "source", b=1, bias="keep")
    theirs = AutoImageProcessor.from_pretrained(tmp_path / "source")(image, do_normalize=False, return_tensors="pt")
    assert_same_pixels(saved_processor_pixels(bcos, tmp_path / "bcos", image), theirs.pixel_values[0])


@pytest.mark.parametrize(
    "settings, expected",
    [
        # google/vit-base-patch16-224's file: an integer size is a square to ViT's processor
        (dict(feature_extractor_type="ViTFeatureExtractor", size=32, resample=2), dict(crop_pct=None, resample=2)),
        # facebook/deit-base-patch16-224's file (sizes scaled down)
        (
            dict(feature_extractor_type="DeiTFeatureExtractor", size=40, crop_size=32, do_center_crop=True, resample=3),
            dict(crop_pct=0.8, resample=3),
        ),
    ],
    ids=["vit", "deit"],
)
def test_the_processor_files_of_older_hub_checkpoints_are_read(settings, expected, tmp_path):
    hf_vit().save_pretrained(tmp_path)
    settings = dict(settings, do_resize=True, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    config = BcosViTForImageClassification.from_pretrained_standard(tmp_path, b=1, bias="keep").config
    assert (config.crop_pct, config.resample) == (expected["crop_pct"], expected["resample"])


def test_a_transformers_vit_in_memory_keeps_the_default_processor():
    config = BcosViTForImageClassification.from_pretrained_standard(hf_vit(), b=1, bias="keep").config
    assert (config.crop_pct, config.resample) == (None, 2)


TIMM_EVALUATIONS = {
    "centre-crop-bicubic": dict(crop_pct=0.8, interpolation="bicubic"),
    "centre-crop-bilinear": dict(crop_pct=0.875, interpolation="bilinear"),
    "squash": dict(crop_pct=1.0, interpolation="bicubic", crop_mode="squash"),
    "centre-crop-of-all": dict(crop_pct=1.0, interpolation="bicubic", crop_mode="center"),  # crops, not squashes
}


@pytest.mark.parametrize("where", ["in memory", "folder"])
@pytest.mark.parametrize("evaluation", TIMM_EVALUATIONS, ids=list(TIMM_EVALUATIONS))
def test_a_timm_vit_s_evaluation_transform_is_carried(evaluation, where, tmp_path):
    from timm.models import save_for_hf

    source = timm_vit()
    source.pretrained_cfg = dict(source.pretrained_cfg, input_size=(3, 32, 32), **TIMM_EVALUATIONS[evaluation])
    if where == "folder":
        save_for_hf(source, str(tmp_path / "source"), safe_serialization=True)
    given = source if where == "in memory" else tmp_path / "source"
    bcos = BcosViTForImageClassification.from_pretrained_standard(given, b=1, bias="keep")
    ours = saved_processor_pixels(bcos, tmp_path / "bcos", WIDE_IMAGE, backend="pil")
    assert_same_pixels(ours, timm_pixels(source, WIDE_IMAGE))


def test_a_timm_cnn_folder_s_evaluation_transform_is_carried(tmp_path):
    source = timm_cnn("resnet18")  # 40 px, crop_pct 0.9
    source.pretrained_cfg = dict(source.pretrained_cfg, interpolation="bilinear")
    save_timm(source, tmp_path / "source")
    bcos = BcosResNetForImageClassification.from_pretrained_standard(tmp_path / "source", b=1.0, bias="keep")
    ours = saved_processor_pixels(bcos, tmp_path / "bcos", WIDE_IMAGE, backend="pil")
    assert_same_pixels(ours, timm_pixels(source, WIDE_IMAGE))


def test_a_transformers_resnet_folder_s_resize_filter_is_carried(tmp_path):
    hf_resnet().save_pretrained(tmp_path / "source")
    processor = ConvNextImageProcessor(
        size={"shortest_edge": 40}, crop_pct=0.9, resample=2, image_mean=list(MEAN), image_std=list(STD)
    )
    processor.save_pretrained(tmp_path / "source")
    bcos = BcosResNetForImageClassification.from_pretrained_standard(tmp_path / "source", b=1.0, bias="keep")
    theirs = processor(WIDE_IMAGE, do_normalize=False, return_tensors="pt").pixel_values[0]
    assert_same_pixels(saved_processor_pixels(bcos, tmp_path / "bcos", WIDE_IMAGE), theirs)


@pytest.mark.parametrize("family", ["resnet", "densenet"])
def test_a_torchvision_cnn_gets_torchvision_s_bilinear_evaluation(family, tmp_path):
    """torchvision evaluates its ResNet and DenseNet weights bilinear (resize 256, crop the centre 224: V1 weights)."""
    from torchvision.models import DenseNet121_Weights, ResNet18_Weights

    build, cls, weights = {
        "resnet": (torchvision_resnet18, BcosResNetForImageClassification, ResNet18_Weights.IMAGENET1K_V1),
        "densenet": (torchvision_densenet121, BcosDenseNetForImageClassification, DenseNet121_Weights.IMAGENET1K_V1),
    }[family]
    bcos = cls.from_pretrained_standard(build(), b=1.0, bias="keep", image_mean=MEAN, image_std=STD)
    image = noise_image(400, 320)  # 320 -> 256, 400 -> 320: margins 32 and 96
    torchvision = weights.transforms(**UNNORMALISED)  # weights.transforms() without the normalisation
    assert_same_pixels(saved_processor_pixels(bcos, tmp_path, image, backend="pil"), torchvision(image))
