"""The B-cos simple ViT and ViT-C of B-cos v2 as transformers models: B-cos maps of image patches (or of a
convolutional stem's output) plus fixed sin-cos position embeddings, pre-norm blocks, the mean token through a
LayerNorm and a B-cos head. In :func:`explanation_mode` every input-dependent factor is detached, and :meth:`explain`
reads the dynamic linear map off with one backward pass.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPImageProcessor
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .bcos_layers import BcosConv2d, BcosLayerNorm, BcosLinear, DynamicModule, GatedActivation
from .bcos_pretrained import BcosPreTrainedModel, classification_loss, resizing_processor
from .configuration_bcos_simple_vit import BcosSimpleViTConfig
from .explanation import BcosExplanation, compute_explanation


def activation(name: str) -> nn.Module:
    """The B-cos v2 models have no activation (``"identity"``); the standard ones and their B-cos forms a GELU."""
    return nn.Identity() if name == "identity" else GatedActivation(name)


def sincos_position_embeddings(height: int, width: int, dim: int, device, temperature: float = 10000.0):
    """(height * width, dim) fixed 2D position embeddings: sines and cosines of the column, then of the row, at
    ``dim / 4`` frequencies from 1 to ``1 / temperature``. Computed in float32, as the released models were."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / (quarter - 1))
    rows = torch.arange(height, device=device).repeat_interleave(width)[:, None] * omega  # row-major token order
    columns = torch.arange(width, device=device).repeat(height)[:, None] * omega
    return torch.cat([columns.sin(), columns.cos(), rows.sin(), rows.cos()], dim=1)


