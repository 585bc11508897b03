r"""Training with explanations in miniature: model guidance and e2KD on Fashion-MNIST with decoys, offline, on a CPU.

    python scripts/reproduce_guidance.py

Fashion-MNIST images on 48 px canvases with a class-coloured square outside the object in training and a square of
another class's colour at test time (``bcos_zoo.data.decoys``). Small B-cos ViTs from scratch:

1. model guidance (recipe ``bcos-vit-guided-decoys``): no guidance, then the energy loss with every box and with
   ``--box-fractions`` of them; accuracy, EPG and IoU on the shuffled-decoy test images;
2. e2KD (recipe ``bcos-vit-e2kd-decoys``): a wider teacher trained on clean canvases (``bcos-vit-canvas-teacher``),
   students distilled on decoy data with plain KD and with e2KD, few-shot and on all training images; accuracy,
   agreement with the teacher, explanation cosine and EPG.

``--output-dir`` receives ``guidance.json``, ``report.md`` and three PNGs; ``--work-dir`` holds the models, and
finished runs there are re-used by a later call. The work is done by ``bcos_zoo.zoo.guidance_reproduction``.
"""

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from bcos_zoo.zoo.cli import run_script
from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings, reproduce_guidance


def parse_args(argv: list[str]) -> GuidanceSettings:
    default = GuidanceSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in fields(GuidanceSettings):
        value = getattr(default, spec.name)
        flag = f"--{spec.name.replace('_', '-')}"
        if isinstance(value, list):
            parser.add_argument(flag, type=float, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value) if not isinstance(value, Path) else Path, default=value)
    return GuidanceSettings(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[1:] if argv is None else list(argv)
    return reproduce_guidance(
        parse_args(arguments), command="python scripts/reproduce_guidance.py " + shlex.join(arguments)
    )


if __name__ == "__main__":
    sys.exit(run_script(main))
