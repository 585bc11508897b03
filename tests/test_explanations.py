"""Explanations are exact: contributions + bias = the explained logit, batched, in every dtype."""

import math
import threading

import pytest
import torch
from sources import hf_vit, perturb_
from tiny_models import TINY_CLASSIFIERS

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.modeling.bcos_layers import BcosLayerNorm, GatedActivation
from bcos_zoo.modeling.modeling_bcos_vit import BcosSelfAttention


NUM_LABELS = 7


def pure_bcos_vit(b: float) -> BcosViTForImageClassification:
    """A B-cos ViT without any constant: no class token, no position embedding, no bias."""
    torch.manual_seed(0)
    config = BcosViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        b=b,
        use_bias=False,
        use_class_token=False,
        use_position_embeddings=False,
        pooling="mean",
        pre_layernorm=True,
        num_labels=NUM_LABELS,
    )
    return perturb_(BcosViTForImageClassification(config), scale=0.1).double()


def relative_completeness_error(model, x, target=None) -> torch.Tensor:
    explanation = model.explain(x, target=target)
    explained = explanation.target_logits - model.config.resolved_logit_bias
    return (explanation.contributions.sum(dim=(1, 2)) - explained).abs() / explained.abs()


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("target", [None, 0, 3, "per-image"])
def test_pure_model_contributions_sum_to_the_logit_minus_logit_bias(b, target):
    model = pure_bcos_vit(b)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    if target == "per-image":
        target = torch.tensor([6, 1, 2, 5])
    assert relative_completeness_error(model, x, target).max() <= 1e-6


def test_pure_model_bias_is_exactly_the_logit_bias():
    model = pure_bcos_vit(2.0)
    explanation = model.explain(torch.rand(3, 3, 16, 16, dtype=torch.float64))
    assert torch.allclose(explanation.bias, torch.full((3,), -math.log(NUM_LABELS - 1), dtype=torch.float64))


def _never_detach(monkeypatch, module_type) -> None:
    """Remove one detach: instances of ``module_type`` ignore explanation mode."""
    monkeypatch.setattr(module_type, "detach_dynamic", property(lambda self: False, lambda self, value: None))


@pytest.mark.parametrize(
    "module_type", [BcosLayerNorm, GatedActivation, BcosSelfAttention], ids=["layernorm", "gelu-gate", "attention"]
)
def test_completeness_fails_when_one_detach_is_removed(monkeypatch, module_type):
    model = pure_bcos_vit(2.0)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    assert relative_completeness_error(model, x).max() <= 1e-6
    _never_detach(monkeypatch, module_type)
    assert relative_completeness_error(model, x).max() > 1e-3


def converted_model(b=2.0, bias="keep") -> BcosViTForImageClassification:
    return BcosViTForImageClassification.from_pretrained_standard(hf_vit(), b=b, bias=bias).eval()


def test_bias_of_a_model_with_constants_is_the_logit_minus_the_contributions():
    model = converted_model().double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    explanation = model.explain(x)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert torch.allclose(explanation.logits, logits, rtol=1e-10)
    selected = logits.gather(1, explanation.target[:, None]).squeeze(1)
    assert torch.allclose(explanation.bias, selected - explanation.contributions.sum(dim=(1, 2)), rtol=1e-10)
    assert ((explanation.bias_share > 0) & (explanation.bias_share < 1)).all()  # both parts are there
    bias, summed = explanation.bias.abs(), explanation.contributions.sum(dim=(1, 2)).abs()
    assert torch.allclose(explanation.bias_share, bias / (bias + summed), rtol=1e-10)


def test_default_target_is_the_top_class():
    model = converted_model()
    explanation = model.explain(torch.rand(5, 3, 32, 32))
    assert torch.equal(explanation.target, explanation.logits.argmax(dim=1))


def test_batched_explanation_equals_one_image_at_a_time():
    model = converted_model().double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    batched = model.explain(x, target=2)
    for i in range(3):
        single = model.explain(x[i : i + 1], target=2)
        assert torch.allclose(batched.dynamic_weights[i], single.dynamic_weights[0], rtol=1e-9, atol=1e-12)


