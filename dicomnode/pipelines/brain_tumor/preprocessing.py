"""The network input from the four MR series (shared with ``train/brain``).

The four series resampled (linear, in world coordinates) onto one 1 mm grid
over the T1c's extent, in the Model Zoo channel order T1c, T1, T2, FLAIR; a
brain mask; channel-wise normalisation over the brain; MONAI's array layout;
padding to the network's multiple of 8. Training calls the same functions, so
it sees exactly what the pipeline feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.volume import Volume, isotropic_grid, resample

# Network channel order (Model Zoo metadata: 0 T1c, 1 T1, 2 T2, 3 FLAIR).
CHANNELS = ("T1c", "T1", "T2", "FLAIR")
# SegResNet halves the grid three times: inputs must be multiples of 8.
MULTIPLE = 8

MaskFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prepared:
    """Network input and the grid it lives on."""

    image: np.ndarray  # (4, columns, rows, slices) on the common grid, network layout
    mask: np.ndarray  # (slices, rows, columns) brain mask on the common grid
    affine: np.ndarray  # common grid
    frame_of_reference_uid: str


def reference_grid(reference: Volume, spacing: float = 1.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """The common grid: *reference*'s directions and extent at *spacing* mm."""
    return isotropic_grid(reference, spacing)


def network_channels(
    volumes: Mapping[str, Volume], affine: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """The four series resampled (linear) onto one grid, ``(4, slices, rows, columns)``."""
    return np.stack(
        [resample(volumes[role], affine, shape, order=1).array for role in CHANNELS]
    ).astype(np.float32)


def intensity_brain_mask(channels: np.ndarray) -> np.ndarray:
    """Intracranial mask from intensities: above-noise signal, cut off from the scalp.

    Each channel is scaled by its 99th percentile; voxels whose mean is above
    0.15 are tissue (bone and air are dark on every sequence). An erosion
    separates the scalp from the brain across the dark skull, the largest
    component is kept, dilated back and its holes filled.
    """
    from scipy import ndimage

    scaled = [c / max(float(np.percentile(c, 99)), 1e-6) for c in channels]
    tissue = np.mean(scaled, axis=0) > 0.15
    ball = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(tissue, ball, iterations=3)
    labels, count = ndimage.label(core)
    if count == 0:
        return tissue
    sizes = np.bincount(labels.ravel())[1:]
    brain = labels == (int(np.argmax(sizes)) + 1)
    brain = ndimage.binary_dilation(brain, ball, iterations=3) & tissue
    filled: np.ndarray = ndimage.binary_fill_holes(brain)
    return filled


def _normalise_channels(
    channels: np.ndarray,
    mask: np.ndarray,
    centre_and_scale: Callable[[np.ndarray], tuple[float, float]],
) -> np.ndarray:
    """Channel-wise (x - centre) / scale over the mask's non-zero voxels; zero elsewhere."""
    out = np.zeros_like(channels, dtype=np.float32)
    for c, channel in enumerate(channels):
        inside = mask & (channel != 0)
        values = channel[inside]
        if values.size == 0:
            continue
        centre, scale = centre_and_scale(values)
        out[c][inside] = (values - centre) / scale
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std()) or 1.0


def _median_iqr(values: np.ndarray) -> tuple[float, float]:
    q25, median, q75 = np.percentile(values, (25, 50, 75))
    return float(median), float(q75 - q25) / 1.349 or float(values.std()) or 1.0


def normalise_nonzero(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Channel-wise (x - mean) / std over the mask; zero outside (MONAI NormalizeIntensity nonzero)."""
    return _normalise_channels(channels, mask, _mean_std)


def normalise_robust(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Channel-wise (x - median) / (IQR / 1.349) over the mask; zero outside.

    The non-zero mean and standard deviation move with the tumour itself (a
    large bright oedema raises both), so the same tissue edge lands at other
    input values in a large tumour than in a small one. Median and
    interquartile range barely move while the tumour is a minority of the
    brain. 1.349 makes the scale a standard deviation for normal data.
    """
    return _normalise_channels(channels, mask, _median_iqr)


NORMALISATIONS = {"nonzero": normalise_nonzero, "robust": normalise_robust}


def to_network_layout(array: np.ndarray) -> np.ndarray:
    """``(C, slices, rows, columns)`` → ``(C, columns, rows, slices)``, as MONAI loads volumes."""
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1))


def from_network_layout(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_network_layout`."""
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1))


def pad_to_multiple(array: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """``(C, X, Y, Z)`` zero-padded at the far end of each axis to a *multiple*, as float32.

    What :meth:`BrainTumorPipeline.infer` feeds the network (and whole-volume
    training, which must see the same).
    """
    padded = [-(-n // multiple) * multiple for n in array.shape[1:]]
    out = np.zeros((array.shape[0], *padded), dtype=np.float32)
    out[(slice(None), *(slice(0, n) for n in array.shape[1:]))] = array
    return out
