"""One fine-tuning run from a recipe: build the model, train, evaluate, write the repo folder, and optionally push.

The steps are the same for every training task; what depends on the task (model, data transforms, ``Trainer``,
evaluation, example pictures, card) is asked of the recipe's :class:`~bcos_zoo.training.task.Task`.

The output folder holds ``recipe.json`` (written as training starts, for ``resume`` to check; beside it
``held_out_from.json`` where the evaluation images are held out of a folder's files), ``checkpoints/``
(the Trainer's, for ``resume``), ``ranks/`` (one report per process), ``results.json`` and ``repo/``: the exact
tree that is uploaded (weights as safetensors, config, remote code, processor, model card and example
explanations). ``scripts/finetune.py`` is the command-line face of :func:`finetune`.
"""

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed

from ..data.datasets import DatasetSplits, limit, model_needs_hub
from ..ports import bcos_source_entry, is_bcos_source
from ..training import get_task
from ..training.recipe import publishing_differences, recipe_record, training_differences
from ..training.task import BCOS_MODEL_TYPES, source_config
from ..training.trainer import (
    StopOnInterrupt,
    TrainingClock,
    mean_training_loss,
    trainer_callbacks,
    training_arguments,
    with_precision,
)
from .cards import launch_command, render_model_card, template_path
from .hub import (
    check_push_access,
    describe_tree,
    hub_repo_exists,
    hub_unavailable,
    new_repo_folder,
    push_folder,
    readable_weights,
)
from .recipes import Recipe


try:
    import fcntl  # POSIX: the lock on a run's folder
except ImportError:  # Windows
    fcntl = None


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
    """The newest ``checkpoint-N`` that was fully written: the Trainer writes ``trainer_state.json`` last of its
    files, and the :class:`TrainingClock` then adds the training time, the checkpoint's last file.

    A run killed while saving leaves a partial folder; resuming from it would fail or count the training time from
    zero, so it is skipped for the one before it (the Trainer keeps two), and its steps are trained again.
    """
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        (path for path in checkpoint_dir.glob("checkpoint-*") if path.name.split("-")[-1].isdigit()),
        key=lambda path: int(path.name.split("-")[-1]),
        reverse=True,
    )
    for path in found:
        if (path / "trainer_state.json").is_file() and TrainingClock.recorded(path) is not None:
            return str(path)
        logger.warning(f"Skipping {path.name}: it was not completely written (the run stopped while saving).")
    return None


def bcos_checkpoint_config(source: str) -> dict | None:
    """The config of a B-cos checkpoint, which a run continues as it is (at its own B, with its own biases), or
    ``None`` for a source that is B-cosified or a run from scratch."""
    try:
        config = source_config(source)
    except OSError:  # no config.json (open_clip's layout): not a B-cos checkpoint, and loading it says what is wrong
        return None
    return config if config is not None and config.get("model_type") in BCOS_MODEL_TYPES else None


def check_checkpoint_settings(recipe: Recipe) -> None:
    """Refuse a recipe that asks a B-cos checkpoint for another B or other biases: ``b`` and ``bias`` apply to
    B-cosification, and a checkpoint that is B-cos already keeps its own. The recipe's defaults ask for nothing."""
    config = bcos_checkpoint_config(recipe.source)
    if config is None:
        return
    config = config.get("vision_config", config)  # CLIP: the image tower is the B-cos part
    b, keep = config.get("b", 2.0), bool(config.get("use_bias", False))
    default = {spec.name: spec.default for spec in fields(Recipe)}
    asked = []
    if recipe.b != default["b"] and recipe.b != b:
        asked.append(f"--b {recipe.b} (it has B = {b})")
    if recipe.bias != default["bias"] and (recipe.bias == "keep") != keep:
        asked.append(f"--bias {recipe.bias} (its biases are {'kept' if keep else 'removed'})")
    if asked:
        raise ValueError(
            f"--model {recipe.source} is a B-cos checkpoint, which is fine-tuned at its own B and biases, but "
            f"{' and '.join(asked)} was asked for: drop those flags, or B-cosify its standard source instead."
        )


