"""The losses on explanations: the localisation losses of model guidance (energy, L1, RRR, PPCE) and the e2KD loss,
on constructed values and on real (tiny) B-cos models whose explanations (and IxG, GradCAM) are differentiated."""

import copy
import math

import pytest
import torch

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.training.explanation_losses import (
    GUIDANCE_LOSSES,
    attributions,
    differentiable_explanation,
    e2kd_loss,
    energy_loss,
    explanation_cosine,
    frozen_running_statistics,
    gradcam_map,
    l1_loss,
    max_normalised,
    ppce_loss,
    rrr_loss,
)


def tiny_vit(seed: int = 0, **overrides) -> BcosViTForImageClassification:
    torch.manual_seed(seed)
    fields = dict(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    return BcosViTForImageClassification(BcosViTConfig(**{**fields, **overrides})).eval()


def quadrant_mask(batch: int = 1, size: int = 4) -> torch.Tensor:
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[:, :2, :2] = True
    return mask


def test_energy_loss_known_values():
    mask = quadrant_mask(4)
    maps = torch.zeros(4, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 2.0, -5.0  # all positive attribution inside (negative outside does not count)
    maps[1, 3, 3] = 1.0  # all outside
    maps[2] = -torch.rand(4, 4)  # nothing positive
    maps[3, 0, 1], maps[3, 1, 0], maps[3, 2, 2], maps[3, 0, 0] = 3.0, 1.0, 1.0, -4.0  # 4 of 5 inside
    loss = energy_loss(maps, mask)
    torch.testing.assert_close(loss, torch.tensor([0.0, 1.0, 1.0, 1 - 4 / 5]))
    with pytest.raises(ValueError, match="differ in shape"):
        energy_loss(maps, mask[:, :3])


def test_energy_loss_gradient_reaches_every_bcos_weight():
    model = tiny_vit().train()
    pixels = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    for layer in ("input", "bcos_vit.layers.0"):
        model.zero_grad()
        maps = attributions(model, pixels, torch.tensor([0, 2]), "bcos", layer)
        assert maps.shape == (2, 16, 16)
        energy_loss(maps, masks).sum().backward()
        weights = {
            "patch embedding": model.bcos_vit.embeddings.patch_embeddings.projection.weight,
            "value projection": model.bcos_vit.layers[1].attention.v_proj.weight,
            "classifier": model.classifier.weight,
        }
        for name, weight in weights.items():
            assert weight.grad is not None and weight.grad.abs().sum() > 0, (layer, name)


def test_differentiable_explanation_is_the_explanation():
    model = tiny_vit()
    pixels = torch.rand(3, 3, 16, 16)
    plain = model.explain(pixels, target=1)
    graph = differentiable_explanation(model, pixels, 1)
    assert graph.dynamic_weights.requires_grad and not plain.dynamic_weights.requires_grad
    torch.testing.assert_close(graph.dynamic_weights.detach(), plain.dynamic_weights)
    torch.testing.assert_close(graph.contributions.detach(), plain.contributions)


def test_hidden_layer_contributions_are_complete():
    """A pure B-cos ViT (no biases, class token or position embeddings) with one patch per pixel: a hidden layer's
    contributions sum to the logit minus the logit bias, the same completeness the input explanation has."""
    model = tiny_vit(
        image_size=8,
        patch_size=1,
        use_bias=False,
        use_class_token=False,
        use_position_embeddings=False,
        pooling="mean",
    ).double()
    pixels = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([2, 0])
    contributions = attributions(model, pixels, target, "bcos", "bcos_vit.layers.0")
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    explained = logits.gather(1, target[:, None])[:, 0] - model.config.resolved_logit_bias
    torch.testing.assert_close(contributions.sum(dim=(1, 2)), explained)
    assert contributions.requires_grad
    with pytest.raises(ValueError, match="no layer"):
        attributions(model, pixels, target, "bcos", "bcos_vit.nowhere")


def e2kd_terms_by_hand(student_logits, teacher_logits, student_weights, teacher, temperature) -> dict[str, float]:
    """The e2KD terms image by image, in float64: T^2 KL(softmax(z_t / T) || softmax(z_s / T)) and 1 - cos of the
    flattened dynamic weights, each averaged over the batch."""
    kd, explanation = [], []
    for z_s, z_t, w_s, w_t in zip(
        student_logits.double(), teacher_logits.double(), student_weights.double(), teacher.dynamic_weights.double()
    ):
        p_t, p_s = (z_t / temperature).softmax(dim=0), (z_s / temperature).softmax(dim=0)
        kd.append(temperature**2 * float((p_t * (p_t.log() - p_s.log())).sum()))
        explanation.append(1 - float((w_s * w_t).sum() / (w_s.norm() * w_t.norm())))
    return {"kd": sum(kd) / len(kd), "explanation": sum(explanation) / len(explanation)}


def test_e2kd_loss_is_zero_for_identical_teacher_and_student():
    teacher = tiny_vit(seed=1)
    student = copy.deepcopy(teacher)
    pixels = torch.rand(4, 3, 16, 16)
    taught = teacher.explain(pixels)
    learnt = differentiable_explanation(student, pixels, taught.target)
    terms = e2kd_loss(learnt.logits, taught.logits, learnt.dynamic_weights, taught.dynamic_weights, temperature=2.0)
    assert float(terms["loss"].detach()) == pytest.approx(0.0, abs=1e-6)
    other = differentiable_explanation(tiny_vit(seed=2), pixels, taught.target)
    terms = e2kd_loss(other.logits, taught.logits, other.dynamic_weights, taught.dynamic_weights, temperature=2.0)
    expected = e2kd_terms_by_hand(other.logits.detach(), taught.logits, other.dynamic_weights.detach(), taught, 2.0)
    assert float(terms["kd"].detach()) == pytest.approx(expected["kd"], rel=1e-2, abs=1e-7)  # float32 KL
    assert float(terms["explanation"].detach()) == pytest.approx(expected["explanation"], rel=1e-5)
    assert float(terms["loss"].detach()) == pytest.approx(expected["kd"] + expected["explanation"], rel=1e-5)
    assert expected["kd"] > 1e-5 and expected["explanation"] > 1e-3  # another student: both terms count


def test_e2kd_terms_on_constructed_logits_and_explanations():
    """Teacher logits (2, 0, 0) against a uniform student at T = 2, and explanations at 45 degrees: the KD term is
    T^2 KL(teacher || student), the explanation term 1 - cos 45 degrees."""
    student_logits, teacher_logits = torch.zeros(1, 3), torch.tensor([[2.0, 0.0, 0.0]])
    student_weights, teacher_weights = torch.zeros(1, 6, 2, 2), torch.zeros(1, 6, 2, 2)
    student_weights[0, 0, 0, 0] = 3.0
    teacher_weights[0, 0, 0, 0], teacher_weights[0, 5, 1, 1] = 1.0, 1.0
    terms = e2kd_loss(student_logits, teacher_logits, student_weights, teacher_weights, temperature=2.0)
    teacher = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]  # softmax((2, 0, 0) / 2)
    kd = 4 * sum(p * math.log(p / (1 / 3)) for p in teacher)
    assert float(terms["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(terms["explanation"]) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(kd + 1 - 1 / math.sqrt(2), rel=1e-5)


def test_e2kd_explanation_term_trains_the_student_only():
    teacher, student = tiny_vit(seed=1), tiny_vit(seed=2).train()
    pixels = torch.rand(4, 3, 16, 16)
    taught = teacher.explain(pixels)
    learnt = differentiable_explanation(student, pixels, taught.target)
    terms = e2kd_loss(learnt.logits, taught.logits, learnt.dynamic_weights, taught.dynamic_weights, kd_weight=0.0)
    student_weights, teacher_weights = learnt.dynamic_weights.flatten(1), taught.dynamic_weights.flatten(1)
    cosines = (student_weights * teacher_weights).sum(dim=1) / (
        student_weights.norm(dim=1) * teacher_weights.norm(dim=1)
    )
    parameters = [p for p in student.parameters() if p.requires_grad]
    expected = torch.autograd.grad((1 - cosines).mean(), parameters, retain_graph=True, allow_unused=True)
    terms["loss"].backward()
    for parameter, grad in zip(parameters, expected):  # the gradient of 1 - cos alone: no KD term at weight 0
        zero = torch.zeros_like(parameter)
        torch.testing.assert_close(zero if parameter.grad is None else parameter.grad, zero if grad is None else grad)
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert student.bcos_vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert sum(int(g is not None and bool(g.abs().sum() > 0)) for g in grads) > len(grads) // 2
    assert all(p.grad is None for p in teacher.parameters())


def test_a_few_e2kd_steps_raise_the_explanation_cosine():
    teacher, student = tiny_vit(seed=1), tiny_vit(seed=2).train()
    pixels = torch.rand(8, 3, 16, 16)
    taught = teacher.explain(pixels)

    def cosine() -> float:
        weights = student.explain(pixels, target=taught.target).dynamic_weights
        return float(explanation_cosine(weights, taught.dynamic_weights).mean())

    before = cosine()
    optimiser = torch.optim.Adam(student.parameters(), lr=3e-3)
    for _ in range(15):
        learnt = differentiable_explanation(student, pixels, taught.target)
        loss = e2kd_loss(learnt.logits, taught.logits, learnt.dynamic_weights, taught.dynamic_weights)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = cosine()
    assert after > before + 0.05, (before, after)


def test_explanation_cosine_resizes_the_student_to_the_teacher():
    teacher = torch.rand(2, 6, 8, 8)
    student = torch.nn.functional.interpolate(teacher, size=(16, 16), mode="nearest")
    torch.testing.assert_close(explanation_cosine(student, teacher), torch.ones(2), atol=0.1, rtol=0)


# -- the model guidance paper's other losses and attributions ---------------------------------------------------------


def two_by_two() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2x2 maps and masks of their top row: (2, -1 / 1, 0) and all zeros."""
    maps = torch.tensor([[[2.0, -1.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    masks = torch.tensor([[[True, True], [False, False]]] * 2)
    return maps, masks


def test_l1_loss_known_values():
    """Positive part over its maximum: (1, 0 / 0.5, 0); against the mask (1, 1 / 0, 0) the mean of |difference| is
    (0 + 1 + 0.5 + 0) / 4. A map of zeros is all zero against the mask: 2 / 4."""
    maps, masks = two_by_two()
    torch.testing.assert_close(l1_loss(maps, masks), torch.tensor([0.375, 0.5], dtype=torch.float64))
    uniform = masks[:1].double() * 3.0  # uniform positive attribution inside, none outside
    assert float(l1_loss(uniform, masks[:1])) == 0.0


def test_rrr_loss_known_values():
    """Signed map over its largest magnitude: (1, -0.5 / 0.5, 0); outside the mask (the bottom row) the squares sum
    to 0.25. Negative attribution outside counts as much as positive."""
    maps, masks = two_by_two()
    torch.testing.assert_close(rrr_loss(maps, masks), torch.tensor([0.25, 0.0], dtype=torch.float64))
    flipped = maps.clone()
    flipped[0, 1, 0] = -1.0
    torch.testing.assert_close(rrr_loss(flipped, masks)[0], torch.tensor(0.25, dtype=torch.float64))


def test_ppce_loss_known_values_and_a_finite_gradient_at_zero():
    """Inside the box the scaled positive attribution is (1, 0): binary cross-entropy towards 1 is (0, 100) (torch
    clamps the log at -100), mean 50; no box gives 0. The gradient stays finite where the attribution is 0."""
    maps, masks = two_by_two()
    torch.testing.assert_close(ppce_loss(maps, masks)[0], torch.tensor(50.0, dtype=torch.float64))
    assert float(ppce_loss(maps, torch.zeros_like(masks))[0]) == 0.0
    half = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)  # (1, 0.5) inside: -log 0.5 / 2
    assert float(ppce_loss(half, masks[:1])[0]) == pytest.approx(math.log(2) / 2)
    leaf = maps.clone().requires_grad_(True)
    ppce_loss(leaf, masks).sum().backward()
    assert torch.isfinite(leaf.grad).all()


def test_max_normalised_keeps_zero_maps_and_is_differentiable():
    maps, _ = two_by_two()
    torch.testing.assert_close(max_normalised(maps, positive=False)[0], maps[0] / 2)
    torch.testing.assert_close(max_normalised(maps, positive=True)[0], maps[0].clamp_min(0) / 2)
    assert (max_normalised(maps, positive=True)[1] == 0).all()


def test_every_guidance_loss_is_zero_for_attribution_uniformly_inside_the_box():
    masks = torch.zeros(3, 6, 6, dtype=torch.bool)
    masks[:, 1:4, 2:5] = True
    maps = masks.double() * torch.tensor([1.0, 0.5, 7.0], dtype=torch.float64)[:, None, None]
    for name, loss in GUIDANCE_LOSSES.items():
        torch.testing.assert_close(loss(maps, masks), torch.zeros(3, dtype=torch.float64), msg=name)


def test_gradcam_map_known_values():
    """Two channels with mean gradients 1 and -2: ReLU(a_0 - 2 a_1) per position."""
    activation = torch.tensor([[[[1.0, 2.0], [3.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]]])
    gradient = torch.stack([torch.full((2, 2), 1.0), torch.tensor([[-4.0, 0.0], [0.0, -4.0]])])[None]
    torch.testing.assert_close(gradcam_map(activation, gradient), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


def tiny_resnet(b: float = 2.0) -> torch.nn.Module:
    from bcos_zoo import BcosResNetConfig, BcosResNetForImageClassification

    torch.manual_seed(0)
    config = BcosResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", b=b, num_labels=3, image_size=16
    )
    return BcosResNetForImageClassification(config).double().eval()


def test_input_x_gradient_is_the_bcos_explanation_at_b_1_only():
    """At B = 1 (without biases) the network is piecewise linear and its explanation mode detaches nothing that
    varies, so Input x Gradient on the [x, 1 - x] encoding equals the B-cos contributions; at B = 2 the cosine
    factor's own gradient makes them differ."""
    pixels = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([1, 2])
    for b, same in ((1.0, True), (2.0, False)):
        model = tiny_resnet(b)
        ixg = attributions(model, pixels, target, "ixg", create_graph=False)
        own = attributions(model, pixels, target, "bcos", create_graph=False)
        assert torch.allclose(ixg, own, rtol=1e-9, atol=1e-12) == same, b


@pytest.mark.parametrize("layer", ["input", "bcos_vit.layers.0"])
def test_input_x_gradient_guidance_of_a_vit_trains_through_its_attention_as_written_out(layer):
    """A loss on a gradient differentiates the attention twice, which the fused kernels cannot: the gradient of
    the loss with the default attention equals the one with written-out (eager) attention."""
    pixels = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    masks = quadrant_mask(2, 16)
    gradients = []
    for implementation in ("sdpa", "eager"):
        model = tiny_vit(attn_implementation=implementation).double().train()
        maps = attributions(model, pixels, torch.tensor([0, 2]), "ixg", layer)
        GUIDANCE_LOSSES["rrr"](maps, masks).sum().backward()
        gradients.append(model.bcos_vit.embeddings.patch_embeddings.projection.weight.grad)
    assert gradients[0].abs().sum() > 0
    torch.testing.assert_close(*gradients)


def test_hidden_layer_attributions_reach_the_weights_and_have_the_image_size():
    model = tiny_resnet().train()
    pixels = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 2:10, 3:12] = True
    for method in ("bcos", "ixg", "gradcam"):
        model.zero_grad()
        maps = attributions(model, pixels, torch.tensor([0, 2]), method, "bcos_resnet.encoder.stages.1")
        assert maps.shape == (2, 16, 16), method
        GUIDANCE_LOSSES["rrr"](maps, masks).sum().backward()
        assert model.bcos_resnet.embedder.embedder.convolution.weight.grad.abs().sum() > 0, method
        if method == "gradcam":
            assert (maps >= 0).all()
    with pytest.raises(ValueError, match="hidden layer"):
        attributions(model, pixels, torch.tensor([0, 2]), "gradcam")


def test_frozen_running_statistics_leave_every_batch_norm_alone():
    model = tiny_resnet().train()
    model(pixel_values=torch.rand(4, 3, 16, 16, dtype=torch.float64))  # a training step's forward counts the batch
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    assert any(".encoder." in name for name in before if name.endswith("running_var"))  # norms inside the stages too
    with frozen_running_statistics(model):
        model(pixel_values=torch.rand(2, 3, 16, 16, dtype=torch.float64))  # the explanation's second pass
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, before[name], msg=name)
    model(pixel_values=torch.rand(4, 3, 16, 16, dtype=torch.float64))
    changed = [name for name, buffer in model.named_buffers() if not torch.equal(buffer, before[name])]
    assert all(name in changed for name in before if name.endswith("running_var"))  # counting again afterwards


def test_frozen_running_statistics_leave_torch_s_batch_norm_alone_too():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with frozen_running_statistics(model):
        model(torch.rand(2, 3, 8, 8))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_e2kd_loss_sends_no_gradient_to_the_teacher_explanation():
    student, teacher = torch.randn(3, 5, 6, 6, requires_grad=True), torch.randn(3, 5, 6, 6, requires_grad=True)
    terms = e2kd_loss(torch.randn(3, 4, requires_grad=True), torch.randn(3, 4), student, teacher)
    terms["loss"].backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def per_token_contributions(model, pixels, target, layer) -> torch.Tensor:
    """(N, T) contributions ``a * dy/da`` of each token of ``layer`` to the target logit, in explanation mode."""
    from bcos_zoo.modeling.bcos_layers import explanation_mode

    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, output: captured.append(output))
    with explanation_mode(model):
        logits = model(pixel_values=pixels).logits
    handle.remove()
    (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured[0])
    return (captured[0] * gradient).sum(dim=2).detach()


