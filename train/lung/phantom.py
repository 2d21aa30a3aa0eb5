"""Synthetic chest-CT samples for training and evaluating the nodule detector.

Each sample is a random :class:`~dicomnode.synthetic.ct.ChestPhantom` (body and
lung sizes, lung density, vessel tree, 0-4 solid or part-solid nodules of
4-30 mm) rendered at a random native spacing (in-plane 0.6-1.2 mm, slices
1-2.5 mm) with random noise, then resampled to the detector's RAS grid with
the pipeline's own :func:`~dicomnode.pipelines.lung_nodule.network_input`
path, so training sees what inference sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.lung_nodule.preprocessing import (
    lps_to_boxes,
    ras_grid_affine,
    scale_intensity,
)
from dicomnode.pipelines.volume import Volume, resample
from dicomnode.synthetic.ct import ChestPhantom, Nodule, lung_mask_mm, render_chest, vessel_tree


@dataclass(frozen=True)
class Sample:
    """One detector input with its truth, in the RAS grid's ``(x, y, z)`` index space."""

    image: np.ndarray  # (x, y, z) float32 in 0..1
    boxes: np.ndarray  # (n, 6) xyzxyz
    diameters: np.ndarray  # (n,) mm
    centers_lps: np.ndarray  # (n, 3) mm
    affine: np.ndarray  # RAS grid (k, j, i) → LPS


def random_phantom(rng: np.random.Generator, center_z: float = 0.0) -> ChestPhantom:
    """A chest of random size and lung density with its own vessel tree (no nodules yet)."""
    offset = float(rng.uniform(65.0, 85.0))
    return ChestPhantom(
        center_z_mm=center_z,
        body_axes_mm=(float(rng.uniform(145.0, 170.0)), float(rng.uniform(95.0, 120.0))),
        fat_mm=float(rng.uniform(4.0, 20.0)),
        lung_offset_mm=offset,
        lung_axes_mm=(
            float(rng.uniform(50.0, 62.0)),
            float(rng.uniform(70.0, 90.0)),
            float(rng.uniform(110.0, 160.0)),
        ),
        lung_hu=float(rng.uniform(-900.0, -780.0)),
        vessels=vessel_tree(
            rng, center_z_mm=center_z, lung_offset_mm=offset, trunks=int(rng.integers(4, 8))
        ),
    )


def random_diameter(rng: np.random.Generator) -> float:
    """4-30 mm, log-uniform: small nodules are the common ones."""
    return float(np.exp(rng.uniform(np.log(4.0), np.log(30.0))))


def place_nodules(
    rng: np.random.Generator, phantom: ChestPhantom, count: int, near: np.ndarray | None = None
) -> tuple[Nodule, ...]:
    """*count* non-overlapping nodules inside the lungs (around *near* when given)."""
    nodules: list[Nodule] = []
    for _ in range(count * 50):
        if len(nodules) == count:
            break
        diameter = random_diameter(rng)
        if near is not None and not nodules:
            center = near + rng.uniform(-25.0, 25.0, size=3)
        else:
            side = rng.choice([-1.0, 1.0])
            center = np.array(
                [
                    side * phantom.lung_offset_mm + rng.uniform(-55.0, 55.0),
                    rng.uniform(-85.0, 80.0),
                    phantom.center_z_mm + rng.uniform(-90.0, 90.0),
                ]
            )
        # Centres inside the lung; the larger ones may touch the pleura (juxtapleural).
        if lung_mask_mm(phantom, *center) > 1.0 - 0.2 * diameter / phantom.lung_axes_mm[0]:
            continue
        if any(
            np.linalg.norm(center - np.array(n.center_mm)) < (diameter + n.diameter_mm) / 2 + 4
            for n in nodules
        ):
            continue
        part_solid = diameter >= 8.0 and rng.random() < 0.3
        nodules.append(
            Nodule(
                (float(center[0]), float(center[1]), float(center[2])),
                diameter,
                hu=float(rng.uniform(-20.0, 80.0)),
                solid_diameter_mm=diameter * float(rng.uniform(0.3, 0.6)) if part_solid else None,
                ground_glass_hu=float(rng.uniform(-650.0, -450.0)),
            )
        )
    return tuple(nodules)


