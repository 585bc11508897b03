r"""Training with explanations in miniature: model guidance and e2KD on Fashion-MNIST with decoys, offline.

    python scripts/reproduce_guidance.py            # the default run: about half an hour on 2 CPU cores
    python scripts/reproduce_guidance.py --quick    # a smoke run at toy size (what the tests run)
    python scripts/reproduce_guidance.py --full     # the model guidance paper's whole grid: hours (see below)

Fashion-MNIST images on 36 px canvases with a class-coloured square outside the garment in training and a square of
another class's colour at test time (``bcos_zoo.data.decoys``). A small B-cos ResNet from scratch learns the square
as a shortcut (the premises are measured and printed first); then, for each of ``--seeds``:

1. model guidance (recipe ``bcos-resnet-guided-decoys``): the unguided model fine-tuned without guidance and with
   the energy loss on its B-cos explanations at the input, with every box and with ``--box-fractions`` of them
   (``--full``: also L1, RRR and PPCE; IxG and GradCAM; the final layer; box dilation); accuracy on shuffled decoys,
   EPG and IoU, and the accuracy-EPG trade-off;
2. e2KD (recipe ``bcos-resnet-e2kd-decoys``): the same model trained on clean canvases teaches students on decoy
   data with plain KD and with e2KD, few-shot and on all training images; accuracy, agreement with the teacher,
   explanation cosine and EPG.

Every row is reported as mean +- standard deviation over the seeds, with a verdict per claim from the spread.
``--output-dir`` receives ``guidance.json``, ``report.md`` and four PNGs; ``--work-dir`` holds the models, and
finished runs there are re-used by a later call. The device is the GPU when there is one. The work is done by
``bcos_zoo.zoo.guidance_reproduction``.

``--full`` was measured on 2 CPU cores as three processes at once, one per seed (``--seeds 0``, ``--seeds 1``,
``--seeds 2``, one torch thread each, one ``--work-dir``), trained from nothing: 124 min of wall time; the runs' own
training times add up to 348 min, five hours of them the guided fine-tuning. A last call with all seeds then re-uses
the runs and writes the report (5 min; docs/reproductions.md).
"""

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from bcos_zoo.zoo.cli import at_least, bounded, device, run_script
from bcos_zoo.zoo.guidance_reproduction import GuidanceSettings, reproduce_guidance


POSITIVE, NON_NEGATIVE = bounded(0, inclusive=False), bounded(0, inclusive=True)
# each setting's type where its default's type would accept values no run can use
TYPES = dict(
    seeds=at_least(0),
    train_samples=at_least(1),
    eval_samples=at_least(1),
    base_epochs=POSITIVE,
    guidance_epochs=POSITIVE,
    student_epochs=POSITIVE,
    few_shot_per_class=at_least(1),
    few_shot_epochs=POSITIVE,
    energy_weight=NON_NEGATIVE,
    l1_weight=NON_NEGATIVE,
    rrr_weight=NON_NEGATIVE,
    ppce_weight=NON_NEGATIVE,
    box_fractions=bounded(0, inclusive=False, high=1),
    explanation_weight=NON_NEGATIVE,
    kd_temperature=POSITIVE,
    num_examples=at_least(1),
    device=device,
)


def parse_args(argv: list[str]) -> GuidanceSettings:
    default = GuidanceSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a smoke run at toy size, two seeds")
    preset.add_argument("--full", action="store_true", help="the whole grid of losses, attributions, layers, boxes")
    for spec in fields(GuidanceSettings):
        if spec.name == "grid":
            continue
        value = getattr(default, spec.name)
        flag = f"--{spec.name.replace('_', '-')}"
        kind = TYPES.get(spec.name, type(value[0]) if isinstance(value, list) else type(value))
        kind = Path if isinstance(value, Path) else kind
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        help = f"{spec.metadata['help']} (default: {shown})"
        parser.add_argument(flag, type=kind, nargs="+" if isinstance(value, list) else None, default=None, help=help)
    arguments = vars(parser.parse_args(argv))
    quick, full = arguments.pop("quick"), arguments.pop("full")
    given = {name: value for name, value in arguments.items() if value is not None}
    if quick:
        return GuidanceSettings.quick(**given)
    return GuidanceSettings(**given, grid="full" if full else "default")


def main(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[1:] if argv is None else list(argv)
    return reproduce_guidance(
        parse_args(arguments), command="python scripts/reproduce_guidance.py " + shlex.join(arguments)
    )


if __name__ == "__main__":
    sys.exit(run_script(main, on_interrupt="run the same command again to continue"))