def check_before_training(recipe: Recipe, push: bool, dry_run: bool) -> None:
    """Everything that can be known to fail before training fails now, in one line: missing folders and card
    templates, flags a B-cos checkpoint cannot honour, and anything that needs the Hub (the source, the data, the
    push) when the Hub cannot be used or does not know the name."""
    task = get_task(recipe)
    if task.card is not None:
        template_path(recipe.card_template)  # a missing template would fail only after training
    elif push:
        raise ValueError(
            f"--push: the {recipe.task} task writes no model card, and a repo is pushed with its card; train without "
            "--push"
        )
    if is_bcos_source(recipe.source):
        bcos_source_entry(recipe.source, recipe.weights)  # a standard model of the bcos package and its weights file
    source_on_hub = not is_bcos_source(recipe.source) and model_needs_hub(recipe.source)
    teacher_on_hub = recipe.teacher is not None and model_needs_hub(recipe.teacher, "--teacher")
    needs, dataset_on_hub = [], task.data_needs_hub()
    if source_on_hub:
        needs.append((f"the model {recipe.source!r}", "pass a local model folder with --model"))
    if teacher_on_hub:
        needs.append((f"the teacher {recipe.teacher!r}", "pass a local model folder with --teacher"))
    if dataset_on_hub:
        needs.append((f"the dataset {recipe.dataset!r}", "pass a local folder of class sub-folders with --dataset"))
    if push and not dry_run:
        needs.append(("the push", "add --dry-run to write the repo folder without uploading"))
    reason = hub_unavailable() if needs else None
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
    if teacher_on_hub and not hub_repo_exists(recipe.teacher, "model"):
        raise ValueError(f"--teacher {recipe.teacher!r} is neither a local folder nor a model on the Hub")
    if dataset_on_hub and not hub_repo_exists(recipe.dataset, "dataset"):
        raise ValueError(
            f"--dataset {recipe.dataset!r} is neither a local folder nor a dataset on the Hub (if it is private, log "
            "in with `hf auth login` or set HF_TOKEN); a local dataset is a folder of class sub-folders"
        )
    check_checkpoint_settings(recipe)


# everything a run writes into its --output-dir
RUN_OUTPUTS = ("checkpoints", "repo", "ranks", "results.json", "recipe.json", "held_out_from.json")


def check_output_dir(output_dir: Path, dataset: str | None = None) -> None:
    """Refuse an --output-dir that is a file, a folder that holds anything but a run's outputs (a dataset, say), or
    one inside the local ``dataset`` folder: the run would mix its outputs into it (its example pictures would
    become a class of the data)."""
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
    data = Path(dataset).expanduser() if dataset else None
    if data is not None and data.is_dir() and output_dir.resolve().is_relative_to(data.resolve()):
        raise ValueError(
            f"--output-dir {output_dir} lies inside the --dataset folder {dataset}, which would gain the run's "
            "files (its pictures as a class of their own): choose a folder outside it. Nothing was changed."
        )


def unevaluated_epoch_end(checkpoint: str) -> dict | None:
    """``{"epoch", "step"}`` of a checkpoint saved at the end of an epoch whose evaluation it does not hold, else
    ``None``.

    The Trainer saves by steps before it evaluates the epoch that step ends, so a checkpoint at an epoch's end lacks
    that epoch's evaluation, and a run resumed from it never makes it up: the epoch loop starts after it.
    """
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    step, epoch = state["global_step"], float(state.get("epoch") or 0.0)
    if not epoch.is_integer():
        return None  # mid-epoch (the last step's too): the resumed run evaluates this epoch when it ends
    if any(
        entry.get("step") == step and any(key.startswith("eval_") for key in entry) for entry in state["log_history"]
    ):
        return None
    return {"epoch": epoch, "step": step}


class ReadableCheckpoints(TrainerCallback):
    """Each checkpoint's weights as readable as its other files (:func:`~bcos_zoo.zoo.hub.readable_weights`), so that
    anyone who can read the run can resume it."""

    def on_save(self, args, state, control, **kwargs):
        if args.process_index == 0:
            readable_weights(Path(args.output_dir) / f"checkpoint-{state.global_step}")


