"""Every B-cos model class honours transformers' output contract and attention implementations.

What a transformers user relies on: ``return_dict``, ``output_hidden_states`` and ``output_attentions`` taken from
the argument or else the config (tuples when ``return_dict=False``), ``attn_implementation`` chosen at load time or
with ``set_attn_implementation`` ("eager" returns the attention probabilities, "sdpa" computes the same outputs),
``get_input_embeddings``, and batches that give each image the output it gets alone.
"""

import pytest
import torch
from transformers import AutoModelForImageClassification

from bcos_zoo import (
    BcosCLIPConfig,
    BcosCLIPModel,
    BcosCLIPVisionConfig,
    BcosCLIPVisionModel,
    BcosViTConfig,
    BcosViTForImageClassification,
    BcosViTModel,
)


VIT = dict(
    image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
TEXT = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64, vocab_size=99)


def build(kind: str, **overrides):
    """A tiny random model of each class, in eval mode."""
    torch.manual_seed(0)
    if kind == "backbone":
        model = BcosViTModel(BcosViTConfig(**VIT, **overrides))
    elif kind == "classifier":
        model = BcosViTForImageClassification(BcosViTConfig(**VIT, num_labels=4, **overrides))
    elif kind == "tower":
        model = BcosCLIPVisionModel(BcosCLIPVisionConfig(**VIT, projection_dim=16, **overrides))
    else:
        config = BcosCLIPConfig(text_config=TEXT, vision_config=VIT, projection_dim=16, **overrides)
        model = BcosCLIPModel(config)
    return model.eval()


def call(kind: str, model, x: torch.Tensor, **kwargs):
    if kind == "clip":
        return model(input_ids=torch.tensor([[0, 5, 7, 2], [0, 9, 2, 1]]), pixel_values=x, **kwargs)
    return model(pixel_values=x, **kwargs)


KINDS = ["backbone", "classifier", "tower", "clip"]
MAIN = {"backbone": "pooler_output", "classifier": "logits", "tower": "image_embeds", "clip": "logits_per_image"}


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", KINDS)
def test_return_dict_false_gives_the_output_fields_as_a_tuple(kind):
    model, x = build(kind), images()
    with torch.no_grad():
        as_dict = call(kind, model, x)
        as_tuple = call(kind, model, x, return_dict=False)
        model.config.return_dict = False
        from_config = call(kind, model, x)
        overridden = call(kind, model, x, return_dict=True)
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected) == len(from_config)
    main = list(as_dict.keys()).index(MAIN[kind])
    assert torch.equal(as_tuple[main], as_dict[MAIN[kind]]) and torch.equal(from_config[main], as_dict[MAIN[kind]])
    assert not isinstance(overridden, tuple) and torch.equal(overridden[MAIN[kind]], as_dict[MAIN[kind]])


def _vision_part(kind: str, out):
    return out.vision_model_output if kind == "clip" else out


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_states_come_from_the_argument_or_the_config(kind):
    model, x = build(kind), images()
    with torch.no_grad():
        assert _vision_part(kind, call(kind, model, x)).hidden_states is None
        model.config.output_hidden_states = True
        if kind == "clip":
            model.config.vision_config.output_hidden_states = True
        hidden = _vision_part(kind, call(kind, model, x)).hidden_states
        off = _vision_part(kind, call(kind, model, x, output_hidden_states=False)).hidden_states
    # the tokens entering the first block and leaving each of the two blocks: (batch, 1 + 4 patches, width)
    assert len(hidden) == 3 and all(h.shape == (2, 5, 32) for h in hidden)
    assert off is None


@pytest.mark.parametrize("kind", KINDS)
def test_eager_attention_returns_probabilities_and_sdpa_the_same_outputs(kind):
    model, x = build(kind), images()
    assert model.config._attn_implementation == "sdpa", "SDPA is the default, as in transformers' ViT"
    with torch.no_grad():
        sdpa = call(kind, model, x)
        model.set_attn_implementation("eager")
        eager = call(kind, model, x, output_attentions=True)
    attentions = _vision_part(kind, eager).attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 2, 5, 5)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(2, 2, 5), atol=1e-6), "rows are probabilities"
    assert torch.allclose(eager[MAIN[kind]], sdpa[MAIN[kind]], atol=1e-5)


def test_output_attentions_from_the_config_and_the_attention_choice_at_load_time(tmp_path):
    model = build("classifier")
    model.save_pretrained(tmp_path)
    eager = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    sdpa = AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    eager.config.output_attentions = True
    with torch.no_grad():
        out = eager(pixel_values=images())
        assert torch.allclose(out.logits, sdpa(pixel_values=images()).logits, atol=1e-5)
    assert len(out.attentions) == 2


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_explanations_are_complete_with_either_attention(implementation):
    model = build("classifier", use_bias=False, use_class_token=False, use_position_embeddings=False, pooling="mean")
    model = model.double()
    model.set_attn_implementation(implementation)
    explanation = model.explain(images().double())
    # a model without constants: the contributions account for the whole logit except the logit bias
    assert torch.allclose(explanation.bias, torch.full((2,), model.config.resolved_logit_bias, dtype=torch.float64))


def test_get_image_features_and_get_text_features_follow_return_dict():
    model, x = build("clip"), images()
    with torch.no_grad():
        features = model.get_image_features(pixel_values=x)
        as_tuple = model.get_image_features(pixel_values=x, return_dict=False)
        text = model.get_text_features(input_ids=torch.tensor([[0, 5, 2]]), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], features.pooler_output)
    assert features.pooler_output.shape == (2, 16) and isinstance(text, tuple)


@pytest.mark.parametrize("kind", ["backbone", "classifier", "tower"])
def test_input_embeddings_are_the_patch_embedding(kind):
    model = build(kind)
    embeddings = model.get_input_embeddings()
    vision = getattr(model, "vision_model", None) or getattr(model, "bcos_vit", None) or model
    assert embeddings is vision.embeddings.patch_embeddings


def test_clip_input_embeddings_are_the_token_embedding_as_in_transformers():
    model = build("clip")
    assert model.get_input_embeddings() is model.text_model.embeddings.token_embedding


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_gives_each_image_its_own_output(kind):
    model, x = build(kind), images(3)
    if kind == "clip":
        with torch.no_grad():
            batched = model.get_image_features(pixel_values=x).pooler_output
            single = torch.cat([model.get_image_features(pixel_values=x[i : i + 1]).pooler_output for i in range(3)])
    else:
        with torch.no_grad():
            batched = call(kind, model, x)[MAIN[kind]]
            single = torch.cat([call(kind, model, x[i : i + 1])[MAIN[kind]] for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
