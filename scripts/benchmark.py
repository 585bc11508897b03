"""Speed of B-cos models against their standard sources, measured side by side in one run.

    python scripts/benchmark.py                       # CPU, float32, ViT-S at 224 px, batch 8
    python scripts/benchmark.py --device cuda --dtype bfloat16

Models: the ViT-S/16 classifier and the CLIP ViT-B/32 image tower (with projection). Prints, per model: forward
throughput of the source and of the B-cos model (images/s), their ratio (target >= 1.0), explanation throughput,
the cost of one batched explanation in forward passes of the B-cos model (target <= 2.1), and the ratio of
training-step throughput (forward and backward of the loss; target >= 0.9). On a CPU without ``--compile`` it also
prints the forward ratio with the B-cos layers' matmuls on ``F.linear``, as the source's are ("MKL ratio"): PyTorch
runs float32 ``F.linear`` on MKL, the B-cos layers run their matmuls on oneDNN where no weight gradient is recorded,
and this column separates what the kernel gives from what the B-cos layers cost. ``--compile`` compiles both
models' forward passes with ``torch.compile`` first.

With ``--train``, fine-tuning throughput through the HF ``Trainer`` (forward, BCE or cross-entropy, backward, AdamW
step) of the standard ViT-S/16 and its B-cos form under identical ``TrainingArguments``; target ratio >= 0.85.

When the B-cos authors' ``bcos`` package is importable (``pip install bcos einops``; not a dependency of this
project), a second table compares this package's B-cos ViT-S/16 with theirs (``simple_vit_s_patch16_224``, same
width, depth and heads) in forward and explanation throughput. Their explanation is batched here the same way:
the gradient of each image's top logit in their explanation mode, times the ``[x, 1 - x]`` input.
"""

import argparse
import statistics
import time

import torch
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTForImageClassification

from bcos_zoo import BcosCLIPVisionModel, BcosViTForImageClassification
from bcos_zoo.conversion.common import OPENAI_CLIP_NORMALIZATION
from bcos_zoo.modeling import bcos_layers
from bcos_zoo.zoo.benchmarking import DTYPES, timed


def vit_s_pair(num_labels: int = 1000) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A standard ViT-S/16 (random weights: speed does not depend on them) and its B-cosified form (B=2)."""
    config = ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, num_labels=num_labels
    )
    source = ViTForImageClassification(config).eval()
    bcos = BcosViTForImageClassification.from_pretrained_standard(
        source, b=2.0, bias="remove", image_mean=(0.5,) * 3, image_std=(0.5,) * 3
    ).eval()
    return source, bcos


COMPILE = False


def prepared(model: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model on ``device`` in ``dtype``; its forward compiled (whole graph) with ``--compile``."""
    model = model.to(device, dtype)
    if COMPILE:
        model.forward = torch.compile(model.forward, fullgraph=True)
    return model


def benchmark_vit(device: str, dtype: torch.dtype, batch_size: int, repeats: int) -> dict:
    source, bcos = vit_s_pair()
    source, bcos = prepared(source, device, dtype), prepared(bcos, device, dtype)
    images = torch.rand(batch_size, 3, 224, 224, device=device, dtype=dtype)
    normalised = (images - 0.5) / 0.5
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    return compare(
        "ViT-S/16 224px",
        batch_size,
        source_forward=lambda: source(pixel_values=normalised),
        bcos_forward=lambda: bcos(pixel_values=images),
        bcos_explain=lambda: bcos.explain(images),
        source_step=lambda: source(pixel_values=normalised, labels=labels).loss.backward(),
        bcos_step=lambda: bcos(pixel_values=images, labels=labels).loss.backward(),
        device=device,
        repeats=repeats,
    )


def clip_b32_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A CLIP ViT-B/32 image tower with projection (random weights) and its B-cosified form (B=2)."""
    config = CLIPVisionConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=32
    )
    source = CLIPVisionModelWithProjection(config).eval()
    bcos = BcosCLIPVisionModel.from_pretrained_standard(
        source, b=2.0, bias="remove", image_mean=OPENAI_CLIP_NORMALIZATION[0], image_std=OPENAI_CLIP_NORMALIZATION[1]
    ).eval()
    return source, bcos


def benchmark_clip(device: str, dtype: torch.dtype, batch_size: int, repeats: int, num_prompts: int = 10) -> dict:
    """Image towers side by side; the explanation is of the cosine to the best of ``num_prompts`` text embeddings."""
    source, bcos = clip_b32_pair()
    source, bcos = prepared(source, device, dtype), prepared(bcos, device, dtype)
    images = torch.rand(batch_size, 3, 224, 224, device=device, dtype=dtype)
    mean = torch.tensor(OPENAI_CLIP_NORMALIZATION[0], device=device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_NORMALIZATION[1], device=device, dtype=dtype).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    text_embeds = torch.randn(num_prompts, bcos.config.projection_dim, device=device, dtype=dtype)
    return compare(
        "CLIP B/32 224px",
        batch_size,
        source_forward=lambda: source(pixel_values=normalised),
        bcos_forward=lambda: bcos(pixel_values=images),
        bcos_explain=lambda: bcos.explain(images, text_embeds=text_embeds),
        source_step=lambda: source(pixel_values=normalised).image_embeds.float().square().mean().backward(),
        bcos_step=lambda: bcos(pixel_values=images).image_embeds.float().square().mean().backward(),
        device=device,
        repeats=repeats,
    )


def with_f_linear(fn):
    """``fn`` with the B-cos layers' matmuls on ``F.linear`` (MKL on a CPU), as the source's are, rather than on
    oneDNN (see ``bcos_zoo.modeling.bcos_layers.linear``). Only those: ``torch.backends.mkldnn.flags(enabled=False)``
    would also take the source's patch convolution off oneDNN."""

    def run():
        kernel, bcos_layers._ONEDNN_LINEAR = bcos_layers._ONEDNN_LINEAR, None
        try:
            return fn()
        finally:
            bcos_layers._ONEDNN_LINEAR = kernel

    return run


