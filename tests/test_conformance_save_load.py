"""Each B-cos class saves on its own and reloads, as remote code in a clean process, with the Auto class a user
would reach for; saving leaves a config the caller shares untouched; loading in half precision takes float32 images.
"""

import json
import pickle

import pytest
import torch
from PIL import Image
from test_conformance_outputs import build, call, images
from tiny_models import TINY_CLASSIFIERS, TOWER
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification


AUTO = {
    "backbone": ("AutoModel", "BcosViTModel"),
    "classifier": ("AutoModelForImageClassification", "BcosViTForImageClassification"),
    "tower": ("AutoModel", "BcosCLIPVisionModel"),
    "clip": ("AutoModelForZeroShotImageClassification", "BcosCLIPModel"),
}
MAIN = {"backbone": "pooler_output", "classifier": "logits", "tower": "image_embeds", "clip": "logits_per_image"}


@pytest.mark.subprocess
def test_every_class_reloads_with_its_auto_class_in_a_clean_process(tmp_path, clean_python):
    expected = {"x": images()}
    for kind, (auto_class, name) in AUTO.items():
        model = build(kind)
        model.save_pretrained(tmp_path / kind)
        auto_map = json.loads((tmp_path / kind / "config.json").read_text())["auto_map"]
        assert auto_map[auto_class].endswith(f".{name}") and "AutoConfig" in auto_map
        with torch.no_grad():
            expected[kind] = call(kind, model, expected["x"])[MAIN[kind]]
    torch.save(expected, tmp_path / "expected.pt")
    clean_python(
        f"""
        import torch
        import transformers

        expected = torch.load("expected.pt")
        ids = torch.tensor([[0, 5, 7, 2], [0, 9, 2, 1]])
        for kind, (auto_class, name) in {AUTO!r}.items():
            model = getattr(transformers, auto_class).from_pretrained(kind, trust_remote_code=True).eval()
            assert type(model).__name__ == name, (kind, type(model))
            inputs = dict(pixel_values=expected["x"])
            if kind == "clip":
                inputs["input_ids"] = ids
            with torch.no_grad():
                out = model(**inputs)
                as_tuple = model(**inputs, return_dict=False)
            main = {MAIN!r}[kind]
            assert torch.allclose(out[main], expected[kind], atol=1e-5), kind
            assert isinstance(as_tuple, tuple), kind
        print("ok")
        """,
        cwd=tmp_path,
    )


def test_a_saved_config_lists_the_classes_in_number_order_as_transformers_writes_them(tmp_path):
    """``list(config.id2label.values())[i]`` is class ``i``'s name, past class 9 too (not "0", "1", "10", ...)."""
    names = [f"class {index}" for index in range(12)]
    config = BcosViTConfig(**TOWER, id2label=dict(enumerate(names)))
    BcosViTForImageClassification(config).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert list(saved["id2label"]) == [str(index) for index in range(12)]
    assert list(BcosViTForImageClassification.from_pretrained(tmp_path).config.id2label.values()) == names


def test_save_pretrained_leaves_a_shared_config_alone(tmp_path):
    model = build("classifier")
    shared = model.config
    before = shared.to_dict()
    backbone = type(model.bcos_vit)(shared)  # another model on the same config object
    model.save_pretrained(tmp_path / "classifier")
    backbone.save_pretrained(tmp_path / "backbone")
    assert model.config is shared and shared.to_dict() == before
    assert getattr(shared, "auto_map", None) is None
    saved = json.loads((tmp_path / "backbone" / "config.json").read_text())["auto_map"]
    assert saved["AutoModel"] == "modeling_bcos_vit.BcosViTModel" and "AutoModelForImageClassification" not in saved


def test_a_bfloat16_load_takes_float32_images(tmp_path):
    build("classifier").save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    x = images()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        reference = build("classifier")(pixel_values=x).logits
    assert logits.dtype == torch.bfloat16 and torch.allclose(logits.float(), reference, atol=0.1)


def test_a_bfloat16_explanation_of_float32_images_reports_its_bias_share():
    model = build("classifier").to(torch.bfloat16)
    explanation = model.explain(images())
    assert explanation.contributions.dtype == torch.bfloat16
    share = explanation.bias_share
    bias, summed = explanation.bias.double().abs(), explanation.contributions.double().sum(dim=(1, 2)).abs()
    torch.testing.assert_close(share.double(), bias / (bias + summed), rtol=1e-6, atol=0)  # |b| / (|b| + |sum|)
    torch.testing.assert_close(share, build("classifier").explain(images()).bias_share, rtol=0, atol=1e-3)
    total = explanation.contributions.float().sum(dim=(1, 2)) + explanation.bias.float()
    assert torch.allclose(total, explanation.target_logits.float(), atol=0.05)


def test_a_process_that_is_not_the_main_one_writes_no_file_as_transformers_says(tmp_path):
    """``is_main_process`` (by keyword or, as transformers orders it, by position) keeps the other processes of a
    data-parallel run from writing."""
    model = build("classifier")
    model.save_pretrained(tmp_path / "positional", False)
    model.save_pretrained(tmp_path / "keyword", is_main_process=False)
    for folder in ("positional", "keyword"):
        assert not (tmp_path / folder).exists() or not any((tmp_path / folder).iterdir())


def test_the_feature_extraction_pipeline_on_a_classifier_s_base_model_gives_its_backbone_features(tmp_path):
    """``AutoModel`` loads a saved classifier as the classifier (logits); its ``base_model`` gives the features."""
    build("classifier").save_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    extract = pipeline("image-feature-extraction", model=model.base_model, image_processor=processor)
    image = Image.fromarray((torch.rand(20, 30, 3) * 255).byte().numpy())
    with torch.no_grad():
        expected = model.base_model(pixel_values=processor(image, return_tensors="pt").pixel_values).pooler_output
    torch.testing.assert_close(extract(image, return_tensors=True, pool=True), expected)


@pytest.mark.parametrize("family", sorted(TINY_CLASSIFIERS))
@pytest.mark.parametrize("activation_checkpointing", [False, True])
def test_a_model_pickles_whole_as_torch_save_does_with_a_transformers_model(family, activation_checkpointing):
    """``torch.save(model)`` and multiprocessing pickle the module tree: no lambda may hang on it (CLIP's vision
    tower takes quick_gelu; activation checkpointing binds its recomputation context to the model)."""
    if activation_checkpointing and family == "clip":
        pytest.skip("transformers hooks a local function on a text model's embeddings, which pickle cannot save")
    torch.manual_seed(0)
    model = TINY_CLASSIFIERS[family]().eval()
    if activation_checkpointing:
        model.activation_checkpointing_enable()
    x = torch.rand(2, 3, 32, 32)
    prompts = {"text_embeds": torch.randn(3, model.config.projection_dim)} if family == "clip" else {}
    restored = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(restored.explain(x, **prompts).contributions, model.explain(x, **prompts).contributions)


@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu"])
def test_a_vit_of_every_activation_pickles(activation):
    model = BcosViTForImageClassification(BcosViTConfig(**TOWER, hidden_act=activation)).eval()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(pixel_values=x).logits, model(pixel_values=x).logits)
