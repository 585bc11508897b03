"""Configuration of the B-cos ConvNeXt."""

import math

from transformers import PretrainedConfig


class BcosConvNextConfig(PretrainedConfig):
    """Configuration of :class:`BcosConvNextForImageClassification`, the B-cos ConvNeXt of the B-cos v2 paper.

    The architecture fields follow transformers' ``ConvNextConfig``; the defaults are the B-cos ConvNeXt-T of the
    authors' ``bcos`` package (ConvNeXt-B: ``hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3]``,
    ``drop_path_rate=0.5``). A block is a 7x7 depthwise B-cos convolution, a normalisation and two 1x1 B-cos
    convolutions (no GELU: the B-cos unit is the non-linearity), scaled per channel and added to its input.

    Args:
        patch_size: kernel and stride of the stem convolution.
        norm_type: ``"position"`` (LayerNorm over the channels at each position: the package's "pn" models) or
            ``"batch"`` (BatchNorm; without ``use_bias`` uncentred, only scaling: the package's "bnu" models).
        layer_norm_eps / batch_norm_eps: the two normalisations' eps.
        layer_scale_init_value: initial per-channel scale of each block's branch (0: no layer scale).
        drop_path_rate: stochastic depth in training, rising linearly from 0 at the first block to this at the last.
        b: the B-cos exponent B.
        use_bias: keep every constant (convolution and normalisation biases, centred BatchNorm, classifier bias);
            without them an explanation accounts for the whole logit except ``logit_bias``.
        classify_before_pooling: apply the classifier at every position and average the logits (the package's
            order) instead of classifying the averaged features.
        logit_bias: a constant added to every logit; ``None`` means ``-log(num_labels - 1)``.
        loss: ``"bce"`` (the papers' uniform-off-label BCE) or ``"cross_entropy"``.
        image_size / crop_pct: what the saved image processor produces: resize the shortest edge to
            ``image_size / crop_pct`` (232 for the package's ConvNeXts), centre-crop ``image_size``.
        resample: the PIL filter of that resize (3 bicubic; 2 bilinear, the package's test transform).
    """

    model_type = "bcos_convnext"

    def __init__(
        self,
        num_channels: int = 3,
        patch_size: int = 4,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        norm_type: str = "position",
        layer_norm_eps: float = 1e-6,
        batch_norm_eps: float = 1e-5,
        layer_scale_init_value: float = 1e-6,
        drop_path_rate: float = 0.1,
        b: float = 2.0,
        use_bias: bool = False,
        classify_before_pooling: bool = True,
        logit_bias: float | None = None,
        loss: str = "bce",
        image_size: int = 224,
        crop_pct: float = 224 / 232,
        resample: int = 3,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [96, 192, 384, 768])
        depths = list(depths if depths is not None else [3, 3, 9, 3])
        if len(hidden_sizes) != len(depths) or not depths or min(depths) < 1:
            raise ValueError(f"hidden_sizes {hidden_sizes} and depths {depths} must list the same stages, >= 1 block.")
        if norm_type not in ("position", "batch"):
            raise ValueError(f"norm_type must be 'position' or 'batch', got {norm_type!r}.")
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must lie in [0, 1), got {drop_path_rate}.")
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.batch_norm_eps = batch_norm_eps
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.b = float(b)
        self.use_bias = use_bias
        self.classify_before_pooling = classify_before_pooling
        self.logit_bias = logit_bias
        self.loss = loss
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.resample = resample
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def resolved_logit_bias(self) -> float:
        """The constant added to the logits: ``logit_bias``, or ``-log(C - 1)`` when it is ``None``."""
        if self.logit_bias is not None:
            return float(self.logit_bias)
        return -math.log(self.num_labels - 1) if self.num_labels > 1 else 0.0
