"""Synthetic colour fundus photographs with a known ICDR grade, and OP studies of them.

:func:`fundus_photo` draws one photograph: a circular field of view with
vignetting, an orange-red fundus with low-frequency texture, the optic disc
(nasal side: right of the image for a right eye), the macula, and vessel
arcades leaving the disc. Lesions follow the International Clinical Diabetic
Retinopathy (ICDR) scale, in counts and spread by grade:

==========  ==========================================================================
grade       lesions drawn
==========  ==========================================================================
0 none      none
1 mild      microaneurysms only
2 moderate  microaneurysms, dot/blot haemorrhages, hard exudates, cotton-wool spots
3 severe    as moderate, with haemorrhages in all four quadrants (intraretinal, many)
4 PDR       neovascularisation (at the disc or elsewhere), often a preretinal
            haemorrhage, on a moderate or severe background
==========  ==========================================================================

Exposure, colour cast, field size and position vary by seed. ``degrade``
makes an ungradable photograph ("blur": defocus, "dark": half the field
under-exposed), the inputs a grader would send back for human review.

:func:`write_fundus_study` writes an Ophthalmic Photography 8 Bit study of
both eyes, JPEG baseline compressed as fundus cameras send them, and returns
the truth.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

GRADES = ("none", "mild", "moderate", "severe", "proliferative")
DEGRADATIONS = ("blur", "dark")
OPHTHALMIC_PHOTOGRAPHY_8BIT = UID("1.2.840.10008.5.1.4.1.1.77.1.5.1")

Point = tuple[float, float]


@dataclass(frozen=True)
class FundusImageTruth:
    """What one written photograph shows."""

    path: Path
    sop_instance_uid: str
    laterality: str  # "R" or "L"
    grade: int  # ICDR grade 0..4
    degrade: str | None  # None, "blur" or "dark"


@dataclass(frozen=True)
class FundusStudyTruth:
    """A written study: its UID and its photographs."""

    study_instance_uid: str
    images: tuple[FundusImageTruth, ...]

    def grade_of_eye(self, laterality: str) -> int:
        """The worst grade among the photographs of one eye."""
        return max(i.grade for i in self.images if i.laterality == laterality)


# -- drawing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """Geometry of one photograph in pixels."""

    size: int
    cx: float
    cy: float
    radius: float
    disc: Point
    macula: Point


def _field(size: int, laterality: str, rng: np.random.Generator) -> _Field:
    cx = size / 2 + rng.uniform(-0.04, 0.04) * size
    cy = size / 2 + rng.uniform(-0.04, 0.04) * size
    radius = rng.uniform(0.40, 0.47) * size
    # The disc is nasal: on the image's right for a right eye (viewed from the front).
    side = 1.0 if laterality == "R" else -1.0
    disc = (cx + side * radius * rng.uniform(0.28, 0.36), cy + radius * rng.uniform(-0.06, 0.06))
    macula = (cx - side * radius * rng.uniform(0.08, 0.14), cy + radius * rng.uniform(-0.04, 0.04))
    return _Field(size, cx, cy, radius, disc, macula)


def _background(field: _Field, rng: np.random.Generator) -> np.ndarray:
    """Fundus colour with low-frequency texture and the macula (float RGB 0..1)."""
    size = field.size
    base = np.array([rng.uniform(0.72, 0.86), rng.uniform(0.33, 0.42), rng.uniform(0.14, 0.22)])
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    texture = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mx, my = field.macula
    macula = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * (0.09 * field.radius) ** 2))
    shade = (1.0 + 0.04 * texture) * (1.0 - 0.35 * macula)
    return base[None, None, :] * shade[:, :, None]


def _walk(
    start: Point, angle: float, steps: int, step: float, bend: float, rng: np.random.Generator
) -> list[Point]:
    points = [start]
    x, y = start
    for _ in range(steps):
        angle += rng.normal(0.0, bend)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
    return points


def _draw_vessels(draw: ImageDraw.ImageDraw, field: _Field, rng: np.random.Generator) -> None:
    """Arcades: four main vessels from the disc, each with a few branches."""
    r = field.radius
    toward_macula = math.atan2(field.macula[1] - field.disc[1], field.macula[0] - field.disc[0])
    for n, offset in enumerate((-0.9, 0.9, math.pi - 0.7, math.pi + 0.7)):
        angle = toward_macula + offset + rng.normal(0.0, 0.1)
        width = r * rng.uniform(0.018, 0.026)
        colour = (120, 28, 22) if n % 2 == 0 else (150, 40, 30)  # veins darker than arteries
        trunk = _walk(field.disc, angle, 28, 0.035 * r, 0.08, rng)
        draw.line(trunk, fill=colour, width=max(1, round(width)), joint="curve")
        for _ in range(int(rng.integers(2, 5))):
            start = trunk[int(rng.integers(5, len(trunk) - 4))]
            branch = _walk(start, angle + rng.choice([-0.8, 0.8]), 16, 0.03 * r, 0.12, rng)
            draw.line(branch, fill=colour, width=max(1, round(width * 0.55)), joint="curve")


def _draw_disc(draw: ImageDraw.ImageDraw, field: _Field, rng: np.random.Generator) -> None:
    x, y = field.disc
    rd = field.radius * rng.uniform(0.10, 0.13)
    draw.ellipse((x - rd * 0.9, y - rd, x + rd * 0.9, y + rd), fill=(240, 190, 120))
    cup = rd * rng.uniform(0.3, 0.5)
    draw.ellipse((x - cup, y - cup, x + cup, y + cup), fill=(252, 225, 170))


def _random_point(field: _Field, rng: np.random.Generator, quadrant: int | None = None) -> Point:
    """A point in the field away from the disc; in *quadrant* (0..3) if given."""
    while True:
        rho = field.radius * math.sqrt(rng.uniform(0.02, 0.72))
        theta = rng.uniform(0, 2 * math.pi) if quadrant is None else rng.uniform(0, math.pi / 2)
        if quadrant is not None:
            theta += quadrant * math.pi / 2
        x, y = field.cx + rho * math.cos(theta), field.cy + rho * math.sin(theta)
        if math.dist((x, y), field.disc) > 0.18 * field.radius:
            return x, y


def _dot(draw: ImageDraw.ImageDraw, centre: Point, radius: float, colour: tuple[int, ...]) -> None:
    x, y = centre
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)


def _microaneurysms(
    draw: ImageDraw.ImageDraw, field: _Field, count: int, rng: np.random.Generator
) -> None:
    for _ in range(count):
        _dot(draw, _random_point(field, rng), field.radius * rng.uniform(0.012, 0.018), (95, 8, 8))


def _haemorrhages(
    draw: ImageDraw.ImageDraw,
    field: _Field,
    count: int,
    rng: np.random.Generator,
    quadrant: int | None = None,
) -> None:
    for _ in range(count):
        x, y = _random_point(field, rng, quadrant)
        for _ in range(int(rng.integers(1, 4))):  # blots: a few overlapping ellipses
            rx, ry = field.radius * rng.uniform(0.02, 0.045, 2)
            dx, dy = field.radius * rng.normal(0.0, 0.012, 2)
            draw.ellipse((x + dx - rx, y + dy - ry, x + dx + rx, y + dy + ry), fill=(100, 12, 10))


def _exudates(
    draw: ImageDraw.ImageDraw, field: _Field, clusters: int, rng: np.random.Generator
) -> None:
    for _ in range(clusters):
        x, y = _random_point(field, rng)
        for _ in range(int(rng.integers(3, 9))):
            dx, dy = field.radius * rng.normal(0.0, 0.035, 2)
            _dot(draw, (x + dx, y + dy), field.radius * rng.uniform(0.008, 0.016), (245, 225, 105))


def _cotton_wool(
    draw: ImageDraw.ImageDraw, field: _Field, count: int, rng: np.random.Generator
) -> None:
    for _ in range(count):
        _dot(
            draw, _random_point(field, rng), field.radius * rng.uniform(0.03, 0.05), (225, 190, 160)
        )


def _neovascularisation(
    draw: ImageDraw.ImageDraw, field: _Field, tufts: int, rng: np.random.Generator
) -> None:
    """Tufts of fine tortuous vessels at the disc (NVD) or elsewhere (NVE)."""
    # Wide enough to survive the 160-pixel network input (about one pixel there).
    width = max(1, round(field.radius * 0.012))
    for n in range(tufts):
        at_disc = n == 0 and rng.uniform() < 0.5
        centre = field.disc if at_disc else _random_point(field, rng)
        for _ in range(int(rng.integers(14, 24))):
            start = (
                centre[0] + field.radius * rng.normal(0.0, 0.05),
                centre[1] + field.radius * rng.normal(0.0, 0.05),
            )
            loop = _walk(start, rng.uniform(0, 2 * math.pi), 8, 0.018 * field.radius, 0.9, rng)
            draw.line(loop, fill=(140, 10, 25), width=width, joint="curve")


def _preretinal_haemorrhage(
    draw: ImageDraw.ImageDraw, field: _Field, rng: np.random.Generator
) -> None:
    x, y = _random_point(field, rng)
    rd = field.radius * rng.uniform(0.08, 0.12)
    # Boat-shaped: blood settles, a flat upper edge.
    draw.chord((x - rd, y - rd, x + rd, y + rd), 0, 180, fill=(85, 5, 5))


def _draw_lesions(
    draw: ImageDraw.ImageDraw, field: _Field, grade: int, rng: np.random.Generator
) -> None:
    background = grade if grade < 4 else int(rng.choice([2, 3]))
    if background == 1:
        _microaneurysms(draw, field, int(rng.integers(4, 13)), rng)
    elif background == 2:
        _microaneurysms(draw, field, int(rng.integers(8, 21)), rng)
        _haemorrhages(draw, field, int(rng.integers(3, 9)), rng)
        _exudates(draw, field, int(rng.integers(1, 6)), rng)
        _cotton_wool(draw, field, int(rng.integers(0, 3)), rng)
    elif background == 3:
        _microaneurysms(draw, field, int(rng.integers(15, 31)), rng)
        for quadrant in range(4):  # the 4-2-1 rule: haemorrhages in every quadrant
            _haemorrhages(draw, field, int(rng.integers(6, 11)), rng, quadrant)
        _exudates(draw, field, int(rng.integers(3, 9)), rng)
        _cotton_wool(draw, field, int(rng.integers(1, 5)), rng)
    if grade == 4:
        _neovascularisation(draw, field, int(rng.integers(1, 4)), rng)
        if rng.uniform() < 0.5:
            _preretinal_haemorrhage(draw, field, rng)


def _camera(
    image: np.ndarray, field: _Field, rng: np.random.Generator, degrade: str | None
) -> np.ndarray:
    """Optics and exposure: vignetting, colour cast, blur, noise, the field stop."""
    size = field.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((xx - field.cx) ** 2 + (yy - field.cy) ** 2) / field.radius
    exposure = rng.uniform(0.6, 1.35) * rng.uniform(0.9, 1.1, 3)
    image = image * (1.0 - 0.35 * np.clip(dist, 0, 1) ** 2)[:, :, None] * exposure
    sigma = 0.0012 * size
    if degrade == "blur":
        sigma = rng.uniform(0.012, 0.02) * size  # defocus: lesions are gone
    pil = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8))
    image = np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255.0
    if degrade == "dark":
        angle = rng.uniform(0, 2 * math.pi)
        side = (xx - field.cx) * math.cos(angle) + (yy - field.cy) * math.sin(angle)
        ramp = 1.0 / (1.0 + np.exp(-side / (0.03 * field.radius)))
        image = image * (1.0 - (1.0 - rng.uniform(0.12, 0.3)) * ramp)[:, :, None]
    image = image + rng.normal(0.0, 0.012, image.shape).astype(np.float32)
    stop = np.clip((1.0 - dist) * field.radius / 1.5, 0.0, 1.0)  # soft 1.5-pixel edge
    image = image * stop[:, :, None] + 0.01
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)


def fundus_photo(
    grade: int,
    *,
    size: int = 512,
    seed: int = 0,
    laterality: str = "R",
    degrade: str | None = None,
) -> np.ndarray:
    """One synthetic colour fundus photograph.

    Parameters
    ----------
    grade
        ICDR grade, 0 (no retinopathy) to 4 (proliferative).
    size
        Width and height in pixels.
    seed
        The same arguments give the same pixels.
    laterality
        "R" or "L": which side the optic disc is on.
    degrade
        None, "blur" (defocus) or "dark" (half the field under-exposed).

    Returns
    -------
    numpy.ndarray
        ``(size, size, 3)`` uint8 RGB.
    """
    if grade not in range(len(GRADES)):
        raise ValueError(f"grade must be 0..4, not {grade}")
    if degrade is not None and degrade not in DEGRADATIONS:
        raise ValueError(f"degrade must be one of {DEGRADATIONS}, not {degrade!r}")
    rng = np.random.default_rng(seed)
    field = _field(size, laterality, rng)
    pil = Image.fromarray(np.clip(_background(field, rng) * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    _draw_disc(draw, field, rng)
    _draw_vessels(draw, field, rng)
    _draw_lesions(draw, field, grade, rng)
    return _camera(np.asarray(pil, dtype=np.float32) / 255.0, field, rng, degrade)


# -- DICOM ------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _jpeg_baseline(rgb: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    # subsampling=1 is 4:2:2, what YBR_FULL_422 declares.
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=1)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Patient:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    when: datetime


def ophthalmic_photograph(
    rgb: np.ndarray,
    *,
    laterality: str,
    study_instance_uid: str,
    series_instance_uid: str,
    instance_number: int = 1,
    patient_id: str = "SYNFUNDUS1",
    patient_name: str = "Synthetic^Fundus",
    accession_number: str = "ACCF0001",
    when: datetime = datetime(2026, 1, 1, 9, 0, 0),
) -> Dataset:
    """An Ophthalmic Photography 8 Bit Image, JPEG baseline (YBR_FULL_422), of *rgb*."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    ds.SOPClassUID = OPHTHALMIC_PHOTOGRAPHY_8BIT
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    _patient_and_study(ds, study_instance_uid, patient_id, patient_name, accession_number, when)
    ds.Modality = "OP"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Colour fundus"
    ds.Manufacturer = "dicomnode synthetic"
    ds.ManufacturerModelName = "fundus phantom"
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "COLOR"]
    ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    # Synchronization module (mandatory in OP): the camera's own clock, no trigger.
    ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    _ophthalmic_modules(ds, laterality)
    _pixels(ds, rgb)
    return ds


