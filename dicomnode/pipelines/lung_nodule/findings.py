"""Nodules from detector boxes: a mask grown from the CT inside each box, and its measurements."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.volume import Volume


@dataclass(frozen=True)
class Detection:
    """One nodule: its box and score, its mask on the source grid, its measurements."""

    score: float
    box_index: tuple[slice, slice, slice]  # where ``mask`` sits in the source volume
    mask: np.ndarray  # bool, shape of the source volume at box_index
    center_lps: tuple[float, float, float]
    long_axis_mm: float
    volume_mm3: float
    grown: bool  # False: the ellipsoid inscribed in the box (nothing to grow from)


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    total = sum(((g - c) / max(r, 0.5)) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return np.asarray(total <= 1.0)


def grow_mask(
    hu: np.ndarray, low: np.ndarray, high: np.ndarray, threshold: float
) -> tuple[tuple[slice, slice, slice], np.ndarray, bool]:
    """A nodule mask on *hu* from a fractional (k, j, i) box [*low*, *high*].

    Voxels above *threshold* HU inside the ellipsoid of the box enlarged by 30 %
    (detector boxes of faint part-solid nodules run small; the chest wall and
    vessels farther out cannot leak in), opened once
    to cut thin attached vessels, the connected part nearest the box centre,
    holes filled. If that is empty or implausible for the box (under a fifth
    or over three times the inscribed ellipsoid), the inscribed ellipsoid
    itself is the mask (``grown`` False).
    """
    from scipy import ndimage

    center = (low + high) / 2.0
    radii = np.maximum((high - low) / 2.0, 0.5)
    outer_low = np.clip(np.floor(center - 1.3 * radii - 1).astype(int), 0, np.array(hu.shape))
    outer_high = np.clip(np.ceil(center + 1.3 * radii + 2).astype(int), 0, np.array(hu.shape))
    index = tuple(slice(int(a), int(b)) for a, b in zip(outer_low, outer_high, strict=True))
    local = hu[index]
    c = center - outer_low
    inscribed = _ellipsoid(local.shape, c, radii)
    candidate = (local > threshold) & _ellipsoid(local.shape, c, 1.3 * radii + 0.5)
    opened = ndimage.binary_opening(candidate)
    # Opening also erases nodules of a few voxels: keep the unopened mask for those.
    if opened.sum() >= 0.5 * candidate.sum():
        candidate = opened
    labels, count = ndimage.label(candidate)
    if count:
        # The component holding the above-threshold voxel closest to the box centre.
        points = np.argwhere(labels > 0)
        nearest = points[np.argmin(np.sum((points - c) ** 2, axis=1))]
        mask = ndimage.binary_fill_holes(labels == labels[tuple(nearest)])
        size, expected = int(mask.sum()), int(inscribed.sum())
        if 0.2 * expected <= size <= 3.0 * expected and size >= 2:
            return index, np.asarray(mask), True  # type: ignore[return-value]
    return index, inscribed, False  # type: ignore[return-value]


def long_axis_mm(points_mm: np.ndarray, voxel_mm: float) -> float:
    """Largest distance between mask voxel centres (at least one voxel).

    No voxel extent is added: with the default threshold, partial-volume voxels
    at the edge already count, which makes up for it (measured on the phantoms).
    """
    from scipy.spatial import ConvexHull, QhullError

    if len(points_mm) < 2:
        return voxel_mm
    with contextlib.suppress(QhullError, ValueError):  # flat masks: keep all points
        points_mm = points_mm[ConvexHull(points_mm).vertices]
    if len(points_mm) > 4000:
        points_mm = points_mm[:: len(points_mm) // 4000 + 1]
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    return max(float(np.sqrt((diff**2).sum(-1)).max()), voxel_mm)


# Partial-volume volume (:func:`partial_volume_voxels`).
SOLID_NODULE_HU = 40.0  # attenuation assumed for a nodule too small to show its own
MIN_CORE_VOXELS = 4  # core voxels (mask eroded once) needed to measure the nodule's own level
MIN_CONTRAST_HU = 150.0  # below this nodule-to-parenchyma contrast: the voxel count
SHELL_VOXELS = 3  # the parenchyma level is read this many voxels around the mask


def _placed(
    shape: tuple[int, ...], index: tuple[slice, slice, slice], margin: int
) -> tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]:
    """*index* grown by *margin* voxels (clipped to *shape*), and *index* inside that box."""
    outer = tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(index, shape, strict=True)
    )
    inner = tuple(
        slice(s.start - o.start, s.stop - o.start) for s, o in zip(index, outer, strict=True)
    )
    return outer, inner  # type: ignore[return-value]


def _levels(local: np.ndarray, mask: np.ndarray, shell: np.ndarray) -> tuple[float, float] | None:
    """Nodule and parenchyma HU around *mask*, or None when they cannot be told apart."""
    from scipy import ndimage

    core = ndimage.binary_erosion(mask)
    # A small nodule has no voxel free of partial volume: its peak understates its
    # attenuation, so a solid nodule's nominal level is used instead.
    nodule = float(np.median(local[core])) if core.sum() >= MIN_CORE_VOXELS else SOLID_NODULE_HU
    around = local[shell]
    if around.size < 8:
        return None
    # Parenchyma: the shell's voxels well below the nodule (vessels, wall and other
    # nodules in the shell lie above the midpoint), their median (noise averages out).
    midpoint = (float(np.percentile(around, 10)) + nodule) / 2.0
    lung = around[around < midpoint]
    if lung.size < 8:
        return None
    background = float(np.median(lung))
    if nodule - background < MIN_CONTRAST_HU:
        return None
    return nodule, background


def _elsewhere(
    fraction: np.ndarray,
    placed: np.ndarray,
    rim: np.ndarray,
    nodules: np.ndarray | None,
    outer: tuple[slice, slice, slice],
) -> np.ndarray:
    """Voxels of other structures near the mask: dense parts reaching past the rim, other nodules."""
    from scipy import ndimage

    # The nodule's own edge voxels stay within the rim; a vessel or the chest wall
    # touching the nodule carries on beyond it.
    labels, _ = ndimage.label((fraction > 0.5) & ~placed, np.ones((3, 3, 3), dtype=bool))
    reaching = np.unique(labels[~placed & ~rim])
    found = np.isin(labels, reaching[reaching > 0])
    if nodules is not None:
        found |= nodules[outer] & ~placed
    return found


def partial_volume_voxels(
    hu: np.ndarray,
    index: tuple[slice, slice, slice],
    mask: np.ndarray,
    nodules: np.ndarray | None = None,
) -> float:
    """Nodule volume in voxels from the CT intensities in and around *mask* (at *index*).

    Each voxel of the mask and of its one-voxel (26-neighbour) rim contributes
    its nodule fraction ``(HU - parenchyma) / (nodule - parenchyma)``, at most
    1: on a real scanner the blur spreads a nodule's attenuation into the rim
    but keeps its sum, so the sum counts the nodule's volume without the
    voxel count's rounding of every edge voxel to 0 or 1. The fraction is not
    clipped at 0: the parenchyma's noise then averages out over the rim
    instead of adding 0.4 sigma a voxel.

    Levels: the nodule's is the median of the mask's core (the mask eroded
    once) when it has ``MIN_CORE_VOXELS`` voxels, else ``SOLID_NODULE_HU`` (a
    small nodule is assumed solid); the parenchyma's is the median of the
    voxels below the midpoint of the two levels within ``SHELL_VOXELS`` of the
    mask. Rim voxels that belong to something else are left out with their
    neighbours: voxels of *nodules* (bool, *hu*'s shape: the voxels of all
    nodules found, this one included) outside this mask, and dense parts
    (above half the nodule level) outside the mask that reach past the rim
    (a vessel, the chest wall; the nodule's own edge stays within the rim).
    Without contrast between the levels, or without parenchyma around the
    mask, the voxel count is returned.

    Assumptions: the nodule sits in aerated parenchyma of one level (the
    shell's median; a nodule wholly inside consolidation or on the pleura is
    measured against what parenchyma the shell has), the scanner's blur is
    within one voxel, and a small nodule is solid. On the follow-up phantoms
    it recovers the rendered attenuation integral within about 1 % (mean)
    and 4 % (sd); see docs/followup.md for what that means against their
    sphere volumes.
    """
    from scipy import ndimage

    outer, inner = _placed(hu.shape, index, SHELL_VOXELS + 1)
    local = hu[outer].astype(np.float64)
    placed = np.zeros(local.shape, dtype=bool)
    placed[inner] = mask
    cube = np.ones((3, 3, 3), dtype=bool)
    rim = ndimage.binary_dilation(placed, cube) & ~placed
    shell = ndimage.binary_dilation(placed, cube, iterations=SHELL_VOXELS) & ~placed & ~rim
    levels = _levels(local, placed, shell)
    if levels is None:
        return float(mask.sum())
    nodule, background = levels
    fraction = (local - background) / (nodule - background)
    rim &= ~ndimage.binary_dilation(_elsewhere(fraction, placed, rim, nodules, outer), cube)
    inside = np.clip(fraction[placed], 0.0, 1.0).sum()
    return float(inside + np.minimum(fraction[rim], 1.0).sum())


def measure(
    volume: Volume,
    index: tuple[slice, slice, slice],
    mask: np.ndarray,
    nodules: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float]:
    """LPS centroid, long axis (mm) and volume (mm3) of a mask placed at *index*.

    The volume is the partial-volume estimate of :func:`partial_volume_voxels`
    (*volume* in HU; *nodules*: the voxels of all nodules found), not the
    voxel count: the SEG keeps the mask itself.
    """
    offset = np.array([s.start for s in index])
    points = volume.index_to_lps(np.argwhere(mask) + offset)
    voxel_volume = float(abs(np.linalg.det(volume.affine[:3, :3])))
    in_plane = float(np.mean(volume.spacing[1:]))
    voxels = partial_volume_voxels(volume.array, index, mask, nodules)
    return points.mean(axis=0), long_axis_mm(points, in_plane), voxels * voxel_volume


def measured(
    volume: Volume,
    index: tuple[slice, slice, slice],
    mask: np.ndarray,
    score: float,
    grown: bool = True,
    nodules: np.ndarray | None = None,
) -> Detection:
    """A :class:`Detection` of *mask* (placed at *index* in *volume*) with its measurements.

    *nodules*: the voxels of all nodules found (bool, *volume*'s shape), kept
    out of each other's partial-volume rim.
    """
    center, long_axis, volume_mm3 = measure(volume, index, mask, nodules)
    return Detection(
        score,
        index,
        mask,
        (float(center[0]), float(center[1]), float(center[2])),
        long_axis,
        volume_mm3,
        grown,
    )


def find_nodules(
    boxes: np.ndarray,
    scores: np.ndarray,
    grid_affine: np.ndarray,
    volume: Volume,
    *,
    report_threshold: float,
    max_nodules: int,
    mask_threshold_hu: float,
) -> list[Detection]:
    """Detector boxes (``xyzxyz`` on the RAS grid) → nodules on the source volume, best first.

    Boxes under *report_threshold* are dropped, at most *max_nodules* kept; a
    box whose mask lies mostly on a nodule already found is the same nodule
    seen at another size (boxes of different sizes survive NMS by their low IoU).
    """
    from dicomnode.pipelines.lung_nodule.preprocessing import boxes_to_lps

    keep = np.argsort(-scores)
    keep = keep[scores[keep] >= report_threshold][:max_nodules]
    _, corners = boxes_to_lps(boxes[keep], grid_affine)
    masks = []
    claimed = np.zeros(volume.shape, dtype=bool)
    for score, corner in zip(scores[keep], corners, strict=True):
        ends = volume.lps_to_index(np.array([corner[:3], corner[3:]]))
        low, high = ends.min(axis=0), ends.max(axis=0)
        index, mask, grown = grow_mask(volume.array, low, high, mask_threshold_hu)
        if not mask.any():
            continue  # the box lies outside the scanned volume
        if np.count_nonzero(claimed[index] & mask) > 0.3 * np.count_nonzero(mask):
            continue
        claimed[index] |= mask
        masks.append((index, mask, float(score), grown))
    # Measured once all are found, so no nodule's rim counts a neighbour found after it.
    return [measured(volume, *found, nodules=claimed) for found in masks]


def detections_from_labels(
    volume: Volume, labels: np.ndarray, score: float = 1.0
) -> list[Detection]:
    """One :class:`Detection` per label of *labels* (on *volume*'s grid), measured as found ones.

    For masks that come from elsewhere (reference segmentations, phantoms'
    truth, another detector), so they are reported exactly as the detector's.
    """
    from scipy import ndimage

    detections = []
    nodules = labels > 0
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        index = (box[0], box[1], box[2])
        detections.append(measured(volume, index, labels[box] == number, score, nodules=nodules))
    return detections
