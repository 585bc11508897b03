"""One fine-tuning run from a recipe: B-cosify, train, evaluate, write the repo folder, and optionally push.

The output folder holds ``checkpoints/`` (the Trainer's, for ``resume``), ``ranks/`` (one report per process),
``results.json`` and ``repo/``: the exact tree that is uploaded (weights as safetensors, config, remote code,
processor, model card and example explanations). ``scripts/finetune.py`` is the command-line face of :func:`finetune`.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PretrainedConfig, set_seed

from ..data.datasets import DatasetSplits, TransformedImages, image_transform, limit, load_dataset_splits
from ..modeling.bcos_layers import BcosLinear
from ..training.trainer import build_trainer, collate_images, training_arguments
from .cards import render_model_card
from .hub import check_push_access, describe_tree, push_folder
from .recipes import Recipe


logger = logging.getLogger(__name__)

BCOS_MODEL_TYPES = {"bcos_vit", "bcos_clip", "bcos_clip_vision_model"}
STANDARD_MEAN_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # ViTImageProcessor's defaults, for sources trained here
EXAMPLE_COUNT = 4


@dataclass
class FinetuneResult:
    """Where things were written and what was measured."""

    output_dir: Path
    repo_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    commit_url: str | None = None


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written (the Trainer writes ``trainer_state.json`` last).

    A run killed while saving leaves a partial folder; resuming from it would fail, so it is skipped.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        (path for path in checkpoint_dir.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()),
        key=lambda path: int(path.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file():
            return str(path)
        logger.warning(f"Skipping {path.name}: it was not completely written (the run stopped while saving).")
    return None


def _model_type(source: str) -> str | None:
    if source == "scratch":
        return None
    config, _ = PretrainedConfig.get_config_dict(source)
    return config.get("model_type")


def set_classes(model, class_names: list[str]) -> None:
    """Name the classes after the data; a source with another number of classes gets a new (B-cos) head."""
    config = model.config
    if config.num_labels != len(class_names):
        logger.warning(f"The source has {config.num_labels} classes, the data {len(class_names)}: new classifier head.")
        old = model.classifier
        model.classifier = BcosLinear(old.in_features, len(class_names), bias=old.bias is not None, b=config.b)
        model.classifier.to(old.weight.device, old.weight.dtype)
        config.num_labels = len(class_names)
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: index for index, name in enumerate(class_names)}


def build_model(recipe: Recipe, class_names: list[str]):
    """The model to train and, for distillation, the frozen teacher. Also the image size the data must have.

    Standard sources are B-cosified with the recipe's B and bias handling; a B-cos checkpoint continues as it is;
    ``task="standard-classification"`` trains a plain transformers ViT (from scratch when the source is "scratch").
    """
    from .. import BcosCLIPModel, BcosViTForImageClassification
    from ..training.clip_distillation import FrozenCLIPTeacher

    model_type = _model_type(recipe.source)
    if recipe.task == "standard-classification":
        from transformers import ViTConfig, ViTForImageClassification

        if recipe.source == "scratch":
            if not recipe.architecture:
                raise ValueError(f"recipe {recipe.name!r} trains from scratch but gives no architecture")
            config = ViTConfig(**recipe.architecture, num_labels=len(class_names))
            model = ViTForImageClassification(config)
        else:
            model = ViTForImageClassification.from_pretrained(recipe.source, num_labels=len(class_names))
        model.config.id2label = dict(enumerate(class_names))
        model.config.label2id = {name: index for index, name in enumerate(class_names)}
        return model, None, model.config.image_size
    if recipe.task == "clip-distillation":
        from transformers import CLIPModel

        if model_type in BCOS_MODEL_TYPES:
            raise ValueError(
                "clip-distillation starts from the original CLIP checkpoint, which is also the teacher; "
                "to continue an interrupted run, use --resume with the same --output-dir."
            )
        from transformers import AutoImageProcessor

        model = BcosCLIPModel.from_pretrained_standard(recipe.source, b=recipe.b, bias=recipe.bias)
        processor = AutoImageProcessor.from_pretrained(recipe.source)  # the teacher sees what it was trained on
        teacher = FrozenCLIPTeacher(
            CLIPModel.from_pretrained(recipe.source), image_mean=processor.image_mean, image_std=processor.image_std
        )
        return model, teacher, model.vision_config.image_size
    if recipe.task != "classification":
        raise ValueError(f"unknown task {recipe.task!r}: classification, clip-distillation, standard-classification")
    if recipe.source == "scratch":  # a B-cos ViT trained from scratch: the papers' baseline for B-cosification
        from ..modeling.configuration_bcos_vit import BcosViTConfig

        if not recipe.architecture:
            raise ValueError(f"recipe {recipe.name!r} trains from scratch but gives no architecture")
        config = BcosViTConfig(**recipe.architecture, b=recipe.b, num_labels=len(class_names))
        model = BcosViTForImageClassification(config)
    elif model_type in BCOS_MODEL_TYPES:
        model = BcosViTForImageClassification.from_pretrained(recipe.source)
    else:
        model = BcosViTForImageClassification.from_pretrained_standard(recipe.source, b=recipe.b, bias=recipe.bias)
    set_classes(model, class_names)
    return model, None, model.config.image_size


def source_model(recipe: Recipe):
    """The standard source as an exactly equivalent B-cos model (B=1, biases kept): it takes [0, 1] images like
    the fine-tuned model, so both are measured by the same code on the same pixels."""
    from .. import BcosCLIPModel, BcosViTForImageClassification

    if recipe.source == "scratch" or _model_type(recipe.source) in BCOS_MODEL_TYPES:
        return None
    cls = BcosCLIPModel if recipe.task == "clip-distillation" else BcosViTForImageClassification
    return cls.from_pretrained_standard(recipe.source, b=1.0, bias="keep")


def prompt_embeds(model, class_names: list[str]) -> torch.Tensor:
    """Normalised text embeddings of ``a photo of a <class>.`` for zero-shot classification."""
    embeds = model._encode_prompts([f"a photo of a {name}." for name in class_names])
    return embeds / embeds.norm(dim=-1, keepdim=True)


@torch.no_grad()
def mean_embedding_cosine(model, teacher, dataset, batch_size: int) -> float:
    """How closely the B-cos tower reproduces the original's image embeddings (1 = identical directions)."""
    device = next(model.parameters()).device
    teacher.to(device)
    total, count = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    for batch in tqdm(loader, desc="embedding cosine", leave=False):
        pixel_values = batch["pixel_values"].to(device)
        student = model.get_image_features(pixel_values=pixel_values).pooler_output
        total += float(torch.cosine_similarity(student, teacher.teacher_embeds(pixel_values), dim=-1).sum())
        count += len(pixel_values)
    return total / max(count, 1)


