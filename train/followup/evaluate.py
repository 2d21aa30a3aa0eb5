"""Follow-up evaluation on held-out synthetic pairs: registration, tracking, VDT, Lung-RADS, RANO.

Usage (from the repository root)::

    python -m train.followup.evaluate [--ct-pairs 20] [--mr-pairs 10] [--out docs/followup]

Chest pairs (:func:`dicomnode.synthetic.followup.chest_pair`, seeds
``CT_SEED + n``): each follow-up is registered onto its baseline on the lungs
(:func:`dicomnode.followup.registration.register`) and the nodules are
tracked through that registration. The detector is left out on purpose (this
measures registration and tracking): nodules come from the phantoms' truth,
measured two ways:

* ``analytic``: the true centre and sphere volume of each nodule;
* ``masks``: the truth label maps on the scan's own grid (4 x 3 x 3 mm by
  default), with the pipeline's centroid and long axis and the voxel-count
  volume (how the pipeline measured before its partial-volume estimate):
  voxelisation error included;
* ``image``: the same truth masks measured exactly as the lung nodule
  pipeline measures its detections now (centroid, long axis and the
  partial-volume volume from the CT intensities around the mask,
  :func:`dicomnode.pipelines.lung_nodule.findings.partial_volume_voxels`).

Figures: matching accuracy of nodules of 6 mm or more (mean diameter at
either time point; a new or resolved nodule is correct when left unmatched),
VDT relative error of correctly matched nodules that truly grew at least 25 %
in volume, status agreement (all nodules), Lung-RADS agreement (exam
category from the tracked nodules against the category from the truth), and
the registration's Dice and target error (registered vs true follow-up
centre of each nodule present in both).

Head pairs (:func:`dicomnode.synthetic.followup.head_pair`, seeds
``MR_SEED + n``): the T1c follow-up registered onto the baseline on the brain
region (target error at the tumour centre and at 27 points spread over the
brain), each compartment's volume change from the truth labels on the scan's
grid (1 mm in-plane, 2 mm slices) against the change of the analytic phantom
(0.75 mm grid), in percentage points, and the RANO volumetric category from
both.

Saves ``followup_evaluation.json`` and, with matplotlib, ``followup_vdt.png``
and ``followup_brain.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.followup import lungrads, rano
from dicomnode.followup.registration import register
from dicomnode.followup.tracking import Lesion, TrackedNodule, lesion_from_detection, track
from dicomnode.pipelines.lung_nodule.findings import detections_from_labels
from dicomnode.pipelines.volume import Volume
from dicomnode.synthetic.followup import (
    ChestPair,
    ChestScan,
    NoduleTruth,
    chest_pair,
    compartment_volumes_ml,
    head_pair,
)

MODES = ("analytic", "masks", "image")
CT_SEED = 3_000_000
MR_SEED = 3_100_000
MIN_DIAMETER_MM = 6.0
GROWTH_FOR_VDT = 1.25


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct-pairs", type=int, default=20)
    parser.add_argument("--mr-pairs", type=int, default=10)
    parser.add_argument("--ct-seed", type=int, default=CT_SEED)
    parser.add_argument("--mr-seed", type=int, default=MR_SEED)
    parser.add_argument("--out", type=Path, default=Path("docs/followup"))
    return parser.parse_args(argv)


def _analytic(truth: Sequence[NoduleTruth], when: str) -> list[tuple[str, Lesion]]:
    out = []
    for n in truth:
        centre = n.baseline_center_lps if when == "baseline" else n.followup_center_lps
        diameter = n.baseline_diameter_mm if when == "baseline" else n.followup_diameter_mm
        if centre is None or diameter is None:
            continue
        out.append((n.id, Lesion(centre, math.pi / 6.0 * diameter**3, diameter)))
    return out


def _from_masks(scan: ChestScan, partial_volume: bool) -> list[tuple[str, Lesion]]:
    """The truth masks measured as the pipeline does; *partial_volume* False: voxel counts."""
    volume = Volume(scan.array, scan.affine)
    voxel = float(abs(np.linalg.det(scan.affine[:3, :3])))
    out = []
    # detections_from_labels skips labels absent from the grid; find them by their centroid.
    for detection in detections_from_labels(volume, scan.labels):
        k, j, i = (s.start for s in detection.box_index)
        local = np.argwhere(detection.mask)[0] + (k, j, i)
        number = int(scan.labels[tuple(local)])
        lesion = lesion_from_detection(detection)
        if not partial_volume:
            lesion = replace(lesion, volume_mm3=float(detection.mask.sum()) * voxel)
        out.append((scan.nodule_ids[number - 1], lesion))
    return out


def _truth_tracked(pair: ChestPair) -> list[TrackedNodule]:
    """The nodules as perfect tracking would give them (for the truth Lung-RADS category)."""
    out = []
    for n in pair.nodules:
        before = dict(_analytic([n], "baseline")).get(n.id)
        after = dict(_analytic([n], "followup")).get(n.id)
        out.append(TrackedNodule(n.status, before, after, pair.interval_days, tracking_id=n.id))
    return out


def evaluate_ct_pair(pair: ChestPair, mode: str, matrix: np.ndarray) -> dict[str, Any]:
    """Tracking figures of one pair with nodules measured by *mode* (one of ``MODES``)."""
    if mode == "analytic":
        prior, current = _analytic(pair.nodules, "baseline"), _analytic(pair.nodules, "followup")
    else:
        image = mode == "image"
        prior, current = _from_masks(pair.baseline, image), _from_masks(pair.followup, image)
    prior_lesions = [
        Lesion(le.center_lps, le.volume_mm3, le.long_axis_mm, tracking_id=ident)
        for ident, le in prior
    ]
    current_ids = [ident for ident, _ in current]
    tracked = track(prior_lesions, [le for _, le in current], matrix, pair.interval_days)
    # Which truth nodule each tracked item is: the prior's id, else the current lesion's.
    outcome: dict[str, TrackedNodule] = {}
    for item in tracked:
        if item.current is not None:
            index = next(
                n for n, (_, le) in enumerate(current) if le.center_lps == item.current.center_lps
            )
            outcome[current_ids[index]] = item
        elif item.prior is not None:
            outcome[item.tracking_id] = item
    rows = []
    for n in pair.nodules:
        size = max(d for d in (n.baseline_diameter_mm, n.followup_diameter_mm) if d is not None)
        got = outcome.get(n.id)
        if got is None:  # absent from the measured nodules (too small for the grid)
            rows.append({"id": n.id, "size": size, "truth": n.status, "status": None})
            continue
        if n.status == "new":
            correct = got.prior is None
        elif n.status == "resolved":
            correct = got.current is None
        else:
            correct = got.prior is not None and got.tracking_id == n.id
        row: dict[str, Any] = {
            "id": n.id,
            "size": size,
            "truth": n.status,
            "status": got.status,
            "matched_correctly": bool(correct),
        }
        if n.status in ("growing", "stable", "shrinking"):
            ratio = (n.followup_volume_mm3 or 0.0) / (n.baseline_volume_mm3 or 1.0)
            row["true_ratio"] = ratio
            if correct and ratio >= GROWTH_FOR_VDT and n.vdt_days and got.vdt_days:
                row["true_vdt"] = n.vdt_days
                row["vdt"] = got.vdt_days
        rows.append(row)
    truth_category = lungrads.exam_category(_truth_tracked(pair)).category
    category = lungrads.exam_category(tracked).category
    return {"nodules": rows, "lungrads_truth": truth_category, "lungrads": category}


def _registration_error(pair: ChestPair, matrix: np.ndarray) -> list[float]:
    errors = []
    for n in pair.nodules:
        if n.baseline_center_lps is None or n.followup_center_lps is None:
            continue
        mapped = matrix[:3, :3] @ np.array(n.baseline_center_lps) + matrix[:3, 3]
        errors.append(float(np.linalg.norm(mapped - np.array(n.followup_center_lps))))
    return errors


def summarise_ct(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures over all pairs of one measurement mode."""
    rows = [r for pair in results for r in pair["nodules"]]
    big = [r for r in rows if r["size"] >= MIN_DIAMETER_MM]
    vdt = [abs(r["vdt"] - r["true_vdt"]) / r["true_vdt"] for r in rows if "vdt" in r]
    grown = [r for r in rows if r.get("true_ratio", 0.0) >= GROWTH_FOR_VDT]
    return {
        "nodules": len(rows),
        "nodules_6mm": len(big),
        "matching_accuracy_6mm": float(np.mean([bool(r.get("matched_correctly")) for r in big])),
        "status_agreement": float(np.mean([r["status"] == r["truth"] for r in rows])),
        "grown_25pc": len(grown),
        "vdt_evaluated": len(vdt),
        "vdt_within_25pc": float(np.mean([e <= 0.25 for e in vdt])) if vdt else float("nan"),
        "vdt_median_relative_error": float(np.median(vdt)) if vdt else float("nan"),
        "lungrads_agreement": float(
            np.mean([p["lungrads"] == p["lungrads_truth"] for p in results])
        ),
    }


