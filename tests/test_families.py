"""The family registry: one entry per model family, read by everything that depends on which families exist."""

import json
import re
import shutil

import pytest
import torch
from clip_testing import save_source as save_clip_source
from clip_testing import tiny_clip
from cnn_sources import hf_resnet, save_timm, timm_cnn, torchvision_densenet121, torchvision_resnet18
from open_clip_sources import reduced_rn
from sources import hf_vit, save_hf_source, timm_vit
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    PretrainedConfig,
    PreTrainedModel,
    ResNetConfig,
)

from bcos_zoo import (
    BcosCLIPModel,
    BcosCLIPResNetVisionModel,
    BcosCLIPVisionModel,
    BcosConvNextForImageClassification,
    BcosDenseNetForImageClassification,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosSimpleViTForImageClassification,
    BcosVGGForImageClassification,
    BcosViTForImageClassification,
)
from bcos_zoo.families import (
    FAMILIES,
    Family,
    bcos_classifier_class,
    family_for_source,
    family_of,
    register,
)


MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)


def bcos_standard_vitc():
    """The bcos package's smallest standard ViT-C, random weights: a source of the simple ViT family."""
    from bcos.models import pretrained

    return pretrained.standard_vitc_ti_patch1_14(pretrained=False)


def test_the_registry_holds_the_families():
    assert list(FAMILIES)[:7] == ["vit", "clip", "resnet", "densenet", "vgg", "convnext", "simple_vit"]
    assert all(name == family.name for name, family in FAMILIES.items())


def test_each_class_loads_through_the_auto_classes_its_family_names():
    expected = {
        BcosViTForImageClassification: {AutoModel, AutoModelForImageClassification},
        BcosCLIPVisionModel: {AutoModel},
        BcosCLIPModel: {AutoModel, AutoModelForZeroShotImageClassification},
        BcosCLIPResNetVisionModel: {AutoModel},
        BcosResNetForImageClassification: {AutoModel, AutoModelForImageClassification},
        BcosDenseNetForImageClassification: {AutoModel, AutoModelForImageClassification},
        BcosVGGForImageClassification: {AutoModel, AutoModelForImageClassification},
        BcosConvNextForImageClassification: {AutoModel, AutoModelForImageClassification},
        BcosSimpleViTForImageClassification: {AutoModel, AutoModelForImageClassification},
    }
    registered = {cls: set(autos) for family in FAMILIES.values() for cls, autos in family.auto_classes.items()}
    assert registered.items() >= expected.items()  # and a family added later loads through its own
    assert all(AutoModel in registered[family.classifier] for family in FAMILIES.values())
    for model_class, auto_classes in registered.items():
        config_class = model_class.config_class
        assert type(AutoConfig.for_model(config_class.model_type)) is config_class
        for auto_class in auto_classes:
            assert auto_class._model_mapping[config_class] is model_class


def test_every_model_class_b_cosifies_through_its_family_converter():
    for family in FAMILIES.values():
        for model_class in family.model_classes:
            assert model_class._standard_converter.__wrapped__ is family.converter, model_class.__name__


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    save_hf_source(hf_vit(), root / "hf_vit", MEAN, STD)
    save_timm(timm_vit(), root / "timm_vit")
    save_clip_source(root / "hf_clip")
    hf_resnet().save_pretrained(root / "hf_resnet")
    save_timm(timm_cnn("resnet18"), root / "timm_resnet18")
    save_timm(timm_cnn("densenet121"), root / "timm_densenet121")
    return root


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("hf_vit", "vit"),
        ("timm_vit", "vit"),
        ("hf_clip", "clip"),
        ("hf_resnet", "resnet"),
        ("timm_resnet18", "resnet"),
        ("timm_densenet121", "densenet"),
    ],
)
def test_a_saved_standard_source_is_recognised_by_its_config(folders, folder, name):
    assert family_for_source(folders / folder) is FAMILIES[name]


@pytest.mark.parametrize("folder", ["hf_vit", "timm_vit", "hf_clip", "hf_resnet", "timm_resnet18", "timm_densenet121"])
def test_a_truncated_weights_file_is_refused_naming_the_source_and_the_fix(folders, folder, tmp_path):
    copy = shutil.copytree(folders / folder, tmp_path / folder)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    family = family_for_source(copy)
    with pytest.raises(ValueError, match=rf"weights of {re.escape(str(copy))} cannot be read .* download it again"):
        family.classifier.from_pretrained_standard(str(copy))


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (hf_vit, "vit"),
        (timm_vit, "vit"),
        (tiny_clip, "clip"),
        (reduced_rn, "clip"),  # open_clip's CLIP ResNet
        (hf_resnet, "resnet"),
        (lambda: timm_cnn("resnet18"), "resnet"),
        (torchvision_resnet18, "resnet"),
        (lambda: timm_cnn("densenet121"), "densenet"),
        (torchvision_densenet121, "densenet"),
        (bcos_standard_vitc, "simple_vit"),
    ],
)
def test_a_standard_model_in_memory_is_recognised_by_its_type(build, name):
    assert family_for_source(build()) is FAMILIES[name]