def evaluate_run(model, recipe: Recipe, data: DatasetSplits, eval_dataset, teacher=None) -> dict[str, float]:
    """Accuracy of the trained model and of its standard source, measured alike (zero-shot for CLIP)."""
    from ..evaluation.localisation import bcos_classifier, predict

    batch_size = recipe.batch_size
    metrics: dict[str, float] = {}
    source = source_model(recipe) if recipe.task != "standard-classification" else None
    device = next(model.parameters()).device
    model.eval()

    def accuracy(classify) -> float:
        return predict(classify, eval_dataset.pairs, eval_dataset.transform, batch_size, device).accuracy()

    if recipe.task == "clip-distillation":
        metrics["embedding_cosine"] = mean_embedding_cosine(model, teacher, eval_dataset, batch_size)
        if recipe.label_column and data.class_names:
            texts = prompt_embeds(model, data.class_names).to(device)

            def zero_shot(clip):
                return lambda images: clip.get_image_features(pixel_values=images).pooler_output @ texts.T

            metrics["zero_shot_accuracy"] = accuracy(zero_shot(model))
            if source is not None:
                metrics["source_zero_shot_accuracy"] = accuracy(zero_shot(source.to(device).eval()))
        return metrics
    metrics["accuracy"] = accuracy(bcos_classifier(model))
    if source is not None and source.config.num_labels == len(data.class_names):
        metrics["source_accuracy"] = accuracy(bcos_classifier(source.to(device).eval()))
    return metrics


