"""The study's photographs: which series, which instances, and which eye."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.pipelines.base import PipelineError, SeriesInput

if TYPE_CHECKING:
    from pydicom import Dataset

# Storage SOP classes a fundus camera or a scanned print arrives as.
PHOTOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
}
PHOTOGRAPH_MODALITIES = {"OP", "XC", "OT"}


@dataclass(frozen=True)
class Photograph:
    """One source photograph as read."""

    dataset: Dataset
    laterality: str  # "R", "L" or "" (unknown)
    rgb: np.ndarray  # (rows, columns, 3) uint8
    name: str  # for messages: "image <InstanceNumber> (<file>)"


@dataclass(frozen=True)
class FundusStudy:
    """The readable photographs of a study and the reasons others were skipped."""

    photographs: tuple[Photograph, ...] = ()
    skipped: tuple[str, ...] = ()


def select_photograph_series(series: Sequence[SeriesInput]) -> tuple[SeriesInput, ...]:
    """The series of ophthalmic photographs (Modality OP, XC or OT); PipelineError if none."""
    chosen = tuple(s for s in series if (s.modality or "").upper() in PHOTOGRAPH_MODALITIES)
    if not chosen:
        found = ", ".join(sorted({s.modality or "?" for s in series})) or "none"
        raise PipelineError(
            f"the study has no ophthalmic photographs (Modality OP, XC or OT); found {found}"
        )
    return chosen


def _laterality(ds: Dataset) -> str:
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    return value if value in ("R", "L") else ""


def _describe(ds: Dataset, path: Path) -> str:
    return f"image {ds.get('InstanceNumber', '?')} ({path.name})"


def load_photographs(paths: Sequence[Path]) -> FundusStudy:
    """Read each photograph (the first frame of a multi-frame one); skip what is not one."""
    from pydicom import dcmread

    photographs, skipped = [], []
    for path in paths:
        try:
            ds = dcmread(path)
            if str(ds.SOPClassUID) not in PHOTOGRAPH_SOP_CLASSES:
                skipped.append(f"{_describe(ds, path)} is not a photograph")
                continue
            rgb = np.asarray(ds.pixel_array)
        except Exception as exc:  # pydicom raises many kinds for unreadable pixel data
            skipped.append(f"{path.name} cannot be read: {exc}")
            continue
        if rgb.ndim == 4:  # multi-frame: grade the first frame
            rgb = rgb[0]
        if rgb.dtype != np.uint8:
            skipped.append(f"{_describe(ds, path)} is not 8 bits per sample")
            continue
        photographs.append(Photograph(ds, _laterality(ds), rgb, _describe(ds, path)))
    return FundusStudy(tuple(photographs), tuple(skipped))
