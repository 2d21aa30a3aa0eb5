"""Kinds of result objects, by SOP Class: what a destination's ``outputs`` chooses from.

``seg`` (Segmentation), ``sr`` (Structured Reports), ``gsps`` (presentation
states) and ``sc`` (Secondary Capture key images). A destination lists the
kinds it takes (``[[destinations]] outputs``); an object of a SOP Class none of
these names (a plugin's own result type) goes to every destination.
"""

from __future__ import annotations

from typing import Literal, get_args

OutputKind = Literal["seg", "sr", "gsps", "sc"]
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)


def every_kind() -> list[OutputKind]:
    """All kinds: what a destination takes unless its ``outputs`` says otherwise."""
    return ["seg", "sr", "gsps", "sc"]

# SOP Class UID prefixes of each kind ("1.2.840.10008.5.1.4.1.1." left out).
_PREFIXES: dict[str, tuple[str, ...]] = {
    "seg": ("66.4", "66.5", "66.7"),  # Segmentation, Surface Segmentation, Label Map Segmentation
    "sr": ("88.",),  # every SR document, Key Object Selection included
    "gsps": ("11.",),  # Grayscale, Color, Pseudo-Color, Blending ... Presentation States
    "sc": ("7", "7."),  # Secondary Capture and its multi-frame variants
}
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."


def output_kind(sop_class_uid: str) -> str | None:
    """The kind of an object of *sop_class_uid*, or None for a class none of them covers."""
    if not sop_class_uid.startswith(_STORAGE_ROOT):
        return None
    rest = sop_class_uid[len(_STORAGE_ROOT) :]
    for kind, prefixes in _PREFIXES.items():
        if any(rest == p or (p.endswith(".") and rest.startswith(p)) for p in prefixes):
            return kind
    return None
