"""What every training task shares: the ``Trainer`` (:class:`ZooTrainer`), ``TrainingArguments`` from a recipe, the
callbacks (adaptive gradient clipping, epoch-seeded augmentation, a sure stop on Ctrl-C, a per-rank report) and the
collator.

Everything else (mixed precision, data parallelism through accelerate, checkpoints, resume) is the ``Trainer``'s own;
what differs between tasks (model, loss, evaluation) lives in the task modules beside this one.
"""

import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data.datasets import default_workers
from .recipe import Recipe


def adaptive_clip_grad_(parameters: Iterable[nn.Parameter], clip: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al., 2021), in place and unit-wise.

    Each output unit's gradient (a row of a weight matrix; a whole vector for 1-d parameters) is scaled down to at
    most ``clip`` times that unit's weight norm (at least ``eps``), so small and large layers are held to the same
    relative step size. The B-cos papers train with it instead of a global norm clip.
    """
    for parameter in parameters:
        if parameter.grad is None:
            continue
        weight, grad = parameter.detach(), parameter.grad.detach()
        dims = tuple(range(1, grad.ndim)) if grad.ndim > 1 else None
        weight_norm = torch.linalg.vector_norm(weight.float(), dim=dims, keepdim=True).clamp_min(eps)
        grad_norm = torch.linalg.vector_norm(grad.float(), dim=dims, keepdim=True).clamp_min(1e-6)
        scale = (clip * weight_norm / grad_norm).clamp(max=1.0)
        grad.mul_(scale.to(grad.dtype))


class AdaptiveGradientClipping(TrainerCallback):
    """Apply :func:`adaptive_clip_grad_` after gradients are synchronised and before each optimiser step."""

    def __init__(self, clip: float, eps: float = 1e-3):
        self.clip, self.eps = clip, eps

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        adaptive_clip_grad_(model.parameters(), self.clip, self.eps)


def weights_digest(model: nn.Module) -> str:
    """A SHA-256 of all parameters, in name order: equal digests mean identical weights."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class RankReport(TrainerCallback):
    """Each process writes ``ranks/rank-<i>.json``: steps taken, samples seen and weight digests (at the start of
    this process: a resumed run's start is its checkpoint's weights).

    On a multi-GPU or multi-node run this shows at a glance that every rank trained (its weights changed) and that
    all ranks ended on the same weights (data parallelism kept them in sync).
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.start_digest = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start_digest = weights_digest(model)  # a resumed run's: the checkpoint's

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.folder.mkdir(parents=True, exist_ok=True)
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        report = {
            "process_index": args.process_index,
            "world_size": args.world_size,
            "global_step": state.global_step,
            "samples_seen_here": state.global_step * per_step,  # every step of the run, resumes included
            "start_weights": self.start_digest,
            "end_weights": weights_digest(model),
        }
        (self.folder / f"rank-{args.process_index}.json").write_text(json.dumps(report, indent=2))


class TrainingClock(TrainerCallback):
    """Training time of the whole run, resumes included: each checkpoint records the seconds spent up to it, and a
    resumed run starts counting from there, so a card never reports only the time since the last resume.

    The record is the last file of a checkpoint (``on_save`` runs after the Trainer has written its own), and it is
    moved into place whole, so a checkpoint with a readable record is complete (see :meth:`recorded`).
    """

    FILE = "training_time.json"

    def __init__(self, resumed_from: str | None = None):
        self.before = (self.recorded(resumed_from) or 0.0) if resumed_from else 0.0
        self.start = time.perf_counter()

    @classmethod
    def recorded(cls, checkpoint: str | Path) -> float | None:
        """The seconds a checkpoint recorded, or ``None`` where the run stopped before its record was written."""
        try:
            return float(json.loads((Path(checkpoint) / cls.FILE).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):  # missing, or cut off by an earlier, non-atomic write
            return None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and args.process_index == 0:
            partial = folder / f".{self.FILE}.partial"
            partial.write_text(json.dumps({"seconds": self.seconds}))
            partial.replace(folder / self.FILE)


class LogAtCheckpoints(TrainerCallback):
    """Log the loss at every checkpoint and at the last step, so that the log history, which each checkpoint keeps,
    covers every step of a run, one resumed from a checkpoint included (see :func:`mean_training_loss`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True


def mean_training_loss(log_history: list[dict]) -> float:
    """The mean loss over every step of the run, from the Trainer's logged means of the steps since its last log.
    The Trainer's own ``training_loss`` covers only the steps since the last resume."""
    total, last_step = 0.0, 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last_step)
            last_step = entry["step"]
    return total / last_step if last_step else 0.0