def write_examples(model, recipe: Recipe, data: DatasetSplits, eval_dataset, folder: Path) -> list[str]:
    """Explain a few validation images and save panels (input | explanation | contributions) as PNG."""
    from ..visualize import explanation_panel

    folder.mkdir(parents=True, exist_ok=True)
    count = min(EXAMPLE_COUNT, len(eval_dataset))
    pixel_values = torch.stack([eval_dataset[i]["pixel_values"] for i in range(count)])
    pixel_values = pixel_values.to(next(model.parameters()).device)
    if recipe.task == "clip-distillation":
        texts = prompt_embeds(model, data.class_names) if recipe.label_column and data.class_names else None
        if texts is None:
            return []
        explanation = model.explain(pixel_values, text_embeds=texts)
    else:
        explanation = model.explain(pixel_values)
    scale = max(1, 224 // pixel_values.shape[-1])
    panels = [explanation_panel(pixel_values, explanation, index, scale=scale) for index in range(count)]
    names = []
    for index, panel in enumerate(panels):
        name = f"explanation_{index}.png"
        panel.save(folder / name)
        names.append(name)
    return names


def save_repo(model, recipe: Recipe, repo_dir: Path, metrics, data: DatasetSplits, examples: list[str], repo_id: str):
    """Weights, config, remote code, processor, example images and the model card: the tree a push uploads."""
    model.save_pretrained(repo_dir)
    if recipe.task == "standard-classification":
        from transformers import ViTImageProcessor

        size = model.config.image_size
        mean, std = STANDARD_MEAN_STD
        ViTImageProcessor(size={"height": size, "width": size}, image_mean=mean, image_std=std).save_pretrained(
            repo_dir
        )
        return
    card = render_model_card(
        recipe,
        repo_id=repo_id,
        metrics=metrics,
        dataset_id=data.name,
        dataset_name=data.name,
        example_image=f"examples/{examples[0]}" if examples else "",
    )
    card.save(repo_dir / "README.md")


def finetune(
    recipe: Recipe,
    output_dir: str | Path,
    resume: bool = False,
    push: bool = False,
    hub_model_id: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    device: str | None = None,
    eval_each_epoch: bool = False,
) -> FinetuneResult:
    """Run a recipe end to end; see the module docstring for what lands where."""
    output_dir = Path(output_dir)
    repo_id = hub_model_id or recipe.hub_model_id
    if push and not dry_run:
        check_push_access(repo_id)  # fail before hours of training, not after
    checkpoint_dir = output_dir / "checkpoints"
    last_checkpoint = last_complete_checkpoint(checkpoint_dir)
    if last_checkpoint and not resume:
        raise ValueError(
            f"{checkpoint_dir} holds checkpoints of an earlier run ({Path(last_checkpoint).name}); pass --resume to "
            "continue it, or choose another --output-dir. Nothing was changed."
        )
    if resume and not last_checkpoint:
        logger.warning(f"--resume: no checkpoint in {checkpoint_dir}, starting from the beginning.")

    set_seed(recipe.seed)
    data = load_dataset_splits(recipe.dataset, recipe.image_column, recipe.label_column)
    model, teacher, image_size = build_model(recipe, data.class_names)
    mean, std = STANDARD_MEAN_STD if recipe.task == "standard-classification" else ((0.0,) * 3, (1.0,) * 3)
    train_dataset = TransformedImages(
        limit(data.train, recipe.max_train_samples),
        image_transform(image_size, training=True, crop_scale=recipe.crop_scale, mean=mean, std=std),
        seed=recipe.seed,
    )
    eval_dataset = TransformedImages(
        limit(data.validation, recipe.max_eval_samples), image_transform(image_size, training=False, mean=mean, std=std)
    )
    arguments = training_arguments(recipe, checkpoint_dir, device=device, eval_each_epoch=eval_each_epoch)
    trainer = build_trainer(
        model, recipe, arguments, train_dataset, eval_dataset, teacher=teacher, report_folder=output_dir / "ranks"
    )
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
    train_seconds = time.perf_counter() - start
    if not trainer.is_world_process_zero():
        return FinetuneResult(output_dir, None)

    model = trainer.model
    metrics = {
        "train_seconds": train_seconds,
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second", 0.0),
        "train_loss": train_output.training_loss,
        **evaluate_run(model, recipe, data, eval_dataset, teacher),
    }
    if recipe.task == "standard-classification":
        metrics["source_accuracy"] = metrics["accuracy"]
    repo_dir = output_dir / "repo"
    examples = []
    if recipe.task != "standard-classification":
        examples = write_examples(model, recipe, data, eval_dataset, repo_dir / "examples")
    save_repo(model, recipe, repo_dir, metrics, data, examples, repo_id)
    history = [entry for entry in trainer.state.log_history if "eval_loss" in entry or "eval_accuracy" in entry]
    results = {"recipe": asdict(recipe), "repo_id": repo_id, "metrics": metrics, "eval_history": history}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))

    result = FinetuneResult(output_dir, repo_dir, metrics)
    if dry_run:
        print(f"Dry run: {repo_dir} is the exact tree a push to {repo_id} would upload:")
        print("\n".join(f"  {line}" for line in describe_tree(repo_dir)))
    elif push:
        result.commit_url = push_folder(repo_dir, repo_id, private=private, commit_message=f"{recipe.name}: {metrics}")
    return result
