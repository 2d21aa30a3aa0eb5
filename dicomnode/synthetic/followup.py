"""Synthetic follow-ups: the same patient scanned again, with known changes.

Nothing here is patient data. A pair is a baseline and a follow-up study of
one synthetic patient (same Patient ID, name and birth date; a new Study
Instance UID and Frame of Reference; a Study Date a known interval later).

How the patient moved, honestly: each phantom is defined in an *anatomy*
frame (mm). At baseline the anatomy frame is the scanner's LPS frame. At
follow-up the patient lies differently on the table: a rigid motion ``M``
(a table shift of up to 30 mm and a rotation of up to 5 degrees about the
patient's centre) takes anatomy to scanner LPS. Both studies are plain axial
acquisitions on the same scanner grid; the follow-up's voxels are rendered by
mapping each voxel centre back into the anatomy frame (``M^-1``), so the
rotation is in the pixels, not in ImageOrientationPatient. A registration
that ignores the pixel content cannot find it.

Chest pairs (:func:`chest_pair`) also breathe differently: the follow-up's
lungs (and what lies in them: vessels, nodules) are scaled by a few percent
along z and y about the lungs' centre (``D``), so the true prior → current
mapping of a lung point is ``M @ D``. Nodules grow with known volume doubling
times (VDT), stay the same size, shrink, resolve or appear; the truth gives
each nodule's centre in each study's own LPS, its diameters and volumes, its
true status and its VDT.

Head pairs (:func:`head_pair`) keep the head and change the tumour: the rim
radius, the necrotic core and the oedema change by known factors, and the
truth gives each compartment's volume (enhancing, necrotic core, oedema,
whole tumour) in both studies, computed on a fine (0.75 mm) grid of the
analytic phantom.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from dicomnode.synthetic.ct import (
    ChestPhantom,
    Nodule,
    Vessel,
    _blend,
    _ct_slice,
    _hu_to_pixel_data,
    _SeriesCommon,
    _soft,
    lung_mask_mm,
    vessel_tree,
    write_series,
)
from dicomnode.synthetic.mr import (
    LABEL_ENHANCING,
    LABEL_NECROSIS,
    LABEL_OEDEMA,
    Geometry,
    HeadPhantom,
    MRStudyTruth,
    Tumour,
    default_geometries,
    write_mr_study,
)

BASELINE_DATE = datetime(2025, 1, 6, 9, 30, 0)
STATUSES = ("new", "growing", "stable", "shrinking", "resolved")


# -- geometry ------------------------------------------------------------------------------


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z (LPS axes) by *degrees*."""
    ax, ay, az = np.radians(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid_motion(
    rotation_deg: Sequence[float], translation_mm: Sequence[float], center_mm: Sequence[float]
) -> np.ndarray:
    """4x4 rigid motion: rotate about *center_mm*, then translate (anatomy → scanner LPS)."""
    matrix = np.eye(4)
    r = rotation_matrix(rotation_deg)
    c = np.asarray(center_mm, dtype=float)
    matrix[:3, :3] = r
    matrix[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=float)
    return matrix


def random_motion(
    rng: np.random.Generator,
    center_mm: Sequence[float],
    *,
    max_shift_mm: float = 30.0,
    max_rotation_deg: float = 5.0,
) -> np.ndarray:
    """A random rigid motion within the issue's bounds (shift up to 30 mm, up to 5 degrees).

    The shift is mostly along the table (z), as a patient placed again would be.
    """
    shift = rng.uniform(-1.0, 1.0, 3) * np.array([0.4, 0.4, 1.0]) * max_shift_mm
    shift *= min(1.0, max_shift_mm / max(float(np.linalg.norm(shift)), 1e-9))
    angles = rng.uniform(-1.0, 1.0, 3) * max_rotation_deg / np.sqrt(3.0)
    return rigid_motion(angles, shift, center_mm)


def apply(matrix: np.ndarray, points: np.ndarray | Sequence[float]) -> np.ndarray:
    """``(n, 3)`` points through a 4x4 matrix."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def axial_affine(origin: Sequence[float], spacing: Sequence[float]) -> np.ndarray:
    """(k, j, i) → LPS of an axial grid: *spacing* is (slice, row, column)."""
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, spacing[0])
    affine[:3, 1] = (0.0, spacing[1], 0.0)
    affine[:3, 2] = (spacing[2], 0.0, 0.0)
    affine[:3, 3] = origin
    return affine


def _grid_coordinates(index_to_anatomy: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Anatomy x, y, z (first axis) of the voxel centres of *box*, float32."""
    k, j, i = np.meshgrid(
        *(np.arange(s.start, s.stop, dtype=np.float32) for s in box), indexing="ij"
    )
    m = index_to_anatomy.astype(np.float32)
    return np.stack([m[n, 0] * k + m[n, 1] * j + m[n, 2] * i + m[n, 3] for n in range(3)])


def _index_box(
    anatomy_to_index: np.ndarray, low: np.ndarray, high: np.ndarray, shape: Sequence[int]
) -> tuple[slice, slice, slice] | None:
    """Index box of the grid holding an anatomy-frame box (its 8 corners mapped), or None."""
    corners = np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    )
    index = apply(anatomy_to_index, corners)
    start = np.clip(np.floor(index.min(axis=0)).astype(int), 0, np.asarray(shape))
    stop = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, np.asarray(shape))
    if np.any(stop <= start):
        return None
    return (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))


