"""``class_token_only=True``, the ViT's explicit shortcut for a class-token head: the last block computed for the
class token alone gives the full forward's logits, loss and gradients, and refuses a model that pools otherwise."""

import pytest
import torch

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification, BcosViTModel
from bcos_zoo.modeling.fast_paths import set_fast_paths


SHAPE = dict(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=3)


def tiny(**overrides) -> BcosViTForImageClassification:
    torch.manual_seed(0)
    return BcosViTForImageClassification(BcosViTConfig(**{**SHAPE, "intermediate_size": 48, **overrides}, num_labels=5))


def images(size: int = 32) -> torch.Tensor:
    return torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "reference"])
def test_the_shortcut_gives_the_full_forward_s_logits_and_loss(fast):
    model, x, labels = tiny().double().eval(), images(), torch.tensor([0, 3, 4])
    with set_fast_paths(fast), torch.no_grad():
        full = model(pixel_values=x, labels=labels)
        short = model(pixel_values=x, labels=labels, class_token_only=True)
    assert full.logits.std() > 1e-3  # logits that differ between classes, so the comparison sees the network
    torch.testing.assert_close(short.logits, full.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(short.loss, full.loss, rtol=1e-12, atol=1e-12)


def test_the_shortcut_gives_the_same_gradients_in_training():
    x, labels = images().requires_grad_(True), torch.tensor([1, 2, 0])
    gradients = []
    for class_token_only in (False, True):
        model = tiny().double().train()
        model(pixel_values=x, labels=labels, class_token_only=class_token_only).loss.backward()
        gradients.append([x.grad.clone(), *(p.grad for p in model.parameters() if p.grad is not None)])
        x.grad = None
    assert len(gradients[0]) == len(gradients[1]) > 10
    for full, short in zip(*gradients):
        torch.testing.assert_close(short, full, rtol=1e-10, atol=1e-12)


def test_the_shortcut_works_at_another_image_size_with_interpolated_positions():
    model, x = tiny().double().eval(), images(48)
    with torch.no_grad():
        full = model(pixel_values=x, interpolate_pos_encoding=True).logits
        short = model(pixel_values=x, interpolate_pos_encoding=True, class_token_only=True).logits
    torch.testing.assert_close(short, full, rtol=1e-12, atol=1e-12)


def test_the_backbone_s_last_hidden_state_then_holds_the_class_token_alone():
    torch.manual_seed(0)
    backbone = BcosViTModel(BcosViTConfig(**SHAPE, intermediate_size=48)).double().eval()
    with torch.no_grad():
        full, short = backbone(images()), backbone(images(), class_token_only=True)
    assert full.last_hidden_state.shape[1] == 17 and short.last_hidden_state.shape[1] == 1
    torch.testing.assert_close(short.last_hidden_state[:, 0], full.last_hidden_state[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(short.pooler_output, full.pooler_output, rtol=1e-12, atol=1e-12)


def test_a_model_that_pools_by_averaging_refuses_the_shortcut():
    model = tiny(pooling="mean").eval()
    with pytest.raises(ValueError, match="class-token pooling"):
        model(pixel_values=images().float(), class_token_only=True)
