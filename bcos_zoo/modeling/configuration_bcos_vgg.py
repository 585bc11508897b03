"""Configuration of the B-cos VGG."""

import math

from transformers import PretrainedConfig


class BcosVGGConfig(PretrainedConfig):
    """Configuration of :class:`BcosVGGForImageClassification`.

    A VGG is stages of 3x3 convolutions, each stage ending in 2x2 average pooling, then two "fully connected" layers
    and the classifier, here all B-cos convolutions that slide over the feature map (the first one with a
    ``head_kernel_size`` window: VGG's fully connected layer over the 7x7 map of a 224 image). The defaults are the
    authors' B-cos VGG-11 with uncentred BatchNorm (the ``bcos`` package's ``vgg11_bnu``); VGG-13/16/19 are
    ``depths=[2, 2, 2, 2, 2]``, ``[2, 2, 3, 3, 3]``, ``[2, 2, 4, 4, 4]``.

    Args:
        hidden_sizes: channels of each stage's convolutions.
        depths: convolutions per stage.
        head_size: channels of the two fully connected layers.
        head_kernel_size: the window of the first one.
        hidden_act: ``"relu"``, or ``None`` for no activation (the authors' B-cos v2 networks).
        b, normalize_weights, use_bias, classify_before_pooling, logit_bias, loss, image_size, crop_pct, resample:
            as in ``BcosResNetConfig``; ``use_bias`` also gives the fully connected layers biases.
    """

    model_type = "bcos_vgg"

    def __init__(
        self,
        num_channels: int = 3,
        hidden_sizes: list[int] | None = None,
        depths: list[int] | None = None,
        head_size: int = 4096,
        head_kernel_size: int = 7,
        hidden_act: str | None = None,
        batch_norm_eps: float = 1e-5,
        b: float = 2.0,
        normalize_weights: bool = True,
        use_bias: bool = False,
        classify_before_pooling: bool = True,
        logit_bias: float | None = None,
        loss: str = "bce",
        image_size: int = 224,
        crop_pct: float = 0.875,
        resample: int = 3,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        hidden_sizes = list(hidden_sizes if hidden_sizes is not None else [64, 128, 256, 512, 512])
        depths = list(depths if depths is not None else [1, 1, 2, 2, 2])
        if len(hidden_sizes) != len(depths) or not depths or min(depths) < 1:
            raise ValueError(f"hidden_sizes {hidden_sizes} and depths {depths} must list the same stages, each >= 1.")
        if kwargs.pop("stage_pool", "avg") != "avg":  # configs of earlier versions named the pooling
            raise ValueError("stage_pool other than 'avg' is not supported: the B-cos VGG pools by averaging.")
        if hidden_act not in ("relu", None):
            raise ValueError(f"hidden_act must be 'relu' or None (no activation), got {hidden_act!r}.")
        if loss not in ("bce", "cross_entropy"):
            raise ValueError(f"loss must be 'bce' or 'cross_entropy', got {loss!r}.")
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        self.num_channels = num_channels
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.head_size = head_size
        self.head_kernel_size = head_kernel_size
        self.hidden_act = hidden_act
        self.batch_norm_eps = batch_norm_eps
        self.b = float(b)
        self.normalize_weights = normalize_weights
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
