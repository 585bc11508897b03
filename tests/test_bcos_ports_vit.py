"""The bcos package's simple ViTs and ViT-Cs (B-cos v2) in bcos_zoo: its 8 B-cos models port exactly through
``from_bcos``; its 8 standard twins B-cosify through ``BcosSimpleViTForImageClassification.from_pretrained_standard``
(exact at b=1 with the biases kept); the family honours the transformers contract and reloads as remote code.

Exactness is checked in float64 on random weights, on 48 x 32 images (a 3 x 2 grid of tokens: the package computes
its sin-cos position embeddings for whatever grid it gets, so a non-square one also checks rows against columns).
LayerNorm keeps these random networks' logits spread (no BatchNorm to calibrate). The ViT-B and ViT-L entries take
seconds each to build and convert in float64 and are marked slow.
"""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForImageClassification

from bcos_zoo import BcosSimpleViTConfig, BcosSimpleViTForImageClassification, BcosSimpleViTModel, from_bcos
from bcos_zoo.families import FAMILIES, bcos_classifier_class, family_for_source
from bcos_zoo.ports import load_bcos_source
from bcos_zoo.zoo.finetune import check_before_training
from bcos_zoo.zoo.recipes import RECIPES


pretrained = pytest.importorskip("bcos.models.pretrained")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)


def sized(entry: str):
    heavy = "_s_" in entry or "_b_" in entry or "_l_" in entry  # the tiny ones stay in the quick selection
    return pytest.param(entry, marks=pytest.mark.slow) if heavy else entry


ENTRIES = [sized(entry) for entry in FAMILIES["simple_vit"].bcos_entries]


def package_model(entry: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(pretrained, entry)(pretrained=False).double().eval()


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 48, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bcos_entry_ports_exactly(entry):
    reference = package_model(entry)
    model = from_bcos(reference)
    assert isinstance(model, BcosSimpleViTForImageClassification) and model.dtype == torch.float64
    assert (model.config.conv_stem is not None) == entry.startswith("vitc")
    assert model.config.id2label[0] == "tench" and model.config.num_labels == 1000  # ImageNet's classes by name
    x = images()
    with torch.no_grad():
        expected, logits = reference(torch.cat([x, 1 - x], dim=1)), model(pixel_values=x).logits
    centered = expected - expected.mean(dim=1, keepdim=True)
    assert centered.abs().max() > 0.1  # the logits are spread, so the comparison sees the network
    assert relative(logits - logits.mean(dim=1, keepdim=True), centered) < 1e-5
    assert (logits.mean(dim=1) - expected.mean(dim=1)).abs().max() < 1e-5
    encoded = torch.cat([x[:1], 1 - x[:1]], dim=1).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference.explain(encoded)
    ours = model.explain(x[:1], target=theirs["explained_class_idx"])
    assert relative(ours.contributions, theirs["contribution_map"].detach()) < 1e-4


@pytest.mark.parametrize("entry", [sized("standard_" + entry) for entry in FAMILIES["simple_vit"].bcos_entries])
def test_a_standard_twin_b_cosifies_exactly_at_b1_with_its_biases(entry):
    source = package_model(entry)
    assert bcos_classifier_class(source) is BcosSimpleViTForImageClassification
    model = BcosSimpleViTForImageClassification.from_pretrained_standard(source, b=1.0, bias="keep")
    assert model.config.use_bias and model.config.hidden_act == "gelu" and model.config.logit_bias == 0.0
    x = images()
    with torch.no_grad():
        expected, logits = source((x - IMAGENET_MEAN) / IMAGENET_STD), model(pixel_values=x).logits
    assert relative(logits, expected) < 1e-5


def test_the_paper_recipe_removes_every_bias_and_explains_completely():
    source = package_model("standard_vitc_ti_patch1_14")
    model = BcosSimpleViTForImageClassification.from_pretrained_standard(source)  # b=2, bias="remove"
    config = model.config
    assert (config.b, config.use_bias, config.hidden_act) == (2.0, False, "gelu")
    assert config.resolved_logit_bias == pytest.approx(-torch.log(torch.tensor(999.0)).item())
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    explanation = model.explain(images())
    total = explanation.contributions.sum(dim=(1, 2)) + explanation.bias
    torch.testing.assert_close(total, explanation.target_logits)


def test_an_entry_name_and_its_release_file_port_and_wrong_sources_say_what_fits(tmp_path):
    reference = package_model("vitc_ti_patch1_14").float()
    torch.save(reference.state_dict(), tmp_path / "vitc_ti.pth")
    model = from_bcos("vitc_ti_patch1_14", weights=tmp_path / "vitc_ti.pth")
    x = images().float()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference(torch.cat([x, 1 - x], 1)))
    with pytest.raises(ValueError, match="do not fit bcos entry 'simple_vit_ti_patch16_224'"):
        from_bcos("simple_vit_ti_patch16_224", weights=tmp_path / "vitc_ti.pth")
    with pytest.raises(ValueError, match="not a bcos model this package ports"):
        from_bcos("standard_vitc_ti_patch1_14", weights="random")
    with pytest.raises(ValueError, match="from_bcos"):
        BcosSimpleViTForImageClassification.from_pretrained_standard(reference[0])


