"""The B-cos DenseNet as a transformers model.

Every convolution, the classifier included, is a B-cos convolution; BatchNorm, ReLU, pooling and the concatenations
are (dynamic-)linear, so in :func:`explanation_mode` the model is a dynamic linear map of the encoded image and
:meth:`BcosDenseNetForImageClassification.explain` reads the map off with one backward pass.
"""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .bcos_cnn import BcosBatchNorm2d, BcosCNNPreTrainedModel, BcosCNNStage, BcosConvNormAct, stem_pool
from .bcos_cnn_classifier import BcosCNNForImageClassification, BcosCNNModel
from .bcos_layers import BcosConv2d
from .configuration_bcos_densenet import BcosDenseNetConfig


def bcos_conv(in_channels: int, out_channels: int, kernel_size: int, config: BcosDenseNetConfig) -> BcosConv2d:
    """A bias-free B-cos convolution that keeps the resolution (zero padding ``kernel_size // 2``)."""
    return BcosConv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        b=config.b,
        normalize_weight=config.normalize_weights,
    )


def activation(config: BcosDenseNetConfig) -> nn.Module:
    """ReLU, or nothing with ``hidden_act=None`` (the authors' B-cos v2 DenseNets)."""
    return nn.ReLU() if config.hidden_act == "relu" else nn.Identity()


class BcosDenseNetEmbeddings(nn.Module):
    """The stem: a 7x7 stride-2 B-cos convolution of the ``[x, 1 - x]`` image, BatchNorm, ReLU, 3x3 pooling."""

    def __init__(self, config: BcosDenseNetConfig):
        super().__init__()
        self.stem = BcosConvNormAct(2 * config.num_channels, config.num_init_features, 7, config, stride=2)
        self.pooler = stem_pool(config.stem_pool)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.stem(encoded))


class BcosDenseNetLayer(nn.Module):
    """Pre-activation bottleneck: BN, ReLU, 1x1 B-cos conv, BN, ReLU, 3x3 B-cos conv; ``growth_rate`` new channels."""

    def __init__(self, in_channels: int, config: BcosDenseNetConfig):
        super().__init__()
        self.act = activation(config)
        width = config.bn_size * config.growth_rate
        self.norm1 = BcosBatchNorm2d(in_channels, eps=config.batch_norm_eps, centered=config.use_bias)
        self.conv1 = bcos_conv(in_channels, width, 1, config)
        self.norm2 = BcosBatchNorm2d(width, eps=config.batch_norm_eps, centered=config.use_bias)
        self.conv2 = bcos_conv(width, config.growth_rate, 3, config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm2(self.conv1(self.act(self.norm1(features))))))


class BcosDenseNetTransition(nn.Module):
    """BN, ReLU, 1x1 B-cos convolution to half the channels, 2x2 average pooling."""

    def __init__(self, in_channels: int, config: BcosDenseNetConfig):
        super().__init__()
        self.act = activation(config)
        self.norm = BcosBatchNorm2d(in_channels, eps=config.batch_norm_eps, centered=config.use_bias)
        self.conv = bcos_conv(in_channels, in_channels // 2, 1, config)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.act(self.norm(features))))


class BcosDenseNetStage(BcosCNNStage):
    """A dense block (each layer sees the concatenation of all earlier outputs) and, except last, a transition."""

    def __init__(self, config: BcosDenseNetConfig, index: int):
        super().__init__()
        in_channels, out_channels = config.stage_channels[index]
        count = config.block_config[index]
        self.layers = nn.ModuleList(
            BcosDenseNetLayer(in_channels + i * config.growth_rate, config) for i in range(count)
        )
        last = index == len(config.block_config) - 1
        self.transition = None if last else BcosDenseNetTransition(out_channels, config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            features = torch.cat([features, layer(features)], dim=1)
        return features if self.transition is None else self.transition(features)


class BcosDenseNetPreTrainedModel(BcosCNNPreTrainedModel):
    config_class = BcosDenseNetConfig
    base_model_prefix = "bcos_densenet"
    _no_split_modules = ["BcosDenseNetLayer", "BcosDenseNetTransition"]


class BcosDenseNetModel(BcosCNNModel, BcosDenseNetPreTrainedModel):
    """The B-cos DenseNet backbone: ``last_hidden_state`` (N, C, h, w), the final BN + ReLU features, and
    ``pooler_output`` (N, C, 1, 1), their mean. ``hidden_states``: the stem output, then each stage's output (the
    last one being ``last_hidden_state``)."""

    def __init__(self, config: BcosDenseNetConfig):
        super().__init__(config)
        self.embedder = BcosDenseNetEmbeddings(config)
        self.stages = nn.ModuleList(BcosDenseNetStage(config, i) for i in range(len(config.block_config)))
        self.norm = BcosBatchNorm2d(config.num_features, eps=config.batch_norm_eps, centered=config.use_bias)
        self.act = activation(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward_encoded(
        self, encoded: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone on an already ``[x, 1 - x]``-encoded image (what explanations differentiate)."""
        features = self.embedder(encoded)
        hidden_states = (features,) if output_hidden_states else None
        for i, stage in enumerate(self.stages):
            features = stage(features)
            if i == len(self.stages) - 1:
                features = self.act(self.norm(features))
            if output_hidden_states:
                hidden_states += (features,)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=features, pooler_output=self.pooler(features), hidden_states=hidden_states
        )


class BcosDenseNetForImageClassification(BcosCNNForImageClassification, BcosDenseNetPreTrainedModel):
    """A B-cos DenseNet image classifier that explains its own decisions.

    It takes images in [0, 1] (the saved image processor resizes and rescales but does not normalise), returns an
    ``ImageClassifierOutputWithNoAttention``, and :meth:`explain` returns exact per-pixel contributions to any logit.
    """

    def __init__(self, config: BcosDenseNetConfig):
        super().__init__(config, BcosDenseNetModel(config), config.num_features)


BcosDenseNetConfig.register_for_auto_class()
BcosDenseNetModel.register_for_auto_class("AutoModel")
BcosDenseNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
