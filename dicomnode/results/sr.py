"""Comprehensive 3D SR, TID 1500 Measurement Report: findings a viewer can display.

Per finding (:class:`NoduleFinding`):

- a tracking identifier and UID shared by all its groups;
- a TID 1410 planar group with a SCOORD ellipse on the key slice (what OHIF
  draws) and the long-axis diameter;
- a TID 1410 planar group with the 3D centre as a SCOORD3D point;
- a TID 1411 volumetric group referencing the SEG segment, with the volume
  and the detection score.

Measurements use UCUM units; the finding type and site are SNOMED CT codes;
the algorithm (TID 4019) carries the model name, version and the notice.
:func:`write_classification_report` is the variant for per-image grades.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.results.common import MANUFACTURER, AlgorithmInfo, SeriesSpec, result_uid

MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")


@dataclass(frozen=True)
class NoduleFinding:
    """One detected object, in patient coordinates (LPS, mm)."""

    center_mm: tuple[float, float, float]
    long_axis_mm: float
    volume_mm3: float
    score: float  # detection score, 0..1
    key_slice: int  # index into the source images
    segment_number: int | None = None  # its segment in the SEG, if any
    finding_type: Code = codes.SCT.Nodule
    finding_site: Code | None = codes.SCT.Lung


@dataclass(frozen=True)
class ClassificationFinding:
    """A coded result for one image (e.g. a retinopathy grade per eye)."""

    source_index: int  # which source image it is about
    finding: Code  # the coded answer (value of the "Finding" item)
    probabilities: dict[str, float] = field(default_factory=dict)  # class name -> probability
    flags: dict[str, bool] = field(default_factory=dict)  # e.g. {"referable": True}
    finding_site: Code | None = None
    # Optional, for findings about a body part seen in several images (e.g. one eye):
    source_indices: tuple[int, ...] = ()  # further source images the finding is about
    label: str | None = None  # tracking identifier; default "Image <n>"
    finding_type: Code | None = None  # overrides the report's finding type
    finding_site_laterality: Code | None = None  # e.g. codes.SCT.Right
    evaluations: tuple[tuple[Code, Code], ...] = ()  # further coded (concept, value) pairs
    measurements: tuple[tuple[Code, float, Code], ...] = ()  # further (concept, value, unit)
    # Result images (e.g. Grad-CAM overlays) shown as "Illustration of ROI"; they join the evidence.
    illustrations: tuple[Dataset, ...] = ()
    # The concept the answer is given for; default DCM "Finding". Set it when the group
    # has a finding type: highdicom reads the finding type as "Finding" too, and two
    # "Finding" items in one group make the answer unreadable by name.
    answer_concept: Code | None = None


def _observation_context(algorithm: AlgorithmInfo, uid_key: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(uid_key, "device"), name=algorithm.name[:64], manufacturer_name=MANUFACTURER
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _ellipse(image: Dataset, center: tuple[float, float, float], diameter_mm: float) -> np.ndarray:
    """Major and minor axis end points (column, row) of a circle on *image*."""
    origin = np.array([float(v) for v in image.ImagePositionPatient])
    cosines = np.array([float(v) for v in image.ImageOrientationPatient])
    row_dir, col_dir = cosines[:3], cosines[3:]
    spacing_row, spacing_col = (float(v) for v in image.PixelSpacing)
    offset = np.asarray(center) - origin
    col = float(offset @ row_dir) / spacing_col
    row = float(offset @ col_dir) / spacing_row
    rx = max(diameter_mm / 2.0 / spacing_col, 1.0)
    ry = max(diameter_mm / 2.0 / spacing_row, 1.0)
    return np.array(
        [[col - rx, row], [col + rx, row], [col, row - ry], [col, row + ry]], dtype=float
    )


def _finding_groups(
    finding: NoduleFinding,
    index: int,
    source_images: Sequence[Dataset],
    segmentation: Dataset | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid_key: str,
) -> list[
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
]:
    tracking = hd.sr.TrackingIdentifier(
        uid=result_uid(uid_key, f"finding-{index}"), identifier=f"Finding {index}"
    )
    image = source_images[finding.key_slice]
    sites = (
        [hd.sr.FindingSite(anatomic_location=finding.finding_site)]
        if finding.finding_site
        else None
    )
    common: dict[str, Any] = {
        "tracking_identifier": tracking,
        "finding_type": finding.finding_type,
        "algorithm_id": algorithm,
        "finding_sites": sites,
    }
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
            graphic_data=_ellipse(image, finding.center_mm, finding.long_axis_mm),
            source_image=hd.sr.SourceImageForRegion.from_source_image(image),
        ),
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis, value=round(finding.long_axis_mm, 2), unit=MM
            )
        ],
        **common,
    )
    centre = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.array([finding.center_mm], dtype=float),
            frame_of_reference_uid=image.FrameOfReferenceUID,
        ),
        **common,
    )
    volumetric_measurements = [
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(finding.volume_mm3, 1), unit=MM3),
        hd.sr.Measurement(
            name=codes.DCM.CertaintyOfFinding, value=round(100.0 * finding.score, 1), unit=PERCENT
        ),
    ]
    if segmentation is not None and finding.segment_number is not None:
        volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=finding.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(image.SeriesInstanceUID),
            ),
            measurements=volumetric_measurements,
            **common,
        )
    else:
        volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_regions=[
                hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.ELLIPSE,
                    graphic_data=_ellipse(image, finding.center_mm, finding.long_axis_mm),
                    source_image=hd.sr.SourceImageForRegion.from_source_image(image),
                )
            ],
            measurements=volumetric_measurements,
            **common,
        )
    return [planar, centre, volumetric]


def _absent_group(
    empty_finding: Code,
    image: Dataset,
    identification: hd.sr.AlgorithmIdentification,
    uid_key: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """ "Nothing found" is a result: a coded group saying so (e.g. "Nodule: Absent"), not silence."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(uid_key, "finding-none"), identifier="No findings"
        ),
        algorithm_id=identification,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=empty_finding, value=codes.SCT.Absent)
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
    )


