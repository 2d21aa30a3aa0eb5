"""Calibration maps from a bundle's configs: raw model outputs → probabilities that mean what they say.

A bundle's ``configs/inference.json`` may carry a calibration fitted on
held-out data (``train/lung/calibrate.py``, ``train/fundus/calibrate.py``):

- ``score_calibration`` for a detector's scores: ``{"method": "platt", "a": A,
  "b": B}``, the probability that a reported detection is a true finding,
  ``sigmoid(A * logit(score) + B)``;
- ``probability_calibration`` for a classifier's class probabilities:
  ``{"method": "temperature", "temperature": T}``, ``softmax(log(p) / T)``.

Without one, a pipeline says so: the lung SR then reports the detector's
"Score", not a "Certainty of Finding". The parameters are data: a bundle is
recalibrated by rewriting them, never by changing code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dicomnode.pipelines.base import PipelineError

_EPSILON = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPSILON, 1.0 - _EPSILON)
    return np.log(q) - np.log1p(-q)


@dataclass(frozen=True)
class ScoreCalibration:
    """Platt scaling of detector scores: P(true finding | score)."""

    a: float
    b: float

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities of *scores* (same shape)."""
        return np.asarray(1.0 / (1.0 + np.exp(-(self.a * logit(np.asarray(scores)) + self.b))))


@dataclass(frozen=True)
class ProbabilityCalibration:
    """Temperature scaling of class probabilities (the last axis sums to one)."""

    temperature: float

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape, each row summing to one."""
        logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))
        scaled = logp / self.temperature
        scaled -= scaled.max(axis=-1, keepdims=True)
        weights = np.exp(scaled)
        return np.asarray(weights / weights.sum(axis=-1, keepdims=True))


def _section(raw: Any, key: str, method: str, fields: tuple[str, ...]) -> dict[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("method") != method:
        raise PipelineError(f"bundle {key} {raw!r} is not {{'method': '{method}', ...}}")
    try:
        values = {name: float(raw[name]) for name in fields}
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"bundle {key} needs {', '.join(fields)} as numbers") from None
    return values


def score_calibration(raw: Any) -> ScoreCalibration | None:
    """The bundle's ``score_calibration`` (None when it has none)."""
    values = _section(raw, "score_calibration", "platt", ("a", "b"))
    return None if values is None else ScoreCalibration(values["a"], values["b"])


def probability_calibration(raw: Any) -> ProbabilityCalibration | None:
    """The bundle's ``probability_calibration`` (None when it has none)."""
    values = _section(raw, "probability_calibration", "temperature", ("temperature",))
    if values is None:
        return None
    if values["temperature"] <= 0:
        raise PipelineError("bundle probability_calibration: temperature must be positive")
    return ProbabilityCalibration(values["temperature"])
