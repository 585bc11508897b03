"""Top-1 accuracy that loads offline (the Hub's ``accuracy`` module needs the network).

A thin wrapper over :func:`bcos_zoo.evaluation.scores.accuracy`, which the harness calls directly.
"""

import datasets
import evaluate

from bcos_zoo.evaluation.scores import accuracy


_DESCRIPTION = "Top-1 accuracy: the fraction of predictions equal to their reference label."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted class indices.
    references: list of true class indices.
Returns:
    accuracy: fraction in [0, 1].
"""


class BcosAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
