"""Times a saved B-cos model against its saved source, in a process that cannot import bcos_zoo.

    python scripts/timing.py '{"task": "compare", ...}'      # run by benchmark.py and benchmark_cnn.py

The benchmark scripts save each model into a folder (the B-cos model with its remote code, the source as its own
library saves it) and run this file on a JSON spec naming the folder. The B-cos model is loaded here as a user gets
it, ``from_pretrained(folder, trust_remote_code=True)``, and never as the package's own class: once bcos_zoo is
imported its classes win over a folder's remote code, so the first thing ``main`` does is make ``import bcos_zoo``
fail (after checking that nothing imported it yet). This file imports nothing from the repository.

Tasks (``spec["task"]``): ``compare`` (forward, explanation and training step of both models, interleaved rounds),
``authors`` (the B-cos ViT-S against the authors' ``bcos`` package), ``trainer`` (fine-tuning throughput through the
HF Trainer) and ``memory`` (resident memory and held tensors of one model after loading and after its first forward
passes). The figures go to stdout as one JSON line.
"""

import contextlib
import ctypes
import gc
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Call = Callable[[], object]


def forbid_bcos_zoo() -> None:
    """Make ``import bcos_zoo`` fail from here on, so that only the folders' remote code can define B-cos models."""
    imported = sorted(name for name in sys.modules if name.partition(".")[0] == "bcos_zoo")
    if imported:
        raise RuntimeError(f"bcos_zoo was imported before timing began: {imported}")
    sys.modules["bcos_zoo"] = None


def bcos_zoo_importable() -> bool:
    """Whether ``import bcos_zoo`` works here (reported, so that the parent can check the isolation held)."""
    try:
        importlib.import_module("bcos_zoo")
    except ImportError:
        return False
    return True


