"""Configuration of the B-cos DenseNet."""

import math

from transformers import PretrainedConfig


class BcosDenseNetConfig(PretrainedConfig):
    """Configuration of :class:`BcosDenseNetForImageClassification`.

    The architecture fields follow torchvision's and timm's ``DenseNet`` (DenseNet-BC: bottleneck layers, transitions
    that halve the channels). The defaults are a B-cos DenseNet-121 as the B-cosification paper trains it;
    DenseNet-161 is ``num_init_features=96, growth_rate=48, block_config=[6, 12, 36, 24]``, DenseNet-169
    ``block_config=[6, 12, 32, 32]``, DenseNet-201 ``[6, 12, 48, 32]``.

    Args:
        num_init_features: channels of the stem convolution.
        growth_rate: channels each dense layer adds.
        block_config: dense layers per block.
        bn_size: the bottleneck 1x1 convolution of a dense layer has ``bn_size * growth_rate`` channels.
        hidden_act, b, normalize_weights, use_bias, stem_pool, classify_before_pooling, logit_bias, loss, image_size,
            crop_pct, resample: as in ``BcosResNetConfig``.
    """

    model_type = "bcos_densenet"

    def __init__(
        self,
        num_channels: int = 3,
        num_init_features: int = 64,
        growth_rate: int = 32,
        block_config: list[int] | None = None,
        bn_size: int = 4,
        batch_norm_eps: float = 1e-5,
        hidden_act: str | None = "relu",
        b: float = 2.0,
        normalize_weights: bool = False,
        use_bias: bool = False,
        stem_pool: str = "avg",
        classify_before_pooling: bool = True,
        logit_bias: float | None = None,
        loss: str = "bce",
        image_size: int = 224,
        crop_pct: float = 0.875,
        resample: int = 3,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        block_config = list(block_config if block_config is not None else [6, 12, 24, 16])
        if not block_config or min(block_config) < 1:
            raise ValueError(f"block_config must list at least one block of at least one layer, got {block_config}.")
        if hidden_act not in ("relu", None):
            raise ValueError(f"hidden_act must be 'relu' or None (no activation), got {hidden_act!r}.")
        if stem_pool not in ("max", "avg"):
            raise ValueError(f"stem_pool must be 'max' or 'avg', got {stem_pool!r}.")
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        self.num_channels = num_channels
        self.num_init_features = num_init_features
        self.growth_rate = growth_rate
        self.block_config = block_config
        self.bn_size = bn_size
        self.batch_norm_eps = batch_norm_eps
        self.hidden_act = hidden_act
        self.b = float(b)
        self.normalize_weights = normalize_weights
        self.use_bias = use_bias
        self.stem_pool = stem_pool
        self.classify_before_pooling = classify_before_pooling
        self.logit_bias = logit_bias
        self.loss = loss
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.resample = resample
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def stage_channels(self) -> list[tuple[int, int]]:
        """(input, output) channels of each dense block (before its transition)."""
        channels, result = self.num_init_features, []
        for i, layers in enumerate(self.block_config):
            out = channels + layers * self.growth_rate
            result.append((channels, out))
            channels = out // 2 if i < len(self.block_config) - 1 else out
        return result

    @property
    def num_features(self) -> int:
        """Channels of the final features, which the classifier reads."""
        return self.stage_channels[-1][1]

    @property
    def resolved_logit_bias(self) -> float:
        """The constant added to the logits: ``logit_bias``, or ``-log(C - 1)`` when it is ``None``."""
        if self.logit_bias is not None:
            return float(self.logit_bias)
        return -math.log(self.num_labels - 1) if self.num_labels > 1 else 0.0
