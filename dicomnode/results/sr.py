"""Comprehensive 3D SR, TID 1500 Measurement Report: findings every viewer can draw.

Every measurement group carries image coordinates (a SCOORD or SCOORD3D
region), because viewers draw, and list, a finding by its coordinates: OHIF
merges the groups of one Tracking UID and draws the first region among them,
and stops on a finding that has none; the Cornerstone3D adapters skip (with
an error) a group without one. ``docs/viewers.md`` has the details.

Per finding, all groups share one tracking identifier (the same text as the
finding's SEG segment label) and one Tracking UID (the segment's):

- nodules (:func:`write_measurement_report`): the centre as a point on the
  key slice (TID 1410; first, so that it is what OHIF draws, on that slice,
  and can load as a measurement), an ellipse on the key slice with the long
  axis (TID 1410), the nodule's outline on the key slice (TID 1410) with its
  volume, measured on the SEG segment it references, and the detector's
  certainty, and the nodule in 3D as a SCOORD3D ellipsoid (TID 1411) with
  the nodule's centroid and second moments;
- segmented regions (:func:`write_volume_report`): the outline on the key
  slice (TID 1410, what OHIF draws) with the volume (mL) of its SEG segment,
  then its centre as a point (TID 1410);
- graded images (:func:`write_classification_report`): the graded area of the
  image as an ellipse (TID 1410; the round field of view of a photograph)
  with the coded answer, its certainty, probabilities, flags and the heat
  maps as "Illustration of ROI".

A follow-up report (``comparison=``, ``docs/followup.md``) adds to each
nodule the current TID 1502 time point and its change since the prior
(status, volume change, volume doubling time), a group of the prior's
measurements at the prior time point under the same Tracking Identifier
and UID, groups of resolved nodules, TID 1500's Qualitative Evaluations
(the Lung-RADS suggestion, the comparison or baseline sentence) and the
prior's images as Pertinent Other Evidence.

"Nothing found" is a group too: the evaluation "<finding>: Absent", drawn as
the whole middle image (TID 1410), with every source image in the evidence.

A finding's outlines on its other slices are in the SEG (voxel by voxel) and
the GSPS, not in the SR: there each slice drawn on would cost an Image Library
entry (about 20 ms each in highdicom) for what the SEG already says.

Each report has an Image Library (TID 1600) of the source images its groups
reference; measurements use UCUM units; finding types and sites are SNOMED CT
codes; the algorithm (TID 4019) carries the model name, version and the
notice; private concepts are declared (:mod:`dicomnode.results.codes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.results.codes import (
    CERTAINTY,
    CHANGE_CODES,
    DESCRIPTION_OF_CHANGE,
    INTERVAL,
    LUNG_RADS,
    QUALITATIVE_EVALUATIONS,
    RANO_RESPONSE,
    VOLUME_CHANGE,
    VOLUME_CHANGE_ML,
    VOLUME_DOUBLING_TIME,
    declare_private_schemes,
    lung_rads_category,
    private,
    rano_category,
)
from dicomnode.results.common import (
    MANUFACTURER,
    AlgorithmInfo,
    SeriesSpec,
    finding_uid,
    result_uid,
)
from dicomnode.results.frames import frame_number, instances
from dicomnode.results.outlines import bounding_rectangle

MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
MM3 = hd.sr.CodedConcept("mm3", "UCUM", "cubic millimeter")
ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
DAY = hd.sr.CodedConcept("d", "UCUM", "day")

Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class NoduleFinding:
    """One detected object, in patient coordinates (LPS, mm)."""

    center_mm: tuple[float, float, float]
    long_axis_mm: float
    volume_mm3: float
    score: float  # detection score or calibrated probability, 0..1 (see ``score_concept``)
    key_slice: int  # index into the source images
    segment_number: int | None = None  # its segment in the SEG, if any
    finding_type: Code = codes.SCT.Nodule
    finding_site: Code | None = codes.SCT.Lung
    label: str | None = None  # tracking identifier; default "<finding type> <n>"
    # (n, 2) closed (column, row) outline on the key slice; default: the key-slice ellipse.
    outline: np.ndarray | None = None
    # (6, 3) end points (LPS, mm) of the ellipsoid's three axes, as SCOORD3D ELLIPSOID
    # wants them; default: the sphere of the long axis around the centre.
    ellipsoid_mm: np.ndarray | None = None
    # The Tracking UID carried from the prior's report (default: this report's own).
    tracking_uid: str | None = None
    # Its change since the prior (follow-up reports only).
    change: NoduleChange | None = None
    # Result images of it (e.g. prior and current side by side), as "Illustration of ROI".
    illustrations: tuple[Dataset, ...] = ()


@dataclass(frozen=True)
class PriorMeasurement:
    """A finding as the prior study measured it, in the prior's own LPS (mm)."""

    center_mm: tuple[float, float, float]
    volume_mm3: float
    long_axis_mm: float | None = None


