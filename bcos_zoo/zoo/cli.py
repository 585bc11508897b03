"""How the scripts end: a user's mistake is one line on stderr and exit code 2, Ctrl-C is one line (with how to
continue, where there is a way), and anything else, a bug, keeps its full traceback."""

import argparse
import sys
from collections.abc import Callable

from safetensors import SafetensorError

from .hub import PushError


# What bad input raises throughout the package (ValueError, by convention), what a missing or unreadable file
# raises (a corrupt weights file included), and a push the Hub refused.
USER_ERRORS = (ValueError, OSError, SafetensorError, PushError)


def run_script(main: Callable[[], object], on_interrupt: str = "") -> int:
    """Run a script's ``main``; return its exit code (0 unless ``main`` returns an int)."""
    try:
        code = main()
    except KeyboardInterrupt:
        # on a line of its own, also when a progress bar was being drawn
        print(f"\ninterrupted{'; ' + on_interrupt if on_interrupt else ''}", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        message = str(error)
        if "Original Traceback" in message:  # raised in a DataLoader worker: the original error is the last line
            message = message.strip().splitlines()[-1].partition(": ")[2]
        message = " ".join(message.split()) or type(error).__name__
        print(f"\nerror: {message}", file=sys.stderr)  # on a line of its own, as above
        return 2
    return code if isinstance(code, int) else 0


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int of at least ``minimum``, so that a count of 0 is refused with the usage line
    instead of failing deep inside the run."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


def fraction(text: str) -> float:
    """An argparse ``type``: a number in [0, 1] (a share or a probability)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def bounded(low: float, inclusive: bool, high: float | None = None):
    """An argparse ``type``: a number above ``low`` (or at it, ``inclusive``) and at most ``high``, so that a value
    no run accepts is refused with the usage line, not after the runs before the first that uses it."""

    def parse(text: str) -> float:
        value = float(text)
        if not (value >= low if inclusive else value > low) or (high is not None and value > high):
            low_part = f"at least {low:g}" if inclusive else f"above {low:g}"
            raise argparse.ArgumentTypeError(
                f"must be {low_part}{'' if high is None else f' and at most {high:g}'}, got {text}"
            )
        return value

    parse.__name__ = "float"  # argparse names the type in its "invalid float value" message
    return parse


def device(text: str) -> str:
    """An argparse ``type``: ``cpu``, ``cuda`` or ``cuda:<index>``, refused with the usage line where this machine
    lacks it, instead of a CUDA traceback once the models and data have loaded."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:<index>, got {text!r}")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise argparse.ArgumentTypeError(
                "CUDA is not available on this machine (no GPU, or a CPU-only torch): use cpu"
            )
        if (parsed.index or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text} does not exist: this machine has cuda:0 to cuda:{count - 1}")
    return text
