"""The benchmark scripts' harness: every B-cos model is timed as a user gets it, from a saved folder.

The scripts build a random-weight source and its B-cos form in this process (which imports bcos_zoo);
:class:`Benchmark` saves both into a folder (the B-cos model with its remote code, the source as its own library
saves it) and hands the folder to ``scripts/timing.py`` in a fresh interpreter that cannot import bcos_zoo. Once
bcos_zoo is imported its classes win over a folder's remote code, so timing in this process would measure the
package, not the code users download. This module formats what the child reports, checks that the isolation held,
and collects the figures in CSV for the docs (``scripts/plot_speed.py`` draws them).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel
from transformers.utils import logging

from .cli import at_least, device


DTYPE_NAMES = ("float32", "bfloat16", "float16")
FAST_PATHS_VARIABLE = "BCOS_FAST_PATHS"  # "0" switches every fast path of the hub-facing code off

# What each figure should reach; the first word of a model's label names its family. Explanation / forward and the
# memory figure are upper bounds, the ratios lower bounds.
TARGETS: dict[str, dict[str, float]] = {
    "ViT-S/16": {"forward_target": 0.90, "explain_target": 2.20, "step_target": 0.85, "trainer_target": 0.85},
    **{cnn: {"forward_target": 0.80, "explain_target": 2.50} for cnn in ("ResNet-50", "ResNet-18", "DenseNet-121")},
}
COMPILED_FORWARD_TARGET = 1.0  # against the compiled source
MEMORY_TARGET_PCT = 5.0  # B-cos minus source growth of the held tensors, in % of the B-cos weights: no cached copy
MB = 2**20

CSV_SETTINGS = ("date", "machine", "cpu_count", "gpu", "threads", "device", "dtype", "batch_size", "image_size")
CSV_SETTINGS += ("rounds", "compile", "fast_paths", "model")
CSV_FIGURES = (
    "source_images_per_s",
    "bcos_images_per_s",
    "forward_ratio",
    "class_token_forward_ratio",
    "explain_images_per_s",
    "explain_over_forward",
    "source_step_images_per_s",
    "bcos_step_images_per_s",
    "step_ratio",
    "trainer_ratio",
    "authors_forward_speedup",
    "authors_class_token_speedup",
    "authors_explain_speedup",
    "memory_source_growth_mb",
    "memory_bcos_growth_mb",
    "memory_bcos_weights_mb",
    "memory_extra_growth_pct",
    "memory_extra_held_pct",
)
CSV_TARGETS = ("forward_target", "explain_target", "step_target", "trainer_target", "memory_target")
CSV_COLUMNS = CSV_SETTINGS + CSV_FIGURES + CSV_TARGETS


@dataclass
class Pair:
    """A random-weight source and its B-cos form, with what the timing process needs to feed them."""

    label: str  # family first ("ViT-S/16 224px"): TARGETS is keyed by it
    source: torch.nn.Module
    bcos: PreTrainedModel
    kind: str  # "classifier" (logits, explained: each image's top class) or "clip" (image embeddings)
    mean: tuple[float, ...]  # the source's input normalisation (folded into the B-cos model's first layer)
    std: tuple[float, ...]
    num_labels: int = 1000
    torchvision_name: str | None = None  # the constructor of a torchvision source


@dataclass
class Saved:
    """Where a pair was saved, and the part of a timing spec that describes it."""

    label: str
    folder: Path
    model_spec: dict


@dataclass
class Settings:
    """What every measurement of one run shares; a CSV row records it beside the figures."""

    device: str
    dtype: str
    batch_size: int
    image_size: int
    rounds: int
    threads: int
    compile: bool
    flush_denormals: bool
    fast_paths: tuple[bool, ...]  # (True,) or, with --reference, (True, False)


def add_arguments(
    parser: argparse.ArgumentParser, models: list[str], default_models: list[str], memory_default: list[str]
) -> None:
    """The flags both benchmark scripts share."""
    parser.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:<index>")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="both models' (default: %(default)s)")
    parser.add_argument("--batch-size", type=at_least(1), default=8, help="images per pass (default: %(default)s)")
    parser.add_argument("--image-size", type=at_least(1), default=224, help="default: %(default)s")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed rounds (each figure is their median)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="CPU threads (ignored on an accelerator)")
    parser.add_argument("--models", nargs="*", default=default_models, choices=models, help="timed (none: skip)")
    parser.add_argument(
        "--memory-models", nargs="*", default=memory_default, choices=models, help="memory growth of these (none: skip)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both models' forward before timing")
    parser.add_argument(
        "--reference", action="store_true", help=f"also run with every fast path off ({FAST_PATHS_VARIABLE}=0)"
    )
    parser.add_argument(
        "--csv", type=csv_path, help="append one row per model and setting to this CSV file (checked before timing)"
    )


def csv_path(text: str) -> Path:
    """An argparse ``type``: a CSV file this benchmark can append to (new, empty, or with its columns), refused at
    once rather than after the timing."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; pass a CSV file")
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise argparse.ArgumentTypeError(f"{path} has other columns than this benchmark writes; pass a new file")
    return path


