"""The B-cos Vision Transformer as a transformers model.

Every linear map that carries the signal (patch embedding, attention output, both MLP linears, classifier) is a
B-cos unit; LayerNorm, GELU and attention are written so that their input-dependent factors can be detached. In
:func:`explanation_mode` the model is then a dynamic linear map of the encoded image and :meth:`explain` reads the
map off with one backward pass. Hub-facing: torch, transformers and sibling files only.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.utils import module_tracker
from transformers import ViTImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .bcos_layers import (
    MODULE_HOOKS,
    BcosEncoderLayer,
    BcosLayerNorm,
    BcosLinear,
    BcosPatchEmbedding,
    BcosSelfAttention,
)
from .bcos_pretrained import BcosPreTrainedModel, classification_loss
from .configuration_bcos_vit import BcosViTConfig
from .explanation import BcosExplanation, compute_explanation


# torch's hooks for every module: one would see the last block's tokens missing when a class-token head computes
# that block for the class token alone
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in MODULE_HOOKS)
# where the hooks come from that look at no module's tokens (transformers' output recorders take what they are
# asked for; torch's module tracker notes which module runs)
_HARMLESS_HOOKS = (capture_outputs.__module__, module_tracker.__name__)


def interpolate_position_embeddings(patch_positions: torch.Tensor, grid: int, height: int, width: int) -> torch.Tensor:
    """Bicubic resampling of (1, grid*grid, D) patch position embeddings to a height x width patch grid."""
    dim = patch_positions.shape[-1]
    square = patch_positions.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square.float(), size=(height, width), mode="bicubic", align_corners=False)
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
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, num_positions, config.hidden_size)) if config.use_position_embeddings else None
        )

    def forward(
        self, images: torch.Tensor, interpolate_pos_encoding: bool = False, encoded: bool = True
    ) -> torch.Tensor:
        """Tokens of ``images``: the ``[x, 1 - x]`` encoding when ``encoded``, else the pixels ``x`` themselves."""
        tokens = self.patch_embeddings(images) if encoded else self.patch_embeddings.forward_pixels(images)
        height = images.shape[2] // self.patch_embeddings.patch_size
        width = images.shape[3] // self.patch_embeddings.patch_size
        prefix = 0 if self.cls_token is None else 1
        if self.position_embeddings is not None:
            positions = self.position_embeddings
            if (height, width) != (self.grid, self.grid):
                if not interpolate_pos_encoding:
                    size = self.grid * self.patch_embeddings.patch_size
                    raise ValueError(
                        f"This model takes {size}x{size} images, got {images.shape[2]}x{images.shape[3]}. Resize "
                        "them (the model's image processor does), or pass interpolate_pos_encoding=True to resample "
                        "the position embeddings bicubically."
                    )
                patch_positions = interpolate_position_embeddings(positions[:, prefix:], self.grid, height, width)
                positions = torch.cat([positions[:, :prefix], patch_positions], dim=1)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.position_embeddings is not None:
            tokens = tokens + positions
        return tokens


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
    _standard_converter = "bcosify_vit"

    def default_image_processor(self) -> ViTImageProcessor:
        """The processor saved with the model: resize to the model's size and rescale to [0, 1]; no normalisation."""
        size = self.config.image_size
        return ViTImageProcessor(size={"height": size, "width": size}, do_rescale=True, do_normalize=False)


