"""One colour fundus photograph to network input (shared with ``train/fundus``).

1. Field of view: luminance above 4 % of its 99th percentile is "inside the
   camera's field stop"; the rows and columns where it covers more than 2 %
   of the width give the bounding box (robust to JPEG noise in the black
   surround). No field, a field that is not round (fills under 55 % of its
   box) or a field that is not red-dominant (R < 1.1 G, as the choroid makes
   every fundus) means "not a fundus photograph": that image is reported and
   skipped, the study goes on.
2. Crop to the box, pad to a square, resize to ``image_size`` (bundle).
3. Normalise as B. Graham did for the Kaggle DR challenge: subtract a Gaussian
   blur (sigma = size / 30), so only local contrast remains (lesions and
   vessels), and divide by the field's mean luminance, so exposure drops out.
   Outside the (eroded) field the input is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class NotFundusError(ValueError):
    """A photograph that cannot be graded; the message says why, as a sentence."""


@dataclass(frozen=True)
class PreparedFundus:
    """Network input of one photograph and where it came from in the photograph."""

    array: np.ndarray  # (3, size, size) float32
    box: tuple[int, int, int, int]  # (top, left, side, side) of the square crop, source pixels
    mask: np.ndarray  # (size, size) bool: inside the field of view


def _field_box(luminance: np.ndarray, threshold: float) -> tuple[np.ndarray, int, int, int, int]:
    reference = float(np.percentile(luminance, 99))
    if reference < 20.0:
        raise NotFundusError("the photograph is black (no field of view)")
    inside = luminance > threshold * reference
    rows = np.nonzero(inside.sum(axis=1) > 0.02 * inside.shape[1])[0]
    cols = np.nonzero(inside.sum(axis=0) > 0.02 * inside.shape[0])[0]
    if len(rows) < 0.3 * inside.shape[0] or len(cols) < 0.3 * inside.shape[1]:
        raise NotFundusError("no round field of view covers the photograph (too small)")
    return inside, int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _check_fundus(rgb: np.ndarray, inside: np.ndarray, box: tuple[int, int, int, int]) -> None:
    top, bottom, left, right = box
    fill = float(inside[top:bottom, left:right].mean())
    if fill < 0.55:
        raise NotFundusError(f"the field of view is not round ({fill:.0%} of its box)")
    red, green, blue = (float(rgb[..., c][inside].mean()) for c in range(3))
    if red < 1.1 * green or red < blue:
        raise NotFundusError(
            f"the colours are not those of a fundus (mean R {red:.0f}, G {green:.0f}, B {blue:.0f})"
        )


def _square_crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    """The box padded (with black) to a square around its centre; its top-left corner."""
    top, bottom, left, right = box
    side = max(bottom - top, right - left)
    y0 = top + (bottom - top - side) // 2
    x0 = left + (right - left - side) // 2
    square = np.zeros((side, side, 3), dtype=np.uint8)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, rgb.shape[0]), min(x0 + side, rgb.shape[1])
    square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return square, y0, x0


def prepare_fundus(rgb: np.ndarray, size: int = 160, threshold: float = 0.04) -> PreparedFundus:
    """Find the field of view, crop, resize and normalise one RGB photograph.

    Parameters
    ----------
    rgb
        ``(rows, columns, 3)`` uint8.
    size
        Side of the network input.
    threshold
        Field of view: luminance above this fraction of its 99th percentile.

    Raises
    ------
    NotFundusError
        The photograph has no round, red-dominant field of view.
    """
    from PIL import Image
    from scipy import ndimage

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise NotFundusError("the photograph is not in colour (RGB)")
    inside, top, bottom, left, right = _field_box(rgb.mean(axis=2), threshold)
    _check_fundus(rgb, inside, (top, bottom, left, right))
    square, y0, x0 = _square_crop(rgb, (top, bottom, left, right))
    small = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2)
    image = np.asarray(small, dtype=np.float32) / 255.0
    luminance = image.mean(axis=2)
    mask = luminance > threshold * float(np.percentile(luminance, 99))
    local = ndimage.gaussian_filter(image, sigma=(size / 30.0, size / 30.0, 0))
    scale = max(float(luminance[mask].mean()), 1e-3)
    normalised = np.clip((image - local) / scale, -3.0, 3.0)
    # The blur mixes in the black surround at the rim: keep only the field well inside it.
    core = ndimage.binary_erosion(mask, iterations=max(1, size // 40))
    normalised[~core] = 0.0
    return PreparedFundus(
        np.ascontiguousarray(normalised.transpose(2, 0, 1)),
        (y0, x0, square.shape[0], square.shape[1]),
        core,
    )
