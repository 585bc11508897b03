"""What the benchmark scripts share: timing functions side by side, so that a ratio compares like with like."""

import statistics
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def timed(fns: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, run in turns so that load from elsewhere hits all of them alike (on a GPU,
    synchronised before and after each call)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in tqdm(range(repeats), desc="timing", leave=False):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