def _patient_and_study(
    ds: Dataset, study_uid: str, patient_id: str, name: str, accession: str, when: datetime
) -> None:
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "F1"
    ds.AccessionNumber = accession
    ds.StudyDescription = "Diabetic retinopathy screening"


def _ophthalmic_modules(ds: Dataset, laterality: str) -> None:
    """Ocular Region Imaged, OP Acquisition Parameters, OP Parameters (type 2 left empty)."""
    ds.ImageLaterality = laterality
    # SNOMED CT 5665001 Retina (CID 4209 Ophthalmic Anatomic Structure Imaged).
    ds.AnatomicRegionSequence = [_code("5665001", "SCT", "Retina")]
    ds.PatientEyeMovementCommanded = "NO"
    ds.HorizontalFieldOfView = 45
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.PupilDilated = "YES"
    ds.MydriaticAgentSequence = []
    ds.DegreeOfDilation = None
    ds.RefractiveStateSequence = []
    # SNOMED CT 409898007 Fundus Camera (CID 4202 Ophthalmic Image Acquisition Device).
    ds.AcquisitionDeviceTypeCodeSequence = [_code("409898007", "SCT", "Fundus Camera")]
    ds.IlluminationTypeCodeSequence = []
    ds.LightPathFilterTypeStackCodeSequence = []
    ds.ImagePathFilterTypeStackCodeSequence = []
    ds.LensesCodeSequence = []
    ds.DetectorType = "CCD"
    ds.BurnedInAnnotation = "NO"


