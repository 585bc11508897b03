"""B-cos CLIP: a registered B-cos image tower and a B-cos projection beside the original, frozen CLIP text tower (the
B-cosification paper's recipe). A prompt is explained through its cosine with the image embedding, whose norm
explanation mode detaches: the contributions then add up to the cosine."""

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPProcessor, CLIPTextModel
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput, CLIPVisionModelOutput
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .bcos_layers import BcosLinear, DynamicModule
from .bcos_pretrained import BcosPreTrainedModel
from .configuration_bcos_clip import BcosCLIPConfig
from .explanation import BcosExplanation, compute_explanation


logger = logging.get_logger(__name__)

# The B-cos backbones a CLIP image tower can be, by its config's model_type: each takes [0, 1] images in forward (with
# a pooler_output) and has pooled_features(encoded) of [x, 1 - x]-encoded images. A tower is registered by its own
# module (modeling_bcos_clip_vit, modeling_bcos_clip_resnet), which a saved model's auto_map names.
IMAGE_TOWERS: dict[str, tuple[type[nn.Module], str]] = {}
_HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "subfolder", "token")  # where the weights were read from


def register_image_tower(model_type: str, tower: type[nn.Module], module_file: str) -> None:
    """Make ``tower`` the image tower of CLIP models whose vision config has ``model_type``; ``module_file`` (the
    caller's ``__file__``) is the module that a saved model's ``auto_map`` names."""
    IMAGE_TOWERS[model_type] = (tower, module_file)


def _saved(kind: type, model: nn.Module, **options):
    """``kind`` as saved where ``model`` was loaded from, else ``None``."""
    try:
        return kind.from_pretrained(model.name_or_path, **options)
    except (OSError, ValueError, KeyError, ImportError) as error:  # ImportError: a processor needs Pillow
        logger.info(f"No {kind.__name__} could be loaded from {model.name_or_path}: {error}")


class EmbeddingNormalizer(DynamicModule):
    """``z / ||z||`` with ``||z||`` detached in explanation mode: the contributions then add up to the cosine
    ``W(x) x / ||z||`` (through the norm they would sum to 0)."""

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds / self.dynamic(torch.linalg.vector_norm(embeds, dim=-1, keepdim=True).clamp_min(1e-12))


