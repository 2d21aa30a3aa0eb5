"""Fitting and judging calibration: Platt and temperature scaling, ECE, reliability diagrams.

Shared by ``train/lung/calibrate.py`` (detector scores) and
``train/fundus/calibrate.py`` (grade probabilities). The maps themselves, as
the pipelines apply them, are :mod:`dicomnode.pipelines.calibration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from dicomnode.pipelines.calibration import ProbabilityCalibration, ScoreCalibration, logit

BINS = 10


def fit_platt(scores: np.ndarray, hits: np.ndarray) -> ScoreCalibration:
    """Platt scaling on logit(score): the (a, b) of least log loss for binary *hits*."""
    x = logit(scores)
    y = np.asarray(hits, dtype=np.float64)

    def loss(ab: np.ndarray) -> float:
        z = ab[0] * x + ab[1]
        # log(1 + exp(z)) - y z, computed stably.
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    found = minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead", options={"xatol": 1e-6})
    return ScoreCalibration(float(found.x[0]), float(found.x[1]))


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> ProbabilityCalibration:
    """The temperature of least log loss of the true classes (bounded to 0.05 .. 20)."""
    truth = np.asarray(truth, dtype=np.int64)

    def loss(t: float) -> float:
        p = ProbabilityCalibration(t)(probabilities)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(truth)), truth], 1e-12, 1.0))))

    found = minimize_scalar(loss, bounds=(0.05, 20.0), method="bounded")
    return ProbabilityCalibration(float(found.x))


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy, count (empty bins: NaN, 0)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return mean_confidence, accuracy, counts


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width bins."""
    mean_confidence, accuracy, counts = reliability(confidence, correct, bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - mean_confidence[filled])
    return float((gaps * counts[filled]).sum() / counts.sum())


def plot_reliability(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, path: Path
) -> None:
    """Reliability diagram of (label, confidence, correct) curves, with bin counts below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    edges = np.linspace(0, 1, BINS + 1)
    width = 1.0 / BINS / (len(curves) + 1)
    for n, (label, confidence, correct) in enumerate(curves):
        mean_confidence, accuracy, counts = reliability(confidence, correct)
        ece = expected_calibration_error(confidence, correct)
        filled = counts > 0
        top.plot(
            mean_confidence[filled], accuracy[filled], marker="o", label=f"{label} (ECE {ece:.3f})"
        )
        bottom.bar(edges[:-1] + (n + 0.5) * width, counts, width=width, label=label)
    top.set_ylabel("observed frequency")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.set_yscale("log")
    bottom.set_xlabel("stated probability")
    bottom.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