def _evidence(
    source_images: Sequence[Dataset], key_slices: Sequence[int], segmentation: Dataset | None
) -> list[Dataset]:
    """The key slices (the first slice when there are none) and the SEG, if any."""
    evidence = [source_images[i] for i in sorted(set(key_slices)) or [0]]
    if segmentation is not None:
        evidence.append(segmentation)
    return evidence


def _report(
    source_images: Sequence[Dataset],
    groups: Sequence[object],
    *,
    procedure: Code,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    evidence: Sequence[Dataset],
) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, uid_key),
        procedure_reported=procedure,
        imaging_measurements=list(groups),  # type: ignore[arg-type]
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=result_uid(uid_key, "sr-series"),
        series_number=series.number,
        sop_instance_uid=result_uid(uid_key, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = series.described(algorithm.notice)
    return sr


def _segment_report(
    source_images: Sequence[Dataset],
    groups: list[object],
    key_slices: Sequence[int],
    *,
    segmentation: Dataset | None,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    procedure: Code,
    empty_finding: Code,
) -> hd.sr.Comprehensive3DSR:
    """The tail of the measurement and volume reports: "nothing found", the evidence, the SR.

    No group is an explicit ``empty_finding: Absent`` group; the evidence is the
    key slices (the first slice without any) and the SEG.
    """
    if not groups:
        identification = algorithm.sr_identification()
        groups = [_absent_group(empty_finding, source_images[0], identification, uid_key)]
    return _report(
        source_images,
        groups,
        procedure=procedure,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        evidence=_evidence(source_images, key_slices, segmentation),
    )


def write_measurement_report(
    source_images: Sequence[Dataset],
    findings: Sequence[NoduleFinding],
    *,
    segmentation: Dataset | None,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    procedure: Code = codes.LN.CTUnspecifiedBodyRegion,
    empty_finding: Code = codes.SCT.Nodule,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of *findings*; no finding is a valid, explicit empty report.

    With no findings the report holds one group stating ``empty_finding: Absent``.

    The evidence is the key slices (and the SEG), so the SR stays small for a
    300-slice series while every referenced instance is listed.
    """
    identification = algorithm.sr_identification()
    groups: list[object] = []
    for index, finding in enumerate(findings, start=1):
        groups.extend(
            _finding_groups(finding, index, source_images, segmentation, identification, uid_key)
        )
    return _segment_report(
        source_images,
        groups,
        [f.key_slice for f in findings],
        segmentation=segmentation,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        procedure=procedure,
        empty_finding=empty_finding,
    )


def _classification_group(
    result: ClassificationFinding,
    index: int,
    source_images: Sequence[Dataset],
    *,
    identification: hd.sr.AlgorithmIdentification,
    finding_type: Code,
    uid_key: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One TID 1501 group: the coded answer, probabilities, flags and illustrations."""
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=result.answer_concept or codes.DCM.Finding, value=result.finding
        )
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(name=name, value=value) for name, value in result.evaluations
    ]
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"P{n}", "99DICOMNODE", f"Probability of {name}"[:64]),
            value=round(100.0 * p, 2),
            unit=PERCENT,
        )
        for n, (name, p) in enumerate(result.probabilities.items())
    ]
    measurements += [
        hd.sr.Measurement(name=name, value=round(value, 4), unit=unit)
        for name, value, unit in result.measurements
    ]
    for flag, value in result.flags.items():
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=hd.sr.CodedConcept(flag[:16].upper(), "99DICOMNODE", flag[:64]),
                value=codes.SCT.Yes if value else codes.SCT.No,
            )
        )
    indices = [result.source_index, *(i for i in result.source_indices if i != result.source_index)]
    site = (
        [hd.sr.FindingSite(result.finding_site, laterality=result.finding_site_laterality)]
        if result.finding_site
        else None
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(uid_key, f"finding-{index}"),
            identifier=result.label or f"Image {index}",
        ),
        finding_type=result.finding_type or finding_type,
        algorithm_id=identification,
        finding_sites=site,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(source_images[i])
            for i in indices
        ],
    )
    for picture in result.illustrations:
        # TID 1410 names a picture of the finding "Illustration of ROI" (DCM 121200).
        group[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=codes.DCM.IllustrationOfROI,
                referenced_sop_class_uid=picture.SOPClassUID,
                referenced_sop_instance_uid=picture.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def write_classification_report(
    source_images: Sequence[Dataset],
    findings: Sequence[ClassificationFinding],
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    procedure: Code,
    finding_type: Code,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report with one coded finding per group: the answer, probabilities, flags.

    A finding may cover several source images (``source_indices``), carry further
    coded evaluations and measurements, and reference result images (``illustrations``,
    e.g. heat maps), which then join the report's evidence.
    """
    identification = algorithm.sr_identification()
    groups = [
        _classification_group(
            result,
            index,
            source_images,
            identification=identification,
            finding_type=finding_type,
            uid_key=uid_key,
        )
        for index, result in enumerate(findings, start=1)
    ]
    illustrations = {p.SOPInstanceUID: p for f in findings for p in f.illustrations}
    return _report(
        source_images,
        groups,
        procedure=procedure,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        evidence=[*source_images, *illustrations.values()],
    )


# -- volumetric findings: one group per SEG segment ----------------------------------------

ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")


@dataclass(frozen=True)
class SegmentVolumeFinding:
    """The volume of one segmented region (e.g. a tumour sub-region), in mL.

    With a ``segment_number`` it becomes a TID 1411 volumetric group that
    references that SEG segment; without one (a composite such as the whole
    tumour, the union of several segments) a TID 1501 group on the key slice.
    """

    label: str  # tracking identifier, e.g. "Enhancing tumour"
    finding_type: Code
    volume_ml: float
    segment_number: int | None = None
    key_slice: int = 0  # index into the source images (composite groups)
    finding_site: Code | None = None


def _volume_group(
    finding: SegmentVolumeFinding,
    source_images: Sequence[Dataset],
    segmentation: Dataset | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid_key: str,
) -> (
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    # Segment findings share the SEG segment's tracking UID (seg.py's default), so viewers link them.
    role = (
        f"finding-{finding.segment_number}"
        if finding.segment_number is not None
        else f"finding-{finding.label}"
    )
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=result_uid(uid_key, role), identifier=finding.label[:64]
        ),
        "finding_type": finding.finding_type,
        "algorithm_id": algorithm,
        "finding_sites": [hd.sr.FindingSite(anatomic_location=finding.finding_site)]
        if finding.finding_site
        else None,
        "measurements": [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(finding.volume_ml, 3), unit=ML)
        ],
    }
    image = source_images[finding.key_slice]
    if segmentation is not None and finding.segment_number is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=finding.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(image.SeriesInstanceUID),
            ),
            **common,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
        **common,
    )


def write_volume_report(
    source_images: Sequence[Dataset],
    findings: Sequence[SegmentVolumeFinding],
    *,
    segmentation: Dataset | None,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    procedure: Code = codes.LN.MRIHeadReport,
    empty_finding: Code = codes.SCT.Neoplasm,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report with the volume (mL) of each segment and of composites.

    Segment findings become TID 1411 volumetric groups referencing their SEG
    segment; composites (no segment number) TID 1501 groups. No finding is an
    explicit ``empty_finding: Absent`` report. The evidence is the key slices
    and the SEG.
    """
    identification = algorithm.sr_identification()
    groups: list[object] = [
        _volume_group(f, source_images, segmentation, identification, uid_key) for f in findings
    ]
    return _segment_report(
        source_images,
        groups,
        [f.key_slice for f in findings],
        segmentation=segmentation,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        procedure=procedure,
        empty_finding=empty_finding,
    )
