"""Series specs and the writer of the selection corpus (the studies are :mod:`.corpus_studies`).

A corpus study is *data*: a :class:`StudySpec` lists its series
(:class:`SeriesSpec`) with the headers a scanner of that vendor writes
(Manufacturer, Series Description and Protocol Name in the site's language,
Image Type, kernel, slice thickness, orientation, TR/TE/TI, scanning
sequence, b-values, contrast agent and timing, ophthalmic codes ...) and
what a careful reader would do with each series: ``expect`` is ``"chosen"``
(CT), the role (MR: ``T1``, ``T1c``, ``T2``, ``FLAIR``) or the reason
category it is passed over with; photograph series say it per image
(:class:`ImageSpec`). A study the pipeline cannot use says which words its
error must contain (``error``).

:func:`write_corpus_study` writes one as DICOM files, pixels from the
phantoms (:mod:`.ct` chest, :mod:`.mr` head, :mod:`.fundus` photographs) on
small matrices (selection reads headers only) with real geometry (Image
Position/Orientation (Patient), Pixel Spacing), and
:meth:`CorpusStudy.inputs` gives the series as a worker hands them to a
pipeline. Nothing here is patient data.
"""

from __future__ import annotations

import copy
import io
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from dicomnode.pipelines.base import SeriesInput
from dicomnode.store import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.synthetic.ct import ChestPhantom, lung_mask_mm
from dicomnode.synthetic.fundus import fundus_photo
from dicomnode.synthetic.mr import _SIGNAL, HeadPhantom

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
STEREOMETRIC_RELATIONSHIP = "1.2.840.10008.5.1.4.1.1.77.1.5.3"
OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"

# Row and column direction cosines (LPS) of each plane, as scanners write them.
PLANES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class ImageSpec:
    """One instance of a photograph series.

    ``kind``: ``fundus`` (a colour fundus photograph), ``external`` (an eye
    from outside), ``monochrome`` (red-free, angiography, autofluorescence),
    ``document`` (a scanned page) or ``tomography`` (an OCT B-scan).
    """

    expect: str
    laterality: str = "R"
    kind: str = "fundus"
    header: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesSpec:
    """One series of a corpus study: its headers and what selection must make of it.

    Attributes
    ----------
    expect
        ``chosen`` (CT), the role (MR) or the reason category; for photograph
        series, ``images`` hold it per instance.
    kind
        ``image`` (slices), ``dose-sr`` (X-Ray Radiation Dose SR), ``screen``
        (a Secondary Capture screen), ``photographs`` (see ``images``) or
        ``stereo`` (a Stereometric Relationship pairing ``pairs``).
    plane
        ``axial``, ``coronal``, ``sagittal``, or ``projection`` (a scout).
    header
        Any other attribute, by keyword; a tuple as long as ``slices`` under
        ``per_instance`` varies per instance.
    private
        ``(group, creator, element, VR, value or per-instance tuple)``.
    frames
        Write one enhanced multi-frame instance instead of single slices.
    contrast
        Which phantom contrast MR pixels show (T1, T1c, T2, FLAIR).
    increment
        Distance between slice positions (default: the thickness; 0: every
        image at one table position, as bolus tracking takes them).
    uncompressed
        Photographs as RGB, not JPEG baseline YBR_FULL_422.
    """

    number: int
    description: str
    expect: str
    modality: str = "CT"
    sop_class_uid: str = CT_IMAGE
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    kind: str = "image"
    plane: str = "axial"
    slices: int = 3
    thickness: float = 1.0
    contrast: str = "T1"
    frames: bool = False
    header: Mapping[str, Any] = field(default_factory=dict)
    per_instance: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    private: tuple[tuple[int, str, int, str, Any], ...] = ()
    images: tuple[ImageSpec, ...] = ()
    pairs: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = ()
    uncompressed: bool = False
    increment: float | None = None  # between slice positions (default: the thickness)


