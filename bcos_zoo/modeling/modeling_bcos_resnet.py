"""The B-cos ResNet as a transformers model.

Every convolution, the classifier included, is a B-cos convolution; BatchNorm, ReLU, pooling and the residual sums
are (dynamic-)linear, so in :func:`explanation_mode` the model is a dynamic linear map of the encoded image and
:meth:`BcosResNetForImageClassification.explain` reads the map off with one backward pass. Parameter names follow
transformers' ``ResNetModel``.
"""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .bcos_cnn import BcosCNNPreTrainedModel, BcosCNNStage, BcosConvNormAct, stem_pool
from .bcos_cnn_classifier import BcosCNNForImageClassification, BcosCNNModel
from .configuration_bcos_resnet import BcosResNetConfig
from .fast_paths import residual_relu_, use_fast_path


def residual_relu(branch: torch.Tensor, shortcut: torch.Tensor, activation: bool = True) -> torch.Tensor:
    """``relu(branch + shortcut)`` (or the plain sum without ``activation``), the end of every residual block."""
    if not activation:
        return branch + shortcut
    if not torch.is_grad_enabled() and use_fast_path("residual_in_place", branch):
        return residual_relu_(branch, shortcut)
    return torch.relu(branch + shortcut)


class BcosResNetEmbeddings(nn.Module):
    """The stem: a 7x7 stride-2 B-cos convolution of the ``[x, 1 - x]`` image, BatchNorm, ReLU, 3x3 pooling."""

    def __init__(self, config: BcosResNetConfig):
        super().__init__()
        self.embedder = BcosConvNormAct(2 * config.num_channels, config.embedding_size, 7, config, stride=2)
        self.pooler = stem_pool(config.stem_pool)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.embedder(encoded))


class BcosResNetShortCut(BcosConvNormAct):
    """The projection shortcut: a 1x1 (strided) B-cos convolution and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: BcosResNetConfig):
        super().__init__(in_channels, out_channels, 1, config, stride=stride, activation=False)


class BcosResNetBasicLayer(nn.Module):
    """Two 3x3 B-cos convolutions and the residual: ``relu(layer(x) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, config: BcosResNetConfig):
        super().__init__()
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = (
            BcosResNetShortCut(in_channels, out_channels, stride, config) if needs_projection else nn.Identity()
        )
        self.activation = config.hidden_act is not None
        self.layer = nn.Sequential(
            BcosConvNormAct(in_channels, out_channels, 3, config, stride=stride),
            BcosConvNormAct(out_channels, out_channels, 3, config, activation=False),
        )

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return residual_relu(self.layer(hidden_state), self.shortcut(hidden_state), self.activation)


class BcosResNetBottleNeckLayer(nn.Module):
    """1x1 down to ``width``, 3x3 (grouped, strided), 1x1 up, and the residual."""

    def __init__(self, in_channels: int, out_channels: int, width: int, stride: int, config: BcosResNetConfig):
        super().__init__()
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = (
            BcosResNetShortCut(in_channels, out_channels, stride, config) if needs_projection else nn.Identity()
        )
        self.activation = config.hidden_act is not None
        first_stride, middle_stride = (stride, 1) if config.downsample_in_bottleneck else (1, stride)
        self.layer = nn.Sequential(
            BcosConvNormAct(in_channels, width, 1, config, stride=first_stride),
            BcosConvNormAct(width, width, 3, config, stride=middle_stride, groups=config.groups),
            BcosConvNormAct(width, out_channels, 1, config, activation=False),
        )

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return residual_relu(self.layer(hidden_state), self.shortcut(hidden_state), self.activation)


class BcosResNetStage(BcosCNNStage):
    """A stage of residual layers; the first one changes width and (except maybe in stage 1) resolution."""

    def __init__(self, config: BcosResNetConfig, index: int, in_channels: int):
        super().__init__()
        out_channels, depth = config.hidden_sizes[index], config.depths[index]
        stride = 2 if index > 0 or config.downsample_in_first_stage else 1
        layers = []
        for i in range(depth):
            layer_in, layer_stride = (in_channels, stride) if i == 0 else (out_channels, 1)
            if config.layer_type == "bottleneck":
                width = config.stage_bottleneck_widths[index]
                layers.append(BcosResNetBottleNeckLayer(layer_in, out_channels, width, layer_stride, config))
            else:
                layers.append(BcosResNetBasicLayer(layer_in, out_channels, layer_stride, config))
        self.layers = nn.Sequential(*layers)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_state)


class BcosResNetEncoder(nn.Module):
    def __init__(self, config: BcosResNetConfig):
        super().__init__()
        widths = [config.embedding_size] + config.hidden_sizes[:-1]
        self.stages = nn.ModuleList(BcosResNetStage(config, i, width) for i, width in enumerate(widths))

    def forward(self, hidden_state: torch.Tensor, output_hidden_states: bool) -> tuple[torch.Tensor, tuple | None]:
        hidden_states = (hidden_state,) if output_hidden_states else None
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            if output_hidden_states:
                hidden_states += (hidden_state,)
        return hidden_state, hidden_states


class BcosResNetPreTrainedModel(BcosCNNPreTrainedModel):
    config_class = BcosResNetConfig
    base_model_prefix = "bcos_resnet"
    _no_split_modules = ["BcosConvNormAct"]


class BcosResNetModel(BcosCNNModel, BcosResNetPreTrainedModel):
    """The B-cos ResNet backbone: ``last_hidden_state`` (N, C, h, w) and ``pooler_output`` (N, C, 1, 1), its mean."""

    def __init__(self, config: BcosResNetConfig):
        super().__init__(config)
        self.embedder = BcosResNetEmbeddings(config)
        self.encoder = BcosResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward_encoded(
        self, encoded: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone on an already ``[x, 1 - x]``-encoded image (what explanations differentiate)."""
        last, hidden_states = self.encoder(self.embedder(encoded), output_hidden_states)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last, pooler_output=self.pooler(last), hidden_states=hidden_states
        )


class BcosResNetForImageClassification(BcosCNNForImageClassification, BcosResNetPreTrainedModel):
    """A B-cos ResNet image classifier that explains its own decisions.

    It takes images in [0, 1] (the saved image processor resizes and rescales but does not normalise), returns an
    ``ImageClassifierOutputWithNoAttention``, and :meth:`explain` returns exact per-pixel contributions to any logit.
    """

    def __init__(self, config: BcosResNetConfig):
        super().__init__(config, BcosResNetModel(config), config.hidden_sizes[-1])


BcosResNetConfig.register_for_auto_class()
BcosResNetModel.register_for_auto_class("AutoModel")
BcosResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