class EpochSeededData(TrainerCallback):
    """Tell the training data which epoch is starting, so its augmentation is seeded by (seed, epoch, index).

    accelerate's ``set_epoch`` does not reach the dataset in an epoch resumed part-way, so the epoch is read from
    the Trainer's state (which holds e.g. 7.5 in the middle of epoch 7).
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C, or SIGTERM (what ``kill``, a container's stop and a cluster's scheduler send before they kill), ends
    training at the end of the running step with a checkpoint, so that ``--resume`` loses no step; a second signal
    stops at once (``--resume`` then continues from the last checkpoint).

    The first signal only takes note: the step's end asks the Trainer to save and stop, and the end of training
    raises ``KeyboardInterrupt``, so the run ends as interrupted (nothing is evaluated or written). Several processes
    stop at once, as at a second signal: each would take note at a step end of its own, and they must save at the
    same step. A ``KeyboardInterrupt`` raised where Python swallows it (in a ``__del__`` or a weakref callback, when
    a progress bar or a file is closed mid-step) is raised again at the step's end, as it was noted.
    """

    SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self):
        self.interrupted, self.previous, self.at_once, self.pid = False, {}, False, os.getpid()

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a data-loading worker forked with the handler: the main process decides
            return
        if not (self.interrupted or self.at_once):
            self.interrupted, name = True, self.SIGNALS[signum]
            print(
                f"\n{name}: a checkpoint at the end of this step, then stop ({name} again: stop now).", file=sys.stderr
            )
            return
        self.interrupted, previous = True, self.restore().get(signum)  # the handlers go with the training they stop
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def killed_a_starting_worker(self, error: Exception) -> bool:
        """Whether ``error`` is a data-loading worker's death from the Ctrl-C noted: a worker leaves Ctrl-C to the main
        process from its first item on (``bcos_zoo.data.datasets.leave_ctrl_c_to_the_main_process``), but one started
        by spawn or forkserver, as each epoch starts its own, dies of a Ctrl-C during its seconds of start-up. The run
        then ends as interrupted, which this says, with the steps done saved (:meth:`ZooTrainer.get_batch_samples`).
        (A SIGTERM sent to every process of the run, as a cluster's scheduler sends it, kills running workers too.)"""
        if not (self.interrupted and "DataLoader worker" in str(error)):
            return False
        print("A data-loading worker died of the same signal.", file=sys.stderr)
        return True

    def restore(self) -> dict:
        """Put back the handlers training began with, and return them (by signal)."""
        previous, self.previous = self.previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        return previous

    def on_train_begin(self, args, state, control, **kwargs):
        self.interrupted, self.pid = False, os.getpid()
        self.at_once = args is not None and args.world_size > 1
        if threading.current_thread() is threading.main_thread():  # where Python lets a handler be set
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted and self.at_once:
            self.restore()
            raise KeyboardInterrupt
        if self.interrupted:
            control.should_save = control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.interrupted:  # no evaluation of the epoch cut short (a resume evaluates it when it ends)
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()
        if self.interrupted:
            print(
                f"\nStopped after step {state.global_step}, saved as checkpoint-{state.global_step}.", file=sys.stderr
            )
            raise KeyboardInterrupt


class ZooTrainer(Trainer):
    """The ``Trainer`` every task runs. A batch's loss counts by its share of the step's images (:meth:`training_step`).
    It logs the mean of each named loss term since the last log, over the images it was computed on (``self.tally``),
    so a loss made of several terms shows each of them in the training log. It saves the steps done when the training
    data cannot be read, and trains no step past the last (:meth:`get_batch_samples`). A task's batches hold
    ``pixel_values``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._tallies: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # name -> [sum, count]
        self._step_images = 0  # in the running optimiser step's batches

    def tally(self, name: str, mean: torch.Tensor | float, count: int = 1) -> None:
        """Note ``mean``, the mean of a loss term over ``count`` images, for the next log."""
        self._tallies[name][0] += float(mean.detach() if isinstance(mean, torch.Tensor) else mean) * count
        self._tallies[name][1] += count

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update({name: total / count for name, (total, count) in self._tallies.items() if count})
            self._tallies.clear()
        super().log(logs, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The next step's batches. The Trainer reads all of a step's batches before the step begins, so when reading
        fails (an unreadable image) the model is between two steps: the steps done since the last checkpoint are
        saved as one before the error ends the run, and ``--resume`` once the data is mended loses none of them.

        A data-parallel run saves nothing here: its other processes are not between steps at the same moment. A run
        resumed from its last step's checkpoint, part-way through an epoch, gets no batch: transformers would train
        one step more (at learning rate 0, but BatchNorm would count the batch)."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return [], None
        try:
            batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
        except Exception:
            self.save_steps_done()
            raise
        self._step_images = sum(len(batch["pixel_values"]) for batch in batches)
        return batches, count

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One batch's forward and backward pass, its mean loss weighted by the batch's share of the step's images, so
        that accumulated batches train as one batch of all their images: the Trainer divides each batch's mean by
        the number of batches in the step, which counts the images of a short last batch of an epoch more."""
        if self._step_images:
            self.current_gradient_accumulation_steps = self._step_images / len(inputs["pixel_values"])
        return super().training_step(model, inputs, num_items_in_batch)

    def save_steps_done(self) -> None:
        """Log and checkpoint the steps done, as the Trainer does at a checkpoint step, unless they are saved."""
        step = self.state.global_step
        if self.args.world_size > 1 or step == 0 or (Path(self.args.output_dir) / f"checkpoint-{step}").is_dir():
            return
        self.control.should_log = self.control.should_save = True
        self.control.should_evaluate = False
        self._maybe_log_save_evaluate(self._tr_loss, None, self.model, None, self.state.epoch, None, None)
        print(f"\nSaved the steps done as checkpoint-{step}.", file=sys.stderr)


