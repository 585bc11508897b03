"""What every B-cos ``PreTrainedModel`` shares: weight initialisation, explanation mode, saving with remote code
and processor, and the entry point to B-cosification.

Hub-facing: torch, transformers and sibling files only. B-cosification itself (reading standard checkpoints) is not
part of the remote code; :meth:`BcosPreTrainedModel.from_pretrained_standard` finds it in the ``bcos_zoo`` package.
"""

import importlib
import os

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .bcos_layers import BcosLayerNorm, BcosLinear, explanation_mode


class BcosPreTrainedModel(PreTrainedModel):
    """Base class of the B-cos models: the parts that do not depend on the architecture."""

    main_input_name = "pixel_values"
    # the bcos_zoo.conversion function that B-cosifies a standard checkpoint into this class
    _standard_converter: str = ""

    @property
    def _initializer_range(self) -> float:
        config = getattr(self.config, "vision_config", self.config)
        return config.initializer_range

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models (a CLIP text tower) initialise themselves; this covers the B-cos modules and plain linears.
        std = self._initializer_range
        if isinstance(module, (BcosLinear, nn.Linear)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BcosLayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        for name in ("cls_token", "position_embeddings"):
            parameter = getattr(module, name, None)
            if isinstance(parameter, nn.Parameter):
                init.trunc_normal_(parameter, mean=0.0, std=std)
        if isinstance(getattr(module, "logit_scale", None), nn.Parameter):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    def explanation_mode(self):
        """Context manager: detach every dynamic factor, making the model a dynamic linear map ``W(x) x + c``."""
        return explanation_mode(self)

    def default_image_processor(self):
        """The image processor saved beside the weights: resizes and rescales to [0, 1], never normalises."""
        raise NotImplementedError

    def _save_processors(self, save_directory: str | os.PathLike) -> None:
        self.default_image_processor().save_pretrained(save_directory)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights, config, remote code and the processor, so that the folder loads with the Auto classes."""
        module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = getattr(self.config, "auto_map", None) or {}
        self.config.auto_map = {**auto_map, "AutoModel": f"{module}.{type(self).__name__}"}
        if kwargs.get("is_main_process", True):
            os.makedirs(save_directory, exist_ok=True)
            self._save_processors(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained_standard(
        cls,
        source,
        b: float = 2.0,
        bias: str = "remove",
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
        **config_overrides,
    ):
        """B-cosify a standard pretrained model (a local folder, a Hub id or a loaded model).

        At ``b=1, bias="keep"`` the result computes the source's outputs exactly. The source's mean/std normalisation
        is folded into the first layer; ``image_mean``/``image_std`` override what the source's processor says.
        ``bias="remove"`` drops every bias that adds a constant to the output (the paper's choice). Extra keyword
        arguments override config fields. Which sources each class takes: see its ``_standard_converter`` in
        ``bcos_zoo.conversion``.
        """
        try:
            conversion = importlib.import_module("bcos_zoo.conversion")
        except ImportError:
            raise ImportError(
                f"{cls.__name__}.from_pretrained_standard needs the bcos_zoo package: pip install bcos_zoo"
            ) from None
        convert = getattr(conversion, cls._standard_converter)
        return convert(cls, source, b=b, bias=bias, image_mean=image_mean, image_std=image_std, **config_overrides)
