"""Configuration of the B-cos simple ViT and ViT-C (B-cos v2). Hub-facing: transformers only."""

import math

from transformers import PretrainedConfig


class BcosSimpleViTConfig(PretrainedConfig):
    """Configuration of :class:`BcosSimpleViTForImageClassification`: the "simple ViT" of Beyer et al. (2022) as the
    B-cos v2 authors build it, with fixed 2D sin-cos position embeddings, no class token, mean pooling, a final
    LayerNorm and a linear head. The defaults are their B-cos ViT-S/16.

    Args:
        conv_stem: output channels of the convolutional stem of ViT-C (Xiao et al., 2021): 3x3 convolutions with
            stride 2 where the channels grow and 1 where they do not, each followed by a LayerNorm over channels and
            positions and the activation. ``None`` (the simple ViT) cuts the image into patches directly.
        patch_size: side of the patches the tokens are cut from (of the stem's output with a stem; ViT-C uses 1).
        hidden_act: ``"identity"`` (the B-cos v2 models: the B-cos units are the only non-linearity) or a GELU type
            (the standard models and their B-cosified forms).
        b: the B-cos exponent B (1 = plain linear maps and convolutions).
        use_bias: keep the biases (linear maps, convolutions, LayerNorm shifts); the B-cos models have none.
        logit_bias / logit_temperature: the logits are ``classifier(x) / logit_temperature + logit_bias``;
            ``logit_bias=None`` means ``-log(num_labels - 1)`` and ``logit_temperature=None`` means 1.
        loss: ``"bce"`` (binary cross-entropy with off-target labels ``1/C``, the papers' loss) or
            ``"cross_entropy"``.
        image_size / crop_pct: what the saved image processor produces: resize the shortest edge to
            ``image_size / crop_pct`` and crop the centre ``image_size`` (the package's test transform, 256 then 224).
            The model itself takes any size its patches tile: the position embeddings are computed for the grid.
    """

    model_type = "bcos_simple_vit"

    def __init__(
        self,
        num_channels: int = 3,
        conv_stem: list[int] | None = None,
        patch_size: int = 16,
        hidden_size: int = 384,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 6,
        intermediate_size: int = 1536,
        hidden_act: str = "identity",
        layer_norm_eps: float = 1e-5,
        b: float = 2.0,
        use_bias: bool = False,
        logit_bias: float | None = None,
        logit_temperature: float | None = None,
        loss: str = "bce",
        image_size: int = 224,
        crop_pct: float = 0.875,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if hidden_size % 4 or hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} must be a multiple of 4 (sin-cos position embeddings) and of "
                f"num_attention_heads {num_attention_heads}."
            )
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if b < 1:
            raise ValueError(f"b must be >= 1, got {b}.")
        self.num_channels = num_channels
        self.conv_stem = list(conv_stem) if conv_stem else None
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.b = float(b)
        self.use_bias = use_bias
        self.logit_bias = logit_bias
        self.logit_temperature = logit_temperature
        self.loss = loss
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def resolved_logit_bias(self) -> float:
        """The constant added to the logits: ``logit_bias``, or ``-log(C - 1)`` when it is ``None``."""
        if self.logit_bias is not None:
            return float(self.logit_bias)
        return -math.log(self.num_labels - 1) if self.num_labels > 1 else 0.0
