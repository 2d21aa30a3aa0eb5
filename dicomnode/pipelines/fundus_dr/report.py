"""The fundus results: a Grad-CAM heat map per photograph (Secondary Capture) and one SR.

The SR is a Comprehensive 3D SR (TID 1500) with a group per photograph and a
group per eye, each drawn as the graded area of its photograph (the square
the network saw) : the grade (SNOMED CT, see :func:`grade_codes`) as the
answer to LOINC's per-eye severity question, its certainty (the calibrated
probability of that grade), the five probabilities, the predictive entropy,
referable DR (moderate or worse) and the review flag, and the heat maps as
"Illustration of ROI". No presentation state: the photographs are colour
images, and GSPS is for greyscale ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.pipelines.fundus_dr.findings import GradedPhotograph, GradingRules, worst_of
from dicomnode.pipelines.fundus_dr.inference import GRADE_NAMES

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.model import ResultWriter
    from dicomnode.results import ClassificationFinding


def _jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map of values in 0..1 (uint8 RGB), without matplotlib."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return np.asarray(rgb * 255.0, dtype=np.uint8)


def heat_map_overlay(
    rgb: np.ndarray, cam: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.45
) -> np.ndarray:
    """The photograph with the Grad-CAM map of its crop blended in (uint8 RGB)."""
    from PIL import Image

    top, left, side, _ = box
    up = Image.fromarray(np.asarray(cam * 255.0, dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    full = np.zeros(rgb.shape[:2], dtype=np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, rgb.shape[0]), min(left + side, rgb.shape[1])
    full[sy0:sy1, sx0:sx1] = np.asarray(up, dtype=np.float32)[
        sy0 - top : sy1 - top, sx0 - left : sx1 - left
    ]
    full /= 255.0
    weight = alpha * full[..., None]  # cold areas stay the photograph
    blended = rgb.astype(np.float32) * (1.0 - weight) + _jet(full).astype(np.float32) * weight
    return np.asarray(np.clip(blended, 0, 255), dtype=np.uint8)


# SNOMED CT disorders for ICDR grades 1-4: "Mild / Moderate / Severe nonproliferative
# retinopathy co-occurrent and due to diabetes mellitus" 312903003 / 312904009 / 312905005 and
# "Proliferative retinopathy co-occurrent and due to diabetes mellitus" 59276001; the parent
# "Retinopathy co-occurrent and due to diabetes mellitus" 4855003 is the finding type. Checked
# against the VSAC diabetes value set expansion (SNOMED CT US edition) and the eCQM value set
# "Level of Severity of Retinopathy Findings". SNOMED CT has no international concept for
# "no diabetic retinopathy": grade 0 is "Diabetic retinopathy: Absent" (272519000, DICOM CID
# 240, as pydicom's codedict has it), the pattern the measurement report uses for "Nodule: Absent".
# The question is LOINC 71491-5 / 71490-7 "Right / Left eye Diabetic retinopathy severity level
# by Ophthalmoscopy" (loinc.org; its own answer list LL2117-1 is the same five ICDR levels), or
# a private concept when the photograph has no laterality.


def grade_codes() -> dict[str, Any]:
    """The coded concepts of the report (see the comment above for their sources)."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from dicomnode.results.codes import private

    return {
        "finding_type": Code("4855003", "SCT", "Diabetic retinopathy"),
        "grades": (
            codes.SCT.Absent,
            Code("312903003", "SCT", "Mild nonproliferative diabetic retinopathy"),
            Code("312904009", "SCT", "Moderate nonproliferative diabetic retinopathy"),
            Code("312905005", "SCT", "Severe nonproliferative diabetic retinopathy"),
            Code("59276001", "SCT", "Proliferative diabetic retinopathy"),
        ),
        "question": {
            "R": Code("71491-5", "LN", "Right eye Diabetic retinopathy severity level"),
            "L": Code("71490-7", "LN", "Left eye Diabetic retinopathy severity level"),
            "": private("ICDR_GRADE", "Diabetic retinopathy severity level"),
        },
        "laterality": {"R": codes.SCT.Right, "L": codes.SCT.Left},
        # Private: no standard concept says "referable" or "needs review" for a model's output.
        "referable": private("REFERABLE_DR", "Referable diabetic retinopathy"),
        "review": private("NEEDS_REVIEW", "Needs human review"),
        "entropy": private("ENTROPY", "Predictive entropy"),
        "entropy_unit": codes.UCUM.NoUnits,  # entropy in nats is a pure number
        "procedure": codes.DCM.OphthalmicPhotography,
    }


