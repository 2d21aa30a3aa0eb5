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
    # Part-solid nodules: a solid core of this diameter inside ground glass of ``ground_glass_hu``.
    solid_diameter_mm: float | None = None
    ground_glass_hu: float = -550.0

    @property
    def part_solid(self) -> bool:
        """Whether the nodule is a solid core in ground glass."""
        return self.solid_diameter_mm is not None


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


@dataclass(frozen=True)
class _SeriesCommon:
    """What every slice of one series shares."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    patient_id: str
    patient_name: str
    accession_number: str
    series_number: int
    series_description: str
    body_part: str
    when: datetime


def _hu_to_pixel_data(hu: np.ndarray) -> bytes:
    """Stored values (rescale intercept -1024) of HU pixels, signed 16 bit."""
    return bytes(np.clip(np.rint(hu + 1024.0), -32768, 32767).astype("<i2").tobytes())


def _ct_slice(
    index: int,
    position: tuple[float, float, float],
    pixel_spacing: tuple[float, float],
    slice_thickness: float,
    size: tuple[int, int],
    common: _SeriesCommon,
) -> Dataset:
    """One axial CT Image Storage dataset without pixel data."""
    x0, y0, z = position
    row_mm, col_mm = pixel_spacing
    ds = _base_dataset(
        CTImageStorage,
        "CT",
        study_instance_uid=common.study_instance_uid,
        series_instance_uid=common.series_instance_uid,
        patient_id=common.patient_id,
        patient_name=common.patient_name,
        accession_number=common.accession_number,
        series_number=common.series_number,
        series_description=common.series_description,
        when=common.when,
    )
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = common.body_part
    ds.KVP = "120"
    ds.SliceThickness = f"{slice_thickness:g}"
    ds.PatientPosition = "FFS"
    ds.FrameOfReferenceUID = common.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [f"{x0:g}", f"{y0:g}", f"{z:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:g}"
    ds.PixelSpacing = [f"{row_mm:g}", f"{col_mm:g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
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
    common = _SeriesCommon(
        study_uid,
        series_uid,
        frame_uid,
        patient_id,
        patient_name,
        accession_number,
        series_number,
        series_description,
        body_part,
        when,
    )
    slices = []
    for index in range(n_slices):
        z = index * slice_thickness
        ds = _ct_slice(
            index,
            (x0, y0, z),
            (row_mm, col_mm),
            slice_thickness,
            (rows, columns),
            common,
        )
        hu = _chest_slice(z, static, x, y, nodules, rng)
        ds.PixelData = _hu_to_pixel_data(hu)
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


# -- the detailed chest phantom (lung nodule pipeline, its training and its tests) --------


@dataclass(frozen=True)
class Vessel:
    """A straight vessel segment (patient LPS mm) of constant radius."""

    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    radius_mm: float
    hu: float = 40.0


@dataclass(frozen=True)
class ChestPhantom:
    """A chest: elliptic body with a fat ring, two ellipsoid lungs, a vessel tree, nodules.

    Coordinates are patient LPS mm; the body axis runs along z through x = y = 0
    and the lungs are centred at height ``center_z_mm``.
    """

    center_z_mm: float = 0.0
    body_axes_mm: tuple[float, float] = (160.0, 110.0)
    fat_mm: float = 10.0
    lung_offset_mm: float = 75.0
    lung_axes_mm: tuple[float, float, float] = (60.0, 85.0, 150.0)
    lung_hu: float = -850.0
    vessels: tuple[Vessel, ...] = ()
    nodules: tuple[Nodule, ...] = ()


def _soft(distance: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction inside a surface at signed *distance* (mm, < 0 inside)."""
    return np.clip(0.5 - distance / width, 0.0, 1.0).astype(np.float32)


def _axes_mm(origin: np.ndarray, spacing: np.ndarray, shape: Sequence[int]) -> list[np.ndarray]:
    """z, y, x positions (mm) of an axial grid's slices, rows and columns."""
    return [origin[2 - n] + np.arange(shape[n]) * spacing[n] for n in range(3)]


def _index_range(axis: np.ndarray, low: float, high: float) -> slice:
    return slice(int(np.searchsorted(axis, low)), int(np.searchsorted(axis, high, side="right")))


def _blend(hu: np.ndarray, fraction: np.ndarray, value: float) -> None:
    hu *= 1.0 - fraction
    hu += fraction * np.float32(value)


