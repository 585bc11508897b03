"""B-cos image classification: B-cosify a standard classifier (or continue a B-cos one, or start from scratch) and
train it with the B-cos papers' loss, binary cross-entropy with uniform off-labels, which the model computes itself
from ``labels``."""

import logging

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoConfig, AutoModelForImageClassification, TrainingArguments

from ..data.datasets import DatasetSplits, shown
from ..evaluation.localisation import bcos_classifier, predict
from ..evaluation.report import class_order, for_model
from ..families import bcos_classifier_class
from ..modeling import BcosViTConfig
from ..ports import is_bcos_source, load_bcos_source
from .task import BCOS_MODEL_TYPES, CardFields, Task, source_model_type
from .trainer import ZooTrainer


logger = logging.getLogger(__name__)


def check_classes(class_names: list[str]) -> None:
    """Refuse data a classifier cannot learn from: one class is always right, whatever the model does."""
    if len(class_names) < 2:
        raise ValueError(
            f"a classifier needs at least two classes, the data has {len(class_names)} ({class_names}); an image "
            "folder needs one sub-folder per class, a Hub dataset a label column (--label-column)."
        )


def name_classes(model: nn.Module, class_names: list[str]) -> nn.Module:
    """Name the classes after the data. A model with another number of classes gets a new head: the same model
    with ``num_labels`` changed, every weight but the classifier's copied over (any classifier whose head is its
    ``classifier`` module: every B-cos family, and the transformers classifiers they are B-cosified from)."""
    config = model.config
    if config.num_labels != len(class_names):
        logger.warning(f"The source has {config.num_labels} classes, the data {len(class_names)}: new classifier head.")
        config.num_labels = len(class_names)
        fresh = type(model)(config).to(model.device, model.dtype)
        backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
        missing, _ = fresh.load_state_dict(backbone, strict=False)
        assert all(key.startswith("classifier.") for key in missing), missing
        model = fresh
    else:
        in_data_order(model, class_names)
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: index for index, name in enumerate(class_names)}
    return model


def in_data_order(model: nn.Module, class_names: list[str]) -> None:
    """Reorder a head whose classes are the data's in another order, so that its class ``i`` is the data's class
    ``i``: naming the rows after the data without moving them would start training from a head that scores every
    class under another's name. Classes that cannot be matched by name (unnamed, or named otherwise) keep their
    index, with a warning where they were named otherwise."""
    try:
        order = class_order("The source", model.config.id2label, class_names)
    except ValueError:
        names = [str(model.config.id2label[index]) for index in range(len(class_names))]
        logger.warning(
            f"The source's classes {shown(names)} are not the data's {shown(class_names)} by name: its class i is "
            "renamed after the data's class i and trained from there."
        )
        return
    if order == sorted(order):
        return
    logger.info("The source's classes are the data's in another order: its classifier's rows are reordered.")
    rows = torch.tensor(order)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.startswith("classifier.") and tensor.shape[:1] == rows.shape:
                tensor.copy_(tensor[rows.to(tensor.device)])


def standard_source(recipe) -> str | nn.Module:
    """The recipe's standard source: its folder or Hub id, or the ``bcos`` package's model it names "bcos:<entry>"."""
    return load_bcos_source(recipe.source, recipe.weights) if is_bcos_source(recipe.source) else recipe.source


