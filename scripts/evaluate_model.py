r"""Accuracy and localisation of a B-cos model, and of post-hoc explanations of its standard source, side by side.

    python scripts/evaluate_model.py --model outputs/bcos-vit-fashion-mnist/repo \
        --source outputs/vit-fashion-mnist/repo --dataset fashion-mnist --num-grids 50 --output-dir outputs/evaluation

(the two folders are what the main job, scripts/fashion_mnist.py, writes; any B-cos model folder or Hub id works)

For each model: top-1 accuracy on the split; the grid pointing game (GridPG) on ``--num-grids`` grids of
``--grid-size`` x ``--grid-size`` images of distinct classes, each classified correctly with softmax confidence
>= ``--min-confidence`` by that model, every cell's class explained on the whole grid (a model tied to one input
size: in sliding windows of that size, stride half of it, the window attributions summed); the energy pointing
game (EPG) where the dataset's items carry object boxes (``--dataset fashion-mnist-canvas-36``: every boxed image,
explained for its label); faithfulness on the first ``--faithfulness-images`` images, each explained for its
predicted class: pixel deletion and insertion (area under the probability curve at ``--faithfulness-steps`` steps)
and ROAD (pixels removed most and least relevant first, filled by noisy linear imputation, at ``--road-fractions``);
``--faithfulness-images 0`` leaves it out. The B-cos model is explained by its own contributions (``--bcos-methods``:
also by post-hoc methods of its ordinary forward), the source by each post-hoc method (``--methods``; Occlusion, LIME
and RISE cost hundreds of forward passes per image, so they run only when named). Prints a table, writes
``<output-dir>/evaluation.json`` (summary rows, every score and the faithfulness curves),
``<output-dir>/localisation.png`` (bar plot) and ``<output-dir>/faithfulness.png`` (the curves). The work is done by
``bcos_zoo.evaluation.report``.
"""

import argparse
import sys

import torch

from bcos_zoo.evaluation.baselines import DEFAULT_METHODS, FUNCTION_METHODS, METHOD_NAMES
from bcos_zoo.evaluation.faithfulness import FAITHFULNESS_METRICS, ROAD_FRACTIONS
from bcos_zoo.evaluation.report import MATCH_CLASSES, evaluate_side_by_side, format_table, output_folder, write_report
from bcos_zoo.zoo.cli import at_least, device, fraction, run_script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="B-cos model folder or Hub id")
    parser.add_argument("--source", help="its standard source (folder or Hub id), for post-hoc methods")
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="'fashion-mnist', an image folder, a Hub dataset, or Fashion-MNIST on canvases with object boxes "
        "(for EPG): 'fashion-mnist-canvas[-<px>]', 'fashion-mnist-decoys[-<px>]'",
    )
    parser.add_argument("--split", default="validation", choices=("train", "validation"), help="default: %(default)s")
    parser.add_argument("--max-images", type=at_least(1), help="use only this many of the split's images (quick runs)")
    parser.add_argument(
        "--grid-size", type=at_least(1), default=2, help="GridPG grids of N x N images (default: %(default)s)"
    )
    parser.add_argument("--num-grids", type=at_least(0), default=50, help="GridPG grids (default: %(default)s)")
    parser.add_argument(
        "--min-confidence",
        type=fraction,
        default=0.5,
        help="grids hold images classified correctly with at least this softmax probability (default: %(default)s)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHOD_NAMES),
        help=f"default: bcos and those of {', '.join(DEFAULT_METHODS)} that apply to the source",
    )
    parser.add_argument(
        "--bcos-methods",
        nargs="+",
        default=[],
        choices=list(FUNCTION_METHODS),
        help="post-hoc methods of the B-cos model",
    )
    parser.add_argument("--ig-steps", type=at_least(1), default=32, help="integrated gradients steps")
    parser.add_argument(
        "--lime-samples", type=at_least(1), default=256, help="LIME's random segment patterns per image"
    )
    parser.add_argument("--rise-masks", type=at_least(1), default=1000, help="RISE's random masks")
    parser.add_argument("--faithfulness-images", type=at_least(0), default=32, help="images for faithfulness (0: none)")
    parser.add_argument("--faithfulness-steps", type=at_least(1), default=20, help="deletion and insertion steps")
    parser.add_argument(
        "--road-fractions",
        type=fraction,
        nargs="+",
        default=list(ROAD_FRACTIONS),
        help="ROAD's shares of pixels removed",
    )
    parser.add_argument(
        "--faithfulness-metrics",
        nargs="+",
        default=list(FAITHFULNESS_METRICS),
        choices=list(FAITHFULNESS_METRICS),
        help="default: all",
    )
    parser.add_argument(
        "--output-dir",
        default="outputs/evaluation",
        help="where the table, JSON report and plot go (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="default: %(default)s")
    parser.add_argument(
        "--dataloader-num-workers",
        type=at_least(0),
        help="processes that read and resize the images classified (default: none on the CPU, up to 8 beside a GPU)",
    )
    parser.add_argument(
        "--device",
        type=device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:<index>",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the grids and the methods' draws (default: %(default)s)"
    )
    parser.add_argument(
        "--match-classes",
        default="name",
        choices=MATCH_CLASSES,
        help="name: the dataset's classes must be the model's (in any order); index: the dataset's i-th class "
        "(folders in sorted order) is the model's class i, whatever the names",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = vars(parse_args(argv))
    output_dir = output_folder(args.pop("output_dir"))  # checked now, not after the evaluation
    report = evaluate_side_by_side(**args)
    written = write_report(report, output_dir)
    print(format_table(report["rows"]))
    print(f"Wrote {', '.join(str(path) for path in written)}")
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