def lung_mask_mm(phantom: ChestPhantom, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Normalised radius (< 1 inside a lung) at broadcastable positions *x*, *y*, *z* (mm)."""
    a, b, c = phantom.lung_axes_mm
    dz = ((z - phantom.center_z_mm) / c) ** 2
    radius = [
        ((x - side * phantom.lung_offset_mm) / a) ** 2 + ((y + 5.0) / b) ** 2 + dz
        for side in (-1.0, 1.0)
    ]
    return np.sqrt(np.minimum(radius[0], radius[1]))


def _draw_vessel(
    hu: np.ndarray, axes: list[np.ndarray], vessel: Vessel, width: float, lungs: np.ndarray
) -> None:
    start, end = np.array(vessel.start_mm), np.array(vessel.end_mm)
    low = np.minimum(start, end) - vessel.radius_mm - width
    high = np.maximum(start, end) + vessel.radius_mm + width
    box = tuple(_index_range(axes[n], low[2 - n], high[2 - n]) for n in range(3))
    if any(s.stop <= s.start for s in box):
        return
    z, y, x = (axes[n][box[n]] for n in range(3))
    direction = end - start
    length2 = float(direction @ direction) or 1.0
    px, py, pz = (
        x[None, None, :] - start[0],
        y[None, :, None] - start[1],
        z[:, None, None] - start[2],
    )
    t = np.clip((px * direction[0] + py * direction[1] + pz * direction[2]) / length2, 0.0, 1.0)
    dist = np.sqrt(
        (px - t * direction[0]) ** 2 + (py - t * direction[1]) ** 2 + (pz - t * direction[2]) ** 2
    )
    # Vessels are drawn inside the lungs only; elsewhere they would be soft tissue anyway.
    fraction = _soft(dist - vessel.radius_mm, width) * lungs[box]
    _blend(hu[box], fraction, vessel.hu)


def _draw_sphere(
    hu: np.ndarray,
    axes: list[np.ndarray],
    center: Sequence[float],
    diameter: float,
    value: float,
    width: float,
) -> None:
    r = diameter / 2.0
    box = tuple(
        _index_range(axes[n], center[2 - n] - r - width, center[2 - n] + r + width)
        for n in range(3)
    )
    if any(s.stop <= s.start for s in box):
        return
    z, y, x = (axes[n][box[n]] for n in range(3))
    dist = np.sqrt(
        (x[None, None, :] - center[0]) ** 2
        + (y[None, :, None] - center[1]) ** 2
        + (z[:, None, None] - center[2]) ** 2
    )
    _blend(hu[box], _soft(dist - r, width), value)


def render_chest(
    phantom: ChestPhantom,
    origin_mm: Sequence[float],
    spacing_mm: Sequence[float],
    shape: Sequence[int],
    *,
    noise_hu: float = 20.0,
    seed: int = 0,
) -> np.ndarray:
    """HU voxels of *phantom* on an axial grid, shape ``(slices, rows, columns)``.

    Parameters
    ----------
    origin_mm
        LPS position of voxel ``(0, 0, 0)`` (x, y, z).
    spacing_mm
        ``(slice, row, column)`` spacing; rows run along +y (posterior),
        columns along +x (left), slices along +z.
    noise_hu
        Standard deviation of the Gaussian noise added to every voxel.

    Edges are partial-volume blended over one voxel, as a scanner sees them.
    """
    origin = np.asarray(origin_mm, dtype=float)
    spacing = np.asarray(spacing_mm, dtype=float)
    axes = _axes_mm(origin, spacing, shape)
    width = float(spacing[1:].mean())
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    a, b = phantom.body_axes_mm
    fat = phantom.fat_mm
    hu = np.full(tuple(int(n) for n in shape), -1000.0, dtype=np.float32)
    outer = np.sqrt((x / (a + fat)) ** 2 + (y / (b + fat)) ** 2)
    inner = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    _blend(hu, np.broadcast_to(_soft((outer - 1.0) * (a + fat), width), hu.shape), -100.0)
    _blend(hu, np.broadcast_to(_soft((inner - 1.0) * a, width), hu.shape), 40.0)
    lung_radius = lung_mask_mm(phantom, x, y, z)
    lungs = _soft((lung_radius - 1.0) * phantom.lung_axes_mm[0], width)
    _blend(hu, lungs, phantom.lung_hu)
    for vessel in phantom.vessels:
        _draw_vessel(hu, axes, vessel, width, lungs)
    for nodule in phantom.nodules:
        _draw_sphere(
            hu,
            axes,
            nodule.center_mm,
            nodule.diameter_mm,
            nodule.ground_glass_hu if nodule.part_solid else nodule.hu,
            width,
        )
        if nodule.solid_diameter_mm is not None:
            _draw_sphere(hu, axes, nodule.center_mm, nodule.solid_diameter_mm, nodule.hu, width)
    rng = np.random.default_rng(seed)
    hu += np.float32(noise_hu) * rng.standard_normal(size=hu.shape, dtype=np.float32)
    return hu


def vessel_tree(
    rng: np.random.Generator,
    *,
    center_z_mm: float = 0.0,
    lung_offset_mm: float = 75.0,
    trunks: int = 6,
    depth: int = 3,
) -> tuple[Vessel, ...]:
    """Branching vessels from each hilum outwards, thinner at each generation."""
    vessels: list[Vessel] = []
    for side in (-1.0, 1.0):
        hilum = np.array([side * (lung_offset_mm - 40.0), 0.0, center_z_mm])
        for _ in range(trunks):
            direction = rng.normal(size=3) * np.array([0.6, 1.0, 1.6])
            direction[0] = side * abs(direction[0])
            _branch(vessels, rng, hilum, direction, 3.0, 45.0, depth)
    return tuple(vessels)


def _branch(
    out: list[Vessel],
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    length: float,
    depth: int,
) -> None:
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length * rng.uniform(0.7, 1.3)
    out.append(Vessel(tuple(start), tuple(end), radius))
    if depth <= 1:
        return
    for _ in range(2):
        turn = direction + rng.normal(scale=0.6, size=3)
        _branch(out, rng, end, turn, max(0.6, radius * 0.7), length * 0.75, depth - 1)


@dataclass(frozen=True)
class ChestStudy:
    """A written synthetic chest CT and its truth."""

    paths: list[Path]
    study_instance_uid: str
    series_instance_uid: str
    nodules: tuple[Nodule, ...]
    phantom: ChestPhantom


def default_nodules(center_z_mm: float) -> tuple[Nodule, ...]:
    """Four nodules in the lungs of the default phantom: solid 6, 10, 18 mm and part-solid 14 mm."""
    return (
        Nodule((-70.0, -30.0, center_z_mm - 20.0), 10.0),
        Nodule((85.0, 20.0, center_z_mm + 12.0), 6.0),
        Nodule((60.0, -40.0, center_z_mm - 35.0), 18.0, hu=30.0),
        Nodule((-85.0, 35.0, center_z_mm + 30.0), 14.0, hu=20.0, solid_diameter_mm=6.0),
    )


def write_chest_ct_study(
    directory: str | os.PathLike[str],
    *,
    n_slices: int = 80,
    rows: int = 256,
    columns: int = 256,
    pixel_spacing: tuple[float, float] = (1.4, 1.4),
    slice_thickness: float = 2.5,
    nodules: Sequence[Nodule] | None = None,
    seed: int = 0,
    noise_hu: float = 20.0,
    study_instance_uid: str | None = None,
    patient_id: str = "SYNLUNG1",
    series_description: str = "Synthetic chest CT",
) -> ChestStudy:
    """Write a synthetic chest CT with known nodules (one file per slice) to *directory*.

    The volume is centred on x = y = 0 and on the lungs in z (which starts at
    z = 0); by default four nodules (:func:`default_nodules`) sit in the lungs
    among a seeded vessel tree. ``nodules=()`` writes a study without nodules.

    Returns
    -------
    ChestStudy
        The file paths in slice order, the UIDs, and the truth (nodules and phantom).
    """
    rng = np.random.default_rng(seed)
    center_z = (n_slices - 1) * slice_thickness / 2.0
    found = default_nodules(center_z) if nodules is None else tuple(nodules)
    phantom = ChestPhantom(
        center_z_mm=center_z, vessels=vessel_tree(rng, center_z_mm=center_z), nodules=found
    )
    row_mm, col_mm = pixel_spacing
    origin = (-(columns - 1) * col_mm / 2.0, -(rows - 1) * row_mm / 2.0, 0.0)
    hu = render_chest(
        phantom,
        origin,
        (slice_thickness, row_mm, col_mm),
        (n_slices, rows, columns),
        noise_hu=noise_hu,
        seed=seed,
    )
    common = _SeriesCommon(
        study_instance_uid or generate_uid(),
        generate_uid(),
        generate_uid(),
        patient_id,
        "Synthetic^Chest",
        "ACCLUNG1",
        1,
        series_description,
        "CHEST",
        datetime(2026, 1, 1, 12, 0, 0),
    )
    slices = []
    for index in range(n_slices):
        position = (origin[0], origin[1], index * slice_thickness)
        ds = _ct_slice(index, position, pixel_spacing, slice_thickness, (rows, columns), common)
        ds.PixelData = _hu_to_pixel_data(hu[index])
        slices.append(ds)
    paths = write_series(slices, directory)
    return ChestStudy(paths, common.study_instance_uid, common.series_instance_uid, found, phantom)
