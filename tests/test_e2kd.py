"""e2KD as a task: the trainer's loss is the e2KD loss to a frozen teacher (plain KD without the explanation term),
and the task runs end to end through finetune with a teacher from a folder, for a ViT and a CNN student."""

import json

import pytest
import torch
from transformers import TrainingArguments

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification
from bcos_zoo.training.explanation_distillation import ExplanationDistillationTrainer, distillation_scores
from bcos_zoo.training.explanation_losses import differentiable_explanation, e2kd_loss
from bcos_zoo.zoo.finetune import finetune
from bcos_zoo.zoo.recipes import Recipe


TINY_VIT = dict(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)


def tiny_vit(seed: int) -> BcosViTForImageClassification:
    torch.manual_seed(seed)
    return BcosViTForImageClassification(BcosViTConfig(**TINY_VIT, intermediate_size=32, num_labels=3))


def test_trainer_loss_is_the_e2kd_loss_and_the_teacher_stays_frozen(tmp_path):
    teacher, student = tiny_vit(1).eval().requires_grad_(False), tiny_vit(2).train()
    pixels = torch.rand(4, 3, 16, 16)
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = ExplanationDistillationTrainer(
        model=student, args=arguments, teacher=teacher, temperature=2.0, explanation_weight=0.7
    )
    loss = trainer.compute_loss(student, {"pixel_values": pixels, "labels": torch.zeros(4, dtype=torch.long)})
    taught = teacher.explain(pixels)
    learnt = differentiable_explanation(student, pixels, taught.target)
    expected = e2kd_loss(
        student(pixel_values=pixels).logits,
        taught.logits,
        learnt.dynamic_weights,
        taught.dynamic_weights,
        temperature=2.0,
        explanation_weight=0.7,
    )["loss"]
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    parameters = [p for p in student.parameters() if p.requires_grad]
    expected_grads = torch.autograd.grad(expected, parameters, allow_unused=True)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for parameter, grad in zip(parameters, expected_grads):  # the trainer's loss trains the student as e2KD does
        torch.testing.assert_close(parameter.grad, torch.zeros_like(parameter) if grad is None else grad)
    assert student.bcos_vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    scores = distillation_scores(student, teacher, [], batch_size=4)
    assert scores == {}


def test_fixed_teaching_runs_the_teacher_once_per_image_and_teaches_the_same(tmp_path):
    teacher, student = tiny_vit(1).eval().requires_grad_(False), tiny_vit(2).train()
    pixels = torch.rand(4, 3, 16, 16)
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    options = dict(model=student, args=arguments, teacher=teacher, temperature=2.0, explanation_weight=0.7)
    online, fixed = ExplanationDistillationTrainer(**options), ExplanationDistillationTrainer(**options, fixed=True)
    inputs = {"pixel_values": pixels, "labels": torch.zeros(4, dtype=torch.long)}
    expected = float(online.compute_loss(student, inputs).detach())
    shuffled = {"pixel_values": pixels[[2, 0, 3, 1]], "labels": inputs["labels"]}
    losses = [float(fixed.compute_loss(student, batch).detach()) for batch in (inputs, shuffled, inputs)]
    assert fixed.teaching.computed == 4  # three batches of the same four images: the teacher saw each once
    assert losses[0] == pytest.approx(expected, rel=1e-5) and losses[2] == pytest.approx(expected, rel=1e-5)
    assert losses[1] == pytest.approx(expected, rel=1e-5)  # the same images in another order, the same mean loss


def distil(tmp_path, student_architecture: dict, explanation_weight: float) -> tuple[dict, str]:
    teacher_recipe = Recipe(
        name="teacher",
        source="scratch",
        dataset="fashion-mnist-canvas-48",
        hub_model_id="test/teacher",
        task="guided-classification",
        architecture=dict(TINY_VIT, intermediate_size=32),
        guidance_weight=0.0,
        max_steps=1,
        batch_size=8,
        max_train_samples=8,
        max_eval_samples=8,
        save_steps=100,
    )
    finetune(teacher_recipe, tmp_path / "teacher", device="cpu")
    student_recipe = Recipe(
        name="student",
        source="scratch",
        dataset="fashion-mnist-decoys-48",
        hub_model_id="test/student",
        task="explanation-distillation",
        architecture=student_architecture,
        teacher=str(tmp_path / "teacher" / "repo"),
        explanation_weight=explanation_weight,
        max_steps=2,
        batch_size=8,
        max_train_samples=16,
        max_eval_samples=8,
        save_steps=100,
    )
    finetune(student_recipe, tmp_path / "student", device="cpu")
    metrics = json.loads((tmp_path / "student" / "results.json").read_text())["metrics"]
    return metrics, (tmp_path / "student" / "repo" / "README.md").read_text()