class BcosLayerNorm2d(DynamicModule):
    """LayerNorm over channels and positions of each image (a one-group GroupNorm) with a per-channel scale; its
    standard deviation is the dynamic factor, the mean subtraction is linear and stays."""

    def __init__(self, channels: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(1, 2, 3), correction=0, keepdim=True)
        out = (x - mean) * self.dynamic(torch.rsqrt(var + self.eps)) * self.weight.view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class BcosSimpleViTEmbeddings(nn.Module):
    """The optional convolutional stem, the B-cos patch embedding and the sin-cos position embeddings.

    A patch is flattened in (channel, row, column) order, as a convolution weight is; the B-cos norm is that of the
    whole patch.
    """

    def __init__(self, config: BcosSimpleViTConfig):
        super().__init__()
        self.patch_size, self.stem_stride, grid = config.patch_size, 1, config.image_size
        channels, self.stem = 2 * config.num_channels, nn.Sequential()
        for width in config.conv_stem or ():
            stride = 2 if width > channels else 1
            self.stem_stride, grid = self.stem_stride * stride, -(-grid // stride)  # a padded 3x3 convolution's output
            conv = BcosConv2d(channels, width, 3, stride, padding=1, bias=config.use_bias, b=config.b)
            norm = BcosLayerNorm2d(width, config.layer_norm_eps, bias=config.use_bias)
            self.stem.extend([conv, norm, activation(config.hidden_act)])
            channels = width
        if grid % config.patch_size:  # the saved processor makes images of image_size, which the patches must tile
            raise ValueError(
                f"image_size {config.image_size} does not fit {config.patch_size}x{config.patch_size} patches (of "
                f"the stem's {grid}x{grid} output): use a multiple of {config.patch_size * self.stem_stride}."
            )
        patch = channels * config.patch_size**2
        self.projection = BcosLinear(patch, config.hidden_size, bias=config.use_bias, b=config.b)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        features = self.stem(encoded)
        batch, channels, height, width = features.shape
        p, side = self.patch_size, self.patch_size * self.stem_stride  # in pixels: a patch after the stem
        if height % p or width % p:
            raise ValueError(
                f"This model cuts {p}x{p} patches of its stem's {height}x{width} output and cannot take a "
                f"{encoded.shape[-2]}x{encoded.shape[-1]} image: use sides that are multiples of {side}."
            )
        patches = features.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        tokens = self.projection(patches.reshape(batch, (height // p) * (width // p), channels * p * p))
        positions = sincos_position_embeddings(height // p, width // p, tokens.shape[-1], tokens.device)
        return tokens + positions.to(tokens.dtype)


class BcosSimpleViTAttention(DynamicModule):
    """Multi-head self-attention whose attention matrix is the dynamic factor: explanation mode detaches the queries
    and keys. One bias-free query-key-value projection; the output projection is a B-cos unit."""

    def __init__(self, config: BcosSimpleViTConfig):
        super().__init__()
        width = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.scaling = (width // self.num_heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.o_proj = BcosLinear(width, width, bias=False, b=config.b)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = hidden_states.shape
        qkv = (
            self.qkv(hidden_states)
            .view(batch, length, 3, self.num_heads, width // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        query, key, value = self.dynamic(qkv[0]), self.dynamic(qkv[1]), qkv[2]
        if self.config._attn_implementation == "eager" or self.detach_dynamic:  # written out: twice differentiable
            probabilities = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * self.scaling, dim=-1)
            context = torch.matmul(probabilities, value)
        else:
            probabilities, context = None, F.scaled_dot_product_attention(query, key, value, scale=self.scaling)
        return self.o_proj(context.transpose(1, 2).reshape(batch, length, width)), probabilities


class BcosSimpleViTLayer(GradientCheckpointingLayer):
    """A pre-norm block, ``h + attn(ln(h))`` then ``h + fc2(act(fc1(ln(h))))``; ``gradient_checkpointing_enable()``
    recomputes it in the backward pass."""

    def __init__(self, config: BcosSimpleViTConfig):
        super().__init__()
        width, bias, b = config.hidden_size, config.use_bias, config.b
        self.layernorm_before = BcosLayerNorm(width, config.layer_norm_eps, bias=bias)
        self.attention = BcosSimpleViTAttention(config)
        self.layernorm_after = BcosLayerNorm(width, config.layer_norm_eps, bias=bias)
        self.fc1 = BcosLinear(width, config.intermediate_size, bias=bias, b=b)
        self.act = activation(config.hidden_act)
        self.fc2 = BcosLinear(config.intermediate_size, width, bias=bias, b=b)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.layernorm_before(hidden_states))[0]
        return hidden_states + self.fc2(self.act(self.fc1(self.layernorm_after(hidden_states))))


class BcosSimpleViTPreTrainedModel(BcosPreTrainedModel):
    config_class = BcosSimpleViTConfig
    base_model_prefix = "bcos_simple_vit"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BcosSimpleViTEmbeddings", "BcosSimpleViTLayer"]
    _supports_sdpa = True
    _can_record_outputs = {"hidden_states": BcosSimpleViTLayer, "attentions": BcosSimpleViTAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, BcosConv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, BcosLayerNorm2d):
            init.ones_(module.weight)
        if isinstance(module, (BcosConv2d, BcosLayerNorm2d)) and module.bias is not None:
            init.zeros_(module.bias)
        super()._init_weights(module)

    def default_image_processor(self) -> CLIPImageProcessor:
        """Resize the shortest edge bilinearly to ``image_size / crop_pct``, crop the centre ``image_size`` and
        rescale to [0, 1], as the package's test transform does; no normalisation."""
        return resizing_processor(self.config.image_size, self.config.crop_pct, 2, do_rescale=True, do_normalize=False)


class BcosSimpleViTModel(BcosSimpleViTPreTrainedModel):
    """The backbone. ``pooler_output`` is the final LayerNorm of the mean token; ``hidden_states`` (with
    ``output_hidden_states``) the tokens entering the first block and leaving each; ``attentions`` the attention
    probabilities of each block (with ``attn_implementation="eager"``)."""

    def __init__(self, config: BcosSimpleViTConfig):
        super().__init__(config)
        self.embeddings = BcosSimpleViTEmbeddings(config)
        self.layers = nn.ModuleList(BcosSimpleViTLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    def forward_encoded(self, encoded: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """The backbone on ``[x, 1 - x]``-encoded images (what explanations differentiate)."""
        hidden_states = self.embeddings(encoded)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        pooled = self.layernorm(hidden_states.mean(dim=1))
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Tokens and pooled features of (N, C, H, W) images in [0, 1]; takes ``output_hidden_states``,
        ``output_attentions`` and ``return_dict`` (each defaulting to the config's)."""
        return self.forward_encoded(self.encode_pixel_values(pixel_values))


class BcosSimpleViTForImageClassification(BcosSimpleViTPreTrainedModel):
    """A B-cos simple ViT (or ViT-C) classifier that explains its own decisions. It takes images in [0, 1] (the saved
    image processor resizes, crops and rescales, never normalises) and returns an ``ImageClassifierOutput``."""

    _saved_auto_classes = ("AutoModel", "AutoModelForImageClassification")

    def __init__(self, config: BcosSimpleViTConfig):
        super().__init__(config)
        self.bcos_simple_vit = BcosSimpleViTModel(config)
        self.classifier = BcosLinear(config.hidden_size, config.num_labels, bias=config.use_bias, b=config.b)
        self.post_init()

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """The logits of pooled features: the classifier, then the package's logit layer (temperature, bias)."""
        logits = self.classifier(pooled)
        if self.config.logit_temperature is not None:
            logits = logits / self.config.logit_temperature
        return logits + self.config.resolved_logit_bias

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        """Logits of (N, C, H, W) images in [0, 1]; the loss of ``labels`` (see :func:`classification_loss`)."""
        outputs = self.bcos_simple_vit(pixel_values, **{**kwargs, "return_dict": True})
        logits = self.head(outputs.pooler_output)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def explain(
        self, pixel_values: torch.Tensor, target: int | torch.Tensor | None = None, create_graph: bool = False
    ) -> BcosExplanation:
        """Explain one logit per image exactly: ``contributions.sum() + bias == logit``; ``target`` is ``None`` (the
        top class), an int or an (N,) tensor; ``create_graph=True`` keeps the graph for a loss on the explanation."""

        def logits(encoded: torch.Tensor) -> torch.Tensor:
            return self.head(self.bcos_simple_vit.forward_encoded(encoded).pooler_output)

        return compute_explanation(self, logits, pixel_values, target, create_graph=create_graph)


BcosSimpleViTConfig.register_for_auto_class()
BcosSimpleViTModel.register_for_auto_class("AutoModel")
BcosSimpleViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