@dataclass(frozen=True)
class NoduleChange:
    """How one tracked finding changed since the prior (``docs/followup.md``).

    ``status`` is ``new``, ``growing``, ``stable``, ``shrinking`` or
    ``resolved``; ``prior`` its measurements there (None: new).
    """

    status: str
    prior: PriorMeasurement | None = None
    volume_change_percent: float | None = None
    vdt_days: float | None = None


@dataclass(frozen=True)
class ResolvedFinding:
    """A prior finding with no current counterpart: reported at the prior time point."""

    label: str
    tracking_uid: str
    prior: PriorMeasurement
    # What it was (default: the report's "nothing found" finding type, e.g. a nodule).
    finding_type: Code | None = None
    finding_site: Code | None = None


@dataclass(frozen=True)
class Comparison:
    """The report's comparison with a prior study, or why it is a baseline.

    Attributes
    ----------
    text
        The sentence the report states: the prior compared with, or why there
        is none (no prior, the source unreachable, a poor registration).
    prior_images
        Headers of the prior's images the prior measurements come from (empty:
        a baseline); their study is cited in the evidence (Pertinent Other
        Evidence) and their Frame of Reference is the prior measurements'.
    current_date, prior_date, interval_days
        The two Study Dates and the days between them (the time points).
    category, category_rule
        The exam's category suggestion and the rule that gave it; None when
        none is suggested. On the ``scale`` ``"lung-rads"``: a Lung-RADS v2022
        category (``"2"``, ``"4A"``, ...); ``"rano"``: a volumetric RANO 2.0
        response (``"CR"``, ``"PR"``, ``"SD"``, ``"PD"``).
    resolved
        Prior findings not seen any more.
    """

    text: str
    prior_images: tuple[Dataset, ...] = ()
    current_date: date | None = None
    prior_date: date | None = None
    interval_days: float | None = None
    category: str | None = None
    category_rule: str = ""
    resolved: tuple[ResolvedFinding, ...] = ()
    scale: str = "lung-rads"

    @property
    def compared(self) -> bool:
        """Whether there is a prior (False: a baseline report)."""
        return bool(self.prior_images)


def ellipsoid_of(points_mm: np.ndarray) -> np.ndarray:
    """The axis end points of the ellipsoid with the centroid and second moments of *points_mm*.

    A solid ellipsoid of semi-axis a has variance a**2 / 5 along that axis, so the
    semi-axes are sqrt(5 * eigenvalue) of the points' covariance (at least half a
    millimetre, for masks of one voxel). Returns ``(6, 3)``: major, middle, minor axis
    end points in turn.
    """
    points = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    centre = points.mean(axis=0)
    covariance = np.cov(points.T) if len(points) > 1 else np.zeros((3, 3))
    values, vectors = np.linalg.eigh(np.atleast_2d(covariance))
    order = np.argsort(values)[::-1]
    ends = []
    for k in order:
        semi = max(float(np.sqrt(5.0 * max(values[k], 0.0))), 0.5)
        ends += [centre - semi * vectors[:, k], centre + semi * vectors[:, k]]
    return np.array(ends)


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
    # The probability of the answer (0..1), as DCM "Certainty of Finding".
    certainty: float | None = None
    # False: the class values are a model's scores, not calibrated probabilities, and are
    # stated as "Score of <class>".
    calibrated: bool = True
    # The box of the graded area of the source image, (left, top, right, bottom) in image
    # coordinates (0, 0: the top left corner of the top left pixel); default: all of it.
    # The SR draws the ellipse inscribed in it.
    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class SegmentVolumeFinding:
    """The volume of one segmented region (e.g. a tumour sub-region), in mL.

    With a ``segment_number`` its volume references that SEG segment; without
    one it is a composite (e.g. the whole tumour, the union of several segments).
    """

    label: str  # tracking identifier, e.g. "Enhancing tumour"
    finding_type: Code
    volume_ml: float
    segment_number: int | None = None
    key_slice: int = 0  # index into the source images: the slice it is drawn on
    finding_site: Code | None = None
    outline: np.ndarray | None = None  # (n, 2) closed (column, row) outline on the key slice
    center_mm: tuple[float, float, float] | None = None  # its centre, a point group
    # The Tracking UID carried from the prior's report (default: this report's own).
    tracking_uid: str | None = None
    # Its change since the prior (follow-up reports only).
    change: VolumeChange | None = None


