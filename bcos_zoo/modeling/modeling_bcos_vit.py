"""The B-cos Vision Transformer. Every linear map that carries the signal (patch embedding, attention output, MLP,
classifier) is a B-cos unit; LayerNorm, GELU and attention have input-dependent factors that explanation mode
detaches, making the model a dynamic linear map of the encoded image."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .bcos_layers import BcosLayerNorm, BcosLinear, DynamicModule, GatedActivation
from .bcos_pretrained import BcosPreTrainedModel, classification_loss
from .configuration_bcos_vit import BcosViTConfig
from .explanation import BcosExplanation, compute_explanation


class BcosPatchEmbedding(nn.Module):
    """One B-cos unit on each patch of the ``[x, 1 - x]`` image, flattened in (channel, row, column) order: the B-cos
    norm is the norm of the whole encoded patch (2 x num_channels channels: 6 for RGB)."""

    def __init__(self, num_channels: int, patch_size: int, hidden_size: int, bias: bool, b: float):
        super().__init__()
        self.patch_size = patch_size
        self.projection = BcosLinear(2 * num_channels * patch_size * patch_size, hidden_size, bias=bias, b=b)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        (batch, channels, height, width), p = encoded.shape, self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"This model cuts images into {p}x{p} patches and cannot take a {height}x{width} image: resize it with "
                "its image processor (saved beside the weights), or to a multiple of the patch size."
            )
        patches = encoded.reshape(batch, channels, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // p) * (width // p), channels * p * p)
        return self.projection(patches)


def interpolate_position_embeddings(patch_positions: torch.Tensor, grid: int, height: int, width: int) -> torch.Tensor:
    """Bicubic resampling of (1, grid*grid, D) patch position embeddings to a height x width patch grid."""
    dim = patch_positions.shape[-1]
    square = patch_positions.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    precise = square.to(torch.promote_types(square.dtype, torch.float32))  # float64 stays float64
    resized = F.interpolate(precise, size=(height, width), mode="bicubic", align_corners=False)
    return resized.to(patch_positions.dtype).permute(0, 2, 3, 1).reshape(1, height * width, dim)


class BcosViTEmbeddings(nn.Module):
    """B-cos patch embedding of the encoded image, plus the optional class token and position embeddings."""

    def __init__(self, config: BcosViTConfig):
        super().__init__()
        self.grid = config.image_size // config.patch_size
        self.patch_embeddings = BcosPatchEmbedding(
            config.num_channels, config.patch_size, config.hidden_size, bias=config.use_bias, b=config.b
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_class_token else None
        num_positions = self.grid * self.grid + int(config.use_class_token)
        positions = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))
        self.position_embeddings = positions if config.use_position_embeddings else None

    def forward(self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        tokens, p = self.patch_embeddings(encoded), self.patch_embeddings.patch_size
        height, width, prefix = encoded.shape[2] // p, encoded.shape[3] // p, int(self.cls_token is not None)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.position_embeddings is None:
            return tokens
        positions = self.position_embeddings
        if (height, width) != (self.grid, self.grid):
            if not interpolate_pos_encoding:
                raise ValueError(
                    f"This model takes {self.grid * p}x{self.grid * p} images, got {height * p}x{width * p}: resize "
                    "them (its image processor does), or pass interpolate_pos_encoding=True."
                )
            patch_positions = interpolate_position_embeddings(positions[:, prefix:], self.grid, height, width)
            positions = torch.cat([positions[:, :prefix], patch_positions], dim=1)
        return tokens + positions


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention written out, with transformers' calling convention; the softmax runs in float32 for half-precision
    inputs, else in the input's precision (float64 stays exact)."""
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = scores + attention_mask
    softmax_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    probabilities = F.softmax(scores, dim=-1, dtype=softmax_dtype).to(query.dtype)
    probabilities = F.dropout(probabilities, p=dropout, training=module.training)
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), probabilities