class RestoreEvaluation(TrainerCallback):
    """Put the evaluation of a resumed checkpoint's epoch (made before training resumed, on its weights) into the log
    the Trainer loads from it, where an uninterrupted run has it: later checkpoints and ``results.json`` keep it."""

    def __init__(self, entry: dict):
        self.entry = entry

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history.append(self.entry)


def earlier_run(output_dir: Path, last_checkpoint: str | None) -> list[str]:
    """What an earlier run left in ``output_dir``: its last checkpoint, ``repo/``, ``results.json`` (a user may have
    deleted the checkpoints to save space; the run is there all the same)."""
    left = [f"checkpoints/{Path(last_checkpoint).name}"] if last_checkpoint else []
    return left + [name for name in ("repo", "results.json") if (output_dir / name).exists()]


def check_same_recipe(output_dir: Path, recipe: Recipe, training: bool = True) -> None:
    """Refuse to resume a run with a recipe that trains differently from the one it started with (its
    ``recipe.json``): the optimiser state, data and classes of the checkpoint would be mixed with the new settings.
    Fields that only describe the published model (its Hub id, card) may change; so may the number of processes,
    where the run is finished (``training=False``: it is only reported or pushed). The source's and teacher's
    weights must be those it started from (their digests, recorded in ``recipe.json``)."""
    stored = output_dir / "recipe.json"
    if not stored.is_file():
        return
    record, given = json.loads(stored.read_text()), recipe_record(recipe)
    started_on, processes = record.get("processes", 1), processes_now()
    if training and started_on != processes:
        command = launch_command("python scripts/finetune.py ... --resume", started_on)
        raise ValueError(
            f"--resume: the run in {output_dir} was started on {started_on} process(es), this one has {processes}: "
            f"the batch size is per process, so the global batch would change. Resume it as it started "
            f"(`{command}`), or start a fresh --output-dir. Nothing was changed."
        )
    changed = training_differences(record, recipe)
    if changed:
        details = ", ".join(f"{name} {record.get(name)!r} -> {given[name]!r}" for name in changed)
        raise ValueError(
            f"--resume: the run in {output_dir} was started with another recipe ({details}; see {stored}); "
            "resume it with the flags it started with, or start a fresh --output-dir. Nothing was changed."
        )
    if changed := changed_inputs(record.get("inputs", {}) if training else {}, recipe):
        details = "; ".join(input_change(name, recipe) for name in changed)
        raise ValueError(
            f"--resume: {details}. Resume the run in {output_dir} with the weights it started from, or start a fresh "
            "--output-dir. Nothing was changed."
        )


def processes_now() -> int:
    """The data-parallel processes of this run (``accelerate launch`` says how many in ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")  # what the loaders of a source or teacher read


def input_digests(recipe: Recipe) -> dict[str, str]:
    """``{field: sha256}`` of the weights of each local model folder the recipe starts from (its source or teacher):
    a run is only as current as they are."""
    digests = {}
    for name in ("source", "teacher"):
        value = getattr(recipe, name)
        if value in (None, "scratch") or not Path(value).expanduser().is_dir():
            continue
        digest, folder = hashlib.sha256(), Path(value).expanduser()
        for weights in sorted(path for pattern in WEIGHT_FILES for path in folder.glob(pattern)):
            with open(weights, "rb") as file:  # in pieces: a large model's weights need not fit in memory twice
                for piece in iter(lambda: file.read(1 << 24), b""):
                    digest.update(piece)
        digests[name] = digest.hexdigest()
    return digests


def changed_inputs(recorded: dict[str, str], recipe: Recipe) -> list[str]:
    """The inputs of ``recorded`` (:func:`input_digests` of an earlier run) whose folder holds other weights now, or
    is no folder here any more."""
    current = input_digests(recipe) if recorded else {}
    return [name for name, digest in recorded.items() if current.get(name) != digest]


def input_change(name: str, recipe: Recipe) -> str:
    """What a resume would get wrong from a changed input (see :func:`changed_inputs`), in the flag's terms."""
    flag, value = {"source": "--model", "teacher": "--teacher"}[name], getattr(recipe, name)
    if not Path(value).expanduser().is_dir():
        return f"{flag} {value} is no folder here (moved, or a relative path given from another folder?)"
    harm = {
        "source": "the card would name and measure another source than the one it was trained from",
        "teacher": "the rest of the run would be taught by other weights",
    }[name]
    return f"{flag} {value} holds other weights than the run started from (retrained since?), and {harm}"


