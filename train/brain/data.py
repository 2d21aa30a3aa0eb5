"""Training cases: synthetic head MR phantoms put through the pipeline's own preprocessing.

Each case is a random :class:`~dicomnode.synthetic.mr.HeadPhantom` sampled on four
series grids of random spacing (as DICOM would deliver them), then resampled,
masked and normalised by the same functions the ``brain_tumor`` pipeline uses,
so the network is trained on exactly what it is fed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.brain_tumor.findings import region_targets
from dicomnode.pipelines.brain_tumor.preprocessing import (
    NORMALISATIONS,
    intensity_brain_mask,
    network_channels,
    pad_to_multiple,
    reference_grid,
    to_network_layout,
)
from dicomnode.pipelines.volume import Volume
from dicomnode.synthetic.mr import HeadPhantom, random_geometries, simulate_series

THIN = {"radius_mm": (6.0, 14.0), "oedema_mm": (4.0, 7.0)}
"""Phantom options of a small tumour in thin oedema (training, calibration, evaluation)."""


@dataclass
class Case:
    """One preprocessed case in network layout ``(C, columns, rows, slices)``."""

    image: np.ndarray  # (4, X, Y, Z) float16, normalised
    target: np.ndarray  # (3, X, Y, Z) uint8: TC, WT, ET
    seed: int


def make_case(
    seed: int,
    tumour_probability: float = 0.9,
    radius_mm: tuple[float, float] = (8.0, 20.0),
    core_fraction: tuple[float, float] | None = None,
    oedema_mm: tuple[float, float] = (4.0, 14.0),
    normalization: str = "nonzero",
    native_share: float = 0.0,
) -> Case:
    """A random phantom, preprocessed like the pipeline.

    It has a tumour with *tumour_probability*; *radius_mm*, *core_fraction*
    and *oedema_mm* go to :meth:`HeadPhantom.random`; *normalization* names the pipeline's
    normalisation (the bundle's ``normalization``); *native_share* is the chance of a
    1 mm isotropic T1c (:func:`~dicomnode.synthetic.mr.random_geometries`).
    """
    rng = np.random.default_rng(seed)
    phantom = HeadPhantom.random(
        seed,
        tumour=bool(rng.random() < tumour_probability),
        radius_mm=radius_mm,
        core_fraction=core_fraction,
        oedema_mm=oedema_mm,
    )
    series = simulate_series(phantom, random_geometries(rng, native_share), seed + 1)
    volumes = {role: Volume(array, affine) for role, (array, affine) in series.items()}
    affine, shape = reference_grid(volumes["T1c"], 1.0)
    channels = network_channels(volumes, affine, shape)
    mask = intensity_brain_mask(channels)
    image = to_network_layout(NORMALISATIONS[normalization](channels, mask))
    labels = phantom.labels(affine, shape) * mask
    target = to_network_layout(region_targets(labels))
    return Case(image.astype(np.float16), target.astype(np.uint8), seed)


def random_crop(
    case: Case,
    size: int,
    rng: np.random.Generator,
    tumour_bias: float = 0.7,
    core_bias: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``-cube crop, centred near a tumour voxel with probability *tumour_bias*.

    With probability *core_bias* such a crop is centred near a necrotic voxel
    instead, where the case has any: necrosis is a few percent of the tumour
    voxels, too rare to be learnt from tumour-centred crops alone.
    """
    spatial = np.array(case.image.shape[1:])
    whole = case.target[1]
    necrotic = (case.target[0] > 0) & (case.target[2] == 0)
    if whole.any() and rng.random() < tumour_bias:
        use_core = core_bias > 0 and necrotic.any() and rng.random() < core_bias
        voxels = np.argwhere(necrotic if use_core else whole)
        centre = voxels[rng.integers(len(voxels))] + rng.integers(-size // 4, size // 4 + 1, 3)
    else:
        centre = rng.integers(size // 2, np.maximum(spatial - size // 2, size // 2 + 1))
    start = np.clip(centre - size // 2, 0, np.maximum(spatial - size, 0))
    box = tuple(slice(int(s), int(s) + size) for s in start)
    image = np.zeros((4, size, size, size), dtype=np.float32)
    target = np.zeros((3, size, size, size), dtype=np.float32)
    cut_image = case.image[(slice(None), *box)]
    cut_target = case.target[(slice(None), *box)]
    fit = tuple(slice(0, n) for n in cut_image.shape[1:])
    image[(slice(None), *fit)] = cut_image
    target[(slice(None), *fit)] = cut_target
    return image, target


def whole_volume(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The whole case, padded exactly as the pipeline pads it (:func:`pad_to_multiple`).

    SegResNet's group normalisation takes its statistics over the whole input,
    so what surrounds the tumour changes the features: a network trained on
    tumour-centred crops and run on the whole brain draws small tumours too
    wide and large ones too narrow. Whole volumes give it the inference's context.
    """
    return pad_to_multiple(case.image), pad_to_multiple(case.target)


def augment(
    image: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    scale_jitter: float = 0.1,
    shift_jitter: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and channel-wise intensity scale/shift.

    Contrast varies between scanners, and the non-zero normalisation itself
    depends on the tumour: a large bright oedema raises the brain's mean and
    spread, so the same tissue boundary lands at other normalised values in a
    large tumour than in a small one. Scale is drawn log-uniformly within
    ``1 ± scale_jitter``, shift uniformly within ``± shift_jitter``.
    """
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            image, target = np.flip(image, axis), np.flip(target, axis)
    bound = np.log1p(scale_jitter)
    scale = np.exp(rng.uniform(-bound, bound, (4, 1, 1, 1))).astype(np.float32)
    shift = rng.uniform(-shift_jitter, shift_jitter, (4, 1, 1, 1)).astype(np.float32)
    image = np.where(image != 0, image * scale + shift, 0.0).astype(np.float32)
    return np.ascontiguousarray(image), np.ascontiguousarray(target)
