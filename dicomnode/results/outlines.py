"""Outlines of a mask on one image, in the image coordinates SR SCOORDs and GSPS graphics use.

Both DICOM SR (SCOORD) and presentation states (Graphic Annotation Units
PIXEL) place (0, 0) at the top left corner of the top left pixel, so a pixel
(row r, column c) covers [c, c + 1] x [r, r + 1] and its centre is
(c + 0.5, r + 0.5). Outlines are iso-lines at 0.5 of the mask through the
pixel centres (marching squares, contourpy), closed (last point = first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# An outline of fewer points is densified: Cornerstone3D reads a closed 4- or 5-point
# polyline as a rectangle (RectangleROI), which an outline of one or two pixels would be.
MIN_POINTS = 7


def outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask, the longest first.

    Parameters
    ----------
    mask
        ``(rows, columns)``, true inside.

    Returns
    -------
    list of numpy.ndarray
        Each ``(n, 2)`` float, (column, row) points, the first repeated last;
        inner outlines (holes) included. Empty when the mask is.
    """
    import contourpy

    if not mask.any():
        return []
    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    # Padding moved every index by one; +0.5 goes from pixel indices to pixel centres.
    loops = [_densified(_corners(np.asarray(line, dtype=float) - 0.5)) for line in lines]
    return sorted(loops, key=len, reverse=True)


def _corners(loop: np.ndarray) -> np.ndarray:
    """The closed *loop* without the points in the middle of straight runs (same shape)."""
    ring = loop[:-1]
    before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    kept = ring[turns] if turns.sum() >= 3 else ring
    return np.vstack([kept, kept[:1]])


def _densified(loop: np.ndarray) -> np.ndarray:
    while len(loop) < MIN_POINTS:
        middles = (loop[:-1] + loop[1:]) / 2.0
        denser = np.empty((2 * len(loop) - 1, 2))
        denser[0::2], denser[1::2] = loop, middles
        loop = denser
    return loop


def bounding_rectangle(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """A closed rectangle (5 points, (column, row)) from its edges in image coordinates."""
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], dtype=float
    )


def segment_outlines(labels: np.ndarray) -> dict[int, dict[int, list[np.ndarray]]]:
    """Outlines of every label of a label map, on every slice it touches.

    Parameters
    ----------
    labels
        ``(slices, rows, columns)`` integers, 0 background, n segment n.

    Returns
    -------
    dict
        Segment number -> slice index -> that slice's outlines (as :func:`outlines`,
        in the slice's image coordinates).
    """
    from scipy import ndimage

    return {
        number: outlines_by_slice(labels[box] == number, box)
        for number, box in enumerate(ndimage.find_objects(labels), start=1)
        if box is not None
    }


def outlines_by_slice(
    mask: np.ndarray, box: tuple[slice, slice, slice] | None = None
) -> dict[int, list[np.ndarray]]:
    """Slice index -> outlines of a 3D *mask* (``(slices, rows, columns)``).

    *box* says where *mask* sits in the series (a crop of it): indices and
    coordinates are then the series' own.
    """
    k0, r0, c0 = (s.start or 0 for s in box) if box is not None else (0, 0, 0)
    offset = np.array([c0, r0], dtype=float)  # (column, row)
    return {
        k0 + k: [loop + offset for loop in outlines(mask[k])]
        for k in range(mask.shape[0])
        if mask[k].any()
    }


def key_outline(
    by_slice: Mapping[int, Sequence[np.ndarray]], preferred: int
) -> tuple[int, np.ndarray]:
    """The slice to draw a finding on in the SR and its outline there.

    The slice is *preferred* (e.g. the slice of the centre) when the finding is
    on it, else the nearest one it is on (the lower of two equally near); the
    outline is the one enclosing the largest area there: the outer edge of the
    finding's largest part, never a hole's.
    """
    if not by_slice:
        raise ValueError("the finding has no outline on any slice")
    index = min(by_slice, key=lambda k: (abs(k - preferred), k))
    return index, max(by_slice[index], key=_area)


def _area(loop: np.ndarray) -> float:
    """The area a closed (column, row) loop encloses (shoelace)."""
    x, y = loop[:, 0], loop[:, 1]
    return abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))) / 2.0
