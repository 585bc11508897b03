"""Configuration of the B-cos CLIP ResNet image tower."""

from transformers import PretrainedConfig

from .configuration_bcos_clip import BcosCLIPConfig, register_vision_config


class BcosCLIPResNetConfig(PretrainedConfig):
    """Configuration of a B-cos CLIP ResNet image tower (OpenAI CLIP's ``ModifiedResNet``) and its projection. The
    defaults are CLIP RN50's; ``width`` and ``depths`` give the other CLIP ResNets (RN101: depths ``[3, 4, 23, 3]``).

    Args:
        width: channels after the stem (its first two convolutions have half); stage ``i`` ends with ``4 * width *
            2**i`` channels, which the attention pool after the last stage works on (``32 * width`` for four).
        depths: bottleneck blocks per stage.
        num_attention_heads: heads of the attention pool.
        image_size: the input size the position embedding of the attention pool is made for (one position per
            32x32 pixels with four stages, plus the mean token's).
        projection_dim: width of the image embedding (the joint image-text space).
        b: the B-cos exponent (1 = the original convolutions and projections).
        use_bias: keep every constant: BatchNorm's mean and shift, the value projection's bias. Without them (the
            B-cosification paper's recipe) BatchNorm only scales.
        attention_qk_bias: biases of the query and key projections (they only shape the attention matrix).
        use_position_embeddings: add the attention pool's position embedding (a constant: the paper removes it).
        projection_bias: a bias on the projection to the joint space (the source's, kept for exactness).
    """

    model_type = "bcos_clip_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        width: int = 64,
        depths: list[int] | None = None,
        num_attention_heads: int = 32,
        image_size: int = 224,
        projection_dim: int = 1024,
        b: float = 2.0,
        use_bias: bool = False,
        attention_qk_bias: bool = False,
        use_position_embeddings: bool = False,
        projection_bias: bool = False,
        batch_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.num_channels, self.width, self.depths = num_channels, width, list(depths or [3, 4, 6, 3])
        if width % 2 or self.pooled_size % num_attention_heads:
            raise ValueError(
                f"width must be even and the last stage's {self.pooled_size} channels a multiple of "
                f"num_attention_heads ({num_attention_heads}); got width {width}."
            )
        if not 1 <= float(b) < float("inf"):  # NaN fails too; a number in a string (a hand-edited config) is one
            raise ValueError(f"b must be a finite number >= 1, got {b}.")
        self.num_attention_heads = num_attention_heads
        self.image_size = image_size
        self.projection_dim = projection_dim
        self.b = float(b)
        self.use_bias = use_bias
        self.attention_qk_bias = attention_qk_bias
        self.use_position_embeddings = use_position_embeddings
        self.projection_bias = projection_bias
        self.batch_norm_eps = batch_norm_eps
        self.initializer_range = initializer_range
        self.hidden_act = "relu"  # what the shared convolution-BatchNorm-ReLU unit reads
        self.normalize_weights = False
        super().__init__(**kwargs)

    @property
    def pooled_size(self) -> int:
        """Width of the attention pool's output, which the visual projection maps into the joint space."""
        return 4 * self.width * 2 ** (len(self.depths) - 1)


register_vision_config(BcosCLIPResNetConfig)
__all__ = ["BcosCLIPConfig", "BcosCLIPResNetConfig"]
