"""Evaluation modules in ``evaluate``'s folder layout (``name/name.py``); they load offline.

evaluate.load(bcos_zoo.evaluation.metrics.metric_path("grid_pointing_game"))
"""

from pathlib import Path


METRICS = ("grid_pointing_game", "energy_pointing_game", "bcos_accuracy", "pixel_deletion", "pixel_insertion", "road")


def metric_path(name: str) -> str:
    """The folder to pass to ``evaluate.load`` for one of :data:`METRICS`."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRICS)}.")
    return str(Path(__file__).parent / name)