def test_an_unsupported_source_is_refused_naming_every_family_and_its_sources(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin"}))
    for source in (tmp_path, nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="not a source of any B-cos family") as refused:
            family_for_source(source)
        for family in FAMILIES.values():
            assert f"{family.label}: {family.sources}" in str(refused.value)


def test_a_clip_source_makes_no_image_classifier(folders):
    with pytest.raises(ValueError, match="CLIP source B-cosifies into BcosCLIPModel, not into an image classifier"):
        bcos_classifier_class(folders / "hf_clip")


def test_the_family_of_a_model_its_config_or_its_model_type():
    assert family_of(BcosResNetConfig()) is FAMILIES["resnet"]
    assert family_of(ResNetConfig()) is FAMILIES["resnet"]  # the standard source's config
    assert family_of(hf_vit()) is FAMILIES["vit"]
    assert family_of("bcos_clip_vision_model") is FAMILIES["clip"]
    assert family_of(PretrainedConfig()) is family_of("swin") is None


class ToyNetConfig(PretrainedConfig):
    model_type = "bcos_toynet_for_tests"  # a name no real family will take


class BcosToyNetModel(PreTrainedModel):
    config_class = ToyNetConfig
    _standard_converter = None  # BcosPreTrainedModel's default


class BcosToyNetForImageClassification(BcosToyNetModel):
    pass


def bcosify_toynet(cls, source, b: float, bias: str, image_mean=None, image_std=None, **overrides):
    """A model of ``cls`` that records what its converter was given."""
    model = cls(ToyNetConfig(**overrides))
    model.given = {"source": source, "b": b, "bias": bias, "mean": image_mean, "std": image_std}
    return model


TOYNET = Family(
    name="toynet_for_tests",
    label="ToyNet",
    card_name="ToyNet",
    backbone=BcosToyNetModel,
    classifier=BcosToyNetForImageClassification,
    auto_classes={BcosToyNetForImageClassification: (AutoModel, AutoModelForImageClassification)},
    converter=bcosify_toynet,
    sources="a timm ToyNet",
    model_types=("toynet_for_tests",),
    timm_architectures=re.compile(r"^toynet_for_tests$"),
)


@pytest.fixture
def toynet_registered(monkeypatch):
    """TOYNET in the registry and in transformers' Auto mappings for one test, then gone from both."""
    monkeypatch.setitem(FAMILIES, TOYNET.name, TOYNET)
    mappings = [CONFIG_MAPPING] + [auto._model_mapping for auto in (AutoModel, AutoModelForImageClassification)]
    for mapping in mappings:
        monkeypatch.setattr(mapping, "_extra_content", dict(mapping._extra_content))
    register(TOYNET)
    yield TOYNET
    monkeypatch.undo()  # and then it leaves no trace in the registry or in transformers
    assert TOYNET.name not in FAMILIES and "bcos_toynet_for_tests" not in CONFIG_MAPPING
    assert ToyNetConfig not in AutoModelForImageClassification._model_mapping._extra_content


def test_a_new_family_is_one_registry_entry(toynet_registered, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "toynet_for_tests"}))
    assert family_for_source(tmp_path) is TOYNET
    assert bcos_classifier_class(tmp_path) is BcosToyNetForImageClassification
    assert family_of(ToyNetConfig()) is family_of("toynet_for_tests") is TOYNET
    assert type(AutoConfig.for_model("bcos_toynet_for_tests")) is ToyNetConfig
    assert AutoModelForImageClassification._model_mapping[ToyNetConfig] is BcosToyNetForImageClassification