@dataclass(frozen=True)
class StudySpec:
    """A corpus study: who made it, what it models, its series and the expected outcome.

    Attributes
    ----------
    pipeline
        The pipeline whose selection it tests (``lung_nodule``, ``brain_tumor``, ``fundus_dr``).
    language
        The site's language of Series Descriptions (``en``, ``de``, ``fr``, ``es``, ``ja``).
    modelled_on
        The published protocol or conformance statement its naming follows ("modelled on").
    options
        Selection options the study is run with (e.g. ``prefer_lung_kernel``).
    error
        For a study the pipeline cannot use: words its error sentence must contain.
    """

    name: str
    pipeline: str
    vendor: str
    language: str
    modelled_on: str
    manufacturer: str
    model: str
    series: tuple[SeriesSpec, ...]
    software: str = ""
    character_set: str | list[str] = "ISO_IR 100"
    options: Mapping[str, Any] = field(default_factory=dict)
    error: tuple[str, ...] = ()
    study_description: str = ""

    def expected(self) -> dict[int, str]:
        """Series Number → the expected outcome (photograph series: ``chosen`` if any image is)."""
        out = {}
        for s in self.series:
            if s.images:
                kinds = [i.expect for i in s.images]
                out[s.number] = "chosen" if "chosen" in kinds else kinds[0]
            else:
                out[s.number] = s.expect
        return out


@dataclass(frozen=True)
class CorpusStudy:
    """A written corpus study: its spec and the files of each series (by Series Number)."""

    spec: StudySpec
    study_instance_uid: str
    files: dict[int, list[Path]]

    def inputs(self) -> list[SeriesInput]:
        """The series as a worker gives them: stored routing attributes, files in instance order."""
        from pydicom import dcmread

        from dicomnode.store import parse_header_from_dataset

        out = []
        for number in sorted(self.files):
            paths = self.files[number]
            header = parse_header_from_dataset(dcmread(paths[0], stop_before_pixels=True))
            attributes = header.series
            out.append(
                SeriesInput(
                    header.series_instance_uid,
                    attributes.get("Modality"),
                    attributes.get("SeriesDescription"),
                    attributes,
                    tuple(paths),
                )
            )
        return out

    def series_uid(self, number: int) -> str:
        """Series Instance UID of series *number*."""
        from pydicom import dcmread

        return str(dcmread(self.files[number][0], stop_before_pixels=True).SeriesInstanceUID)


# -- writing ---------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _base(spec: StudySpec, series: SeriesSpec, sop_class: str, index: int) -> Dataset:
    """Patient, study, series, equipment and SOP modules of one instance."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.SpecificCharacterSet = spec.character_set
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(spec.name, series.number, index)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Corpus^" + spec.name.replace("-", "^")[:50]
    ds.PatientID = ("CORPUS-" + spec.name)[:64]
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _uid(spec.name, "study")
    when = datetime(2026, 3, 2, 9, 0, 0)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = "090000"
    ds.SeriesTime = ds.ContentTime = str(series.header.get("AcquisitionTime", "090000"))
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = f"C{zlib.crc32(spec.name.encode()) % 10**8:08d}"
    ds.StudyDescription = (
        spec.study_description or f"corpus {spec.name} (synthetic, not patient data)"
    )
    ds.Modality = series.modality
    ds.SeriesInstanceUID = _uid(spec.name, "series", series.number)
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = spec.model
    ds.SoftwareVersions = spec.software or "1"
    ds.InstitutionName = "Synthetic corpus site"
    ds.InstanceNumber = index + 1
    return ds


def _apply(ds: Dataset, series: SeriesSpec, index: int) -> None:
    """The spec's own attributes (and per-instance values) over the defaults."""
    for keyword, value in series.header.items():
        setattr(ds, keyword, copy.deepcopy(value))  # sequences: each dataset its own items
    for keyword, values in series.per_instance.items():
        setattr(ds, keyword, copy.deepcopy(values[index % len(values)]))
    for group, creator, element, vr, value in series.private:
        block = ds.private_block(group, creator, create=True)
        one = value[index % len(value)] if isinstance(value, tuple) else value
        block.add_new(element, vr, one)


