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


def _image_of(roi: Any) -> str:
    """SOP Instance UID of the image a 2D region is on."""
    return str(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _volume_item(group: Any, item: dict[str, Any]) -> None:
    """Volume, its SEG segment and the certainty or score of a group, into *item*."""
    volumes = group.get_measurements(name=codes.SCT.Volume)
    if volumes:
        item["volume"] = volumes[0].value
        item["unit"] = volumes[0].unit.value
        segment = _segment_of(volumes[0])
        item["seg"], item["segment"] = segment if segment else (None, None)
    scores = group.get_measurements(name=CERTAINTY) or group.get_measurements(name=SCORE)
    if scores:
        item["score"] = scores[0].value / 100
        item["score_concept"] = scores[0].name


def nodule_findings(path: Path) -> list[dict[str, Any]]:
    """Per finding (Tracking UID) of a nodule report, in report order.

    Keys: ``label`` (tracking identifier), ``point`` (the key-slice centre: its
    image's SOP Instance UID and (column, row)), ``long_axis`` (mm), ``outline``
    (the key-slice outline: image UID and points), ``volume`` (mm3), ``segment``
    (number of the SEG segment the volume is measured on), ``seg`` (that SEG's
    SOP Instance UID), ``score`` (0..1) and ``score_concept`` ("Certainty of
    Finding" or "Score"), ``center`` (LPS mm: the centre of the 3D ellipsoid).
    """
    content = hd.sr.srread(path).content
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_planar_roi_measurement_groups():
        item = found.setdefault(str(group.tracking_uid), {"label": group.tracking_identifier})
        roi = group.roi
        if roi.graphic_type == hd.sr.GraphicTypeValues.POINT:
            item["point"] = (_image_of(roi), tuple(float(v) for v in np.asarray(roi.value)[0]))
        elif roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE:
            item["outline"] = (_image_of(roi), np.asarray(roi.value, dtype=float))
        long_axis = group.get_measurements(name=codes.SCT.LongAxis)
        if long_axis:
            item["long_axis"] = long_axis[0].value
        _volume_item(group, item)
    for group in content.get_volumetric_roi_measurement_groups():
        if isinstance(group.roi, hd.sr.VolumeSurface):
            ends = np.asarray(group.roi[0].value, dtype=float)
            found[str(group.tracking_uid)]["center"] = ends.mean(axis=0)
    return list(found.values())


def region_volumes(path: Path) -> dict[str, dict[str, Any]]:
    """Tracking identifier -> ``volume``, ``unit``, ``segment``, ``seg``, ``outline``,
    ``tracking_uid`` of a volume report (the group of each region's key-slice outline)."""
    content = hd.sr.srread(path).content
    found: dict[str, dict[str, Any]] = {}
    for group in content.get_planar_roi_measurement_groups():
        if group.roi.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
            continue
        item = {
            "outline": (_image_of(group.roi), np.asarray(group.roi.value, dtype=float)),
            "tracking_uid": str(group.tracking_uid),
        }
        _volume_item(group, item)
        found[str(group.tracking_identifier)] = item
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


def assessment(sr: Any, category_concept: Any) -> dict[str, Any]:
    """A follow-up report's Qualitative Evaluations and prior evidence, as a TID 1500 reader sees them.

    ``category``: the code value given for *category_concept* (Lung-RADS,
    RANO; None: none); ``text``: the comparison or baseline sentence;
    ``other_studies``: the studies of the Pertinent Other Evidence (the prior).
    """
    category = text = None
    for item in sr.content[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "C0034375":  # Qualitative Evaluations
            continue
        for child in item.ContentSequence:
            if child.ConceptNameCodeSequence[0].CodeValue == category_concept.value:
                category = str(child.ConceptCodeSequence[0].CodeValue)
            elif child.ValueType == "TEXT":
                text = str(child.TextValue)
    other = {str(s.StudyInstanceUID) for s in sr.get("PertinentOtherEvidenceSequence", [])}
    return {"category": category, "text": text or "", "other_studies": other}