def test_explanation_fields_have_the_documented_shapes_and_dtype():
    model = converted_model()
    explanation = model.explain(torch.rand(2, 3, 32, 32), target=1)
    assert explanation.logits.shape == (2, 5)
    assert explanation.target.tolist() == [1, 1]
    assert explanation.dynamic_weights.shape == (2, 6, 32, 32)
    assert explanation.contributions.shape == (2, 32, 32)
    assert explanation.bias.shape == (2,)
    assert all(t.dtype == torch.float32 for t in (explanation.dynamic_weights, explanation.contributions))
    assert not explanation.dynamic_weights.requires_grad


def test_float32_completeness_holds_to_float32_precision():
    model = converted_model()
    explanation = model.explain(torch.rand(2, 3, 32, 32))
    total = explanation.contributions.sum(dim=(1, 2)) + explanation.bias
    assert torch.allclose(total, explanation.target_logits, atol=1e-5)


def paper_opacity(explanation, smooth: int = 0, percentile: float = 99.5) -> torch.Tensor:
    """(N, H, W) the papers' opacity, pixel by pixel: the dynamic weights' norm where the contribution is positive
    (0 elsewhere), averaged over the ``smooth`` x ``smooth`` neighbours inside the image, divided by its
    ``percentile`` over the image and clipped to 1."""
    norm = explanation.dynamic_weights.double().pow(2).sum(dim=1).sqrt()
    norm[explanation.contributions < 0] = 0
    if smooth > 1:
        height, width = norm.shape[1:]
        averaged = torch.empty_like(norm)
        for y in range(height):
            for x in range(width):
                rows = slice(max(y - smooth // 2, 0), y + smooth // 2 + 1)
                cols = slice(max(x - smooth // 2, 0), x + smooth // 2 + 1)
                averaged[:, y, x] = norm[:, rows, cols].mean(dim=(1, 2))
        norm = averaged
    scale = torch.stack([torch.quantile(image.flatten(), percentile / 100) for image in norm])
    return (norm / scale[:, None, None]).clamp(0, 1)


def test_rgba_rendering_follows_the_papers_recipe():
    model = converted_model()
    explanation = model.explain(torch.rand(2, 3, 32, 32))
    rgba = explanation.rgba
    assert rgba.shape == (2, 32, 32, 4)
    assert (rgba[..., 3][explanation.contributions < 0] == 0).all()
    weights = explanation.dynamic_weights
    gain = (weights / weights.abs().amax(dim=1, keepdim=True)).clamp_min(0)
    rgb = gain[:, :3] / (gain[:, :3] + gain[:, 3:]).clamp_min(1e-12)
    assert torch.allclose(rgba[..., :3], rgb.permute(0, 2, 3, 1), atol=1e-6)
    torch.testing.assert_close(rgba[..., 3].double(), paper_opacity(explanation), rtol=1e-5, atol=1e-6)
    smoothed = explanation.render(smooth=3)
    assert torch.equal(smoothed[..., :3], rgba[..., :3])  # smoothing touches the opacity only
    torch.testing.assert_close(smoothed[..., 3].double(), paper_opacity(explanation, smooth=3), rtol=1e-5, atol=1e-6)


def test_contribution_map_is_white_at_zero_and_red_for_the_largest_positive():
    model = converted_model()
    explanation = model.explain(torch.rand(1, 3, 32, 32))
    colours = explanation.contribution_map(percentile=100)
    top = explanation.contributions.abs().flatten().argmax()
    assert colours.shape == (1, 32, 32, 3)
    sign = explanation.contributions.flatten()[top].sign()
    assert torch.allclose(colours.reshape(-1, 3)[top], torch.tensor([1.0, 0, 0] if sign > 0 else [0, 0, 1.0]))
    # on constructed contributions: white at 0, red/blue at the largest magnitude, halfway colours at half of it
    constructed = type(explanation)(**{**vars(explanation), "contributions": torch.tensor([[[0.0, 2.0], [-2.0, 1.0]]])})
    expected = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 0.5, 0.5]]])
    torch.testing.assert_close(constructed.contribution_map(percentile=100)[0], expected)