class BcosCLIPPreTrainedModel(BcosPreTrainedModel):
    config_class = BcosCLIPConfig
    base_model_prefix = "bcos_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["BcosViTEmbeddings", "BcosEncoderLayer", "CLIPTextEmbeddings", "CLIPEncoderLayer"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    @property
    def vision_config(self):
        """The image tower's configuration (the config itself for the vision-only model)."""
        return getattr(self.config, "vision_config", self.config)

    def _auto_map(self) -> dict[str, str]:
        """Classes load through the tower's modules, which register the tower: a repo holds its tower and no other."""
        tower = os.path.splitext(os.path.basename(IMAGE_TOWERS[self.vision_config.model_type][1]))[0]
        config_module = type(self.vision_config).__module__.rsplit(".", 1)[-1]
        auto_map = {key: f"{tower}.{value.split('.')[-1]}" for key, value in super()._auto_map().items()}
        return {**auto_map, "AutoConfig": f"{config_module}.{type(self.config).__name__}"}

    def _extra_code_files(self) -> list[str]:
        module_file = IMAGE_TOWERS[self.vision_config.model_type][1]
        return [module_file, *get_relative_import_files(module_file)]

    def _build_image_tower(self, config, projection_dim: int) -> None:
        if config.model_type not in IMAGE_TOWERS:
            raise ValueError(f"No B-cos CLIP image tower for {config.model_type!r}; supported: {sorted(IMAGE_TOWERS)}.")
        self.vision_model = IMAGE_TOWERS[config.model_type][0](config)
        bias = getattr(config, "projection_bias", False)  # an open_clip ResNet's attention pool output has one
        self.visual_projection = BcosLinear(config.pooled_size, projection_dim, bias=bias, b=config.b)
        self.embedding_normalizer = EmbeddingNormalizer()
        self._image_processor = self._tokenizer = None

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Image embeddings of images in [0, 1] as ``pooler_output`` (projected, not normalised), as transformers'
        CLIP returns them."""
        kwargs["return_dict"] = True
        outputs = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        outputs.pooler_output = self.visual_projection(outputs.pooler_output.flatten(1))
        return outputs

    def _encode_prompts(self, text: list[str]) -> torch.Tensor:
        if not hasattr(self, "text_model"):
            raise ValueError(
                f"{type(self).__name__} has no text tower, so it cannot embed prompts: pass text_embeds=, the (K, P) "
                "text embeddings of the source CLIP model, or use BcosCLIPModel, which carries the text tower."
            )
        if (tokenizer := self.tokenizer) is None:
            raise ValueError(
                "explain(text=...) needs the CLIP tokenizer, and this model has none (built from a loaded model or a "
                "folder without one): set `model.tokenizer = CLIPTokenizer.from_pretrained(...)` or pass text_embeds=."
            )
        device = self.text_projection.weight.device
        inputs = tokenizer(text, padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():
            return self.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output

    def _prompt_embeds(self, text: str | Sequence[str] | None, text_embeds, device) -> torch.Tensor:
        """(K, P) unit-norm prompt embeddings from prompts or from given text embeddings, validated."""
        if (text is None) == (text_embeds is None):
            raise ValueError(
                "Pass exactly one of text=[...] (prompts, embedded by the CLIP text tower) or text_embeds= (a (K, P) "
                f"tensor of text embeddings); got {'neither' if text is None else 'both'}."
            )
        if text is not None:
            prompts = [text] if isinstance(text, str) else list(text)
            if not prompts or not all(isinstance(prompt, str) for prompt in prompts):
                raise ValueError("text must be a string or a non-empty list of strings (the prompts to explain).")
            text_embeds = self._encode_prompts(prompts)
        text_embeds = torch.as_tensor(text_embeds).detach()
        text_embeds = text_embeds.reshape(1, -1) if text_embeds.ndim < 2 else text_embeds
        width, (rows, *shape) = self.visual_projection.out_features, text_embeds.shape
        if shape != [width] or rows == 0 or not text_embeds.is_floating_point():
            raise ValueError(
                f"text_embeds must be a floating-point (K, {width}) tensor, one row per prompt (K >= 1), of the source "
                f"CLIP model's text embeddings; got {text_embeds.dtype} {tuple(text_embeds.shape)}."
            )
        return F.normalize(text_embeds.to(device), dim=-1)

    def explain(
        self,
        pixel_values: torch.Tensor,
        text: str | Sequence[str] | None = None,
        text_embeds: torch.Tensor | None = None,
        target: int | torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        create_graph: bool = False,
    ) -> BcosExplanation:
        """Explain the cosine between each image (in [0, 1]) and one prompt exactly: ``contributions.sum((1, 2)) +
        bias`` equals it; ``logits`` are the (N, K) cosines. Prompts are ``text`` (needs the text tower) or (K, P)
        ``text_embeds``; ``target``: None (each image's best match), an int or an (N,) tensor; ``create_graph``: keep
        the graph, so that a loss on the explanation trains the image tower."""
        prompts = self._prompt_embeds(text, text_embeds, self.device)

        def cosines(encoded: torch.Tensor) -> torch.Tensor:
            pooled = self.vision_model.pooled_features(encoded, interpolate_pos_encoding)
            embeds = self.embedding_normalizer(self.visual_projection(pooled))
            return embeds @ prompts.to(embeds.dtype, copy=True).T  # a copy: prompts may come from inference_mode()

        return compute_explanation(self, cosines, pixel_values, target, create_graph, output_name="cosine")

    def default_image_processor(self) -> CLIPImageProcessor:
        """CLIP's resize and centre crop (the source's settings where known), rescaling to [0, 1], no normalisation."""
        size = self.vision_config.image_size
        settings = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}  # crops by default
        settings = self._image_processor.to_dict() if self._image_processor else settings
        return CLIPImageProcessor(**{**settings, "do_rescale": True, "do_normalize": False})

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loading, which reads the tokenizer and image processor saved beside the weights from where they were
        read (revision, subfolder, token, ...) at once: the model keeps no token, which a pickle would carry."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        options = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
        if (args[0] if args else kwargs.get("pretrained_model_name_or_path")) is not None:  # None: a state_dict
            model._image_processor = _saved(CLIPImageProcessor, model, **options)
            if hasattr(model, "text_model"):  # only the image-text model embeds prompts: the tower alone reads none
                # AutoTokenizer (given the config, no remote-code prompt) refuses a folder without a tokenizer, where
                # CLIPTokenizer builds an empty one, which would explain every prompt as the same unknown token
                model._tokenizer = _saved(AutoTokenizer, model, config=model.config, trust_remote_code=False, **options)
        if hasattr(model, "freeze_text_model"):  # loading replaces the parameters frozen in __init__
            model.freeze_text_model()
        return loaded


class BcosCLIPVisionModel(BcosCLIPPreTrainedModel):
    """The B-cos CLIP image tower and projection: embeddings of images in [0, 1] and exact explanations of their
    similarity to prompts given as ``text_embeds`` (the source CLIP model's ``get_text_features``)."""

    input_modalities = ("image",)

    def __init__(self, config):
        super().__init__(config)
        self._build_image_tower(config, config.projection_dim)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding=False, **kwargs) -> CLIPVisionModelOutput:
        """Embeddings of (N, C, H, W) images in [0, 1]: ``image_embeds`` are projected, not normalised."""
        outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **{**kwargs, "return_dict": True})
        return CLIPVisionModelOutput(
            image_embeds=outputs.pooler_output,
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=getattr(outputs, "attentions", None),
        )