def _grid(
    plane: str, rows: int, spacing: float, thickness: float, slices: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Row and column directions, slice normal and each slice's first-voxel position (LPS)."""
    row_dir, column_dir = (
        np.asarray(v) for v in PLANES["coronal" if plane == "projection" else plane]
    )
    normal = np.cross(row_dir, column_dir)
    half = (rows - 1) * spacing / 2.0
    origin = -half * row_dir - half * column_dir
    positions = [origin + (k - (slices - 1) / 2.0) * thickness * normal for k in range(slices)]
    return row_dir, column_dir, normal, positions


def _points(
    position: np.ndarray, row_dir: np.ndarray, column_dir: np.ndarray, size: int, spacing: float
) -> np.ndarray:
    """LPS centres of the pixels of one slice, (size, size, 3): rows run along the column direction."""
    j, i = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return position + (i[..., None] * row_dir + j[..., None] * column_dir) * spacing


def _ct_hu(points: np.ndarray, rng: np.random.Generator, projection: bool) -> np.ndarray:
    """HU of the chest phantom (body, fat ring, lungs) at *points*, with noise."""
    phantom = ChestPhantom()
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    a, b = phantom.body_axes_mm
    hu = np.full(x.shape, -1000.0)
    hu[(x / (a + phantom.fat_mm)) ** 2 + (y / (b + phantom.fat_mm)) ** 2 <= 1] = -100.0
    hu[(x / a) ** 2 + (y / b) ** 2 <= 1] = 40.0
    hu[lung_mask_mm(phantom, x, y, z) <= 1.0] = phantom.lung_hu
    if projection:  # a scout: attenuation summed through the body, scaled to an image
        hu = np.where(
            np.abs(x) <= a, 40.0 - 60.0 * (lung_mask_mm(phantom, x, 0 * y, z) <= 1), -1000.0
        )
    return hu + rng.normal(0.0, 15.0, hu.shape)


def _mr_signal(
    points: np.ndarray, contrast: str, phantom: HeadPhantom, rng: np.random.Generator
) -> np.ndarray:
    codes = phantom.tissues(points.reshape(-1, 3)).reshape(points.shape[:-1])
    signal = np.asarray(_SIGNAL[contrast])[codes] * 1000.0
    return np.clip(signal + rng.normal(0.0, 20.0, signal.shape), 0, 4095)


def _image_slices(spec: StudySpec, series: SeriesSpec, rng: np.random.Generator) -> list[Dataset]:
    """CT or MR slices (or one enhanced multi-frame instance) of *series*."""
    size = 32
    field_of_view = 350.0 if series.modality == "CT" else 240.0
    spacing = field_of_view / size
    slices = 1 if series.plane == "projection" else series.slices
    step = series.thickness if series.increment is None else series.increment
    row_dir, column_dir, _, positions = _grid(series.plane, size, spacing, step, slices)
    phantom = HeadPhantom.random(7, tumour=True)
    frame_uid = _uid(spec.name, "frame")
    pixels = []
    for position in positions:
        points = _points(position, row_dir, column_dir, size, spacing)
        if series.modality in ("CT", "PT"):
            hu = _ct_hu(points, rng, series.plane == "projection")
            pixels.append(np.clip(np.rint(hu + 1024), 0, 4095).astype("<u2"))
        else:
            pixels.append(_mr_signal(points, series.contrast, phantom, rng).astype("<u2"))
    orientation = [f"{v:g}" for v in (*row_dir, *column_dir)]
    if series.frames:
        return [_enhanced(spec, series, pixels, positions, orientation, spacing, frame_uid)]
    out = []
    for index, (position, image) in enumerate(zip(positions, pixels, strict=True)):
        ds = _base(spec, series, series.sop_class_uid, index)
        ds.ImageType = list(series.image_type)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [f"{v:.3f}" for v in position]
        ds.ImageOrientationPatient = orientation
        ds.SliceLocation = f"{float(position[2] if series.plane == 'axial' else position @ np.cross(row_dir, column_dir)):.3f}"
        ds.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
        ds.SliceThickness = f"{series.thickness:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if series.modality == "CT":
            ds.KVP = "120"
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
            ds.BodyPartExamined = "CHEST"
        else:
            ds.BodyPartExamined = "HEAD"
            ds.MagneticFieldStrength = "3"
            ds.ImagedNucleus = "1H"
        ds.PixelData = image.tobytes()
        _apply(ds, series, index)
        out.append(ds)
    return out


def _enhanced(
    spec: StudySpec,
    series: SeriesSpec,
    pixels: Sequence[np.ndarray],
    positions: Sequence[np.ndarray],
    orientation: list[str],
    spacing: float,
    frame_uid: str,
) -> Dataset:
    """One Enhanced CT Image instance: shared and per-frame functional groups (PS3.3 C.7.6.16)."""
    ds = _base(spec, series, series.sop_class_uid, 0)
    ds.ImageType = list(series.image_type)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.NumberOfFrames = len(pixels)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = int(pixels[0].shape[0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    plane_orientation, measures, transform, reconstruction = (
        Dataset(),
        Dataset(),
        Dataset(),
        Dataset(),
    )
    plane_orientation.ImageOrientationPatient = orientation
    measures.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
    measures.SliceThickness = f"{series.thickness:g}"
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = "-1024", "1", "HU"
    kernel = series.header.get("ConvolutionKernel")
    if kernel:
        reconstruction.ConvolutionKernel = kernel
    shared.PlaneOrientationSequence = DicomSequence([plane_orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    shared.CTReconstructionSequence = DicomSequence([reconstruction])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for position in positions:
        item, plane_position = Dataset(), Dataset()
        plane_position.ImagePositionPatient = [f"{v:.3f}" for v in position]
        item.PlanePositionSequence = DicomSequence([plane_position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = b"".join(p.tobytes() for p in pixels)
    for keyword, value in series.header.items():
        if keyword != "ConvolutionKernel":  # in the functional groups, not at the top level
            setattr(ds, keyword, copy.deepcopy(value))
    return ds


def _dose_sr(spec: StudySpec, series: SeriesSpec) -> Dataset:
    """An X-Ray Radiation Dose SR document (TID 10011 title only: selection reads the header)."""
    ds = _base(spec, series, DOSE_SR, 0)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentTemplateSequence = [Dataset()]
    ds.ContentTemplateSequence[0].MappingResource = "DCMR"
    ds.ContentTemplateSequence[0].TemplateIdentifier = "10011"
    ds.ContentSequence = []
    _apply(ds, series, 0)
    return ds


def _screen(spec: StudySpec, series: SeriesSpec) -> Dataset:
    """A Secondary Capture screen (dose page, screen save), grey text-like bars."""
    ds = _base(spec, series, SECONDARY_CAPTURE, 0)
    ds.ImageType = list(series.image_type)
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    page = np.zeros((32, 32), np.uint8)
    page[4::6, 3:29] = 200  # lines of "text"
    ds.PixelData = page.tobytes()
    _apply(ds, series, 0)
    return ds


def _external_eye(size: int, seed: int) -> np.ndarray:
    """An eye seen from outside: skin, the white of the eye, iris and pupil."""
    rng = np.random.default_rng(seed)
    picture = Image.new("RGB", (size, size), (205, 160, 135))
    draw = ImageDraw.Draw(picture)
    c = size / 2
    draw.ellipse(
        (c - 0.42 * size, c - 0.2 * size, c + 0.42 * size, c + 0.2 * size), fill=(235, 230, 225)
    )
    draw.ellipse(
        (c - 0.16 * size, c - 0.16 * size, c + 0.16 * size, c + 0.16 * size), fill=(90, 110, 60)
    )
    draw.ellipse(
        (c - 0.06 * size, c - 0.06 * size, c + 0.06 * size, c + 0.06 * size), fill=(15, 10, 10)
    )
    rgb = np.asarray(picture, dtype=np.float32) + rng.normal(0, 4, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90, subsampling=1)  # 4:2:2
    return buffer.getvalue()


def _photograph(
    spec: StudySpec, series: SeriesSpec, image: ImageSpec, index: int, seed: int
) -> Dataset:
    """One instance of a photograph series (OP, VL Photographic, SC or OCT) per its spec."""
    sop = str(image.header.get("SOPClassUID", series.sop_class_uid))
    ds = _base(spec, series, sop, index)
    size = 64
    if image.kind == "fundus":
        rgb = fundus_photo(1, size=size, seed=seed, laterality=image.laterality or "R")
    elif image.kind == "external":
        rgb = _external_eye(size, seed)
    elif image.kind == "document":
        rgb = np.full((size, size, 3), 245, np.uint8)
        rgb[6::8, 6:58] = 40
    else:  # monochrome or tomography: one sample per pixel
        rgb = fundus_photo(1, size=size, seed=seed, laterality=image.laterality or "R")
    ds.ImageType = list(series.image_type)
    ds.ImageLaterality = image.laterality or "U"
    ds.PatientOrientation = ""
    ds.ContentDate = ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionDateTime = ds.StudyDate + "090500"
    ds.BurnedInAnnotation = "NO"
    if sop == OP_8BIT:
        ds.SynchronizationFrameOfReferenceUID = "1.2.840.10008.15.1.1"
        ds.SynchronizationTrigger = "NO TRIGGER"
        ds.AcquisitionTimeSynchronized = "N"
        ds.PatientEyeMovementCommanded = "NO"
        ds.HorizontalFieldOfView = 45
        ds.PupilDilated = "YES" if image.kind == "fundus" else "NO"
        ds.DetectorType = "CCD"
        ds.NumberOfFrames = 1
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 0
    if sop == SECONDARY_CAPTURE:
        ds.ConversionType = "SD" if image.kind == "document" else "DI"
    if image.kind in ("monochrome", "tomography"):
        grey = rgb[..., 1] if image.kind == "monochrome" else rgb.mean(axis=2).astype(np.uint8)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(grey).tobytes()
    elif series.uncompressed:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    else:
        jpeg = _jpeg(rgb)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
    ds.Rows, ds.Columns = size, size
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword, value in {**series.header, **image.header}.items():
        setattr(ds, keyword, copy.deepcopy(value))
    return ds


def _stereo(spec: StudySpec, series: SeriesSpec) -> Dataset:
    """A Stereometric Relationship instance naming the left and right image of each pair."""
    ds = _base(spec, series, STEREOMETRIC_RELATIONSHIP, 0)
    pairs = []
    for (left_series, left_index), (right_series, right_index) in series.pairs:
        pair, left, right = Dataset(), Dataset(), Dataset()
        for item, number, index in (
            (left, left_series, left_index),
            (right, right_series, right_index),
        ):
            item.ReferencedSOPClassUID = OP_8BIT
            item.ReferencedSOPInstanceUID = _uid(spec.name, number, index)
            item.ReferencedFrameNumber = 1
        pair.LeftImageSequence = [left]
        pair.RightImageSequence = [right]
        pairs.append(pair)
    ds.StereoPairsSequence = pairs
    return ds


def study_datasets(spec: StudySpec, seed: int = 0) -> dict[int, list[Dataset]]:
    """The datasets of every series of *spec*, by Series Number."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[Dataset]] = {}
    for series in spec.series:
        if series.kind == "image":
            out[series.number] = _image_slices(spec, series, rng)
        elif series.kind == "dose-sr":
            out[series.number] = [_dose_sr(spec, series)]
        elif series.kind == "screen":
            out[series.number] = [_screen(spec, series)]
        elif series.kind == "stereo":
            out[series.number] = [_stereo(spec, series)]
        elif series.kind == "photographs":
            out[series.number] = [
                _photograph(spec, series, image, index, seed * 100 + series.number * 10 + index)
                for index, image in enumerate(series.images)
            ]
        else:
            raise ValueError(f"series {series.number}: unknown kind {series.kind!r}")
    return out


def write_corpus_study(
    spec: StudySpec, directory: str | os.PathLike[str], seed: int = 0
) -> CorpusStudy:
    """Write *spec* under *directory*, one folder per series; return the files per series."""
    root = Path(directory)
    files: dict[int, list[Path]] = {}
    for number, datasets in study_datasets(spec, seed).items():
        folder = root / f"{number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        files[number] = []
        for ds in datasets:
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[number].append(path)
    return CorpusStudy(spec, _uid(spec.name, "study"), files)
