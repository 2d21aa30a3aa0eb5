"""Registration of a prior study onto the current one: rigid, then affine, with SimpleITK.

A prior and a current study of one patient have different Frames of
Reference: the patient lay differently on the table, breathed differently,
and the scanner's LPS coordinates of one piece of anatomy differ between
them. :func:`register` finds the mapping prior LPS → current LPS from the
pixels, on the anatomy that matters (the lungs on CT, the brain on MR), and
checks it.

Method (SimpleITK's ImageRegistrationMethod, no hand-written optimiser):

1. Masks: lungs on CT (:func:`lung_mask`: air inside the body, below
   -400 HU), brain region on MR (:func:`brain_mask`: Otsu foreground,
   holes filled, eroded by 8 mm to leave scalp and skull out).
2. Initialisation: the centres of mass of the two masks are aligned
   (``CenteredTransformInitializer``, MOMENTS), which absorbs table shifts far
   beyond the 30 mm the synthetic follow-ups use.
3. Rigid (``Euler3DTransform``), then, on the lungs, affine
   (``AffineTransform`` started from the rigid result): Mattes mutual information (32 bins, 20 % random
   samples with a fixed seed, so results are reproducible), evaluated only
   inside the current study's mask dilated by 10 mm (the lung or brain edge
   and what lies inside drive the fit, not the table or the arms); regular
   step gradient descent with scales from physical shift; three resolution
   levels (shrink 4, 2, 1; smoothing 2, 1, 0 mm). The affine stage absorbs a
   different inspiration (lungs a few percent longer or shorter), which a
   rigid transform cannot. The brain is fitted on both volumes block-averaged
   to no finer than 2 mm (:data:`BRAIN_GRID_MM`) and rigidly only: the skull
   keeps its shape between two studies, and an affine stage on the synthetic
   heads shrank them by 6-11 % (errors of 4-7 mm at the brain's edge while
   the tumour centre, near the scaling centre, stayed within 0.5 mm).
4. Quality (:func:`assess`): the prior's mask is resampled onto the current
   grid through the transform (nearest neighbour) and compared with the
   current mask (Dice) **inside the common field of view**: current voxels
   that lie inside both scans, at least the mask's erosion (8 mm on the
   brain) from either scan's edge, since a head cut by one scan's edge is
   cut (and its mask eroded from the cut) elsewhere in the other. A
   registration is *poor* when the Dice is below :data:`POOR_DICE` (0.90),
   when a mask is empty, when under half the current mask lies in the common
   field of view, or when the affine part is implausible for one patient (a
   rotation over 15 degrees, or a scale outside 0.8-1.25 on the lungs,
   0.95-1.05 on the brain). A poor registration carries a sentence saying
   why; callers report it and must not use its mapping silently.

Measured on the synthetic pairs (``docs/followup.md``): Dice after
registration 0.96-0.99 on lungs, about 0.97 on the brain region; unregistered
(identity) 0.67-0.87. The 0.90 floor sits below what a good fit gives and
above what a fit that did not move gives on these pairs; on real pairs it is
a starting value to be checked against radiologists' judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dicomnode.pipelines.volume import Volume

# Below this Dice of the registered masks a registration is poor (see the module docstring).
POOR_DICE = 0.90
# Beyond these the affine part is not one patient scanned twice.
MAX_ROTATION_DEG = 15.0
SCALE_RANGE = {"lung": (0.8, 1.25), "brain": (0.95, 1.05)}  # breathing; a skull's calibration
MIN_COMMON_VIEW = 0.5  # share of the current mask inside the common field of view
LUNG_HU = -400.0
BRAIN_EROSION_MM = 8.0
# The brain is fitted on volumes no finer than this (mm): on the 1 x 1 x 2 mm synthetic heads
# the fit at full resolution ran 30 mm off on one pair (seed 3), and a rigid fit of a whole
# brain needs no finer grid.
BRAIN_GRID_MM = (2.0, 2.0, 2.0)

Anatomy = Literal["lung", "brain"]


def _sitk() -> Any:
    import SimpleITK  # no stubs (mypy: ignore_missing_imports); imported only when registering

    return SimpleITK


@dataclass(frozen=True)
class Registration:
    """The mapping prior LPS → current LPS and how well it fits.

    Attributes
    ----------
    matrix
        4x4: ``matrix @ (x, y, z, 1)`` of a prior LPS point is its current LPS position.
    dice
        Dice of the prior mask mapped onto the current grid against the current mask.
    dice_unregistered
        The same with the identity mapping (prior LPS taken as current LPS).
    poor
        True when the mapping must not be used without a person checking it.
    reason
        A sentence: why it is poor, or what was measured when it is not.
    anatomy
        ``"lung"`` or ``"brain"``.
    """

    matrix: np.ndarray
    dice: float
    dice_unregistered: float
    poor: bool
    reason: str
    anatomy: str

    def map_points(self, points_lps: np.ndarray | Sequence[float]) -> np.ndarray:
        """``(n, 3)`` prior LPS points → current LPS."""
        points = np.atleast_2d(np.asarray(points_lps, dtype=float))
        return points @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    @property
    def rotation_deg(self) -> float:
        """Angle (degrees) of the rotation closest to the affine part."""
        return _rotation_angle(self.matrix[:3, :3])

    @property
    def scales(self) -> tuple[float, float, float]:
        """Singular values of the affine part (1 for a rigid motion)."""
        s = np.linalg.svd(self.matrix[:3, :3], compute_uv=False)
        return (float(s[0]), float(s[1]), float(s[2]))


def coarsened(volume: Volume, grid_mm: Sequence[float]) -> Volume:
    """*volume* block-averaged to at most the resolution of *grid_mm* (itself when it is as coarse).

    Each axis (slices, rows, columns) is averaged over ``floor(grid / spacing)``
    voxels (a whole number, so the new voxels tile the old ones exactly; the
    last incomplete block is dropped); the affine moves each voxel centre to its
    block's centre. Registration needs no finer grid than its figures were
    measured on (``docs/followup.md``), and the time it takes grows with the voxels.
    """
    strides = np.array(
        [max(1, int(g // s)) for g, s in zip(grid_mm, volume.spacing, strict=True)], dtype=int
    )
    if (strides == 1).all():
        return volume
    kept = np.array(volume.shape) // strides
    sk, sj, si = (int(v) for v in strides)
    nk, nj, ni = (int(v) for v in kept)
    array = (
        volume.array[: nk * sk, : nj * sj, : ni * si]
        .reshape(nk, sk, nj, sj, ni, si)
        .mean(axis=(1, 3, 5), dtype=np.float32)
    )
    affine = np.array(volume.affine, dtype=float)
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((strides - 1) / 2.0)
    affine[:3, :3] = affine[:3, :3] * strides[None, :]
    return Volume(array, affine, frame_of_reference_uid=volume.frame_of_reference_uid)


def _rotation_angle(linear: np.ndarray) -> float:
    u, _, vt = np.linalg.svd(linear)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def to_sitk(array: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image of a ``(slices, rows, columns)`` array with a (k, j, i) → LPS affine.

    SimpleITK's index is (i, j, k) (column, row, slice) and its physical space
    is LPS, as DICOM's: spacing and direction come from the affine's columns.
    """
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    columns = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (columns / spacing).ravel()])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    return image