def timed(fns: dict[str, Call], device: str, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each call. Every round runs each call once, in turn, so that load from elsewhere on the
    machine hits all of them alike; on a GPU each call is synchronised before and after."""

    def once(fn: Call) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        for fn in fns.values():
            once(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def inference(fn: Call) -> Call:
    """``fn`` without autograd, as a deployed forward runs."""

    def run() -> object:
        with torch.inference_mode():
            return fn()

    return run


def training_step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> Call:
    """Forward and backward of ``loss`` in training mode (gradients reset first, as an optimiser step would)."""

    def run() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        loss().backward()
        model.eval()

    return run


def load_bcos(spec: dict) -> torch.nn.Module:
    """The B-cos model as transformers loads it from its folder: remote code, through the Auto class it answers to."""
    auto_class = getattr(transformers, spec["bcos_auto_class"])
    return auto_class.from_pretrained(spec["bcos"], trust_remote_code=True).eval()


def load_source(folder: str) -> torch.nn.Module:
    """The source as its library loads it: transformers by the class in its config, torchvision by its constructor
    and a safetensors state dict."""
    path = Path(folder)
    if (path / "torchvision.json").exists():
        import torchvision

        name = json.loads((path / "torchvision.json").read_text())["constructor"]
        model = getattr(torchvision.models, name)(weights=None)
        model.load_state_dict(load_file(path / "model.safetensors"))
        return model.eval()
    architecture = transformers.AutoConfig.from_pretrained(folder).architectures[0]
    return getattr(transformers, architecture).from_pretrained(folder).eval()


def prepared(model: torch.nn.Module, spec: dict) -> torch.nn.Module:
    """The model on the spec's device and dtype; its forward compiled (whole graph) when the spec asks for it."""
    model = model.to(spec["device"], DTYPES[spec["dtype"]])
    if spec["compile"]:
        model.forward = torch.compile(model.forward, fullgraph=True)
    return model


def random_images(spec: dict, batch_size: int) -> torch.Tensor:
    size = spec["image_size"]
    return torch.rand(batch_size, 3, size, size, device=spec["device"], dtype=DTYPES[spec["dtype"]])


def normalised(images: torch.Tensor, spec: dict) -> torch.Tensor:
    """What the source sees: its mean/std applied (the B-cos model has it folded into its first layer)."""
    mean = torch.tensor(spec["mean"], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def source_output(source: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Logits (classifier) or image embeddings (CLIP image tower) of the source, whichever library it comes from."""
    if not isinstance(source, transformers.PreTrainedModel):
        return source(pixels)
    outputs = source(pixel_values=pixels)
    return outputs.image_embeds if hasattr(outputs, "image_embeds") else outputs.logits


def bcos_output(bcos: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    outputs = bcos(pixel_values=images)
    return outputs.image_embeds if hasattr(outputs, "image_embeds") else outputs.logits


def takes_class_token_only(model: torch.nn.Module) -> bool:
    """Whether the model is a classifier that reads only the class token, so ``class_token_only=True`` gives its
    logits with the last block computed on that token alone."""
    return getattr(model.config, "pooling", None) == "cls" and hasattr(model, "classifier")


def class_token_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The logits through the explicit shortcut."""
    return model(pixel_values=images, class_token_only=True).logits


def checked_class_token(model: torch.nn.Module, images: torch.Tensor) -> Call:
    """A timed call of :func:`class_token_logits`, after checking that it gives the full forward's logits."""
    with torch.no_grad():
        full, shortcut = model(pixel_values=images).logits.float(), class_token_logits(model, images).float()
    if not torch.allclose(full, shortcut, rtol=1e-3, atol=1e-3 * float(full.abs().max())):
        raise RuntimeError(f"class_token_only=True changed the logits by {float((full - shortcut).abs().max())}")
    return inference(lambda: class_token_logits(model, images))


def compare(spec: dict) -> dict:
    """Source forward, B-cos forward (both without autograd; for a class-token classifier also with
    ``class_token_only=True``), the B-cos explanation of one output per image, and a training step of each, in
    interleaved rounds."""
    source, bcos = prepared(load_source(spec["source"]), spec), prepared(load_bcos(spec), spec)
    batch_size, device = spec["batch_size"], spec["device"]
    images = random_images(spec, batch_size)
    pixels = normalised(images, spec)
    if spec["kind"] == "clip":
        # the cosine to the best of a few prompts, as zero-shot classification explains it
        text_embeds = torch.randn(spec["num_prompts"], bcos.config.projection_dim, device=device, dtype=images.dtype)

        def explain() -> object:
            return bcos.explain(images, text_embeds=text_embeds)

        def loss(output: torch.Tensor) -> torch.Tensor:
            return output.float().square().mean()

    else:
        labels = torch.randint(0, spec["num_labels"], (batch_size,), device=device)

        def explain() -> object:
            return bcos.explain(images)  # each image's top class

        def loss(output: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(output.float(), labels)

    calls = {
        "source": inference(lambda: source_output(source, pixels)),
        "bcos": inference(lambda: bcos_output(bcos, images)),
        "explain": explain,
        "source_step": training_step(source, lambda: loss(source_output(source, pixels))),
        "bcos_step": training_step(bcos, lambda: loss(bcos_output(bcos, images))),
    }
    if takes_class_token_only(bcos):
        calls["bcos_class_token"] = checked_class_token(bcos, images)
    t = timed(calls, device, spec["rounds"])
    shortcut = {"class_token_forward_ratio": t["source"] / t["bcos_class_token"]} if "bcos_class_token" in t else {}
    return dict(
        source_images_per_s=batch_size / t["source"],
        bcos_images_per_s=batch_size / t["bcos"],
        forward_ratio=t["source"] / t["bcos"],
        **shortcut,
        explain_images_per_s=batch_size / t["explain"],
        explain_over_forward=t["explain"] / t["bcos"],
        source_step_images_per_s=batch_size / t["source_step"],
        bcos_step_images_per_s=batch_size / t["bcos_step"],
        step_ratio=t["source_step"] / t["bcos_step"],
        bcos_class=f"{type(bcos).__module__}.{type(bcos).__qualname__}",
    )


def explain_authors_model(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Contributions to each image's top logit, batched as ours are: their explanation mode, one backward pass."""
    with torch.enable_grad(), model.explanation_mode():
        encoded = torch.cat([images, 1 - images], dim=1).requires_grad_(True)
        logits = model(encoded)
        top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
        (weights,) = torch.autograd.grad(top, encoded)
    return (encoded.detach() * weights).sum(dim=1)


def authors(spec: dict) -> dict:
    """The saved B-cos ViT-S/16 against the authors' (``simple_vit_s_patch16_224``: same width, depth and heads;
    input ``[x, 1 - x]``), forward and explanation."""
    from bcos.models.pretrained import simple_vit_s_patch16_224

    device, dtype, batch_size = spec["device"], DTYPES[spec["dtype"]], spec["batch_size"]
    ours = load_bcos(spec).to(device, dtype)
    theirs = simple_vit_s_patch16_224(pretrained=False).eval().to(device, dtype)
    images = random_images(spec, batch_size)
    t = timed(
        {
            "ours": inference(lambda: ours(pixel_values=images)),
            "ours_class_token": checked_class_token(ours, images),
            "theirs": inference(lambda: theirs(torch.cat([images, 1 - images], dim=1))),
            "ours_explain": lambda: ours.explain(images),
            "theirs_explain": lambda: explain_authors_model(theirs, images),
        },
        device,
        spec["rounds"],
    )
    return dict(
        ours_images_per_s=batch_size / t["ours"],
        theirs_images_per_s=batch_size / t["theirs"],
        forward_speedup=t["theirs"] / t["ours"],
        class_token_speedup=t["theirs"] / t["ours_class_token"],
        ours_explain_images_per_s=batch_size / t["ours_explain"],
        theirs_explain_images_per_s=batch_size / t["theirs_explain"],
        explain_speedup=t["theirs_explain"] / t["ours_explain"],
    )


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.tensor([item["labels"] for item in items], dtype=torch.long),
    }


def trainer_throughput(model: torch.nn.Module, spec: dict, steps: int, output_dir: str) -> float:
    """Training images per second of ``model`` through the HF Trainer (its own loss, AdamW) on random images."""
    batch_size, size = spec["batch_size"], spec["image_size"]
    labels = [i % spec["num_labels"] for i in range(batch_size * steps)]
    data = [{"pixel_values": torch.rand(3, size, size), "labels": label} for label in labels]
    arguments = transformers.TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        optim="adamw_torch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=spec["device"] == "cpu",
        bf16=spec["dtype"] == "bfloat16",
        disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=data, data_collator=collate)
    start = time.perf_counter()
    trainer.train()
    return batch_size * steps / (time.perf_counter() - start)


def trainer(spec: dict) -> dict:
    """Source and B-cos fine-tuning under identical TrainingArguments, in alternating rounds (the first of each is a
    warm-up and not counted)."""
    models = {"source": load_source(spec["source"]).train(), "bcos": load_bcos(spec).train()}
    steps = 20 if spec["device"].startswith("cuda") else 3
    rates = {name: [] for name in models}
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(1 + spec["rounds"]):
            for name, model in models.items():
                rates[name].append(trainer_throughput(model, spec, steps, output_dir))
    source, bcos = (statistics.median(rates[name][1:]) for name in ("source", "bcos"))
    return dict(source_images_per_s=source, bcos_images_per_s=bcos, trainer_ratio=bcos / source)


def memory_in_use(device: str) -> int:
    """Bytes the process holds: its resident set on a CPU, allocated tensor memory on a GPU."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    import psutil

    # glibc: hand freed heap pages back first, so that the figure is memory held, not the allocator's spare pages
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def held_tensor_bytes() -> int:
    """Bytes of the tensor storages that Python objects hold (each storage once, views and shared ones alike): a
    derived copy of the weights cached on a module shows here exactly, where the resident set also moves with what
    the libraries allocate once on a first pass (tens of MB, which differ between two models' kernels)."""
    gc.collect()
    storages = {}
    with warnings.catch_warnings():  # isinstance on a deprecated torch.distributed alias warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
                with contextlib.suppress(RuntimeError):  # a tensor without a storage (sparse, wrapped)
                    storage = obj.untyped_storage()
                    storages[(storage.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def memory(spec: dict) -> dict:
    """Memory of one model (``spec["which"]``: ``"bcos"`` or ``"source"``) after loading, and its growth over three
    warm-up forward passes at batch 1: the resident set (or allocated GPU memory), and the tensor storages Python
    holds (:func:`held_tensor_bytes`). A model that kept a second, derived copy of its weights would grow by about
    their size in both."""
    if spec["which"] == "bcos":
        model, output = prepared(load_bcos(spec), spec), bcos_output
    else:
        model, output = prepared(load_source(spec["source"]), spec), source_output
    images = random_images(spec, 1)
    pixels = images if spec["which"] == "bcos" else normalised(images, spec)
    with torch.inference_mode():  # weights mapped from the file become resident here, not in the first forward
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.sum()
    held = held_tensor_bytes()  # before the resident set is read: the count's own allocations stay out of its growth
    loaded = memory_in_use(spec["device"])
    with torch.inference_mode():
        for _ in range(3):
            output(model, pixels)
    grown = memory_in_use(spec["device"])
    still_held = held_tensor_bytes()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return dict(
        loaded_bytes=loaded, growth_bytes=grown - loaded, held_growth_bytes=still_held - held, weights_bytes=weights
    )


TASKS = {"compare": compare, "authors": authors, "trainer": trainer, "memory": memory}


def main() -> None:
    forbid_bcos_zoo()
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):  # run by the benchmark scripts with one JSON spec
        print(__doc__)
        sys.exit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    spec = json.loads(sys.argv[1])
    transformers.utils.logging.disable_progress_bar()
    if spec["device"] == "cpu":
        torch.set_num_threads(spec["threads"])
        torch.set_flush_denormal(spec["flush_denormals"])
    torch.backends.cudnn.allow_tf32 = False  # float32 means float32 (torch leaves TF32 on for convolutions alone)
    torch.manual_seed(0)
    result = TASKS[spec["task"]](spec)
    result.update(
        bcos_zoo_importable=bcos_zoo_importable(),
        fast_paths_variable=os.environ.get("BCOS_FAST_PATHS"),
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
