"""Calibrate the fundus grade probabilities on held-out synthetic photographs.

    python -m train.fundus.calibrate [--bundle models/fundus_dr] [--count 1000]

Two disjoint held-out sets (seed ranges neither training nor evaluation used),
drawn at 512 px with a fifth of the photographs degraded (defocused or half
dark, as real screening sets have some), preprocessed and graded as the
pipeline does (test-time flips averaged). Temperature scaling
(``softmax(log p / T)``, T of least log loss) is fitted on the first set; on
the second the expected calibration error (10 equal-width bins) is measured
before and after, of the confidence in the predicted grade and class-wise
(each grade's probability against whether it is the true grade, averaged),
and the reliability diagram drawn. The review flag stays on the entropy of
the uncalibrated mean, where its threshold was set: calibration changes
what the probabilities say, not which photographs a grader sees.

Writes ``probability_calibration`` (``method``, ``temperature``) into the
bundle's ``configs/inference.json`` when the calibrated ECE is at most
``--max-ece`` (0.05), else removes it; figures and numbers go to
``docs/reliability.png`` and ``docs/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.fundus_dr.inference import predictive_entropy
from train.calibration import expected_calibration_error, fit_temperature, plot_reliability
from train.fundus.data import make_set
from train.fundus.evaluate import probabilities_of

FIT_SEEDS = 6_000_000  # training 1_000_000.., validation 2_000_000.., evaluation 3_000_000..
TEST_SEEDS = 7_000_000


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/fundus_dr"))
    parser.add_argument("--count", type=int, default=1000, help="photographs per set")
    parser.add_argument("--degraded", type=float, default=0.2, help="share of degraded ones")
    parser.add_argument("--max-ece", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = Bundle(args.bundle.resolve())
    network = bundle.parsed("network_def")
    bundle.load_weights(network, torch.device("cpu"))
    network.eval()
    size = int(bundle.raw("image_size"))
    tta = [str(t) for t in bundle.raw("tta")]
    threshold = float(bundle.raw("review_entropy_threshold"))
    sets = {
        name: make_set(
            args.count,
            seeds,
            photo_size=512,
            image_size=size,
            degraded_fraction=args.degraded,
            description=name,
        )
        for name, seeds in (("fit", FIT_SEEDS), ("test", TEST_SEEDS))
    }
    raw = {name: probabilities_of(network, data, tta) for name, data in sets.items()}
    calibration = fit_temperature(raw["fit"], sets["fit"].grades)
    test, truth = sets["test"], sets["test"].grades
    calibrated = calibration(raw["test"])

    def summary(p: np.ndarray) -> dict[str, float]:
        correct = p.argmax(1) == truth
        classwise = [expected_calibration_error(p[:, k], truth == k) for k in range(p.shape[1])]
        return {
            "ece": round(expected_calibration_error(p.max(1), correct), 4),
            "ece_sharp": round(
                expected_calibration_error(p[~test.degraded].max(1), correct[~test.degraded]), 4
            ),
            "ece_degraded": round(
                expected_calibration_error(p[test.degraded].max(1), correct[test.degraded]), 4
            ),
            "ece_classwise": round(float(np.mean(classwise)), 4),
            "accuracy": round(float(correct.mean()), 4),
            "mean_confidence": round(float(p.max(1).mean()), 4),
        }

    entropy = predictive_entropy(raw["test"])

    before, after = summary(raw["test"]), summary(calibrated)
    result: dict[str, object] = {
        "method": "temperature scaling of the test-time-flip mean, fitted by least log loss",
        "temperature": round(calibration.temperature, 4),
        "fit": {"photographs": args.count, "seeds_from": FIT_SEEDS, "degraded": args.degraded},
        "test": {"photographs": args.count, "seeds_from": TEST_SEEDS, "degraded": args.degraded},
        "raw": before,
        "calibrated": after,
        "review_threshold_nats": threshold,
        "review_rate_sharp": round(float((entropy[~test.degraded] > threshold).mean()), 4),
        "review_rate_degraded": round(float((entropy[test.degraded] > threshold).mean()), 4),
        "bins": 10,
        "written_to_bundle": after["ece"] <= args.max_ece,
    }
    docs = bundle.root / "docs"
    correct = raw["test"].argmax(1) == truth
    plot_reliability(
        [
            ("raw", raw["test"].max(1), correct),
            (f"calibrated (T = {calibration.temperature:.2f})", calibrated.max(1), correct),
        ],
        f"Confidence of the predicted grade, {args.count} held-out photographs",
        docs / "reliability.png",
    )
    (docs / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    config_path = bundle.root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    if result["written_to_bundle"]:
        config["probability_calibration"] = {
            "method": "temperature",
            "temperature": result["temperature"],
        }
    else:
        config.pop("probability_calibration", None)
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
