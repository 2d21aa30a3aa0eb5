"""Calibrate the lung detector's score on held-out phantoms: "Certainty of Finding" that holds.

Usage (from the repository root)::

    python -m train.lung.calibrate [--bundle models/lung_nodule_ct] [--fit-cases 120] [--test-cases 120]

The pipeline reports a detection when its raw score reaches the bundle's
``report_threshold``; what the SR states is how likely such a detection is a
nodule. This script runs the detector on two disjoint sets of held-out
synthetic chest scans (seeds no training or evaluation run used), keeps the
detections the pipeline would report (score at or above the threshold; a box
whose centre lies in a better box is the same nodule, as the pipeline's mask
overlap rule has it) and labels each: a hit when its centre lies within the
radius of a nodule of any size. On the first set it fits Platt scaling
(``sigmoid(a * logit(score) + b)``, least log loss); on the second it
measures the expected calibration error (10 equal-width bins) of the raw
score and of the calibrated probability, and draws both reliability curves.

Writes ``score_calibration`` (``method``, ``a``, ``b``) into the bundle's
``configs/inference.json`` only when the calibrated ECE on the test set is at
most ``--max-ece`` (0.05); otherwise it leaves the bundle without one and the
pipeline reports the raw value as a "Score". Figures and numbers go to
``docs/reliability.png`` and ``docs/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from train.calibration import expected_calibration_error, fit_platt, plot_reliability
from train.lung.evaluate import detect, load_detector

FIT_SEED = 4_000_000  # training: 0.., evaluation: 2_000_000..
TEST_SEED = 5_000_000


def reported(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices of the detections the pipeline reports: best first, one per nodule."""
    kept: list[int] = []
    for n in np.argsort(-scores):
        if scores[n] < threshold:
            break
        centre = boxes[n, :3]
        inside = [np.all(boxes[k, 3:6] <= centre) and np.all(centre <= boxes[k, 6:9]) for k in kept]
        if not any(inside):
            kept.append(int(n))
    return kept


def collect(
    detector: Any, settings: Any, first_seed: int, cases: int, threshold: float, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """(raw score, hit) of every reported detection on *cases* scans from *first_seed*."""
    scores, hits = [], []
    for case in tqdm(range(cases), desc=what, unit="scan", mininterval=5.0):
        sample, boxes, raw = detect(detector, settings, first_seed + case)
        for n in reported(boxes, raw, threshold):
            centre = boxes[n, :3]
            distance = np.linalg.norm(sample.centers_lps - centre, axis=1)
            scores.append(float(raw[n]))
            hits.append(bool(len(distance) and (distance <= sample.diameters / 2).any()))
    return np.array(scores), np.array(hits)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/lung_nodule_ct"))
    parser.add_argument("--fit-cases", type=int, default=120)
    parser.add_argument("--test-cases", type=int, default=120)
    parser.add_argument("--max-ece", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    detector, settings, bundle = load_detector(args.bundle)
    threshold = float(bundle.raw("report_threshold", 0.5))
    fit_scores, fit_hits = collect(detector, settings, FIT_SEED, args.fit_cases, threshold, "fit")
    test_scores, test_hits = collect(
        detector, settings, TEST_SEED, args.test_cases, threshold, "test"
    )
    calibration = fit_platt(fit_scores, fit_hits)
    calibrated = calibration(test_scores)
    before = expected_calibration_error(test_scores, test_hits)
    after = expected_calibration_error(calibrated, test_hits)
    result = {
        "method": "Platt scaling of logit(score), fitted by least log loss",
        "report_threshold": threshold,
        "fit": {"scans": args.fit_cases, "seeds_from": FIT_SEED, "detections": len(fit_hits),
                "true": int(fit_hits.sum())},
        "test": {"scans": args.test_cases, "seeds_from": TEST_SEED, "detections": len(test_hits),
                 "true": int(test_hits.sum())},
        "a": round(calibration.a, 4),
        "b": round(calibration.b, 4),
        "ece_raw_score": round(before, 4),
        "ece_calibrated": round(after, 4),
        "mean_raw_score": round(float(test_scores.mean()), 4),
        "mean_calibrated": round(float(calibrated.mean()), 4),
        "observed_true_fraction": round(float(test_hits.mean()), 4),
        "bins": 10,
        "written_to_bundle": after <= args.max_ece,
    }
    docs = bundle.root / "docs"
    plot_reliability(
        [("raw score", test_scores, test_hits), ("calibrated", calibrated, test_hits)],
        f"Reported detections on {args.test_cases} held-out scans ({len(test_hits)})",
        docs / "reliability.png",
    )
    (docs / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    config_path = bundle.root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    if result["written_to_bundle"]:
        config["score_calibration"] = {"method": "platt", "a": result["a"], "b": result["b"]}
    else:
        config.pop("score_calibration", None)
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
