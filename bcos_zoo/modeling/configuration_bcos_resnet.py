"""Configuration of the B-cos ResNet."""

import math

from transformers import PretrainedConfig


class BcosResNetConfig(PretrainedConfig):
    """Configuration of :class:`BcosResNetForImageClassification`; the architecture fields follow transformers'
    ``ResNetConfig`` (ResNet-18/34 ``layer_type="basic"``, ResNet-50/101/152 ``"bottleneck"``). The defaults are a
    B-cos ResNet-50 as the B-cosification paper trains it.

    Args:
        bottleneck_widths: channels inside each stage's bottlenecks (``None``: ``hidden_size // 4``, ResNet-50's).
        groups: groups of the bottleneck's 3x3 convolution (ResNeXt cardinality).
        downsample_in_bottleneck: stride in the bottleneck's first 1x1 convolution instead of its 3x3 one.
        hidden_act: ``"relu"``, or ``None``: no activation (the authors' B-cos v2 CNNs).
        b: the B-cos exponent (1 = the original convolutions; the papers train at 2).
        normalize_weights: convolutions apply ``w / ||w||`` (the authors' B-cos v2 units), not the pretrained ``w``.
        use_bias: keep every constant (BatchNorm's mean and shift, the classifier bias); without them (the paper's
            recipe) an explanation accounts for the whole logit except ``logit_bias``.
        stem_pool: ``"max"`` (the source's pooling after the stem) or ``"avg"`` (the recipe's).
        classify_before_pooling: classify every position with a 1x1 B-cos convolution and average the logits (the
            recipe's), instead of classifying the averaged features; the two differ for ``b != 1``.
        logit_bias: added to every logit; ``None`` means ``-log(num_labels - 1)``.
        loss: ``"bce"`` (binary cross-entropy with off-target labels ``1/C``, the papers') or ``"cross_entropy"``;
            a ``problem_type`` takes precedence.
        image_size / crop_pct / resample: the saved processor resizes the shortest edge to ``image_size / crop_pct``
            with PIL filter ``resample`` (3 bicubic, 2 bilinear) and centre-crops ``image_size``; the model takes
            any size.
    """

    model_type = "bcos_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        embedding_size: int = 64,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        layer_type: str = "bottleneck",
        bottleneck_widths: list[int] | None = None,
        groups: int = 1,
        hidden_act: str | None = "relu",
        downsample_in_first_stage: bool = False,
        downsample_in_bottleneck: bool = False,
        batch_norm_eps: float = 1e-5,
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
        hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [256, 512, 1024, 2048])
        depths = list(depths if depths is not None else [3, 4, 6, 3])
        bottleneck_widths = list(bottleneck_widths) if bottleneck_widths is not None else None
        if layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"layer_type must be 'basic' or 'bottleneck', got {layer_type!r}.")
        if hidden_act not in ("relu", None):
            raise ValueError(f"hidden_act must be 'relu' or None (no activation), got {hidden_act!r}.")
        if len(hidden_sizes) != len(depths) or len(bottleneck_widths or depths) != len(depths):
            raise ValueError("hidden_sizes, depths and bottleneck_widths must have one entry per stage.")
        if stem_pool not in ("max", "avg"):
            raise ValueError(f"stem_pool must be 'max' or 'avg', got {stem_pool!r}.")
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.layer_type = layer_type
        self.bottleneck_widths = bottleneck_widths
        self.groups = groups
        self.hidden_act = hidden_act
        self.downsample_in_first_stage = downsample_in_first_stage
        self.downsample_in_bottleneck = downsample_in_bottleneck
        self.batch_norm_eps = batch_norm_eps
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
    def stage_bottleneck_widths(self) -> list[int]:
        """Channels inside each stage's bottleneck blocks."""
        return self.bottleneck_widths or [size // 4 for size in self.hidden_sizes]

    @property
    def resolved_logit_bias(self) -> float:
        """The constant added to the logits: ``logit_bias``, or ``-log(C - 1)`` when it is ``None``."""
        if self.logit_bias is not None:
            return float(self.logit_bias)
        return -math.log(self.num_labels - 1) if self.num_labels > 1 else 0.0
