"""Speed of the B-cos CLIP image tower against the transformers CLIP image tower it was B-cosified from.

    python scripts/benchmark_clip_case.py                        # CPU, float32, ViT-B/32 at 224 px, batch 8
    python scripts/benchmark_clip_case.py --device cuda --dtype bfloat16 --batch-size 64

``benchmark_clip`` returns the same fields as the ViT case of ``scripts/benchmark.py``: forward throughput of the
source ``CLIPVisionModelWithProjection`` and of ``BcosCLIPVisionModel`` (images/s), their ratio (target >= 0.9), and
the cost of one batched text-prompted explanation in B-cos forward passes (target <= 2.5).
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from bcos_zoo import BcosCLIPVisionModel
from bcos_zoo.modeling.configuration_bcos_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _timed(fns: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, run in turns so that load from elsewhere hits all of them alike."""
    cuda = str(device).startswith("cuda")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def clip_b32_pair(image_size: int = 224) -> tuple[torch.nn.Module, BcosCLIPVisionModel]:
    """A CLIP ViT-B/32 image tower (random weights: speed does not depend on them) and its B-cos form (B=2)."""
    config = CLIPVisionConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=32,
        image_size=image_size,
        projection_dim=512,
    )
    source = CLIPVisionModelWithProjection(config).eval()
    bcos = BcosCLIPVisionModel.from_pretrained_standard(
        source, b=2.0, bias="remove", image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD
    ).eval()
    return source, bcos


def benchmark_clip(
    device: str, dtype: torch.dtype, batch_size: int, image_size: int = 224, repeats: int = 5, num_prompts: int = 10
) -> dict:
    """Forward throughput of both image towers and the cost of ``explain(pixel_values, text_embeds=...)``."""
    source, bcos = clip_b32_pair(image_size)
    source, bcos = source.to(device, dtype), bcos.to(device, dtype)
    images = torch.rand(batch_size, 3, image_size, image_size, device=device, dtype=dtype)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=device, dtype=dtype).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    text_embeds = torch.randn(num_prompts, bcos.config.projection_dim, device=device, dtype=dtype)

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            with torch.inference_mode():
                return fn()

        return run

    t = _timed(
        {
            "source": no_grad(lambda: source(pixel_values=normalised)),
            "bcos": no_grad(lambda: bcos(pixel_values=images)),
            "explain": lambda: bcos.explain(images, text_embeds=text_embeds),
        },
        device,
        repeats,
    )
    return dict(
        model=f"CLIP B/32 {image_size}px",
        source_images_per_s=batch_size / t["source"],
        bcos_images_per_s=batch_size / t["bcos"],
        forward_ratio=t["source"] / t["bcos"],
        explain_over_forward=t["explain"] / t["bcos"],
        explain_over_source_forward=t["explain"] / t["source"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    result = benchmark_clip(args.device, DTYPES[args.dtype], args.batch_size, args.image_size, args.repeats)
    print(f"device={args.device} dtype={args.dtype} batch={args.batch_size} threads={torch.get_num_threads()}")
    for key, value in result.items():
        print(f"{key:<28}{value:.2f}" if isinstance(value, float) else f"{key:<28}{value}")
    print("targets: forward_ratio >= 0.90 (B-cos vs source throughput), explain_over_forward <= 2.50")


if __name__ == "__main__":
    main()
