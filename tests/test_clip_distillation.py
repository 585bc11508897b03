"""The B-cosification distillation objective for CLIP: SigLIP-style, fixed scale 10 and bias -10."""

import math

import pytest
import torch
from clip_testing import images, normalize, tiny_clip
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, TrainingArguments

from bcos_zoo import BcosCLIPModel, BcosCLIPVisionModel, siglip_distillation_loss
from bcos_zoo.training.clip_distillation import DistillationTrainer, FrozenCLIPTeacher


def test_loss_prefers_the_teacher_embeddings_over_shuffled_or_random_ones():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 32, generator=generator)
    matched = siglip_distillation_loss(teacher * 3.0, teacher)  # scale does not matter: embeddings are normalised
    shuffled = siglip_distillation_loss(teacher[torch.roll(torch.arange(16), 1)], teacher)
    random = siglip_distillation_loss(torch.randn(16, 32, generator=generator), teacher)
    assert matched < shuffled and matched < random
    # a perfect match sits at the sigmoid's midpoint on the diagonal: about log(2) / N
    assert matched == pytest.approx(math.log(2) / 16, rel=0.05)
    assert siglip_distillation_loss(teacher, teacher) == pytest.approx(matched.item(), rel=1e-5)


def test_loss_formula_and_teacher_gets_no_gradient():
    student = torch.randn(4, 8, requires_grad=True)
    teacher = torch.randn(4, 8, requires_grad=True)
    loss = siglip_distillation_loss(student, teacher)
    s, t = student / student.norm(dim=1, keepdim=True), teacher / teacher.norm(dim=1, keepdim=True)
    labels = 2 * torch.eye(4) - 1
    expected = -torch.nn.functional.logsigmoid(labels * (10 * s @ t.T - 10)).mean()
    assert torch.allclose(loss, expected)
    (expected_grad,) = torch.autograd.grad(expected, student)  # the gradient of the formula itself
    loss.backward()
    assert teacher.grad is None
    torch.testing.assert_close(student.grad, expected_grad)
    with pytest.raises(ValueError, match="must both have shape"):
        siglip_distillation_loss(student, teacher[:3])


def test_the_losses_of_batch_shares_against_all_teachers_average_to_the_whole_batch_loss():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(12, 8, generator=generator, requires_grad=True)
    teacher = torch.randn(12, 8, generator=generator)
    whole = siglip_distillation_loss(student, teacher)
    (whole_grad,) = torch.autograd.grad(whole, student)
    shares = [siglip_distillation_loss(student[i : i + 4], teacher, first=i) for i in (0, 4, 8)]  # three processes
    mean = sum(shares) / 3  # data-parallel gradients are averaged over the processes
    (shares_grad,) = torch.autograd.grad(mean, student)
    torch.testing.assert_close(mean, whole)
    torch.testing.assert_close(shares_grad, whole_grad)
    with pytest.raises(ValueError, match="at least 10 \\+ batch rows"):
        siglip_distillation_loss(student[:4], teacher, first=10)


def test_short_optimisation_of_a_bcos_tower_lowers_the_distillation_loss():
    teacher_clip = tiny_clip("openai_like", seed=7)
    config = CLIPVisionConfig(**{**teacher_clip.config.vision_config.to_dict(), "projection_dim": 16})
    teacher = CLIPVisionModelWithProjection(config).eval()
    teacher.vision_model.load_state_dict(teacher_clip.vision_model.state_dict())
    teacher.visual_projection.load_state_dict(teacher_clip.visual_projection.state_dict())
    distillation = FrozenCLIPTeacher(teacher)  # OpenAI mean/std, as tiny_clip("openai_like") expects

    # the student starts from a different random CLIP, B-cosified at b=2 without biases
    student = BcosCLIPVisionModel.from_pretrained_standard(tiny_clip("openai_like", seed=8), b=2.0, bias="remove")
    student.train()
    x = images(8, seed=9)
    with torch.no_grad():
        teacher_embeds = distillation.teacher_embeds(x)
        reference = teacher(pixel_values=normalize(x)).image_embeds
    assert torch.allclose(teacher_embeds, reference, atol=1e-6)
    # a whole CLIPModel serves as teacher too (its image tower is used)
    assert torch.allclose(FrozenCLIPTeacher(teacher_clip).teacher_embeds(x), reference, atol=1e-6)

    def matched_cosine() -> float:
        with torch.no_grad():
            return torch.nn.functional.cosine_similarity(student(x).image_embeds, teacher_embeds).mean().item()

    cosine_before = matched_cosine()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(25):
        loss = siglip_distillation_loss(student(x).image_embeds, distillation.teacher_embeds(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in teacher.parameters())
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    assert matched_cosine() > cosine_before


def test_the_distillation_trainer_scores_what_the_model_s_forward_returns(tmp_path):
    teacher = FrozenCLIPTeacher(tiny_clip("openai_like", seed=7))
    student = BcosCLIPModel.from_pretrained_standard(tiny_clip("openai_like", seed=8), b=2.0, bias="remove")
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = DistillationTrainer(model=student, args=arguments, teacher=teacher)
    x = images(4, seed=3)
    loss, outputs = trainer.compute_loss(student, {"pixel_values": x}, return_outputs=True)
    embeds = student.get_image_features(pixel_values=x).pooler_output
    torch.testing.assert_close(outputs.image_embeds, embeds / embeds.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(loss, siglip_distillation_loss(embeds, teacher.teacher_embeds(x)))
    loss.backward()  # the loss trains the image tower and leaves the frozen text tower alone
    assert student.visual_projection.weight.grad is not None
    assert all(p.grad is None for p in student.text_model.parameters())