@dataclass(frozen=True)
class VolumeChange:
    """How a segmented region's volume changed since the prior (mL, %).

    ``prior`` is its measurement there (None: absent from the prior, a new
    region; the change is then its whole volume and no percentage).
    """

    change_ml: float
    change_percent: float | None = None
    prior: PriorMeasurement | None = None


# -- shared parts ------------------------------------------------------------------------------


def _observation_context(algorithm: AlgorithmInfo, uid_key: str) -> hd.sr.ObservationContext:
    # TID 1004: the model is the observer (IHE AIR wants it identified by name and version).
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(uid_key, "device"),
        name=algorithm.name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=f"{algorithm.name} {algorithm.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _source_for_region(image: Dataset) -> hd.sr.SourceImageForRegion:
    """The image a region is drawn on; a frame of a multi-frame image by its frame number."""
    number = frame_number(image)
    if number is None:
        return hd.sr.SourceImageForRegion.from_source_image(image)
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        referenced_frame_numbers=[number],
    )


def _region(image: Dataset, graphic_type: str, points: np.ndarray) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues(graphic_type),
        graphic_data=np.asarray(points, dtype=float),
        source_image=_source_for_region(image),
    )


def _whole_image(image: Dataset) -> np.ndarray:
    return bounding_rectangle(0.0, 0.0, float(image.Columns), float(image.Rows))


def _significant(value: float, digits: int = 4) -> float:
    """*value* to *digits* significant digits: a small probability stays non-zero."""
    return float(f"{value:.{digits}g}")


def _inscribed_ellipse(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """Axis end points (column, row) of the ellipse inscribed in a box: a circle in a square."""
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    return np.array([[left, cy], [right, cy], [cx, top], [cx, bottom]], dtype=float)


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


def _volume(
    value: float,
    unit: hd.sr.CodedConcept,
    segmentation: Dataset | None,
    segment_number: int | None,
) -> hd.sr.Measurement:
    """The volume, INFERRED FROM its SEG segment (Referenced Segment Number) when there is one."""
    references = None
    if segmentation is not None and segment_number is not None:
        references = [
            hd.sr.SourceImageForMeasurement(segmentation.SOPClassUID, segmentation.SOPInstanceUID)
        ]
    measurement = hd.sr.Measurement(
        name=codes.SCT.Volume, value=value, unit=unit, referenced_images=references
    )
    if references:
        for item in measurement[0].ContentSequence:
            if item.ValueType == "IMAGE":
                item.ReferencedSOPSequence[0].ReferencedSegmentNumber = segment_number
    return measurement


def _sites(site: Code | None, laterality: Code | None = None) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(anatomic_location=site, laterality=laterality)] if site else None


def _tracking(uid: str, label: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=uid, identifier=label[:64])


def _absent_group(
    empty_finding: Code,
    source_images: Sequence[Dataset],
    identification: hd.sr.AlgorithmIdentification,
    uid_key: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """ "Nothing found" is a result: "<finding>: Absent", drawn as the whole middle image.

    A viewer shows a finding by its region; the statement is about every source
    image, which are all in the report's evidence (:func:`_segment_report`).
    """
    middle = source_images[len(source_images) // 2]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(
            finding_uid(uid_key, "none"), f"No {empty_finding.meaning.lower()}"
        ),
        referenced_region=_region(middle, "POLYLINE", _whole_image(middle)),
        algorithm_id=identification,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=empty_finding, value=codes.SCT.Absent)
        ],
    )


def _image_key(image: Dataset) -> tuple[str, int | None]:
    return str(image.SOPInstanceUID), frame_number(image)


def _referenced_sources(groups: Sequence[Any], source_images: Sequence[Dataset]) -> list[int]:
    """Indices of the source images (frames) the groups' regions and measurements reference."""
    wanted: set[tuple[str, int | None]] = set()

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            for reference in item.get("ReferencedSOPSequence", []):
                uid = str(reference.ReferencedSOPInstanceUID)
                frames = reference.get("ReferencedFrameNumber")
                if frames is None:
                    wanted.add((uid, None))
                else:
                    wanted.update((uid, int(n)) for n in np.ravel([frames]))
            walk(item.get("ContentSequence", []))

    walk([item for group in groups for item in group])  # a group is a list of content items
    return [i for i, ds in enumerate(source_images) if _image_key(ds) in wanted]


