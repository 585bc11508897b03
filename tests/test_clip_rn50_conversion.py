"""B-cosifying open_clip's CLIP ResNets: exact at B = 1 with biases kept (image embeddings, text embeddings, zero-shot
logits and tokenisation equal open_clip's), from a model in memory or a folder in open_clip's Hub layout."""

import pytest
import torch
from fake_hub import fake_hub_fixture  # noqa: F401
from open_clip_sources import (
    IMAGE_SIZE,
    PROMPTS,
    images,
    normalized,
    perturb,
    reduced_config,
    reduced_rn,
    save_open_clip_folder,
)

from bcos_zoo import BcosCLIPModel, BcosCLIPResNetModel, BcosCLIPVisionModel, BcosResNetForImageClassification
from bcos_zoo.families import FAMILIES, family_for_source


open_clip = pytest.importorskip("open_clip")


def open_clip_ids(prompts: list[str]) -> torch.Tensor:
    return open_clip.get_tokenizer("RN50")(prompts)


def assert_exact(model, source, x: torch.Tensor, atol: float) -> None:
    """Image and text embeddings and zero-shot logits of ``model`` on [0, 1] images are ``source``'s on normalised
    ones, with prompts tokenised by each model's own tokenizer."""
    inputs = model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=x).pooler_output
        text = model.get_text_features(**inputs).pooler_output
        logits = model(**inputs, pixel_values=x).logits_per_image
        expected_logits, _ = source.get_logits(normalized(x), open_clip_ids(PROMPTS))
        torch.testing.assert_close(image, source.encode_image(normalized(x)), atol=atol, rtol=0)
        torch.testing.assert_close(text, source.encode_text(open_clip_ids(PROMPTS)), atol=atol, rtol=0)
    torch.testing.assert_close(logits, expected_logits, atol=atol * 10, rtol=0)


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_a_loaded_open_clip_resnet_is_exact_at_b1_with_biases_kept(quick_gelu):
    source = reduced_rn(quick_gelu)
    model = BcosCLIPModel.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    assert isinstance(model.vision_model, BcosCLIPResNetModel)
    assert model.config.text_config.hidden_act == ("quick_gelu" if quick_gelu else "gelu")
    assert_exact(model, source, images(3), atol=1e-5)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_a_folder_in_open_clip_s_hub_layout_converts_as_the_model_it_holds(tmp_path, weights):
    source = reduced_rn(quick_gelu=True)
    folder = save_open_clip_folder(source, tmp_path / "rn", reduced_config(quick_gelu=True), weights)
    reloaded = open_clip.create_model(f"local-dir:{folder}").eval()  # the layout is open_clip's own
    torch.testing.assert_close(reloaded.encode_image(normalized(images())), source.encode_image(normalized(images())))
    assert family_for_source(folder) is FAMILIES["clip"]
    model = BcosCLIPModel.from_pretrained_standard(folder, b=1.0, bias="keep").eval()
    assert_exact(model, source, images(), atol=1e-5)


def test_the_tokenizer_gives_open_clip_s_ids_and_is_saved_with_the_model(tmp_path):
    """Every prompt's tokens up to the end-of-text token are open_clip's; beyond it open_clip pads with 0 and the
    CLIP tokenizer with the end-of-text token, which the causal text tower never reads."""
    model = BcosCLIPModel.from_pretrained_standard(reduced_rn(), b=2.0, bias="remove")
    expected = open_clip_ids(PROMPTS)
    ours = model.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    for ids, mask, reference in zip(ours.input_ids, ours.attention_mask, expected):
        length = int((reference != 0).sum())
        assert ids[:length].tolist() == reference[:length].tolist() and int(mask.sum()) == length
    model.save_pretrained(tmp_path / "saved")
    reloaded = BcosCLIPModel.from_pretrained(tmp_path / "saved")
    assert reloaded.tokenizer(PROMPTS).input_ids == model.tokenizer(PROMPTS).input_ids


