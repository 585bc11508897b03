"""Pixel deletion: how fast the model's probability for the explained class falls as the pixels the explanation
ranks highest are turned black first (area under the curve: lower is better).

A thin wrapper over :func:`bcos_zoo.evaluation.faithfulness.deletion_curves`, which the evaluation harness calls.
"""

import datasets
import evaluate
import torch

from bcos_zoo.evaluation.faithfulness import deletion_curves


_DESCRIPTION = """
Pixel deletion (Petsiuk et al., RISE, 2018). The pixels of each image are replaced by black in order of decreasing
attribution, `steps` equal shares at a time; the curve is the model's softmax probability of the target class
against the share of pixels removed (steps + 1 points, from the intact image), and the score is the area under it
over [0, 1]. All images must have the same size. Returns the mean area, the mean curve and its x values.
"""

_KWARGS_DESCRIPTION = """
Args:
    attributions: list of (H, W) arrays, one explanation per image.
    images: list of (C, H, W) arrays, the images the model takes (all of one size).
    targets: list of int, the explained class of each image.
    model: callable, images (N, C, H, W) float tensor -> logits (N, classes).
    steps: number of equal shares removed (default 100).
    batch_size: images per model call (default 64).
    device: where the model runs (default "cpu").
Returns:
    pixel_deletion: mean area under the curve (lower is better).
    curve: the mean curve; fractions: its x values.
"""

_CITATION = """
@inproceedings{petsiuk2018rise,
  title={RISE: Randomized Input Sampling for Explanation of Black-box Models},
  author={Petsiuk, Vitali and Das, Abir and Saenko, Kate},
  booktitle={British Machine Vision Conference (BMVC)},
  year={2018}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PixelDeletion(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "attributions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "images": datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float32")))),
                    "targets": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, attributions, images, targets, model, steps=100, batch_size=64, device="cpu"):
        images = torch.tensor(images, dtype=torch.float32, device=device)
        attributions = torch.tensor(attributions, dtype=torch.float64, device=device)
        curves = deletion_curves(model, images, attributions, targets, steps, batch_size=batch_size)
        return {
            "pixel_deletion": float(curves.auc().mean()),
            "curve": curves.scores.mean(dim=0).tolist(),
            "fractions": curves.fractions.tolist(),
        }
