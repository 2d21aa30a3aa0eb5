"""Tumour labels from the network's TC/WT/ET probabilities, and their volumes.

Probabilities go back onto the T1c series' own grid (linear), are thresholded
per region (the bundle's calibrated ``thresholds``, else 0.5), and become
exclusive labels (enhancing tumour, necrotic core, oedema); the
threshold-disagreement layer of "necrosis" outside the enhancing rim goes
back to oedema, regions under ``min_component_ml`` and oedema-only regions
are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dicomnode.pipelines.brain_tumor.preprocessing import Prepared, from_network_layout
from dicomnode.pipelines.volume import Volume, resample

# Network output channels.
REGIONS = ("TC", "WT", "ET")
# Exclusive labels of the result, in SEG segment order.
ENHANCING, NECROSIS, OEDEMA = 1, 2, 3
LABEL_NAMES = {ENHANCING: "Enhancing tumour", NECROSIS: "Necrotic core", OEDEMA: "Oedema"}


@dataclass(frozen=True)
class Findings:
    """Exclusive labels on the T1c grid and the volume of each label (mL)."""

    labels: np.ndarray
    volumes_ml: Mapping[int, float]

    @property
    def whole_tumour_ml(self) -> float:
        """Enhancing + necrotic + oedema."""
        return float(sum(self.volumes_ml.values()))


def region_targets(labels: np.ndarray) -> np.ndarray:
    """Exclusive labels → the three overlapping BraTS regions TC, WT, ET (training targets)."""
    tumour_core = (labels == ENHANCING) | (labels == NECROSIS)
    whole = labels > 0
    return np.stack([tumour_core, whole, labels == ENHANCING]).astype(np.float32)


def exclusive_labels(regions: np.ndarray) -> np.ndarray:
    """Binary TC, WT, ET → one label map: ET wins, then core (necrosis), then whole (oedema).

    The same rule as the Model Zoo bundle's postprocessing (4, 1, 2 there).
    """
    tc, wt, et = (regions[i] > 0 for i in range(3))
    out = np.zeros(tc.shape, dtype=np.uint8)
    out[wt] = OEDEMA
    out[tc] = NECROSIS
    out[et] = ENHANCING
    return out


def remove_small_components(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop connected tumour regions smaller than *min_voxels* (isolated false positives)."""
    from scipy import ndimage

    if min_voxels <= 0 or not labels.any():
        return labels
    components, count = ndimage.label(labels > 0)
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    out = labels.copy()
    out[small[components]] = 0
    return out


def core_rim_to_oedema(labels: np.ndarray) -> np.ndarray:
    """Necrotic-core voxels in the one-voxel layer outside the enhancing rim → oedema.

    The TC and ET thresholds place the tumour's outer edge (the same edge in
    both regions when the core is enclosed) up to a voxel apart; where TC
    reaches further, :func:`exclusive_labels` makes that layer "TC but not
    ET", i.e. necrosis wrapped round the outside of the tumour (0.2-0.5 mL on
    every solid phantom tumour, mostly oedema in truth). A necrotic voxel is
    in that layer when it touches the enhancing tumour and the tissue outside
    the core (oedema or nothing) and lies outside the rim's filled hull.
    Necrosis inside the rim, and necrotic regions away from it (a
    non-enhancing core), are kept. The layer takes the next label down,
    oedema, so the whole tumour does not change.
    """
    from scipy import ndimage

    necrosis = labels == NECROSIS
    enhancing = labels == ENHANCING
    if not necrosis.any() or not enhancing.any():
        return labels
    outside_core = (labels == OEDEMA) | (labels == 0)
    touching = np.ones((3, 3, 3), dtype=bool)  # edges and corners too: a one-voxel layer
    layer = (
        necrosis
        & ndimage.binary_dilation(enhancing, touching)
        & ndimage.binary_dilation(outside_core, touching)
        & ~ndimage.binary_fill_holes(enhancing)
    )
    out = labels.copy()
    out[layer] = OEDEMA
    return out


def drop_regions_without_core(labels: np.ndarray) -> np.ndarray:
    """Drop connected tumour regions with no tumour core (enhancing or necrotic voxel).

    Oedema is the reaction around a tumour; an oedema-only region is, for this
    model, a false positive (seen at CSF borders on thick-slice FLAIR).
    """
    from scipy import ndimage

    components, count = ndimage.label(labels > 0)
    if count == 0:
        return labels
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(components[(labels == ENHANCING) | (labels == NECROSIS)])] = True
    keep[0] = False
    return np.where(keep[components], labels, 0).astype(labels.dtype)


def probabilities_on_grid(raw: np.ndarray, prepared: Prepared, target: Volume) -> np.ndarray:
    """TC/WT/ET probabilities (network layout, common grid) → *target*'s grid, linear.

    The probabilities, not thresholded labels, are resampled, so that partial
    voxels are decided on the target grid itself.
    """
    regions = from_network_layout(raw) * prepared.mask[None]
    return np.stack(
        [
            resample(Volume(r, prepared.affine), target.affine, target.shape, order=1).array
            for r in regions
        ]
    )


def labels_from_probabilities(
    probabilities: np.ndarray,
    thresholds: Sequence[float],
    *,
    voxel_mm3: float,
    min_component_ml: float,
    require_core: bool,
    trim_core_rim: bool = True,
) -> np.ndarray:
    """TC/WT/ET probabilities → exclusive labels (per-region thresholds), cleaned up."""
    regions = np.stack([probabilities[i] > thresholds[i] for i in range(3)])
    labels = exclusive_labels(regions)
    if trim_core_rim:
        labels = core_rim_to_oedema(labels)
    labels = remove_small_components(labels, int(min_component_ml * 1000 / voxel_mm3))
    if require_core:
        labels = drop_regions_without_core(labels)
    return labels