def accuracy_metrics(eval_prediction) -> dict[str, float]:
    """Top-1 accuracy for ``Trainer.evaluate``."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def classification_accuracy(
    model: nn.Module, eval_dataset: Dataset, batch_size: int, pairs: Dataset | None = None, workers: int | None = None
) -> float:
    """Top-1 accuracy of ``model`` on ``eval_dataset``'s images, seen through its transform (``pairs``: the same
    images labelled as ``model`` numbers the classes, when it numbers them otherwise than the data), read by
    ``workers`` processes (:func:`~bcos_zoo.evaluation.localisation.predict`)."""
    device = next(model.parameters()).device
    classify = bcos_classifier(model.to(device).eval())
    pairs = eval_dataset.pairs if pairs is None else pairs
    return predict(classify, pairs, eval_dataset.transform, batch_size, device, num_workers=workers).accuracy()


def unmatched_classes(id2label: dict, class_names: list[str]) -> str:
    """Why a model's classes cannot be matched with the data's, in words for a model card."""
    names = [str(id2label[index]) for index in range(len(id2label))]
    if len(names) != len(class_names):
        return f"it has {len(names)} classes and the data {len(class_names)}"
    return f"its classes {shown(names)} are not the data's {shown(class_names)}"


class BcosClassification(Task):
    """Fine-tune a B-cosified classifier (or train a B-cos ViT from scratch with ``source="scratch"``)."""

    name = "classification"
    card = CardFields(
        pipeline_tag="image-classification",
        metric_key="accuracy",
        metric_label="Top-1 accuracy",
        objective="BCE with uniform off-labels",
        tags=(),
    )

    def build_model(self, class_names: list[str]) -> nn.Module:
        """A B-cos classifier of any family: from scratch (``architecture``, with a ``model_type`` such as
        ``"bcos_resnet"``; a B-cos ViT without one), a B-cos checkpoint as it is, or a B-cosified standard one."""
        check_classes(class_names)
        recipe = self.recipe
        if recipe.source == "scratch":  # the papers' baseline for B-cosification
            if not recipe.architecture:
                raise ValueError(f"recipe {recipe.name!r} trains from scratch but gives no architecture")
            architecture = dict(recipe.architecture)
            model_type = architecture.pop("model_type", BcosViTConfig.model_type)
            config = AutoConfig.for_model(model_type, **architecture, b=recipe.b, num_labels=len(class_names))
            model = AutoModelForImageClassification.from_config(config)
        elif source_model_type(recipe.source) in BCOS_MODEL_TYPES:
            model = AutoModelForImageClassification.from_pretrained(recipe.source)
        else:
            source = standard_source(recipe)
            model = bcos_classifier_class(source).from_pretrained_standard(source, b=recipe.b, bias=recipe.bias)
        return name_classes(model, class_names)

    def source_model(self) -> nn.Module | None:
        if self.recipe.source == "scratch" or source_model_type(self.recipe.source) in BCOS_MODEL_TYPES:
            return None
        source = standard_source(self.recipe)
        return bcos_classifier_class(source).from_pretrained_standard(source, b=1.0, bias="keep")

    def build_trainer(self, model: nn.Module, arguments: TrainingArguments, **common) -> ZooTrainer:
        return self.trainer_class(model=model, args=arguments, compute_metrics=accuracy_metrics, **common)

    def evaluate(self, model: nn.Module, data: DatasetSplits, eval_dataset: Dataset) -> dict[str, float | str]:
        """Accuracy of the trained model and of its standard source, on the same pixels.

        The source is measured only when it scores the data's classes, matched by name (in any order) as the
        evaluation matches them (:func:`~bcos_zoo.evaluation.report.class_order`): a count alone would score a source
        whose classes sort otherwise against the wrong labels. Otherwise ``source_not_measured`` says why."""
        metrics: dict[str, float | str] = {
            "accuracy": classification_accuracy(model, eval_dataset, self.recipe.batch_size, workers=self.workers)
        }
        source = self.source_model()
        if source is None:
            return metrics
        try:
            pairs = for_model("the standard source", source.config, eval_dataset.pairs, data.class_names)
        except ValueError:
            metrics["source_not_measured"] = unmatched_classes(source.config.id2label, data.class_names)
            return metrics
        metrics["source_accuracy"] = classification_accuracy(
            source, eval_dataset, self.recipe.batch_size, pairs, self.workers
        )
        return metrics

    def explain_examples(self, model, data, pixel_values):
        return model.explain(pixel_values)
