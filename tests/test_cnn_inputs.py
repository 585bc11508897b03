"""Bad inputs and unsupported sources fail with errors that say what is wrong and what is supported."""

import json

import pytest
import torch
from cnn_sources import (
    MEAN,
    STD,
    hf_resnet,
    save_timm,
    single_thread,  # noqa: F401
    timm_cnn,
    torchvision_resnet18,
)
from safetensors.torch import load_file, save_file

from bcos_zoo import (
    BcosDenseNetForImageClassification,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosViTForImageClassification,
)


@pytest.fixture(scope="module")
def model():
    config = BcosResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    return BcosResNetForImageClassification(config).eval()


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "floating point"),
        (torch.rand(3, 32, 32), "shape"),
        (torch.rand(1, 1, 32, 32), "shape"),
        (torch.rand(1, 3, 32, 32) * 2 - 1, r"\[0, 1\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    ],
)
def test_bad_pixel_values_are_refused_by_forward_and_explain(model, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixel_values)
    with pytest.raises(ValueError, match=message):
        model.explain(pixel_values)


def test_an_empty_batch_gives_empty_logits_and_explanations(model):
    assert model(pixel_values=torch.rand(0, 3, 32, 32)).logits.shape == (0, 3)
    assert model.explain(torch.rand(0, 3, 40, 24)).contributions.shape == (0, 40, 24)


def test_a_list_is_not_pixel_values(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(pixel_values=[[0.5]])


def test_bad_target_is_refused(model):
    with pytest.raises(ValueError, match="target"):
        model.explain(torch.rand(2, 3, 32, 32), target=7)


@pytest.mark.parametrize("target", ["LABEL_1", ["LABEL_0", "LABEL_1"]], ids=["name", "names"])
def test_a_class_name_as_target_points_to_id2label(model, target):
    with pytest.raises(ValueError, match=r"class indices.*model\.config\.id2label.*labels="):
        model.explain(torch.rand(2, 3, 32, 32), target=target)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(layer_type="dense"), "layer_type"),
        (dict(hidden_act="gelu"), "relu"),
        (dict(stem_pool="min"), "stem_pool"),
        (dict(b=0.5), "b must be"),
        (dict(hidden_sizes=[8], depths=[1, 1]), "one entry per stage"),
    ],
)
def test_bad_config_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        BcosResNetConfig(**fields)


def test_unknown_bias_mode_is_refused():
    with pytest.raises(ValueError, match="'keep' or 'remove'"):
        BcosResNetForImageClassification.from_pretrained_standard(torchvision_resnet18(), bias="some")


def test_a_densenet_is_not_a_resnet():
    import torchvision

    with pytest.raises(ValueError, match=r"use BcosDenseNetForImageClassification\.from_pretrained_standard"):
        BcosResNetForImageClassification.from_pretrained_standard(torchvision.models.densenet121(weights=None))


def test_a_resnet_is_not_a_densenet():
    with pytest.raises(ValueError, match=r"use BcosResNetForImageClassification\.from_pretrained_standard"):
        BcosDenseNetForImageClassification.from_pretrained_standard(torchvision_resnet18())


def test_timm_resnet_with_a_deep_stem_is_refused():
    with pytest.raises(ValueError, match="deep stem"):
        BcosResNetForImageClassification.from_pretrained_standard(timm_cnn("resnet18d"))


def test_timm_resnet_with_attention_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        BcosResNetForImageClassification.from_pretrained_standard(timm_cnn("seresnet18"))


def test_dilated_torchvision_resnet_is_refused():
    import torchvision

    source = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    with pytest.raises(ValueError, match="differs from the standard layout"):
        BcosResNetForImageClassification.from_pretrained_standard(source, image_mean=MEAN, image_std=STD)


def test_unsupported_timm_architecture_folder_is_refused(tmp_path):
    save_timm(timm_cnn("resnet18"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architecture": "resnet50d"}))
    with pytest.raises(ValueError, match="'resnet50d', which is not supported. Supported"):
        BcosResNetForImageClassification.from_pretrained_standard(tmp_path)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet18", dict(global_pool="max"), "global pooling is 'max'"),
        ("resnet18", dict(act_layer="silu"), "is a SiLU"),
        ("resnet18", dict(output_stride=16), "differs from the standard layout"),
        ("densenet121", dict(act_layer="silu"), "not BatchNorm \\+ ReLU"),
    ],
)
def test_a_timm_folder_is_refused_for_what_its_config_says_not_only_its_name(name, options, message, tmp_path):
    """The weights of these fit the plain architecture; only config.json's model_args tell the function apart."""
    save_timm(timm_cnn(name, **options), tmp_path)
    family = BcosDenseNetForImageClassification if name.startswith("densenet") else BcosResNetForImageClassification
    with pytest.raises(ValueError, match=message):
        family.from_pretrained_standard(tmp_path)


def test_a_timm_folder_of_another_family_is_refused_by_its_class(tmp_path):
    save_timm(timm_cnn("resnet18"), tmp_path)
    with pytest.raises(ValueError, match="Cannot B-cosify a ResNet"):
        BcosViTForImageClassification.from_pretrained_standard(tmp_path)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_timm(timm_cnn("resnet18"), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["layer2.0.conv1.weight"] = weights["layer2.0.conv1.weight"][:, :3].contiguous()
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        BcosResNetForImageClassification.from_pretrained_standard(tmp_path)


def test_missing_weights_are_refused(tmp_path):
    save_timm(timm_cnn("densenet121"), tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["features.denseblock2.denselayer3.norm1.running_var"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing"):
        BcosDenseNetForImageClassification.from_pretrained_standard(tmp_path)


def test_folder_without_safetensors_is_refused(tmp_path):
    save_timm(timm_cnn("resnet18"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        BcosResNetForImageClassification.from_pretrained_standard(tmp_path)


def test_transformers_model_of_another_type_is_refused(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match="'vit' model. Supported"):
        BcosResNetForImageClassification.from_pretrained_standard(tmp_path)


def test_missing_hub_repo_names_what_is_supported():
    with pytest.raises(ValueError, match="Supported sources: a timm DenseNet"):
        BcosDenseNetForImageClassification.from_pretrained_standard("no-such-org/no-such-densenet")


def test_resnet_without_classifier_is_refused():
    source = hf_resnet("basic", labels=0)
    with pytest.raises(ValueError, match="classification head"):
        BcosResNetForImageClassification.from_pretrained_standard(source)


def test_a_vgg_config_that_pools_by_maximum_is_refused_not_ignored(tmp_path):
    # an option of earlier versions: a saved config naming it would otherwise load with average pooling
    import json

    from bcos_zoo import BcosVGGConfig

    BcosVGGConfig(hidden_sizes=[8], depths=[1], head_size=8, stage_pool="avg").save_pretrained(tmp_path)
    assert not hasattr(BcosVGGConfig.from_pretrained(tmp_path), "stage_pool")
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "stage_pool": "max"}))
    with pytest.raises(ValueError, match="stage_pool other than 'avg' is not supported"):
        BcosVGGConfig.from_pretrained(tmp_path)
