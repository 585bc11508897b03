"""The B-cos ConvNeXt (B-cos v2) as a transformers model.

Every convolution, the classifier included, is a B-cos convolution; the normalisations' standard deviation is a
dynamic factor, and layer scale, stochastic depth, the residual sums and the pooling are linear, so in
:func:`explanation_mode` the model is a dynamic linear map of the encoded image and
:meth:`BcosConvNextForImageClassification.explain` reads it off with one backward pass. Parameter names follow
transformers' ``ConvNextModel``.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention

from .bcos_cnn import BcosBatchNorm2d, BcosCNNPreTrainedModel, BcosCNNStage
from .bcos_cnn_classifier import BcosCNNForImageClassification, BcosCNNModel
from .bcos_layers import BcosConv2d, BcosLayerNorm
from .configuration_bcos_convnext import BcosConvNextConfig


class BcosPositionNorm2d(BcosLayerNorm):
    """LayerNorm over the channels at each position of an (N, C, H, W) map (the package's "position norm")."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def bcos_norm(config: BcosConvNextConfig, channels: int) -> nn.Module:
    """The normalisation ``config.norm_type`` names."""
    if config.norm_type == "position":
        return BcosPositionNorm2d(channels, eps=config.layer_norm_eps, bias=config.use_bias)
    return BcosBatchNorm2d(channels, eps=config.batch_norm_eps, centered=config.use_bias)


def drop_path(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, drop the branch of whole images at ``rate`` and scale the kept ones by
    ``1 / (1 - rate)``, so that the expected output is the evaluation output."""
    if rate == 0.0 or not training:
        return hidden_states
    keep = 1.0 - rate
    mask = hidden_states.new_empty(hidden_states.shape[0], 1, 1, 1).bernoulli_(keep)
    return hidden_states * mask.div_(keep)


class BcosConvNextLayer(nn.Module):
    """``x + drop_path(gamma * pwconv2(pwconv1(norm(dwconv(x)))))``: a ConvNeXt block without its GELU."""

    def __init__(self, config: BcosConvNextConfig, dim: int, drop_path_rate: float):
        super().__init__()
        b, bias = config.b, config.use_bias
        self.dwconv = BcosConv2d(dim, dim, 7, padding=3, groups=dim, bias=bias, b=b)
        self.norm = bcos_norm(config, dim)
        self.pwconv1 = BcosConv2d(dim, 4 * dim, 1, bias=bias, b=b)
        self.pwconv2 = BcosConv2d(4 * dim, dim, 1, bias=bias, b=b)
        scale = config.layer_scale_init_value
        self.layer_scale_parameter = nn.Parameter(torch.full((dim,), scale)) if scale > 0 else None
        self.drop_path_rate = drop_path_rate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        branch = self.pwconv2(self.pwconv1(self.norm(self.dwconv(hidden_states))))
        if self.layer_scale_parameter is not None:
            branch = branch * self.layer_scale_parameter.view(1, -1, 1, 1)
        return hidden_states + drop_path(branch, self.drop_path_rate, self.training)


class BcosConvNextEmbeddings(nn.Module):
    """The stem: a ``patch_size`` x ``patch_size`` B-cos convolution of the ``[x, 1 - x]`` image with that stride,
    then a normalisation."""

    def __init__(self, config: BcosConvNextConfig):
        super().__init__()
        channels, size = config.hidden_sizes[0], config.patch_size
        self.patch_embeddings = BcosConv2d(
            2 * config.num_channels, channels, size, stride=size, bias=config.use_bias, b=config.b
        )
        self.norm = bcos_norm(config, channels)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.norm(self.patch_embeddings(encoded))


class BcosConvNextStage(BcosCNNStage):
    """A stage: (after the first) a normalisation and a 2x2 stride-2 B-cos convolution, then the blocks."""

    def __init__(self, config: BcosConvNextConfig, index: int, drop_path_rates: list[float]):
        super().__init__()
        out_channels = config.hidden_sizes[index]
        self.downsampling_layer = nn.Identity()
        if index > 0:
            in_channels = config.hidden_sizes[index - 1]
            self.downsampling_layer = nn.Sequential(
                bcos_norm(config, in_channels),
                BcosConv2d(in_channels, out_channels, 2, stride=2, bias=config.use_bias, b=config.b),
            )
        self.layers = nn.Sequential(*(BcosConvNextLayer(config, out_channels, rate) for rate in drop_path_rates))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsampling_layer(hidden_state))


class BcosConvNextEncoder(nn.Module):
    def __init__(self, config: BcosConvNextConfig):
        super().__init__()
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
        self.stages = nn.ModuleList(
            BcosConvNextStage(config, i, rates[start : start + depth])
            for i, (start, depth) in enumerate(zip(starts, config.depths))
        )

    def forward(self, hidden_state: torch.Tensor, output_hidden_states: bool) -> tuple[torch.Tensor, tuple | None]:
        hidden_states = (hidden_state,) if output_hidden_states else None
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            if output_hidden_states:
                hidden_states += (hidden_state,)
        return hidden_state, hidden_states


class BcosConvNextPreTrainedModel(BcosCNNPreTrainedModel):
    config_class = BcosConvNextConfig
    base_model_prefix = "bcos_convnext"
    _no_split_modules = ["BcosConvNextLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, BcosConvNextLayer) and module.layer_scale_parameter is not None:
            init.constant_(module.layer_scale_parameter, self.config.layer_scale_init_value)
        else:
            super()._init_weights(module)


class BcosConvNextModel(BcosCNNModel, BcosConvNextPreTrainedModel):
    """The B-cos ConvNeXt backbone: ``last_hidden_state`` (N, C, h, w), the last stage's features after the final
    normalisation (what the classifier reads at every position), and ``pooler_output`` (N, C, 1, 1), their mean.
    ``hidden_states`` are the stem's and each stage's outputs."""

    def __init__(self, config: BcosConvNextConfig):
        super().__init__(config)
        self.embeddings = BcosConvNextEmbeddings(config)
        self.encoder = BcosConvNextEncoder(config)
        self.norm = bcos_norm(config, config.hidden_sizes[-1])
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward_encoded(
        self, encoded: torch.Tensor, output_hidden_states: bool = False
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone on an already ``[x, 1 - x]``-encoded image (what explanations differentiate)."""
        last, hidden_states = self.encoder(self.embeddings(encoded), output_hidden_states)
        last = self.norm(last)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last, pooler_output=self.pooler(last), hidden_states=hidden_states
        )


class BcosConvNextForImageClassification(BcosCNNForImageClassification, BcosConvNextPreTrainedModel):
    """A B-cos ConvNeXt image classifier that explains its own decisions.

    It takes images in [0, 1] (the saved image processor resizes and rescales but does not normalise), returns an
    ``ImageClassifierOutputWithNoAttention``, and :meth:`explain` returns exact per-pixel contributions to any logit.
    """

    def __init__(self, config: BcosConvNextConfig):
        super().__init__(config, BcosConvNextModel(config), config.hidden_sizes[-1])


BcosConvNextConfig.register_for_auto_class()
BcosConvNextModel.register_for_auto_class("AutoModel")
BcosConvNextForImageClassification.register_for_auto_class("AutoModelForImageClassification")