def write_json(path: Path, record: dict) -> None:
    """``record`` as JSON at ``path``, written beside it and moved in place whole, so that a kill mid-write leaves the
    file as it was, never cut off (the file written beside is this process's own)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(record, indent=2, default=str))
    partial.replace(path)


def write_recipe(output_dir: Path, recipe: Recipe) -> None:
    """``recipe.json``, written as training starts so that a --resume can be checked against it (with the number of
    processes: the batch size is per process; and the digests of the source's and teacher's weights)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {**recipe_record(recipe), "processes": processes_now(), "inputs": input_digests(recipe)}
    write_json(output_dir / "recipe.json", record)


def check_same_files(output_dir: Path, recipe: Recipe, data: DatasetSplits) -> None:
    """Refuse to resume a run on a folder whose evaluation images are held out of it, when its files are not those
    the run started with (``held_out_from.json``): the seeded share held out would be another one, and the resumed
    run would evaluate on images it trained on."""
    stored = output_dir / "held_out_from.json"
    if not stored.is_file():
        return
    record = json.loads(stored.read_text())
    if record["sha256"] != data.held_out_from:
        now = len(data.train) + len(data.validation)
        raise ValueError(
            f"--resume: the files of --dataset {recipe.dataset} changed since the run started ({record['files']} "
            f"images then, {now} now; see {stored}), and its evaluation images are a seeded share of all of them, so "
            "the resumed run would evaluate on images it trained on: put the folder back as it was (replace an "
            "unreadable image by a readable one of the same name), or start a fresh --output-dir. Nothing was changed."
        )


def write_held_out_from(output_dir: Path, data: DatasetSplits) -> None:
    """``held_out_from.json``, beside ``recipe.json``, for a folder whose evaluation images are held out of its files
    (see :func:`check_same_files`)."""
    if data.held_out_from is not None:
        record = {"sha256": data.held_out_from, "files": len(data.train) + len(data.validation)}
        write_json(output_dir / "held_out_from.json", record)


def finished_results(output_dir: Path) -> dict | None:
    """``results.json`` of a run that ended (it is written after ``repo/``, and moved in place whole), else ``None``;
    one cut off (by a kill mid-write, before results were moved in place) is no end: a resume makes it again."""
    results = output_dir / "results.json"
    if not results.is_file() or not (output_dir / "repo").is_dir():
        return None
    try:
        return json.loads(results.read_text())
    except ValueError:
        logger.warning(f"{results} is cut off; the run's end is made again from its last checkpoint.")
        return None


def with_run_precision(recipe: Recipe, output_dir: Path, device: str | None = None) -> Recipe:
    """``recipe`` with ``precision="auto"`` made the run's: as the finished run in ``output_dir`` recorded it (it is
    only reported or pushed, on any machine), else as this machine and launch train (:func:`with_precision`)."""
    stored = Path(output_dir) / "recipe.json"
    finished = finished_results(Path(output_dir)) is not None and stored.is_file()
    return with_precision(
        recipe, device, recorded=json.loads(stored.read_text()).get("precision") if finished else None
    )


def publish(result: "FinetuneResult", recipe: Recipe, push: bool, private: bool, dry_run: bool) -> "FinetuneResult":
    """List the repo folder (a dry run), or upload it with ``push``."""
    if dry_run:
        print(f"Dry run: {result.repo_dir} is the exact tree a push to {recipe.hub_model_id} would upload:")
        print("\n".join(f"  {line}" for line in describe_tree(result.repo_dir)))
    elif push:
        message = f"{recipe.name}: {result.metrics}"
        result.commit_url = push_folder(result.repo_dir, recipe.hub_model_id, private=private, commit_message=message)
    return result


def check_finished_run(results: dict, output_dir: Path, recipe: Recipe, push: bool, dry_run: bool) -> None:
    """Before a finished run is reported or pushed again: its ``repo/`` and card were written with the recipe's
    publishing fields (name, Hub id, licence, summary, card), which a resume cannot change any more; and a push needs
    a working token."""
    stored = results.get("recipe", {})
    if changed := publishing_differences(stored, recipe):
        details = ", ".join(f"{name} {stored[name]!r}" for name in changed)
        raise ValueError(
            f"{output_dir} holds a finished run whose repo/ and card were written with {details}: pass those to "
            "report or push it as it is, or train into a fresh --output-dir. Nothing was changed."
        )
    if push and not dry_run:
        check_push_access(recipe.hub_model_id)


