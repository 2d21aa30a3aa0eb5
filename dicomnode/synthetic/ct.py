"""Synthetic DICOM studies for the demo, the tests and the benchmarks.

Nothing here is patient data: a chest phantom (air, body with a fat ring,
two lungs, vessels, spherical nodules, seeded noise) in a CT Image Storage
series with correct patient geometry (LPS). Deterministic for a seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicomnode.store import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


@dataclass(frozen=True)
class Nodule:
    """A spherical nodule: centre in patient LPS millimetres, diameter, density."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    hu: float = 40.0


def _base_dataset(
    sop_class_uid: str,
    modality: str,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    series_number: int,
    series_description: str,
    when: datetime,
) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = accession_number
    ds.StudyDescription = "Synthetic study (not patient data)"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.Manufacturer = "dicomnode synthetic"
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
    return ds


def _static_chest(xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """HU of what does not change along z: air, fat ring, soft tissue, lungs."""
    hu = np.full(xx.shape, -1000.0, dtype=np.float32)
    hu[(xx / 170.0) ** 2 + (yy / 120.0) ** 2 <= 1.0] = -100.0  # subcutaneous fat ring
    hu[(xx / 160.0) ** 2 + (yy / 110.0) ** 2 <= 1.0] = 40.0  # soft tissue
    for side in (-1.0, 1.0):
        hu[((xx - side * 75.0) / 60.0) ** 2 + ((yy + 5.0) / 85.0) ** 2 <= 1.0] = -850.0
    return hu


def _disc(
    hu: np.ndarray, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, value: float
) -> None:
    """Set a disc of radius *r* mm at (cx, cy) mm to *value*, touching only its bounding box."""
    cols = np.nonzero(np.abs(x - cx) <= r)[0]
    rows = np.nonzero(np.abs(y - cy) <= r)[0]
    if cols.size == 0 or rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = (x[box[1]][None, :] - cx) ** 2 + (y[box[0]][:, None] - cy) ** 2 <= r * r
    hu[box][inside] = value


def _chest_slice(
    z_mm: float,
    static: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    nodules: Sequence[Nodule],
    rng: np.random.Generator,
) -> np.ndarray:
    """HU values of one axial slice at height *z_mm* (*x*, *y*: column/row positions in mm)."""
    hu = static.copy()
    for side in (-1.0, 1.0):
        for k, (dx, dy) in enumerate(((15.0, -30.0), (-10.0, 20.0), (5.0, 50.0))):
            # Vessels wander slowly with z so they look like tubes, not dots.
            cx = side * 75.0 + dx + 6.0 * np.sin(z_mm / 40.0 + k)
            cy = dy + 6.0 * np.cos(z_mm / 35.0 + k)
            _disc(hu, x, y, cx, cy, 3.0 - 0.6 * k, 40.0)
    for nodule in nodules:
        r = nodule.diameter_mm / 2.0
        dz = z_mm - nodule.center_mm[2]
        if abs(dz) <= r:
            _disc(
                hu,
                x,
                y,
                nodule.center_mm[0],
                nodule.center_mm[1],
                float(np.sqrt(r * r - dz * dz)),
                nodule.hu,
            )
    hu += 15.0 * rng.standard_normal(size=hu.shape, dtype=np.float32)
    return hu


def ct_series(
    n_slices: int = 64,
    rows: int = 512,
    columns: int = 512,
    *,
    pixel_spacing: tuple[float, float] = (0.703125, 0.703125),
    slice_thickness: float = 1.25,
    seed: int = 0,
    nodules: Sequence[Nodule] = (),
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str = "SYN0001",
    patient_name: str = "Synthetic^Chest",
    accession_number: str = "ACC0001",
    series_number: int = 1,
    series_description: str = "Synthetic chest CT",
    body_part: str = "CHEST",
) -> list[Dataset]:
    """A synthetic chest CT series, one CT Image Storage dataset per axial slice.

    Parameters
    ----------
    n_slices, rows, columns
        Volume size.
    pixel_spacing
        (row spacing, column spacing) in mm.
    slice_thickness
        Slice thickness and spacing in mm.
    seed
        Noise seed: the same arguments give the same pixels.
    nodules
        Spheres to place (patient LPS mm; the volume is centred on x = y = 0
        and starts at z = 0).

    Returns
    -------
    list of pydicom.Dataset
        In slice order, each with file meta (explicit VR little endian).
    """
    rng = np.random.default_rng(seed)
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_uid = generate_uid()
    when = datetime(2026, 1, 1, 12, 0, 0)
    row_mm, col_mm = pixel_spacing
    x0 = -(columns - 1) * col_mm / 2.0
    y0 = -(rows - 1) * row_mm / 2.0
    x = x0 + np.arange(columns) * col_mm
    y = y0 + np.arange(rows) * row_mm
    static = _static_chest(*np.meshgrid(x, y))
    slices = []
    for index in range(n_slices):
        z = index * slice_thickness
        ds = _base_dataset(
            CTImageStorage,
            "CT",
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            patient_id=patient_id,
            patient_name=patient_name,
            accession_number=accession_number,
            series_number=series_number,
            series_description=series_description,
            when=when,
        )
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BodyPartExamined = body_part
        ds.KVP = "120"
        ds.SliceThickness = f"{slice_thickness:g}"
        ds.PatientPosition = "FFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [f"{x0:g}", f"{y0:g}", f"{z:g}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{z:g}"
        ds.PixelSpacing = [f"{row_mm:g}", f"{col_mm:g}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        hu = _chest_slice(z, static, x, y, nodules, rng)
        ds.PixelData = np.clip(np.rint(hu + 1024.0), -32768, 32767).astype("<i2").tobytes()
        slices.append(ds)
    return slices


def nodule_labels(datasets: Sequence[Dataset], nodules: Sequence[Nodule]) -> np.ndarray:
    """Truth label map of *nodules* on the grid of *datasets* (axial slices in order).

    Voxel ``(k, r, c)`` holds ``n`` when its centre lies inside nodule ``n``
    (1-based, later nodules win where they overlap): the spheres
    :func:`ct_series` draws, for checking detectors and result writers.
    """
    first = datasets[0]
    x0, y0 = (float(v) for v in first.ImagePositionPatient[:2])
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])[:, None, None]
    rows = y0 + np.arange(first.Rows)[None, :, None] * row_mm
    cols = x0 + np.arange(first.Columns)[None, None, :] * col_mm
    labels = np.zeros((len(datasets), first.Rows, first.Columns), dtype=np.uint8)
    for n, nodule in enumerate(nodules, start=1):
        cx, cy, cz = nodule.center_mm
        inside = (cols - cx) ** 2 + (rows - cy) ** 2 + (z - cz) ** 2 <= (
            nodule.diameter_mm / 2
        ) ** 2
        labels[inside] = n
    return labels


def write_series(datasets: Sequence[Dataset], directory: str | os.PathLike[str]) -> list[Path]:
    """Write each dataset as ``<directory>/<SOPInstanceUID>.dcm``; return paths in order."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