def test_a_float16_explanation_renders_as_its_float32_copy_does_without_nan():
    explanation = converted_model().half().explain(torch.rand(2, 3, 32, 32))
    as_float32 = type(explanation)(
        **{name: value.float() for name, value in vars(explanation).items() if name != "output_name"}
    )
    for rendered, reference in (
        (explanation.rgba, as_float32.rgba),
        (explanation.contribution_map(), as_float32.contribution_map()),
    ):
        assert not rendered.isnan().any()
        torch.testing.assert_close(rendered, reference)
    zero = type(explanation)(**{**vars(explanation), "contributions": torch.zeros_like(explanation.contributions)})
    assert torch.equal(zero.contribution_map(), torch.ones(2, 32, 32, 3))  # white, not NaN, where nothing contributes


@pytest.mark.parametrize("scale", [1e-15, 1e20])
def test_a_picture_does_not_depend_on_the_scale_of_its_map(scale):
    """Opacity and colour are relative to each image's own map: a map far from 1 neither overflows (the norm of
    the weights) nor fades (the guards against 0 / 0)."""
    explanation = converted_model().explain(torch.rand(2, 3, 32, 32))
    scaled = type(explanation)(
        **{
            **vars(explanation),
            "dynamic_weights": explanation.dynamic_weights * scale,
            "contributions": explanation.contributions * scale,
        }
    )
    torch.testing.assert_close(scaled.rgba, explanation.rgba)
    torch.testing.assert_close(scaled.contribution_map(), explanation.contribution_map())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_map_holding_a_value_that_is_not_finite_is_refused_rather_than_drawn_blank(value):
    explanation = converted_model().explain(torch.rand(2, 3, 32, 32))
    explanation.contributions[1, 3, 4] = value
    explanation.dynamic_weights[1, 0, 3, 4] = value
    for render in (lambda: explanation.rgba, explanation.contribution_map):
        with pytest.raises(ValueError, match="the explanation holds NaN or infinite values"):
            render()


@pytest.mark.parametrize("percentile", [-1, 150])
def test_a_percentile_outside_0_to_100_is_refused_with_its_range(percentile):
    explanation = converted_model().explain(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"percentile must lie in \[0, 100\]"):
        explanation.render(percentile=percentile)


@pytest.mark.parametrize(
    "bad, message",
    [
        (10, r"must lie in \[0, 5\)"),
        (-1, r"must lie in \[0, 5\)"),
        (torch.tensor([0, 1, 2]), r"shape \(2,\), got shape \(3,\)"),
        (True, "got dtype torch.bool"),
        (torch.tensor([True, False]), "got dtype torch.bool"),  # a mask is not a list of classes
        ([], r"shape \(2,\), got shape \(0,\)"),
    ],
    ids=["too-large", "negative", "wrong-length", "bool", "bool-mask", "empty"],
)
def test_invalid_targets_are_rejected_saying_why(bad, message):
    model = converted_model()
    with pytest.raises(ValueError, match=message):
        model.explain(torch.rand(2, 3, 32, 32), target=bad)