def is_main_process() -> bool:
    """Whether this is the process that writes a run's records: the only one, or rank 0 under accelerate launch."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def run_folder(output_dir: Path) -> Iterator[None]:
    """Keep a second run out of ``output_dir`` while this one writes it: two runs in one folder would replace each
    other's checkpoints and repo/, and both report success. The main process makes the folder (a refused run removes
    the empty folders it made) and holds an exclusive lock on it (``flock``) from before anything in it is read to
    the run's end; none where the system or file system has no such lock (Windows, some network file systems). The
    other processes of a data-parallel run write nothing before the first step, which waits for the main one."""
    if not is_main_process() or fcntl is None:
        yield
        return
    made = [folder for folder in (output_dir, *output_dir.absolute().parents) if not folder.exists()]  # innermost first
    output_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(output_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{output_dir} is being written by another run that has not ended: wait for it to end, or run into "
                "another folder. Nothing was changed."
            ) from None
        except OSError:  # a file system without locks: run unlocked
            pass
        yield
    finally:
        os.close(descriptor)  # which releases the lock
        for folder in made:  # of a run refused before it wrote anything
            if any(folder.iterdir()):
                break
            folder.rmdir()


def finetune(
    recipe: Recipe,
    output_dir: str | Path,
    resume: bool = False,
    push: bool = False,
    private: bool = False,
    dry_run: bool = False,
    device: str | None = None,
    eval_each_epoch: bool = False,
    dataloader_num_workers: int | None = None,
) -> FinetuneResult:
    """Run a recipe end to end; see the module docstring for what lands where. Only one run at a time writes an
    --output-dir (:func:`run_folder`)."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir, recipe.dataset)
    with run_folder(output_dir):
        checkpoint_dir = output_dir / "checkpoints"
        last_checkpoint = last_complete_checkpoint(checkpoint_dir)
        left = earlier_run(output_dir, last_checkpoint)
        if left and not (output_dir / "recipe.json").is_file():  # a run writes it first: these are no run's outputs
            raise ValueError(
                f"{output_dir} holds {', '.join(left)} but no recipe.json, which every run writes before it trains, so "
                "it is no run to resume (or its recipe.json was deleted), and a run would replace what it holds: "
                "choose an empty or a new --output-dir. Nothing was changed."
            )
        if left and not resume:
            raise ValueError(
                f"{output_dir} holds an earlier run ({', '.join(left)}); pass --resume to continue it (or to push it, "
                "when it is finished), or choose another --output-dir. Nothing was changed."
            )
        finished = finished_results(output_dir) if resume else None
        recipe = with_run_precision(recipe, output_dir, device)
        repo_id = recipe.hub_model_id
        if resume:
            check_same_recipe(output_dir, recipe, training=finished is None)
        if (results := finished) is not None:
            if not is_main_process():  # under accelerate launch, the main process alone reports and pushes
                return FinetuneResult(output_dir, None)
            check_finished_run(results, output_dir, recipe, push, dry_run)
            done = FinetuneResult(output_dir, output_dir / "repo", results["metrics"])
            pushing = push and not dry_run
            print(
                f"{output_dir} holds a finished run; nothing to resume, {'pushing' if pushing else 'nothing changed'}."
            )
            return publish(done, recipe, push, private, dry_run)
        check_before_training(recipe, push, dry_run)
        continued = bcos_checkpoint_config(recipe.source) is not None  # for the card; read now, not after training
        task = get_task(recipe)
        workers = {} if dataloader_num_workers is None else {"dataloader_num_workers": dataloader_num_workers}
        arguments = training_arguments(
            recipe,
            checkpoint_dir,
            device=device,
            eval_each_epoch=eval_each_epoch,
            **task.training_arguments(),
            **workers,
        )
        task.workers = arguments.dataloader_num_workers  # its evaluation reads images as its training does
        if resume and last_checkpoint:
            print(f"Resuming from {last_checkpoint}")
        elif resume:
            logger.warning(f"--resume: no checkpoint in {checkpoint_dir}, starting from the beginning.")

        set_seed(recipe.seed)
        data = task.load_data()
        if resume:
            check_same_files(output_dir, recipe, data)
        model = task.build_model(data.class_names)
        if model.dtype in (torch.float16, torch.bfloat16):  # an AdamW step on float16 weights overflows to inf and NaN,
            logger.warning(f"The {model.dtype} model is trained in float32.")  # bfloat16 rounds small updates away
            model = model.float()
        train_dataset = task.dataset(
            limit(data.train, recipe.max_train_samples), task.train_transform(model), seed=recipe.seed
        )
        eval_dataset = task.dataset(limit(data.validation, recipe.max_eval_samples), task.eval_transform(model))
        clock = TrainingClock(last_checkpoint if resume else None)
        trainer = task.build_trainer(
            model,
            arguments,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=task.collate,
            callbacks=[
                *trainer_callbacks(recipe, train_dataset, report_folder=output_dir / "ranks"),
                clock,
                ReadableCheckpoints(),
            ],
        )
        if resume and last_checkpoint:
            # The Trainer reads a checkpoint's weights file by the names it was saved under; a transformers release
            # that renames a model's modules on load (5.17 for ViT) would leave every weight unread and train on at
            # random initialisation. Loading as from_pretrained does first makes the names match; the Trainer's load
            # then agrees.
            model.load_state_dict(type(model).from_pretrained(last_checkpoint).state_dict())
            missing = unevaluated_epoch_end(last_checkpoint) if eval_each_epoch else None
            if missing is not None:
                trainer.add_callback(RestoreEvaluation({**trainer.evaluate(), **missing}))
        if is_main_process():  # the others wait for it at the first step (a refused main process ends them)
            write_recipe(
                output_dir, recipe
            )  # before the first checkpoint; a run stopped earlier leaves nothing to resume
            write_held_out_from(output_dir, data)
        stop = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnInterrupt))
        try:
            train_output = trainer.train(resume_from_checkpoint=last_checkpoint if resume else None)
        except RuntimeError as error:
            if stop.killed_a_starting_worker(error):
                raise KeyboardInterrupt from error
            raise
        finally:  # an error in training skips the callbacks' end: Ctrl-C is the caller's again all the same
            stop.restore()
        train_seconds = clock.seconds
        end_process_group(trainer)
        if not trainer.is_world_process_zero():
            return FinetuneResult(output_dir, None)

        model = trainer.model.eval()
        if diverged := [name for name, parameter in model.named_parameters() if not parameter.isfinite().all()]:
            raise ValueError(
                f"Training diverged: {len(diverged)} weights are not finite (the first: {diverged[0]}), so no repo/ is "
                f"written. The checkpoints are in {checkpoint_dir}; train again with a lower --learning-rate in a new "
                "--output-dir."
            )
        metrics = {
            "train_seconds": train_seconds,
            "train_samples_per_second": train_output.metrics.get("train_samples_per_second", 0.0),
            "train_loss": mean_training_loss(trainer.state.log_history),
            **task.evaluate(model, data, eval_dataset),
        }
        repo_dir = output_dir / "repo"
        with new_repo_folder(repo_dir) as partial:
            examples = task.write_examples(model, data, eval_dataset, partial / "examples")
            task.save_model(model, partial)
            if task.card is not None:
                card = render_model_card(
                    recipe,
                    task.card,
                    repo_id=repo_id,
                    metrics=metrics,
                    data=data,
                    evaluated=len(eval_dataset),
                    example_image=f"examples/{examples[0]}" if examples else "",
                    config=model.config,
                    continued=continued,
                )
                card.save(partial / "README.md")
        history = [entry for entry in trainer.state.log_history if "eval_loss" in entry or "eval_accuracy" in entry]
        results = {"recipe": asdict(recipe), "repo_id": repo_id, "metrics": metrics, "eval_history": history}
        write_json(output_dir / "results.json", results)  # whole, as it marks the run's end
        return publish(FinetuneResult(output_dir, repo_dir, metrics), recipe, push, private, dry_run)