def _library_frames(report: hd.sr.MeasurementReport, images: Sequence[Dataset]) -> None:
    """Referenced Frame Number on the Image Library entries of frames of multi-frame images.

    highdicom's Image Library (TID 1600) describes each image it is given (a
    frame: that frame's position, orientation, spacing) but references the
    instance only; entries come in the order of *images* within each group.
    """
    pending: dict[str, list[int | None]] = {}
    for image in images:
        pending.setdefault(str(image.SOPInstanceUID), []).append(frame_number(image))
    if all(n is None for numbers in pending.values() for n in numbers):
        return

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "IMAGE" and "ReferencedSOPSequence" in item:
                reference = item.ReferencedSOPSequence[0]
                numbers = pending.get(str(reference.ReferencedSOPInstanceUID))
                if numbers:
                    number = numbers.pop(0)
                    if number is not None:
                        reference.ReferencedFrameNumber = number
            elif item.get("ValueType") == "CONTAINER":
                walk(item.get("ContentSequence", []))

    for item in report[0].ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "CONTAINER" and name.CodeValue == codes.DCM.ImageLibrary.value:
            walk(item.ContentSequence)


def _report(
    source_images: Sequence[Dataset],
    groups: Sequence[Any],
    *,
    procedure: Code,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    derived: Sequence[Dataset] = (),
    about: Sequence[int] = (),
    examined: Sequence[int] = (),
    comparison: Comparison | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR: *groups*, the source images they reference as Image Library and evidence.

    *about* are further source images (indices) the findings are about without a
    region on them (Image Library and evidence); *examined* further ones that are
    evidence only; *derived* are result objects the groups reference (the SEG,
    heat maps): they join the evidence, not the Image Library. A *comparison*
    adds the report's Qualitative Evaluations (the comparison or baseline
    sentence, the Lung-RADS suggestion) and cites the prior's images as Pertinent
    Other Evidence (highdicom files evidence of another study there).
    """
    indices = sorted({*_referenced_sources(groups, source_images), *about})
    referenced = [source_images[i] for i in indices]
    basis = [source_images[i] for i in sorted(set(examined) - set(indices))]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, uid_key),
        procedure_reported=procedure,
        imaging_measurements=list(groups),
        referenced_images=referenced,
    )
    _library_frames(report, referenced)
    prior: list[Dataset] = []
    if comparison is not None:
        report[0].ContentSequence.append(_assessment(comparison))
        prior = list(instances(comparison.prior_images))
    sr = hd.sr.Comprehensive3DSR(
        # Evidence lists instances: a multi-frame image once, whatever its frames.
        evidence=[*instances([*referenced, *basis]), *derived, *prior],
        content=report,
        series_instance_uid=result_uid(uid_key, "sr-series"),
        series_number=series.number,
        sop_instance_uid=result_uid(uid_key, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        # A revision cites the reports it replaces (PS3.3 C.17.2.3).
        previous_versions=_previous_versions(series) or None,
    )
    sr.SeriesDescription = series.described(algorithm.notice)
    return declare_private_schemes(sr)


def _previous_versions(series: SeriesSpec) -> list[Dataset]:
    """The four UIDs of each SR *series* says this one revises, as highdicom takes them."""
    datasets = []
    for predecessor in series.predecessors:
        ds = Dataset()
        ds.StudyInstanceUID = predecessor.study_instance_uid
        ds.SeriesInstanceUID = predecessor.series_instance_uid
        ds.SOPClassUID = predecessor.sop_class_uid
        ds.SOPInstanceUID = predecessor.sop_instance_uid
        datasets.append(ds)
    return datasets


def _segment_report(
    source_images: Sequence[Dataset],
    groups: list[Any],
    *,
    segmentation: Dataset | None,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    procedure: Code,
    empty_finding: Code,
    comparison: Comparison | None = None,
    prior_groups: Sequence[Any] = (),
    illustrations: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The tail of the nodule and volume reports: "nothing found" when empty, the SEG as evidence.

    An empty report has every source image in its evidence: "absent" is about all of them.
    *illustrations* (result images the groups reference) join the evidence, as the SEG does.
    """
    examined: list[int] = []
    if not groups:
        identification = algorithm.sr_identification()
        groups = [_absent_group(empty_finding, source_images, identification, uid_key)]
        examined = list(range(len(source_images)))
    return _report(
        source_images,
        [*groups, *prior_groups],
        procedure=procedure,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        derived=[*([segmentation] if segmentation is not None else []), *illustrations],
        examined=examined,
        comparison=comparison,
    )


# -- nodules: centre, key-slice ellipse, outline with volume and certainty, ellipsoid ---------