def lung_mask(volume: Volume) -> np.ndarray:
    """Both lungs of a chest CT: air (< -400 HU) inside the body, large components only.

    Air connected to the volume's in-plane border is outside the body and
    dropped; of what remains, components over 5 % of the largest are kept
    (both lungs, not bowel gas or noise), holes (vessels, nodules) filled
    slice by slice.
    """
    from scipy import ndimage

    air = volume.array < LUNG_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return np.zeros(volume.shape, dtype=bool)
    keep = sizes >= 0.05 * sizes.max()
    keep[0] = False
    mask = keep[labels]
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return np.asarray(mask)


def brain_mask(volume: Volume, erosion_mm: float = BRAIN_EROSION_MM) -> np.ndarray:
    """The brain region of a head MR: Otsu foreground, largest part, holes filled, eroded.

    Not a skull strip: the erosion by *erosion_mm* takes scalp and skull off a
    normal head well enough to register on (dark skull and bright scalp would
    otherwise dominate the fit).
    """
    from scipy import ndimage

    sitk = _sitk()
    image = sitk.GetImageFromArray(volume.array.astype(np.float32))
    # Otsu returns 0 inside the foreground with these values: (inside=0, outside=1).
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)).astype(bool)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    head = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
    spacing = np.array(volume.spacing)
    radius = np.maximum(np.rint(erosion_mm / spacing).astype(int), 1)
    zz, yy, xx = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
    return np.asarray(ndimage.binary_erosion(head, ball))