def render_region(
    rng: np.random.Generator,
    phantom: ChestPhantom,
    low_lps: np.ndarray,
    high_lps: np.ndarray,
    spacing: Sequence[float] | None = None,
) -> Volume:
    """The phantom rendered at a random native spacing over an LPS box, as a Volume."""
    if spacing is None:
        spacing = (float(rng.uniform(1.0, 2.5)), *([float(rng.uniform(0.6, 1.2))] * 2))
    steps = np.asarray(spacing, dtype=float)
    margin = 2.0 * steps
    origin = low_lps - margin[::-1]
    shape = np.ceil((high_lps - low_lps + 2 * margin[::-1]) / steps[::-1]).astype(int)[::-1] + 1
    hu = render_chest(
        phantom,
        origin.tolist(),
        steps.tolist(),
        shape,
        noise_hu=float(rng.uniform(8.0, 40.0)),
        seed=int(rng.integers(2**31)),
    )
    affine = np.eye(4)
    affine[:3, :3] = np.diag(steps[::-1])[:, ::-1]  # (k, j, i) → (z, y, x)
    affine[:3, 3] = origin
    return Volume(hu, affine)


def _sample(
    phantom: ChestPhantom,
    volume: Volume,
    origin: np.ndarray,
    size_xyz: Sequence[int],
    pixdim: Sequence[float],
    window: tuple[float, float],
) -> Sample:
    affine = ras_grid_affine([float(v) for v in origin], pixdim)
    shape = (int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0]))
    grid = resample(volume, affine, shape, order=1, cval=-1024.0)
    image = scale_intensity(grid.to_ras_array(), *window)
    centers = np.array([n.center_mm for n in phantom.nodules]).reshape(-1, 3)
    diameters = np.array([n.diameter_mm for n in phantom.nodules], dtype=float)
    boxes = lps_to_boxes(centers, diameters, affine) if len(centers) else np.zeros((0, 6))
    # Keep the nodules whose centre lies in the image; clip their boxes to it.
    mids = (boxes[:, :3] + boxes[:, 3:]) / 2
    keep = np.all((mids >= 0) & (mids <= np.array(size_xyz) - 1), axis=1)
    boxes = np.clip(boxes[keep], 0, np.tile(np.array(size_xyz, dtype=float), 2))
    return Sample(image, boxes.astype(np.float32), diameters[keep], centers[keep], affine)


def training_sample(
    seed: int, size_xyz: Sequence[int], pixdim: Sequence[float], window: tuple[float, float]
) -> Sample:
    """A random patch of *size_xyz* voxels, usually around a nodule, sometimes without one."""
    rng = np.random.default_rng(seed)
    phantom = random_phantom(rng)
    side = rng.choice([-1.0, 1.0])
    near = np.array(
        [
            side * phantom.lung_offset_mm + rng.uniform(-35, 35),
            rng.uniform(-60, 55),
            rng.uniform(-70, 70),
        ]
    )
    count = 0 if rng.random() < 0.15 else int(rng.integers(1, 4))
    phantom = ChestPhantom(
        **{**phantom.__dict__, "nodules": place_nodules(rng, phantom, count, near)}
    )
    extent = np.array(size_xyz, dtype=float) * np.asarray(pixdim, dtype=float)  # x, y, z mm
    centre = near + rng.uniform(-0.25, 0.25, size=3) * extent
    low_ras_corner = centre - extent / 2  # in the x/y/z mm sense, converted below
    # RAS grid voxel (0,0,0): largest LPS x and y, smallest z.
    origin = np.array([centre[0] + extent[0] / 2, centre[1] + extent[1] / 2, low_ras_corner[2]])
    volume = render_region(rng, phantom, centre - extent / 2, centre + extent / 2)
    return _sample(phantom, volume, origin, size_xyz, pixdim, window)


def evaluation_case(
    seed: int, pixdim: Sequence[float], window: tuple[float, float], length_mm: float = 200.0
) -> tuple[Sample, ChestPhantom]:
    """A whole chest scan (360 mm field of view, *length_mm* long) with 1-4 nodules."""
    rng = np.random.default_rng(seed)
    phantom = random_phantom(rng)
    count = int(rng.integers(1, 5))
    nodules = [
        n for n in place_nodules(rng, phantom, count) if abs(n.center_mm[2]) < length_mm / 2 - 8
    ]
    phantom = ChestPhantom(**{**phantom.__dict__, "nodules": tuple(nodules)})
    half = np.array([180.0, 180.0, length_mm / 2])
    volume = render_region(rng, phantom, -half, half)
    size = np.floor(2 * half / np.asarray(pixdim)).astype(int)
    origin = np.array([half[0], half[1], -half[2]])
    return _sample(phantom, volume, origin, size, pixdim, window), phantom