def _finding_groups(
    finding: NoduleFinding,
    index: int,
    source_images: Sequence[Dataset],
    segmentation: Dataset | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid_key: str,
    score_concept: Code,
    time_point: hd.sr.TimePointContext | None = None,
) -> list[Group]:
    label = finding.label or f"{finding.finding_type.meaning} {index}"
    image = source_images[finding.key_slice]
    common: dict[str, Any] = {
        "tracking_identifier": _tracking(
            finding.tracking_uid or finding_uid(uid_key, index), label
        ),
        "finding_type": finding.finding_type,
        "algorithm_id": algorithm,
        "finding_sites": _sites(finding.finding_site),
    }
    if time_point is not None:
        common["time_point_context"] = time_point
    ellipse = _ellipse(image, finding.center_mm, finding.long_axis_mm)
    # The centre on the key slice comes first: it is what OHIF draws, on that slice, and
    # can load as a measurement. The nodule in 3D is an ellipsoid (its centre the
    # nodule's), not a second point, which OHIF would load as a second measurement.
    centre = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=_region(image, "POINT", (ellipse[0:1] + ellipse[1:2]) / 2.0),
        **common,
    )
    if finding.ellipsoid_mm is not None:
        axes = np.asarray(finding.ellipsoid_mm, dtype=float)
    else:
        radius = finding.long_axis_mm / 2.0
        axes = np.asarray(finding.center_mm) + np.repeat(np.eye(3), 2, axis=0) * np.tile(
            [[-radius], [radius]], (3, 1)
        )
    in_3d = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
            graphic_data=axes,
            frame_of_reference_uid=image.FrameOfReferenceUID,
            source_series=hd.sr.SourceSeriesForSegmentation(image.SeriesInstanceUID),
        ),
        **common,
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=_region(image, "ELLIPSE", ellipse),
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.LongAxis, value=round(finding.long_axis_mm, 2), unit=MM
            )
        ],
        **common,
    )
    outlined = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_region=_region(image, "POLYLINE", finding.outline)
        if finding.outline is not None
        else _region(image, "ELLIPSE", ellipse),
        measurements=[
            _volume(round(finding.volume_mm3, 1), MM3, segmentation, finding.segment_number),
            hd.sr.Measurement(
                name=score_concept, value=round(100.0 * finding.score, 1), unit=PERCENT
            ),
            *_change_measurements(finding.change),
        ],
        qualitative_evaluations=_change_evaluations(finding.change),
        **common,
    )
    _illustrate(outlined, finding.illustrations)
    return [centre, planar, outlined, in_3d]


def _illustrate(group: Group, pictures: Sequence[Dataset]) -> None:
    """Reference result images of a finding from its group, as TID 1410's "Illustration of ROI"."""
    for picture in pictures:
        # DCM 121200; highdicom's group classes do not take it: appended to the group.
        group[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=codes.DCM.IllustrationOfROI,
                referenced_sop_class_uid=picture.SOPClassUID,
                referenced_sop_instance_uid=picture.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )


# -- follow-up: the change of each finding, the prior's measurements, the assessment ----------


def _change_measurements(change: NoduleChange | None) -> list[hd.sr.Measurement]:
    """Volume change (%) and volume doubling time (days) of a matched finding."""
    if change is None:
        return []
    measurements = []
    if change.volume_change_percent is not None:
        measurements.append(
            hd.sr.Measurement(
                name=VOLUME_CHANGE, value=round(change.volume_change_percent, 1), unit=PERCENT
            )
        )
    if change.vdt_days is not None:
        measurements.append(
            hd.sr.Measurement(name=VOLUME_DOUBLING_TIME, value=round(change.vdt_days, 1), unit=DAY)
        )
    return measurements


def _change_evaluations(change: NoduleChange | None) -> list[hd.sr.QualitativeEvaluation] | None:
    if change is None:
        return None
    return [
        hd.sr.QualitativeEvaluation(name=DESCRIPTION_OF_CHANGE, value=CHANGE_CODES[change.status])
    ]


def time_points(
    comparison: Comparison,
) -> tuple[hd.sr.TimePointContext, hd.sr.TimePointContext]:
    """TID 1502 contexts of the prior (the comparison's baseline) and the current study.

    Each names its time point ("prior", "current") and its study's date (Subject
    Time Point Identifier); the prior's Time Point Type is DCM "Baseline". The
    two numeric items of TID 1502 (Time Point Order, Longitudinal Temporal
    Offset from Event; both optional) are left out on purpose: the
    Cornerstone3D adapters, and OHIF through them, take a group's first NUM
    item for its measurement and then find no coordinates under it, and drop
    every group that carries them. The interval is stated instead as the
    prior groups' SNOMED CT "Interval" (days), and the dates order the points.
    """
    prior = hd.sr.TimePointContext(
        time_point="prior",
        time_point_type=codes.DCM.Baseline,
        subject_time_point_identifier=comparison.prior_date.isoformat()
        if comparison.prior_date
        else None,
    )
    current = hd.sr.TimePointContext(
        time_point="current",
        subject_time_point_identifier=comparison.current_date.isoformat()
        if comparison.current_date
        else None,
    )
    return prior, current