class BcosSelfAttention(DynamicModule):
    """Multi-head self-attention whose attention matrix is its dynamic factor (explanation mode detaches queries and
    keys: ``A(x) V x`` is linear in ``x``); the output projection is a B-cos unit. Explanations use the written-out
    attention, since fused kernels have no second derivative, which differentiable explanations need."""

    def __init__(self, config):
        super().__init__()
        width, self.num_heads = config.hidden_size, config.num_attention_heads
        self.config, self.is_causal = config, False
        if width % self.num_heads:
            raise ValueError(f"hidden_size {width} is not a multiple of num_attention_heads {self.num_heads}.")
        self.head_dim = width // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(width, width, bias=config.attention_qk_bias)
        self.k_proj = nn.Linear(width, width, bias=config.attention_qk_bias)
        self.v_proj = nn.Linear(width, width, bias=config.use_bias)
        self.o_proj = BcosLinear(width, width, bias=config.use_bias, b=config.b)

    def forward(
        self, hidden_states: torch.Tensor, first_tokens: int | None = None, **kwargs
    ) -> tuple[torch.Tensor, ...]:
        """Attention of every token, or with ``first_tokens`` of the first ones alone (keys and values from all)."""
        batch, length, width = hidden_states.shape
        queries = hidden_states if first_tokens is None else hidden_states[:, :first_tokens]

        def heads(tokens: torch.Tensor) -> torch.Tensor:
            return tokens.view(batch, tokens.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        query = heads(self.dynamic(self.q_proj(queries)))
        key = heads(self.dynamic(self.k_proj(hidden_states)))
        value = heads(self.v_proj(hidden_states))
        implementation = self.config._attn_implementation or "sdpa"
        attention = eager_attention
        if implementation != "eager" and not self.detach_dynamic:
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention)
        context, probabilities = attention(self, query, key, value, None, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.o_proj(context.reshape(batch, queries.shape[1], width)), probabilities


class BcosMLP(nn.Module):
    """Two B-cos units around a gated activation."""

    def __init__(self, config):
        super().__init__()
        self.fc1 = BcosLinear(config.hidden_size, config.intermediate_size, bias=config.use_bias, b=config.b)
        self.act = GatedActivation(config.hidden_act)
        self.fc2 = BcosLinear(config.intermediate_size, config.hidden_size, bias=config.use_bias, b=config.b)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class BcosEncoderLayer(GradientCheckpointingLayer):
    """A pre-norm transformer block, ``h + attn(ln(h))`` then ``h + mlp(ln(h))``."""

    def __init__(self, config):
        super().__init__()
        self.layernorm_before = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.attention = BcosSelfAttention(config)
        self.layernorm_after = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.mlp = BcosMLP(config)

    def forward(self, hidden_states: torch.Tensor, first_tokens: int | None = None, **kwargs) -> torch.Tensor:
        """The output tokens; with ``first_tokens``, those of the first tokens alone (all a class-token head reads)."""
        attended, _ = self.attention(self.layernorm_before(hidden_states), first_tokens=first_tokens, **kwargs)
        hidden_states = attended + (hidden_states if first_tokens is None else hidden_states[:, :first_tokens])
        return hidden_states + self.mlp(self.layernorm_after(hidden_states))


class BcosViTPreTrainedModel(BcosPreTrainedModel):
    config_class = BcosViTConfig
    base_model_prefix = "bcos_vit"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BcosViTEmbeddings", "BcosEncoderLayer"]
    _supports_sdpa = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": BcosEncoderLayer, "attentions": BcosSelfAttention}
    _input_embed_layer = "patch_embeddings"


class BcosViTModel(BcosViTPreTrainedModel):
    """The B-cos ViT backbone; ``pooler_output`` is the final LayerNorm of the pooled token (class token or mean),
    ``last_hidden_state`` the last block's tokens before it (as in CLIP's vision model, not transformers' ViT)."""

    def __init__(self, config: BcosViTConfig):
        super().__init__(config)
        self.embeddings = BcosViTEmbeddings(config)
        norm = (config.hidden_size, config.layer_norm_eps, config.use_bias)
        self.pre_layernorm = BcosLayerNorm(*norm) if config.pre_layernorm else None
        self.layers = nn.ModuleList(BcosEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = BcosLayerNorm(*norm)
        self.post_init()

    def forward_encoded(
        self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False, class_token_only: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The backbone on ``[x, 1 - x]``-encoded images (what explanations differentiate). ``class_token_only``
        computes the last block for the class token alone, all ``pooler_output`` reads (``last_hidden_state`` is then
        (N, 1, D)): at 224 px it skips 196 of 197 tokens' queries, projection and MLP."""
        if class_token_only and self.config.pooling != "cls":
            raise ValueError("class_token_only=True needs class-token pooling (config.pooling='cls').")
        hidden_states = self.embeddings(encoded, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        if self.pre_layernorm is not None:
            hidden_states = self.pre_layernorm(hidden_states)
        for index, layer in enumerate(self.layers):
            first_tokens = 1 if class_token_only and index == len(self.layers) - 1 else None
            hidden_states = layer(hidden_states, first_tokens=first_tokens, **kwargs)
        cls_pooling, prefix = self.config.pooling == "cls", int(self.config.use_class_token)
        pooled = hidden_states[:, 0] if cls_pooling else hidden_states[:, prefix:].mean(dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.layernorm(pooled))

    def pooled_features(self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """``pooler_output`` of ``[x, 1 - x]``-encoded images with the least work (what heads read)."""
        class_token_only = self.config.pooling == "cls"
        return self.forward_encoded(encoded, interpolate_pos_encoding, class_token_only).pooler_output

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding=False, class_token_only=False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Tokens and pooled features of (N, C, H, W) images in [0, 1]; output flags as in transformers' ViT."""
        encoded = self.encode_pixel_values(pixel_values)
        return self.forward_encoded(encoded, interpolate_pos_encoding, class_token_only, **kwargs)


class BcosViTForImageClassification(BcosViTPreTrainedModel):
    """A B-cos ViT image classifier of images in [0, 1] that explains its own decisions exactly (:meth:`explain`)."""

    _saved_auto_classes = ("AutoModel", "AutoModelForImageClassification")

    def __init__(self, config: BcosViTConfig):
        super().__init__(config)
        self.bcos_vit = BcosViTModel(config)
        self.classifier = BcosLinear(config.hidden_size, config.num_labels, bias=config.use_bias, b=config.b)
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels=None, interpolate_pos_encoding=False, class_token_only=False, **kwargs
    ) -> ImageClassifierOutput:
        """Logits of (N, C, H, W) images in [0, 1] and the loss of ``labels``; ``class_token_only=True`` gives the same
        logits with less work (hidden states and hooks of the last block then see the class token only)."""
        kwargs["return_dict"] = True
        outputs = self.bcos_vit(pixel_values, interpolate_pos_encoding, class_token_only, **kwargs)
        logits = self.classifier(outputs.pooler_output) + self.config.resolved_logit_bias
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return ImageClassifierOutput(loss, logits, outputs.hidden_states, outputs.attentions)

    def explain(
        self,
        pixel_values: torch.Tensor,
        target: int | torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        create_graph: bool = False,
    ) -> BcosExplanation:
        """Explain one logit per image of (N, C, H, W) images in [0, 1] exactly: ``contributions.sum() + bias ==
        logit``. ``target``: None (each image's top class), an int or an (N,) tensor; ``create_graph``: keep the graph,
        so that a loss on the explanation trains the model."""

        def logits(encoded: torch.Tensor) -> torch.Tensor:
            pooled = self.bcos_vit.pooled_features(encoded, interpolate_pos_encoding)
            return self.classifier(pooled) + self.config.resolved_logit_bias

        return compute_explanation(self, logits, pixel_values, target, create_graph=create_graph)


BcosViTConfig.register_for_auto_class()
BcosViTModel.register_for_auto_class("AutoModel")
BcosViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
