"""The B-cos CNN classes behave as transformers vision models: output flags, any image size, dtypes, losses,
gradient checkpointing, training-mode BatchNorm; and the B-cos convolution is the formula it claims to be."""

import pytest
import torch
import torch.nn.functional as F
from cnn_sources import single_thread  # noqa: F401
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from bcos_zoo import (
    BcosDenseNetConfig,
    BcosDenseNetForImageClassification,
    BcosResNetConfig,
    BcosResNetForImageClassification,
    BcosResNetModel,
    BcosVGGConfig,
    BcosVGGForImageClassification,
)
from bcos_zoo.modeling.bcos_cnn import BcosBatchNorm2d
from bcos_zoo.modeling.bcos_layers import NORM_EPS, BcosConv2d, explanation_mode


def resnet_config(**kwargs) -> BcosResNetConfig:
    args = dict(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], layer_type="bottleneck", num_labels=4)
    return BcosResNetConfig(**{**args, **kwargs})


def vgg_config(**kwargs) -> BcosVGGConfig:
    args = dict(hidden_sizes=[8, 16], depths=[1, 2], head_size=12, head_kernel_size=3, num_labels=4)
    return BcosVGGConfig(**{**args, **kwargs})


CLASSES = {
    "bcos_resnet": BcosResNetForImageClassification,
    "bcos_densenet": BcosDenseNetForImageClassification,
    "bcos_vgg": BcosVGGForImageClassification,
}


def densenet_config(**kwargs) -> BcosDenseNetConfig:
    return BcosDenseNetConfig(
        **{**dict(num_init_features=8, growth_rate=4, block_config=[2, 2], num_labels=4), **kwargs}
    )


def reference_bcos_conv(conv: BcosConv2d, x: torch.Tensor) -> torch.Tensor:
    """The definition, patch by patch: |cos(patch, w)|^(B-1) (w . patch), zero padding included, per group."""
    kh, kw = conv.kernel_size
    patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N, C k k, L)
    batch, _, length = patches.shape
    groups, out_channels = conv.groups, conv.out_channels
    patches = patches.view(batch, groups, -1, length)
    weight = conv.weight.reshape(groups, out_channels // groups, -1)
    linear = torch.einsum("gok,ngkl->ngol", weight, patches)
    patch_norm = (patches.square().sum(dim=2, keepdim=True) + NORM_EPS).sqrt()
    weight_norm = (weight.square().sum(dim=2) + NORM_EPS).sqrt()
    cosine = linear / (weight_norm[None, :, :, None] * patch_norm)
    out = cosine.abs().pow(conv.b - 1) * linear
    height = (x.shape[2] + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    return out.reshape(batch, out_channels, height, -1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=7, stride=2, padding=3),
        dict(kernel_size=1, stride=2),
        dict(kernel_size=3, padding=2, dilation=2),
        dict(kernel_size=3, padding=1, groups=4),
    ],
)
@pytest.mark.parametrize("b", [1.0, 1.5, 2.0])
def test_bcos_convolution_is_the_patchwise_formula(kwargs, b):
    torch.manual_seed(0)
    conv = BcosConv2d(8, 12, b=b, **kwargs).double()
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(2, 8, 11, 13, dtype=torch.float64)
    expected = reference_bcos_conv(conv, x)
    assert torch.allclose(conv(x), expected, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, rtol=1e-10, atol=1e-12)


def test_bcos_convolution_at_b1_is_the_convolution():
    conv = BcosConv2d(6, 5, 3, stride=2, padding=1, b=1.0, bias=True)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 6, 9, 9)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, 1))


@pytest.mark.parametrize("make", [resnet_config, densenet_config, vgg_config], ids=["resnet", "densenet", "vgg"])
def test_any_image_size_works(make):
    config = make()
    model = CLASSES[config.model_type](config).eval()
    for size in ((32, 32), (37, 53), (64, 40)):
        with torch.no_grad():
            assert model(pixel_values=torch.rand(2, 3, *size)).logits.shape == (2, 4)


