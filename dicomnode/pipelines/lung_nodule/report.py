"""The lung results: one SEG (a segment per nodule), a TID 1500 SR and a key image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.pipelines.lung_nodule.findings import Detection
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results import NoduleFinding, SegmentSpec


def write_results(
    findings: Sequence[Detection], volume: Volume, writer: ResultWriter, *, key_images: bool
) -> list[Dataset]:
    """SEG (when there are nodules), the key image (when asked) and the SR, in that order.

    No nodule is a valid result: an SR saying "Nodule: Absent".
    """
    from dicomnode.results import write_measurement_report

    source = list(volume.source)
    outputs: list[Dataset] = []
    segmentation = None
    if findings:
        segmentation = writer.segmentation(source, _labels(findings, volume), _segments(findings))
        outputs.append(segmentation)
    nodules = [_nodule(found, number, volume) for number, found in enumerate(findings, start=1)]
    if findings and key_images:
        outputs.append(_key_image(findings, nodules, source, writer))
    outputs.append(
        write_measurement_report(
            source,
            nodules,
            segmentation=segmentation,
            algorithm=writer.algorithm,
            series=writer.series("sr"),
            uid_key=writer.uid_key,
        )
    )
    return outputs


def _labels(findings: Sequence[Detection], volume: Volume) -> np.ndarray:
    labels = np.zeros(volume.shape, dtype=np.uint8)
    for number, found in enumerate(findings, start=1):
        labels[found.box_index][found.mask] = number
    return labels


def _segments(findings: Sequence[Detection]) -> list[SegmentSpec]:
    from pydicom.sr.codedict import codes

    from dicomnode.results import SegmentSpec

    return SegmentSpec.numbered(
        "Nodule", codes.SCT.Nodule, len(findings), anatomic_region=codes.SCT.Lung
    )


def _nodule(found: Detection, number: int, volume: Volume) -> NoduleFinding:
    from dicomnode.results import NoduleFinding

    centre_slice = round(float(volume.lps_to_index(np.array(found.center_lps))[0, 0]))
    return NoduleFinding(
        center_mm=found.center_lps,
        long_axis_mm=round(found.long_axis_mm, 1),
        volume_mm3=round(found.volume_mm3, 1),
        score=round(found.score, 3),
        key_slice=int(np.clip(centre_slice, 0, len(volume.source) - 1)),
        segment_number=number,
    )


def _key_image(
    findings: Sequence[Detection],
    nodules: Sequence[NoduleFinding],
    source: Sequence[Dataset],
    writer: ResultWriter,
) -> Dataset:
    """A Secondary Capture of the top nodule's slice, every nodule on it circled."""
    from dicomnode.results import KeyImageMark, write_key_image

    key_slice = nodules[0].key_slice
    marks = []
    for found, nodule in zip(findings, nodules, strict=True):
        if nodule.key_slice != key_slice:
            continue
        offset = np.array([s.start for s in found.box_index])
        _, row, column = np.argwhere(found.mask).mean(axis=0) + offset
        pixel = float(source[key_slice].PixelSpacing[1])
        marks.append(KeyImageMark(float(row), float(column), found.long_axis_mm / pixel / 2 + 3))
    return write_key_image(
        source[key_slice],
        marks,
        algorithm=writer.algorithm,
        series=writer.series("sc"),
        uid_key=writer.uid_key,
    )