class BcosViTModel(BcosViTPreTrainedModel):
    """The B-cos ViT backbone. ``pooler_output`` is the final LayerNorm of the pooled token (class token or mean).

    ``hidden_states`` are the tokens entering the first block and leaving each block; ``attentions`` the attention
    probabilities of each block (with ``attn_implementation="eager"``).
    """

    def __init__(self, config: BcosViTConfig):
        super().__init__(config)
        self.embeddings = BcosViTEmbeddings(config)
        self.pre_layernorm = (
            BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
            if config.pre_layernorm
            else None
        )
        self.layers = nn.ModuleList(BcosEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = BcosLayerNorm(config.hidden_size, config.layer_norm_eps, bias=config.use_bias)
        self.post_init()

    def _encode_tokens(
        self, hidden_states: torch.Tensor, class_token_only: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The blocks and the pooling; with ``class_token_only``, the last block computes the class token alone
        (``last_hidden_state`` is then that token), which is all that class-token pooling reads of it."""
        if self.pre_layernorm is not None:
            hidden_states = self.pre_layernorm(hidden_states)
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            first_tokens = 1 if class_token_only and index == last else None
            hidden_states = layer(hidden_states, None, first_tokens=first_tokens, **kwargs)
        if self.config.pooling == "cls":
            pooled = hidden_states[:, 0]
        else:
            pooled = hidden_states[:, int(self.config.use_class_token) :].mean(dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.layernorm(pooled))

    def class_token_suffices(self, **kwargs) -> bool:
        """Whether a head that reads only ``pooler_output`` may have it computed with the last block on the class
        token alone (``forward(class_token_only=True)``, :meth:`pooler_output_of_encoded`): class-token pooling, no
        hidden states or attentions asked for (in ``kwargs`` or the config), and no hooks on the backbone or the last
        block, nor hooks for every module (``torch.nn.modules.module.register_module_forward_hook``), that would see
        the block's tokens missing: only transformers' output recorders and torch's module tracker (which
        ``FlopCounterMode`` uses; it notes which module runs, not what it returns) are let through."""
        if self.config.pooling != "cls" or not len(self.layers):
            return False
        for name in ("output_hidden_states", "output_attentions"):
            if kwargs.get(name, getattr(self.config, name, False)):
                return False
        everywhere = [getattr(torch_module, name, {}) for name in _GLOBAL_HOOKS]
        here = [getattr(module, name) for module in (self, *self.layers[-1].modules()) for name in MODULE_HOOKS]
        return not any(getattr(hook, "__module__", None) not in _HARMLESS_HOOKS
                       for hooks in everywhere + here for hook in hooks.values())  # fmt: skip

    def pooler_output_of_encoded(self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """``pooler_output`` alone, of ``[x, 1 - x]``-encoded images (what :meth:`explain` differentiates), without
        the output recorders of :meth:`forward`.

        With class-token pooling the last block computes the class token alone (its attention still reads every
        token): for ViT-S/16 at 224 px that skips the queries, attention, output projection and MLP of 196 of 197
        tokens, some 7% of the forward pass, and leaves the result as it was up to float round-off.
        """
        tokens = self.embeddings(encoded, interpolate_pos_encoding=bool(interpolate_pos_encoding), encoded=True)
        class_token_only = self.class_token_suffices(output_hidden_states=False, output_attentions=False)
        return self._encode_tokens(tokens, class_token_only=class_token_only).pooler_output

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = False,
        class_token_only: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Tokens and pooled features of (N, C, H, W) images in [0, 1].

        Takes ``output_hidden_states``, ``output_attentions`` and ``return_dict`` (each defaulting to the config's),
        as transformers' ViT does. ``class_token_only=True`` is for heads that read ``pooler_output`` alone and have
        checked :meth:`class_token_suffices`: the last block then computes the class token alone, and
        ``last_hidden_state`` is that token, (N, 1, D).
        """
        pixel_values = self.prepare_pixel_values(pixel_values)
        tokens = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding), encoded=False)
        return self._encode_tokens(tokens, class_token_only=class_token_only, **kwargs)


class BcosViTForImageClassification(BcosViTPreTrainedModel):
    """A B-cos ViT image classifier that explains its own decisions.

    It takes images in [0, 1] (the saved image processor resizes and rescales but does not normalise), returns an
    ``ImageClassifierOutput`` (a tuple with ``return_dict=False``), and :meth:`explain` returns exact per-pixel
    contributions to any logit.
    """

    _extra_auto_classes = ("AutoModel",)

    def __init__(self, config: BcosViTConfig):
        super().__init__(config)
        self.bcos_vit = BcosViTModel(config)
        self.classifier = BcosLinear(config.hidden_size, config.num_labels, bias=config.use_bias, b=config.b)
        self.post_init()

    def _logits(self, encoded: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        pooled = self.bcos_vit.pooler_output_of_encoded(encoded, interpolate_pos_encoding)
        return self.classifier(pooled) + self.config.resolved_logit_bias

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs,
    ) -> ImageClassifierOutput:
        """Logits of (N, C, H, W) images in [0, 1]; the loss of ``labels`` (see :func:`classification_loss`)."""
        outputs = self.bcos_vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            # the logits read the class token alone: where nothing else is asked for, the last block computes it alone
            class_token_only=self.bcos_vit.class_token_suffices(**kwargs),
            **{**kwargs, "return_dict": True},
        )
        logits = self.classifier(outputs.pooler_output) + self.config.resolved_logit_bias
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def explain(
        self,
        pixel_values: torch.Tensor,
        target: int | torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        create_graph: bool = False,
    ) -> BcosExplanation:
        """Explain one logit per image exactly: ``contributions.sum() + bias == logit``.

        Args:
            pixel_values: (N, 3, H, W) images in [0, 1].
            target: the class to explain: ``None`` (each image's top class), an int, or an (N,) tensor.
            create_graph: keep the graph of ``logits``, ``dynamic_weights`` and ``contributions``, so that a loss on
                the explanation trains the model (model guidance, explanation distillation).
        """
        return compute_explanation(
            self,
            lambda encoded: self._logits(encoded, interpolate_pos_encoding),
            pixel_values,
            target,
            create_graph=create_graph,
        )


BcosViTConfig.register_for_auto_class()
BcosViTModel.register_for_auto_class("AutoModel")
BcosViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")