def compare(
    model: str,
    batch_size: int,
    source_forward,
    bcos_forward,
    bcos_explain,
    source_step,
    bcos_step,
    device: str,
    repeats: int,
) -> dict:
    """Time the five calls in turns (forward passes without autograd, training steps with) and form the ratios."""

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    fns = {
        "source": no_grad(source_forward),
        "bcos": no_grad(bcos_forward),
        "explain": bcos_explain,
        "source_step": source_step,
        "bcos_step": bcos_step,
    }
    same_kernels = device == "cpu" and not COMPILE
    if same_kernels:
        fns["bcos_mkl"] = no_grad(with_f_linear(bcos_forward))
    t = timed(fns, device, repeats)
    return dict(
        model=model,
        source_images_per_s=batch_size / t["source"],
        bcos_images_per_s=batch_size / t["bcos"],
        explain_images_per_s=batch_size / t["explain"],
        forward_ratio=t["source"] / t["bcos"],
        explain_over_forward=t["explain"] / t["bcos"],
        step_ratio=t["source_step"] / t["bcos_step"],
        mkl_forward_ratio=t["source"] / t["bcos_mkl"] if same_kernels else None,
    )


def authors_package_available() -> bool:
    """Whether the authors' ``bcos`` package imports, with the ``einops`` its ViTs need."""
    try:
        import bcos.models.pretrained  # noqa: F401
        import einops  # noqa: F401
    except ImportError:
        return False
    return True


def authors_vit_s() -> torch.nn.Module:
    """The authors' B-cos ViT-S/16 (random weights), as their package builds it: input ``[x, 1 - x]``, 1000 classes."""
    from bcos.models.pretrained import simple_vit_s_patch16_224

    return simple_vit_s_patch16_224(pretrained=False).eval()