def graded_area(item: GradedPhotograph) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the square the network saw, within the photograph."""
    top, left, side, _ = item.prepared.box
    rows, columns = item.photograph.rgb.shape[:2]
    return (
        float(max(left, 0)),
        float(max(top, 0)),
        float(min(left + side, columns)),
        float(min(top + side, rows)),
    )


def write_heat_maps(
    graded: Sequence[GradedPhotograph], writer: ResultWriter
) -> list[Dataset | None]:
    """One RGB Secondary Capture per photograph with a Grad-CAM map (None where there is none)."""
    from dicomnode.results import write_overlay_image

    overlays: list[Dataset | None] = []
    for number, item in enumerate(graded, start=1):
        if item.cam is None:
            overlays.append(None)
            continue
        grade = item.grade
        overlays.append(
            write_overlay_image(
                item.photograph.dataset,
                heat_map_overlay(
                    # Only the field of view: the camera's black surround stays black.
                    item.photograph.rgb,
                    item.cam * item.prepared.mask,
                    item.prepared.box,
                ),
                algorithm=writer.algorithm,
                series=writer.series("sc"),
                uid_key=writer.uid_key,
                instance_number=number,
                comments=(
                    f"Grad-CAM of grade {grade} ({GRADE_NAMES[grade]}); "
                    f"{writer.algorithm.name} {writer.algorithm.version}: {writer.algorithm.notice}"
                ),
            )
        )
    return overlays


def write_report(
    graded: Sequence[GradedPhotograph],
    overlays: Sequence[Dataset | None],
    writer: ResultWriter,
    rules: GradingRules,
    *,
    calibrated: bool,
) -> Dataset:
    """The SR: a group per photograph, then one per eye (graded as its worst photograph).

    Calibrated probabilities are stated as probabilities, the answer's as its
    "Certainty of Finding"; uncalibrated ones as scores, without a certainty.
    """
    from dicomnode.results import write_classification_report

    c = grade_codes()

    def finding(members: list[int], label: str, eye: str | None = None) -> ClassificationFinding:
        return _finding(graded, overlays, members, label, eye, rules, c, calibrated)

    findings = [finding([n], f"Image {n + 1}") for n in range(len(graded))]
    for eye, label in (("R", "Right eye"), ("L", "Left eye")):
        members = [n for n, g in enumerate(graded) if g.photograph.laterality == eye]
        if members:
            findings.append(finding(members, label, eye))
    return write_classification_report(
        [g.photograph.dataset for g in graded],
        findings,
        algorithm=writer.algorithm,
        series=writer.series("sr"),
        uid_key=writer.uid_key,
        procedure=c["procedure"],
        finding_type=c["finding_type"],
    )


def _finding(
    graded: Sequence[GradedPhotograph],
    overlays: Sequence[Dataset | None],
    members: list[int],
    label: str,
    eye: str | None,
    rules: GradingRules,
    c: dict[str, Any],
    calibrated: bool,
) -> ClassificationFinding:
    """One group: a photograph, or an eye (graded as its worst photograph)."""
    from pydicom.sr.codedict import codes

    from dicomnode.results import ClassificationFinding

    worst = worst_of(graded, members)
    item = graded[worst]
    grade = item.grade
    review = any(rules.needs_review(graded[n]) for n in members)
    laterality = eye or item.photograph.laterality
    evaluations = [
        (c["referable"], codes.SCT.Yes if rules.referable(grade) else codes.SCT.No),
        (c["review"], codes.SCT.Yes if review else codes.SCT.No),
    ]
    return ClassificationFinding(
        source_index=worst,
        source_indices=tuple(members),
        finding=c["grades"][grade],
        answer_concept=c["question"][laterality],
        certainty=float(item.probabilities[grade]) if calibrated else None,
        calibrated=calibrated,
        region=graded_area(item),
        probabilities={
            name: float(p) for name, p in zip(GRADE_NAMES, item.probabilities, strict=True)
        },
        finding_site=codes.SCT.Eye if laterality else codes.SCT.Retina,
        finding_site_laterality=c["laterality"].get(laterality),
        label=label,
        evaluations=tuple(evaluations),
        measurements=((c["entropy"], item.entropy, c["entropy_unit"]),),
        illustrations=tuple(o for n in members if (o := overlays[n]) is not None),
    )
