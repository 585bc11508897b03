"""Post-hoc baselines on a standard ViT source: [0, 1] inputs, the methods' definitions, (N, H, W) pixel maps."""

import json

import pytest
import torch
import torch.nn.functional as F
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, normalize, save_hf_source

from bcos_zoo.evaluation.baselines import POSTHOC_METHODS, load_standard_classifier, posthoc_attribution


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    save_hf_source(hf_vit(image=32, patch=8, labels=5), folder, IMAGENET_MEAN, IMAGENET_STD)
    return folder


@pytest.fixture(scope="module")
def classifier(source_folder):
    return load_standard_classifier(source_folder)


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


TARGETS = torch.tensor([0, 3, 1])


def target_logits(classifier, images, targets=TARGETS):
    return classifier(images).gather(1, targets[:, None]).squeeze(1)


def test_the_classifier_takes_unit_range_images_and_normalises_them_as_the_source_processor_says(
    source_folder, classifier, images
):
    source = hf_vit(image=32, patch=8, labels=5)
    expected = source(pixel_values=normalize(images, IMAGENET_MEAN, IMAGENET_STD)).logits
    torch.testing.assert_close(classifier(images), expected)


def test_a_source_processor_that_does_not_normalise_leaves_the_pixels_as_they_are(tmp_path, images):
    source = hf_vit(image=32, patch=8, labels=5)
    save_hf_source(source, tmp_path, IMAGENET_MEAN, IMAGENET_STD)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**config, "do_normalize": False}))
    torch.testing.assert_close(load_standard_classifier(tmp_path)(images), source(pixel_values=images).logits)


def test_a_source_that_is_not_a_vit_classifier_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="not a transformers ViT image classifier"):
        load_standard_classifier(tmp_path)


@pytest.mark.parametrize("method", POSTHOC_METHODS)
def test_every_method_returns_one_pixel_map_per_image(classifier, images, method):
    attributions = posthoc_attribution(classifier, method)(images, TARGETS)
    assert attributions.shape == (3, 32, 32)
    assert not attributions.requires_grad and bool(attributions.isfinite().all())
    assert bool((attributions != 0).any())


def test_input_x_gradient_is_the_pixels_times_the_gradient_of_the_target_logit(classifier, images):
    pixels = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(target_logits(classifier, pixels).sum(), pixels)
    expected = (images * gradient).sum(dim=1)
    torch.testing.assert_close(posthoc_attribution(classifier, "input_x_gradient")(images, TARGETS), expected)


def test_integrated_gradients_add_up_to_the_target_logit_gained_over_a_black_image(classifier, images):
    attributions = posthoc_attribution(classifier, "integrated_gradients", steps=64)(images, TARGETS)
    with torch.no_grad():
        gain = target_logits(classifier, images) - target_logits(classifier, torch.zeros_like(images))
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), gain, atol=2e-3, rtol=1e-2)


def test_gradcam_weighs_the_last_blocks_input_patch_tokens_by_their_mean_gradient(classifier, images):
    """GradCAM's definition on the tokens after the last block's first LayerNorm, as a 4x4 map, upsampled."""
    saved = {}
    norm = classifier.model.vit.layers[-1].layernorm_before
    handle = norm.register_forward_hook(lambda module, inputs, output: saved.update(tokens=output))
    try:
        logits = target_logits(classifier, images)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(logits.sum(), saved["tokens"])
    patches, gradient = saved["tokens"][:, 1:], gradient[:, 1:]
    channel_weights = gradient.mean(dim=1, keepdim=True)  # (N, 1, D): mean over the 16 patches
    cam = F.relu((channel_weights * patches).sum(dim=2)).reshape(3, 1, 4, 4)
    expected = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(posthoc_attribution(classifier, "gradcam")(images, TARGETS), expected.detach())


def test_gradcam_depends_on_the_target(classifier, images):
    gradcam = posthoc_attribution(classifier, "gradcam")
    assert not torch.allclose(gradcam(images, TARGETS), gradcam(images, torch.tensor([2, 2, 2])))


def test_attention_rollout_is_the_same_for_every_target_and_leaves_the_attention_kernel_alone(classifier, images):
    kernel = classifier.model.config._attn_implementation
    rollout = posthoc_attribution(classifier, "attention_rollout")
    torch.testing.assert_close(rollout(images, TARGETS), rollout(images, torch.tensor([4, 4, 4])))
    assert classifier.model.config._attn_implementation == kernel


def test_attention_rollout_of_one_layer_is_the_class_tokens_head_averaged_attention_plus_residual(images):
    classifier = load_standard_classifier(hf_vit(layers=1, image=32, patch=8, labels=5))
    classifier.model.set_attn_implementation("eager")
    with torch.no_grad():
        attention = classifier.model(pixel_values=(images - 0.5) / 0.5, output_attentions=True).attentions[0]
    patch_share = (attention.mean(dim=1)[:, 0, 1:] / 2).reshape(3, 1, 4, 4)  # (A + I) / 2, class-token row
    expected = F.interpolate(patch_share, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(posthoc_attribution(classifier, "attention_rollout")(images, TARGETS), expected)


def test_an_unknown_method_lists_the_available_ones(classifier):
    with pytest.raises(ValueError, match="integrated_gradients"):
        posthoc_attribution(classifier, "lime")