def explain_authors_model(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Contributions to each image's top logit, batched: their explanation mode, one backward pass."""
    with torch.enable_grad(), model.explanation_mode():
        encoded = torch.cat([images, 1 - images], dim=1).requires_grad_(True)
        logits = model(encoded)
        top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        (weights,) = torch.autograd.grad(top, encoded)
    return (encoded.detach() * weights).sum(dim=1)


def benchmark_against_authors(device: str, dtype: torch.dtype, batch_size: int, repeats: int) -> dict:
    """This package's B-cos ViT-S/16 (B-cosified, B=2) against the authors' B-cos ViT-S/16, forward and explanation."""
    ours = vit_s_pair()[1].to(device, dtype)
    theirs = authors_vit_s().to(device, dtype)
    images = torch.rand(batch_size, 3, 224, 224, device=device, dtype=dtype)

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    t = timed(
        {
            "ours": no_grad(lambda: ours(pixel_values=images)),
            "theirs": no_grad(lambda: theirs(torch.cat([images, 1 - images], dim=1))),
            "ours_explain": lambda: ours.explain(images),
            "theirs_explain": lambda: explain_authors_model(theirs, images),
        },
        device,
        repeats,
    )
    return dict(
        model="B-cos ViT-S/16 224px",
        ours_images_per_s=batch_size / t["ours"],
        theirs_images_per_s=batch_size / t["theirs"],
        forward_speedup=t["theirs"] / t["ours"],
        ours_explain_images_per_s=batch_size / t["ours_explain"],
        theirs_explain_images_per_s=batch_size / t["theirs_explain"],
        explain_speedup=t["theirs_explain"] / t["ours_explain"],
    )


def trainer_throughput(model, device: str, dtype: torch.dtype, batch_size: int, steps: int, folder: str) -> float:
    """Training images per second of ``model`` through the HF Trainer on random images in [0, 1]."""
    from transformers import Trainer, TrainingArguments

    from bcos_zoo.training.trainer import collate_images

    data = [{"pixel_values": torch.rand(3, 224, 224), "labels": i % 1000} for i in range(batch_size * steps)]
    arguments = TrainingArguments(
        output_dir=folder,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        optim="adamw_torch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=data, data_collator=collate_images)
    start = time.perf_counter()
    trainer.train()
    return batch_size * steps / (time.perf_counter() - start)


def benchmark_training(device: str, dtype: torch.dtype, batch_size: int, repeats: int) -> dict:
    """Standard vs B-cos ViT-S fine-tuning, in alternating rounds (the first round of each is a warm-up)."""
    import tempfile

    source, bcos = vit_s_pair()
    steps = 20 if device.startswith("cuda") else 3
    rates = {"source": [], "bcos": []}
    with tempfile.TemporaryDirectory() as folder:
        for _ in tqdm(range(max(2, repeats)), desc="training rounds", leave=False):
            for name, model in (("source", source), ("bcos", bcos)):
                rates[name].append(trainer_throughput(model.train(), device, dtype, batch_size, steps, folder))
    source_rate, bcos_rate = (statistics.median(rates[name][1:]) for name in ("source", "bcos"))
    return {"source": source_rate, "bcos": bcos_rate, "ratio": bcos_rate / source_rate}


CASES = {"vit": benchmark_vit, "clip": benchmark_clip}
AUTHORS_CASE = "authors-vit"


SOURCE_HEADER = (
    f"{'model':<18}{'source img/s':>14}{'B-cos img/s':>14}{'fwd ratio':>11}{'explain img/s':>15}{'explain/fwd':>13}"
    f"{'step ratio':>12}{'MKL ratio':>11}"
)


def source_row(r: dict) -> str:
    return (
        f"{r['model']:<18}{r['source_images_per_s']:>14.1f}{r['bcos_images_per_s']:>14.1f}"
        f"{r['forward_ratio']:>11.2f}{r['explain_images_per_s']:>15.1f}{r['explain_over_forward']:>13.2f}"
        f"{r['step_ratio']:>12.2f}"
        + (f"{r['mkl_forward_ratio']:>11.2f}" if r["mkl_forward_ratio"] is not None else f"{'-':>11}")
    )


def print_authors_comparison(r: dict) -> None:
    print(f"\n{r['model']}: this package vs the authors' bcos package (img/s; speed-up = their time / ours)")
    header = f"{'':<14}{'bcos_zoo':>12}{'bcos':>12}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    print(
        f"{'forward':<14}{r['ours_images_per_s']:>12.1f}{r['theirs_images_per_s']:>12.1f}{r['forward_speedup']:>10.2f}"
    )
    print(
        f"{'explanation':<14}{r['ours_explain_images_per_s']:>12.1f}{r['theirs_explain_images_per_s']:>12.1f}"
        f"{r['explain_speedup']:>10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    available = [*CASES, AUTHORS_CASE] if authors_package_available() else list(CASES)
    parser.add_argument("--models", nargs="+", default=available, choices=[*CASES, AUTHORS_CASE])
    parser.add_argument("--train", action="store_true", help="also fine-tuning throughput through the HF Trainer")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models before timing")
    args = parser.parse_args()
    torch.manual_seed(0)
    global COMPILE
    COMPILE = args.compile
    print(
        f"device={args.device} dtype={args.dtype} batch={args.batch_size} threads={torch.get_num_threads()}"
        f" compile={args.compile}"
    )
    sources = [name for name in args.models if name in CASES]
    if sources:
        print(SOURCE_HEADER)
        print("-" * len(SOURCE_HEADER))
        for name in sources:
            if COMPILE:
                # transformers' output wrapper is one code object for every model, and torch.compile's recompile
                # limit counts its graphs across models: each case starts afresh
                torch._dynamo.reset()
            print(source_row(CASES[name](args.device, DTYPES[args.dtype], args.batch_size, args.repeats)), flush=True)
        print("targets: fwd ratio >= 1.00 (B-cos vs source throughput), explain/fwd <= 2.10, step ratio >= 0.90")
        print(
            "MKL ratio: the forward ratio with the B-cos layers' matmuls on F.linear (MKL), as the source's are, "
            "instead of oneDNN (on a CPU without --compile; '-' elsewhere)"
        )
    if args.train:
        r = benchmark_training(args.device, DTYPES[args.dtype], args.batch_size, args.repeats)
        print(f"\nViT-S/16 fine-tuning through the Trainer (img/s): standard {r['source']:.1f}, B-cos {r['bcos']:.1f}")
        print(f"training ratio {r['ratio']:.2f} (target >= 0.85)")
    if AUTHORS_CASE in args.models:
        if authors_package_available():
            print_authors_comparison(
                benchmark_against_authors(args.device, DTYPES[args.dtype], args.batch_size, args.repeats)
            )
        else:
            print("\nThe authors' bcos package is not installed (pip install bcos einops): comparison skipped.")
    elif not authors_package_available():
        print("\n(Install the authors' bcos package, pip install bcos einops, to compare with their B-cos ViT-S.)")


if __name__ == "__main__":
    main()