def test_the_image_tower_alone_converts_and_only_open_clip_resnets_are_taken():
    source = reduced_rn()
    vision = BcosCLIPVisionModel.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    with torch.no_grad():
        expected = source.encode_image(normalized(images()))
        torch.testing.assert_close(vision(pixel_values=images()).image_embeds, expected, atol=1e-5, rtol=0)
    assert family_for_source(source) is FAMILIES["clip"]
    with pytest.raises(ValueError, match="source of the CLIP family, not of BcosResNetForImageClassification"):
        BcosResNetForImageClassification.from_pretrained_standard(source)
    from open_clip.model import CLIP

    vit = CLIP(8, dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16), reduced_config()["text_cfg"])
    with pytest.raises(ValueError, match="ViT CLIPs are B-cosified from their transformers checkpoints"):
        BcosCLIPModel.from_pretrained_standard(vit)
    config = reduced_config()
    biased = CLIP(16, config["vision_cfg"], {**config["text_cfg"], "proj_bias": True})  # a text tower unlike CLIP's
    with pytest.raises(ValueError, match=r"Unsupported open_clip text tower \(weights \['text_projection.weight'"):
        BcosCLIPModel.from_pretrained_standard(biased)


def test_the_paper_s_conversion_drops_every_constant():
    model = BcosCLIPModel.from_pretrained_standard(reduced_rn(), b=2.0, bias="remove")
    names = {name for name, _ in model.vision_model.named_parameters()} | set(model.vision_model.state_dict())
    assert not [name for name in names if name.endswith((".bias", "running_mean", "position_embeddings"))]
    assert model.visual_projection.bias is None and model.config.vision_config.b == 2.0
    assert model.text_model.embeddings.token_embedding.weight.requires_grad is False  # the text tower stays frozen


@pytest.mark.slow
def test_open_clip_s_rn50_architecture_is_exact_at_b1_at_64_pixels():
    """The real RN50 (102M parameters) at a 64 px input, the position embedding made for it (2x2 grid)."""
    torch.manual_seed(0)
    source = perturb(open_clip.create_model("RN50", force_image_size=IMAGE_SIZE)).eval()
    model = BcosCLIPModel.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    config = model.config.vision_config
    assert (config.width, config.depths, config.num_attention_heads, config.projection_dim) == (
        64,
        [3, 4, 6, 3],
        32,
        1024,
    )
    assert_exact(model, source, images(2), atol=1e-4)


@pytest.mark.subprocess
def test_a_hub_repo_in_open_clip_s_layout_is_a_source(tmp_path, fake_hub):
    """As the recipe names its source (timm/resnet50_clip.openai holds open_clip's files and transformers' tokenizer
    files, no config.json): a Hub id, downloaded from a loopback Hub in a fresh interpreter."""
    import os
    import subprocess
    import sys
    import textwrap

    from bcos_zoo.conversion.open_clip import open_clip_tokenizer

    source = reduced_rn(quick_gelu=True)
    folder = save_open_clip_folder(source, tmp_path / "repo", reduced_config(quick_gelu=True))
    open_clip_tokenizer().save_pretrained(folder)
    fake_hub.seed("timm/resnet50_clip.openai", {p.name: p.read_bytes() for p in folder.iterdir()})
    with torch.no_grad():
        torch.save({"x": images(), "embeds": source.encode_image(normalized(images()))}, tmp_path / "expected.pt")
    code = """
        import torch
        from bcos_zoo import BcosCLIPModel

        expected = torch.load("../expected.pt")
        model = BcosCLIPModel.from_pretrained_standard("timm/resnet50_clip.openai", b=1.0, bias="keep").eval()
        with torch.no_grad():
            embeds = model.get_image_features(pixel_values=expected["x"]).pooler_output
        assert torch.allclose(embeds, expected["embeds"], atol=1e-5), (embeds, expected["embeds"])
        assert model.tokenizer("a photo of a cat.").input_ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
        print("hub ok")
    """
    home = tmp_path / "home"
    home.mkdir()
    env = fake_hub.env(home=home, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=home, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "hub ok" in result.stdout, result.stderr[-3000:]
    assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"} <= {
        request.path.rsplit("/", 1)[-1] for request in fake_hub.requests
    }


def test_a_float64_open_clip_resnet_converts_in_float64_exactly():
    source = reduced_rn().double()
    model = BcosCLIPModel.from_pretrained_standard(source, b=1.0, bias="keep")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float64}
    assert_exact(model, source, images(dtype=torch.float64), atol=1e-10)
