"""B-cosification of CLIP is exact at b=1 with biases kept: same image embeddings, same zero-shot probabilities."""

import json

import pytest
import torch
from clip_testing import PROMPTS, SHAPES, byte_level_tokenizer, images, normalize, save_source, tiny_clip
from transformers import (
    CLIPImageProcessor,
    CLIPProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    ViTConfig,
    ViTForImageClassification,
)

from bcos_zoo import BcosCLIPModel, BcosCLIPVisionModel
from bcos_zoo.modeling.bcos_layers import BcosLinear


def _prompt_inputs():
    return byte_level_tokenizer()(PROMPTS, padding=True, return_tensors="pt")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_b1_keep_matches_source_clip_from_folder(tmp_path, shape):
    source = save_source(tmp_path, shape)
    model = BcosCLIPModel.from_pretrained_standard(tmp_path, b=1.0, bias="keep").eval()
    vision = BcosCLIPVisionModel.from_pretrained_standard(tmp_path, b=1.0, bias="keep").eval()
    x = images(4)
    inputs = _prompt_inputs()
    with torch.no_grad():
        expected = source.get_image_features(pixel_values=normalize(x, shape)).pooler_output
        reference = source(**inputs, pixel_values=normalize(x, shape))
        output = model(**inputs, pixel_values=x)
        assert (model.get_image_features(x).pooler_output - expected).abs().max() <= 1e-4
        assert (vision(x).image_embeds - expected).abs().max() <= 1e-4
    # the normalisation came from the folder's preprocessor_config.json, which is not OpenAI's for laion_like
    assert (output.logits_per_image - reference.logits_per_image).abs().max() <= 1e-4
    probs, reference_probs = output.logits_per_image.softmax(-1), reference.logits_per_image.softmax(-1)
    assert (probs - reference_probs).abs().max() <= 1e-5
    assert torch.equal(probs.argmax(-1), reference_probs.argmax(-1))
    assert (output.text_embeds - reference.text_embeds).abs().max() <= 1e-6
    assert model.tokenizer.get_vocab() == byte_level_tokenizer().get_vocab(), "the source folder's tokenizer"


def test_b1_keep_matches_in_memory_sources():
    source = tiny_clip("openai_like", seed=3)
    x = images(2, seed=1)
    model = BcosCLIPModel.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    vision_config = CLIPVisionConfig(**{**source.config.vision_config.to_dict(), "projection_dim": 16})
    vision_source = CLIPVisionModelWithProjection(vision_config).eval()
    vision_source.vision_model.load_state_dict(source.vision_model.state_dict())
    vision_source.visual_projection.load_state_dict(source.visual_projection.state_dict())
    vision = BcosCLIPVisionModel.from_pretrained_standard(vision_source, b=1.0, bias="keep").eval()
    with torch.no_grad():
        expected = source.get_image_features(pixel_values=normalize(x)).pooler_output  # OpenAI mean/std assumed
        assert (model.get_image_features(x).pooler_output - expected).abs().max() <= 1e-4
        assert (vision(x).image_embeds - expected).abs().max() <= 1e-4


def test_b2_remove_is_a_bias_free_bcos_tower_with_the_original_text_tower(tmp_path):
    source = save_source(tmp_path)
    model = BcosCLIPModel.from_pretrained_standard(tmp_path).eval()
    vision_config = model.config.vision_config
    assert vision_config.b == 2.0 and not vision_config.use_bias
    biases = [n for n, _ in model.vision_model.named_parameters() if n.endswith("bias")]
    assert biases and all(n.endswith(("q_proj.bias", "k_proj.bias")) for n in biases)
    assert isinstance(model.visual_projection, BcosLinear) and model.visual_projection.b == 2.0
    for name, param in source.state_dict().items():
        if name.startswith(("text_model.", "text_projection.", "logit_scale")):
            assert torch.equal(model.state_dict()[name], param), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("vision_model.", "visual_projection.")) for n in trainable)
    with torch.no_grad():
        out = model(**_prompt_inputs(), pixel_values=images(2))
        text = source.get_text_features(**_prompt_inputs()).pooler_output  # the original text tower's embeddings
        image = model.get_image_features(images(2)).pooler_output
    assert out.logits_per_image.shape == (2, len(PROMPTS))
    cosines = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    torch.testing.assert_close(out.logits_per_image, source.logit_scale.exp() * cosines)


def test_unsupported_sources_raise_value_error(tmp_path):
    with pytest.raises(
        ValueError, match="ViTForImageClassification is a source of the ViT family, not of BcosCLIPModel"
    ):
        BcosCLIPModel.from_pretrained_standard(ViTForImageClassification(ViTConfig(hidden_size=32)))
    vision_source = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, num_attention_heads=4))
    with pytest.raises(ValueError, match="Cannot B-cosify a CLIPVisionModelWithProjection"):
        BcosCLIPModel.from_pretrained_standard(vision_source)
    vit_folder = tmp_path / "vit"
    ViTConfig(hidden_size=32).save_pretrained(vit_folder)
    with pytest.raises(ValueError, match="holds a 'vit' model"):
        BcosCLIPModel.from_pretrained_standard(vit_folder)
    with pytest.raises(ValueError, match="has no config.json"):
        BcosCLIPVisionModel.from_pretrained_standard(tmp_path)
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repo"):
        BcosCLIPModel.from_pretrained_standard("no-such-org/no-such-clip")
    with pytest.raises(ValueError, match="bias must be 'keep' or 'remove'"):
        BcosCLIPModel.from_pretrained_standard(tiny_clip(), bias="zero")


def test_a_timm_folder_is_named_by_its_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 3}))
    with pytest.raises(ValueError, match="holds a 'timm vit_small_patch16_224' model"):
        BcosCLIPModel.from_pretrained_standard(tmp_path)


def test_a_loaded_model_keeps_the_processor_its_source_gave_it_when_saved_again(tmp_path):
    """The source's resize (here 40 px, bilinear, then a 32 px crop) travels: B-cosified, saved, loaded and saved
    again, the model resizes as its source did (without normalising)."""
    save_source(tmp_path / "source")
    settings = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "resample": 2}
    processor = CLIPProcessor.from_pretrained(tmp_path / "source")
    CLIPProcessor(
        CLIPImageProcessor(**{**processor.image_processor.to_dict(), **settings}), processor.tokenizer
    ).save_pretrained(tmp_path / "source")
    BcosCLIPModel.from_pretrained_standard(str(tmp_path / "source")).save_pretrained(tmp_path / "first")
    loaded = BcosCLIPModel.from_pretrained(tmp_path / "first")
    loaded.save_pretrained(tmp_path / "second")
    for processor in (loaded.default_image_processor(), CLIPImageProcessor.from_pretrained(tmp_path / "second")):
        assert {key: processor.to_dict()[key] for key in settings} == settings and not processor.do_normalize
