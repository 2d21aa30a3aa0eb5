"""Calibrate the TC/WT/ET sigmoid thresholds of a brain tumour bundle on calibration studies.

Run from the repository root::

    python -m train.brain.calibrate --studies 10

The calibration studies (seeds 6000+) are disjoint from the training (1000+),
validation (5000+) and held-out evaluation (7000+) phantoms and from the test
studies (seeds 21 and 22). Each is written as DICOM by
:func:`dicomnode.synthetic.mr.write_mr_study` and run through the
``brain_tumor`` pipeline's own stages (selection, loading, resampling, brain
mask, SegResNet) up to the TC/WT/ET probabilities on the T1c grid; those are
cached in ``--cache``. ``--thin-studies`` adds studies with a small tumour in
thin oedema (seeds 6100+, as in training and evaluation), where a one-voxel
error is a large share of the volume; ``--varied-studies`` adds studies on
random series grids (seeds 6200+), whose T1c is interpolated onto the 1 mm
grid where the default studies' 1 mm T1c is not. For each region the threshold in
``--grid`` that gives the smallest mean relative volume error over the
studies (ties: the higher mean Dice) is chosen, the three are evaluated
together through the pipeline's own :func:`~dicomnode.pipelines.brain_tumor.labels_from_probabilities`,
and with ``--write`` stored as ``thresholds`` in the bundle's
``configs/inference.json``, where the pipeline reads them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.base import JobContext
from dicomnode.pipelines.brain_tumor import BrainTumorPipeline
from dicomnode.pipelines.brain_tumor.findings import (
    ENHANCING,
    NECROSIS,
    OEDEMA,
    REGIONS,
    labels_from_probabilities,
    probabilities_on_grid,
    region_targets,
)
from dicomnode.synthetic.mr import write_mr_study
from train.brain.data import THIN
from train.brain.evaluate import dice, series_inputs, study_geometries

FIRST_SEED = 6000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, default=Path("models/brain_tumor_mri"))
    parser.add_argument("--studies", type=int, default=10, help="calibration studies")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument(
        "--thin-studies",
        type=int,
        default=0,
        help="more calibration studies with a small tumour in thin oedema (first-seed + 100 on)",
    )
    parser.add_argument(
        "--varied-studies",
        type=int,
        default=0,
        help="more calibration studies on random series grids (first-seed + 200 on)",
    )
    parser.add_argument(
        "--grid", type=float, nargs="+", default=[round(0.05 * i, 2) for i in range(4, 20)]
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (shared machine: 1)"
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/brain_calibration"))
    parser.add_argument("--out", type=Path, default=Path("train/brain/output"))
    parser.add_argument(
        "--write", action="store_true", help="store the thresholds in configs/inference.json"
    )
    return parser.parse_args(argv)


def study_probabilities(
    pipeline: BrainTumorPipeline,
    seed: int,
    folder: Path,
    phantom_options: dict[str, Any] | None = None,
    varied: bool = False,
) -> dict[str, Any]:
    """One calibration study's probabilities and truth on the T1c grid."""
    truth = write_mr_study(
        folder / "study",
        seed=seed,
        phantom_options=phantom_options,
        geometries=study_geometries(seed, varied),
    )
    work = folder / "work"
    work.mkdir()
    context = JobContext(seed, truth.study_instance_uid, series_inputs(truth), work)
    loaded = pipeline.load(pipeline.select(context), context)
    prepared = pipeline.preprocess(loaded, context)
    probabilities = probabilities_on_grid(
        pipeline.infer(prepared, context), prepared, loaded["T1c"]
    )
    return {
        "seed": seed,
        "probabilities": probabilities.astype(np.float16),
        "labels": truth.labels,
        "voxel_mm3": truth.voxel_volume_mm3,
    }


def load_studies(
    pipeline: BrainTumorPipeline,
    seeds: list[int],
    cache: Path,
    phantom_options: dict[str, Any] | None = None,
    varied: bool = False,
) -> list[dict[str, Any]]:
    """The studies of *seeds*, from *cache* where already computed with these weights."""
    cache.mkdir(parents=True, exist_ok=True)
    weights = pipeline.bundle.root / "models" / "model.pt"
    stamp = f"{weights.stat().st_size}-{int(weights.stat().st_mtime)}"
    kind = ("-thin" if phantom_options else "") + ("-varied" if varied else "")
    studies = []
    for seed in tqdm(seeds, desc="calibration studies", unit="study"):
        path = cache / f"{seed}{kind}-{stamp}.pkl"
        if path.is_file():
            with path.open("rb") as f:
                studies.append(pickle.load(f))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            study = study_probabilities(pipeline, seed, Path(tmp), phantom_options, varied)
        with path.open("wb") as f:
            pickle.dump(study, f)
        studies.append(study)
    return studies


