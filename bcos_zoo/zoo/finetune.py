"""One fine-tuning run from a recipe: build the model, train, evaluate, write the repo folder, and optionally push.

The steps are the same for every training task; what depends on the task (model, data transforms, ``Trainer``,
evaluation, example pictures, card) is asked of the recipe's :class:`~bcos_zoo.training.task.Task`.

The output folder holds ``checkpoints/`` (the Trainer's, for ``resume``), ``ranks/`` (one report per process),
``results.json`` and ``repo/``: the exact tree that is uploaded (weights as safetensors, config, remote code,
processor, model card and example explanations). ``scripts/finetune.py`` is the command-line face of :func:`finetune`.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import set_seed

from ..data.datasets import limit
from ..training import get_task
from ..training.trainer import trainer_callbacks, training_arguments
from .cards import render_model_card
from .hub import check_push_access, describe_tree, push_folder
from .recipes import Recipe


logger = logging.getLogger(__name__)


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


def finetune(
    recipe: Recipe,
    output_dir: str | Path,
    resume: bool = False,
    push: bool = False,
    private: bool = False,
    dry_run: bool = False,
    device: str | None = None,
    eval_each_epoch: bool = False,
) -> FinetuneResult:
    """Run a recipe end to end; see the module docstring for what lands where."""
    output_dir = Path(output_dir)
    repo_id = recipe.hub_model_id
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
    task = get_task(recipe)
    data = task.load_data()
    model = task.build_model(data.class_names)
    train_dataset = task.dataset(
        limit(data.train, recipe.max_train_samples), task.train_transform(model), seed=recipe.seed
    )
    eval_dataset = task.dataset(limit(data.validation, recipe.max_eval_samples), task.eval_transform(model))
    arguments = training_arguments(
        recipe, checkpoint_dir, device=device, eval_each_epoch=eval_each_epoch, **task.training_arguments()
    )
    trainer = task.build_trainer(
        model,
        arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=task.collate,
        callbacks=trainer_callbacks(recipe, train_dataset, report_folder=output_dir / "ranks"),
    )
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
    train_seconds = time.perf_counter() - start
    if not trainer.is_world_process_zero():
        return FinetuneResult(output_dir, None)

    model = trainer.model.eval()
    metrics = {
        "train_seconds": train_seconds,
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second", 0.0),
        "train_loss": train_output.training_loss,
        **task.evaluate(model, data, eval_dataset),
    }
    repo_dir = output_dir / "repo"
    examples = task.write_examples(model, data, eval_dataset, repo_dir / "examples")
    task.save_model(model, repo_dir)
    if task.card is not None:
        card = render_model_card(
            recipe,
            task.card,
            repo_id=repo_id,
            metrics=metrics,
            dataset_id=data.name,
            dataset_name=data.name,
            example_image=f"examples/{examples[0]}" if examples else "",
        )
        card.save(repo_dir / "README.md")
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
