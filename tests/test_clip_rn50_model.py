"""The B-cos CLIP ResNet as a model: exact prompt explanations at B = 2 (the paper's recipe) and the transformers
contract (output flags, gradient checkpointing, dtypes, save and reload)."""

import pytest
import torch
import torch.nn.functional as F
from open_clip_sources import IMAGE_SIZE, PROMPTS, calibrate, images, reduced_rn
from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

from bcos_zoo import BcosCLIPModel, BcosCLIPResNetConfig, BcosCLIPVisionModel


pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def paper_model():
    """The paper's conversion (B = 2, no constants) of a reduced RN50, in float64."""
    model = BcosCLIPModel.from_pretrained_standard(reduced_rn(), b=2.0, bias="remove").double()
    return calibrate(model, torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float64))


def test_prompt_explanations_are_complete_and_batched(paper_model):
    x = images(3, dtype=torch.float64)
    explanation = paper_model.explain(x, text=PROMPTS)
    cosine = explanation.target_logits
    assert explanation.logits.shape == (3, len(PROMPTS)) and cosine.abs().min() > 1e-6
    torch.testing.assert_close(explanation.bias, torch.zeros_like(cosine), atol=1e-12, rtol=0)  # nothing constant
    torch.testing.assert_close(explanation.contributions.sum(dim=(1, 2)), cosine, rtol=1e-9, atol=1e-13)
    with torch.no_grad():
        inputs = paper_model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        logits = paper_model(**inputs, pixel_values=x).logits_per_image
    torch.testing.assert_close(explanation.logits * paper_model.logit_scale.exp(), logits)
    for i in range(3):  # each image of the batch is explained as it is alone
        alone = paper_model.explain(x[i : i + 1], text=PROMPTS, target=explanation.target[i : i + 1])
        torch.testing.assert_close(alone.contributions[0], explanation.contributions[i], rtol=1e-9, atol=1e-15)


def test_explanations_hold_the_attention_matrix_fixed(paper_model):
    """The queries and keys only shape the detached attention: an explanation's gradient never reaches them."""
    pool = paper_model.vision_model.attention_pool
    paper_model.zero_grad()
    paper_model.explain(
        images(2, dtype=torch.float64), text=PROMPTS[:2], create_graph=True
    ).contributions.sum().backward()
    assert pool.q_proj.weight.grad is None and pool.k_proj.weight.grad is None
    assert pool.v_proj.weight.grad is not None and paper_model.visual_projection.weight.grad.abs().sum() > 0
    paper_model.zero_grad()


def test_output_flags_follow_the_argument_or_the_config(paper_model):
    x, inputs = images(2, dtype=torch.float64), paper_model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = paper_model(**inputs, pixel_values=x, output_hidden_states=True, output_attentions=True)
        plain = paper_model(**inputs, pixel_values=x)
        as_tuple = paper_model(**inputs, pixel_values=x, return_dict=False)
        vision = paper_model.vision_model(pixel_values=x, return_dict=False)
    hidden_states, attentions = out.vision_model_output.hidden_states, out.vision_model_output.attentions
    assert len(hidden_states) == 5 and hidden_states[-1].shape == (2, 256, 2, 2)  # the stem and four stages
    assert attentions[0].shape == (2, 8, 1, 5)  # 8 heads, the mean token's query over 1 + 2x2 tokens
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 8, 1, dtype=torch.float64))
    assert plain.vision_model_output.hidden_states is None and plain.vision_model_output.attentions is None
    assert len(out.text_model_output.hidden_states) == 2
    torch.testing.assert_close(as_tuple[0], plain.logits_per_image)
    assert isinstance(vision, tuple) and vision[1].shape == (2, 256)
    paper_model.config.vision_config.output_hidden_states = True
    try:
        assert len(paper_model.vision_model(pixel_values=x).hidden_states) == 5
    finally:
        paper_model.config.vision_config.output_hidden_states = False


def test_gradient_checkpointing_gives_the_same_gradients_and_statistics():
    model = BcosCLIPVisionModel.from_pretrained_standard(reduced_rn(), b=2.0, bias="remove").double().train()
    x = images(4, dtype=torch.float64)

    def step():
        model.zero_grad()
        model(pixel_values=x).image_embeds.square().sum().backward()
        norms = [m for m in model.modules() if type(m).__name__ == "BcosBatchNorm2d"]
        return {n: p.grad.clone() for n, p in model.named_parameters()}, [m.running_var.clone() for m in norms]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference, reference_stats = step()
    model.load_state_dict(state)
    model.activation_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in model.vision_model.stages)
    checkpointed, stats = step()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], msg=name)
    for ours, theirs in zip(stats, reference_stats):
        torch.testing.assert_close(ours, theirs)


def test_half_and_double_precision(paper_model):
    x = images(2)
    with torch.no_grad():
        reference = paper_model.get_image_features(pixel_values=x.double()).pooler_output
        half = paper_model.to(torch.bfloat16).get_image_features(pixel_values=x).pooler_output
        paper_model.double()
    assert half.dtype == torch.bfloat16
    cosine = torch.cosine_similarity(half.double(), reference, dim=-1)
    assert cosine.min() > 0.99, cosine


def test_save_and_reload_with_the_auto_class_and_processor(paper_model, tmp_path):
    model = paper_model.float()
    try:
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path).eval()
        processor = AutoProcessor.from_pretrained(tmp_path)
        x = images(2)
        inputs = model.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            torch.testing.assert_close(
                reloaded(**inputs, pixel_values=x).logits_per_image, model(**inputs, pixel_values=x).logits_per_image
            )
    finally:
        paper_model.double()
    assert type(reloaded) is BcosCLIPModel and isinstance(reloaded.config.vision_config, BcosCLIPResNetConfig)
    assert processor.image_processor.do_normalize is False
    assert processor.image_processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


def test_other_input_sizes():
    """Without a position embedding (the paper's recipe) any size the 32x downsampling takes works; with one, other
    sizes need interpolate_pos_encoding=True, as in transformers' CLIP."""
    source = reduced_rn()
    paper = BcosCLIPVisionModel.from_pretrained_standard(source, b=2.0, bias="remove").eval()
    exact = BcosCLIPVisionModel.from_pretrained_standard(source, b=1.0, bias="keep").eval()
    x = images(1, size=96)
    with torch.no_grad():
        assert paper(pixel_values=x).image_embeds.shape == (1, 16)
        with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
            exact(pixel_values=x)
        assert exact(pixel_values=x, interpolate_pos_encoding=True).image_embeds.shape == (1, 16)


def test_a_float64_model_resamples_its_position_embeddings_in_float64():
    model = BcosCLIPVisionModel.from_pretrained_standard(reduced_rn(), b=1.0, bias="keep").double()
    (pool,) = [module for module in model.modules() if hasattr(module, "positions")]
    grid = pool.position_embeddings[1:].T.reshape(1, -1, pool.grid, pool.grid)
    expected = F.interpolate(grid, size=(4, 5), mode="bicubic", align_corners=False).reshape(-1, 20).T
    with torch.no_grad():
        resized = pool.positions(4, 5, interpolate=True)
    assert resized.dtype == torch.float64
    torch.testing.assert_close(resized[1:], expected, rtol=0, atol=1e-15)
