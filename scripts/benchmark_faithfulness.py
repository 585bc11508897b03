r"""Time the faithfulness metrics (bcos_zoo.evaluation.faithfulness) on a ViT-S/16 at 224 px.

    python scripts/benchmark_faithfulness.py                 # CPU: 8 images, 20 steps, ROAD on 2 images
    python scripts/benchmark_faithfulness.py --device cuda   # GPU: 64 images, 100 steps, ROAD on 64 images

The models are a standard ViT-S/16 classifier (12 blocks, width 384, 6 heads, 1000 classes) and its B-cos form
(B = 2, biases removed), random weights: the time does not depend on them. Each image is explained by the B-cos
model's own contributions (the standard model: by a random map; the ranking costs the same). Per model and metric
the script prints the seconds for the whole batch of curves and the forward passes per second: deletion and
insertion at ``--steps`` (``steps + 1`` points per curve), ROAD (MoRF) at ``--road-fractions`` shares on
``--road-images`` images. The target: a 64-image, 100-step deletion curve of a ViT-S in under a minute on a GPU.
"""

import argparse
import sys
import time
from functools import partial

import torch
from transformers import ViTConfig, ViTForImageClassification

from bcos_zoo import BcosViTForImageClassification
from bcos_zoo.evaluation.baselines import load_standard_classifier
from bcos_zoo.evaluation.faithfulness import ROAD_FRACTIONS, deletion_curves, insertion_curves, road_curves
from bcos_zoo.evaluation.localisation import bcos_attribution, bcos_classifier
from bcos_zoo.zoo.cli import at_least, device, fraction, run_script


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:<index>")
    parser.add_argument(
        "--images", type=at_least(1), help="images per curve batch (default: 64 on a GPU, 8 on the CPU)"
    )
    parser.add_argument(
        "--steps", type=at_least(1), help="deletion and insertion steps (default: 100 on a GPU, 20 on the CPU)"
    )
    parser.add_argument("--road-images", type=at_least(1), help="images for ROAD (default: 64 on a GPU, 2 on the CPU)")
    parser.add_argument(
        "--road-fractions",
        type=fraction,
        nargs="+",
        default=list(ROAD_FRACTIONS),
        help="ROAD's shares of pixels removed, as evaluate_model.py takes them (default: 0.1 0.2 ... 0.9)",
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), help="images per forward pass (default: 256 on a GPU, 16 on the CPU)"
    )
    parser.add_argument("--image-size", type=at_least(1), default=224, help="default: %(default)s")
    parser.add_argument(
        "--models", nargs="+", default=["bcos", "standard"], choices=["bcos", "standard"], help="default: both"
    )
    parser.add_argument("--threads", type=at_least(1), help="torch CPU threads")
    return parser.parse_args(argv)


def vit_s(image_size: int) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=image_size,
        patch_size=16,
        num_labels=1000,
    )
    return ViTForImageClassification(config).eval()


def timed(function, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    images_count = args.images or (64 if gpu else 8)
    steps = args.steps or (100 if gpu else 20)
    road_count = args.road_images or (64 if gpu else 2)
    batch_size = args.batch_size or (256 if gpu else 16)
    fractions = args.road_fractions

    standard = vit_s(args.image_size)
    models = {}
    if "bcos" in args.models:
        bcos = BcosViTForImageClassification.from_pretrained_standard(standard, b=2.0, bias="remove").eval()
        models["B-cos ViT-S"] = (bcos_classifier(bcos.to(device)), bcos_attribution(bcos))
    if "standard" in args.models:
        classifier = load_standard_classifier(standard, (0.5,) * 3, (0.5,) * 3).to(device)
        models["ViT-S"] = (classifier, lambda x, t: torch.rand(x.shape[0], *x.shape[-2:], device=x.device))

    generator = torch.Generator().manual_seed(0)
    count = max(images_count, road_count)
    pixels = torch.rand(count, 3, args.image_size, args.image_size, generator=generator).to(device)
    device_name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device_name}; torch {torch.__version__}; {args.image_size} px; batch {batch_size}")
    print(f"{'model':<12} {'metric':<10} {'images':>6} {'points':>6} {'seconds':>8} {'forwards/s':>10}")
    rows = []
    for name, (classify, attribute) in models.items():
        with torch.no_grad():
            targets = torch.cat([classify(pixels[i : i + batch_size]).argmax(1) for i in range(0, count, batch_size)])
        maps = torch.cat([attribute(pixels[i : i + 16], targets[i : i + 16]).detach() for i in range(0, count, 16)])
        deletion_curves(classify, pixels[:2], maps[:2], targets[:2], steps=2, batch_size=batch_size)  # warm-up
        runs = {
            "deletion": (deletion_curves, images_count, dict(steps=steps)),
            "insertion": (insertion_curves, images_count, dict(steps=steps)),
            "road_morf": (road_curves, road_count, dict(fractions=fractions)),
        }
        for metric, (curves_of, num, options) in runs.items():
            inputs = (classify, pixels[:num], maps[:num], targets[:num])
            seconds, curves = timed(partial(curves_of, *inputs, **options, batch_size=batch_size), device)
            points = curves.scores.shape[1]
            rows.append(dict(model=name, metric=metric, images=num, points=points, seconds=seconds))
            print(f"{name:<12} {metric:<10} {num:>6} {points:>6} {seconds:>8.2f} {num * points / seconds:>10.1f}")
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
