"""Evaluate a brain tumour bundle end to end on held-out synthetic DICOM studies.

Run from the repository root::

    python -m train.brain.evaluate --studies 8

Each study (seeds 7000+, never used in training or validation) is written as
DICOM by :func:`dicomnode.synthetic.mr.write_mr_study` and run through the
``brain_tumor`` pipeline exactly as a worker runs it (series selection,
resampling, brain mask, SegResNet, SEG and SR writing). The SEG read back
from the written file is compared with the truth on the T1c grid (Dice of
WT, TC, ET) and the SR volumes with the truth volumes. ``--normal-studies``
more have no tumour (their result should be empty); ``--thin-studies`` more
(seeds 7100+) have a small tumour (6-14 mm) in a thin oedema (4-7 mm), where
a one-voxel boundary error is 15-25 % of the oedema volume; ``--varied-studies``
more (seeds 7200+) have training-style random grids (every series, the T1c
too, at a random in-plane spacing, so interpolated onto the 1 mm grid, where
the other studies' 1 mm T1c is not). Writes
``evaluation.json`` (with each SR measurement's relative volume error, over
studies whose true volume is at least 0.5 mL) and ``dice.png`` /
``volumes.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import numpy as np
import pydicom
import torch
from pydicom.sr.codedict import codes
from tqdm import tqdm

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.base import JobContext, SeriesInput
from dicomnode.pipelines.brain_tumor import BrainTumorPipeline
from dicomnode.store import parse_header_from_dataset
from dicomnode.synthetic.mr import ROLES, Geometry, MRStudyTruth, random_geometries, write_mr_study
from train.brain.data import THIN

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NAMES = {"Enhancing tumour": 1, "Necrotic core": 2, "Oedema": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/brain_tumor_mri"))
    parser.add_argument("--studies", type=int, default=8, help="held-out studies with a tumour")
    parser.add_argument("--normal-studies", type=int, default=3, help="held-out studies without")
    parser.add_argument("--first-seed", type=int, default=7000)
    parser.add_argument(
        "--thin-studies",
        type=int,
        default=4,
        help="held-out studies with a small tumour in thin oedema (seeds first-seed + 100 on)",
    )
    parser.add_argument(
        "--varied-studies",
        type=int,
        default=0,
        help="held-out studies on random series grids (seeds first-seed + 200 on)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (shared machine: 1)"
    )
    parser.add_argument("--out", type=Path, default=Path("train/brain/output"))
    return parser.parse_args(argv)


def series_inputs(truth: MRStudyTruth) -> list[SeriesInput]:
    """The series as a worker hands them over (stored routing attributes)."""
    out = []
    for role in ROLES:
        paths = truth.series[role]
        header = parse_header_from_dataset(pydicom.dcmread(paths[0], stop_before_pixels=True))
        out.append(
            SeriesInput(
                header.series_instance_uid,
                "MR",
                header.series.get("SeriesDescription"),
                header.series,
                tuple(paths),
            )
        )
    return out


def study_geometries(seed: int, varied: bool) -> dict[str, Geometry] | None:
    """Training-style random grids for a ``--varied-studies`` study; None: the demo grids."""
    return random_geometries(np.random.default_rng(seed)) if varied else None


def read_labels(seg_path: Path, source: list[Path]) -> np.ndarray:
    """The written SEG as exclusive labels on the T1c slices."""
    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in source]
    stack = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, ignore_spatial_locations=True, skip_overlap_checks=True
    )
    labels = np.zeros(stack.shape[:3], np.uint8)
    for number in seg.segment_numbers:
        label = NAMES[seg.get_segment_description(number).segment_label]
        labels[stack[..., number - 1] > 0] = label
    return labels


def read_volumes(sr_path: Path) -> dict[str, float]:
    """Volumes (mL) by tracking identifier from the written SR."""
    # srread parses a TID 1500 document's content as a MeasurementReport.
    content = cast(hd.sr.MeasurementReport, hd.sr.srread(sr_path).content)
    groups = [
        *content.get_planar_roi_measurement_groups(),  # the key-slice outline with the volume
        *content.get_volumetric_roi_measurement_groups(),
        *content.get_image_measurement_groups(),
    ]
    out: dict[str, float] = {}
    for group in groups:
        measured = group.get_measurements(name=codes.SCT.Volume)
        if measured:
            out[str(group.tracking_identifier)] = float(measured[0].value)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


MEASUREMENTS = ("whole tumour", "tumour core", "enhancing", "necrotic", "oedema")
MIN_TRUE_ML = 0.5  # relative errors of smaller volumes are not meaningful at 1 mm


def evaluate_study(
    pipeline: BrainTumorPipeline,
    seed: int,
    folder: Path,
    *,
    tumour: bool = True,
    phantom_options: dict[str, Any] | None = None,
    geometries: dict[str, Geometry] | None = None,
) -> dict[str, Any]:
    """Write one study, run the pipeline, compare its SEG and SR with the truth."""
    truth = write_mr_study(
        folder / "study",
        seed=seed,
        tumour=tumour,
        phantom_options=phantom_options,
        geometries=geometries,
    )
    work = folder / "work"
    work.mkdir()
    results = pipeline.run(JobContext(seed, truth.study_instance_uid, series_inputs(truth), work))
    seg = next((r.path for r in results if r.sop_class_uid == SEG_CLASS), None)
    sr = next(r.path for r in results if r.sop_class_uid != SEG_CLASS)
    predicted = read_labels(seg, truth.series["T1c"]) if seg else np.zeros_like(truth.labels)
    volumes = read_volumes(sr)
    target = truth.labels
    return {
        "seed": seed,
        "tumour": tumour,
        "dice": {
            "WT": dice(predicted > 0, target > 0),
            "TC": dice(np.isin(predicted, (1, 2)), np.isin(target, (1, 2))),
            "ET": dice(predicted == 1, target == 1),
        },
        "volume_ml": {
            "whole tumour": [volumes.get("Whole tumour", 0.0), truth.volume_ml(1, 2, 3)],
            "enhancing": [volumes.get("Enhancing tumour", 0.0), truth.volume_ml(1)],
            "necrotic": [volumes.get("Necrotic core", 0.0), truth.volume_ml(2)],
            "tumour core": [
                volumes.get("Enhancing tumour", 0.0) + volumes.get("Necrotic core", 0.0),
                truth.volume_ml(1, 2),
            ],
            "oedema": [volumes.get("Oedema", 0.0), truth.volume_ml(3)],
        },
        "outputs": len(results),
    }


def save_plots(rows: list[dict[str, Any]], out: Path) -> None:
    """Dice per study and measured against true whole-tumour volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    tumours = [r for r in rows if r["tumour"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for region in ("WT", "TC", "ET"):
        ax.plot(range(len(tumours)), [r["dice"][region] for r in tumours], "o-", label=region)
    ax.set_xticks(range(len(tumours)), [str(r["seed"]) for r in tumours], rotation=60)
    ax.set_xlabel("study seed")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "dice.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for key in ("whole tumour", "enhancing", "necrotic", "oedema"):
        pairs = np.array([r["volume_ml"][key] for r in tumours])
        ax.scatter(pairs[:, 1], pairs[:, 0], label=key)
    top = max(max(r["volume_ml"]["whole tumour"]) for r in tumours) * 1.1
    ax.plot([0, top], [0, top], "k--", lw=1)
    ax.set_xlabel("true volume (mL)")
    ax.set_ylabel("SR volume (mL)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "volumes.png", dpi=100)
    plt.close(fig)


def volume_errors(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """Each SR measurement's relative error: mean, largest and its seed (true ≥ 0.5 mL)."""
    out: dict[str, dict[str, float | int]] = {}
    for key in MEASUREMENTS:
        pairs = [
            (abs(r["volume_ml"][key][0] / r["volume_ml"][key][1] - 1), r["seed"])
            for r in rows
            if r["tumour"] and r["volume_ml"][key][1] >= MIN_TRUE_ML
        ]
        if pairs:
            worst = max(pairs)
            out[key] = {
                "studies": len(pairs),
                "mean": float(np.mean([e for e, _ in pairs])),
                "max": float(worst[0]),
                "max_seed": int(worst[1]),
            }
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean Dice per region, relative volume errors, empty results without a tumour."""
    tumours = [r for r in rows if r["tumour"]]
    errors = volume_errors(rows)
    empty = [r for r in rows if not r["tumour"]]
    return {
        "studies_with_tumour": len(tumours),
        "mean_dice": {
            k: float(np.mean([r["dice"][k] for r in tumours])) for k in ("WT", "TC", "ET")
        },
        "min_dice": {k: float(np.min([r["dice"][k] for r in tumours])) for k in ("WT", "TC", "ET")},
        "max_whole_tumour_volume_error": errors["whole tumour"]["max"],
        "mean_whole_tumour_volume_error": errors["whole tumour"]["mean"],
        "volume_errors": errors,
        "thin_oedema_volume_errors": volume_errors([r for r in rows if r.get("thin")]),
        "varied_grid_volume_errors": volume_errors([r for r in rows if r.get("varied")]),
        "tumour_free_studies_with_empty_result": sum(
            r["volume_ml"]["whole tumour"][0] == 0.0 for r in empty
        ),
        "tumour_free_studies": len(empty),
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pipeline = BrainTumorPipeline(
        "brain_tumor", PipelineConfig(bundle=args.bundle.resolve(), device="cpu")
    )
    first = args.first_seed
    plan: list[tuple[int, bool, dict[str, Any] | None, bool]] = [
        (first + i, True, None, False) for i in range(args.studies)
    ]
    plan += [(first + args.studies + i, False, None, False) for i in range(args.normal_studies)]
    plan += [(first + 100 + i, True, THIN, False) for i in range(args.thin_studies)]
    plan += [(first + 200 + i, True, None, True) for i in range(args.varied_studies)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed, tumour, options, varied in tqdm(plan, desc="held-out studies", unit="study"):
            folder = Path(tmp) / str(seed)
            row = evaluate_study(
                pipeline,
                seed,
                folder,
                tumour=tumour,
                phantom_options=options,
                geometries=study_geometries(seed, varied),
            )
            rows.append({**row, "thin": options is not None, "varied": varied})
            tqdm.write(json.dumps({"seed": seed, **row["dice"], **row["volume_ml"]}))
    summary = summarise(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.json").write_text(
        json.dumps({"summary": summary, "studies": rows}, indent=2)
    )
    save_plots(rows, args.out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