def test_register_hooks_the_converter_as_from_pretrained_standard_calls_it(toynet_registered):
    for model_class in (BcosToyNetModel, BcosToyNetForImageClassification):
        made = model_class._standard_converter(model_class, "src", b=1.5, bias="keep", image_mean=MEAN, image_std=STD)
        assert type(made) is model_class
        assert made.given == {"source": "src", "b": 1.5, "bias": "keep", "mean": MEAN, "std": STD}


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("vit", hf_vit),
        ("clip", tiny_clip),
        ("resnet", hf_resnet),
        ("densenet", torchvision_densenet121),
        ("simple_vit", bcos_standard_vitc),
    ],
)
def test_from_pretrained_standard_is_the_family_converter(name, build):
    family = FAMILIES[name]
    source = build()
    options = dict(b=1.5, bias="keep", image_mean=MEAN, image_std=STD)
    made = family.classifier.from_pretrained_standard(source, **options)
    expected = family.converter(family.classifier, source, **options)
    assert type(made) is family.classifier
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(made.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("vit", hf_vit),
        ("clip", tiny_clip),
        ("clip", reduced_rn),
        ("resnet", hf_resnet),
        ("densenet", torchvision_densenet121),
        ("simple_vit", bcos_standard_vitc),
    ],
)
def test_a_b_cosified_model_comes_in_eval_mode_as_from_pretrained_gives_it(name, build):
    model = FAMILIES[name].classifier.from_pretrained_standard(build(), b=1.0, bias="keep")
    assert [n for n, module in model.named_modules() if module.training] == []


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("vit", hf_vit),
        ("vit", timm_vit),
        ("resnet", hf_resnet),
        ("densenet", torchvision_densenet121),
        ("clip", tiny_clip),
    ],
)
def test_a_float64_source_converts_in_float64_exactly(name, build):
    source = build().double()
    model = FAMILIES[name].classifier.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD
    )
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float64}
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    normalized = (x - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(STD, dtype=torch.float64)[
        :, None, None
    ]
    with torch.no_grad():
        if name == "clip":
            ours, theirs = (
                model.get_image_features(pixel_values=x).pooler_output,
                source.get_image_features(pixel_values=normalized).pooler_output,
            )
        else:
            ours, theirs = model(pixel_values=x).logits, source(normalized)
            theirs = getattr(theirs, "logits", theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_a_loaded_source_of_another_family_is_sent_to_its_class():
    from bcos.models.pretrained import standard_vitc_ti_patch1_14

    twin = standard_vitc_ti_patch1_14(pretrained=False)
    with pytest.raises(ValueError, match=r"BcosSimpleViTForImageClassification\.from_pretrained_standard"):
        BcosViTForImageClassification.from_pretrained_standard(twin)


@pytest.mark.parametrize("given", [dict(image_mean=MEAN), dict(image_std=STD)], ids=["mean", "std"])
def test_a_mean_without_a_std_or_the_reverse_is_refused_not_dropped(given):
    with pytest.raises(ValueError, match="Pass image_mean and image_std together"):
        BcosResNetForImageClassification.from_pretrained_standard(hf_resnet(), **given)


def test_an_argument_that_is_no_config_field_is_refused_not_stored():
    # "B" for "b", or a field the B-cos ViT does not have: a config would silently keep it and change nothing
    for typo in (dict(B=3.0), dict(hidden_dropout_prob=0.1)):
        with pytest.raises(ValueError, match=rf"Unknown arguments \['{next(iter(typo))}'\].*fields of BcosViTConfig"):
            BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3), **typo)


def test_an_override_that_changes_a_weight_s_shape_is_named_with_what_to_do_instead():
    with pytest.raises(ValueError, match=r"overrides \['num_labels'\] may be why.*fine-tune a new one"):
        BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3), num_labels=10)


def test_class_names_not_numbered_from_0_are_refused_naming_their_numbers():
    """A pipeline, the Space and evaluation look each output's name up by its number: a gap fails them later."""
    odd = hf_vit(labels=3)
    odd.config.id2label = {0: "cat", 5: "dog", 9: "bird"}
    with pytest.raises(ValueError, match=r"The source's id2label numbers its 3 classes \[0, 5, 9\]"):
        BcosViTForImageClassification.from_pretrained_standard(odd)
    with pytest.raises(ValueError, match=r"id2label= numbers its 3 classes \[1, 2, 3\].* 0 to 2"):
        BcosViTForImageClassification.from_pretrained_standard(hf_vit(labels=3), id2label={1: "a", 2: "b", 3: "c"})
    with pytest.raises(ValueError, match=r"id2label= must be a dict \{class number: name\}, got a list"):
        BcosResNetForImageClassification.from_pretrained_standard(hf_resnet(), id2label=["a", "b"])


def test_config_field_overrides_take_effect_and_keep_the_conversion_exact():
    source = hf_vit(labels=3).eval()
    names = {0: "cat", 1: "dog", 2: "bird"}
    model = BcosViTForImageClassification.from_pretrained_standard(
        source, b=1.0, bias="keep", image_mean=MEAN, image_std=STD, id2label=names, loss="cross_entropy"
    ).eval()
    assert model.config.id2label == names and model.config.loss == "cross_entropy"
    x = torch.rand(2, 3, 32, 32)
    expected = source(pixel_values=(x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
    torch.testing.assert_close(model(pixel_values=x).logits, expected.logits, rtol=1e-4, atol=1e-5)
