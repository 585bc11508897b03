"""The losses on explanations: the energy loss of model guidance and the e2KD loss, on constructed values and on
real (tiny) B-cos models whose explanations are differentiated."""

import copy
import math

import pytest
import torch

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.training.explanation_losses import (
    differentiable_explanation,
    e2kd_loss,
    energy_loss,
    explanation_cosine,
    guidance_contributions,
    hidden_layer_contributions,
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
        attributions = guidance_contributions(model, pixels, torch.tensor([0, 2]), layer)
        assert attributions.shape == (2, 16, 16)
        energy_loss(attributions, masks).sum().backward()
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
    contributions, logits = hidden_layer_contributions(model, pixels, target, "bcos_vit.layers.0")
    explained = logits.gather(1, target[:, None])[:, 0] - model.config.resolved_logit_bias
    torch.testing.assert_close(contributions.sum(dim=(1, 2)), explained)
    with pytest.raises(ValueError, match="no layer"):
        hidden_layer_contributions(model, pixels, target, "bcos_vit.nowhere")


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
