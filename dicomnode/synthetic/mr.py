"""Synthetic multi-sequence head MR with a brain tumour, for the demo, the tests and ``train/``.

Nothing here is patient data. A :class:`HeadPhantom` is an analytic head
(scalp, skull, CSF, grey and white matter, two ventricles) with an optional
tumour: an irregular enhancing rim around a necrotic core, surrounded by
oedema. It can be sampled on any grid in patient coordinates (LPS, mm), so
each series of a study gets its own geometry and spacing, as on a scanner,
while all share one Frame of Reference.

Four contrasts are simulated with the signal each tissue has on them (T1,
post-contrast T1 where the rim enhances, T2, FLAIR where oedema is bright and
CSF dark), a smooth bias field and noise; thick slices average the phantom
across their thickness (partial volume).

:func:`write_mr_study` writes one such study as MR Image Storage files and
returns the truth; :func:`simulate_series` gives the same series as arrays
and affines without DICOM (what ``train/brain`` uses).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.uid import MRImageStorage, generate_uid

from dicomnode.synthetic.ct import _base_dataset, write_series

# Tissue codes of the phantom.
BACKGROUND, SCALP, SKULL, CSF, GREY, WHITE, VENTRICLE, OEDEMA, ENHANCING, NECROSIS = range(10)

# Exclusive tumour labels of the truth maps (and of the pipeline's SEG segments).
LABEL_ENHANCING, LABEL_NECROSIS, LABEL_OEDEMA = 1, 2, 3

ROLES = ("T1", "T1c", "T2", "FLAIR")

# Relative signal per tissue code (index) for each contrast; the rim enhances on T1c only,
# oedema is bright on T2 and brightest on FLAIR, CSF is bright on T2 and dark on FLAIR.
_SIGNAL = {
    "T1": [0.0, 1.10, 0.05, 0.25, 0.72, 1.00, 0.25, 0.62, 0.70, 0.38],
    "T1c": [0.0, 1.10, 0.05, 0.27, 0.74, 1.00, 0.27, 0.64, 1.50, 0.36],
    "T2": [0.0, 0.60, 0.05, 1.50, 0.62, 0.45, 1.50, 1.05, 0.80, 1.30],
    "FLAIR": [0.0, 0.80, 0.05, 0.15, 0.72, 0.55, 0.15, 1.35, 0.95, 0.50],
}


@dataclass(frozen=True)
class Acquisition:
    """What a series says about how it was acquired (the attributes selection reads)."""

    description: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    repetition_time: float
    echo_time: float
    inversion_time: float | None = None
    contrast_agent: str | None = None
    acquisition_type: str = "2D"


ACQUISITIONS: dict[str, Acquisition] = {
    "T1": Acquisition("T1 SE AX", ("SE",), ("SK",), 550.0, 12.0),
    "T1c": Acquisition(
        "T1 MPRAGE AX POST GD",
        ("GR", "IR"),
        ("SK", "SP", "MP"),
        1900.0,
        2.5,
        900.0,
        "Gadobutrol",
        "3D",
    ),
    "T2": Acquisition("T2 TSE AX", ("SE",), ("SK",), 4200.0, 100.0),
    "FLAIR": Acquisition("FLAIR AX", ("SE", "IR"), ("SK", "SP"), 9000.0, 120.0, 2500.0),
}


@dataclass(frozen=True)
class Geometry:
    """An axial series grid: first-voxel centre (LPS mm), spacings (mm), size."""

    origin: tuple[float, float, float]
    pixel_spacing: tuple[float, float]  # (row, column)
    slice_spacing: float
    rows: int
    columns: int
    slices: int

    @property
    def affine(self) -> np.ndarray:
        """(k, j, i) index → LPS, as :class:`dicomnode.pipelines.volume.Volume` uses."""
        affine = np.eye(4)
        affine[:3, 0] = (0.0, 0.0, self.slice_spacing)
        affine[:3, 1] = (0.0, self.pixel_spacing[0], 0.0)
        affine[:3, 2] = (self.pixel_spacing[1], 0.0, 0.0)
        affine[:3, 3] = self.origin
        return affine

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        return (self.slices, self.rows, self.columns)

    @classmethod
    def covering(
        cls,
        center: Sequence[float] | np.ndarray,
        extent_mm: Sequence[float],
        pixel_spacing: tuple[float, float],
        slice_spacing: float,
    ) -> Geometry:
        """A grid centred on *center* covering *extent_mm* (x, y, z)."""
        columns = int(round(extent_mm[0] / pixel_spacing[1]))
        rows = int(round(extent_mm[1] / pixel_spacing[0]))
        slices = int(round(extent_mm[2] / slice_spacing))
        origin = (
            center[0] - (columns - 1) * pixel_spacing[1] / 2,
            center[1] - (rows - 1) * pixel_spacing[0] / 2,
            center[2] - (slices - 1) * slice_spacing / 2,
        )
        return cls(origin, pixel_spacing, slice_spacing, rows, columns, slices)


@dataclass(frozen=True)
class Tumour:
    """An irregular tumour: enhancing rim around a necrotic core, oedema around both."""

    center_mm: tuple[float, float, float]
    radius_mm: float  # mean outer radius of the enhancing rim
    core_fraction: float  # necrotic core radius relative to the rim's (0: solid)
    oedema_mm: float  # how far oedema reaches beyond the rim
    axes: np.ndarray = field(repr=False)  # 3x3: rotation scaled by inverse semi-axis ratios
    lobes: np.ndarray = field(repr=False)  # (n, 5): amplitude, direction (3), phase


@dataclass(frozen=True)
class HeadPhantom:
    """An analytic head; ``tumour`` None for a normal study."""

    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    tumour: Tumour | None
    signal_jitter: dict[str, np.ndarray] = field(repr=False)  # per contrast, per tissue factor
    bias: dict[str, np.ndarray] = field(repr=False)  # per contrast: wave vectors and amplitude

    @classmethod
    def random(
        cls,
        seed: int,
        *,
        tumour: bool = True,
        radius_mm: tuple[float, float] = (8.0, 20.0),
        core_fraction: tuple[float, float] | None = None,
        oedema_mm: tuple[float, float] = (4.0, 14.0),
    ) -> HeadPhantom:
        """A head of random size and position with (or without) a random tumour.

        *radius_mm* bounds the tumour's mean rim radius (uniform within it);
        *core_fraction*, when given, the necrotic core's radius relative to the
        rim's (default: none in 20 % of tumours, else up to 0.65); *oedema_mm*
        bounds how far the oedema reaches beyond the rim.
        """
        rng = np.random.default_rng(seed)
        center = tuple(rng.uniform(-4.0, 4.0, 3))
        semi = (rng.uniform(50, 55), rng.uniform(56, 61), rng.uniform(42, 46))
        jitter = {c: rng.uniform(0.92, 1.08, len(_SIGNAL[c])) for c in ROLES}
        bias = {c: rng.normal(0.0, 0.012, (3, 3)) for c in ROLES}
        found = (
            _random_tumour(
                rng, np.array(center), np.array(semi), radius_mm, core_fraction, oedema_mm
            )
            if tumour
            else None
        )
        return cls(center, semi, found, jitter, bias)

    def tissues(self, points: np.ndarray) -> np.ndarray:
        """Tissue code of each ``(n, 3)`` LPS point."""
        rel = (points - np.asarray(self.center_mm)) / np.asarray(self.semi_axes_mm)
        rho = np.sqrt(np.einsum("ij,ij->i", rel, rel))
        code = np.full(len(points), BACKGROUND, dtype=np.uint8)
        for limit, tissue in ((1.0, SCALP), (0.94, SKULL), (0.89, CSF), (0.86, GREY)):
            code[rho <= limit] = tissue
        code[rho <= 0.76] = WHITE
        for side in (-1.0, 1.0):  # lateral ventricles
            v = (rel - np.array([0.16 * side, -0.05, 0.08])) / np.array([0.08, 0.30, 0.14])
            code[np.einsum("ij,ij->i", v, v) <= 1.0] = VENTRICLE
        if self.tumour is not None:
            brain = rho <= 0.86
            r = _tumour_radius(self.tumour, points)
            code[brain & (r <= 1.0 + self.tumour.oedema_mm / self.tumour.radius_mm)] = OEDEMA
            code[r <= 1.0] = ENHANCING
            code[r <= self.tumour.core_fraction] = NECROSIS
        return code

    def labels(self, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Exclusive tumour labels (1 enhancing, 2 necrosis, 3 oedema) at voxel centres."""
        codes = self.tissues(_grid_points(affine, shape)).reshape(tuple(shape))
        out = np.zeros(codes.shape, dtype=np.uint8)
        out[codes == ENHANCING] = LABEL_ENHANCING
        out[codes == NECROSIS] = LABEL_NECROSIS
        out[codes == OEDEMA] = LABEL_OEDEMA
        return out

    def image(
        self,
        contrast: str,
        geometry: Geometry,
        rng: np.random.Generator,
        *,
        noise: float = 0.03,
        scale: float = 1000.0,
    ) -> np.ndarray:
        """Signal of *contrast* on *geometry*: partial volume across the slice, bias, noise."""
        table = np.asarray(_SIGNAL[contrast]) * self.signal_jitter[contrast]
        # Average three sub-slices across each slice's thickness (partial volume).
        offsets = (-1 / 3, 0.0, 1 / 3) if geometry.slice_spacing > 1.5 else (0.0,)
        total = np.zeros(geometry.shape, dtype=np.float32)
        for offset in offsets:
            affine = geometry.affine.copy()
            affine[:3, 3] += affine[:3, 0] * offset
            points = _grid_points(affine, geometry.shape)
            total += table[self.tissues(points)].reshape(geometry.shape).astype(np.float32)
        image = total / len(offsets)
        points = _grid_points(geometry.affine, geometry.shape)
        image *= self._bias_field(contrast, points).reshape(geometry.shape)
        image += rng.normal(0.0, noise, image.shape).astype(np.float32)
        return np.clip(image * scale, 0, 4095).astype(np.float32)

    def _bias_field(self, contrast: str, points: np.ndarray) -> np.ndarray:
        waves = self.bias[contrast]
        rel = (points - np.asarray(self.center_mm)).astype(np.float32)
        field_ = 1.0 + np.sin(rel @ waves[:, 0].astype(np.float32)) * 0.05
        field_ += np.cos(rel @ waves[:, 1].astype(np.float32)) * 0.04
        return field_.astype(np.float32)


