"""Speed of the B-cos CNNs against their standard sources, measured side by side in one run.

    python scripts/benchmark_cnn.py                          # CPU, float32, ResNet-50 at 224 px, batch 8, 2 threads
    python scripts/benchmark_cnn.py --device cuda --dtype bfloat16 --models resnet50 densenet121

Per model: forward throughput of the source (torchvision, random weights: speed does not depend on them) and of its
B-cosified form (B=2, biases removed, the paper's recipe), their ratio (target >= 0.8), the explanation's
throughput, and the cost of one batched explanation in B-cos forward passes (target <= 2.5). The three calls run in
turns, so load from elsewhere on the machine hits all of them alike; each figure is the median of ``--repeats``.

Denormal floats are flushed to zero on the CPU (``--keep-denormals`` to keep them). With random weights and
B = 2, the B-cos factor ``|cos| < 1`` shrinks the signal at every layer, and in a deep network the activations
reach float32's denormal range, where x86 arithmetic is some 10x slower; a trained model's activations do not.
The flush applies to both models and does not change the source's numbers.
"""

import argparse
import sys

import torch
import torchvision

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification
from bcos_zoo.conversion.common import IMAGENET_NORMALIZATION
from bcos_zoo.zoo.benchmarking import DTYPES, timed
from bcos_zoo.zoo.cli import run_script


MODELS = {
    "resnet18": (torchvision.models.resnet18, BcosResNetForImageClassification),
    "resnet50": (torchvision.models.resnet50, BcosResNetForImageClassification),
    "densenet121": (torchvision.models.densenet121, BcosDenseNetForImageClassification),
}


def benchmark(name: str, device: str, dtype: torch.dtype, batch_size: int, size: int, repeats: int) -> dict:
    """Source and B-cos forward (without autograd) and the B-cos explanation of each image's top class."""
    build_source, bcos_class = MODELS[name]
    source = build_source(weights=None).eval()
    bcos = bcos_class.from_pretrained_standard(
        source, b=2.0, bias="remove", image_mean=IMAGENET_NORMALIZATION[0], image_std=IMAGENET_NORMALIZATION[1]
    ).eval()
    source, bcos = source.to(device, dtype), bcos.to(device, dtype)
    images = torch.rand(batch_size, 3, size, size, device=device, dtype=dtype)
    mean = torch.tensor(IMAGENET_NORMALIZATION[0], device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMALIZATION[1], device=device, dtype=dtype).view(1, 3, 1, 1)
    normalised = (images - mean) / std

    def inference(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    t = timed(
        {
            "source": inference(lambda: source(normalised)),
            "bcos": inference(lambda: bcos(pixel_values=images)),
            "explain": lambda: bcos.explain(images),
        },
        device,
        repeats,
    )
    return dict(
        model=f"{name} {size}px",
        source_images_per_s=batch_size / t["source"],
        bcos_images_per_s=batch_size / t["bcos"],
        explain_images_per_s=batch_size / t["explain"],
        forward_ratio=t["source"] / t["bcos"],
        explain_over_forward=t["explain"] / t["bcos"],
    )


HEADER = f"{'model':<20}{'source img/s':>14}{'B-cos img/s':>13}{'fwd ratio':>11}{'explain img/s':>15}{'expl/fwd':>10}"


def row(r: dict) -> str:
    return (
        f"{r['model']:<20}{r['source_images_per_s']:>14.1f}{r['bcos_images_per_s']:>13.1f}{r['forward_ratio']:>11.2f}"
        f"{r['explain_images_per_s']:>15.1f}{r['explain_over_forward']:>10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (ignored on an accelerator)")
    parser.add_argument("--models", nargs="+", default=["resnet50"], choices=list(MODELS))
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the figures are medians)")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        torch.set_flush_denormal(not args.keep_denormals)
    torch.manual_seed(0)
    flush = args.device == "cpu" and not args.keep_denormals
    print(
        f"device={args.device} dtype={args.dtype} batch={args.batch_size} threads={torch.get_num_threads()} "
        f"denormals={'flushed' if flush else 'kept'}"
    )
    print(HEADER)
    print("-" * len(HEADER))
    for name in args.models:
        result = benchmark(name, args.device, DTYPES[args.dtype], args.batch_size, args.image_size, args.repeats)
        print(row(result), flush=True)
    print("targets: fwd ratio >= 0.80 (B-cos vs source throughput), explain/fwd <= 2.50")


if __name__ == "__main__":
    sys.exit(run_script(main))
