"""ROAD (RemOve And Debias): the model's probability for the explained class after a share of the pixels, most
(or least) relevant first, is filled by noisy linear imputation instead of black.

A thin wrapper over :func:`bcos_zoo.evaluation.faithfulness.road_curves`, which the evaluation harness calls.
"""

import datasets
import evaluate
import torch

from bcos_zoo.evaluation.faithfulness import ROAD_FRACTIONS, road_curves


_DESCRIPTION = """
ROAD (Rong et al., ICML 2022). For each share of pixels in `fractions` (default 0.1, ..., 0.9), that many pixels
are removed in order of decreasing attribution (order "morf": lower is better) or increasing attribution ("lerf":
higher is better) and filled by noisy linear imputation: each removed pixel is the weighted mean of its 8
neighbours (direct 1/6, diagonal 1/12), solved for all removed pixels at once, plus Gaussian noise (std `noise`,
default 0.01). The score is the mean over the shares of the model's softmax probability of the target class.
Removed pixels filled from their neighbours keep the image in distribution, unlike black. All images must have the
same size. Returns the mean score, the mean curve, its x values and the top-1 accuracy at each share.
"""

_KWARGS_DESCRIPTION = """
Args:
    attributions: list of (H, W) arrays, one explanation per image.
    images: list of (C, H, W) arrays, the images the model takes (all of one size).
    targets: list of int, the explained class of each image.
    model: callable, images (N, C, H, W) float tensor -> logits (N, classes).
    fractions: shares of pixels removed (default 0.1, 0.2, ..., 0.9).
    order: "morf" (most relevant first, default) or "lerf" (least relevant first).
    noise: standard deviation of the imputation noise (default 0.01).
    seed: seed of the noise (default 0).
    batch_size: images per model call (default 64).
    device: where the model runs (default "cpu").
Returns:
    road: mean target probability over the shares.
    curve: the mean curve; fractions: its x values; accuracy: share of images still classified as their target.
"""

_CITATION = """
@inproceedings{rong2022road,
  title={A Consistent and Efficient Evaluation Strategy for Attribution Methods},
  author={Rong, Yao and Leemann, Tobias and Borisov, Vadim and Kasneci, Gjergji and Kasneci, Enkelejda},
  booktitle={International Conference on Machine Learning (ICML)},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Road(evaluate.Metric):
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

    def _compute(
        self,
        attributions,
        images,
        targets,
        model,
        fractions=ROAD_FRACTIONS,
        order="morf",
        noise=0.01,
        seed=0,
        batch_size=64,
        device="cpu",
    ):
        images = torch.tensor(images, dtype=torch.float32, device=device)
        attributions = torch.tensor(attributions, dtype=torch.float64, device=device)
        curves = road_curves(model, images, attributions, targets, fractions, order, noise, batch_size, seed=seed)
        correct = curves.predictions == torch.as_tensor(targets, device=curves.predictions.device)[:, None]
        return {
            "road": float(curves.mean().mean()),
            "curve": curves.scores.mean(dim=0).tolist(),
            "fractions": curves.fractions.tolist(),
            "accuracy": correct.double().mean(dim=0).tolist(),
        }
