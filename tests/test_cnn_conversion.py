"""B-cosifying ResNets and DenseNets at b=1, bias="keep" computes the source's logits (max diff <= 1e-4, float32)."""

import json

import pytest
import torch
from cnn_sources import (
    MEAN,
    STD,
    hf_resnet,
    normalize,
    save_timm,
    single_thread,  # noqa: F401
    timm_cnn,
    torchvision_densenet121,
    torchvision_resnet18,
)
from transformers import ConvNextImageProcessor

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification


TOLERANCE = 1e-4


def logits_of(source: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = source(normalize(pixel_values))
    return getattr(out, "logits", out)


def max_diff(bcos, source, size: int = 40, batch: int = 3) -> float:
    pixel_values = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = bcos(pixel_values=pixel_values).logits
    theirs = logits_of(source, pixel_values)
    assert theirs.abs().max() > 0.1, "a source whose logits are all near zero tests nothing"
    return (ours - theirs).abs().max().item()


def test_the_converted_model_computes_the_source_logits_as_it_comes_without_a_call_to_eval():
    source = torchvision_resnet18()
    bcos = BcosResNetForImageClassification.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD
    )
    assert max_diff(bcos, source) <= TOLERANCE
    assert max_diff(bcos, source) <= TOLERANCE  # and its BatchNorm statistics are still the source's


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
def test_transformers_resnet_folder_is_preserved(layer_type, tmp_path):
    source = hf_resnet(layer_type)
    source.save_pretrained(tmp_path)
    ConvNextImageProcessor(size={"shortest_edge": 40}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(
        tmp_path
    )
    bcos = BcosResNetForImageClassification.from_pretrained_standard(tmp_path, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) <= TOLERANCE
    assert bcos.config.id2label == source.config.id2label
    assert bcos.config.image_size == 40


def test_transformers_resnet_downsampling_in_bottleneck_and_first_stage_is_preserved():
    source = hf_resnet("bottleneck", downsample_in_bottleneck=True, downsample_in_first_stage=True)
    bcos = BcosResNetForImageClassification.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD
    ).eval()
    assert max_diff(bcos, source, size=48) <= TOLERANCE


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnet_in_hub_layout_is_preserved(name, tmp_path):
    source = timm_cnn(name)
    save_timm(source, tmp_path)
    bcos = BcosResNetForImageClassification.from_pretrained_standard(tmp_path, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) <= TOLERANCE
    assert (bcos.config.image_size, bcos.config.crop_pct) == (40, 0.9)


def test_timm_densenet121_in_hub_layout_is_preserved(tmp_path):
    source = timm_cnn("densenet121")
    save_timm(source, tmp_path)
    bcos = BcosDenseNetForImageClassification.from_pretrained_standard(tmp_path, b=1.0, bias="keep").eval()
    assert bcos.config.block_config == [6, 12, 24, 16]
    assert max_diff(bcos, source) <= TOLERANCE


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_timm_resnet_in_memory_is_preserved(name):
    source = timm_cnn(name)
    bcos = BcosResNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) <= TOLERANCE


def test_timm_densenet121_in_memory_is_preserved():
    source = timm_cnn("densenet121")
    bcos = BcosDenseNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) <= TOLERANCE


def test_torchvision_resnet18_is_preserved():
    source = torchvision_resnet18()
    bcos = BcosResNetForImageClassification.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD
    ).eval()
    assert max_diff(bcos, source) <= TOLERANCE


def test_torchvision_densenet121_is_preserved():
    source = torchvision_densenet121()
    bcos = BcosDenseNetForImageClassification.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD
    ).eval()
    assert max_diff(bcos, source) <= TOLERANCE


def test_a_torchvision_resnet_whose_head_is_not_one_linear_layer_is_refused_naming_its_layers():
    source = torchvision_resnet18()
    source.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), source.fc)  # a common fine-tuning head
    with pytest.raises(ValueError, match=r"classification head is not one linear layer fc \(fc holds layers \['1'\]\)"):
        BcosResNetForImageClassification.from_pretrained_standard(source)


def test_wrong_normalisation_is_not_preserved():
    """The check above can fail: folding another mean/std changes the logits."""
    source = torchvision_resnet18()
    bcos = BcosResNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) > 1e-2