def settings_from(args: argparse.Namespace, flush_denormals: bool = False) -> Settings:
    """The settings of the shared flags (``--reference`` adds the run with every fast path off)."""
    if args.repeats < 1 or args.batch_size < 1 or args.threads < 1:
        raise ValueError("--repeats, --batch-size and --threads must be at least 1")
    return Settings(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        image_size=args.image_size,
        rounds=args.repeats,
        threads=args.threads,
        compile=args.compile,
        flush_denormals=flush_denormals,
        fast_paths=(True, False) if args.reference else (True,),
    )


def save_pair(pair: Pair, folder: Path) -> Saved:
    """Save the B-cos model with its remote code, and the source as its library saves it (transformers:
    ``save_pretrained``; torchvision: a safetensors state dict beside the constructor's name)."""
    pair.bcos.save_pretrained(folder / "bcos")
    if pair.torchvision_name is None:
        pair.source.save_pretrained(folder / "source")
    else:
        (folder / "source").mkdir(parents=True)
        save_file(pair.source.state_dict(), folder / "source" / "model.safetensors")
        (folder / "source" / "torchvision.json").write_text(json.dumps({"constructor": pair.torchvision_name}))
    auto_class = "AutoModelForImageClassification" if pair.kind == "classifier" else "AutoModel"
    spec = dict(
        bcos=str(folder / "bcos"),
        bcos_auto_class=auto_class,
        source=str(folder / "source"),
        kind=pair.kind,
        mean=list(pair.mean),
        std=list(pair.std),
        num_labels=pair.num_labels,
        num_prompts=10,
    )
    return Saved(pair.label, folder, spec)


def clean_environment(folder: Path, fast_paths: bool) -> dict[str, str]:
    """This environment without a path to this checkout, with the fast-path switch set, and with a private cache
    for the remote code that transformers copies out of a folder."""
    env = dict(os.environ)
    kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and not (Path(p) / "bcos_zoo").is_dir()]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    env.pop(FAST_PATHS_VARIABLE, None)
    if not fast_paths:
        env[FAST_PATHS_VARIABLE] = "0"
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(folder / "modules"))
    return env