def scores_by_hand(tmp_path, count: int = 8) -> dict[str, float]:
    """The student's scores on the first ``count`` test canvases, recomputed from the saved student and teacher:
    accuracies and agreement from their logits, the cosine of their dynamic weights for the teacher's top-1 class,
    and the student's positive contributions to the label inside the box over all its positive contributions."""
    import torch.nn.functional as F
    from transformers import AutoModelForImageClassification

    from bcos_zoo.data.decoys import decoy_splits
    from bcos_zoo.training.guided_classification import processor_box_transform

    student, teacher = (
        AutoModelForImageClassification.from_pretrained(tmp_path / name / "repo").eval()
        for name in ("student", "teacher")
    )
    assert student.config.image_size == teacher.config.image_size  # so the teacher sees the student's pixels
    items = [decoy_splits(canvas=48).validation[index] for index in range(count)]
    transform = processor_box_transform(student)
    pixels, masks = (torch.stack(parts) for parts in zip(*(transform(image, boxes) for image, _, boxes in items)))
    labels = torch.tensor([label for _, label, _ in items])
    with torch.no_grad():
        predicted, top1 = (model(pixel_values=pixels).logits.argmax(dim=1) for model in (student, teacher))
    weights = [model.explain(pixels, target=top1).dynamic_weights.flatten(1) for model in (student, teacher)]
    positive = student.explain(pixels, target=labels).contributions.double().clamp_min(0)
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "teacher_accuracy": float((top1 == labels).double().mean()),
        "agreement": float((predicted == top1).double().mean()),
        "explanation_cosine": float(F.cosine_similarity(*weights).mean()),
        "epg": float(((positive * masks).sum(dim=(1, 2)) / positive.sum(dim=(1, 2))).mean()),
    }


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_e2kd_runs_through_finetune_with_a_teacher_folder(tmp_path):
    metrics, card = distil(tmp_path, dict(TINY_VIT, hidden_size=8, intermediate_size=16), explanation_weight=1.0)
    expected = scores_by_hand(tmp_path)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-5)
    assert "| teacher | teacher (a local checkpoint) |" in card and "| explanation weight lambda_exp | 1.0 |" in card
    rows = [line for line in card.splitlines() if line.startswith("| teacher |")]
    assert rows and str(tmp_path) not in rows[0]  # a local teacher is named by its last path parts only


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_a_cnn_student_learns_from_a_vit_teacher(tmp_path):
    pytest.importorskip("bcos_zoo.modeling.modeling_bcos_resnet")
    architecture = dict(
        model_type="bcos_resnet",
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        image_size=16,
    )
    metrics, card = distil(tmp_path, architecture, explanation_weight=1.0)
    expected = scores_by_hand(tmp_path)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-5)
    config = json.loads((tmp_path / "student" / "repo" / "config.json").read_text())
    assert config["model_type"] == "bcos_resnet"


def image_folder(root, class_names: list[str]):
    from PIL import Image

    for name in class_names:
        (root / name).mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", (16, 16), (40 * index, 80, 120)).save(root / name / f"{index}.png")
    return root


@pytest.mark.parametrize(
    ("teacher_classes", "data_classes"),
    [
        (["blue", "green", "red"], ["blue", "red"]),  # fewer classes
        (["blue", "green", "red"], ["a", "b", "c"]),  # as many, named otherwise
        (["red", "green", "blue"], ["blue", "green", "red"]),  # the same names in another order
    ],
)
def test_a_teacher_of_other_classes_is_refused_naming_the_teacher_and_both_classes(
    tmp_path, teacher_classes, data_classes
):
    teacher = tiny_vit(1)
    teacher.config.id2label = dict(enumerate(teacher_classes))
    teacher.config.label2id = {name: index for index, name in enumerate(teacher_classes)}
    teacher.save_pretrained(tmp_path / "teacher")
    student = Recipe(
        name="student",
        source="scratch",
        dataset=str(image_folder(tmp_path / "data", data_classes)),
        hub_model_id="test/student",
        task="explanation-distillation",
        architecture=dict(TINY_VIT, intermediate_size=32),
        teacher=str(tmp_path / "teacher"),
        max_steps=1,
        batch_size=2,
    )
    with pytest.raises(ValueError) as refused:
        finetune(student, tmp_path / "student", device="cpu")
    message = str(refused.value)
    assert "\n" not in message and f"--teacher {tmp_path / 'teacher'}" in message
    assert str(teacher_classes) in message and str(data_classes) in message
    assert not (tmp_path / "student").exists()


