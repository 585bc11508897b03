"""Speed and memory of the B-cos transformers against their standard sources, as transformers loads them.

    python scripts/benchmark.py                      # CPU, 2 threads, float32, 224 px, batch 8: ViT-S and CLIP B/32
    python scripts/benchmark.py --models vit --reference --csv docs/speed/vit.csv
    python scripts/benchmark.py --device cuda --dtype bfloat16 --compile

Models: the ViT-S/16 classifier and the CLIP ViT-B/32 image tower (with projection), random weights (speed does not
depend on them), B-cosified at B = 2 with biases removed. Each pair is saved (the B-cos model with its remote code,
the source with ``save_pretrained``) and timed by ``scripts/timing.py`` in a separate process that cannot import
bcos_zoo, so the figures are of the code users download, loaded with ``from_pretrained(..., trust_remote_code=True)``.

Per model, in interleaved rounds (each round runs every call once, in turn; each figure the median of ``--repeats``
rounds): forward throughput of the source and of the B-cos model without autograd, their ratio (target >= 0.9 for
ViT-S), the cost of one batched explanation of each image's top class (CLIP: of the best of 10 random prompt
embeddings) in B-cos forward passes (target <= 2.2), and the ratio of training-step throughput, forward and backward
of a loss (target >= 0.85). ``--compile`` compiles both forwards with ``torch.compile`` (target: forward >= 1.0x the
compiled source). ``--reference`` adds a row per model with every fast path of the hub-facing code switched off
(``BCOS_FAST_PATHS=0``).

Memory (``--memory-models``, default ViT-S; ``vit-b`` adds ViT-B/16): each model loaded in a fresh process, its
resident set recorded before and after three warm-up forward passes at batch 1; the B-cos growth minus the source's,
in % of the B-cos weights, should stay <= 5% (no second copy of the weights kept).

``--train``: fine-tuning throughput through the HF Trainer (forward, loss, backward, AdamW step) of ViT-S and its
B-cos form under identical TrainingArguments; target ratio >= 0.85.

When the authors' ``bcos`` package is importable (``pip install bcos einops``; not a dependency of this project),
another table compares the saved B-cos ViT-S/16 with theirs (``simple_vit_s_patch16_224``: same width, depth and
heads), forward and explanation, at 224 px.

``--csv PATH`` appends one row per model and setting (docs/speed/vit.csv collects them; ``scripts/plot_speed.py``
draws the file).
"""

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTForImageClassification

from bcos_zoo import BcosCLIPVisionModel, BcosViTForImageClassification
from bcos_zoo.conversion.common import OPENAI_CLIP_NORMALIZATION
from bcos_zoo.zoo.benchmarking import Benchmark, Pair, add_arguments, settings_from
from bcos_zoo.zoo.cli import run_script


TIMING = Path(__file__).with_name("timing.py")
AUTHORS_CASE = "authors-vit"
HALF = (0.5, 0.5, 0.5)  # transformers' ViT normalisation


def vit(name: str, hidden: int, heads: int, image_size: int) -> Pair:
    """A standard ViT classifier (12 blocks, patch 16, 1000 classes) and its B-cosified form."""
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=12,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        image_size=image_size,
        num_labels=1000,
    )
    source = ViTForImageClassification(config).eval()
    bcos = BcosViTForImageClassification.from_pretrained_standard(
        source, b=2.0, bias="remove", image_mean=HALF, image_std=HALF
    )
    return Pair(f"{name} {image_size}px", source, bcos.eval(), "classifier", HALF, HALF)


def vit_s(image_size: int) -> Pair:
    return vit("ViT-S/16", 384, 6, image_size)


def vit_b(image_size: int) -> Pair:
    return vit("ViT-B/16", 768, 12, image_size)


def clip_b32(image_size: int) -> Pair:
    """A CLIP ViT-B/32 image tower with projection and its B-cosified form."""
    config = CLIPVisionConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=32,
        image_size=image_size,
    )
    source = CLIPVisionModelWithProjection(config).eval()
    mean, std = OPENAI_CLIP_NORMALIZATION
    bcos = BcosCLIPVisionModel.from_pretrained_standard(source, b=2.0, bias="remove", image_mean=mean, image_std=std)
    return Pair(f"CLIP-B/32 {image_size}px", source, bcos.eval(), "clip", mean, std)


BUILDERS = {"vit": vit_s, "clip": clip_b32, "vit-b": vit_b}


def authors_package_available() -> bool:
    """Whether the authors' ``bcos`` package and the ``einops`` its ViTs need are installed (not imported here)."""
    return all(importlib.util.find_spec(name) is not None for name in ("bcos", "einops"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ["vit", "clip", AUTHORS_CASE] if authors_package_available() else ["vit", "clip"]
    add_arguments(parser, [*BUILDERS, AUTHORS_CASE], defaults, memory_default=["vit"])
    parser.add_argument("--train", action="store_true", help="also ViT-S fine-tuning throughput through the Trainer")
    args = parser.parse_args()
    if AUTHORS_CASE in args.memory_models:
        parser.error(f"--memory-models takes {', '.join(BUILDERS)}")
    for name in {*args.models, *args.memory_models}:  # each model's patch size must tile the images
        patch = 32 if name == "clip" else 16
        if args.image_size % patch:
            parser.error(f"--image-size must be a multiple of {patch} for {name} (patches of {patch} pixels)")
    with tempfile.TemporaryDirectory(prefix="bcos-benchmark-") as root:
        bench = Benchmark(settings_from(args), TIMING, BUILDERS, Path(root))
        bench.print_settings()
        compared = [name for name in args.models if name in BUILDERS]
        if compared:
            bench.compare(compared)
        if args.train:
            bench.trainer("vit")
        if AUTHORS_CASE in args.models:
            if authors_package_available():
                bench.authors("vit")
            else:
                print("\nThe authors' bcos package is not installed (pip install bcos einops): comparison skipped.")
        if args.memory_models:
            bench.memory(args.memory_models)
        bench.print_isolation()
        if args.csv:
            bench.append_csv(args.csv)


if __name__ == "__main__":
    sys.exit(run_script(main))