def _pixels(ds: Dataset, rgb: np.ndarray) -> None:
    jpeg = _jpeg_baseline(rgb)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = 0x00181063  # Frame Time; one frame, so 0 ms
    ds.FrameTime = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{rgb.nbytes / len(jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"


def write_fundus_study(
    directory: str | os.PathLike[str],
    grades: Mapping[str, int],
    *,
    seed: int = 0,
    size: int = 512,
    images_per_eye: int = 1,
    degrade: Mapping[str, str] | None = None,
    study_instance_uid: str | None = None,
    patient_id: str = "SYNFUNDUS1",
) -> FundusStudyTruth:
    """Write a JPEG-compressed OP study, one series, *images_per_eye* photographs per eye.

    Parameters
    ----------
    directory
        Created if needed; one ``.dcm`` file per photograph.
    grades
        ICDR grade per eye, e.g. ``{"R": 2, "L": 0}``.
    degrade
        Optional degradation per eye ("blur" or "dark"), applied to its first photograph.

    Returns
    -------
    FundusStudyTruth
        The study UID and, per photograph, its path, laterality, grade and degradation.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_instance_uid or str(generate_uid(entropy_srcs=[f"fundus-study-{seed}"]))
    series_uid = str(generate_uid(entropy_srcs=[study_uid, "series"]))
    images = []
    number = 0
    for eye, grade in sorted(grades.items(), reverse=True):  # R before L
        for n in range(images_per_eye):
            number += 1
            spoil = (degrade or {}).get(eye) if n == 0 else None
            rgb = fundus_photo(
                grade, size=size, seed=seed * 1000 + number, laterality=eye, degrade=spoil
            )
            ds = ophthalmic_photograph(
                rgb,
                laterality=eye,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                instance_number=number,
                patient_id=patient_id,
            )
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
                entropy_srcs=[study_uid, str(number)]
            )
            path = out / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            images.append(FundusImageTruth(path, str(ds.SOPInstanceUID), eye, grade, spoil))
    return FundusStudyTruth(study_uid, tuple(images))