class Benchmark:
    """Runs the timing process on saved pairs, prints each table as its figures come, and keeps them for CSV."""

    def __init__(self, settings: Settings, timing_script: Path, builders: dict[str, Callable[[int], Pair]], root: Path):
        logging.disable_progress_bar()  # saving and loading a model's weights: one bar each, many models
        self.settings = settings
        self.timing_script = timing_script
        self.builders = builders
        self.root = root
        self._saved: dict[tuple[str, int], Saved] = {}
        self.records: dict[tuple[str, bool, tuple], dict] = {}  # (label, fast paths, settings of its own)
        self.bcos_classes: set[str] = set()
        self.isolated_runs = 0  # timing processes that reported `import bcos_zoo` failing

    def saved(self, name: str, image_size: int | None = None) -> Saved:
        """The pair ``name`` at ``image_size``, built and saved on first use."""
        size = image_size or self.settings.image_size
        if (name, size) not in self._saved:
            torch.manual_seed(0)
            pair = self.builders[name](size)
            self._saved[name, size] = save_pair(pair, self.root / f"{name}-{size}")
        return self._saved[name, size]

    def run(self, task: str, saved: Saved, fast_paths: bool = True, **overrides) -> dict:
        """One task in a fresh interpreter that cannot import bcos_zoo; its figures, after checking that it could
        not."""
        s = self.settings
        spec = dict(saved.model_spec, task=task, device=s.device, dtype=s.dtype, batch_size=s.batch_size)
        spec.update(image_size=s.image_size, rounds=s.rounds, threads=s.threads, compile=s.compile)
        spec.update(flush_denormals=s.flush_denormals, **overrides)
        completed = subprocess.run(
            [sys.executable, str(self.timing_script), json.dumps(spec)],
            cwd=saved.folder,
            env=clean_environment(saved.folder, fast_paths),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the timing process failed on {saved.label} ({task}); its error is above")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        if result["bcos_zoo_importable"]:
            raise RuntimeError("bcos_zoo was importable in the timing process: the figures would not be of remote code")
        self.isolated_runs += 1
        if "bcos_class" in result:
            self.bcos_classes.add(result["bcos_class"])
        return result

    def record(self, label: str, fast_paths: bool, measured: dict | None = None, **figures: float) -> None:
        """Keep figures for the CSV; ``measured``: the settings they were measured at where those are not the run's
        (the authors' ViT at 224 px, the Trainer and the memory uncompiled), which their row then states."""
        own = tuple(
            sorted((key, value) for key, value in (measured or {}).items() if getattr(self.settings, key) != value)
        )
        self.records.setdefault((label, fast_paths, own), {}).update(figures)

    def targets(self, label: str) -> dict[str, float]:
        found = dict(TARGETS.get(label.split()[0], {}), memory_target=MEMORY_TARGET_PCT)
        if self.settings.compile:
            found["forward_target"] = COMPILED_FORWARD_TARGET
        return found

    # -- the tables ----------------------------------------------------------------------------------------------

    def print_settings(self) -> None:
        s = self.settings
        threads = s.threads if s.device == "cpu" else "-"
        print(
            f"device={s.device} dtype={s.dtype} batch={s.batch_size} image={s.image_size}px threads={threads} "
            f"compile={s.compile} rounds={s.rounds}",
            flush=True,
        )

    def compare(self, names: list[str]) -> None:
        """Forward, explanation and training step of each source and its B-cos form (and the targets below each)."""
        print(COMPARE_TABLE.header(), flush=True)
        for name in names:
            saved = self.saved(name)
            for fast in self.settings.fast_paths:
                r = self.run("compare", saved, fast)
                self.record(saved.label, fast, **{key: r[key] for key in CSV_FIGURES if key in r})
                print(COMPARE_TABLE.row(saved.label, fast, r), flush=True)
            targets = self.targets(saved.label)
            if "forward_target" in targets:
                print(COMPARE_TABLE.targets(targets, r), flush=True)
        if self.settings.compile:
            print(f"compiled: the forward target is {COMPILED_FORWARD_TARGET:.2f}x the compiled source")

    def trainer(self, name: str) -> None:
        """Fine-tuning throughput of the source and its B-cos form through the HF Trainer."""
        saved = self.saved(name)
        print(f"\n{saved.label} fine-tuning through the HF Trainer (forward, loss, backward, AdamW step)")
        print(TRAINER_TABLE.header())
        for fast in self.settings.fast_paths:
            r = self.run("trainer", saved, fast)
            trained = {"compile": False} | ({} if self.settings.dtype == "bfloat16" else {"dtype": "float32"})
            self.record(saved.label, fast, trained, trainer_ratio=r["trainer_ratio"])  # bfloat16 as autocast
            print(TRAINER_TABLE.row(saved.label, fast, r), flush=True)
        print(TRAINER_TABLE.targets(self.targets(saved.label)))

    def authors(self, name: str) -> None:
        """This package's B-cos ViT-S/16 (at 224 px, the only size theirs takes) against the authors' ``bcos``."""
        saved = self.saved(name, image_size=224)
        print(f"\n{saved.label}: bcos_zoo (loaded from the saved folder) vs the authors' bcos package")
        print(AUTHORS_TABLE.header())
        for fast in self.settings.fast_paths:
            r = self.run("authors", saved, fast, image_size=224)
            speedups = dict(
                authors_forward_speedup=r["forward_speedup"],
                authors_class_token_speedup=r["class_token_speedup"],
                authors_explain_speedup=r["explain_speedup"],
            )
            self.record(saved.label, fast, {"image_size": 224, "compile": False}, **speedups)
            print(AUTHORS_TABLE.row(saved.label, fast, r), flush=True)
        print(
            "(speed-up: their time / ours; cls-token: ours with class_token_only=True, the same logits with the last "
            "block on the class token alone; their explanation batched as ours: one backward of each top logit)"
        )

    def memory(self, names: list[str]) -> None:
        """Memory growth over the first forward passes, B-cos against source, each model in a fresh process."""
        unit = "allocated GPU memory" if self.settings.device.startswith("cuda") else "resident set"
        print(f"\nmemory: growth of the {unit} over 3 warm-up forward passes at batch 1 (inference mode), MB")
        print(MEMORY_TABLE.header())
        for name in names:
            saved = self.saved(name)
            source = self.run("memory", saved, which="source", compile=False)  # compiling would dwarf the growth
            for fast in self.settings.fast_paths:
                bcos = self.run("memory", saved, fast, which="bcos", compile=False)
                extra = bcos["growth_bytes"] - source["growth_bytes"]
                held = bcos["held_growth_bytes"] - source["held_growth_bytes"]
                figures = dict(
                    memory_source_growth_mb=source["growth_bytes"] / MB,
                    memory_bcos_growth_mb=bcos["growth_bytes"] / MB,
                    memory_bcos_weights_mb=bcos["weights_bytes"] / MB,
                    memory_extra_growth_pct=100 * extra / bcos["weights_bytes"],
                    memory_extra_held_pct=100 * held / bcos["weights_bytes"],
                )
                self.record(saved.label, fast, {"compile": False}, **figures)
                print(MEMORY_TABLE.row(saved.label, fast, figures), flush=True)
            print(MEMORY_TABLE.targets(self.targets(saved.label)))
        print(
            "(extra growth: B-cos growth minus source growth, in % of the B-cos weights; extra held: the same for the "
            "tensors Python holds, where a cached copy of the weights shows exactly and one-off library allocations "
            "do not)"
        )

    def print_isolation(self) -> None:
        """What was timed: the remote-code classes, and how many timing processes reported bcos_zoo unimportable."""
        if self.bcos_classes:
            print(f"\nB-cos classes timed (remote code from the saved folders): {', '.join(sorted(self.bcos_classes))}")
        print(f"import bcos_zoo in the timing processes: failed in all {self.isolated_runs}")

    # -- CSV ----------------------------------------------------------------------------------------------------

    def csv_rows(self) -> list[dict]:
        s = self.settings
        common = dict(
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            machine=processor_name(),
            cpu_count=os.cpu_count(),
            gpu=torch.cuda.get_device_name() if s.device.startswith("cuda") else "",
            threads=s.threads if s.device == "cpu" else "",
            device=s.device,
            dtype=s.dtype,
            batch_size=s.batch_size,
            image_size=s.image_size,
            rounds=s.rounds,
            compile=s.compile,
        )
        rows = []
        for (label, fast, measured), figures in self.records.items():
            targets = {key: value for key, value in self.targets(label).items() if key in CSV_TARGETS}
            row = dict(common, **dict(measured), fast_paths="on" if fast else "off", model=label)
            rows.append(dict(row, **figures, **targets))
        return rows

    def append_csv(self, path: Path) -> None:
        """Append this run's rows to ``path`` (header first in a new file; see :func:`csv_path`)."""
        fresh = not path.exists() or path.stat().st_size == 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            if fresh:
                writer.writeheader()
            for row in self.csv_rows():
                writer.writerow({key: rounded(value) for key, value in row.items()})
        print(f"\nappended to {path}: {len(self.records)} row(s)")


def rounded(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def processor_name() -> str:
    """What the CPU is: ``platform.processor()`` where it says more than the architecture, else /proc/cpuinfo's
    model name (Linux)."""
    name = platform.processor()
    if name and name != platform.machine():
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


@dataclass
class Table:
    """Fixed-width columns: (header, key in the figures, format, key of the target printed under it or None)."""

    columns: tuple[tuple[str, str, str, str | None], ...]
    label_width: int = 20

    def header(self) -> str:
        cells = "".join(f"{h:>{len(h) + 3}}" for h, *_ in self.columns)
        line = f"{'model':<{self.label_width}}{'fast paths':>11}{cells}"
        return f"{line}\n{'-' * len(line)}"

    def row(self, label: str, fast_paths: bool, figures: dict) -> str:
        """One model's figures; ``-`` where it has none (a CNN has no class token)."""
        cells = "".join(
            f"{format(figures[key], fmt) if key in figures else '-':>{len(h) + 3}}" for h, key, fmt, _ in self.columns
        )
        return f"{label:<{self.label_width}}{'on' if fast_paths else 'off':>11}{cells}"

    def targets(self, targets: dict[str, float], figures: dict | None = None) -> str:
        """The bounds under the columns that have one (and, given ``figures``, a figure in them)."""

        def cell(h: str, key: str, target_key: str | None) -> str:
            if target_key not in targets or (figures is not None and key not in figures):
                return " " * (len(h) + 3)
            bound = "<=" if target_key in ("explain_target", "memory_target") else ">="
            return f"{bound}{targets[target_key]:.2f}".rjust(len(h) + 3)

        cells = "".join(cell(h, key, t) for h, key, _, t in self.columns)
        return f"{'  target':<{self.label_width}}{'':>11}{cells}".rstrip()


COMPARE_TABLE = Table(
    (
        ("source img/s", "source_images_per_s", ".2f", None),
        ("B-cos img/s", "bcos_images_per_s", ".2f", None),
        ("fwd ratio", "forward_ratio", ".2f", "forward_target"),
        ("explain img/s", "explain_images_per_s", ".2f", None),
        ("explain/fwd", "explain_over_forward", ".2f", "explain_target"),
        ("source step img/s", "source_step_images_per_s", ".2f", None),
        ("B-cos step img/s", "bcos_step_images_per_s", ".2f", None),
        ("step ratio", "step_ratio", ".2f", "step_target"),
        ("cls-token fwd ratio", "class_token_forward_ratio", ".2f", "forward_target"),
    )
)
TRAINER_TABLE = Table(
    (
        ("source img/s", "source_images_per_s", ".2f", None),
        ("B-cos img/s", "bcos_images_per_s", ".2f", None),
        ("trainer ratio", "trainer_ratio", ".2f", "trainer_target"),
    )
)
AUTHORS_TABLE = Table(
    (
        ("bcos_zoo img/s", "ours_images_per_s", ".2f", None),
        ("bcos img/s", "theirs_images_per_s", ".2f", None),
        ("fwd speed-up", "forward_speedup", ".2f", None),
        ("cls-token speed-up", "class_token_speedup", ".2f", None),
        ("bcos_zoo explain img/s", "ours_explain_images_per_s", ".2f", None),
        ("bcos explain img/s", "theirs_explain_images_per_s", ".2f", None),
        ("explain speed-up", "explain_speedup", ".2f", None),
    )
)
MEMORY_TABLE = Table(
    (
        ("source growth", "memory_source_growth_mb", ".1f", None),
        ("B-cos growth", "memory_bcos_growth_mb", ".1f", None),
        ("B-cos weights", "memory_bcos_weights_mb", ".1f", None),
        ("extra growth %", "memory_extra_growth_pct", ".2f", None),
        ("extra held %", "memory_extra_held_pct", ".2f", "memory_target"),
    )
)