def _dilated(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    from scipy import ndimage

    radius = np.maximum(np.rint(mm / np.array(spacing)).astype(int), 1)
    zz, yy, xx = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
    return np.asarray(ndimage.binary_dilation(mask, ball))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 0.0


def _matrix(transform: Any) -> np.ndarray:
    """4x4 of a SimpleITK matrix-offset transform (fixed → moving physical points)."""
    a = np.array(transform.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.array(transform.GetCenter(), dtype=float)
    t = np.array(transform.GetTranslation(), dtype=float)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def _mapped_mask(
    prior_mask: np.ndarray, prior: Volume, current: Volume, current_to_prior: np.ndarray
) -> np.ndarray:
    """The prior mask on the current grid: each current voxel looked up in the prior (nearest)."""
    from scipy import ndimage

    index_to_prior_index = np.linalg.inv(prior.affine) @ current_to_prior @ current.affine
    out = ndimage.affine_transform(
        prior_mask.astype(np.uint8),
        index_to_prior_index[:3, :3],
        offset=index_to_prior_index[:3, 3],
        output_shape=current.shape,
        order=0,
        mode="constant",
        cval=0,
    )
    return np.asarray(out.astype(bool))


def _stage(sitk: Any, fixed: Any, moving: Any, fixed_mask: Any, transform: Any) -> float:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, 20260)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=150,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


def register(
    prior: Volume,
    current: Volume,
    *,
    anatomy: Anatomy = "lung",
    affine: bool | None = None,
    initialise: bool = True,
) -> Registration:
    """The mapping prior LPS → current LPS, found on the lungs (CT) or the brain (MR).

    Parameters
    ----------
    prior, current
        The two studies' volumes, each in its own LPS.
    anatomy
        ``"lung"`` (CT, HU) or ``"brain"`` (MR).
    affine
        Run the affine stage after the rigid one; default: on the lungs only
        (the brain's skull keeps its shape; module docstring).
    initialise
        Align the masks' centres of mass first (default). False starts from the
        identity: for tests of what a registration outside its capture range gives.

    Returns
    -------
    Registration
        Never raises for bad input anatomy: an empty mask or a failed fit
        comes back as a poor registration with its reason.
    """
    sitk = _sitk()
    if anatomy == "brain":
        prior, current = coarsened(prior, BRAIN_GRID_MM), coarsened(current, BRAIN_GRID_MM)
    masker = lung_mask if anatomy == "lung" else brain_mask
    prior_mask, current_mask = masker(prior), masker(current)
    empty = [name for name, m in (("prior", prior_mask), ("current", current_mask)) if not m.any()]
    if empty:
        what = "lungs" if anatomy == "lung" else "brain"
        return Registration(
            np.eye(4),
            0.0,
            0.0,
            True,
            f"No {what} found in the {' and '.join(empty)} study.",
            anatomy,
        )
    if anatomy == "lung":
        # Clip to the lung window: bone and contrast above 300 HU add nothing to the fit.
        fixed_array = np.clip(current.array, -1000.0, 300.0)
        moving_array = np.clip(prior.array, -1000.0, 300.0)
    else:
        fixed_array, moving_array = current.array, prior.array
    fixed = to_sitk(fixed_array.astype(np.float32), current.affine)
    moving = to_sitk(moving_array.astype(np.float32), prior.affine)
    region = to_sitk(_dilated(current_mask, current.spacing, 10.0).astype(np.uint8), current.affine)
    rigid = sitk.Euler3DTransform()
    if initialise:
        rigid = sitk.Euler3DTransform(
            sitk.CenteredTransformInitializer(
                to_sitk(current_mask.astype(np.float32), current.affine),
                to_sitk(prior_mask.astype(np.float32), prior.affine),
                sitk.Euler3DTransform(),
                sitk.CenteredTransformInitializerFilter.MOMENTS,
            )
        )
    else:
        centre = current.index_to_lps(np.array(current.shape) / 2.0 - 0.5)[0]
        rigid.SetCenter([float(v) for v in centre])
    try:
        _stage(sitk, fixed, moving, region, rigid)
        final: Any = rigid
        if (anatomy == "lung") if affine is None else affine:
            final = sitk.AffineTransform(3)
            final.SetCenter(rigid.GetCenter())
            final.SetMatrix(rigid.GetMatrix())
            final.SetTranslation(rigid.GetTranslation())
            _stage(sitk, fixed, moving, region, final)
    except RuntimeError as error:  # SimpleITK raises RuntimeError when too few samples overlap
        masks = (prior_mask, current_mask)
        unregistered = _common_dice(prior, current, masks, np.eye(4), anatomy)[0]
        return Registration(
            np.eye(4),
            0.0,
            unregistered,
            True,
            f"The registration failed: {str(error).strip().splitlines()[-1]}",
            anatomy,
        )
    matrix = np.linalg.inv(_matrix(final))
    return assess(prior, current, matrix, anatomy, masks=(prior_mask, current_mask))


def common_view(
    prior: Volume, current: Volume, current_to_prior: np.ndarray, margin_mm: float
) -> np.ndarray:
    """Current voxels inside both scans, at least *margin_mm* from either scan's edge."""
    inside = []
    for volume in (prior, current):
        grid = np.zeros(volume.shape, dtype=bool)
        cut = np.minimum(np.ceil(margin_mm / np.array(volume.spacing)).astype(int), volume.shape)
        keep = [
            slice(int(c), max(int(n - c), int(c))) for c, n in zip(cut, volume.shape, strict=True)
        ]
        grid[tuple(keep)] = True
        inside.append(grid)
    return _mapped_mask(inside[0], prior, current, current_to_prior) & inside[1]


def _common_dice(
    prior: Volume,
    current: Volume,
    masks: tuple[np.ndarray, np.ndarray],
    current_to_prior: np.ndarray,
    anatomy: str,
) -> tuple[float, float]:
    """Dice of the mapped prior mask and the current one in the common view; the view's share.

    The share is the part of the current mask inside the common field of view.
    """
    margin = BRAIN_EROSION_MM if anatomy == "brain" else 0.0
    view = common_view(prior, current, current_to_prior, margin)
    mapped = _mapped_mask(masks[0], prior, current, current_to_prior)
    share = float((masks[1] & view).sum()) / max(int(masks[1].sum()), 1)
    return dice(mapped & view, masks[1] & view), share


def assess(
    prior: Volume,
    current: Volume,
    matrix: np.ndarray,
    anatomy: Anatomy = "lung",
    *,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
) -> Registration:
    """How well the prior → current *matrix* fits: the quality check of :func:`register`.

    For a mapping found elsewhere too (a stored registration, a test's
    deliberately wrong one). *masks*: the prior's and the current's lung or
    brain masks when already made.
    """
    if masks is None:
        if anatomy == "brain":  # on the grid register fits the brain on
            prior = coarsened(prior, BRAIN_GRID_MM)
            current = coarsened(current, BRAIN_GRID_MM)
        masker = lung_mask if anatomy == "lung" else brain_mask
        masks = (masker(prior), masker(current))
    overlap, share = _common_dice(prior, current, masks, np.linalg.inv(matrix), anatomy)
    dice_identity = _common_dice(prior, current, masks, np.eye(4), anatomy)[0]
    result = Registration(matrix, overlap, dice_identity, False, "", anatomy)
    reasons = []
    if share < MIN_COMMON_VIEW:
        reasons.append(f"only {100 * share:.0f} % of the current {anatomy} lies in both scans")
    if overlap < POOR_DICE:
        reasons.append(f"the {anatomy} masks overlap by Dice {overlap:.2f} (under {POOR_DICE:.2f})")
    if result.rotation_deg > MAX_ROTATION_DEG:
        reasons.append(f"it rotates by {result.rotation_deg:.1f} degrees")
    low, high = SCALE_RANGE[anatomy]
    if min(result.scales) < low or max(result.scales) > high:
        scales = ", ".join(f"{s:.2f}" for s in result.scales)
        reasons.append(f"it scales by {scales}")
    if reasons:
        reason = "Poor registration: " + "; ".join(reasons) + "."
        return Registration(matrix, overlap, dice_identity, True, reason, anatomy)
    return Registration(
        matrix,
        overlap,
        dice_identity,
        False,
        f"Registered on the {anatomy}: Dice {overlap:.2f} (unregistered {dice_identity:.2f}), "
        f"rotation {result.rotation_deg:.1f} degrees.",
        anatomy,
    )
