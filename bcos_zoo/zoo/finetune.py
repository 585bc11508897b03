"""One fine-tuning run from a recipe: build the model, train, evaluate, write the repo folder, and optionally push.

The steps are the same for every training task; what depends on the task (model, data transforms, ``Trainer``,
evaluation, example pictures, card) is asked of the recipe's :class:`~bcos_zoo.training.task.Task`.

The output folder holds ``checkpoints/`` (the Trainer's, for ``resume``), ``ranks/`` (one report per process),
``results.json`` and ``repo/``: the exact tree that is uploaded (weights as safetensors, config, remote code,
processor, model card and example explanations). ``scripts/finetune.py`` is the command-line face of :func:`finetune`.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from ..data.datasets import dataset_needs_hub, limit, looks_like_path
from ..ports import bcos_source_entry, is_bcos_source
from ..training import get_task
from ..training.trainer import TrainingClock, mean_training_loss, trainer_callbacks, training_arguments
from .cards import render_model_card
from .hub import check_push_access, describe_tree, hub_repo_exists, hub_unavailable, push_folder
from .recipes import Recipe


logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """Where things were written and what was measured."""

    output_dir: Path
    repo_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    commit_url: str | None = None


def end_process_group(trainer) -> None:
    """Close the data-parallel group on every process once training is over.

    Only the main process evaluates and writes the repo. A rank that left while its process group was still open
    could abort at exit (gloo's threads are destroyed unjoined) and fail the launch; closing the group together
    first lets every rank exit cleanly, and the main process needs no collective afterwards.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        trainer.accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()


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


def source_needs_hub(source: str) -> bool:
    """Whether the source model must come from the Hub; a local path that does not exist is refused here, at once."""
    if source == "scratch":
        return False
    path = Path(source).expanduser()
    if path.is_dir():
        return False
    if path.exists() or looks_like_path(source):
        state = "is a file, not a model folder" if path.exists() else "does not exist"
        raise ValueError(f"--model {source}: the folder {path} {state}; pass a model folder or a Hub model id")
    return True


def check_before_training(recipe: Recipe, push: bool, dry_run: bool) -> None:
    """Everything that can be known to fail before training fails now, in one line: missing folders, and anything
    that needs the Hub (the source, the data, the push) when the Hub cannot be used or does not know the name."""
    if is_bcos_source(recipe.source):
        bcos_source_entry(recipe.source, recipe.weights)  # a standard model of the bcos package and its weights file
    source_on_hub = not is_bcos_source(recipe.source) and source_needs_hub(recipe.source)
    needs, dataset_on_hub = [], dataset_needs_hub(recipe.dataset)
    if source_on_hub:
        needs.append((f"the model {recipe.source!r}", "pass a local model folder with --model"))
    if dataset_on_hub:
        needs.append((f"the dataset {recipe.dataset!r}", "pass a local folder of class sub-folders with --dataset"))
    if push and not dry_run:
        needs.append(("the push", "add --dry-run to write the repo folder without uploading"))
    if not needs:
        return
    reason = hub_unavailable()
    if reason is not None:
        what = " and ".join(name for name, _ in needs)
        fixes = "; ".join(fix for _, fix in needs)
        raise ValueError(f"Cannot use the Hub ({reason}), but {what} need{'s' if len(needs) == 1 else ''} it: {fixes}")
    if push and not dry_run:
        check_push_access(recipe.hub_model_id)  # fail before hours of training, not after
    if source_on_hub and not hub_repo_exists(recipe.source, "model"):
        raise ValueError(
            f"--model {recipe.source!r} is neither a local folder nor a model on the Hub (if it is private, log in "
            "with `hf auth login` or set HF_TOKEN)"
        )
    if dataset_on_hub and not hub_repo_exists(recipe.dataset, "dataset"):
        raise ValueError(
            f"--dataset {recipe.dataset!r} is neither a local folder nor a dataset on the Hub (if it is private, log "
            "in with `hf auth login` or set HF_TOKEN); a local dataset is a folder of class sub-folders"
        )


# everything a run writes into its --output-dir, and the recipe.json a reproduction keeps beside a run
RUN_OUTPUTS = ("checkpoints", "repo", "ranks", "results.json", "recipe.json")


def check_output_dir(output_dir: Path) -> None:
    """Refuse an --output-dir that is a file, or a folder that holds anything but a run's outputs (a dataset, say):
    the run would mix its outputs into it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output-dir {output_dir} is a file; pass a folder (a missing one is created).")
    if output_dir.is_dir():
        foreign = sorted(
            p.name for p in output_dir.iterdir() if p.name not in RUN_OUTPUTS and not p.name.startswith(".")
        )
        if foreign:
            raise ValueError(
                f"--output-dir {output_dir} holds other files ({', '.join(foreign[:5])}), and a run writes "
                f"{', '.join(RUN_OUTPUTS[:4])} there: choose an empty or a new folder. Nothing was changed."
            )


def finished_run(output_dir: Path, last_checkpoint: str | None) -> "FinetuneResult | None":
    """The result of a run that already reached its last step (``results.json`` written after it), else ``None``."""
    results, state = output_dir / "results.json", Path(last_checkpoint or "") / "trainer_state.json"
    if last_checkpoint is None or not results.is_file() or not state.is_file():
        return None
    progress = json.loads(state.read_text())
    if progress.get("global_step", 0) < progress.get("max_steps", float("inf")):
        return None
    return FinetuneResult(output_dir, output_dir / "repo", json.loads(results.read_text())["metrics"])


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
    check_output_dir(output_dir)
    repo_id = recipe.hub_model_id
    checkpoint_dir = output_dir / "checkpoints"
    last_checkpoint = last_complete_checkpoint(checkpoint_dir)
    if last_checkpoint and not resume:
        raise ValueError(
            f"{checkpoint_dir} holds checkpoints of an earlier run ({Path(last_checkpoint).name}); pass --resume to "
            "continue it, or choose another --output-dir. Nothing was changed."
        )
    if resume and (done := finished_run(output_dir, last_checkpoint)) is not None:
        print(f"{output_dir} holds a finished run ({Path(last_checkpoint).name}); nothing to resume, nothing changed.")
        return done
    check_before_training(recipe, push, dry_run)
    if resume and last_checkpoint:
        print(f"Resuming from {last_checkpoint}")
    elif resume:
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
    clock = TrainingClock(last_checkpoint if resume else None)
    trainer = task.build_trainer(
        model,
        arguments,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=task.collate,
        callbacks=[*trainer_callbacks(recipe, train_dataset, report_folder=output_dir / "ranks"), clock],
    )
    if resume and last_checkpoint:
        # The Trainer reads a checkpoint's weights file by the names it was saved under; a transformers release that
        # renames a model's modules on load (5.17 for ViT) would leave every weight unread and train on at random
        # initialisation. Loading as from_pretrained does first makes the names match; the Trainer's load then agrees.
        model.load_state_dict(type(model).from_pretrained(last_checkpoint).state_dict())
    train_output = trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
    train_seconds = clock.seconds
    end_process_group(trainer)
    if not trainer.is_world_process_zero():
        return FinetuneResult(output_dir, None)

    model = trainer.model.eval()
    metrics = {
        "train_seconds": train_seconds,
        "train_samples_per_second": train_output.metrics.get("train_samples_per_second", 0.0),
        "train_loss": mean_training_loss(trainer.state.log_history),
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
            data=data,
            evaluated=len(eval_dataset),
            example_image=f"examples/{examples[0]}" if examples else "",
            model_type=model.config.model_type,
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