def _random_tumour(
    rng: np.random.Generator,
    head: np.ndarray,
    semi: np.ndarray,
    radius_mm: tuple[float, float] = (8.0, 20.0),
    core_fraction: tuple[float, float] | None = None,
    oedema_mm: tuple[float, float] = (4.0, 14.0),
) -> Tumour:
    radius = float(rng.uniform(*radius_mm))
    # Keep the tumour inside the brain: centre within the white matter minus its radius.
    limit = np.maximum(semi * 0.76 - radius - 2.0, 3.0)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    center = head + direction * limit * rng.uniform(0.0, 0.9)
    if core_fraction is None:
        core = float(rng.uniform(0.0, 0.65)) if rng.random() < 0.8 else 0.0
    else:
        core = float(rng.uniform(*core_fraction))
    core = min(core, max(0.0, 1.0 - 4.0 / radius))  # the rim stays at least ~4 mm thick
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    axes = q / rng.uniform(0.8, 1.2, 3)[:, None]
    lobes = np.concatenate(
        [
            rng.uniform(0.03, 0.10, (3, 1)),
            _unit_rows(rng.normal(size=(3, 3))),
            rng.uniform(0, 2 * np.pi, (3, 1)),
        ],
        axis=1,
    )
    oedema = float(rng.uniform(*oedema_mm))
    return Tumour(tuple(center), radius, core, oedema, axes, lobes)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _tumour_radius(tumour: Tumour, points: np.ndarray) -> np.ndarray:
    """Normalised distance from the tumour centre: 1.0 on the outer rim surface."""
    rel = (points - np.asarray(tumour.center_mm)) @ tumour.axes.T
    dist = np.sqrt(np.einsum("ij,ij->i", rel, rel))
    unit = rel / np.maximum(dist, 1e-6)[:, None]
    wobble = np.ones(len(points))
    for amplitude, *direction, phase in tumour.lobes:
        wobble += amplitude * np.sin(3.0 * (unit @ np.asarray(direction)) + phase)
    return dist / (tumour.radius_mm * wobble)


