"""What every B-cos ``PreTrainedModel`` shares: losses, initialisation, explanation mode, and saving with its remote
code and processor. B-cosification itself lives in the ``bcos_zoo`` package, not in the remote code."""

import contextlib
import copy
import json
import os
import shutil
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPImageProcessor, PreTrainedModel
from transformers import initialization as init
from transformers.utils import cached_file, logging

from .bcos_layers import BcosLayerNorm, BcosLinear, encode_pixel_values, explanation_mode


logger = logging.get_logger(__name__)

# pipeline("image-explanation", trust_remote_code=True), as a saved classifier's config names it
EXPLANATION_PIPELINE_FILE = "pipeline_bcos_explanation.py"
EXPLANATION_PIPELINE = {"impl": "pipeline_bcos_explanation.ImageExplanationPipeline", "type": "image"}
EXPLANATION_PIPELINE |= {"pt": ["AutoModelForImageClassification"], "tf": []}
# what save_pretrained(push_to_hub=True) passes on to push_to_hub
PUSH_OPTIONS = ("commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags")


def resizing_processor(size: int, crop_pct: float | None, resample: int, **fields) -> CLIPImageProcessor:
    """How the B-cos processors (and the evaluation of their sources) resize: the whole image squashed to ``size``
    squared (``crop_pct=None``, as transformers' ViT processor), or the shortest edge to ``int(size / crop_pct)`` and
    the centre ``size`` cropped, at every size (transformers' ConvNeXt processor skips the crop from 384 px on), with
    PIL filter ``resample``. ``fields``: rescaling and normalisation."""
    square = {"height": size, "width": size}
    resize = square if crop_pct is None else {"shortest_edge": int(size / crop_pct)}
    options = dict(crop_size=square, do_center_crop=crop_pct is not None, do_convert_rgb=False, resample=resample)
    return CLIPImageProcessor(size=resize, **options, **fields)


