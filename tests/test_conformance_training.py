"""Training the B-cos models the transformers way: losses by ``problem_type``, gradient checkpointing (same
gradients, and through the Trainer), initialisation of every weight, and differentiable explanations.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_conformance_outputs import build, call, images
from tiny_models import TINY_CLASSIFIERS
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments


def test_multi_label_problem_type_takes_multi_hot_labels_with_bce():
    model = build("classifier", problem_type="multi_label_classification")
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    out = model(pixel_values=images(), labels=labels)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels.float()))
    with pytest.raises(ValueError, match="multi-hot"):
        model(pixel_values=images(), labels=torch.tensor([0, 3]))


def test_single_label_problem_type_is_cross_entropy():
    model = build("classifier", problem_type="single_label_classification")
    labels = torch.tensor([2, 1])
    out = model(pixel_values=images(), labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    model = build(kind).train()
    x = images()
    assert model.supports_gradient_checkpointing

    def gradients():
        model.zero_grad()
        out = call(kind, model, x, **({"labels": torch.tensor([0, 3])} if kind == "classifier" else {}))
        (out.loss if kind == "classifier" else out.image_embeds.square().sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vision = model.bcos_vit if kind == "classifier" else model.vision_model
    assert all(layer.gradient_checkpointing for layer in vision.layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_the_trainer_trains_with_gradient_checkpointing(tmp_path):
    model = build("classifier")
    data = [{"pixel_values": torch.rand(3, 16, 16), "labels": i % 4} for i in range(8)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        activation_checkpointing=True,  # transformers 5 name of gradient_checkpointing
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    before = model.classifier.weight.detach().clone()
    trainer = Trainer(model=model, args=arguments, train_dataset=data)
    # the loss is a batch mean: the Trainer itself scales it for gradient accumulation
    assert trainer.model_accepts_loss_kwargs is False
    trainer.train()
    assert model.bcos_vit.layers[0].gradient_checkpointing
    assert not torch.equal(before, model.classifier.weight.detach())


def test_every_weight_is_initialised_when_a_checkpoint_lacks_it(tmp_path):
    model = build("tower")
    model.save_pretrained(tmp_path)
    # a checkpoint without any weight: everything comes from _init_weights
    from safetensors.torch import save_file

    save_file({}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    loaded = type(model).from_pretrained(tmp_path)
    std = loaded.config.initializer_range
    for name, parameter in loaded.named_parameters():
        assert torch.isfinite(parameter).all(), name
        if name.endswith("bias"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        elif "layernorm" in name:
            assert torch.equal(parameter, torch.ones_like(parameter)), name
        else:
            assert abs(parameter.std().item() - std) < 0.5 * std and parameter.abs().max() < 6 * std, name


def test_a_classifier_in_bfloat16_trains_on_float32_images(tmp_path):
    build("classifier").save_pretrained(tmp_path)
    model = AutoModelForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).train()
    loss = model(pixel_values=images(), labels=torch.tensor([1, 2])).loss
    loss.backward()
    assert loss.dtype == torch.bfloat16 and model.classifier.weight.grad is not None


@pytest.mark.parametrize("kind", ["classifier", "tower"])
def test_a_loss_on_a_differentiable_explanation_reaches_the_weights(kind):
    model = build(kind).train()
    x = images()
    kwargs = {"text_embeds": torch.randn(3, 16)} if kind == "tower" else {}
    explanation = model.explain(x, create_graph=True, **kwargs)
    assert explanation.contributions.requires_grad and explanation.dynamic_weights.requires_grad
    # the energy in the left half of each image: a model-guidance style localisation loss
    positive = explanation.contributions.clamp_min(0)
    loss = 1 - positive[..., :8].sum() / positive.sum()
    loss.backward()
    vision = model.bcos_vit if kind == "classifier" else model.vision_model
    for parameter in (vision.layers[0].mlp.fc1.weight, vision.embeddings.patch_embeddings.projection.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    plain = model.explain(x, **kwargs)
    assert not plain.contributions.requires_grad
    assert torch.allclose(plain.contributions, explanation.contributions.detach(), atol=1e-6)


@pytest.mark.parametrize("family", sorted(TINY_CLASSIFIERS))
def test_a_loss_on_an_explanation_trains_with_activation_checkpointing_as_without(family):
    """A checkpointed layer is recomputed in the backward pass of the loss, after explanation mode has ended; the
    recomputation must still detach what the explanation's forward detached."""
    torch.manual_seed(0)
    model = TINY_CLASSIFIERS[family]().train()
    x = torch.rand(2, 3, 32, 32)
    prompts = {"text_embeds": torch.randn(3, model.config.projection_dim)} if family == "clip" else {}

    plain = explanation_loss_gradients(model, x, prompts)
    model.activation_checkpointing_enable()
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    checkpointed = explanation_loss_gradients(model, x, prompts)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def explanation_loss_gradients(model, x: torch.Tensor, prompts: dict) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout, if any
    explanation = model.explain(x, create_graph=True, **prompts)
    (explanation.contributions.square().sum() + explanation.logits.sum()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["vit", "resnet", "clip"])
def test_a_copy_of_a_checkpointed_model_recomputes_its_own_layers(family):
    """The recomputation's context is bound to the model; a deep copy's must be bound to the copy (else it
    switches the original's layers and the copy's backward fails on mismatched recomputed tensors)."""
    torch.manual_seed(0)
    model = TINY_CLASSIFIERS[family]().train()
    x = torch.rand(2, 3, 32, 32)
    prompts = {"text_embeds": torch.randn(3, model.config.projection_dim)} if family == "clip" else {}
    model.activation_checkpointing_enable()
    expected = explanation_loss_gradients(model, x, prompts)
    copied = explanation_loss_gradients(copy.deepcopy(model), x, prompts)
    assert expected.keys() == copied.keys() and expected
    for name in expected:
        torch.testing.assert_close(copied[name], expected[name], msg=name)