def test_an_empty_batch_takes_an_empty_target_list():
    assert converted_model().explain(torch.rand(0, 3, 32, 32), target=[]).target.shape == (0,)


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_explaining_an_array_says_a_tensor_is_needed(family):
    model = TINY_CLASSIFIERS[family]()
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor, got ndarray"):
        model.explain(
            torch.rand(1, 3, 32, 32).numpy(), **({"text_embeds": torch.rand(2, 8)} if family == "clip" else {})
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_explanation_on_gpu_matches_cpu():
    model = converted_model().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    cpu = model.explain(x)
    gpu = model.cuda().explain(x.cuda())
    assert torch.allclose(gpu.contributions.cpu(), cpu.contributions, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", sorted(TINY_CLASSIFIERS))
def test_explain_works_inside_inference_mode(family):
    """``with torch.inference_mode():`` is how many users wrap inference; an explanation needs autograd inside it,
    and its images (and CLIP's prompt embeddings) are then inference tensors."""
    torch.manual_seed(0)
    model = TINY_CLASSIFIERS[family]().eval()
    prompts = {"text_embeds": torch.randn(4, model.config.projection_dim)} if family == "clip" else {}
    x = torch.rand(2, 3, 32, 32)
    expected = model.explain(x, **prompts)
    with torch.inference_mode():
        inference_x = x.clone()
        inference_prompts = {name: value.clone() for name, value in prompts.items()}
        explanation = model.explain(inference_x, **inference_prompts)
    torch.testing.assert_close(explanation.contributions, expected.contributions)
    torch.testing.assert_close(explanation.contributions.sum(dim=(1, 2)) + explanation.bias, expected.target_logits)


@pytest.mark.parametrize("made", ["built", "cast"])
def test_a_model_made_under_inference_mode_is_refused_saying_to_make_it_outside(made):
    """Weights made there are inference tensors, which autograd cannot differentiate (loading there is fine)."""
    with torch.inference_mode():
        model = TINY_CLASSIFIERS["vit"]() if made == "built" else TINY_CLASSIFIERS["vit"]().eval().half().float()
    with pytest.raises(ValueError, match=r"built, converted or cast under torch.inference_mode\(\): do that outside"):
        model.explain(torch.rand(1, 3, 32, 32))


def test_an_explanation_shows_its_shapes_not_its_values_and_compares_by_identity():
    model = TINY_CLASSIFIERS["vit"]().eval()
    first, second = (model.explain(torch.rand(8, 3, 32, 32)) for _ in range(2))
    text = repr(first)
    assert text.startswith("BcosExplanation(logits=(8, 3), target=(8,), dynamic_weights=(8, 6, 32, 32), ")
    assert "tensor(" not in text and len(text) < 300
    assert first == first and first != second and first not in [second]  # no "ambiguous truth value of a tensor"


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_a_differentiable_explanation_keeps_the_graph_of_its_contributions_inside_a_no_grad_block(context):
    model = pure_bcos_vit(2.0).train()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = model.explain(x, create_graph=True)
    with context():
        explanation = model.explain(x, create_graph=True)
    assert explanation.contributions.requires_grad and explanation.bias.requires_grad
    weight = model.classifier.weight
    (gradient,) = torch.autograd.grad(explanation.contributions.square().sum(), weight)
    (reference,) = torch.autograd.grad(expected.contributions.square().sum(), weight)
    torch.testing.assert_close(gradient, reference)


def test_explanations_computed_by_concurrent_threads_on_one_model_are_each_exact():
    """A server explains requests from a thread pool on one model."""
    model = pure_bcos_vit(2.0).eval()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = []

    def explain_repeatedly():
        for _ in range(40):
            explanation = model.explain(x)
            errors.append(float((explanation.bias - model.config.resolved_logit_bias).abs().max()))

    threads = [threading.Thread(target=explain_repeatedly) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 160 and max(errors) < 1e-9


def input_gradient(model, x: torch.Tensor) -> torch.Tensor:
    """The gradient of the first logit with respect to the image, with autograd's whole graph."""
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(pixel_values=x).logits[:, 0].sum(), x)
    return gradient


def in_another_thread(function, *args):
    """``function(*args)`` run in a new thread, whose result (or error) comes back within a minute."""
    results = []
    thread = threading.Thread(target=lambda: results.append(function(*args)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert results, "the other thread did not finish"
    return results[0]


def test_a_gradient_taken_in_another_thread_is_whole_while_one_thread_explains():
    """Explanation mode is per thread: a training step or a post-hoc gradient beside an explanation keeps the
    gradient through every dynamic factor."""
    model = pure_bcos_vit(2.0).eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    whole = input_gradient(model, x)
    with model.explanation_mode():
        detached = input_gradient(model, x)
        beside = in_another_thread(input_gradient, model, x)
    assert not torch.allclose(detached, whole)
    torch.testing.assert_close(beside, whole, rtol=0, atol=0)


def test_a_thread_explains_while_another_is_in_explanation_mode_and_leaves_it_there():
    model = pure_bcos_vit(2.0).eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with model.explanation_mode():
        explanation = in_another_thread(lambda: model.explain(x, target=0))
        detached = input_gradient(model, x)
    bias = torch.full((2,), float(model.config.resolved_logit_bias), dtype=torch.float64)
    torch.testing.assert_close(explanation.bias, bias, rtol=0, atol=1e-9)
    torch.testing.assert_close(detached, explanation.dynamic_weights[:, :3] - explanation.dynamic_weights[:, 3:])