def uniform_off_label_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The B-cos papers' loss: binary cross-entropy with off-target labels ``1/C`` instead of 0. ``labels`` are class
    indices (N,) or class probabilities (N, C), e.g. from mixup."""
    num_classes = logits.shape[-1]
    if labels.ndim == 1:
        labels = F.one_hot(labels.long(), num_classes)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).clamp_min(1 / num_classes))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """The loss ``config.problem_type`` asks for, with transformers' meanings (one output without one: regression,
    as in transformers); otherwise ``config.loss``: ``"bce"`` (:func:`uniform_off_label_bce`) or ``"cross_entropy"``."""
    labels, num_labels = labels.to(logits.device), logits.shape[-1]
    problem_type = getattr(config, "problem_type", None) or ("regression" if num_labels == 1 else None)
    if problem_type == "multi_label_classification":
        if labels.shape != logits.shape:
            raise ValueError(
                f"multi_label_classification takes multi-hot labels of shape {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if problem_type == "regression":
        labels = labels.to(logits.dtype)
        return F.mse_loss(logits.squeeze(-1), labels.view(-1)) if num_labels == 1 else F.mse_loss(logits, labels)
    if problem_type == "single_label_classification" or config.loss == "cross_entropy":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1).long() if labels.ndim == 1 else labels)
    return uniform_off_label_bce(logits, labels)


class BcosPreTrainedModel(PreTrainedModel):
    """Base class of the B-cos models: the parts that do not depend on the architecture."""

    main_input_name = "pixel_values"
    _standard_converter: Callable | None = None  # B-cosification: set by the bcos_zoo package when it is imported
    # Auto classes a saved folder answers to, where more than the one register_for_auto_class names (which loading as
    # remote code replaces by the Auto class it loaded with)
    _saved_auto_classes: tuple[str, ...] = ()
    accepts_loss_kwargs = False  # the losses are batch means: the Trainer divides by gradient-accumulation steps

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "vision_config", self.config).initializer_range
        if isinstance(module, (BcosLinear, nn.Linear)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, BcosLayerNorm):
            init.ones_(module.weight)
        if isinstance(module, (BcosLinear, nn.Linear, BcosLayerNorm)) and module.bias is not None:
            init.zeros_(module.bias)
        for name in ("cls_token", "position_embeddings"):
            if isinstance(parameter := getattr(module, name, None), nn.Parameter):
                init.trunc_normal_(parameter, mean=0.0, std=std)
        if isinstance(getattr(module, "logit_scale", None), nn.Parameter):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)

    def explanation_mode(self):
        """Context manager: detach every dynamic factor, making the model a dynamic linear map ``W(x) x + c``."""
        return explanation_mode(self)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **options) -> None:
        """transformers' activation checkpointing, whose recomputation of a layer in the backward pass detaches what
        its forward detached: a loss on an explanation (``create_graph=True``) backpropagates after explanation mode
        has ended."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        if not kwargs["use_reentrant"]:  # the only kind that takes a context_fn (and that explanations work with)
            kwargs.setdefault("context_fn", self._checkpoint_contexts)  # a method: a copy's binds the copy
        super().activation_checkpointing_enable(kwargs, **options)

    def _checkpoint_contexts(self) -> tuple:
        """The contexts of a checkpointed layer's forward and of its recomputation, which detaches what the forward
        detached."""
        return contextlib.nullcontext(), explanation_mode(self, detach=None)

    def encode_pixel_values(self, pixel_values: torch.Tensor, eager_message: bool | None = None) -> torch.Tensor:
        """Checked images in [0, 1] with the model's number of channels, in its dtype, encoded as ``[x, 1 - x]`` (see
        ``check_pixel_values``)."""
        num_channels = getattr(self.config, "vision_config", self.config).num_channels
        return encode_pixel_values(pixel_values, num_channels, self.dtype, eager_message)

    def default_image_processor(self) -> CLIPImageProcessor:
        """The image processor saved beside the weights: the source's evaluation resize (the config's ``image_size``,
        ``crop_pct`` and ``resample``; see ``resizing_processor``) and rescaling to [0, 1], never normalisation, which
        the model folds into its first layer."""
        config = self.config
        return resizing_processor(
            config.image_size, config.crop_pct, config.resample, do_rescale=True, do_normalize=False
        )

    def _save_processors(self, save_directory: str | os.PathLike) -> None:
        self.default_image_processor().save_pretrained(save_directory)

    def _extra_code_files(self) -> list[str]:
        """Code a saved folder needs besides what the class's module imports: a classifier's pipeline, found beside
        this module or, for a model loaded as remote code (whose module cache holds only what the model imports), in
        the folder it came from or in its Hub repo at the commit its code was read at, which names the module cache's
        folder: a model loaded at a reviewed revision never saves the pipeline of a later one."""
        if not type(self).__name__.endswith("ForImageClassification"):
            return []
        folder = os.path.dirname(os.path.abspath(__file__))
        if os.path.isfile(here := os.path.join(folder, EXPLANATION_PIPELINE_FILE)):
            return [here]
        try:  # a local folder's revision is ignored
            return [cached_file(self.name_or_path, EXPLANATION_PIPELINE_FILE, revision=os.path.basename(folder))]
        except OSError as error:
            logger.warning(f"The folder is saved without {EXPLANATION_PIPELINE_FILE}, which was not found: {error}")
            return []

    def _auto_map(self) -> dict[str, str]:
        """The ``auto_map`` of a folder holding this class: its config class and the Auto classes that load it."""
        model_module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = {"AutoConfig": f"{type(self.config).__module__.rsplit('.', 1)[-1]}.{type(self.config).__name__}"}
        for auto_class in self._saved_auto_classes or (self._auto_class,):
            if auto_class is not None:
                auto_map[auto_class] = f"{model_module}.{type(self).__name__}"
        return auto_map

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs) -> None:
        """Save weights, config, remote code and processor, so that the folder loads with the Auto classes. Our
        ``auto_map`` replaces, in the saved config.json, the one transformers writes for the registered class. With
        ``push_to_hub``, the saved files go up as ``push_to_hub`` sends them (transformers would upload only those
        it wrote itself: no code, no processor, its own ``auto_map``)."""
        main = kwargs.get("is_main_process", args[0] if args else True)
        if push_to_hub:
            push = {key: kwargs.pop(key) for key in PUSH_OPTIONS if key in kwargs}
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.save_pretrained(save_directory, *args, **kwargs)
            if main:
                self.push_to_hub(repo_id, **push, max_shard_size=kwargs.get("max_shard_size", "50GB"))
            return
        shared, code_files = self.config, self._extra_code_files()
        self.config = copy.deepcopy(shared)  # a config shared with other models stays as it was
        if any(path.endswith(EXPLANATION_PIPELINE_FILE) for path in code_files):  # labels and explanations in one call
            self.config.custom_pipelines = {"image-explanation": EXPLANATION_PIPELINE}
        elif hasattr(self.config, "custom_pipelines"):  # a pipeline the folder cannot hold is not named
            del self.config.custom_pipelines
        try:
            if main:
                os.makedirs(save_directory, exist_ok=True)
                self._save_processors(save_directory)
                for path in code_files:
                    shutil.copy(path, save_directory)
            super().save_pretrained(save_directory, *args, **kwargs)
            if main:
                path = os.path.join(save_directory, "config.json")
                with open(path) as file:
                    saved = json.load(file)
                with open(path, "w") as file:
                    file.write(json.dumps({**saved, "auto_map": self._auto_map()}, indent=2) + "\n")
        finally:
            self.config = shared

    @classmethod
    def from_pretrained_standard(cls, source, b: float = 2.0, bias: str = "remove", **options):
        """B-cosify a standard pretrained model (a local folder, a Hub id or a loaded model); see ``bcos_zoo.families``.

        At ``b=1, bias="keep"`` the result computes the source's outputs exactly. The source's normalisation is folded
        into the first layer (``image_mean``/``image_std`` override its processor's); ``bias="remove"`` drops every
        bias (the paper's choice). Other keyword arguments override config fields. The model comes in eval mode, as
        ``from_pretrained`` gives it (BatchNorm uses the source's statistics; ``model.train()`` to fine-tune).
        """
        if cls._standard_converter is None:
            raise ImportError(
                f"{cls.__name__}.from_pretrained_standard needs the bcos_zoo package, which B-cosifies standard "
                "checkpoints: install it (pip install bcos_zoo) and use the classes it exports."
            )
        return cls._standard_converter(cls, source, b=b, bias=bias, **options).eval()
