"""Grid pointing game: how much of an explanation's positive attribution falls in the cell of the explained class.

A thin wrapper over :func:`bcos_zoo.evaluation.scores.grid_pointing_scores`, which the harness calls directly.
"""

import datasets
import evaluate
import numpy as np

from bcos_zoo.evaluation.scores import grid_pointing_scores


_DESCRIPTION = """
Grid pointing game (B-cos papers). Images of distinct classes are tiled into a rows x cols grid; the model's
explanation for one cell's class is scored by the positive attribution inside that cell divided by the positive
attribution in the whole grid. Negative attribution is ignored; an explanation with no positive attribution
scores 0. Cells are numbered row-major from the top left. Returns the mean score.
"""

_KWARGS_DESCRIPTION = """
Args:
    attributions: list of (H, W) arrays, one explanation per grid.
    cell_index: list of int, the explained cell of each grid (row-major from the top left).
    grid_size: [rows, cols] of every grid; H and W must be divisible by them.
Returns:
    grid_pointing_game: mean score in [0, 1].
Example:
    >>> metric = evaluate.load("bcos_zoo/metrics/grid_pointing_game")
    >>> metric.compute(attributions=[np.eye(4)], cell_index=[0], grid_size=[2, 2])
    {'grid_pointing_game': 0.5}
"""

_CITATION = """
@article{boehle2024bcos,
  title={B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers},
  author={B{\\"o}hle, Moritz and Singh, Navdeeppal and Fritz, Mario and Schiele, Bernt},
  journal={IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GridPointingGame(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "attributions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "cell_index": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, attributions, cell_index, grid_size=(2, 2)):
        # one call per grid: grids may differ in size
        scores = [
            float(grid_pointing_scores(np.asarray(a)[None], [c], grid_size)[0])
            for a, c in zip(attributions, cell_index)
        ]
        return {"grid_pointing_game": float(np.mean(scores)) if scores else 0.0}
