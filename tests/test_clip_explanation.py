"""Text-prompted explanations of B-cos CLIP: complete for a constant-free tower, and the ValueErrors users can hit."""

import pytest
import torch
import torch.nn.functional as F
from clip_testing import IMAGE_SIZE, PROMPTS, byte_level_tokenizer, images, save_source
from torch import nn
from transformers import CLIPTextConfig

from bcos_zoo import BcosCLIPConfig, BcosCLIPModel, BcosCLIPVisionConfig, BcosCLIPVisionModel


PROJECTION = 16
# A "pure" B-cos image tower: no biases, no class token, no position embeddings; mean pooling.
CONSTANT_FREE = dict(
    image_size=IMAGE_SIZE,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    b=2.0,
    use_bias=False,
    use_class_token=False,
    use_position_embeddings=False,
    pooling="mean",
    projection_dim=PROJECTION,
)


def constant_free_vision_model() -> BcosCLIPVisionModel:
    torch.manual_seed(0)
    return BcosCLIPVisionModel(BcosCLIPVisionConfig(**CONSTANT_FREE)).double().eval()


def constant_free_clip() -> BcosCLIPModel:
    tokenizer = byte_level_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(1)
    model = BcosCLIPModel(BcosCLIPConfig(text_config=text, vision_config=CONSTANT_FREE, projection_dim=PROJECTION))
    model.tokenizer = tokenizer
    return model.double().eval()


def relative_completeness_error(explanation) -> torch.Tensor:
    explained = explanation.target_logits
    return (explanation.contributions.sum(dim=(1, 2)) - explained).abs() / explained.abs()


def test_text_embeds_explanation_is_complete_in_float64():
    model = constant_free_vision_model()
    x = images(3, dtype=torch.float64)
    text_embeds = torch.randn(5, PROJECTION, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for target in [None, *range(5)]:
        explanation = model.explain(x, text_embeds=text_embeds, target=target)
        assert relative_completeness_error(explanation).max() <= 1e-6
        assert explanation.bias.abs().max() <= 1e-6 * explanation.target_logits.abs().min()
    with torch.no_grad():
        expected = F.normalize(model(x).image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    assert torch.allclose(explanation.logits, expected, atol=1e-12), "logits are the plain cosines"
    default = model.explain(x, text_embeds=text_embeds)
    assert torch.equal(default.target, expected.argmax(dim=1)), "default target: the best-matching prompt"
    assert default.dynamic_weights.shape == (3, 6, IMAGE_SIZE, IMAGE_SIZE)
    assert default.contributions.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert default.rgba.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 4)


def test_text_prompt_explanation_is_complete_in_float64():
    model = constant_free_clip()
    x = images(2, seed=3, dtype=torch.float64)
    explanation = model.explain(x, text=PROMPTS)
    assert explanation.logits.shape == (2, len(PROMPTS))
    assert relative_completeness_error(explanation).max() <= 1e-6
    # the prompts' cosines are the zero-shot logits without the temperature
    inputs = model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs, pixel_values=x).logits_per_image
    assert torch.allclose(explanation.logits * model.logit_scale.exp(), logits, atol=1e-10)
    second = model.explain(x, text=PROMPTS, target=torch.tensor([1, 3]))
    assert second.target.tolist() == [1, 3]
    assert relative_completeness_error(second).max() <= 1e-6


class UndetachedNormalizer(nn.Module):
    """Normalises the image embedding through its norm, i.e. without the detach that explanation mode needs."""

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True)


def test_completeness_needs_the_embedding_norm_detached():
    model = constant_free_vision_model()
    x = images(3, seed=4, dtype=torch.float64)
    text_embeds = torch.randn(4, PROJECTION, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    detached = model.explain(x, text_embeds=text_embeds)
    assert relative_completeness_error(detached).max() <= 1e-6

    model.embedding_normalizer = UndetachedNormalizer()
    undetached = model.explain(x, text_embeds=text_embeds, target=detached.target)
    assert torch.allclose(undetached.logits, detached.logits, atol=1e-12), "the forward pass is the same"
    # the cosine is scale-invariant, so through the norm the contributions cancel and the bias is the whole cosine
    assert relative_completeness_error(undetached).min() > 0.99
    assert torch.allclose(undetached.bias, undetached.target_logits, rtol=1e-6)


def test_explain_value_errors(tmp_path):
    vision = constant_free_vision_model()
    clip = constant_free_clip()
    x = images(2, dtype=torch.float64)
    text_embeds = torch.randn(3, PROJECTION, dtype=torch.float64)

    with pytest.raises(ValueError, match="exactly one of text=.* got neither"):
        clip.explain(x)
    with pytest.raises(ValueError, match="exactly one of text=.* got both"):
        clip.explain(x, text=PROMPTS, text_embeds=text_embeds)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        clip.explain(x, text=[])
    with pytest.raises(ValueError, match=r"text_embeds must be a floating-point \(K, 16\) tensor.*\(3, 15\)"):
        vision.explain(x, text_embeds=text_embeds[:, :15])
    with pytest.raises(ValueError, match=r"one row per prompt \(K >= 1\)"):
        vision.explain(x, text_embeds=text_embeds[:0])
    with pytest.raises(ValueError, match=r"pixel_values must lie in \[0, 1\]"):
        clip.explain(x * 2 - 0.5, text=PROMPTS)
    with pytest.raises(ValueError, match=r"pixel_values must lie in \[0, 1\]"):
        vision.explain(x + 1, text_embeds=text_embeds)
    with pytest.raises(ValueError, match="has no text tower"):
        vision.explain(x, text=PROMPTS)
    with pytest.raises(ValueError, match="target indices must lie in"):
        vision.explain(x, text_embeds=text_embeds, target=3)
    clip.tokenizer = None
    with pytest.raises(ValueError, match="needs the CLIP tokenizer"):
        clip.explain(x, text=PROMPTS)


def test_a_model_saved_without_a_tokenizer_refuses_text_prompts_after_loading(tmp_path):
    """Not an empty tokenizer built from nothing, which would explain every prompt as the same unknown token."""
    save_source(tmp_path / "source")
    model = BcosCLIPModel.from_pretrained_standard(tmp_path / "source")
    model.tokenizer = None
    model.save_pretrained(tmp_path / "bcos")
    reloaded = BcosCLIPModel.from_pretrained(tmp_path / "bcos")
    assert reloaded.tokenizer is None
    with pytest.raises(ValueError, match="needs the CLIP tokenizer"):
        reloaded.explain(images(1), text=PROMPTS[:2])
    reloaded.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / "tokenizer_config.json").exists()


def test_saved_model_finds_its_tokenizer_for_text_prompts(tmp_path):
    save_source(tmp_path / "source")
    model = BcosCLIPModel.from_pretrained_standard(tmp_path / "source")
    model.save_pretrained(tmp_path / "bcos")
    reloaded = BcosCLIPModel.from_pretrained(tmp_path / "bcos").eval()
    explanation = reloaded.explain(images(1), text=PROMPTS[:2])
    inputs = byte_level_tokenizer()(PROMPTS[:2], padding=True, return_tensors="pt")  # the source folder's tokenizer
    with torch.no_grad():
        logits = reloaded(**inputs, pixel_values=images(1)).logits_per_image
    torch.testing.assert_close(explanation.logits * reloaded.logit_scale.exp(), logits)
    assert all(not p.requires_grad for p in reloaded.text_model.parameters()), "the text tower stays frozen"
