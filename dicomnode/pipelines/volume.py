"""Series to volume: voxels with the exact patient geometry they came from.

A :class:`Volume` holds a ``(slices, rows, columns)`` array and the 4x4 affine
that maps an index ``(k, j, i, 1)`` (slice, row, column) to patient
coordinates (LPS, mm). Results computed on the array map back to the source
slices voxel-exact, because ``source[k]`` is the dataset of slice ``k``.

:func:`load_series` reads single-frame slices or one enhanced multi-frame
instance, in any transfer syntax pydicom can decode (JPEG baseline and
lossless, JPEG-LS, JPEG 2000, RLE, deflate), sorts slices along the slice
normal and refuses what a model cannot use as a volume (gantry tilt, missing
slices, mixed sizes or orientations) with a sentence saying which. It applies
the modality rescale (slope/intercept) so CT voxels are in HU.

:func:`resample` puts a volume onto another grid in world coordinates (the
same Frame of Reference), which is how multi-series pipelines align series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread

from dicomnode.pipelines.base import PipelineError

# Largest difference of direction cosines still called "the same orientation".
_ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Volume:
    """A regular 3D image in patient space.

    Attributes
    ----------
    array
        Voxels, shape ``(slices, rows, columns)``; float32 after rescale.
    affine
        4x4 matrix: ``affine @ (k, j, i, 1)`` is the LPS position (mm) of voxel
        ``array[k, j, i]``.
    source
        The source datasets, one per slice in array order, for single-frame
        series; the single enhanced instance (once) for multi-frame ones.
    frame_of_reference_uid
        The Frame of Reference the affine is in ("" when absent).
    frame_numbers
        For a multi-frame source: the 1-based frame number of each slice, in
        array order (frames need not be stored in slice order); empty otherwise.
    """

    array: np.ndarray
    affine: np.ndarray
    source: tuple[Dataset, ...] = field(default=(), repr=False)
    frame_of_reference_uid: str = ""
    frame_numbers: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along slices, rows and columns."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """LPS positions of ``(n, 3)`` (k, j, i) indices (fractional allowed)."""
        index = np.atleast_2d(np.asarray(index, dtype=float))
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Fractional (k, j, i) indices of ``(n, 3)`` LPS positions."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        return (points - self.affine[:3, 3]) @ np.linalg.inv(self.affine[:3, :3]).T

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry and sources with other voxels (same shape)."""
        if array.shape[:3] != self.array.shape:
            raise ValueError(f"array of shape {array.shape} does not fit grid {self.array.shape}")
        return Volume(
            array, self.affine, self.source, self.frame_of_reference_uid, self.frame_numbers
        )

    def slices(self) -> list[Dataset]:
        """The source as one dataset per slice, in array order: what result writers take.

        Single-frame series: the slices themselves. A multi-frame instance: one
        :class:`~dicomnode.results.frames.SourceFrame` per slice, which writers
        reference as (instance, Referenced Frame Number).
        """
        if not self.frame_numbers:
            return list(self.source)
        from dicomnode.results.frames import source_frames  # results load highdicom: only here

        return list(source_frames(self.source[0], self.frame_numbers))

    def ras_affine(self) -> np.ndarray:
        """Affine of the array transposed to ``(columns, rows, slices)`` in RAS, as MONAI and NIfTI use."""
        to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        permute = np.eye(4)[:, [2, 1, 0, 3]]  # (i, j, k) -> (k, j, i)
        return to_ras @ self.affine @ permute

    def to_ras_array(self) -> np.ndarray:
        """The voxels as ``(columns, rows, slices)``, matching :meth:`ras_affine`."""
        return np.ascontiguousarray(self.array.transpose(2, 1, 0))


def _floats(values: Sequence[object]) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=float)  # type: ignore[arg-type]


def _pixels(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Decoded pixels of *ds* (or one frame of it); a clear error when they cannot be decoded."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for missing decoders or bad data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        raise PipelineError(
            f"instance {ds.get('SOPInstanceUID', '?')}: pixel data cannot be decoded ({name}): {exc}"
        ) from None
    return pixels if frame is None else pixels[frame]


