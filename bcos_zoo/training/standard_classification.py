"""Training a standard (not B-cos) transformers image classifier, from scratch or from a checkpoint: the sources that
the offline recipes and the reproductions B-cosify (a ViT, or another family's model named by
``architecture["model_type"]``, e.g. ``"resnet"``). It sees normalised images, as standard models do."""

from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.image_processing_utils import BaseImageProcessor

from ..conversion.common import bcos_crop, vit_default_normalization
from ..data.preprocessing import ImageTransform, ProcessorTransform, model_channels, training_transform
from ..families import family_of
from ..modeling.bcos_pretrained import resizing_processor
from .classification import BcosClassification, check_classes, name_classes
from .task import CardFields


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a standard model trained here normalises with: transformers' ViT default."""
    return vit_default_normalization(model_channels(model))


class StandardClassification(BcosClassification):
    """Cross-entropy training of a transformers image classifier (``source="scratch"`` with an ``architecture``, or a
    checkpoint). Its processor normalises with mean = std = 0.5 and otherwise prepares images as the model's family
    does (``Family.processor``: a ViT's squashes the image to its size, a CNN's resizes the shortest edge and crops
    the centre), as the B-cos form of each family does."""

    name = "standard-classification"
    card = CardFields(
        pipeline_tag="image-classification",
        metric_key="accuracy",
        metric_label="Top-1 accuracy",
        objective="cross-entropy",
        tags=(),
        bcos=False,
    )

    def build_model(self, class_names: list[str]) -> nn.Module:
        """From scratch (``architecture``) or from a checkpoint, whose head is replaced when it has another number of
        classes than the data (as the classification task does, :func:`name_classes`)."""
        check_classes(class_names)
        recipe = self.recipe
        if recipe.source == "scratch":
            if not recipe.architecture:
                raise ValueError(f"recipe {recipe.name!r} trains from scratch but gives no architecture")
            architecture = dict(recipe.architecture)
            model_type = architecture.pop("model_type", "vit")
            config = AutoConfig.for_model(model_type, **architecture, num_labels=len(class_names))
            model = AutoModelForImageClassification.from_config(config)
        else:
            model = AutoModelForImageClassification.from_pretrained(recipe.source)
        model = name_classes(model, class_names)
        # a forward that takes **kwargs but not num_items_in_batch (transformers' ResNet) would leave its loss
        # unscaled for gradient accumulation: the Trainer then divides a batch's mean loss by the steps itself
        model.accepts_loss_kwargs = False
        return model

    def source_model(self) -> nn.Module | None:
        return None

    def image_processor(self, model: nn.Module) -> BaseImageProcessor:
        """Resize and normalise as the family's B-cos processor resizes by default, without a crop (a ViT squashes the
        whole image, as transformers' ViT processor; a CNN crops all of a square image, bicubic); a B-cos model
        B-cosified from it reads the same resize from this processor."""
        family = family_of(model)
        if family is None or not family.posthoc_methods:  # the transformers classifiers the baselines explain
            raise ValueError(f"A standard {model.config.model_type} classifier is not the source of any B-cos family.")
        mean, std = normalization(model)
        config_class = family.classifier.config_class
        crop_pct, resample = bcos_crop(config_class, None), config_class().resample
        return resizing_processor(model.config.image_size, crop_pct, resample, image_mean=mean, image_std=std)

    def train_transform(self, model: nn.Module) -> ImageTransform:
        mean, std = normalization(model)
        size, channels = self.image_size(model), model_channels(model)
        return training_transform(size, self.recipe.crop_scale, mean=mean, std=std, channels=channels)

    def eval_transform(self, model: nn.Module) -> ImageTransform:
        return ProcessorTransform(self.image_processor(model), model_channels(model))

    def evaluate(self, model, data, eval_dataset) -> dict[str, float]:
        metrics = super().evaluate(model, data, eval_dataset)
        metrics["source_accuracy"] = metrics["accuracy"]  # the trained model is itself the standard source
        return metrics

    def explain_examples(self, model, data, pixel_values):
        return None  # a standard model has no exact explanation

    def save_model(self, model: nn.Module, repo_dir: Path) -> None:
        model.save_pretrained(repo_dir)
        self.image_processor(model).save_pretrained(repo_dir)
