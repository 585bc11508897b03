"""OpenAI CLIP's ``ModifiedResNet`` image tower as a B-cos network: a stem of three 3x3 convolutions and 2x2 average
pooling, bottleneck blocks that downsample by average pooling, and an attention pool whose one query is the mean
token. Every convolution and the value projection are B-cos units; the queries and keys only shape the attention
matrix, which explanation mode detaches as in the ViT."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .bcos_cnn import BcosCNNPreTrainedModel, BcosCNNStage, BcosConvNormAct
from .bcos_layers import BcosLinear, DynamicModule
from .configuration_bcos_clip_resnet import BcosCLIPResNetConfig
from .modeling_bcos_clip import BcosCLIPModel, BcosCLIPVisionModel, register_image_tower


def downsample(stride: int) -> nn.Module:
    """CLIP's anti-aliased downsampling: average pooling by the stride, where a ResNet strides a convolution."""
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


class BcosCLIPResNetBottleneck(nn.Module):
    """1x1, 3x3, pooling by the stride, 1x1, plus a shortcut (pooling, 1x1 convolution and BatchNorm where the shape
    changes), then ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int, config: BcosCLIPResNetConfig):
        super().__init__()
        out_channels = 4 * width
        self.layer = nn.Sequential(
            BcosConvNormAct(in_channels, width, 1, config),
            BcosConvNormAct(width, width, 3, config),
            downsample(stride),
            BcosConvNormAct(width, out_channels, 1, config, activation=False),
        )
        self.shortcut = nn.Identity()
        if stride > 1 or in_channels != out_channels:
            conv = BcosConvNormAct(in_channels, out_channels, 1, config, activation=False)
            self.shortcut = nn.Sequential(downsample(stride), conv)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(hidden_state) + self.shortcut(hidden_state))


class BcosCLIPResNetStage(BcosCNNStage):
    def __init__(self, config: BcosCLIPResNetConfig, index: int):
        super().__init__()
        width = config.width * 2**index
        in_channels = config.width if index == 0 else 2 * width
        strides = [2 if index > 0 else 1] + [1] * (config.depths[index] - 1)
        channels = [in_channels] + [4 * width] * (config.depths[index] - 1)
        self.layers = nn.Sequential(*(BcosCLIPResNetBottleneck(c, width, s, config) for c, s in zip(channels, strides)))

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_state)


class BcosAttentionPool(DynamicModule):
    """The feature map as tokens, their mean prepended (plus the position embedding, where kept), pooled by one
    multi-head attention whose query is the mean token. The attention matrix is the dynamic factor (queries and keys
    detached in explanation mode); the value projection is a B-cos unit."""

    def __init__(self, config: BcosCLIPResNetConfig):
        super().__init__()
        width = config.pooled_size
        self.num_heads = config.num_attention_heads
        self.scaling = (width // self.num_heads) ** -0.5
        self.grid = config.image_size // 2 ** (len(config.depths) + 1)  # the stem quarters, each later stage halves
        self.position_embeddings = None
        if config.use_position_embeddings:
            self.position_embeddings = nn.Parameter(torch.zeros(self.grid * self.grid + 1, width))
        self.q_proj = nn.Linear(width, width, bias=config.attention_qk_bias)
        self.k_proj = nn.Linear(width, width, bias=config.attention_qk_bias)
        self.v_proj = BcosLinear(width, width, bias=config.use_bias, b=config.b)

    def positions(self, height: int, width: int, interpolate: bool) -> torch.Tensor:
        """(1 + height * width, C) position embeddings; bicubically resampled for another grid if ``interpolate``."""
        if (height, width) == (self.grid, self.grid):
            return self.position_embeddings
        if not interpolate:
            raise ValueError(
                f"The attention pool takes a {self.grid}x{self.grid} feature map, got {height}x{width}: resize "
                "the images (its image processor does), or pass interpolate_pos_encoding=True."
            )
        grid = self.position_embeddings[1:].T.reshape(1, -1, self.grid, self.grid)
        precise = grid.to(torch.promote_types(grid.dtype, torch.float32))  # float64 stays float64
        resized = F.interpolate(precise, size=(height, width), mode="bicubic", align_corners=False)
        resized = resized.to(grid.dtype).reshape(-1, height * width).T
        return torch.cat([self.position_embeddings[:1], resized])

    def forward(self, features: torch.Tensor, interpolate_pos_encoding: bool = False):
        """(N, C) pooled features and the (N, heads, 1, 1 + h*w) attention of (N, C, h, w) features."""
        (batch, channels, height, width), tokens = features.shape, features.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        if self.position_embeddings is not None:
            tokens = tokens + self.positions(height, width, interpolate_pos_encoding).to(tokens.dtype)

        def heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, projected.shape[1], self.num_heads, channels // self.num_heads).transpose(1, 2)

        query = heads(self.dynamic(self.q_proj(tokens[:, :1])))
        key = heads(self.dynamic(self.k_proj(tokens)))
        value = heads(self.v_proj(tokens))
        softmax_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
        scores = torch.matmul(query * self.scaling, key.transpose(-1, -2))
        probabilities = F.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
        return torch.matmul(probabilities, value).reshape(batch, channels), probabilities


class BcosCLIPResNetModel(BcosCNNPreTrainedModel):
    """The B-cos CLIP ResNet tower: ``last_hidden_state`` (N, C, h, w), the last stage's feature map, and
    ``pooler_output`` (N, C), the attention pool's output (before the CLIP model's projection)."""

    config_class = BcosCLIPResNetConfig
    base_model_prefix = "bcos_clip_resnet"
    _no_split_modules = ["BcosConvNormAct", "BcosAttentionPool"]

    def __init__(self, config: BcosCLIPResNetConfig):
        super().__init__(config)
        half = config.width // 2
        self.embedder = nn.Sequential(
            BcosConvNormAct(2 * config.num_channels, half, 3, config, stride=2),
            BcosConvNormAct(half, half, 3, config),
            BcosConvNormAct(half, config.width, 3, config),
            nn.AvgPool2d(2),
        )
        self.stages = nn.ModuleList(BcosCLIPResNetStage(config, i) for i in range(len(config.depths)))
        self.attention_pool = BcosAttentionPool(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embedder[0].convolution  # the first stem convolution reads the [x, 1 - x] image

    def forward_encoded(
        self, encoded: torch.Tensor, interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False
    ) -> BaseModelOutputWithPooling:
        """The tower on ``[x, 1 - x]``-encoded images (what explanations differentiate); ``hidden_states`` are the
        stem's and each stage's feature maps, ``attentions`` the attention pool's."""
        hidden_state = self.embedder(encoded)
        hidden_states = (hidden_state,) if output_hidden_states else None
        for stage in self.stages:
            hidden_state = stage(hidden_state)
            if output_hidden_states:
                hidden_states += (hidden_state,)
        pooled, probabilities = self.attention_pool(hidden_state, bool(interpolate_pos_encoding))
        attentions = (probabilities,) if output_attentions else None
        return BaseModelOutputWithPooling(hidden_state, pooled, hidden_states, attentions)

    def pooled_features(self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """(N, C) pooled features of ``[x, 1 - x]``-encoded images (what the projection reads)."""
        return self.forward_encoded(encoded, interpolate_pos_encoding).pooler_output

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding=False,
        output_hidden_states=None,
        output_attentions=None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Feature map and pooled features of (N, C, H, W) images in [0, 1]; output flags as in transformers."""
        hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        encoded = self.encode_pixel_values(pixel_values)
        return self.forward_encoded(encoded, bool(interpolate_pos_encoding), bool(hidden), bool(attentions))


class BcosCLIPResNetVisionModel(BcosCLIPVisionModel):
    """:class:`BcosCLIPVisionModel` under the config class that the Auto classes require a loaded class to name."""

    config_class = BcosCLIPResNetConfig


register_image_tower(BcosCLIPResNetConfig.model_type, BcosCLIPResNetModel, __file__)
BcosCLIPResNetConfig.register_for_auto_class()
BcosCLIPResNetVisionModel.register_for_auto_class("AutoModel")

__all__ = ["BcosCLIPModel", "BcosCLIPResNetModel", "BcosCLIPResNetVisionModel"]
