r"""The B-cosification paper's central claims in miniature, on Fashion-MNIST, offline, on a CPU.

    python scripts/reproduce.py --epochs 4 --source-epochs 3 --max-train-samples 10000 --num-grids 25 --ig-steps 8
    python scripts/reproduce.py --family resnet ...

Three models of one architecture (``--family vit``: the ``vit-fashion-mnist`` ViT, 32 px, patch 4, 4 layers,
width 96; ``--family resnet``: the ``resnet-fashion-mnist`` ResNet, 32 px, 3 basic stages of widths 32/64/128):

1. a standard model trained from scratch (recipe ``vit-fashion-mnist`` / ``resnet-fashion-mnist``,
   ``--source-epochs``),
2. that model B-cosified (B = 2, biases removed) and fine-tuned (recipe ``bcos-vit-fashion-mnist`` /
   ``bcos-resnet-fashion-mnist``, ``--epochs``),
3. a B-cos model of the B-cosified model's shape trained from scratch with the same recipe as 2 (``--epochs``).

All three are trained once per seed (``--seeds``, default 0 1 2; each run takes as long as the one before). Both
B-cos runs are evaluated on the test set after every epoch (and before the first step). Then, per seed: the first
epoch at which the B-cosified run reaches the from-scratch run's final accuracy (the paper's speed-up) and the grid
pointing game of both B-cos models (their own contributions) and of the standard model under each post-hoc method
that applies to it (attention rollout only to a ViT). The report gives every row as mean +- standard deviation over
the seeds (each seed's numbers kept), checks the premises (the standard source and the from-scratch B-cos model
learned) and decides each claim from the spread: holds, does not hold, or not resolved at this size. ``--output-dir``
(default docs/reproduction, or docs/reproduction_cnn for ResNets) receives ``reproduction.json``,
``reproduction.md`` and three PNGs; ``--work-dir`` (default outputs/reproduction or outputs/reproduction_cnn) holds
the models and checkpoints in one folder per seed (``seed0`` ...), and finished runs there are re-used by a later
call (an interrupted run resumes). The work is done by ``bcos_zoo.zoo.reproduction``.
"""

import argparse
import shlex
import sys
from pathlib import Path

from bcos_zoo.evaluation.baselines import POSTHOC_METHODS
from bcos_zoo.zoo.cli import at_least, device, fraction, run_script
from bcos_zoo.zoo.reproduction import REPRODUCTIONS, ReproductionSettings, reproduce


def parse_args(argv: list[str]) -> ReproductionSettings:
    default = ReproductionSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--family", default=default.family, choices=list(REPRODUCTIONS), help="which models are compared"
    )
    parser.add_argument("--epochs", type=float, default=default.epochs, help="epochs of both B-cos runs")
    parser.add_argument(
        "--source-epochs", type=float, default=default.source_epochs, help="epochs of the standard model"
    )
    parser.add_argument(
        "--max-train-samples", type=at_least(1), help="train on the first N training images (quick runs)"
    )
    parser.add_argument("--max-eval-samples", type=at_least(1), help="test accuracy on the first N test images")
    parser.add_argument("--dataset", default=default.dataset, help="'fashion-mnist' or an image folder")
    parser.add_argument(
        "--num-grids", type=at_least(0), default=default.num_grids, help="GridPG grids (default: %(default)s)"
    )
    parser.add_argument(
        "--grid-size", type=at_least(1), default=default.grid_size, help="grids of N x N images (default: %(default)s)"
    )
    parser.add_argument(
        "--min-confidence",
        type=fraction,
        default=default.min_confidence,
        help="grids hold images classified correctly with at least this softmax probability (default: %(default)s)",
    )
    parser.add_argument(
        "--localisation-images",
        type=at_least(1),
        default=default.localisation_images,
        help="grids are drawn from the first N test images",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(POSTHOC_METHODS),
        help="post-hoc methods (default: the gradient ones, gradcam and attention_rollout that apply)",
    )
    parser.add_argument("--ig-steps", type=at_least(1), default=default.ig_steps, help="integrated gradients steps")
    parser.add_argument(
        "--num-examples", type=at_least(1), default=default.num_examples, help="columns of the explanation grid"
    )
    parser.add_argument(
        "--example-method", default=default.example_method, choices=list(POSTHOC_METHODS), help="standard model's row"
    )
    parser.add_argument("--output-dir", type=Path, help="where the report and figures go (default: the family's)")
    parser.add_argument("--work-dir", type=Path, help="where the models are trained (default: the family's)")
    parser.add_argument("--device", type=device, default=default.device, help="cpu, cuda or cuda:<index>")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seeds",
        type=at_least(0),
        nargs="+",
        default=default.seeds,
        help="each trains all three models in <work-dir>/seed<N>; rows are mean +- std over them (default: 0 1 2)",
    )
    seeds.add_argument(
        "--seed", type=at_least(0), help="one seed only (the same as --seeds N): no verdict can be reached"
    )
    parser.add_argument(
        "--threads", type=at_least(1), help="torch CPU threads (1 is often much faster for small CNNs on a shared CPU)"
    )
    values = vars(parser.parse_args(argv))
    seed = values.pop("seed")
    if seed is not None:
        values["seeds"] = [seed]
    return ReproductionSettings(**values)


def main(argv: list[str] | None = None) -> dict:
    arguments = sys.argv[1:] if argv is None else list(argv)
    return reproduce(parse_args(arguments), command="python scripts/reproduce.py " + shlex.join(arguments))


if __name__ == "__main__":
    sys.exit(run_script(main, on_interrupt="run the same command again to continue"))
