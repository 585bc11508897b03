"""Top-1 accuracy that loads offline (the Hub's ``accuracy`` module needs the network)."""

import datasets
import evaluate
import numpy as np


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
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}
