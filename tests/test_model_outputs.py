"""The classifier's outputs and losses follow transformers' conventions and the B-cos papers."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor

from bcos_zoo import BcosViTConfig, BcosViTForImageClassification, BcosViTModel


def tiny_config(**overrides) -> BcosViTConfig:
    fields = dict(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
    )
    return BcosViTConfig(**{**fields, **overrides})


def test_bce_loss_uses_off_target_labels_of_one_over_c():
    torch.manual_seed(0)
    model = BcosViTForImageClassification(tiny_config())
    x, labels = torch.rand(3, 3, 16, 16), torch.tensor([0, 3, 1])
    out = model(pixel_values=x, labels=labels)
    targets = F.one_hot(labels, 4).float().clamp_min(1 / 4)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    soft = model(pixel_values=x, labels=F.one_hot(labels, 4).float())
    assert torch.allclose(soft.loss, out.loss)


def test_one_output_without_a_problem_type_is_regression_as_in_transformers():
    """With one output the papers' BCE would make every target 1 (off-target labels ``1/C``), so the loss is
    transformers' default for one label: mean squared error."""
    torch.manual_seed(0)
    model = BcosViTForImageClassification(tiny_config(num_labels=1))
    x, labels = torch.rand(3, 3, 16, 16), torch.tensor([0.0, 1.0, 0.5])
    out = model(pixel_values=x, labels=labels)
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), labels))


def test_cross_entropy_is_selectable():
    torch.manual_seed(0)
    model = BcosViTForImageClassification(tiny_config(loss="cross_entropy"))
    x, labels = torch.rand(2, 3, 16, 16), torch.tensor([2, 1])
    out = model(pixel_values=x, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))


def test_default_logit_bias_is_minus_log_c_minus_1():
    assert tiny_config(num_labels=10).resolved_logit_bias == pytest.approx(-math.log(9))
    assert tiny_config(logit_bias=0.5).resolved_logit_bias == 0.5


def test_hidden_states_are_returned_on_request():
    model = BcosViTForImageClassification(tiny_config())
    out = model(pixel_values=torch.rand(1, 3, 16, 16), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 5, 32)


def test_backbone_pools_the_class_token_or_the_mean_of_patches():
    """``pooler_output`` is the final LayerNorm of the class token, or of the mean of the patch tokens."""
    x = torch.rand(2, 3, 16, 16)
    with_token, without = BcosViTModel(tiny_config()), BcosViTModel(tiny_config(use_class_token=False, pooling="mean"))
    cls, mean = with_token(pixel_values=x), without(pixel_values=x)
    assert cls.last_hidden_state.shape == (2, 5, 32) and mean.last_hidden_state.shape == (2, 4, 32)
    assert cls.pooler_output.shape == mean.pooler_output.shape == (2, 32)
    torch.testing.assert_close(cls.pooler_output, with_token.layernorm(cls.last_hidden_state[:, 0]))
    torch.testing.assert_close(mean.pooler_output, without.layernorm(mean.last_hidden_state.mean(dim=1)))


def test_training_step_reduces_the_loss():
    torch.manual_seed(0)
    model = BcosViTForImageClassification(tiny_config())
    x, labels = torch.rand(8, 3, 16, 16), torch.randint(0, 4, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = model(pixel_values=x, labels=labels).loss
    for _ in range(20):
        loss = model(pixel_values=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_bfloat16_forward_and_explanation_match_float32():
    """Without the logit bias the logits are the B-cos network's alone, so bfloat16 is compared where it computes."""
    torch.manual_seed(0)
    model = BcosViTForImageClassification(tiny_config(logit_bias=0.0)).eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = model(pixel_values=x.float()).logits
    reference_explanation = model.explain(x.float())
    model = model.to(torch.bfloat16)
    explanation = model.explain(x, target=reference_explanation.target)
    assert explanation.contributions.dtype == torch.bfloat16 and explanation.rgba.shape == (2, 16, 16, 4)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    assert (logits.float() - reference).norm() <= 0.1 * reference.norm()
    # each image's map points the way the float32 one does (bfloat16 may rescale it by some per cent)
    maps = explanation.contributions.float().flatten(1), reference_explanation.contributions.flatten(1)
    assert F.cosine_similarity(*maps).min() > 0.999


def test_the_saved_processor_resizes_as_the_config_says(tmp_path):
    """Without crop_pct the whole image is resized to the model's size (transformers' ViT); with it, the shortest edge
    to size / crop_pct, then the centre is cropped (timm's and DeiT's evaluation), with the config's filter."""
    image = Image.fromarray((torch.rand(40, 60, 3) * 255).byte().numpy())
    squash = BcosViTForImageClassification(tiny_config(resample=3)).default_image_processor()
    expected = torch.from_numpy(np.asarray(image.resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255)
    seen = squash(image, return_tensors="pt").pixel_values[0].permute(1, 2, 0)
    torch.testing.assert_close(seen, expected, rtol=0, atol=1.01 / 255)  # PIL's rounding: one level at most
    model = BcosViTForImageClassification(tiny_config(crop_pct=0.8))
    model.save_pretrained(tmp_path)
    crop = AutoImageProcessor.from_pretrained(tmp_path)
    resized = image.resize((30, 20), Image.BILINEAR)  # shortest edge 16 / 0.8 = 20
    expected = torch.from_numpy(np.asarray(resized.crop((7, 2, 23, 18)), dtype=np.float32) / 255)
    seen = crop(image, return_tensors="pt").pixel_values[0].permute(1, 2, 0)
    torch.testing.assert_close(seen, expected, rtol=0, atol=1.01 / 255)


@pytest.mark.parametrize("size", [24, 384])  # transformers' ConvNeXt processor skips its crop from 384 px on
def test_a_cropping_processor_keeps_the_aspect_ratio_and_crops_the_centre_at_every_size(size):
    image = Image.fromarray((torch.rand(size + 8, 2 * size + 16, 3) * 255).byte().numpy())
    processor = BcosViTForImageClassification(tiny_config(image_size=size, crop_pct=1.0)).default_image_processor()
    resized = image.resize((2 * size, size), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(resized.crop((size // 2, 0, size // 2 + size, size)), dtype=np.float32))
    seen = processor(image, return_tensors="pt").pixel_values[0].permute(1, 2, 0)
    torch.testing.assert_close(seen, expected / 255, rtol=0, atol=1.01 / 255)