class BcosCLIPModel(BcosCLIPPreTrainedModel):
    """B-cos CLIP: the B-cos image tower beside the original, frozen text tower; ``forward`` returns what
    transformers' ``CLIPModel`` does, so ``pipeline("zero-shot-image-classification")`` works with it."""

    main_input_name = "input_ids"
    _saved_auto_classes = ("AutoModel", "AutoModelForZeroShotImageClassification")

    def __init__(self, config: BcosCLIPConfig):
        super().__init__(config)
        self._build_image_tower(config.vision_config, config.projection_dim)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()
        self.freeze_text_model()

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embedding (the main input is ``input_ids``, as in transformers' CLIP)."""
        return self.text_model.get_input_embeddings()

    def freeze_text_model(self) -> None:
        """With ``config.freeze_text_model``, only the image tower learns: no gradient to the text tower, the text
        projection and ``logit_scale``."""
        if self.config.freeze_text_model:
            for module in (self.text_model, self.text_projection, self.logit_scale):
                module.requires_grad_(False)

    @property
    def tokenizer(self):
        """The CLIP tokenizer ``explain(text=...)`` uses: the source's, or the one saved beside the weights."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    @can_return_tuple
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, position_ids=None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Text embeddings as ``pooler_output`` (projected, not normalised), as transformers' CLIP returns them."""
        kwargs["return_dict"] = True
        outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs,
    ) -> CLIPOutput:
        """Zero-shot logits, ``logit_scale.exp()`` times the image-text cosines, and CLIP's contrastive loss with
        ``return_loss``. Without ``input_ids``, the unit-norm image embeddings alone (what distillation trains)."""
        if pixel_values is None:
            raise ValueError("BcosCLIPModel needs pixel_values (images), and input_ids (tokenised prompts) for logits.")
        kwargs["return_dict"] = True
        vision_outputs = self.get_image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        image_embeds = self.embedding_normalizer(vision_outputs.pooler_output)
        if input_ids is None:
            return CLIPOutput(image_embeds=image_embeds, vision_model_output=vision_outputs)
        text_outputs = self.get_text_features(input_ids, attention_mask, position_ids, **kwargs)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.T.to(text_embeds.device) * self.logit_scale.exp()
        loss = None
        if return_loss:
            labels = torch.arange(len(image_embeds), device=logits_per_text.device)
            loss = (F.cross_entropy(logits_per_text.T, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        return CLIPOutput(
            loss=loss,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def _save_processors(self, save_directory: str | os.PathLike) -> None:
        if self.tokenizer is not None:
            CLIPProcessor(self.default_image_processor(), self.tokenizer).save_pretrained(save_directory)
            return
        logger.warning(
            "Saving without a tokenizer (the model has none): the folder will not work with pipeline('zero-shot-"
            "image-classification') until a CLIP tokenizer is saved beside it. Set `model.tokenizer` before saving."
        )
        super()._save_processors(save_directory)


BcosCLIPConfig.register_for_auto_class()
BcosCLIPVisionModel.register_for_auto_class("AutoModel")
BcosCLIPModel.register_for_auto_class("AutoModelForZeroShotImageClassification")
