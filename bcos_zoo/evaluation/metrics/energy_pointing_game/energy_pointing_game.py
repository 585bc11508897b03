"""Energy pointing game: the share of an explanation's positive attribution that falls inside the object's box.

A thin wrapper over :func:`bcos_zoo.evaluation.scores.energy_pointing_scores`, which the harness calls directly.
"""

import datasets
import evaluate
import numpy as np

from bcos_zoo.evaluation.scores import box_masks, energy_pointing_scores


_DESCRIPTION = """
Energy pointing game: positive attribution inside the object's bounding box divided by the positive attribution
in the whole image. Negative attribution is ignored; an explanation with no positive attribution scores 0.
Boxes are [x0, y0, x1, y1] in pixel coordinates, end-exclusive. Returns the mean score.
"""

_KWARGS_DESCRIPTION = """
Args:
    attributions: list of (H, W) arrays, one explanation per image.
    boxes: list of [x0, y0, x1, y1] boxes (pixels, end-exclusive).
Returns:
    energy_pointing_game: mean score in [0, 1].
Example:
    >>> metric = evaluate.load("bcos_zoo/metrics/energy_pointing_game")
    >>> metric.compute(attributions=[np.ones((4, 4))], boxes=[[0, 0, 2, 2]])
    {'energy_pointing_game': 0.25}
"""

_CITATION = """
@inproceedings{wang2020scorecam,
  title={Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks},
  author={Wang, Haofan and Wang, Zifan and Du, Mengnan and Yang, Fan and Zhang, Zijian and Ding, Sirui and
          Mardziel, Piotr and Hu, Xia},
  booktitle={CVPR Workshops},
  year={2020}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EnergyPointingGame(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "attributions": datasets.Sequence(datasets.Sequence(datasets.Value("float64"))),
                    "boxes": datasets.Sequence(datasets.Value("float64"), length=4),
                }
            ),
        )

    def _compute(self, attributions, boxes):
        scores = []
        for attribution, box in zip(attributions, boxes):  # one call per image: images may differ in size
            attribution = np.asarray(attribution)[None]
            scores.append(float(energy_pointing_scores(attribution, box_masks([box], *attribution.shape[1:]))[0]))
        return {"energy_pointing_game": float(np.mean(scores)) if scores else 0.0}