def test_output_flags_follow_the_argument_or_else_the_config():
    model = BcosResNetForImageClassification(resnet_config()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixel_values=x)
        assert isinstance(plain, ImageClassifierOutputWithNoAttention) and plain.hidden_states is None
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        assert [tuple(h.shape) for h in hidden] == [(2, 8, 8, 8), (2, 8, 8, 8), (2, 16, 4, 4), (2, 16, 2, 2)]
        logits, states = model(pixel_values=x, output_hidden_states=True, return_dict=False)
        assert torch.equal(logits, plain.logits) and len(states) == 4
        model.config.output_hidden_states, model.config.return_dict = True, False
        assert len(model(pixel_values=x)) == 2


def test_backbone_outputs_are_like_transformers_resnet():
    model = BcosResNetModel(resnet_config()).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.rand(2, 3, 32, 32))
        as_tuple = model(pixel_values=torch.rand(2, 3, 32, 32), return_dict=False)
    assert isinstance(out, BaseModelOutputWithPoolingAndNoAttention)
    assert out.last_hidden_state.shape == (2, 16, 2, 2) and out.pooler_output.shape == (2, 16, 1, 1)
    assert len(as_tuple) == 2


def test_pixel_values_are_cast_to_the_model_dtype():
    model = BcosResNetForImageClassification(resnet_config()).double().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert model(pixel_values=x).logits.dtype == torch.float64
    assert model.explain(x).contributions.dtype == torch.float64


def test_bfloat16_model_matches_float32():
    """Without the logit bias the logits are the B-cos network's alone, so bfloat16 is compared where it computes."""
    torch.manual_seed(0)
    model = BcosDenseNetForImageClassification(densenet_config(logit_bias=0.0)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(pixel_values=x).logits
        logits = model.to(torch.bfloat16)(pixel_values=x).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).norm() <= 0.1 * reference.norm()


