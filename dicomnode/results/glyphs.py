"""A tiny 5 x 7 bitmap font for the few words burnt into key images ("PRIOR 2025-06-01").

Key images go to viewers that show only pixels, so which half of a
side-by-side image is the prior has to be in them. A font file (and a
rendering library) for two words and a date is not worth a dependency: the
glyphs below are the classic 5 x 7 dot-matrix shapes of the characters those
labels use. Characters outside the set are left blank, never an error.
"""

from __future__ import annotations

import numpy as np

GLYPH_ROWS, GLYPH_COLUMNS = 7, 5
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
    "-": ("00000", "00000", "00000", "11111", "00000", "00000", "00000"),
    "C": ("01110", "10001", "10000", "10000", "10000", "10001", "01110"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "I": ("01110", "00100", "00100", "00100", "00100", "00100", "01110"),
    "N": ("10001", "10001", "11001", "10101", "10011", "10001", "10001"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "T": ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),
    "U": ("10001", "10001", "10001", "10001", "10001", "10001", "01110"),
}


def glyph(character: str) -> np.ndarray:
    """The ``(7, 5)`` bool bitmap of *character* (upper-cased; all False when not in the font)."""
    rows = _FONT.get(character.upper())
    if rows is None:
        return np.zeros((GLYPH_ROWS, GLYPH_COLUMNS), dtype=bool)
    return np.array([[bit == "1" for bit in row] for row in rows], dtype=bool)


def text_bitmap(text: str, scale: int = 1) -> np.ndarray:
    """*text* as one bool bitmap: glyphs one column apart, each dot *scale* x *scale* pixels."""
    if not text:
        return np.zeros((GLYPH_ROWS * scale, 0), dtype=bool)
    gap = np.zeros((GLYPH_ROWS, 1), dtype=bool)
    parts = [part for character in text for part in (glyph(character), gap)][:-1]
    bitmap = np.concatenate(parts, axis=1)
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool)).astype(bool)


def burn_text(
    rgb: np.ndarray,
    text: str,
    *,
    top: int,
    left: int,
    scale: int = 1,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> None:
    """Draw *text* into *rgb* (``(rows, columns, 3)`` uint8) at (*top*, *left*), on a black box.

    The box (one dot wider than the text on every side) keeps the letters
    legible on bright anatomy; what would fall outside the image is cut off.
    """
    bitmap = np.pad(text_bitmap(text, scale), scale)
    rows = min(bitmap.shape[0], rgb.shape[0] - top)
    columns = min(bitmap.shape[1], rgb.shape[1] - left)
    if rows <= 0 or columns <= 0:
        return
    region = rgb[top : top + rows, left : left + columns]
    region[:] = 0
    region[bitmap[:rows, :columns]] = colour
