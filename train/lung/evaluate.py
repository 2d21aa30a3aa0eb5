"""FROC / CPM evaluation of a lung nodule detector bundle on held-out synthetic chest scans.

Usage (from the repository root)::

    python -m train.lung.evaluate [--bundle models/lung_nodule_ct] [--cases 30]

Each case is a whole synthetic chest scan (360 mm field of view, 200 mm long,
1-4 nodules of 4-30 mm, seeds never used in training) rendered at a random
native spacing and brought to the detector's grid by the pipeline's own
preprocessing. A detection hits a nodule when its centre lies within the
nodule's radius (the LUNA16 rule); hits on nodules under ``--min-diameter`` mm
count neither as true nor as false positives. Prints sensitivity at 1/8 ... 8
false positives per scan, the CPM (their mean) and the score threshold of the
1 FP/scan operating point; saves the FROC curve as PNG and the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.lung_nodule.detector import (
    DetectorSettings,
    detector_settings,
    make_detector,
)
from dicomnode.pipelines.lung_nodule.preprocessing import boxes_to_lps
from train.lung.phantom import evaluation_case

EVALUATION_SEED = 2_000_000
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/lung_nodule_ct"))
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=EVALUATION_SEED)
    parser.add_argument("--min-diameter", type=float, default=6.0, help="mm; smaller are ignored")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG/JSON folder (default: bundle docs)"
    )
    return parser.parse_args(argv)


def match(
    centers: np.ndarray,
    scores: np.ndarray,
    truth: np.ndarray,
    diameters: np.ndarray,
    min_diameter: float,
) -> tuple[list[tuple[float, bool]], int, np.ndarray]:
    """Label each detection TP/FP (ignoring hits on small nodules); return (score, hit) list,
    the number of relevant nodules and the best score reached per relevant nodule (0: missed)."""
    relevant = diameters >= min_diameter
    best = np.zeros(len(truth))
    labelled: list[tuple[float, bool]] = []
    for center, score in zip(centers, scores, strict=True):
        distance = np.linalg.norm(truth - center, axis=1) if len(truth) else np.array([])
        hits = np.nonzero(distance <= diameters / 2)[0] if len(truth) else np.array([], int)
        if len(hits) == 0:
            labelled.append((float(score), False))
            continue
        for n in hits:
            best[n] = max(best[n], float(score))
        if relevant[hits].any():
            labelled.append((float(score), True))
    return labelled, int(relevant.sum()), best[relevant]


def froc(
    labelled: list[tuple[float, bool]], best: np.ndarray, cases: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FP per scan, sensitivity, threshold) along decreasing score thresholds."""
    thresholds = np.unique([s for s, _ in labelled] + [1.01])[::-1]
    fp_scores = np.array([s for s, hit in labelled if not hit])
    fps = np.array([(fp_scores >= t).sum() / cases for t in thresholds])
    sens = np.array([(best >= t).mean() if len(best) else 0.0 for t in thresholds])
    return fps, sens, thresholds


def at_rate(
    fps: np.ndarray, sens: np.ndarray, thresholds: np.ndarray, rate: float
) -> tuple[float, float]:
    """Sensitivity and threshold of the lowest threshold with at most *rate* FP per scan."""
    ok = np.nonzero(fps <= rate)[0]
    if len(ok) == 0:
        return 0.0, float("nan")
    return float(sens[ok[-1]]), float(thresholds[ok[-1]])


def plot(fps: np.ndarray, sens: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(np.maximum(fps, 1 / 16), sens, where="post")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 8, 8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_detector(path: Path) -> tuple[Any, DetectorSettings, Bundle]:
    """The bundle's RetinaNet detector on the CPU, with the sliding window the pipeline uses."""
    bundle = Bundle(path.resolve())
    settings = detector_settings(bundle)
    network = bundle.parsed("network_def")
    bundle.load_weights(network, torch.device("cpu"))
    detector = make_detector(network.eval(), bundle.parsed("anchor_generator"), settings)
    detector.set_sliding_window_inferer(
        roi_size=list(settings.patch_size),
        overlap=settings.overlap,
        sw_batch_size=1,
        mode=settings.mode,
    )
    detector.eval()
    return detector, settings, bundle


def detect(detector: Any, settings: DetectorSettings, seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Evaluation case *seed* and the detector's (LPS centres, scores) on it."""
    sample, _ = evaluation_case(seed, settings.pixdim, settings.window)
    image = torch.from_numpy(sample.image)[None]
    sliding = any(s > p for s, p in zip(image.shape[1:], settings.patch_size, strict=True))
    with torch.no_grad():
        (out,) = detector([image], use_inferer=sliding)
    centers, corners = boxes_to_lps(out["box"].numpy(), sample.affine)
    return sample, np.column_stack([centers, corners]), out["label_scores"].numpy()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    detector, settings, bundle = load_detector(args.bundle)
    labelled: list[tuple[float, bool]] = []
    best_scores, relevant, seconds = [], 0, []
    for case in tqdm(range(args.cases), desc="cases", unit="scan"):
        start = time.perf_counter()
        sample, boxes, scores = detect(detector, settings, args.seed + case)
        seconds.append(time.perf_counter() - start)
        found, count, best = match(
            boxes[:, :3],
            scores,
            sample.centers_lps,
            sample.diameters,
            args.min_diameter,
        )
        labelled += found
        relevant += count
        best_scores.append(best)
    fps, sens, thresholds = froc(labelled, np.concatenate(best_scores), args.cases)
    rates = {f"{rate:g}": at_rate(fps, sens, thresholds, rate) for rate in FP_RATES}
    result = {
        "cases": args.cases,
        "nodules": relevant,
        "min_diameter_mm": args.min_diameter,
        "sensitivity_at_fp_per_scan": {k: round(v[0], 4) for k, v in rates.items()},
        "cpm": round(float(np.mean([v[0] for v in rates.values()])), 4),
        "threshold_at_1_fp_per_scan": round(rates["1"][1], 4),
        "sensitivity_any_fp": round(float((np.concatenate(best_scores) > 0).mean()), 4),
        "inference_seconds_mean": round(float(np.mean(seconds)), 2),
    }
    out_dir = args.out or bundle.root / "docs"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(
        fps,
        sens,
        out_dir / "froc.png",
        f"FROC, {args.cases} synthetic scans, nodules >= {args.min_diameter:g} mm",
    )
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