def simple_vit(**overrides):
    from bcos_zoo import BcosSimpleViTConfig, BcosSimpleViTForImageClassification

    torch.manual_seed(0)
    fields = dict(image_size=32, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=48)
    return BcosSimpleViTForImageClassification(BcosSimpleViTConfig(**fields, num_labels=4, **overrides)).eval()


@pytest.mark.parametrize(
    ("make", "layer", "size", "leading", "grid"),
    [
        # a simple ViT at 24 x 40 px, patch 8: 15 patch tokens on 3 x 5 (a square layout kept 9 of them)
        (lambda: simple_vit(patch_size=8), "bcos_simple_vit.layers.1", (24, 40), 0, (3, 5)),
        # a ViT-C: a stride-4 stem, then 2 x 2 patches; its padded convolutions round 22 x 38 px up to 6 x 10
        (lambda: simple_vit(patch_size=2, conv_stem=[12, 24]), "bcos_simple_vit.layers.1", (22, 38), 0, (3, 5)),
        # a ViT whose class token and 2 x 4 patches make 9 tokens: the class token is no patch of a 3 x 3 grid
        (
            lambda: tiny_vit(image_size=8, use_position_embeddings=False, pooling="cls"),
            "bcos_vit.layers.1",
            (8, 16),
            1,
            (2, 4),
        ),
    ],
)
def test_hidden_layer_contributions_lie_on_the_model_patch_grid(make, layer, size, leading, grid):
    import torch.nn.functional as F

    model = make().double()
    pixels = torch.rand(2, 3, *size, dtype=torch.float64)
    target = torch.tensor([0, 2])
    tokens = per_token_contributions(model, pixels, target, layer)
    assert tokens.shape[1] == leading + grid[0] * grid[1]
    patches = tokens[:, leading:].reshape(2, 1, *grid)  # row by row, as the model cuts its patches
    expected = F.interpolate(patches, size=size, mode="bilinear", align_corners=False)[:, 0]
    maps = attributions(model, pixels, target, "bcos", layer, create_graph=False)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(attributions(model, pixels, target, "bcos", layer).detach(), expected)


def test_a_token_count_that_is_not_the_model_patch_grid_is_refused():
    from bcos_zoo.training.explanation_losses import spatial_contributions

    tokens = torch.rand(2, 15, 8)
    with pytest.raises(ValueError, match=r"15 tokens .* 1 class token\(s\) and a 3x5 patch grid \(16 tokens\)"):
        spatial_contributions(tokens, tokens, (1, 3, 5))
    torch.testing.assert_close(spatial_contributions(tokens, tokens, (0, 3, 5))[1, 2], (tokens[1, 10:15] ** 2).sum(1))