def student_of(teacher: str) -> Recipe:
    return Recipe(
        name="student",
        source="scratch",
        dataset="unused",
        hub_model_id="test/student",
        task="explanation-distillation",
        architecture=dict(TINY_VIT, intermediate_size=32),
        teacher=teacher,
    )


def test_a_teacher_of_the_data_classes_is_accepted(tmp_path):
    from bcos_zoo.training import get_task

    teacher = tiny_vit(1)
    teacher.config.id2label = {0: "blue", 1: "green", 2: "red"}
    teacher.save_pretrained(tmp_path / "teacher")
    model = get_task(student_of(str(tmp_path / "teacher"))).build_model(["blue", "green", "red"])
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}


def test_a_teacher_folder_that_does_not_exist_is_refused_before_anything_is_loaded(tmp_path):
    from bcos_zoo.zoo.finetune import check_before_training

    with pytest.raises(ValueError, match=f"--teacher {tmp_path / 'nowhere'}: the folder .* does not exist"):
        check_before_training(student_of(str(tmp_path / "nowhere")), push=False, dry_run=False)


def test_a_standard_teacher_is_refused_saying_to_b_cosify_it_first(tmp_path):
    from sources import hf_vit

    from bcos_zoo.training.explanation_distillation import load_teacher

    hf_vit(labels=3).save_pretrained(tmp_path / "standard")
    with pytest.raises(ValueError, match="is a standard vit classifier, not a B-cos model: B-cosify and fine-tune it"):
        load_teacher(str(tmp_path / "standard"))


@pytest.mark.parametrize("kind", ["clip", "no model"])
def test_a_teacher_that_is_no_image_classifier_is_refused_naming_the_flag(tmp_path, kind):
    from tiny_models import TINY_CLASSIFIERS

    from bcos_zoo.training.explanation_distillation import load_teacher

    folder = tmp_path / "teacher"
    if kind == "clip":
        TINY_CLASSIFIERS["clip"]().save_pretrained(folder)
    else:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=f"--teacher {folder} is not a B-cos image classifier that loads"):
        load_teacher(str(folder))


def test_a_one_channel_teacher_is_refused_naming_the_flag(tmp_path):
    from bcos_zoo.training.explanation_distillation import load_teacher

    BcosViTForImageClassification(BcosViTConfig(**TINY_VIT, num_channels=1)).save_pretrained(tmp_path / "grey")
    with pytest.raises(ValueError, match=r"--teacher .*grey takes 1-channel images; explanation-distillation distils"):
        load_teacher(str(tmp_path / "grey"))


@pytest.mark.parametrize("family", ["resnet", "densenet"])
def test_a_cnn_teacher_sees_the_student_s_pixels_at_its_own_size(family):
    """At the scale it was trained at (a DenseNet-121 could not even take 8 px images as they are)."""
    from tiny_models import TINY_CLASSIFIERS

    from bcos_zoo.training.explanation_distillation import teach

    teacher = TINY_CLASSIFIERS[family]().eval()
    teacher.config.image_size = 32
    taught = teach(teacher, torch.rand(2, 3, 8, 8))
    assert taught.dynamic_weights.shape == (2, 6, 32, 32)


def test_a_teacher_with_corrupt_weights_is_refused_naming_the_flag(tmp_path):
    from bcos_zoo.training.explanation_distillation import load_teacher

    tiny_vit(1).save_pretrained(tmp_path / "teacher")
    (tmp_path / "teacher" / "model.safetensors").write_bytes(b"\x01\x00")  # an upload cut short
    with pytest.raises(ValueError, match=r"--teacher .*teacher is not a B-cos image classifier that loads"):
        load_teacher(str(tmp_path / "teacher"))