def test_a_recipe_names_a_standard_twin_as_bcos_entry_with_its_weights_file(tmp_path):
    twin = package_model("standard_vitc_ti_patch1_14").float()
    torch.save(twin.state_dict(), tmp_path / "twin.pth")
    loaded = load_bcos_source("bcos:standard_vitc_ti_patch1_14", tmp_path / "twin.pth")
    assert family_for_source(loaded) is FAMILIES["simple_vit"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), twin.state_dict().values()))
    with pytest.raises(ValueError, match="names no standard model"):
        load_bcos_source("bcos:vitc_ti_patch1_14", tmp_path / "twin.pth")
    recipe = RECIPES["bcos-vitc-ti-paper"]
    with pytest.raises(ValueError, match="needs its release weights file"):
        check_before_training(recipe, push=False, dry_run=False)


def test_the_paper_recipes_start_from_the_twins_and_quote_the_paper():
    for kind, stem in (("simple-vit", "standard_simple_vit_{}_patch16_224"), ("vitc", "standard_vitc_{}_patch1_14")):
        for size in ("ti", "s", "b", "l"):
            recipe = RECIPES[f"bcos-{kind}-{size}-paper"]
            assert recipe.source == f"bcos:{stem.format(size)}" and (recipe.b, recipe.bias) == (2.0, "remove")
            assert "not measured here" in recipe.summary
    assert "B-cosified 75.2 and B-cos from scratch 69.2" in RECIPES["bcos-simple-vit-s-paper"].summary
    assert "B-cosified 77.1 and B-cos from scratch 77.8" in RECIPES["bcos-vitc-l-paper"].summary


# -- the transformers contract, on tiny models of both stems ------------------------------------------------------

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=4)
STEMS = {"patches": dict(patch_size=8), "conv_stem": dict(conv_stem=[8, 16], patch_size=2)}


def tiny(stem: str, cls=BcosSimpleViTForImageClassification, **overrides):
    torch.manual_seed(0)
    return cls(BcosSimpleViTConfig(**TINY, **STEMS[stem], **overrides)).eval()


@pytest.mark.parametrize("stem", list(STEMS))
def test_output_flags_attention_choices_and_tuples(stem):
    model, x = tiny(stem, attn_implementation="eager"), images().float()
    out = model(pixel_values=x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 24, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 24, 24)
    as_tuple = model(pixel_values=x, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    model.set_attn_implementation("sdpa")
    sdpa = model(pixel_values=x)
    torch.testing.assert_close(sdpa.logits, out.logits)
    assert sdpa.attentions is None
    model.config.output_hidden_states = True
    assert len(model(pixel_values=x).hidden_states) == 3
    backbone = model.bcos_simple_vit(x)
    assert backbone.pooler_output.shape == (2, 32) and backbone.last_hidden_state.shape == (2, 24, 32)
    assert model.get_input_embeddings() is model.bcos_simple_vit.embeddings.projection
    alone = model(pixel_values=x[1:]).logits
    torch.testing.assert_close(alone, out.logits[1:])


@pytest.mark.parametrize("stem", list(STEMS))
def test_gradient_checkpointing_and_bfloat16(stem):
    model, x, labels = tiny(stem).train(), images().float(), torch.tensor([0, 3])

    def gradients():
        model.zero_grad()
        model(pixel_values=x, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.bcos_simple_vit.layers)
    for name, gradient in gradients().items():
        torch.testing.assert_close(gradient, plain[name], msg=name)
    half = tiny(stem).to(torch.bfloat16)
    logits = half(pixel_values=x).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), tiny(stem)(pixel_values=x).logits, atol=0.1, rtol=0.05)


def test_any_image_size_its_patches_tile_and_a_clear_error_otherwise():
    model = tiny("patches")
    assert model(pixel_values=torch.rand(1, 3, 24, 40)).logits.shape == (1, 4)
    with pytest.raises(ValueError, match="cannot take a 20x40 image: use sides that are multiples of 8"):
        model(pixel_values=torch.rand(1, 3, 20, 40))


