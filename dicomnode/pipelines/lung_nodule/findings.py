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


def measure(
    volume: Volume, index: tuple[slice, slice, slice], mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """LPS centroid, long axis (mm) and volume (mm3) of a mask placed at *index*."""
    offset = np.array([s.start for s in index])
    points = volume.index_to_lps(np.argwhere(mask) + offset)
    voxel_volume = float(abs(np.linalg.det(volume.affine[:3, :3])))
    in_plane = float(np.mean(volume.spacing[1:]))
    return points.mean(axis=0), long_axis_mm(points, in_plane), float(mask.sum()) * voxel_volume


def measured(
    volume: Volume,
    index: tuple[slice, slice, slice],
    mask: np.ndarray,
    score: float,
    grown: bool = True,
) -> Detection:
    """A :class:`Detection` of *mask* (placed at *index* in *volume*) with its measurements."""
    center, long_axis, volume_mm3 = measure(volume, index, mask)
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
    detections = []
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
        detections.append(measured(volume, index, mask, float(score), grown))
    return detections


def detections_from_labels(
    volume: Volume, labels: np.ndarray, score: float = 1.0
) -> list[Detection]:
    """One :class:`Detection` per label of *labels* (on *volume*'s grid), measured as found ones.

    For masks that come from elsewhere (reference segmentations, phantoms'
    truth, another detector), so they are reported exactly as the detector's.
    """
    from scipy import ndimage

    detections = []
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        detections.append(measured(volume, (box[0], box[1], box[2]), labels[box] == number, score))
    return detections
