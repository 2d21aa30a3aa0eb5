"""Result-writing benchmark: SEG + SR (+ GSPS) for a 300-slice 512x512 CT with five nodules.

Reference, in the same run: a plain highdicom ``Segmentation`` call with its
default settings and the usual one-boolean-plane-per-segment input
(slices x rows x columns x segments). dicomnode's lung pipeline writes its
results from the same nodules (``lung_nodule.report.write_results``): it
passes a label map (disjoint segments), which highdicom encodes several times
faster, and adds the TID 1500 SR (each nodule's outline on its key slice) and,
unless ``presentation_states`` is off, the GSPS with each nodule's outlines on
every slice it spans; both variants are timed. Median of ``--rounds``.

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

import highdicom as hd  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicomnode.config import ResultOptions  # noqa: E402
from dicomnode.pipelines.lung_nodule.findings import detections_from_labels  # noqa: E402
from dicomnode.pipelines.lung_nodule.report import write_results  # noqa: E402
from dicomnode.pipelines.model import ResultWriter  # noqa: E402
from dicomnode.pipelines.volume import Volume, load_series  # noqa: E402
from dicomnode.results import AlgorithmInfo  # noqa: E402
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


def dicomnode_writers(volume: Volume, labels: np.ndarray, gsps: bool) -> None:
    """The lung pipeline's own results (SEG + SR, and the GSPS with *gsps*) for the nodules."""
    writer = ResultWriter(
        AlgorithmInfo("bench-detector", "1.0"),
        ResultOptions(presentation_states=gsps),
        "bench",
        uid_key="bench",
    )
    write_results(detections_from_labels(volume, labels, 0.9), volume, writer, key_images=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = ct_series(args.slices, seed=4, nodules=NODULES)
    labels = nodule_labels(source, NODULES)
    volume = load_series(source)  # what the pipeline's write stage has (not timed)
    print(
        f"data: {args.slices} CT slices 512x512, {len(NODULES)} nodules in {int(labels.any(axis=(1, 2)).sum())} slices"
    )
    timings: dict[str, list[float]] = {
        "plain highdicom SEG": [],
        "dicomnode SEG + SR": [],
        "dicomnode SEG+SR+GSPS": [],
    }
    for _ in range(args.rounds):
        start = time.perf_counter()
        plain_highdicom(source, labels)
        timings["plain highdicom SEG"].append(time.perf_counter() - start)
        for name, gsps in (("dicomnode SEG + SR", False), ("dicomnode SEG+SR+GSPS", True)):
            start = time.perf_counter()
            dicomnode_writers(volume, labels, gsps)
            timings[name].append(time.perf_counter() - start)
    reference = statistics.median(timings["plain highdicom SEG"])
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<22} median {median:6.2f} s   ratio {median / reference:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