def _affine(
    position: np.ndarray, orientation: np.ndarray, pixel_spacing: np.ndarray, step: np.ndarray
) -> np.ndarray:
    row_dir, col_dir = orientation[:3], orientation[3:]
    affine = np.eye(4)
    affine[:3, 0] = step  # from one slice to the next
    affine[:3, 1] = col_dir * pixel_spacing[0]  # down one row
    affine[:3, 2] = row_dir * pixel_spacing[1]  # right one column
    affine[:3, 3] = position
    return affine


def regular_spacing(along: np.ndarray, what: str) -> float:
    """Slice spacing from sorted positions along the slice normal; PipelineError if not regular.

    Regular: no two slices at one position, and every step within 1 % (or
    1 µm) of the median; a sentence naming *what* says whether gaps suggest
    missing slices or the spacing just varies.
    """
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise PipelineError(f"{what}: two slices share the same position")
    spacing = float(np.median(steps))
    irregular = np.abs(steps - spacing) > max(0.01 * spacing, 1e-3)
    if np.any(irregular):
        gaps = int(np.sum(steps > 1.5 * spacing))
        detail = f"{gaps} gap(s) suggest missing slices" if gaps else "spacing varies"
        raise PipelineError(
            f"{what}: slice spacing is not uniform (median {spacing:.3f} mm, "
            f"range {steps.min():.3f}-{steps.max():.3f} mm): {detail}"
        )
    return spacing