def _grid_points(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """LPS centres of every voxel of a grid, ``(n, 3)`` in C order of *shape*."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    index = np.stack([k.ravel(), j.ravel(), i.ravel()], axis=1)
    return index @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)


def default_geometries(center: Sequence[float] = (0.0, 0.0, 0.0)) -> dict[str, Geometry]:
    """The demo and test study: each series its own spacing and field of view."""
    c = np.asarray(center, dtype=float)
    return {
        "T1": Geometry.covering(c, (128, 128, 100), (1.0, 1.0), 2.0),
        "T1c": Geometry.covering(c + (0, 0, 1), (128, 128, 100), (1.0, 1.0), 1.0),
        "T2": Geometry.covering(c + (1, -1, 0), (126, 126, 102), (0.9, 0.9), 3.0),
        "FLAIR": Geometry.covering(c + (0, 2, 0), (130, 130, 100), (1.3, 1.3), 2.5),
    }


def random_geometries(rng: np.random.Generator, native_share: float = 0.0) -> dict[str, Geometry]:
    """Training geometries: varied in-plane spacing, slice spacing and field of view.

    With probability *native_share* the T1c is a 1 mm isotropic acquisition (as
    3D post-contrast T1 and BraTS-style data are), so the pipeline's 1 mm grid
    is its own and its edges reach the network uninterpolated; each other
    series of such a study then shares that grid with probability 0.5
    (co-registered, BraTS style). Otherwise every series has a random in-plane
    spacing and is interpolated. With the default 0 no extra random numbers are
    drawn, so earlier seeds keep their geometries.
    """
    native = native_share > 0 and bool(rng.random() < native_share)
    out: dict[str, Geometry] = {}
    for role in ROLES:
        in_plane = 1.0 if native and role == "T1c" else float(rng.uniform(0.8, 1.3))
        thickness = 1.0 if role == "T1c" else float(rng.choice([1.0, 1.5, 2.0, 3.0, 4.0]))
        extent = (rng.uniform(124, 136), rng.uniform(124, 136), rng.uniform(100, 108))
        out[role] = Geometry.covering(
            rng.uniform(-3, 3, 3), extent, (in_plane, in_plane), thickness
        )
    for role in ROLES:
        if native and role != "T1c" and rng.random() < 0.5:
            out[role] = out["T1c"]
    return out


def simulate_series(
    phantom: HeadPhantom, geometries: Mapping[str, Geometry], seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each role's ``(array (slices, rows, columns), affine)``, as DICOM would give them."""
    rng = np.random.default_rng(seed)
    return {
        role: (
            phantom.image(role, geometry, rng, noise=float(rng.uniform(0.015, 0.04))),
            geometry.affine,
        )
        for role, geometry in geometries.items()
    }


@dataclass(frozen=True)
class MRStudyTruth:
    """What :func:`write_mr_study` wrote and the truth to compare results with."""

    study_instance_uid: str
    frame_of_reference_uid: str
    series: dict[str, list[Path]]  # role → files, in slice order
    series_instance_uids: dict[str, str]
    labels: np.ndarray  # (slices, rows, columns) on the T1c grid: 1 ET, 2 necrosis, 3 oedema
    voxel_volume_mm3: float  # of the T1c grid

    def volume_ml(self, *labels: int) -> float:
        """Truth volume (mL) of the given labels on the T1c grid."""
        return float(np.isin(self.labels, labels).sum() * self.voxel_volume_mm3 / 1000.0)


def _mr_dataset(
    role: str,
    acquisition: Acquisition,
    geometry: Geometry,
    index: int,
    pixels: np.ndarray,
    common: dict[str, str],
    series_number: int,
) -> Dataset:
    ds = _base_dataset(
        MRImageStorage,
        "MR",
        study_instance_uid=common["study"],
        series_instance_uid=common[f"series-{role}"],
        patient_id=common["patient_id"],
        patient_name=common["patient_name"],
        accession_number=common["accession"],
        series_number=series_number,
        series_description=common.get(f"description-{role}", acquisition.description),
        when=datetime.fromisoformat(common.get("when", "2026-01-01T12:00:00")),
    )
    ds.StudyDescription = "MR head (synthetic, not patient data)"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[common[f"series-{role}"], str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.BodyPartExamined = "HEAD"
    ds.ScanningSequence = list(acquisition.scanning_sequence)
    ds.SequenceVariant = list(acquisition.sequence_variant)
    ds.ScanOptions = ""
    ds.MRAcquisitionType = acquisition.acquisition_type
    ds.RepetitionTime = f"{acquisition.repetition_time:g}"
    ds.EchoTime = f"{acquisition.echo_time:g}"
    if acquisition.inversion_time is not None:
        ds.InversionTime = f"{acquisition.inversion_time:g}"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "3"
    ds.ImagedNucleus = "1H"
    ds.ProtocolName = acquisition.description
    if acquisition.contrast_agent:
        ds.ContrastBolusAgent = acquisition.contrast_agent
    ds.SliceThickness = f"{geometry.slice_spacing:g}"
    ds.SpacingBetweenSlices = f"{geometry.slice_spacing:g}"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = common["frame"]
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = index + 1
    ds.AcquisitionNumber = 1
    z = geometry.origin[2] + index * geometry.slice_spacing
    ds.ImagePositionPatient = [f"{geometry.origin[0]:.4f}", f"{geometry.origin[1]:.4f}", f"{z:.4f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.4f}"
    ds.PixelSpacing = [f"{geometry.pixel_spacing[0]:g}", f"{geometry.pixel_spacing[1]:g}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = geometry.rows, geometry.columns
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.rint(pixels).astype("<u2").tobytes()
    return ds


def mr_study_datasets(
    seed: int = 0,
    *,
    tumour: bool = True,
    roles: Sequence[str] = ROLES,
    descriptions: Mapping[str, str] | None = None,
    patient_id: str = "SYNMR001",
    patient_name: str = "Synthetic^Brain",
    study_instance_uid: str | None = None,
    frames_of_reference: Mapping[str, str] | None = None,
    geometries: Mapping[str, Geometry] | None = None,
    phantom_options: Mapping[str, Any] | None = None,
    phantom: HeadPhantom | None = None,
    accession_number: str | None = None,
    study_datetime: datetime | None = None,
) -> tuple[dict[str, list[Dataset]], HeadPhantom, dict[str, Geometry], dict[str, str]]:
    """The datasets of a four-series head MR study, plus the phantom and grids they came from.

    *roles* may repeat a role with a suffix (``"T1c#2"``: a second post-contrast
    series) or leave one out; *descriptions* overrides Series Descriptions by role;
    *frames_of_reference* gives a role its own Frame of Reference UID;
    *geometries* replaces :func:`default_geometries` (e.g. BraTS-sized grids);
    *phantom_options* go to :meth:`HeadPhantom.random` (tumour size, core, oedema);
    a *phantom* replaces that random one (e.g. one study of a follow-up pair).
    *accession_number* (default ``MR<seed>``) and *study_datetime* (default
    2026-01-01 12:00) identify the study in time.
    """
    if phantom is None:
        phantom = HeadPhantom.random(seed, tumour=tumour, **dict(phantom_options or {}))
    grids = dict(geometries or default_geometries(phantom.center_mm))
    study = study_instance_uid or generate_uid(entropy_srcs=["mr-study", str(seed)])
    common = {
        "study": study,
        "frame": generate_uid(entropy_srcs=[study, "frame"]),
        "patient_id": patient_id,
        "patient_name": patient_name,
        "accession": accession_number or f"MR{seed:06d}",
        "when": (study_datetime or datetime(2026, 1, 1, 12, 0, 0)).isoformat(),
    }
    rng = np.random.default_rng(seed + 1)
    out: dict[str, list[Dataset]] = {}
    uids = {}
    for number, role in enumerate(roles, start=1):
        base = role.split("#")[0]
        geometry, acquisition = grids[base], ACQUISITIONS[base]
        common[f"series-{role}"] = uids[role] = str(generate_uid(entropy_srcs=[study, role]))
        if descriptions and role in descriptions:
            common[f"description-{role}"] = descriptions[role]
        pixels = phantom.image(base, geometry, rng)
        local = dict(common)
        if frames_of_reference and role in frames_of_reference:
            local["frame"] = frames_of_reference[role]
        out[role] = [
            _mr_dataset(role, acquisition, geometry, k, pixels[k], local, number)
            for k in range(geometry.slices)
        ]
    return out, phantom, grids, uids


def write_mr_study(
    folder: str | os.PathLike[str], seed: int = 0, **options: object
) -> MRStudyTruth:
    """Write a synthetic head MR study (T1, T1c, T2, FLAIR) under *folder*, one sub-folder per series.

    Each series has its own spacing and field of view, all in one Frame of
    Reference. Keyword *options* are those of :func:`mr_study_datasets`
    (``tumour=False`` for a normal study, ``roles=`` to leave a series out or
    add a second one). Returns the written paths and the truth labels on the
    T1c grid.
    """
    datasets, phantom, grids, uids = mr_study_datasets(seed, **options)  # type: ignore[arg-type]
    root = Path(folder)
    paths = {
        role: write_series(items, root / role.replace("#", "_")) for role, items in datasets.items()
    }
    t1c = grids["T1c"]
    first = next(iter(datasets.values()))[0]
    return MRStudyTruth(
        study_instance_uid=str(first.StudyInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        series=paths,
        series_instance_uids=uids,
        labels=phantom.labels(t1c.affine, t1c.shape),
        voxel_volume_mm3=t1c.pixel_spacing[0] * t1c.pixel_spacing[1] * t1c.slice_spacing,
    )
