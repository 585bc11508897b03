"""Configuration of the B-cos simple ViT and ViT-C (B-cos v2)."""

import math

from transformers import PretrainedConfig


class BcosSimpleViTConfig(PretrainedConfig):
    """Configuration of :class:`BcosSimpleViTForImageClassification`: the "simple ViT" (Beyer et al., 2022) as the
    B-cos v2 authors build it: sin-cos position embeddings, no class token, mean pooling, a final LayerNorm and a
    linear head. The defaults are their B-cos ViT-S/16.

    Args:
        conv_stem: output channels of ViT-C's convolutional stem (Xiao et al., 2021): 3x3 convolutions, stride 2
            where the channels grow and 1 elsewhere, each followed by a LayerNorm over channels and positions and the
            activation. ``None``: the simple ViT, which cuts the image into patches.
        patch_size: side of the patches cut from the image (or from the stem's output; ViT-C uses 1).
        hidden_act: ``"identity"`` (the B-cos v2 models) or a GELU type (the standard ones, and B-cosified).
        b / use_bias: the B-cos exponent (1 = plain linear maps); keep the biases (the B-cos v2 models have none).
        logit_bias / logit_temperature: logits ``classifier(x) / logit_temperature + logit_bias``; ``None`` means
            ``-log(num_labels - 1)`` and 1.
        loss: ``"bce"`` (BCE with off-target labels ``1/C``, the papers' loss) or ``"cross_entropy"``.
        image_size / crop_pct: the saved image processor resizes the shortest edge to ``image_size / crop_pct`` and
            crops the centre ``image_size`` (the package's test transform). The model takes any size its patches
            tile: the position embeddings are computed for the grid.
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
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
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