def _build(
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Order planes (position, orientation, pixel spacing, pixels); return (order, affine)."""
    orientations = np.stack([p[1] for p in planes])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE:
        raise PipelineError(f"{what}: slices have different orientations")
    shapes = {p[3].shape for p in planes}
    if len(shapes) > 1:
        raise PipelineError(f"{what}: slices have different sizes {sorted(shapes)}")
    spacings = np.stack([p[2] for p in planes])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise PipelineError(f"{what}: slices have different pixel spacings")
    orientation = orientations[0]
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.stack([p[0] for p in planes])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(planes) == 1:
        # One slice: thickness unknown here, use the in-plane spacing as a nominal step.
        return order, _affine(positions[0], orientation, spacings[0], normal * spacings[0][0])
    spacing = regular_spacing(along[order], what)
    offsets = positions[order] - positions[order[0]]
    # Positions must lie on the normal through the first slice; otherwise the stack is sheared.
    lateral = offsets - np.outer(offsets @ normal, normal)
    if np.abs(lateral).max() > max(0.05 * spacing, 0.05):
        step = (positions[order[-1]] - positions[order[0]]) / (len(planes) - 1)
        cosine = min(1.0, abs(float(step @ normal)) / float(np.linalg.norm(step)))
        tilt = float(np.degrees(np.arccos(cosine)))
        raise PipelineError(
            f"{what}: slices are sheared {tilt:.1f} degrees from the slice normal "
            "(gantry tilt); reconstruct without tilt or resample before sending"
        )
    return order, _affine(positions[order[0]], orientation, spacings[0], normal * spacing)


def _rescaled(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    out = pixels.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _single_frame_volume(datasets: list[Dataset], what: str) -> Volume:
    planes = []
    for ds in datasets:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise PipelineError(f"{what}: instance {ds.SOPInstanceUID} has no plane geometry")
        planes.append(
            (
                _floats(ds.ImagePositionPatient),
                _floats(ds.ImageOrientationPatient),
                _floats(ds.get("PixelSpacing", [1.0, 1.0])),
                np.empty((int(ds.Rows), int(ds.Columns))),
            )
        )
    order, affine = _build(planes, what)
    ordered = [datasets[i] for i in order]
    array = np.stack(
        [
            _rescaled(
                _pixels(ds),
                float(ds.get("RescaleSlope", 1) or 1),
                float(ds.get("RescaleIntercept", 0) or 0),
            )
            for ds in ordered
        ]
    )
    frame_of_reference = str(ordered[0].get("FrameOfReferenceUID", ""))
    return Volume(array, affine, tuple(ordered), frame_of_reference)


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The functional group item *sequence* for frame *index* (per-frame, else shared)."""
    for groups, at in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        if groups in ds and sequence in ds[groups][at]:
            item: Dataset = ds[groups][at][sequence][0]
            return item
    return None


def _multi_frame_volume(ds: Dataset, what: str) -> Volume:
    frames = int(ds.get("NumberOfFrames", 1))
    pixels = _pixels(ds)
    if frames == 1:
        pixels = pixels[np.newaxis]
    planes, rescale = [], []
    for n in range(frames):
        position = _frame_item(ds, n, "PlanePositionSequence")
        orientation = _frame_item(ds, n, "PlaneOrientationSequence")
        measures = _frame_item(ds, n, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise PipelineError(
                f"{what}: frame {n + 1} has no plane position, orientation or pixel spacing"
            )
        transform = _frame_item(ds, n, "PixelValueTransformationSequence")
        rescale.append(
            (
                float(transform.get("RescaleSlope", 1)) if transform else 1.0,
                float(transform.get("RescaleIntercept", 0)) if transform else 0.0,
            )
        )
        planes.append(
            (
                _floats(position.ImagePositionPatient),
                _floats(orientation.ImageOrientationPatient),
                _floats(measures.PixelSpacing),
                pixels[n],
            )
        )
    order, affine = _build(planes, what)
    array = np.stack([_rescaled(pixels[i], *rescale[i]) for i in order])
    return Volume(
        array,
        affine,
        (ds,),
        str(ds.get("FrameOfReferenceUID", "")),
        tuple(int(i) + 1 for i in order),
    )


def load_series(paths: Sequence[Path] | Sequence[Dataset], *, what: str = "series") -> Volume:
    """Read a series into a :class:`Volume`.

    Parameters
    ----------
    paths
        The files (or datasets) of one series: single-frame slices in any
        order, or one enhanced multi-frame instance.
    what
        How errors name the series (e.g. its description).

    Raises
    ------
    PipelineError
        The series is empty, unreadable, not decodable, or not a regular
        volume (tilted, missing or duplicate slices, mixed sizes/orientations).
    """
    datasets = [p if isinstance(p, Dataset) else _read(p, what) for p in paths]
    if not datasets:
        raise PipelineError(f"{what}: no instances")
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(datasets) > 1:
            raise PipelineError(f"{what}: mixes a multi-frame instance with other instances")
        return _multi_frame_volume(multi[0], what)
    if "PerFrameFunctionalGroupsSequence" in datasets[0]:
        return _multi_frame_volume(datasets[0], what)
    return _single_frame_volume(datasets, what)


def _read(path: Path, what: str) -> Dataset:
    try:
        return dcmread(path)
    except Exception as exc:
        raise PipelineError(f"{what}: cannot read {Path(path).name}: {exc}") from None


def grid_affine(origin: np.ndarray, directions: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """An affine from an LPS origin, 3x3 unit direction columns (k, j, i) and voxel sizes."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


def resample(
    volume: Volume,
    affine: np.ndarray,
    shape: Sequence[int],
    *,
    order: int = 1,
    cval: float = 0.0,
) -> Volume:
    """*volume* sampled on the grid (*affine*, *shape*) in the same world coordinates.

    ``order`` is the spline order (0: nearest, for label maps; 1: linear).
    Voxels of the new grid outside the source get *cval*. The result keeps
    no source datasets: it is no longer aligned with them.
    """
    from scipy import ndimage  # not at module level: the receiver process checks pipelines too

    # index_in_source = inv(A_src) @ A_dst @ index_in_destination
    mapping = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=float)
    data = ndimage.affine_transform(
        volume.array,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=tuple(int(n) for n in shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return Volume(
        data.astype(volume.array.dtype, copy=False),
        np.asarray(affine, dtype=float),
        (),
        volume.frame_of_reference_uid,
    )


def isotropic_grid(volume: Volume, spacing: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid with the same directions and extent as *volume* at *spacing* mm (for :func:`resample`)."""
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    extent = np.array(volume.spacing) * np.array(volume.shape)
    shape = tuple(max(1, int(round(e / spacing))) for e in extent)
    # Keep the physical centre of the first voxel's cell corner aligned.
    origin = volume.index_to_lps(np.array([[-0.5, -0.5, -0.5]]))[0] + directions @ np.full(
        3, spacing / 2
    )
    return grid_affine(origin, directions, [spacing] * 3), shape  # type: ignore[return-value]