# -- chest -----------------------------------------------------------------------------------


def render_chest_moved(
    phantom: ChestPhantom,
    affine: np.ndarray,
    shape: Sequence[int],
    anatomy_to_lps: np.ndarray,
    *,
    noise_hu: float = 20.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """HU voxels of *phantom* (anatomy frame) placed by *anatomy_to_lps*, on the grid *affine*.

    The same tissues as :func:`dicomnode.synthetic.ct.render_chest` (body, fat
    ring, lungs, vessels inside the lungs, nodules, one-voxel partial volume,
    Gaussian noise), evaluated at each voxel centre mapped into the anatomy
    frame, so any rigid placement renders correctly. Returns the HU array and
    the truth label map (voxel centre inside nodule ``n`` → ``n``, 1-based in
    ``phantom.nodules`` order).
    """
    shape = tuple(int(n) for n in shape)
    index_to_anatomy = np.linalg.inv(anatomy_to_lps) @ affine
    anatomy_to_index = np.linalg.inv(index_to_anatomy)
    full = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    x, y, z = _grid_coordinates(index_to_anatomy, full)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    width = float(spacing[1:].mean())
    a, b = phantom.body_axes_mm
    fat = phantom.fat_mm
    hu = np.full(shape, -1000.0, dtype=np.float32)
    outer = np.sqrt((x / (a + fat)) ** 2 + (y / (b + fat)) ** 2)
    inner = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    _blend(hu, _soft((outer - 1.0) * (a + fat), width), -100.0)
    _blend(hu, _soft((inner - 1.0) * a, width), 40.0)
    lungs = _soft((lung_mask_mm(phantom, x, y, z) - 1.0) * phantom.lung_axes_mm[0], width)
    _blend(hu, lungs, phantom.lung_hu)
    del x, y, z
    for vessel in phantom.vessels:
        start, end = np.array(vessel.start_mm), np.array(vessel.end_mm)
        margin = vessel.radius_mm + width
        box = _index_box(
            anatomy_to_index,
            np.minimum(start, end) - margin,
            np.maximum(start, end) + margin,
            shape,
        )
        if box is None:
            continue
        p = _grid_coordinates(index_to_anatomy, box) - start[:, None, None, None].astype(np.float32)
        direction = (end - start).astype(np.float32)
        length2 = float(direction @ direction) or 1.0
        t = np.clip(np.tensordot(direction, p, axes=1) / length2, 0.0, 1.0)
        dist = np.sqrt(np.sum((p - t[None] * direction[:, None, None, None]) ** 2, axis=0))
        # Vessels are drawn inside the lungs only, as render_chest does.
        _blend(hu[box], _soft(dist - vessel.radius_mm, width) * lungs[box], vessel.hu)
    labels = np.zeros(shape, dtype=np.uint8)
    for number, nodule in enumerate(phantom.nodules, start=1):
        c = np.array(nodule.center_mm)
        r = nodule.diameter_mm / 2.0
        box = _index_box(anatomy_to_index, c - r - width, c + r + width, shape)
        if box is None:
            continue
        p = _grid_coordinates(index_to_anatomy, box) - c[:, None, None, None].astype(np.float32)
        dist = np.sqrt(np.sum(p**2, axis=0))
        value = nodule.ground_glass_hu if nodule.part_solid else nodule.hu
        _blend(hu[box], _soft(dist - r, width), value)
        if nodule.solid_diameter_mm is not None:
            _blend(hu[box], _soft(dist - nodule.solid_diameter_mm / 2.0, width), nodule.hu)
        labels[box][dist <= r] = number
    rng = np.random.default_rng(seed)
    hu += np.float32(noise_hu) * rng.standard_normal(size=hu.shape, dtype=np.float32)
    return hu, labels


@dataclass(frozen=True)
class StudyInfo:
    """What identifies one study of the pair."""

    study_instance_uid: str
    frame_of_reference_uid: str
    study_datetime: datetime
    patient_id: str
    patient_name: str
    accession_number: str


@dataclass(frozen=True)
class ChestScan:
    """One rendered chest CT of a pair: voxels (HU), grid, truth labels, placement."""

    array: np.ndarray  # (slices, rows, columns) HU
    affine: np.ndarray  # (k, j, i) → scanner LPS
    labels: np.ndarray  # truth: voxel in nodule n (1-based in ``phantom.nodules``)
    phantom: ChestPhantom  # anatomy frame
    anatomy_to_lps: np.ndarray  # 4x4
    study: StudyInfo
    nodule_ids: tuple[str, ...]  # truth id of each of ``phantom.nodules``


@dataclass(frozen=True)
class NoduleTruth:
    """One nodule's truth across the pair (None where it is absent from a study)."""

    id: str
    status: str  # one of STATUSES
    baseline_center_lps: tuple[float, float, float] | None
    followup_center_lps: tuple[float, float, float] | None
    baseline_diameter_mm: float | None
    followup_diameter_mm: float | None
    vdt_days: float | None  # None: stable (no change), new or resolved; < 0: a halving time

    @property
    def baseline_volume_mm3(self) -> float | None:
        """Sphere volume at baseline."""
        d = self.baseline_diameter_mm
        return None if d is None else float(np.pi / 6.0 * d**3)

    @property
    def followup_volume_mm3(self) -> float | None:
        """Sphere volume at follow-up."""
        d = self.followup_diameter_mm
        return None if d is None else float(np.pi / 6.0 * d**3)


@dataclass(frozen=True)
class ChestPair:
    """A baseline and a follow-up chest CT of one patient, and the truth between them."""

    seed: int
    interval_days: int
    baseline: ChestScan
    followup: ChestScan
    nodules: tuple[NoduleTruth, ...]
    motion: np.ndarray  # 4x4 rigid part: baseline LPS → follow-up LPS
    inspiration: np.ndarray  # 4x4 lung scaling D (anatomy frame)

    @property
    def true_prior_to_current(self) -> np.ndarray:
        """4x4 mapping of a lung point from baseline LPS to follow-up LPS (``M @ D``)."""
        return self.motion @ self.inspiration


def _lung_point(
    rng: np.random.Generator, phantom: ChestPhantom, taken: list[np.ndarray], gap_mm: float
) -> np.ndarray:
    """A random point well inside a lung (normalised radius < 0.6), *gap_mm* from *taken*."""
    a, b, c = phantom.lung_axes_mm
    for _ in range(1000):
        side = rng.choice([-1.0, 1.0])
        u = rng.uniform(-0.6, 0.6, 3)
        if u @ u > 0.36:
            continue
        point = np.array(
            [
                side * phantom.lung_offset_mm + u[0] * a,
                -5.0 + u[1] * b,
                phantom.center_z_mm + u[2] * c,
            ]
        )
        if all(np.linalg.norm(point - t) >= gap_mm for t in taken):
            return point
    raise RuntimeError("no room for another nodule")


def _inspiration(rng: np.random.Generator, center_z: float) -> np.ndarray:
    """Lung scaling about the lungs' centre: a few percent along z (most) and y (AP)."""
    sz, sy = rng.uniform(0.96, 1.05), rng.uniform(0.98, 1.03)
    d = np.diag([1.0, sy, sz, 1.0])
    center = np.array([0.0, -5.0, center_z])
    d[:3, 3] = center - d[:3, :3] @ center
    return d


def _fate_ratio(rng: np.random.Generator, fate: str, diameter: float) -> float:
    """Volume ratio V2/V1 for *fate*, with margins so the true status is unambiguous.

    Growing: at least +50 % in volume and +2 mm in diameter (the tracking rule
    is >= 25 % and > 1.5 mm); shrinking: at most 55 % of the volume and -2 mm.
    """
    if fate == "growing":
        low = max(1.5, ((diameter + 2.0) / diameter) ** 3)
        return float(rng.uniform(low, max(low * 1.5, 4.0)))
    if fate == "shrinking":
        high = min(0.55, ((diameter - 2.0) / diameter) ** 3)
        return float(rng.uniform(0.2, high))
    return 1.0


def chest_pair(
    seed: int,
    *,
    shape: Sequence[int] = (64, 128, 128),
    spacing: Sequence[float] = (4.0, 3.0, 3.0),
    interval_days: int | None = None,
    max_shift_mm: float = 30.0,
    max_rotation_deg: float = 5.0,
    noise_hu: float = 20.0,
    patient_id: str | None = None,
) -> ChestPair:
    """A baseline and a follow-up chest CT of one synthetic patient, rendered, with the truth.

    Parameters
    ----------
    seed
        Everything (anatomy, nodules, fates, motion, noise) follows from it.
    shape, spacing
        The scanner grid of both studies (slices, rows, columns) and its
        spacing (mm); centred on x = y = 0 and on the lungs in z.
    interval_days
        Days between the studies (default: random, 90-400).
    max_shift_mm, max_rotation_deg
        Bounds of the patient's rigid motion between the studies.

    Notes
    -----
    The lungs are shorter than :class:`ChestPhantom`'s default (semi-axis
    95 mm in z, not 150) so that they lie wholly inside the scanned range
    even after a 30 mm table shift: a registration needs the lung apices and
    bases to fix the shift along the table. Each pair has four or five
    baseline nodules of 5-14 mm (two or three growing, one stable, one
    resolved, sometimes one shrinking) and one new nodule of 4-10 mm.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    center_z = (shape[0] - 1) * spacing[0] / 2.0
    interval = int(interval_days if interval_days is not None else rng.integers(90, 401))
    base = ChestPhantom(
        center_z_mm=center_z,
        lung_axes_mm=(58.0, 82.0, 95.0),
        vessels=vessel_tree(rng, center_z_mm=center_z, trunks=4, depth=3),
    )
    fates = ["growing", "growing", "stable", "resolved"]
    if rng.random() < 0.5:
        fates.append("growing")
    if rng.random() < 0.5:
        fates.append("shrinking")
    rng.shuffle(fates)
    inspiration = _inspiration(rng, center_z)
    motion = random_motion(
        rng, (0.0, 0.0, center_z), max_shift_mm=max_shift_mm, max_rotation_deg=max_rotation_deg
    )
    taken: list[np.ndarray] = []
    baseline_nodules: list[Nodule] = []
    followup_nodules: list[Nodule] = []
    baseline_ids: list[str] = []
    followup_ids: list[str] = []
    truths: list[NoduleTruth] = []
    for number, fate in enumerate([*fates, "new"], start=1):
        ident = f"N{number}"
        center = _lung_point(rng, base, taken, 30.0)
        taken.append(center)
        moved = apply(inspiration, center)[0]
        density = float(rng.uniform(20.0, 60.0))
        if fate == "new":
            d2 = float(rng.uniform(4.0, 10.0))
            followup_nodules.append(Nodule(tuple(moved), d2, hu=density))
            followup_ids.append(ident)
            truths.append(
                NoduleTruth(ident, "new", None, _tuple(apply(motion, moved)[0]), None, d2, None)
            )
            continue
        d1 = float(rng.uniform(5.0, 14.0))
        baseline_nodules.append(Nodule(tuple(center), d1, hu=density))
        baseline_ids.append(ident)
        if fate == "resolved":
            truths.append(NoduleTruth(ident, "resolved", _tuple(center), None, d1, None, None))
            continue
        ratio = _fate_ratio(rng, fate, d1)
        d2 = d1 * ratio ** (1.0 / 3.0)
        vdt = None if ratio == 1.0 else interval * np.log(2.0) / np.log(ratio)
        followup_nodules.append(Nodule(tuple(moved), d2, hu=density))
        followup_ids.append(ident)
        truths.append(
            NoduleTruth(
                ident,
                fate,
                _tuple(center),
                _tuple(apply(motion, moved)[0]),
                d1,
                d2,
                None if vdt is None else float(vdt),
            )
        )
    a, b, c = base.lung_axes_mm
    followup_phantom = dataclasses.replace(
        base,
        lung_axes_mm=(a, b * inspiration[1, 1], c * inspiration[2, 2]),
        vessels=tuple(
            Vessel(
                _tuple(apply(inspiration, v.start_mm)[0]),
                _tuple(apply(inspiration, v.end_mm)[0]),
                v.radius_mm,
                v.hu,
            )
            for v in base.vessels
        ),
        nodules=tuple(followup_nodules),
    )
    # The follow-up's lung centre moves with D's centre fixed: y = -5, z = centre (unchanged).
    baseline_phantom = dataclasses.replace(base, nodules=tuple(baseline_nodules))
    origin = (-(shape[2] - 1) * spacing[2] / 2.0, -(shape[1] - 1) * spacing[1] / 2.0, 0.0)
    affine = axial_affine(origin, spacing)
    pid = patient_id or f"SYNFU{seed:05d}"
    scans = []
    for n, (phantom, placement, ids, when) in enumerate(
        (
            (baseline_phantom, np.eye(4), baseline_ids, BASELINE_DATE),
            (followup_phantom, motion, followup_ids, BASELINE_DATE + timedelta(days=interval)),
        )
    ):
        hu, labels = render_chest_moved(
            phantom, affine, shape, placement, noise_hu=noise_hu, seed=seed * 2 + n
        )
        study_uid = generate_uid(entropy_srcs=["followup-ct", str(seed), str(n)])
        info = StudyInfo(
            study_uid,
            generate_uid(entropy_srcs=[study_uid, "frame"]),
            when,
            pid,
            "Synthetic^FollowUp",
            f"FU{seed:05d}{n}",
        )
        scans.append(ChestScan(hu, affine, labels, phantom, placement, info, tuple(ids)))
    return ChestPair(seed, interval, scans[0], scans[1], tuple(truths), motion, inspiration)


def _tuple(point: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    return (float(point[0]), float(point[1]), float(point[2]))


def write_chest_scan(scan: ChestScan, directory: str | os.PathLike[str]) -> list[Path]:
    """Write one scan of a pair as CT Image Storage files (one per axial slice)."""
    spacing = np.linalg.norm(scan.affine[:3, :3], axis=0)
    common = _SeriesCommon(
        scan.study.study_instance_uid,
        generate_uid(entropy_srcs=[scan.study.study_instance_uid, "series"]),
        scan.study.frame_of_reference_uid,
        scan.study.patient_id,
        scan.study.patient_name,
        scan.study.accession_number,
        1,
        "Synthetic chest CT follow-up pair",
        "CHEST",
        scan.study.study_datetime,
    )
    slices = []
    shape = scan.array.shape
    for index in range(shape[0]):
        position = scan.affine[:3, 3] + index * scan.affine[:3, 0]
        ds = _ct_slice(
            index,
            (float(position[0]), float(position[1]), float(position[2])),
            (float(spacing[1]), float(spacing[2])),
            float(spacing[0]),
            (shape[1], shape[2]),
            common,
        )
        ds.PixelData = _hu_to_pixel_data(scan.array[index])
        slices.append(ds)
    return write_series(slices, directory)


def write_chest_pair(pair: ChestPair, directory: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Write both studies of *pair* under ``<directory>/baseline`` and ``<directory>/followup``."""
    root = Path(directory)
    return {
        "baseline": write_chest_scan(pair.baseline, root / "baseline"),
        "followup": write_chest_scan(pair.followup, root / "followup"),
    }


# -- head ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedHead(HeadPhantom):
    """A :class:`HeadPhantom` whose anatomy is placed in scanner LPS by a rigid motion."""

    anatomy_to_lps: np.ndarray = field(default_factory=lambda: np.eye(4), repr=False)

    def tissues(self, points: np.ndarray) -> np.ndarray:
        """Tissue code at scanner LPS *points* (mapped back into the anatomy frame first)."""
        inverse = np.linalg.inv(self.anatomy_to_lps)
        return super().tissues(apply(inverse, points))


COMPARTMENTS = ("enhancing", "necrotic", "oedema", "whole")


def compartment_volumes_ml(labels: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Volumes (mL) of the exclusive labels (1 enhancing, 2 necrosis, 3 oedema) and their union."""
    out = {
        "enhancing": float((labels == LABEL_ENHANCING).sum()),
        "necrotic": float((labels == LABEL_NECROSIS).sum()),
        "oedema": float((labels == LABEL_OEDEMA).sum()),
    }
    out["whole"] = out["enhancing"] + out["necrotic"] + out["oedema"]
    return {k: v * voxel_mm3 / 1000.0 for k, v in out.items()}


def _true_volumes(head: HeadPhantom, step_mm: float = 0.75) -> dict[str, float]:
    """Compartment volumes of the analytic tumour on a fine grid around it (anatomy frame)."""
    tumour = head.tumour
    assert tumour is not None
    reach = (tumour.radius_mm * 1.6 + tumour.oedema_mm) + 2.0
    geometry = Geometry.covering(
        tumour.center_mm, (2 * reach, 2 * reach, 2 * reach), (step_mm, step_mm), step_mm
    )
    base = HeadPhantom(
        head.center_mm, head.semi_axes_mm, head.tumour, head.signal_jitter, head.bias
    )
    return compartment_volumes_ml(base.labels(geometry.affine, geometry.shape), step_mm**3)


@dataclass(frozen=True)
class HeadScan:
    """One T1c of a head pair: voxels, grid, truth labels on that grid, phantom."""

    array: np.ndarray
    affine: np.ndarray
    labels: np.ndarray
    phantom: PlacedHead
    study: StudyInfo
    true_volumes_ml: dict[str, float]


@dataclass(frozen=True)
class HeadPair:
    """A baseline and a follow-up head MR (T1c) of one patient and the compartment truth."""

    seed: int
    interval_days: int
    baseline: HeadScan
    followup: HeadScan
    motion: np.ndarray  # 4x4 baseline LPS → follow-up LPS
    scenario: str  # "progression", "response", "stable"

    def true_change_percent(self) -> dict[str, float]:
        """Per compartment, the true volume change (%) from baseline to follow-up."""
        out = {}
        for name in COMPARTMENTS:
            before = self.baseline.true_volumes_ml[name]
            after = self.followup.true_volumes_ml[name]
            out[name] = 100.0 * (after - before) / before if before > 0 else float("nan")
        return out


def _changed_tumour(rng: np.random.Generator, tumour: Tumour, scenario: str) -> Tumour:
    """The follow-up tumour: rim radius, necrotic core and oedema changed for *scenario*."""
    if scenario == "progression":
        scale = float(rng.uniform(1.2, 1.45))
    elif scenario == "response":
        scale = float(rng.uniform(0.55, 0.75))
    else:
        scale = float(rng.uniform(0.97, 1.04))
    radius = tumour.radius_mm * scale
    core = min(tumour.core_fraction * float(rng.uniform(0.85, 1.15)), max(0.0, 1.0 - 4.0 / radius))
    oedema = tumour.oedema_mm * float(rng.uniform(0.7, 1.3))
    return dataclasses.replace(tumour, radius_mm=radius, core_fraction=core, oedema_mm=oedema)


def head_pair(
    seed: int,
    *,
    scenario: str | None = None,
    extent_mm: Sequence[float] = (160.0, 160.0, 120.0),
    pixel_spacing: float = 1.0,
    slice_spacing: float = 2.0,
    interval_days: int | None = None,
    max_shift_mm: float = 20.0,
    max_rotation_deg: float = 5.0,
) -> HeadPair:
    """A baseline and a follow-up post-contrast T1 of one synthetic patient with a brain tumour.

    *scenario* ("progression": rim radius x1.2-1.45; "response": x0.55-0.75;
    "stable": x0.97-1.04; default random) sets the tumour change; the oedema
    and the necrotic core change independently (x0.7-1.3, x0.85-1.15). The
    truth volumes come from a 0.75 mm grid of the analytic phantom, the label
    maps from the scan's own grid (what a perfect segmentation would give).

    The default grid is 1 mm in-plane with 2 mm slices: clinical post-contrast
    T1 is acquired at about 1 mm in-plane (and the brain pipeline resamples
    to 1 mm); on a 2 mm in-plane grid the label maps of a necrotic core of
    under 1 mL missed its true change by up to 13 percentage points.
    """
    rng = np.random.default_rng(seed)
    if scenario is None:
        scenario = str(rng.choice(["progression", "response", "stable"]))
    interval = int(interval_days if interval_days is not None else rng.integers(42, 181))
    head = HeadPhantom.random(seed, radius_mm=(10.0, 18.0), core_fraction=(0.4, 0.65))
    assert head.tumour is not None
    later = _changed_tumour(rng, head.tumour, scenario)
    motion = random_motion(
        rng, head.center_mm, max_shift_mm=max_shift_mm, max_rotation_deg=max_rotation_deg
    )
    geometry = Geometry.covering(
        (0.0, 0.0, 0.0), extent_mm, (pixel_spacing, pixel_spacing), slice_spacing
    )
    scans = []
    for n, (tumour, placement) in enumerate(((head.tumour, np.eye(4)), (later, motion))):
        placed = PlacedHead(
            head.center_mm, head.semi_axes_mm, tumour, head.signal_jitter, head.bias, placement
        )
        image = placed.image("T1c", geometry, np.random.default_rng(seed * 2 + n + 7))
        labels = placed.labels(geometry.affine, geometry.shape)
        study_uid = generate_uid(entropy_srcs=["followup-mr", str(seed), str(n)])
        info = StudyInfo(
            study_uid,
            generate_uid(entropy_srcs=[study_uid, "frame"]),
            BASELINE_DATE + timedelta(days=interval * n),
            f"SYNFUMR{seed:05d}",
            "Synthetic^FollowUpBrain",
            f"FUMR{seed:05d}{n}",
        )
        scans.append(HeadScan(image, geometry.affine, labels, placed, info, _true_volumes(placed)))
    return HeadPair(seed, interval, scans[0], scans[1], motion, scenario)


def write_head_scan(scan: HeadScan, directory: str | os.PathLike[str], seed: int) -> MRStudyTruth:
    """One study of a head pair as a four-series MR study (T1, T1c, T2, FLAIR) under *directory*.

    The series are :func:`dicomnode.synthetic.mr.default_geometries` centred on
    the head where this study placed it (a technologist centres the field of
    view on the head), in the study's own Frame of Reference, with its
    patient, accession number and date. *seed* draws the noise.
    """
    centre = apply(scan.phantom.anatomy_to_lps, scan.phantom.center_mm)[0]
    return write_mr_study(
        directory,
        seed,
        phantom=scan.phantom,
        geometries=default_geometries(centre),
        study_instance_uid=scan.study.study_instance_uid,
        patient_id=scan.study.patient_id,
        patient_name=scan.study.patient_name,
        accession_number=scan.study.accession_number,
        study_datetime=scan.study.study_datetime,
    )


def write_head_pair(pair: HeadPair, directory: str | os.PathLike[str]) -> dict[str, MRStudyTruth]:
    """Both studies of *pair*, four series each, under ``<directory>/baseline`` and ``/followup``.

    The pair's T1c arrays are on its own (coarser) evaluation grid; these are
    the studies a scanner would send, each series simulated afresh from the
    same placed phantoms. Truth volumes: ``pair.<scan>.true_volumes_ml``.
    """
    root = Path(directory)
    return {
        "baseline": write_head_scan(pair.baseline, root / "baseline", pair.seed * 2 + 1),
        "followup": write_head_scan(pair.followup, root / "followup", pair.seed * 2 + 2),
    }