def test_remove_conversion_drops_every_constant():
    source = timm_cnn("resnet18")
    bcos = BcosResNetForImageClassification.from_pretrained_standard(source, b=2.0, bias="remove")
    names = [name for name, _ in bcos.named_parameters()] + [name for name, _ in bcos.named_buffers()]
    assert not [n for n in names if n.endswith((".bias", "running_mean"))]
    assert isinstance(bcos.bcos_resnet.embedder.pooler, torch.nn.AvgPool2d)
    assert bcos.config.classify_before_pooling and bcos.config.resolved_logit_bias == pytest.approx(
        -torch.log(torch.tensor(4.0)).item()
    )


def test_backbone_class_takes_the_backbone_weights():
    from bcos_zoo import BcosResNetModel

    source = hf_resnet("basic")
    backbone = BcosResNetModel.from_pretrained_standard(source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD)
    pixel_values = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        ours = backbone.eval()(pixel_values).pooler_output
        theirs = source.resnet(normalize(pixel_values)).pooler_output
    assert (ours - theirs).abs().max() <= TOLERANCE


@pytest.mark.parametrize("bias", ["keep", "remove"])
def test_inference_fast_path_equals_the_autograd_path(bias):
    source = timm_cnn("resnet50")
    bcos = BcosResNetForImageClassification.from_pretrained_standard(source, b=2.0, bias=bias, logit_bias=0.0)
    bcos = bcos.double().eval()
    pixel_values = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    with torch.no_grad():
        fast = bcos(pixel_values).logits
    reference = bcos(pixel_values).logits  # parameters require grad: no fusing
    assert reference.requires_grad
    assert (fast - reference.detach()).abs().max() <= 1e-10 * reference.abs().max()


@pytest.mark.parametrize("interpolation, resample", [("bilinear", 2), ("bicubic", 3)])
def test_the_saved_processor_resizes_with_the_timm_source_s_filter(interpolation, resample, tmp_path):
    source = timm_cnn("resnet18")
    source.pretrained_cfg = dict(source.pretrained_cfg, interpolation=interpolation)
    model = BcosResNetForImageClassification.from_pretrained_standard(source)
    assert model.config.resample == resample
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["resample"] == resample


def test_a_1000_class_torchvision_source_names_imagenet_classes():
    bcos = BcosResNetForImageClassification.from_pretrained_standard(
        torchvision_resnet18(labels=1000), b=1.0, bias="keep"
    )
    assert bcos.config.id2label[0] == "tench, Tinca tinca" and bcos.config.id2label[999].startswith("toilet tissue")
    five = BcosDenseNetForImageClassification.from_pretrained_standard(torchvision_densenet121(), b=1.0, bias="keep")
    assert five.config.id2label == {i: f"LABEL_{i}" for i in range(5)}


def test_a_timm_resnet_folder_s_label_names_name_the_classes(tmp_path):
    from timm.models import save_for_hf

    names = ["cat", "dog", "bird", "fish", "frog"]
    save_for_hf(timm_cnn("resnet18"), str(tmp_path), model_config={"label_names": names}, safe_serialization=True)
    bcos = BcosResNetForImageClassification.from_pretrained_standard(tmp_path, b=1.0, bias="keep")
    assert bcos.config.id2label == dict(enumerate(names))


def test_an_in_memory_timm_densenet_s_label_names_name_the_classes():
    source = timm_cnn("densenet121")
    source.pretrained_cfg = dict(source.pretrained_cfg, label_names={str(i): f"class {i}" for i in range(5)})
    bcos = BcosDenseNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep")
    assert bcos.config.id2label == {i: f"class {i}" for i in range(5)}


@pytest.mark.parametrize(
    "regulariser", [dict(drop_path_rate=0.1), dict(drop_block_rate=0.1)], ids=["drop-path", "drop-block"]
)
def test_a_timm_resnet_built_with_training_only_regularisers_is_reproduced_exactly(regulariser):
    """Stochastic depth and DropBlock act in training only; in evaluation the source is the plain ResNet."""
    source = timm_cnn("resnet18", **regulariser)
    assert any(type(m).__name__ in ("DropPath", "DropBlock2d") for m in source.modules())
    bcos = BcosResNetForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    assert max_diff(bcos, source) <= TOLERANCE
