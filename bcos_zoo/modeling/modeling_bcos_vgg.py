"""The B-cos VGG as a transformers model.

Every convolution, the fully connected layers and the classifier included, is a B-cos convolution; BatchNorm, the
pooling and ReLU (where there is one) are (dynamic-)linear, so in :func:`explanation_mode` the model is a dynamic
linear map of the encoded image and :meth:`BcosVGGForImageClassification.explain` reads the map off with one
backward pass.
"""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .bcos_cnn import BcosCNNPreTrainedModel, BcosCNNStage, BcosConvNormAct
from .bcos_cnn_classifier import BcosCNNForImageClassification, BcosCNNModel
from .bcos_layers import BcosConv2d
from .configuration_bcos_vgg import BcosVGGConfig


class BcosVGGStage(BcosCNNStage):
    """3x3 convolution-BatchNorm(-ReLU) units, then 2x2 pooling that halves the resolution."""

    def __init__(self, config: BcosVGGConfig, index: int, in_channels: int):
        super().__init__()
        width = config.hidden_sizes[index]
        self.layers = nn.Sequential(
            *(BcosConvNormAct(in_channels if i == 0 else width, width, 3, config) for i in range(config.depths[index]))
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(hidden_state))


class BcosVGGHead(nn.Module):
    """VGG's two fully connected layers as B-cos convolutions over the feature map, so that any image size works:
    a ``head_kernel_size`` window (zero-padded to keep the resolution), then 1x1, each followed by the activation."""

    def __init__(self, config: BcosVGGConfig):
        super().__init__()
        kernel = config.head_kernel_size
        options = dict(bias=config.use_bias, b=config.b, normalize_weight=config.normalize_weights)
        self.fc1 = BcosConv2d(config.hidden_sizes[-1], config.head_size, kernel, padding=kernel // 2, **options)
        self.fc2 = BcosConv2d(config.head_size, config.head_size, 1, **options)
        self.act = nn.ReLU() if config.hidden_act == "relu" else nn.Identity()

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(hidden_state))))


class BcosVGGPreTrainedModel(BcosCNNPreTrainedModel):
    config_class = BcosVGGConfig
    base_model_prefix = "bcos_vgg"
    _no_split_modules = ["BcosConvNormAct", "BcosVGGHead"]


class BcosVGGModel(BcosCNNModel, BcosVGGPreTrainedModel):
    """The B-cos VGG up to its classifier: ``last_hidden_state`` (N, head_size, h, w), the fully connected layers'
    output at every position, and ``pooler_output`` (N, head_size, 1, 1), its mean. ``hidden_states``: each stage's
    output, then ``last_hidden_state``."""

    def __init__(self, config: BcosVGGConfig):
        super().__init__(config)
        widths = [2 * config.num_channels] + config.hidden_sizes[:-1]
        self.stages = nn.ModuleList(BcosVGGStage(config, i, width) for i, width in enumerate(widths))
        self.head = BcosVGGHead(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward_encoded(
        self, encoded: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone on an already ``[x, 1 - x]``-encoded image (what explanations differentiate)."""
        hidden_state, hidden_states = encoded, ()
        if self.stages[0].gradient_checkpointing and self.training and not encoded.requires_grad:
            hidden_state = encoded.requires_grad_()  # else reentrant checkpointing leaves the first stage untrained
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            hidden_states += (hidden_state,)
        hidden_state = self.head(hidden_state)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden_state,
            pooler_output=self.pooler(hidden_state),
            hidden_states=hidden_states + (hidden_state,) if output_hidden_states else None,
        )


class BcosVGGForImageClassification(BcosCNNForImageClassification, BcosVGGPreTrainedModel):
    """A B-cos VGG image classifier that explains its own decisions.

    It takes images in [0, 1] (the saved image processor resizes and rescales but does not normalise), returns an
    ``ImageClassifierOutputWithNoAttention``, and :meth:`explain` returns exact per-pixel contributions to any logit.
    """

    def __init__(self, config: BcosVGGConfig):
        super().__init__(config, BcosVGGModel(config), config.head_size)


BcosVGGConfig.register_for_auto_class()
BcosVGGModel.register_for_auto_class("AutoModel")
BcosVGGForImageClassification.register_for_auto_class("AutoModelForImageClassification")