def prior_sphere(prior: PriorMeasurement) -> np.ndarray:
    """``(6, 3)`` axis end points of the sphere a prior finding is drawn as, in the prior's LPS.

    Its diameter is the prior long axis when known, else that of the sphere of
    the prior volume; the prior's voxels are not at hand (only its measurements).
    """
    if prior.long_axis_mm:
        radius = prior.long_axis_mm / 2.0
    else:
        radius = float(np.cbrt(3.0 * max(prior.volume_mm3, 0.0) / (4.0 * np.pi)))
    radius = max(radius, 0.5)
    return np.asarray(prior.center_mm, dtype=float) + np.repeat(np.eye(3), 2, axis=0) * np.tile(
        [[-radius], [radius]], (3, 1)
    )


def _prior_group(
    label: str,
    tracking_uid: str,
    prior: PriorMeasurement,
    prior_images: Sequence[Dataset],
    *,
    time_point: hd.sr.TimePointContext,
    algorithm: hd.sr.AlgorithmIdentification,
    finding_type: Code,
    finding_site: Code | None,
    status: str | None = None,
    interval_days: float | None = None,
    in_ml: bool = False,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """A finding as the prior measured it: its size and extent in the prior's frame, its time point.

    A TID 1411 group (a volume is a 3D measurement): the prior finding as the
    SCOORD3D ellipsoid of :func:`prior_sphere` in the prior's Frame of
    Reference, its long axis and volume, the interval, under the same Tracking
    Identifier and UID as the current finding, so a TID 1500 reader links the
    two time points; a resolved finding also says so. Not a point: viewers
    draw a point group on the study they show (here the current one), and the
    Cornerstone3D adapters cannot read a point group that holds measurements.
    """
    measurements = [
        hd.sr.Measurement(name=codes.SCT.Volume, value=round(prior.volume_mm3 / 1000.0, 3), unit=ML)
        if in_ml
        else hd.sr.Measurement(name=codes.SCT.Volume, value=round(prior.volume_mm3, 1), unit=MM3)
    ]
    if prior.long_axis_mm is not None:
        measurements.insert(
            0,
            hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(prior.long_axis_mm, 2), unit=MM),
        )
    if interval_days is not None:
        measurements.append(
            hd.sr.Measurement(name=INTERVAL, value=round(float(interval_days), 1), unit=DAY)
        )
    evaluations = None
    if status is not None:
        evaluations = [
            hd.sr.QualitativeEvaluation(name=DESCRIPTION_OF_CHANGE, value=CHANGE_CODES[status])
        ]
    image = prior_images[0]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(tracking_uid, label),
        referenced_volume_surface=hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
            graphic_data=prior_sphere(prior),
            frame_of_reference_uid=image.FrameOfReferenceUID,
            source_series=hd.sr.SourceSeriesForSegmentation(image.SeriesInstanceUID),
        ),
        time_point_context=time_point,
        finding_type=finding_type,
        algorithm_id=algorithm,
        finding_sites=_sites(finding_site),
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _resolved_groups(
    comparison: Comparison,
    time_point: hd.sr.TimePointContext,
    prior_images: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    empty_finding: Code,
    *,
    in_ml: bool = False,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The prior-time-point groups of the findings gone since the prior, status "resolved"."""
    return [
        _prior_group(
            gone.label,
            gone.tracking_uid,
            gone.prior,
            prior_images,
            time_point=time_point,
            algorithm=algorithm,
            finding_type=gone.finding_type or empty_finding,
            finding_site=gone.finding_site,
            status="resolved",
            interval_days=comparison.interval_days,
            in_ml=in_ml,
        )
        for gone in comparison.resolved
    ]


def _assessment(comparison: Comparison) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations: the category suggestion and the comparison sentence."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items: list[Any] = []
    text = comparison.text
    if comparison.category is not None:
        rano = comparison.scale == "rano"
        items.append(
            hd.sr.CodeContentItem(
                name=RANO_RESPONSE if rano else LUNG_RADS,
                value=(rano_category if rano else lung_rads_category)(comparison.category),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        named = "RANO 2.0 volumetric" if rano else "Lung-RADS v2022"
        text += (
            f" {named} {comparison.category} ({comparison.category_rule}): a suggestion "
            "for the radiologist from automatic measurements, not a "
            + ("response assessment." if rano else "diagnosis.")
        )
    items.append(
        hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=text[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


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
    score_concept: Code = CERTAINTY,
    comparison: Comparison | None = None,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report of *findings*; no finding is a valid, explicit empty report.

    With no findings the report holds one group stating ``empty_finding: Absent``.
    The score goes in as *score_concept*: "Certainty of Finding" for a calibrated
    probability, :data:`dicomnode.results.codes.SCORE` for a raw detector score.

    A *comparison* makes it a follow-up report (``docs/followup.md``): each
    finding's groups carry the current time point and its change (status,
    volume change, volume doubling time); a finding seen on the prior has a
    group of the prior's measurements at the prior time point, under the same
    Tracking Identifier and UID; resolved findings have only that group; the
    report states the comparison (or why it is a baseline) and the Lung-RADS
    suggestion, and cites the prior's images.
    """
    identification = algorithm.sr_identification()
    groups: list[Any] = []
    prior_groups: list[Any] = []
    prior_point = current_point = None
    prior_images: Sequence[Dataset] = ()
    if comparison is not None and comparison.compared:
        prior_point, current_point = time_points(comparison)
        prior_images = comparison.prior_images
    for index, finding in enumerate(findings, start=1):
        groups.extend(
            _finding_groups(
                finding,
                index,
                source_images,
                segmentation,
                identification,
                uid_key,
                score_concept,
                time_point=current_point,
            )
        )
        change = finding.change
        if prior_point is not None and change is not None and change.prior is not None:
            prior_groups.append(
                _prior_group(
                    finding.label or f"{finding.finding_type.meaning} {index}",
                    finding.tracking_uid or finding_uid(uid_key, index),
                    change.prior,
                    prior_images,
                    time_point=prior_point,
                    algorithm=identification,
                    finding_type=finding.finding_type,
                    finding_site=finding.finding_site,
                    interval_days=comparison.interval_days if comparison else None,
                )
            )
    if prior_point is not None and comparison is not None:
        prior_groups += _resolved_groups(
            comparison, prior_point, prior_images, identification, empty_finding
        )
    return _segment_report(
        source_images,
        groups,
        segmentation=segmentation,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        procedure=procedure,
        empty_finding=empty_finding,
        comparison=comparison,
        prior_groups=prior_groups,
        illustrations=[p for f in findings for p in f.illustrations],
    )


# -- graded images: the graded area, the answer, its certainty --------------------------------


def _classification_group(
    result: ClassificationFinding,
    index: int,
    source_images: Sequence[Dataset],
    *,
    identification: hd.sr.AlgorithmIdentification,
    finding_type: Code,
    uid_key: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """One TID 1410 group: the graded area, the coded answer, certainty, probabilities, flags.

    The graded area is drawn as the ellipse inscribed in ``region`` (the round
    field of view of a fundus photograph in the square the network saw), not as
    a rectangle: Cornerstone3D takes a closed 5-point polyline for its
    RectangleROI tool and fails on a group that also holds measurements.
    """
    image = source_images[result.source_index]
    box = result.region or (0.0, 0.0, float(image.Columns), float(image.Rows))
    # Viewers list a group's numbers in order and show only the first few (OHIF: five), and
    # no coded value: the certainty first, then the probabilities, most probable first.
    numbers: list[tuple[Code | hd.sr.CodedConcept, float, Code | hd.sr.CodedConcept]] = []
    if result.certainty is not None:
        numbers.append((CERTAINTY, _significant(100.0 * result.certainty), PERCENT))
    ranked = sorted(enumerate(result.probabilities.items()), key=lambda item: -item[1][1])
    kind, prefix = ("Probability", "P") if result.calibrated else ("Score", "S")
    numbers += [
        (private(f"{prefix}{n}", f"{kind} of {name}"[:64]), _significant(100.0 * p), PERCENT)
        for n, (name, p) in ranked
    ]
    numbers += [(name, _significant(value), unit) for name, value, unit in result.measurements]
    measurements = [hd.sr.Measurement(name=n, value=v, unit=u) for n, v, u in numbers]
    evaluations = [
        hd.sr.QualitativeEvaluation(
            name=result.answer_concept or codes.DCM.Finding, value=result.finding
        )
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(name=name, value=value) for name, value in result.evaluations
    ]
    evaluations += [
        hd.sr.QualitativeEvaluation(
            name=private(flag[:16].upper(), flag[:64]),
            value=codes.SCT.Yes if value else codes.SCT.No,
        )
        for flag, value in result.flags.items()
    ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(
            finding_uid(uid_key, index), result.label or f"Image {index}"
        ),
        referenced_region=_region(image, "ELLIPSE", _inscribed_ellipse(*box)),
        finding_type=result.finding_type or finding_type,
        algorithm_id=identification,
        finding_sites=_sites(result.finding_site, result.finding_site_laterality),
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )
    _illustrate(group, result.illustrations)
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
    """TID 1500 report with one coded finding per group, drawn as the graded area of its image.

    A finding about several images (``source_indices``: e.g. an eye's
    photographs, graded as its worst) is drawn on its ``source_index`` image;
    the others join the evidence and the Image Library. Result images (``illustrations``, e.g. heat
    maps) are referenced as "Illustration of ROI" and join the evidence.
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
        derived=list(illustrations.values()),
        about=[i for f in findings for i in f.source_indices],
    )


# -- segmented regions: the key-slice outline with the volume, then the centre ----------------


def _volume_groups(
    finding: SegmentVolumeFinding,
    source_images: Sequence[Dataset],
    segmentation: Dataset | None,
    algorithm: hd.sr.AlgorithmIdentification,
    uid_key: str,
    time_point: hd.sr.TimePointContext | None = None,
) -> list[Group]:
    if finding.outline is None:
        raise ValueError(f"{finding.label}: a finding needs its outline on its key slice")
    # Segment findings share the SEG segment's tracking UID (seg.py's default), so viewers link
    # them; a follow-up carries the prior's, which the SEG segment carries too.
    number = finding.label if finding.segment_number is None else finding.segment_number
    common: dict[str, Any] = {
        "tracking_identifier": _tracking(
            finding.tracking_uid or finding_uid(uid_key, number), finding.label
        ),
        "finding_type": finding.finding_type,
        "algorithm_id": algorithm,
        "finding_sites": _sites(finding.finding_site),
    }
    if time_point is not None:
        common["time_point_context"] = time_point
    groups: list[Group] = [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_region(
                source_images[finding.key_slice], "POLYLINE", finding.outline
            ),
            measurements=[
                _volume(round(finding.volume_ml, 3), ML, segmentation, finding.segment_number),
                *_volume_change_measurements(finding.change),
            ],
            **common,
        )
    ]
    if finding.center_mm is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=hd.sr.ImageRegion3D(
                    graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                    graphic_data=np.array([finding.center_mm], dtype=float),
                    frame_of_reference_uid=source_images[finding.key_slice].FrameOfReferenceUID,
                ),
                **common,
            )
        )
    return groups


def _volume_change_measurements(change: VolumeChange | None) -> list[hd.sr.Measurement]:
    """Change since the prior in mL, then in % (none for a region the prior did not have)."""
    if change is None:
        return []
    measurements = [
        hd.sr.Measurement(name=VOLUME_CHANGE_ML, value=round(change.change_ml, 3), unit=ML)
    ]
    if change.change_percent is not None:
        measurements.append(
            hd.sr.Measurement(
                name=VOLUME_CHANGE, value=round(change.change_percent, 1), unit=PERCENT
            )
        )
    return measurements


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
    comparison: Comparison | None = None,
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 report with the volume (mL) of each segment and of composites.

    Each finding is a TID 1410 group of its outline on the key slice whose
    volume references its SEG segment (composites: none), and a TID 1410 group
    with its centre. No finding is an explicit ``empty_finding: Absent`` report.

    A *comparison* makes it a follow-up report, as :func:`write_measurement_report`'s:
    each finding's groups carry the current time point and its change (mL and
    %), a region the prior had has a group of the prior's volume and centre at
    the prior time point under the same Tracking Identifier and UID, regions
    gone since have only that group, and the report states the comparison (or
    why it is a baseline) and the response suggestion, and cites the prior.
    """
    identification = algorithm.sr_identification()
    prior_point = current_point = None
    prior_images: Sequence[Dataset] = ()
    if comparison is not None and comparison.compared:
        prior_point, current_point = time_points(comparison)
        prior_images = comparison.prior_images
    groups: list[Any] = []
    prior_groups: list[Any] = []
    for finding in findings:
        groups += _volume_groups(
            finding, source_images, segmentation, identification, uid_key, current_point
        )
        before = finding.change.prior if finding.change is not None else None
        if prior_point is not None and before is not None:
            number = finding.label if finding.segment_number is None else finding.segment_number
            prior_groups.append(
                _prior_group(
                    finding.label,
                    finding.tracking_uid or finding_uid(uid_key, number),
                    before,
                    prior_images,
                    time_point=prior_point,
                    algorithm=identification,
                    finding_type=finding.finding_type,
                    finding_site=finding.finding_site,
                    interval_days=comparison.interval_days if comparison else None,
                    in_ml=True,
                )
            )
    if prior_point is not None and comparison is not None:
        prior_groups += _resolved_groups(
            comparison, prior_point, prior_images, identification, empty_finding, in_ml=True
        )
    return _segment_report(
        source_images,
        groups,
        segmentation=segmentation,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        procedure=procedure,
        empty_finding=empty_finding,
        comparison=comparison,
        prior_groups=prior_groups,
    )
