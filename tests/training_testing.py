"""Tiny data and sources for the fine-tuning tests: a class-per-folder image set and a small standard ViT."""

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sources import IMAGENET_MEAN, IMAGENET_STD, hf_vit, save_hf_source


REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "scripts" / "finetune.py"
CLASSES = ("red", "green", "blue")


def make_image_folder(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Noisy images whose dominant colour channel is the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = rng.uniform(0, 120, size=(size, size, 3))
            pixels[..., label] += 120
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{index}.png")
    return root


def make_vit_source(folder: Path, seed: int = 0) -> Path:
    """A small random-initialised HF ViT classifier over :data:`CLASSES`, saved with its processor."""
    model = hf_vit(labels=len(CLASSES), seed=seed)
    model.config.id2label = dict(enumerate(sorted(CLASSES)))  # as an image folder of CLASSES numbers them
    model.config.label2id = {name: index for index, name in model.config.id2label.items()}
    save_hf_source(model, folder, IMAGENET_MEAN, IMAGENET_STD)
    return folder


def finetune_command(source: Path, data: Path, output: Path, *extra: str) -> list[str]:
    """``python scripts/finetune.py`` on tiny data: few steps, small batches, on the CPU."""
    return [
        sys.executable,
        str(FINETUNE),
        "--model",
        str(source),
        "--dataset",
        str(data),
        "--output-dir",
        str(output),
        "--batch-size",
        "8",
        "--learning-rate",
        "1e-3",
        "--device",
        "cpu",
        *extra,
    ]


def child_env(**extra: str) -> dict[str, str]:
    """The test environment for a child process, without pytest's variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env
