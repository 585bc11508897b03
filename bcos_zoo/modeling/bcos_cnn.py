"""What the B-cos CNNs share (a CLIP ResNet image tower too): the B-cos BatchNorm, the convolution-BatchNorm-ReLU
unit and checkpointed stages. The CNN classifiers' backbone and head are in ``bcos_cnn_classifier``."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .bcos_layers import BcosConv2d, DynamicModule
from .bcos_pretrained import BcosPreTrainedModel
from .fast_paths import square_conv_norm_act, use_fast_path


class BcosBatchNorm2d(DynamicModule):
    """BatchNorm whose batch statistics are dynamic factors in training, detached in explanation mode so that no
    image's contributions run through another image's pixels (the batch still scales its map). ``centered=False`` is
    the B-cos form without constants, ``x / sqrt(var + eps) * weight``. Running statistics update as in
    ``nn.BatchNorm2d`` (``momentum=None``: their cumulative average), except while a checkpointed stage replays its
    forward or with ``momentum=0`` (frozen)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, centered: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.centered = num_features, eps, momentum, centered
        # inside a stage, True only during the stage's __call__: a checkpoint replay calls its forward directly, and
        # must not count a batch counted already
        self.counts_batches = True
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if centered else None
        self.register_buffer("running_mean", torch.zeros(num_features) if centered else None)
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The running variance and mean in evaluation, else the batch's (updating the running ones)."""
        if not self.training:
            return self.running_var, self.running_mean
        count = x.numel() // x.shape[1]
        if count == 1:
            raise ValueError(f"BatchNorm in training needs more than 1 value per channel, got input size {x.shape}.")
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        if self.counts_batches and self.momentum != 0:  # momentum 0: the running statistics are frozen
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                weight = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_var.lerp_((var * (count / (count - 1))).to(self.running_var.dtype), weight)
                if self.centered:
                    self.running_mean.lerp_(mean.to(self.running_mean.dtype), weight)
        return self.dynamic(var), self.dynamic(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centered and not self.training:  # a fixed affine map, computed as nn.BatchNorm2d does
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        scale, shift = self.scale_and_shift(*self._statistics(x))
        if shift is None:
            return x * scale.view(1, -1, 1, 1)
        return torch.addcmul(shift.view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1))

    def scale_and_shift(self, var: torch.Tensor, mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """BatchNorm as ``x * scale + shift`` for these statistics; ``shift`` is None without centering."""
        scale = torch.rsqrt(var + self.eps) * self.weight
        return scale, (self.bias - mean * scale) if self.centered else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, centered={self.centered}"


class BcosConvNormAct(nn.Module):
    """B-cos convolution, BatchNorm and ReLU (already dynamic-linear: nothing to detach), the unit of every B-cos CNN
    here. ``config.hidden_act=None`` drops the ReLU (the authors' B-cos v2 CNNs)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, config, stride=1, groups=1, activation=True
    ):
        super().__init__()
        options = dict(padding=kernel_size // 2, groups=groups, b=config.b, normalize_weight=config.normalize_weights)
        self.convolution = BcosConv2d(in_channels, out_channels, kernel_size, stride, **options)
        self.normalization = BcosBatchNorm2d(out_channels, eps=config.batch_norm_eps, centered=config.use_bias)
        self.activation = activation and config.hidden_act is not None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        conv, norm = self.convolution, self.normalization
        inference = not (self.training or torch.is_grad_enabled() or conv.detach_dynamic or norm.detach_dynamic)
        if inference and conv.b == 2 and conv.bias is None and use_fast_path("conv_norm_act", hidden_states):
            return square_conv_norm_act(self, hidden_states)
        hidden_states = norm(conv(hidden_states))
        return F.relu(hidden_states) if self.activation else hidden_states


class BcosCNNStage(GradientCheckpointingLayer):
    """A stage of a B-cos CNN, recomputed in the backward pass under gradient checkpointing. The replay must not
    update BatchNorm's running statistics again: a call through the module counts the batch, the replay does not."""

    def __call__(self, *args, **kwargs):
        norms = [module for module in self.modules() if isinstance(module, BcosBatchNorm2d)]
        for norm in norms:
            norm.counts_batches = True
        try:
            return super().__call__(*args, **kwargs)
        finally:
            for norm in norms:
                norm.counts_batches = False


def stem_pool(kind: str) -> nn.Module:
    """The 3x3 stride-2 pooling after a CNN stem: ``"max"`` (the source's) or ``"avg"`` (the B-cos recipe)."""
    if kind not in ("max", "avg"):
        raise ValueError(f"stem_pool must be 'max' or 'avg', got {kind!r}.")
    return (nn.MaxPool2d if kind == "max" else nn.AvgPool2d)(kernel_size=3, stride=2, padding=1)


class BcosCNNPreTrainedModel(BcosPreTrainedModel):
    """What the B-cos CNNs share: initialisation of convolutions and BatchNorm, and the image processor."""

    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # no attention implementation is used here, so any that a composite model asks of its parts (a CLIP tower) holds
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, BcosConv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BcosBatchNorm2d):
            init.ones_(module.weight)
            init.ones_(module.running_var)
            for tensor in (module.bias, module.running_mean, module.num_batches_tracked):
                if tensor is not None:
                    init.zeros_(tensor)
        else:
            super()._init_weights(module)