def region_errors(
    studies: list[dict[str, Any]], region: int, threshold: float
) -> tuple[float, float]:
    """Mean relative volume error and mean Dice of one region at *threshold* (raw, no clean-up)."""
    errors, dices = [], []
    for study in studies:
        truth = region_targets(study["labels"])[region] > 0
        predicted = study["probabilities"][region] > threshold
        if truth.sum() == 0:
            continue
        errors.append(abs(predicted.sum() / truth.sum() - 1))
        dices.append(dice(predicted, truth))
    return float(np.mean(errors)), float(np.mean(dices))


def evaluate(
    studies: list[dict[str, Any]],
    thresholds: tuple[float, float, float],
    pipeline: BrainTumorPipeline,
) -> dict[str, Any]:
    """Dice and relative volume errors with the pipeline's own label rule and clean-up."""
    rows = []
    for study in studies:
        labels = labels_from_probabilities(
            study["probabilities"].astype(np.float32),
            thresholds,
            voxel_mm3=study["voxel_mm3"],
            min_component_ml=pipeline.options.min_component_ml,
            require_core=pipeline.options.require_core,
            trim_core_rim=pipeline.options.trim_core_rim,
        )
        target = study["labels"]
        row: dict[str, Any] = {
            "seed": study["seed"],
            "dice": {
                "WT": dice(labels > 0, target > 0),
                "TC": dice(np.isin(labels, (1, 2)), np.isin(target, (1, 2))),
                "ET": dice(labels == 1, target == 1),
            },
            "volume_ml": {},
        }
        for name, members in (
            ("whole tumour", (ENHANCING, NECROSIS, OEDEMA)),
            ("enhancing", (ENHANCING,)),
            ("necrotic", (NECROSIS,)),
            ("oedema", (OEDEMA,)),
        ):
            ml = study["voxel_mm3"] / 1000.0
            row["volume_ml"][name] = [
                float(np.isin(labels, members).sum() * ml),
                float(np.isin(target, members).sum() * ml),
            ]
        rows.append(row)
    summary: dict[str, Any] = {
        "mean_dice": {k: float(np.mean([r["dice"][k] for r in rows])) for k in ("WT", "TC", "ET")}
    }
    for name in ("whole tumour", "enhancing", "oedema", "necrotic"):
        errors = [
            abs(r["volume_ml"][name][0] / r["volume_ml"][name][1] - 1)
            for r in rows
            if r["volume_ml"][name][1] > 0
        ]
        summary[f"{name} volume error"] = {
            "mean": float(np.mean(errors)),
            "max": float(max(errors)),
        }
    summary["necrotic abs error ml max"] = float(
        max(abs(r["volume_ml"]["necrotic"][0] - r["volume_ml"]["necrotic"][1]) for r in rows)
    )
    return {"summary": summary, "studies": rows}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # The sweep starts from 0.5 everywhere, whatever the bundle holds now.
    pipeline = BrainTumorPipeline(
        "brain_tumor",
        PipelineConfig(bundle=args.bundle.resolve(), device="cpu", threshold=0.5),
    )
    seeds = [args.first_seed + i for i in range(args.studies)]
    studies = load_studies(pipeline, seeds, args.cache)
    thin = [args.first_seed + 100 + i for i in range(args.thin_studies)]
    studies += load_studies(pipeline, thin, args.cache, THIN)
    varied = [args.first_seed + 200 + i for i in range(args.varied_studies)]
    studies += load_studies(pipeline, varied, args.cache, varied=True)
    seeds += thin + varied
    sweep: dict[str, list[dict[str, float]]] = {}
    chosen = []
    for index, region in enumerate(REGIONS):
        sweep[region] = []
        for threshold in args.grid:
            error, mean_dice = region_errors(studies, index, threshold)
            sweep[region].append({"threshold": threshold, "volume_error": error, "dice": mean_dice})
        best = min(sweep[region], key=lambda r: (round(r["volume_error"], 3), -r["dice"]))
        chosen.append(best["threshold"])
        print(f"{region}: threshold {best['threshold']:.2f}", json.dumps(sweep[region]))
    thresholds = (chosen[0], chosen[1], chosen[2])
    before = evaluate(studies, (0.5, 0.5, 0.5), pipeline)
    after = evaluate(studies, thresholds, pipeline)
    report = {
        "seeds": seeds,
        "thresholds": dict(zip(REGIONS, thresholds, strict=True)),
        "at_0.5": before["summary"],
        "calibrated": after["summary"],
        "studies": after["studies"],
        "sweep": sweep,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("thresholds", "at_0.5", "calibrated")}, indent=2))
    if args.write:
        path = args.bundle / "configs" / "inference.json"
        config = json.loads(path.read_text())
        config["thresholds"] = report["thresholds"]
        path.write_text(json.dumps(config, indent=4) + "\n")
        print(f"thresholds written to {path}")


if __name__ == "__main__":
    main()