def test_losses():
    model = BcosResNetForImageClassification(resnet_config()).eval()
    x, labels = torch.rand(2, 3, 32, 32), torch.tensor([1, 3])
    logits = model(pixel_values=x).logits
    targets = torch.full((2, 4), 0.25).scatter(1, labels[:, None], 1.0)
    bce = model(pixel_values=x, labels=labels).loss
    assert torch.allclose(bce, F.binary_cross_entropy_with_logits(logits, targets))
    model.config.loss = "cross_entropy"
    assert torch.allclose(model(pixel_values=x, labels=labels).loss, F.cross_entropy(logits, labels))
    model.config.problem_type = "multi_label_classification"
    multi_hot = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    assert torch.allclose(
        model(pixel_values=x, labels=multi_hot).loss, F.binary_cross_entropy_with_logits(logits, multi_hot)
    )


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: BcosResNetForImageClassification(resnet_config()),
        lambda: BcosDenseNetForImageClassification(densenet_config()),
        lambda: BcosVGGForImageClassification(vgg_config()),  # its first stage takes the image itself
    ],
    ids=["resnet", "densenet", "vgg"],
)
def test_gradient_checkpointing_gives_the_same_gradients(make, use_reentrant):
    torch.manual_seed(0)
    model = make().double().train()
    x, labels = torch.rand(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(pixel_values=x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.load_state_dict(state)
    model.activation_checkpointing_enable({"use_reentrant": use_reentrant})
    assert any(module.gradient_checkpointing for module in model.modules() if hasattr(module, "gradient_checkpointing"))
    model(pixel_values=x, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.allclose(param.grad, plain[name], rtol=1e-8, atol=1e-12), name


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: BcosResNetForImageClassification(resnet_config()),
        lambda: BcosDenseNetForImageClassification(densenet_config()),
        lambda: BcosVGGForImageClassification(vgg_config()),
    ],
    ids=["resnet", "densenet", "vgg"],
)
def test_gradient_checkpointing_updates_the_running_statistics_once_per_step(make, use_reentrant):
    """The backward pass replays a checkpointed stage's forward; its BatchNorms must not count the batch again."""
    torch.manual_seed(0)
    model = make().train()
    x, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model(pixel_values=x, labels=labels).loss.backward()
    once = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    assert any(not torch.equal(v, start[k]) for k, v in once.items())
    model.load_state_dict(start)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model(pixel_values=x, labels=labels).loss.backward()
    for name, value in once.items():
        assert torch.allclose(model.state_dict()[name], value, rtol=1e-6), name


@pytest.mark.parametrize("centered", [True, False], ids=["centered", "uncentered"])
def test_batchnorm_counts_each_training_batch_as_nn_batchnorm_does(centered):
    norm = BcosBatchNorm2d(3, centered=centered).train()
    reference = torch.nn.BatchNorm2d(3).train()
    for _ in range(2):
        x = torch.randn(4, 3, 5, 5)
        norm(x), reference(x)
    with explanation_mode(norm):
        norm(torch.randn(4, 3, 5, 5))
    norm.eval()(torch.randn(4, 3, 5, 5))
    assert int(norm.num_batches_tracked) == int(reference.num_batches_tracked) + 1 == 3


def test_uncentered_batchnorm_tracks_the_batch_variance():
    norm = BcosBatchNorm2d(3, centered=False, momentum=0.5).train()
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 1.0
    out = norm(x)
    var = x.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(out, x / (var + norm.eps).sqrt().view(1, 3, 1, 1), atol=1e-6)
    assert torch.allclose(norm.running_var, 0.5 + 0.5 * x.var(dim=(0, 2, 3), unbiased=True), atol=1e-6)
    assert norm.running_mean is None and norm.bias is None


def test_centered_batchnorm_is_torch_batchnorm():
    ours, theirs = BcosBatchNorm2d(3), torch.nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    assert torch.allclose(ours.train()(x), theirs.train()(x), atol=1e-6)
    assert torch.allclose(ours.running_mean, theirs.running_mean) and torch.allclose(
        ours.running_var, theirs.running_var
    )
    assert torch.allclose(ours.eval()(x), theirs.eval()(x), atol=1e-6)


def test_batchnorm_without_momentum_keeps_the_cumulative_average_as_torch_does():
    ours, theirs = BcosBatchNorm2d(3, momentum=None).train(), torch.nn.BatchNorm2d(3, momentum=None).train()
    for scale in (1.0, 2.0, 3.0):
        x = torch.randn(4, 3, 5, 5) * scale + scale
        ours(x), theirs(x)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3


def test_batchnorm_refuses_to_train_on_one_value_per_channel_as_torch_does():
    """A batch of one 1 x 1 feature map has no variance: torch refuses it; dividing by sqrt(eps) would not."""
    norm = BcosBatchNorm2d(3, centered=False).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm(torch.randn(1, 3, 1, 1))
    assert torch.equal(norm.running_var, torch.ones(3)) and int(norm.num_batches_tracked) == 0
    assert norm.eval()(torch.randn(1, 3, 1, 1)).shape == (1, 3, 1, 1)  # evaluation takes it


def test_saved_model_reloads_identically(tmp_path):
    model = BcosDenseNetForImageClassification(densenet_config()).eval()
    model.save_pretrained(tmp_path)
    again = BcosDenseNetForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, again(pixel_values=x).logits)


def test_inference_path_follows_weight_updates():
    """Inference without autograd reads the weights as they are now: nothing derived from them is served stale."""
    torch.manual_seed(0)
    model = BcosResNetForImageClassification(resnet_config(use_bias=True)).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        model(pixel_values=x)
        for module in model.modules():
            if isinstance(module, BcosBatchNorm2d):
                module.running_var.mul_(2.0)
                module.bias.add_(0.1)
            elif isinstance(module, BcosConv2d):
                module.weight.mul_(1.5)
        fast = model(pixel_values=x).logits
    reference = model(pixel_values=x).logits.detach()  # autograd path, no cache
    assert torch.allclose(fast, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_bias", [False, True])
def test_densenet_inference_without_autograd_equals_the_recorded_forward(use_bias):
    torch.manual_seed(0)
    model = BcosDenseNetForImageClassification(densenet_config(use_bias=use_bias)).eval().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    recorded = model(pixel_values=x.requires_grad_()).logits
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, recorded.detach(), rtol=1e-12, atol=1e-12)
