"""Calibration: the maps the pipelines apply, how they are fitted and judged, bundle configs."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.pipelines.base import PipelineError
from dicomnode.pipelines.calibration import (
    ProbabilityCalibration,
    ScoreCalibration,
    probability_calibration,
    score_calibration,
)
from train.calibration import (
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    reliability,
)


def test_platt_and_temperature_maps() -> None:
    identity = ScoreCalibration(1.0, 0.0)
    assert identity(np.array([0.1, 0.5, 0.9])) == pytest.approx([0.1, 0.5, 0.9])
    shrink = ScoreCalibration(0.5, -1.0)(np.array([0.999, 0.5]))
    assert shrink[0] < 0.999 and shrink[1] < 0.5  # an overconfident score is brought down
    p = np.array([[0.7, 0.2, 0.1], [0.34, 0.33, 0.33]])
    for t in (0.5, 1.0, 2.0):
        calibrated = ProbabilityCalibration(t)(p)
        assert calibrated.sum(axis=1) == pytest.approx([1.0, 1.0])
        assert (calibrated.argmax(axis=1) == p.argmax(axis=1)).all()  # the answer stays
    assert ProbabilityCalibration(1.0)(p) == pytest.approx(p)
    assert ProbabilityCalibration(0.5)(p)[0, 0] > 0.7 > ProbabilityCalibration(2.0)(p)[0, 0]


def test_ece_is_zero_when_stated_equals_observed_and_counts_the_gap() -> None:
    rng = np.random.default_rng(0)
    stated = rng.uniform(0, 1, 200_000)
    observed = rng.uniform(0, 1, stated.size) < stated
    assert expected_calibration_error(stated, observed) < 0.01
    always = np.full(1000, 0.9)
    half = np.arange(1000) % 2 == 0
    assert expected_calibration_error(always, half) == pytest.approx(0.4)
    confidence, accuracy, counts = reliability(always, half)
    assert counts[9] == 1000 and accuracy[9] == pytest.approx(0.5) and np.isnan(accuracy[0])


def test_fits_recover_known_miscalibration() -> None:
    rng = np.random.default_rng(1)
    # Scores whose truth is sigmoid(0.5 * logit(s) - 0.5): Platt finds a = 0.5, b = -0.5.
    scores = rng.uniform(0.01, 0.999, 40_000)
    truth = ScoreCalibration(0.5, -0.5)(scores)
    hits = rng.uniform(0, 1, scores.size) < truth
    fitted = fit_platt(scores, hits)
    assert fitted.a == pytest.approx(0.5, abs=0.05) and fitted.b == pytest.approx(-0.5, abs=0.08)
    assert expected_calibration_error(fitted(scores), hits) < expected_calibration_error(
        scores, hits
    )
    # Probabilities at temperature 2 of the truth: temperature scaling finds 0.5 to undo it.
    logits = rng.normal(0, 2, (20_000, 4))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in true_p])
    flattened = ProbabilityCalibration(2.0)(true_p)
    assert fit_temperature(flattened, labels).temperature == pytest.approx(0.5, abs=0.05)


def test_bundle_sections_are_checked() -> None:
    assert score_calibration(None) is None and probability_calibration(None) is None
    assert score_calibration({"method": "platt", "a": 0.8, "b": -0.2}) == ScoreCalibration(
        0.8, -0.2
    )
    assert probability_calibration({"method": "temperature", "temperature": 1.5}) == (
        ProbabilityCalibration(1.5)
    )
    with pytest.raises(PipelineError, match="score_calibration .* is not"):
        score_calibration({"method": "isotonic"})
    with pytest.raises(PipelineError, match="needs a, b"):
        score_calibration({"method": "platt", "a": "x"})
    with pytest.raises(PipelineError, match="temperature must be positive"):
        probability_calibration({"method": "temperature", "temperature": 0})
