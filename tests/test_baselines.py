"""Post-hoc baselines on a standard ViT and a standard ResNet source: [0, 1] inputs, the pixels of the model's B-cos
form, the methods' definitions, (N, H, W) pixel maps, attention rollout refused for a CNN."""

import json

import pytest
import torch
import torch.nn.functional as F
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, normalize, save_hf_source
from transformers import DeiTImageProcessor

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.evaluation.baselines import POSTHOC_METHODS, load_standard_classifier, posthoc_attribution
from bcos_zoo.families import FAMILIES


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


def test_a_source_that_is_not_a_vit_or_resnet_classifier_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="not a transformers ViT or ResNet image classifier"):
        load_standard_classifier(tmp_path)


# enough to tell the images apart, and quick
FEW_STEPS = {
    "integrated_gradients": {"steps": 8},
    "occlusion": {"window": 8, "stride": 8},
    "lime": {"segment": 8, "samples": 16},
    "rise": {"masks": 16},
}


def assert_each_map_is_that_of_its_image_alone(attribute, images, attributions):
    """A batch's maps are the maps each image gets on its own, for its own target: nothing mixes across the batch."""
    for index in range(len(images)):
        alone = attribute(images[index : index + 1], TARGETS[index : index + 1])
        torch.testing.assert_close(attributions[index : index + 1], alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", POSTHOC_METHODS)
def test_every_method_returns_one_pixel_map_per_image(classifier, images, method):
    attribute = posthoc_attribution(classifier, method, **FEW_STEPS.get(method, {}))
    attributions = attribute(images, TARGETS)
    assert attributions.shape == (3, 32, 32) and not attributions.requires_grad
    assert bool((attributions != 0).any())
    assert_each_map_is_that_of_its_image_alone(attribute, images, attributions)


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
        posthoc_attribution(classifier, "smoothgrad")


# A standard ResNet: its folder as the standard-classification task saves one (a shortest-edge processor), with a
# crop and a normalisation of its own so that both are really read.
RESNET_MEAN, RESNET_STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory):
    from cnn_sources import hf_resnet
    from transformers import ConvNextImageProcessor

    folder = tmp_path_factory.mktemp("resnet")
    hf_resnet("basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]).save_pretrained(folder)
    ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.8, image_mean=list(RESNET_MEAN), image_std=list(RESNET_STD)
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def resnet(resnet_folder):
    return load_standard_classifier(resnet_folder)


RESNET_METHODS = ("input_x_gradient", "integrated_gradients", "gradcam")


def test_a_resnet_classifier_takes_unit_range_images_and_normalises_them_as_its_processor_says(
    resnet_folder, resnet, images
):
    from transformers import ResNetForImageClassification

    source = ResNetForImageClassification.from_pretrained(resnet_folder).eval()
    with torch.no_grad():
        expected = source(pixel_values=normalize(images, RESNET_MEAN, RESNET_STD)).logits
    torch.testing.assert_close(resnet(images), expected)
    assert resnet.methods == FAMILIES["resnet"].posthoc_methods and "attention_rollout" not in resnet.methods


def test_a_resnet_classifier_sees_the_pixels_of_its_b_cos_form(resnet_folder, resnet):
    """Same processor settings, hence the same pixels from one image, as the B-cosified model's own processor."""
    from PIL import Image

    from bcos_zoo import BcosResNetForImageClassification
    from bcos_zoo.data.preprocessing import model_transform

    bcos = BcosResNetForImageClassification.from_pretrained_standard(str(resnet_folder))
    assert resnet.default_image_processor().to_dict() == bcos.default_image_processor().to_dict()
    image = Image.fromarray(
        (torch.rand(50, 44, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy(), "RGB"
    )
    pixels = model_transform(resnet)(image)
    assert pixels.shape == (3, 32, 32)
    torch.testing.assert_close(pixels, model_transform(bcos)(image))


@pytest.mark.parametrize("method", RESNET_METHODS)
def test_every_resnet_method_returns_one_pixel_map_per_image(resnet, images, method):
    attribute = posthoc_attribution(resnet, method, **FEW_STEPS.get(method, {}))
    attributions = attribute(images, TARGETS)
    assert attributions.shape == (3, 32, 32) and not attributions.requires_grad
    assert bool((attributions != 0).any())
    assert_each_map_is_that_of_its_image_alone(attribute, images, attributions)


def test_resnet_input_x_gradient_is_the_pixels_times_the_gradient_of_the_target_logit(resnet, images):
    pixels = images.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(target_logits(resnet, pixels).sum(), pixels)
    expected = (images * gradient).sum(dim=1)
    torch.testing.assert_close(posthoc_attribution(resnet, "input_x_gradient")(images, TARGETS), expected)


def test_resnet_integrated_gradients_add_up_to_the_target_logit_gained_over_a_black_image(resnet, images):
    """The kinks of ReLU and max-pooling make the path integral converge slowly: 256 steps, 3e-3 (the gains are
    -0.09 to 0.03 logits; a map without the input factor or of another target misses by far more)."""
    attributions = posthoc_attribution(resnet, "integrated_gradients", steps=256)(images, TARGETS)
    with torch.no_grad():
        gain = target_logits(resnet, images) - target_logits(resnet, torch.zeros_like(images))
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), gain, atol=3e-3, rtol=0)


def test_resnet_gradcam_is_the_relu_of_the_last_stage_weighted_by_its_mean_gradient(resnet, images):
    """GradCAM's definition on the last stage's output (2x2 at 32 px: stride 4 stem, one downsampling stage)."""
    saved = {}
    stage = resnet.model.resnet.encoder.stages[-1]
    handle = stage.register_forward_hook(lambda module, inputs, output: saved.update(features=output))
    try:
        logits = target_logits(resnet, images)
    finally:
        handle.remove()
    features = saved["features"]
    (gradient,) = torch.autograd.grad(logits.sum(), features)
    channel_weights = gradient.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    cam = F.relu((channel_weights * features).sum(dim=1, keepdim=True))
    assert cam.shape == (3, 1, 4, 4)
    expected = F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(posthoc_attribution(resnet, "gradcam")(images, TARGETS), expected.detach())


def test_resnet_gradcam_depends_on_the_target(resnet, images):
    gradcam = posthoc_attribution(resnet, "gradcam")
    assert not torch.allclose(gradcam(images, TARGETS), gradcam(images, torch.tensor([2, 2, 2])))


def test_attention_rollout_of_a_resnet_is_refused_naming_the_methods_that_apply(resnet, images):
    with pytest.raises(ValueError, match="needs attention matrices.*input_x_gradient, integrated_gradients, gradcam"):
        posthoc_attribution(resnet, "attention_rollout")
    from bcos_zoo.evaluation.baselines import attention_rollout

    with pytest.raises(ValueError, match="a CNN has none"):
        attention_rollout(resnet, images, TARGETS)


def test_an_in_memory_model_of_another_kind_is_rejected():
    with pytest.raises(ValueError, match="they explain transformers ViT or ResNet image classifiers"):
        load_standard_classifier(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "processor",
    [
        dict(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True, resample=3),
        dict(size={"height": 32, "width": 32}, resample=2),
    ],
    ids=["deit-like", "vit-like"],
)
def test_a_vit_source_is_explained_on_the_pixels_its_bcos_form_sees(processor, tmp_path):
    """The source and its B-cos model are compared on the same pixels: the baseline's processor is the one the
    B-cos model saves, the source's resize, crop and filter included."""
    hf_vit().save_pretrained(tmp_path)
    DeiTImageProcessor(**processor, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(
        tmp_path
    )
    bcos = BcosViTForImageClassification.from_pretrained_standard(tmp_path).default_image_processor()
    assert load_standard_classifier(tmp_path).default_image_processor().to_dict() == bcos.to_dict()
