"""Speed and memory of the B-cos CNNs against their torchvision sources, as transformers loads the B-cos models.

    python scripts/benchmark_cnn.py                     # CPU, 2 threads, float32, ResNet-50 at 224 px, batch 8
    python scripts/benchmark_cnn.py --models resnet50 densenet121 --reference --csv docs/speed/cnn.csv
    python scripts/benchmark_cnn.py --device cuda --dtype bfloat16

Per model: the torchvision source (random weights: speed does not depend on them) and its B-cosified form (B = 2,
biases removed, the paper's recipe) are saved, the source as a safetensors state dict beside its constructor's name,
the B-cos model with its remote code, and timed by ``scripts/timing.py`` in a separate process that cannot import
bcos_zoo (the B-cos model loaded with ``AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True)``).
In interleaved rounds (each round runs every call once, in turn; each figure the median of ``--repeats`` rounds):
forward throughput of both without autograd and their ratio (target >= 0.8), the cost of one batched explanation of
each image's top class in B-cos forward passes (target <= 2.5), and the ratio of training-step throughput (forward and
backward of cross-entropy, in training mode). ``--reference`` adds a row per model with every fast path of the
hub-facing code switched off (``BCOS_FAST_PATHS=0``); ``--memory-models`` measures memory growth over the first
forward passes as ``scripts/benchmark.py`` does; ``--csv PATH`` appends the figures (docs/speed/cnn.csv).

Denormal floats are flushed to zero on the CPU (``--keep-denormals`` to keep them). With random weights and
B = 2, the B-cos factor ``|cos| < 1`` shrinks the signal at every layer, and in a deep network the activations
reach float32's denormal range, where x86 arithmetic is some 10x slower; a trained model's activations do not.
The flush applies to both models and does not change the source's numbers.
"""

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import torchvision

from bcos_zoo import BcosDenseNetForImageClassification, BcosResNetForImageClassification
from bcos_zoo.conversion.common import IMAGENET_NORMALIZATION
from bcos_zoo.zoo.benchmarking import Benchmark, Pair, add_arguments, settings_from
from bcos_zoo.zoo.cli import run_script


TIMING = Path(__file__).with_name("timing.py")


def cnn(name: str, label: str, bcos_class: type, image_size: int) -> Pair:
    """A torchvision classifier (1000 classes) and its B-cosified form."""
    source = getattr(torchvision.models, name)(weights=None).eval()
    mean, std = IMAGENET_NORMALIZATION
    bcos = bcos_class.from_pretrained_standard(source, b=2.0, bias="remove", image_mean=mean, image_std=std)
    return Pair(f"{label} {image_size}px", source, bcos.eval(), "classifier", mean, std, torchvision_name=name)


BUILDERS = {
    "resnet50": partial(cnn, "resnet50", "ResNet-50", BcosResNetForImageClassification),
    "densenet121": partial(cnn, "densenet121", "DenseNet-121", BcosDenseNetForImageClassification),
    "resnet18": partial(cnn, "resnet18", "ResNet-18", BcosResNetForImageClassification),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, list(BUILDERS), ["resnet50"], memory_default=["resnet50"])
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero")
    args = parser.parse_args()
    if args.models and args.batch_size * (args.image_size // 32) ** 2 < 2:  # the last stage's map is 1x1 (or less)
        raise ValueError(
            "the training step's BatchNorm needs more than one value per channel, and the CNNs' last stage sees at"
            f" most one per image at {args.image_size} px: use --batch-size 2 or more, or --image-size 64 or more"
        )
    with tempfile.TemporaryDirectory(prefix="bcos-benchmark-") as root:
        flush = args.device == "cpu" and not args.keep_denormals
        bench = Benchmark(settings_from(args, flush_denormals=flush), TIMING, BUILDERS, Path(root))
        bench.print_settings()
        print(f"denormals {'flushed to zero' if flush else 'kept'}")
        if args.models:
            bench.compare(args.models)
        if args.memory_models:
            bench.memory(args.memory_models)
        bench.print_isolation()
        if args.csv:
            bench.append_csv(args.csv)


if __name__ == "__main__":
    sys.exit(run_script(main))
