"""B-cos convolutional building blocks: the B-cos convolution, BatchNorm with detachable batch statistics, and what
the B-cos CNN classes (ResNet, DenseNet) share.

A B-cos convolution computes ``|cos(x, w)|^(B-1) * (w * x)`` at every output position, where the cosine is taken
between the weight of that output channel and the input patch the convolution sees there (zero padding included).
With the pretrained, un-normalised weights, ``B = 1`` is exactly the source convolution, which is what makes
B-cosifying a CNN function-preserving. Hub-facing: torch, transformers and sibling files only.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ConvNextImageProcessor
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .bcos_layers import DynamicModule, _is_tracing, cached_derivation, check_pixel_values, encode_inverse
from .bcos_pretrained import BcosPreTrainedModel, classification_loss
from .explanation import BcosExplanation, compute_explanation


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class BcosConv2d(DynamicModule):
    """``out = |cos(x_patch, w_o)|^(B-1) * conv(x, w)_o + bias_o``, with the pretrained, un-normalised ``w``.

    ``||x_patch||`` is the norm of the window the convolution reads at each output position, over the same stride,
    dilation and zero padding, and (for grouped convolutions) over the input channels of the output's group:
    ``sqrt(sum of x^2 over the window + eps)``. At ``b == 1`` this is exactly ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        b: float = 2.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must divide by groups {groups}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.b = float(b)
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def patch_norms(self, x: torch.Tensor) -> torch.Tensor:
        """(N, groups, H', W'): the norm of the input window behind every output position, per group of channels."""
        batch, channels, height, width = x.shape
        if self.groups == 1:
            squares = x.square().sum(dim=1, keepdim=True)
        else:
            squares = x.view(batch, self.groups, channels // self.groups, height, width).square().sum(dim=2)
        kh, kw = self.kernel_size
        if (kh, kw) == (1, 1) and self.padding == (0, 0):
            sums = squares[:, :, :: self.stride[0], :: self.stride[1]]
        elif self.dilation == (1, 1) and 2 * self.padding[0] <= kh and 2 * self.padding[1] <= kw:
            sums = F.avg_pool2d(squares, self.kernel_size, self.stride, self.padding, divisor_override=1)
        else:
            ones = squares.new_ones(self.groups, 1, kh, kw)
            sums = F.conv2d(squares, ones, None, self.stride, self.padding, self.dilation, self.groups)
        return (sums + self.eps).sqrt()

    def weight_norms(self) -> torch.Tensor:
        """(out_channels,): the norm of each output channel's weight."""
        return torch.linalg.vector_norm(self.weight, dim=(1, 2, 3)).clamp_min(1e-12)

    def _per_output(self, per_group: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Broadcast an (N, groups, H', W') tensor against the (N, out_channels, H', W') output."""
        batch, _, height, width = out.shape
        if self.groups == 1:
            return per_group
        return per_group[:, :, None].expand(-1, -1, self.out_channels // self.groups, -1, -1).reshape(out.shape)

    def dynamic_factor(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``|cos|^(B-1)`` at every output position: the input-dependent scale that explanation mode detaches."""
        denominator = self._per_output(self.patch_norms(x), out) * self.weight_norms().view(1, -1, 1, 1)
        abs_cos = out.abs() / denominator
        if self.b != 2:
            abs_cos = abs_cos.clamp_min(1e-12).pow(self.b - 1)
        return abs_cos

    def _dynamic(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self.detach_dynamic else tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.b == 1:
            out = self._conv(x, self.weight)
        elif self.b == 2 and not self.detach_dynamic:
            # (w*x)|w*x| / (|w| |x_patch|): with w / sqrt|w| in the convolution, the weight norm costs nothing on
            # the (large) output; without autograd the scaling runs in place.
            scaled = self._conv(x, self.weight * self.weight_norms().rsqrt().view(-1, 1, 1, 1))
            norms = self._per_output(self.patch_norms(x), scaled)
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                out = scaled * (scaled.abs() / norms)
            else:
                out = scaled.mul_(scaled.abs().div_(norms))
        else:
            out = self._conv(x, self.weight)
            out = out * self._dynamic(self.dynamic_factor(out, x))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        return text + f", b={self.b}, bias={self.bias is not None}"


class BcosBatchNorm2d(DynamicModule):
    """BatchNorm whose batch statistics are detached in explanation mode.

    ``centered=True`` is the standard BatchNorm (in evaluation, a per-channel scale and shift). ``centered=False`` is
    the B-cos form with every constant removed: ``x / sqrt(var + eps) * weight``, no mean subtraction, no shift. In
    training, ``var`` (and the mean) are the batch's: input-dependent factors, detached in explanation mode so that
    each image's explanation depends on that image alone. Running statistics update as in ``nn.BatchNorm2d``, once
    per training forward pass: not again when the backward pass replays a gradient-checkpointed stage.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, centered: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.centered = centered
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if centered else None
        if centered:
            self.register_buffer("running_mean", torch.zeros(num_features))
        else:
            self.running_mean = None
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _dynamic(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach() if self.detach_dynamic else tensor

    @staticmethod
    def _replayed() -> bool:
        """Whether this forward pass runs inside a backward pass: a checkpointed stage recomputed, whose batch the
        running statistics have already counted."""
        return not _is_tracing() and torch._C._current_graph_task_id() != -1

    def batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (biased) variance and mean of the batch; updates the running statistics (see
        :meth:`_replayed`)."""
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        if self._replayed():
            return var, mean
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            unbiased = var * (count / max(count - 1, 1))
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            if self.centered:
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return var, mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        if not self.training:
            if self.centered:
                return F.batch_norm(
                    x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
                )
            return x * (self.weight * (self.running_var + self.eps).rsqrt()).view(shape)
        if self.centered and not self.detach_dynamic:
            running = (None, None)
            if not self._replayed():
                running = (self.running_mean, self.running_var)
                self.num_batches_tracked.add_(1)  # as nn.BatchNorm2d counts
            return F.batch_norm(x, *running, self.weight, self.bias, True, self.momentum, self.eps)
        var, mean = self.batch_statistics(x)
        scale = self._dynamic((var + self.eps).rsqrt()) * self.weight
        if not self.centered:
            return x * scale.view(shape)
        return (x - self._dynamic(mean).view(shape)) * scale.view(shape) + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, centered={self.centered}"


class BcosConvNormAct(nn.Module):
    """B-cos convolution, BatchNorm and (optionally) ReLU: the unit every B-cos CNN here is made of.

    ReLU is already dynamic-linear (``x * 1[x > 0]``): its gradient is the mask, so it needs no detaching.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        config,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        self.convolution = BcosConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
            b=config.b,
        )
        self.normalization = BcosBatchNorm2d(out_channels, eps=config.batch_norm_eps, centered=config.use_bias)
        self.activation = activation

    def _fusable(self, x: torch.Tensor) -> bool:
        conv, norm = self.convolution, self.normalization
        if self.training or conv.b != 2 or conv.bias is not None or conv.detach_dynamic or norm.detach_dynamic:
            return False
        return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, conv.weight, norm.weight)))

    def _fused_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same function at ``b = 2`` without autograd, in fewer passes over the output.

        BatchNorm's scale ``s`` folds into the convolution: with ``a = sign(s) sqrt(|s| / |w|)`` and ``o = (a w) * x``,
        ``o |o| = s (w * x)|w * x| / |w|`` because ``y |y|`` is odd. And ``relu(o |o| / n) = relu(o)^2 / n`` for the
        positive patch norm ``n``, so conv, B-cos factor, BatchNorm and ReLU take three in-place passes.
        """
        conv = self.convolution
        weight, shift = self._folded_weight()
        out = conv._conv(x, weight)
        norms = conv._per_output(conv.patch_norms(x), out)
        if shift is not None:
            out = out.mul_(out.abs().div_(norms)).add_(shift)
            return out.relu_() if self.activation else out
        if self.activation:
            return out.relu_().square_().div_(norms)
        return out.mul_(out.abs().div_(norms))

    def _explainable_folded(self) -> bool:
        conv = self.convolution
        return not self.training and conv.b == 2 and conv.bias is None and conv.detach_dynamic

    def _mask_in_factor(self) -> bool:
        """Whether the ReLU's mask joins the folded factor: with a ReLU and no shift,
        ``relu(o |o| / n) = o relu(o) / n``."""
        return self.activation and not self.normalization.centered

    def folded_factor(self, out: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """The dynamic factor of the folded form, the scale explanation mode detaches: ``|o| / n``, or ``relu(o) / n``
        when it carries the ReLU's mask too (see :meth:`_mask_in_factor`)."""
        return (out.relu() if self._mask_in_factor() else out.abs()) / norms

    def _explain_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Explanation mode in evaluation at ``b = 2``, with BatchNorm folded as in :meth:`_fused_inference`:
        ``o * stop_gradient(|o| / n)`` (+ shift) is the same dynamic linear map as conv, detached factor, BatchNorm,
        in fewer passes forward and backward; without a shift the ReLU is in the factor, and no ReLU is recorded."""
        conv = self.convolution
        # an explanation that differentiates the input alone reads the kept fold; one to be trained through, a live one
        weight, shift = self._folded_weight(live=torch.is_grad_enabled() and not conv.input_gradient_only)
        out = conv._conv(x, weight)
        norms = conv._per_output(conv.patch_norms(x), out)
        out = out * conv._dynamic(self.folded_factor(out, norms))
        if shift is not None:
            out = out + shift
        return F.relu(out) if self.activation and not self._mask_in_factor() else out

    def _folded_weight(self, live: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution weight with BatchNorm's scale folded in (and the shift). ``live``: computed with autograd,
        so that gradients reach the parameters; otherwise kept until any of the tensors they come from changes."""
        conv, norm = self.convolution, self.normalization

        def compute() -> tuple[torch.Tensor, torch.Tensor | None]:
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            factor = scale.sign() * (scale.abs() / conv.weight_norms()).sqrt()
            shift = None if not norm.centered else (norm.bias - norm.running_mean * scale).view(1, -1, 1, 1)
            return conv.weight * factor.view(-1, 1, 1, 1), shift

        if live:
            return compute()
        sources = (conv.weight, norm.weight, norm.running_var, norm.bias, norm.running_mean)
        return cached_derivation(self, "folded", sources, compute)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._fusable(hidden_states):
            return self._fused_inference(hidden_states)
        if self._explainable_folded():
            return self._explain_folded(hidden_states)
        hidden_states = self.normalization(self.convolution(hidden_states))
        return F.relu(hidden_states) if self.activation else hidden_states


def stem_pool(kind: str) -> nn.Module:
    """The 3x3 stride-2 pooling after a CNN stem: ``"max"`` (the source's) or ``"avg"`` (the B-cos recipe)."""
    if kind == "max":
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    raise ValueError(f"stem_pool must be 'max' or 'avg', got {kind!r}.")


class BcosCNNPreTrainedModel(BcosPreTrainedModel):
    """What the B-cos CNNs share: initialisation of convolutions and BatchNorm, and the image processor."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, BcosConv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BcosBatchNorm2d):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        else:
            super()._init_weights(module)

    def default_image_processor(self) -> ConvNextImageProcessor:
        """Resize the shortest edge to ``image_size / crop_pct``, centre-crop ``image_size`` and rescale to [0, 1]
        (how torchvision and timm evaluate their CNNs); no normalisation, the model folds it in."""
        return ConvNextImageProcessor(
            size={"shortest_edge": self.config.image_size},
            crop_pct=self.config.crop_pct,
            do_rescale=True,
            do_normalize=False,
        )


class BcosCNNModel(BcosCNNPreTrainedModel):
    """What the B-cos CNN backbones share: ``forward`` on images in [0, 1] around the family's ``forward_encoded``
    (the backbone on an already ``[x, 1 - x]``-encoded image, which explanations differentiate)."""

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        """Args:
        pixel_values: (N, 3, H, W) images in [0, 1], any size; cast to the model's dtype.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.forward_encoded(encode_inverse(pixel_values.to(self.dtype)), bool(output_hidden_states))
        return outputs if return_dict else outputs.to_tuple()


class BcosCNNForImageClassification(BcosCNNPreTrainedModel):
    """What the B-cos CNN classifiers share: a 1x1 B-cos convolution as classifier (applied before global average
    pooling with ``classify_before_pooling``, the B-cosification paper's "GAP reorder", else after it), the
    logit bias, the loss and exact explanations. A family's class builds its backbone under ``base_model_prefix``.
    """

    _extra_auto_classes = ("AutoModel",)

    def __init__(self, config, backbone: nn.Module, channels: int):
        super().__init__(config)
        setattr(self, self.base_model_prefix, backbone)
        self.classifier = BcosConv2d(channels, config.num_labels, 1, bias=config.use_bias, b=config.b)
        self.post_init()

    def _logits(
        self, encoded: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, BaseModelOutputWithPoolingAndNoAttention]:
        outputs = getattr(self, self.base_model_prefix).forward_encoded(encoded, output_hidden_states)
        if self.config.classify_before_pooling:
            logits = self.classifier(outputs.last_hidden_state).mean(dim=(2, 3))
        else:
            logits = self.classifier(outputs.pooler_output).flatten(1)
        return logits + self.config.resolved_logit_bias, outputs

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        """Args:
        pixel_values: (N, 3, H, W) images in [0, 1], any size; cast to the model's dtype.
        labels: (N,) class indices, or (N, C) class probabilities for the B-cos BCE loss.
        """
        check_pixel_values(pixel_values, self.config.num_channels)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        logits, outputs = self._logits(encode_inverse(pixel_values.to(self.dtype)), bool(output_hidden_states))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        result = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return result if return_dict else result.to_tuple()

    def explain(
        self, pixel_values: torch.Tensor, target: int | torch.Tensor | None = None, create_graph: bool = False
    ) -> BcosExplanation:
        """Explain one logit per image exactly: ``contributions.sum() + bias == logit``.

        Args:
            pixel_values: (N, 3, H, W) images in [0, 1], any size.
            target: the class to explain: ``None`` (each image's top class), an int, or an (N,) tensor.
            create_graph: keep the graph of ``logits``, ``dynamic_weights`` and ``contributions``, so that a loss on
                the explanation trains the model (model guidance, explanation distillation).
        """
        return compute_explanation(
            self,
            lambda encoded: self._logits(encoded)[0],
            pixel_values,
            target,
            num_channels=self.config.num_channels,
            create_graph=create_graph,
        )