def evaluate_mr_pair(seed: int) -> dict[str, Any]:
    """Registration Dice and compartment-change errors of one head pair."""
    pair = head_pair(seed)
    prior = Volume(pair.baseline.array, pair.baseline.affine)
    current = Volume(pair.followup.array, pair.followup.affine)
    result = register(prior, current, anatomy="brain")
    tumour = pair.baseline.phantom.tumour
    assert tumour is not None
    expected = pair.motion[:3, :3] @ np.array(tumour.center_mm) + pair.motion[:3, 3]
    target_error = float(np.linalg.norm(result.map_points(tumour.center_mm)[0] - expected))
    # The tumour centre alone hides a scaling about it: 27 points over the brain as well.
    head = pair.baseline.phantom
    points = np.array(head.center_mm) + 0.7 * np.array(head.semi_axes_mm) * np.array(
        [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    )
    truth_points = points @ pair.motion[:3, :3].T + pair.motion[:3, 3]
    brain_error = float(np.linalg.norm(result.map_points(points) - truth_points, axis=1).max())
    voxel = float(abs(np.linalg.det(pair.baseline.affine[:3, :3])))
    measured = rano.compartment_changes(
        compartment_volumes_ml(pair.baseline.labels, voxel),
        compartment_volumes_ml(pair.followup.labels, voxel),
    )
    truth = pair.true_change_percent()
    errors = {}
    for name in rano.COMPARTMENTS:
        got = measured[name].change_percent
        if got is not None and not math.isnan(truth[name]):
            errors[name] = got - truth[name]
    true_response = rano.volumetric_response(
        pair.baseline.true_volumes_ml["enhancing"], pair.followup.true_volumes_ml["enhancing"]
    ).category
    response = rano.volumetric_response(
        measured["enhancing"].prior_ml, measured["enhancing"].current_ml
    ).category
    return {
        "seed": seed,
        "scenario": pair.scenario,
        "dice": result.dice,
        "poor": result.poor,
        "target_error_mm": target_error,
        "brain_target_error_mm": brain_error,
        "true_change_percent": truth,
        "change_error_pp": errors,
        "rano_truth": true_response,
        "rano": response,
    }


def _plots(out: Path, ct: dict[str, list[dict[str, Any]]], mr: list[dict[str, Any]]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(5, 5))
    for mode, marker in (("analytic", "o"), ("masks", "x"), ("image", "+")):
        rows = [r for p in ct[mode] for r in p["nodules"] if "vdt" in r]
        ax.scatter(
            [r["true_vdt"] for r in rows], [r["vdt"] for r in rows], marker=marker, label=mode
        )
    limit = max([1.0, *(r["true_vdt"] for p in ct["analytic"] for r in p["nodules"] if "vdt" in r)])
    ax.plot([0, limit], [0, limit], "k--", lw=0.8)
    ax.plot([0, limit], [0, 1.25 * limit], "k:", lw=0.6)
    ax.plot([0, limit], [0, 0.75 * limit], "k:", lw=0.6)
    ax.set_xlabel("true VDT (days)")
    ax.set_ylabel("tracked VDT (days)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "followup_vdt.png", dpi=100)
    written.append(str(out / "followup_vdt.png"))
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in rano.COMPARTMENTS:
        truth = [r["true_change_percent"][name] for r in mr if name in r["change_error_pp"]]
        got = [
            t + r["change_error_pp"][name]
            for t, r in zip(truth, [r for r in mr if name in r["change_error_pp"]], strict=True)
        ]
        ax.scatter(truth, got, label=name, s=14)
    ax.axline((0, 0), slope=1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("true volume change (%)")
    ax.set_ylabel("measured volume change (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "followup_brain.png", dpi=100)
    written.append(str(out / "followup_brain.png"))
    plt.close("all")
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ct: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    registration: list[dict[str, Any]] = []
    for n in range(args.ct_pairs):
        seed = args.ct_seed + n
        pair = chest_pair(seed)
        result = register(
            Volume(pair.baseline.array, pair.baseline.affine),
            Volume(pair.followup.array, pair.followup.affine),
            anatomy="lung",
        )
        errors = _registration_error(pair, result.matrix)
        registration.append(
            {
                "seed": seed,
                "dice": result.dice,
                "dice_unregistered": result.dice_unregistered,
                "poor": result.poor,
                "target_error_mm_max": max(errors),
                "target_error_mm_mean": float(np.mean(errors)),
            }
        )
        for mode in ct:
            ct[mode].append({"seed": seed, **evaluate_ct_pair(pair, mode, result.matrix)})
        print(f"CT pair {seed}: Dice {result.dice:.3f}, target error max {max(errors):.2f} mm")
    mr = []
    for n in range(args.mr_pairs):
        mr.append(evaluate_mr_pair(args.mr_seed + n))
        print(f"MR pair {args.mr_seed + n}: {mr[-1]['scenario']}, Dice {mr[-1]['dice']:.3f}")
    change_errors = {
        name: [abs(r["change_error_pp"][name]) for r in mr if name in r["change_error_pp"]]
        for name in rano.COMPARTMENTS
    }
    summary: dict[str, Any] = {
        "ct_seeds": [args.ct_seed, args.ct_seed + args.ct_pairs - 1],
        "mr_seeds": [args.mr_seed, args.mr_seed + args.mr_pairs - 1],
        "ct": {mode: summarise_ct(results) for mode, results in ct.items()},
        "ct_registration": {
            "poor": sum(r["poor"] for r in registration),
            "dice_min": min(r["dice"] for r in registration) if registration else None,
            "dice_unregistered_median": float(
                np.median([r["dice_unregistered"] for r in registration])
            )
            if registration
            else None,
            "target_error_mm_max": max(r["target_error_mm_max"] for r in registration)
            if registration
            else None,
            "target_error_mm_mean": float(
                np.mean([r["target_error_mm_mean"] for r in registration])
            )
            if registration
            else None,
        },
        "mr": {
            "pairs": len(mr),
            "poor_registrations": sum(r["poor"] for r in mr),
            "dice_min": min((r["dice"] for r in mr), default=None),
            "target_error_mm_max": max((r["target_error_mm"] for r in mr), default=None),
            "brain_target_error_mm_max": max(
                (r["brain_target_error_mm"] for r in mr), default=None
            ),
            "change_error_pp_max": {k: max(v) if v else None for k, v in change_errors.items()},
            "change_error_pp_mean": {
                k: float(np.mean(v)) if v else None for k, v in change_errors.items()
            },
            "rano_agreement": float(np.mean([r["rano"] == r["rano_truth"] for r in mr]))
            if mr
            else None,
        },
        "seconds": round(time.time() - started, 1),
    }
    summary["plots"] = _plots(args.out, ct, mr)
    details = {"summary": summary, "ct": ct, "ct_registration": registration, "mr": mr}
    (args.out / "followup_evaluation.json").write_text(json.dumps(details, indent=1))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