def test_the_size_error_of_a_conv_stem_names_the_image_and_the_multiple_it_needs():
    model = tiny("conv_stem")  # two stride-2 convolutions (padding 1), then 2x2 patches: 8x8 pixels a patch
    assert model(pixel_values=torch.rand(1, 3, 24, 40)).logits.shape == (1, 4)
    assert model(pixel_values=torch.rand(1, 3, 30, 29)).logits.shape == (1, 4)  # 8x8 maps: any size whose map tiles
    with pytest.raises(ValueError, match="stem's 9x9 output and cannot take a 36x36 image: use sides that are multip"):
        model(pixel_values=torch.rand(1, 3, 36, 36))


@pytest.mark.parametrize("stem", list(STEMS))
def test_an_empty_batch_gives_empty_logits_and_explanations(stem):
    model = tiny(stem)
    assert model(pixel_values=torch.rand(0, 3, 32, 32)).logits.shape == (0, 4)
    explanation = model.explain(torch.rand(0, 3, 32, 32))
    assert explanation.contributions.shape == (0, 32, 32) and explanation.rgba.shape == (0, 32, 32, 4)


@pytest.mark.subprocess
def test_a_port_reloads_as_remote_code_with_its_processor_and_pipeline(tmp_path, clean_python):
    model = from_bcos(package_model("vitc_ti_patch1_14").float())
    model.save_pretrained(tmp_path / "classifier")
    tiny("conv_stem", BcosSimpleViTModel).save_pretrained(tmp_path / "backbone")
    processor = json.loads((tmp_path / "classifier" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 256} and processor["crop_size"] == {"height": 224, "width": 224}
    assert processor["resample"] == 2 and processor["do_normalize"] is False
    x = images().float()
    with torch.no_grad():
        expected = {"x": x, "classifier": model(pixel_values=x).logits}
        expected["backbone"] = BcosSimpleViTModel.from_pretrained(tmp_path / "backbone")(x).pooler_output
    torch.save(expected, tmp_path / "expected.pt")
    assert isinstance(AutoModelForImageClassification.from_pretrained(tmp_path / "classifier"), type(model))
    out = clean_python(
        """
        import importlib.util, json
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModel, AutoModelForImageClassification, pipeline

        assert importlib.util.find_spec("bcos_zoo") is None
        expected = torch.load("expected.pt")
        classifier = AutoModelForImageClassification.from_pretrained("classifier", trust_remote_code=True).eval()
        same = AutoModel.from_pretrained("classifier", trust_remote_code=True).eval()
        backbone = AutoModel.from_pretrained("backbone", trust_remote_code=True).eval()
        with torch.no_grad():
            diffs = [(m(pixel_values=expected["x"]).logits - expected["classifier"]).abs().max().item()
                     for m in (classifier, same)]
            diffs.append((backbone(pixel_values=expected["x"]).pooler_output - expected["backbone"]).abs().max().item())
        explanation = classifier.double().explain(expected["x"].double())
        complete = (explanation.contributions.sum((1, 2)) + explanation.bias - explanation.target_logits).abs().max()
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
        top = pipeline("image-classification", model="classifier", trust_remote_code=True)(image, top_k=3)
        print(json.dumps(dict(diffs=diffs, complete=complete.item(), top=len(top), name=type(classifier).__name__)))
        """,
        cwd=tmp_path,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert max(result["diffs"]) < 1e-5 and result["complete"] < 1e-8 and result["top"] == 3
    assert result["name"] == "BcosSimpleViTForImageClassification"


def test_a_paper_recipe_fine_tunes_from_its_twin_and_names_it_on_the_card(tmp_path):
    from huggingface_hub import ModelCard
    from training_testing import make_image_folder

    from bcos_zoo.zoo.finetune import finetune

    torch.save(package_model("standard_vitc_ti_patch1_14").float().state_dict(), tmp_path / "twin.pth")
    recipe = RECIPES["bcos-vitc-ti-paper"].with_overrides(
        weights=str(tmp_path / "twin.pth"),
        dataset=str(make_image_folder(tmp_path / "data", per_class=2)),
        max_steps=1,
        batch_size=2,
        max_eval_samples=2,
        save_steps=1,
    )
    result = finetune(recipe, tmp_path / "out", device="cpu")
    model = BcosSimpleViTForImageClassification.from_pretrained(result.repo_dir)
    assert model.config.conv_stem == [24, 48, 96, 192] and not model.config.use_bias
    assert set(result.metrics) >= {"accuracy", "train_loss"}
    assert "bcos package's standard_vitc_ti_patch1_14" in ModelCard.load(result.repo_dir / "README.md").text
