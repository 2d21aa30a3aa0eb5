"""Reading dicomnode's TID 1500 reports back with highdicom, as a consumer of them would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from dicomnode.results.codes import CERTAINTY, SCORE


def _segment_of(measurement: Any) -> tuple[str, int] | None:
    """(SEG SOP Instance UID, segment number) a measurement is INFERRED FROM, if any."""
    for image in measurement.referenced_images or []:
        number = image.ReferencedSOPSequence[0].get("ReferencedSegmentNumber")
        if number is not None:
            return str(image.referenced_sop_instance_uid), int(number)
    return None


def nodule_findings(path: Path) -> list[dict[str, Any]]:
    """Per finding (Tracking UID) of a nodule report, in report order.

    Keys: ``label`` (tracking identifier), ``point`` (the key-slice point: its
    image's SOP Instance UID and (column, row)), ``long_axis`` (mm), ``volume``
    (mm3), ``segment`` (number of the SEG segment the volume is measured on),
    ``seg`` (that SEG's SOP Instance UID), ``score`` (0..1, under "Certainty of
    Finding" or "Score"), ``outlines`` (number of outlines), ``center`` (LPS mm: the
    centre of the 3D ellipsoid).
    """
    content = hd.sr.srread(path).content
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_planar_roi_measurement_groups():
        item = found.setdefault(str(group.tracking_uid), {"label": group.tracking_identifier})
        roi = group.roi
        if roi is not None and roi.graphic_type == hd.sr.GraphicTypeValues.POINT:
            image = roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            item["point"] = (str(image), tuple(float(v) for v in np.asarray(roi.value)[0]))
        long_axis = group.get_measurements(name=codes.SCT.LongAxis)
        if long_axis:
            item["long_axis"] = long_axis[0].value
    for group in content.get_volumetric_roi_measurement_groups():
        item = found[str(group.tracking_uid)]
        if isinstance(group.roi, hd.sr.VolumeSurface):
            ends = np.asarray(group.roi[0].value, dtype=float)
            item["center"] = ends.mean(axis=0)
            continue
        item["outlines"] = len(group.roi)
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        item["volume"] = volume.value
        segment = _segment_of(volume)
        if segment is not None:
            item["seg"], item["segment"] = segment
        scores = group.get_measurements(name=CERTAINTY) or group.get_measurements(name=SCORE)
        if scores:
            item["score"] = scores[0].value / 100
            item["score_concept"] = scores[0].name
    return list(found.values())


def region_volumes(path: Path) -> dict[str, dict[str, Any]]:
    """Tracking identifier -> ``volume`` (mL), ``segment``, ``outlines`` of a volume report."""
    content = hd.sr.srread(path).content
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_volumetric_roi_measurement_groups():
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        segment = _segment_of(volume)
        found[str(group.tracking_identifier)] = {
            "volume": volume.value,
            "unit": volume.unit.value,
            "segment": segment[1] if segment else None,
            "seg": segment[0] if segment else None,
            "outlines": len(group.roi),
            "tracking_uid": str(group.tracking_uid),
        }
    return found


def absent(path: Path, finding: Any) -> bool:
    """Whether the report's only group says "*finding*: Absent"."""
    content = hd.sr.srread(path).content
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
        *content.get_image_measurement_groups(),
    ]
    if len(groups) != 1:
        return False
    evaluations = groups[0].get_qualitative_evaluations(name=finding)
    return bool(evaluations) and evaluations[0].value == codes.SCT.Absent
