"""Outlines of a mask on one image, in the image coordinates SR SCOORDs and GSPS graphics use.

Both DICOM SR (SCOORD) and presentation states (Graphic Annotation Units
PIXEL) place (0, 0) at the top left corner of the top left pixel, so a pixel
(row r, column c) covers [c, c + 1] x [r, r + 1] and its centre is
(c + 0.5, r + 0.5). Outlines are iso-lines at 0.5 of the mask through the
pixel centres (marching squares, contourpy), closed (last point = first).
"""

from __future__ import annotations

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

    found: dict[int, dict[int, list[np.ndarray]]] = {}
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        offset = np.array([box[2].start, box[1].start], dtype=float)  # (column, row)
        crop = labels[box] == number
        found[number] = {
            box[0].start + k: [loop + offset for loop in outlines(crop[k])]
            for k in range(crop.shape[0])
            if crop[k].any()
        }
    return found
