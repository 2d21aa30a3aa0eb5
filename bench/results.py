"""Result-writing benchmark: SEG + SR for a 300-slice 512x512 CT with five nodules.

Reference, in the same run: a plain highdicom ``Segmentation`` call with its
default settings and the usual one-boolean-plane-per-segment input
(slices x rows x columns x segments). dicomnode's writers pass a label map
(disjoint segments), which highdicom encodes several times faster, and add the
TID 1500 SR. Median of ``--rounds``.

Usage: ``python bench/results.py [--slices 300] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py must not shadow the standard library's queue module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicomnode.results import (  # noqa: E402
    AlgorithmInfo,
    NoduleFinding,
    SegmentSpec,
    SeriesSpec,
    write_measurement_report,
    write_segmentation,
)
from dicomnode.synthetic import Nodule, ct_series, nodule_labels  # noqa: E402

NODULES = [Nodule((60.0 - 30 * i, -30.0 + 15 * i, 60.0 + 60 * i), 6.0 + 3 * i) for i in range(5)]


def plain_highdicom(source: list, labels: np.ndarray) -> None:  # type: ignore[type-arg]
    stacked = np.stack([labels == n for n in range(1, len(NODULES) + 1)], axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"Nodule {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="bench", version="1", family=codes.cid7162.ArtificialIntelligence
            ),
        )
        for n in range(1, len(NODULES) + 1)
    ]
    hd.seg.Segmentation(
        source_images=source,
        pixel_array=stacked,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="bench",
        manufacturer_model_name="bench",
        software_versions="1",
        device_serial_number="1",
    )


def dicomnode_writers(source: list, labels: np.ndarray) -> None:  # type: ignore[type-arg]
    algorithm = AlgorithmInfo("bench-detector", "1.0")
    segments = [
        SegmentSpec(
            f"Nodule {n}",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Nodule,
            tracking_id=f"Finding {n}",
            anatomic_region=codes.SCT.Lung,
        )
        for n in range(1, len(NODULES) + 1)
    ]
    seg = write_segmentation(
        source,
        labels,
        segments,
        algorithm=algorithm,
        series=SeriesSpec(901, "AI nodules"),
        uid_key="bench",
    )
    dz = float(source[0].SliceThickness)
    findings = [
        NoduleFinding(
            center_mm=n.center_mm,
            long_axis_mm=n.diameter_mm,
            volume_mm3=float((labels == i).sum()) * 0.703125**2 * dz,
            score=0.9,
            key_slice=round(n.center_mm[2] / dz),
            segment_number=i,
        )
        for i, n in enumerate(NODULES, start=1)
    ]
    write_measurement_report(
        source,
        findings,
        segmentation=seg,
        algorithm=algorithm,
        series=SeriesSpec(902, "AI nodules SR"),
        uid_key="bench",
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = ct_series(args.slices, seed=4, nodules=NODULES)
    labels = nodule_labels(source, NODULES)
    print(
        f"data: {args.slices} CT slices 512x512, {len(NODULES)} nodules in {int(labels.any(axis=(1, 2)).sum())} slices"
    )
    timings: dict[str, list[float]] = {"plain highdicom SEG": [], "dicomnode SEG + SR": []}
    for _ in range(args.rounds):
        for name, run in (
            ("plain highdicom SEG", plain_highdicom),
            ("dicomnode SEG + SR", dicomnode_writers),
        ):
            start = time.perf_counter()
            run(source, labels)
            timings[name].append(time.perf_counter() - start)
    reference = statistics.median(timings["plain highdicom SEG"])
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<22} median {median:6.2f} s   ratio {median / reference:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
