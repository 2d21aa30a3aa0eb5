"""Detector input from a CT volume, and boxes back to patient space (shared with ``train/lung``).

What the Model Zoo bundle's raw-data path does (``Orientationd`` RAS,
``Spacingd`` to the bundle's ``pixdim``, ``ScaleIntensityRanged``), but on
our own grid, so boxes map back to the source slices exactly; and the box
conversions ``AffineBoxToWorldCoordinated`` does, in LPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dicomnode.pipelines.volume import Volume, resample


def ras_grid_affine(origin_lps: Sequence[float], pixdim: Sequence[float]) -> np.ndarray:
    """Affine (k, j, i) → LPS of a RAS-oriented grid: i runs to R, j to A, k to S.

    ``Volume(array, affine).to_ras_array()`` is then the ``(x, y, z)`` array
    MONAI's ``Orientationd(axcodes="RAS")`` + ``Spacingd(pixdim)`` would give,
    and ``pixdim`` is ``(x, y, z)`` spacing in mm as in ``Spacingd``.
    """
    px, py, pz = (float(v) for v in pixdim)
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, pz)  # slices: towards superior (+z in LPS)
    affine[:3, 1] = (0.0, -py, 0.0)  # rows: towards anterior (-y in LPS)
    affine[:3, 2] = (-px, 0.0, 0.0)  # columns: towards the right (-x in LPS)
    affine[:3, 3] = np.asarray(origin_lps, dtype=float)
    return affine


def ras_grid(volume: Volume, pixdim: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A RAS grid at *pixdim* covering every voxel centre of *volume* (any orientation)."""
    shape = np.array(volume.shape) - 1
    corners = np.array(
        [[k, j, i] for k in (0, shape[0]) for j in (0, shape[1]) for i in (0, shape[2])]
    )
    points = volume.index_to_lps(corners)
    low, high = points.min(axis=0), points.max(axis=0)
    px, py, pz = (float(v) for v in pixdim)
    size = (
        int(round((high[2] - low[2]) / pz)) + 1,
        int(round((high[1] - low[1]) / py)) + 1,
        int(round((high[0] - low[0]) / px)) + 1,
    )
    # Voxel (0, 0, 0) is the most right, anterior and inferior one: largest LPS x and y.
    return ras_grid_affine((high[0], high[1], low[2]), pixdim), size


def scale_intensity(array: np.ndarray, a_min: float, a_max: float) -> np.ndarray:
    """``ScaleIntensityRanged(a_min, a_max, b_min=0, b_max=1, clip=True)``."""
    scaled = (array.astype(np.float32) - np.float32(a_min)) / np.float32(a_max - a_min)
    return np.clip(scaled, 0.0, 1.0)


def network_input(
    volume: Volume, pixdim: Sequence[float], window: tuple[float, float]
) -> tuple[np.ndarray, Volume]:
    """The detector's ``(x, y, z)`` input and the RAS-grid volume (in HU) it came from."""
    affine, shape = ras_grid(volume, pixdim)
    grid = resample(volume, affine, shape, order=1, cval=-1024.0)
    return scale_intensity(grid.to_ras_array(), *window), grid


def boxes_to_lps(boxes: np.ndarray, grid_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``xyzxyz`` boxes in a RAS grid's index space → (LPS centres, LPS corner boxes).

    The same mapping as MONAI's ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``
    followed by the RAS → LPS sign change: box coordinates are voxel indices.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    grid = Volume(np.empty((0, 0, 0)), grid_affine)
    low = grid.index_to_lps(boxes[:, [2, 1, 0]])
    high = grid.index_to_lps(boxes[:, [5, 4, 3]])
    return (low + high) / 2.0, np.concatenate([np.minimum(low, high), np.maximum(low, high)], 1)


def lps_to_boxes(centers: np.ndarray, diameters: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Truth spheres (LPS centre, diameter mm) → ``xyzxyz`` boxes in a RAS grid's index space."""
    centers = np.atleast_2d(np.asarray(centers, dtype=float))
    index = (centers - grid_affine[:3, 3]) @ np.linalg.inv(grid_affine[:3, :3]).T
    xyz = index[:, [2, 1, 0]]
    spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)[[2, 1, 0]]
    half = np.asarray(diameters, dtype=float)[:, None] / 2.0 / spacing[None, :]
    return np.concatenate([xyz - half, xyz + half], axis=1).astype(np.float32)
