"""Configuration of the B-cos Vision Transformer."""

import math

from transformers import PretrainedConfig


class BcosViTConfig(PretrainedConfig):
    """Configuration of :class:`BcosViTForImageClassification`; the architecture fields follow ``ViTConfig`` (the
    defaults are a ViT-S/16's).

    Args:
        b: the B-cos exponent (1 = the original linear maps; the papers train at 2).
        use_bias: keep the biases that add constants to the output; without them, and without a class token and
            position embeddings, explanations account for the whole logit except ``logit_bias``.
        attention_qk_bias: biases of the query and key projections (they only shape the detached attention matrix).
        pooling: ``"cls"`` (the class token) or ``"mean"`` (of the patch tokens), before the final LayerNorm.
        pre_layernorm: a LayerNorm on the tokens before the first block (CLIP, timm ``pre_norm``).
        logit_bias: added to every logit; ``None`` means ``-log(num_labels - 1)``, the B-cos papers' choice.
        loss: ``"bce"`` (binary cross-entropy with off-target labels ``1/C``, the papers') or ``"cross_entropy"``.
        crop_pct / resample: the saved processor resizes with PIL filter ``resample`` (2 bilinear, 3 bicubic) the
            whole image to ``image_size`` squared (``crop_pct=None``, as transformers' ViT processor), or the
            shortest edge to ``image_size / crop_pct`` and centre-crops ``image_size`` (timm's and DeiT's evaluation).
    """

    model_type = "bcos_vit"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 384,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 6,
        intermediate_size: int = 1536,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        b: float = 2.0,
        use_bias: bool = False,
        attention_qk_bias: bool = True,
        use_class_token: bool = True,
        use_position_embeddings: bool = True,
        pooling: str = "cls",
        pre_layernorm: bool = False,
        logit_bias: float | None = None,
        loss: str = "bce",
        initializer_range: float = 0.02,
        crop_pct: float | None = None,
        resample: int = 2,
        **kwargs,
    ):
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}.")
        if pooling == "cls" and not use_class_token:
            raise ValueError("pooling='cls' needs use_class_token=True; use pooling='mean' for a model without one.")
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        if image_size % patch_size:  # the saved processor makes images of this size, which the patches must tile
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.b = float(b)
        self.use_bias = use_bias
        self.attention_qk_bias = attention_qk_bias
        self.use_class_token, self.use_position_embeddings = use_class_token, use_position_embeddings
        self.pooling = pooling
        self.pre_layernorm = pre_layernorm
        self.logit_bias, self.loss = logit_bias, loss
        self.initializer_range = initializer_range
        self.crop_pct, self.resample = crop_pct, resample
        super().__init__(**kwargs)

    @property
    def resolved_logit_bias(self) -> float:
        """The constant added to the logits: ``logit_bias``, or ``-log(C - 1)`` when it is ``None``."""
        if self.logit_bias is not None:
            return float(self.logit_bias)
        return -math.log(self.num_labels - 1) if self.num_labels > 1 else 0.0
