"""The grading network at work: test-time flips, predictive entropy, Grad-CAM (shared with ``train/fundus``).

Uncertainty: the softmax outputs of the ``tta`` flips are averaged; the
predictive entropy of the mean (nats, 0 to ln 5 = 1.61) above
``review_entropy_threshold`` sets "needs human review". The network was
trained to spread its probability on defocused and half-dark photographs, so
those come out uncertain. Explanation: Grad-CAM (MONAI) of the predicted class
on the unflipped input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from monai.visualize import GradCAM

GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
TTA_FLIPS: dict[str, tuple[int, ...]] = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}


def predictive_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of class probabilities."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=-1))


def predict(
    network: torch.nn.Module, batch: torch.Tensor, flips: Sequence[str] = tuple(TTA_FLIPS)
) -> np.ndarray:
    """Class probabilities averaged over the test-time flips: ``(n, classes)``."""
    import torch

    with torch.inference_mode():
        total = None
        for name in flips:
            dims = TTA_FLIPS[name]
            view = torch.flip(batch, dims) if dims else batch
            p = torch.softmax(network(view).float(), dim=1)
            total = p if total is None else total + p
    assert total is not None, "at least one test-time flip"
    return np.asarray((total / len(flips)).cpu().numpy())


def grad_cam(cam: GradCAM, batch: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (0..1) of *classes*, one per input: ``(n, rows, columns)``.

    *cam* is made once per network: MONAI's GradCAM hooks its layer for good.
    """
    maps = []
    for n, target in enumerate(classes):
        with_grad = batch[n : n + 1].clone().requires_grad_(True)
        maps.append(cam(x=with_grad, class_idx=int(target)).detach().float().cpu().numpy()[0, 0])
    return np.stack(maps)
