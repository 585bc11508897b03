"""What the B-cos CNN image classifiers share: the backbone's forward on [0, 1] images, and the classifier with its
loss and exact explanations. A family's module builds its stages from ``bcos_cnn``'s units."""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .bcos_cnn import BcosCNNPreTrainedModel
from .bcos_layers import BcosConv2d
from .bcos_pretrained import classification_loss
from .explanation import BcosExplanation, compute_explanation


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
        """Feature maps of (N, C, H, W) images in [0, 1], of any size the poolings leave a map of."""
        hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        outputs = self.forward_encoded(self.encode_pixel_values(pixel_values), bool(hidden))
        return outputs if (return_dict if return_dict is not None else self.config.return_dict) else outputs.to_tuple()

    def pooled_features(self, encoded: torch.Tensor, *args) -> torch.Tensor:
        """(N, C) pooled features of ``[x, 1 - x]``-encoded images: what a head on the backbone (the projection of a
        CLIP image tower, for a CNN registered as one) reads."""
        return self.forward_encoded(encoded).pooler_output.flatten(1)


class BcosCNNForImageClassification(BcosCNNPreTrainedModel):
    """What the B-cos CNN classifiers share: a 1x1 B-cos convolution as classifier (applied before global average
    pooling with ``classify_before_pooling``, the B-cosification paper's "GAP reorder", else after it), the
    logit bias, the loss and exact explanations. A family's class builds its backbone under ``base_model_prefix``.
    """

    _saved_auto_classes = ("AutoModel", "AutoModelForImageClassification")

    def __init__(self, config, backbone: nn.Module, channels: int):
        super().__init__(config)
        setattr(self, self.base_model_prefix, backbone)
        normalize = getattr(config, "normalize_weights", False)  # the authors' B-cos v2 ResNet, DenseNet, VGG
        self.classifier = BcosConv2d(
            channels, config.num_labels, 1, bias=config.use_bias, b=config.b, normalize_weight=normalize
        )
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
        """Logits of (N, C, H, W) images in [0, 1], of any size the poolings leave a map of, and the loss of
        ``labels``: (N,) class indices, or (N, K) class probabilities (K classes) for the B-cos BCE loss."""
        hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        logits, outputs = self._logits(self.encode_pixel_values(pixel_values), bool(hidden))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        result = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return result if (return_dict if return_dict is not None else self.config.return_dict) else result.to_tuple()

    def explain(
        self, pixel_values: torch.Tensor, target: int | torch.Tensor | None = None, create_graph: bool = False
    ) -> BcosExplanation:
        """Explain one logit per image of (N, C, H, W) images in [0, 1] exactly: ``contributions.sum() + bias ==
        logit``. ``target``: None (each image's top class), an int or an (N,) tensor; ``create_graph``: keep the graph,
        so that a loss on the explanation trains the model."""

        def logits(encoded: torch.Tensor) -> torch.Tensor:
            return self._logits(encoded)[0]

        return compute_explanation(self, logits, pixel_values, target, create_graph)
