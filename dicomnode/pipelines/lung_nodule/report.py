"""The lung results: SEG (a segment per nodule), TID 1500 SR, GSPS outlines and key images.

The key images: the top nodule's slice, every nodule on it circled; in a
follow-up, also the prior and the current slice side by side for each new or
growing nodule (:mod:`~dicomnode.pipelines.lung_nodule.keyimages`).

Nodule n is "Nodule n" everywhere: its SEG segment label and tracking
identifier, its SR groups' tracking identifier, its GSPS graphics; one
Tracking UID links them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.pipelines.lung_nodule.findings import Detection
from dicomnode.pipelines.lung_nodule.followup import LungFollowUp, nodule_change, report_comparison
from dicomnode.pipelines.lung_nodule.keyimages import circle, comparison_images, mask_centre
from dicomnode.pipelines.volume import Volume

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.calibration import ScoreCalibration
    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results import NoduleFinding, SegmentSpec


def write_results(
    findings: Sequence[Detection],
    volume: Volume,
    writer: ResultWriter,
    *,
    key_images: bool,
    calibration: ScoreCalibration | None = None,
    follow_up: LungFollowUp | None = None,
) -> list[Dataset]:
    """SEG, GSPS and key images (when there are nodules and they are asked for), then the SR.

    No nodule is a valid result: an SR saying "Nodule: Absent". With a
    *calibration* each nodule's score becomes the probability that it is one,
    stated as "Certainty of Finding"; without, the detector's score is stated as
    such ("Score"). With a *follow_up* (the ``priors`` stage) a nodule matched
    to a prior one keeps its Tracking Identifier and UID in the SEG, the GSPS
    and the SR, and the SR states each nodule's change, the prior
    measurements, the comparison (or why it is a baseline) and the Lung-RADS
    suggestion.
    """
    from dicomnode.results import segment_annotations, write_measurement_report
    from dicomnode.results.codes import CERTAINTY, SCORE
    from dicomnode.results.outlines import outlines_by_slice

    source = volume.slices()  # one per slice; frames of an enhanced instance referenced by number
    outputs: list[Dataset] = []
    segmentation = None
    drawn: dict[int, dict[int, list[np.ndarray]]] = {}
    tracked = list(follow_up.nodules[: len(findings)]) if follow_up is not None else []
    segments = _segments(findings)
    if tracked:
        # The prior's identifiers where a nodule was matched (tracking.track), else its own.
        segments = [
            replace(
                spec, label=n.tracking_id, tracking_id=n.tracking_id, tracking_uid=n.tracking_uid
            )
            for spec, n in zip(segments, tracked, strict=True)
        ]
    if findings:
        labels = _labels(findings, volume)
        segmentation = writer.segmentation(source, labels, segments)
        outputs.append(segmentation)
        # Each nodule's outlines within its own box (what the SEG has there), not by
        # scanning the whole label map.
        drawn = {
            n: outlines_by_slice(labels[f.box_index] == n, f.box_index)
            for n, f in enumerate(findings, start=1)
        }
    nodules = [
        _nodule(found, number, volume, drawn.get(number, {}), calibration)
        for number, found in enumerate(findings, start=1)
    ]
    if tracked:
        nodules = [
            replace(
                nodule,
                label=n.tracking_id,
                tracking_uid=n.tracking_uid,
                change=nodule_change(n),
            )
            for nodule, n in zip(nodules, tracked, strict=True)
        ]
    texts = {n: _text(f, calibration is not None) for n, f in enumerate(nodules, start=1)}
    gsps = writer.presentation_state(
        source, segment_annotations(segments, drawn, writer.uid_key, texts)
    )
    if gsps is not None:
        outputs.append(gsps)
    if findings and key_images:
        outputs.append(_key_image(findings, nodules, source, writer))
        if follow_up is not None:
            beside = comparison_images(
                findings, nodules, tracked, volume, source, follow_up, writer
            )
            outputs.extend(beside.values())
            # Each new or growing nodule's SR group names its prior/current image.
            nodules = [
                replace(n, illustrations=(beside[n.tracking_uid],))
                if n.tracking_uid in beside
                else n
                for n in nodules
            ]
    outputs.append(
        write_measurement_report(
            source,
            nodules,
            segmentation=segmentation,
            algorithm=writer.algorithm,
            series=writer.series("sr"),
            uid_key=writer.uid_key,
            score_concept=CERTAINTY if calibration is not None else SCORE,
            comparison=report_comparison(follow_up) if follow_up is not None else None,
        )
    )
    return outputs


def _text(nodule: NoduleFinding, calibrated: bool) -> str:
    """The GSPS label: what a radiologist with only the presentation state reads."""
    score = f"{100 * nodule.score:.0f} %" if calibrated else f"score {nodule.score:.2f}"
    status = f" {nodule.change.status}" if nodule.change is not None else ""
    return f"{nodule.label} {nodule.long_axis_mm:.0f} mm{status} {score}"


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


def _nodule(
    found: Detection,
    number: int,
    volume: Volume,
    drawn: dict[int, list[np.ndarray]],
    calibration: ScoreCalibration | None,
) -> NoduleFinding:
    from dicomnode.results import NoduleFinding
    from dicomnode.results.outlines import key_outline
    from dicomnode.results.sr import ellipsoid_of

    offset = np.array([s.start for s in found.box_index])
    centre_slice = round(float(volume.lps_to_index(np.array(found.center_lps))[0, 0]))
    key_slice = int(np.clip(centre_slice, 0, volume.shape[0] - 1))
    outline = None
    if drawn:  # the slice of the centre, or the nearest the nodule is on
        key_slice, outline = key_outline(drawn, key_slice)
    return NoduleFinding(
        center_mm=found.center_lps,
        long_axis_mm=round(found.long_axis_mm, 1),
        volume_mm3=round(found.volume_mm3, 1),
        score=round(float(calibration(found.score)) if calibration else found.score, 3),
        key_slice=key_slice,
        segment_number=number,
        label=f"Nodule {number}",
        outline=outline,
        ellipsoid_mm=ellipsoid_of(volume.index_to_lps(np.argwhere(found.mask) + offset)),
    )


def _key_image(
    findings: Sequence[Detection],
    nodules: Sequence[NoduleFinding],
    source: Sequence[Dataset],
    writer: ResultWriter,
) -> Dataset:
    """A Secondary Capture of the top nodule's slice, every nodule on it circled."""
    from dicomnode.results import write_key_image

    key_slice = nodules[0].key_slice
    pixel = float(source[key_slice].PixelSpacing[1])
    marks = [
        circle(mask_centre(found), found.long_axis_mm, pixel)
        for found, nodule in zip(findings, nodules, strict=True)
        if nodule.key_slice == key_slice
    ]
    return write_key_image(
        source[key_slice],
        marks,
        algorithm=writer.algorithm,
        series=writer.series("sc"),
        uid_key=writer.uid_key,
    )