def collate_images(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` and ``labels`` from :class:`~bcos_zoo.data.datasets.TransformedImages` items."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "labels": torch.tensor([item["labels"] for item in batch], dtype=torch.long),
    }


def on_cpu(device: str | None) -> bool:
    """Whether a run on ``device`` (``None``: the Trainer's choice, a GPU when there is one) trains on the CPU."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


def with_precision(recipe: Recipe, device: str | None = None, recorded: str | None = None) -> Recipe:
    """The recipe with ``precision="auto"`` made the one this run trains in, so that the run's record, its card's
    command and a resume's check name it: the same command on a GPU machine would otherwise train in another
    precision, to other weights. ``auto`` is ``recorded`` where a finished run is only reported, else what
    ``accelerate launch --mixed_precision`` (or its config) asked for, else bf16 on a GPU that has it, else fp32."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched not in ("no", "bf16") or (launched == "bf16" and recipe.precision == "fp32"):
        raise ValueError(
            f"accelerate launch asks for --mixed_precision {launched} and the recipe for precision {recipe.precision}:"
            " pass --precision (fp32 or bf16) and launch with --mixed_precision no, or with bf16 and --precision bf16."
        )
    if recipe.precision != "auto":
        return recipe
    if recorded is not None:
        return recipe.with_overrides(precision=recorded)
    bf16 = launched == "bf16" or not on_cpu(device) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return recipe.with_overrides(precision="bf16" if bf16 else "fp32")


def training_arguments(
    recipe: Recipe, checkpoint_dir: Path, device: str | None = None, eval_each_epoch: bool = False, **overrides
) -> TrainingArguments:
    """``TrainingArguments`` for a recipe: Adam(W), cosine decay after a linear warm-up over ``warmup_ratio`` of the
    steps (1: all of them), safetensors checkpoints.

    With adaptive gradient clipping the Trainer's own global-norm clip is switched off (the callback replaces it).
    ``device="cuda"`` without a CUDA device is refused: the Trainer would quietly train on the CPU instead.
    """
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}, but torch finds no CUDA device here (no GPU, or a CPU-only torch build): pass "
            "--device cpu, or leave --device out to use a GPU when there is one."
        )
    cpu, recipe = on_cpu(device), with_precision(recipe, device)
    arguments = dict(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        lr_scheduler_type="cosine",
        # transformers reads warmup_steps below 1 as a share of the steps and from 1 on as a count of steps, so a
        # ratio of 1 becomes the largest float below it: ceil(steps * that) is every step
        warmup_steps=min(recipe.warmup_ratio, math.nextafter(1.0, 0.0)),
        optim="adamw_torch",
        max_grad_norm=0.0 if recipe.agc_clip else 1.0,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        eval_strategy="epoch" if eval_each_epoch else "no",
        logging_strategy="steps",
        logging_steps=max(1, min(50, recipe.save_steps)),
        report_to="none",
        seed=recipe.seed,
        remove_unused_columns=False,
        use_cpu=cpu,
        bf16=recipe.precision == "bf16",
        dataloader_num_workers=default_workers(cpu),
    )
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def trainer_callbacks(recipe: Recipe, train_dataset, report_folder: Path | None = None) -> list[TrainerCallback]:
    """Every run's callbacks: epoch-seeded augmentation, a sure stop on Ctrl-C, a log at each checkpoint, adaptive
    clipping when on, and the per-rank report."""
    callbacks = [EpochSeededData(train_dataset), StopOnInterrupt(), LogAtCheckpoints()]
    if recipe.agc_clip:
        callbacks.append(AdaptiveGradientClipping(recipe.agc_clip))
    if report_folder is not None:
        callbacks.append(RankReport(report_folder))
    return callbacks
