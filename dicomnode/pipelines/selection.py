"""What series selection shares across pipelines: headers, decisions, the timeline lines.

Each model pipeline chooses its inputs from the series of a study
(:mod:`.lung_nodule.selection`, :mod:`.brain_tumor.selection`,
:mod:`.fundus_dr.selection`; the rules are in ``docs/selection.md``). They all
decide from headers only, never pixels, and say for *every* series what
became of it: a :class:`Decision` is either "chosen" (with the role it
plays) or "passed over" with a reason category (a short stable key the
corpus tests check, e.g. ``localizer``) and a sentence for the admin. The
pipeline writes one timeline line per series (:func:`log_decisions`);
when nothing usable is there, :class:`SelectionError` carries the same
decisions so the lines still reach the timeline before the job fails.

:class:`SeriesHeader` is how a rule reads a series: the routing attributes
the node stored (what the worker hands over) first, then the header of the
first instance (and of a few more, for values that vary per instance such as
diffusion b-values), looking into the functional groups of enhanced
multi-frame instances too. A series whose files cannot be read is judged on
its stored attributes alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dicomnode.pipelines.base import PipelineError, SeriesInput

if TYPE_CHECKING:
    from pydicom import Dataset

T = TypeVar("T")

CHOSEN = "chosen"

# Storage SOP classes that are no image at all (prefixes, PS3.4 B.5).
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "a structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "an encapsulated document",
    "1.2.840.10008.5.1.4.1.1.481.": "an RT object",
    "1.2.840.10008.5.1.4.1.1.9.": "a waveform",
}
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "raw data",
    "1.2.840.10008.5.1.4.1.1.66.1": "a spatial registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "a deformable registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
    "1.2.840.10008.5.1.4.1.1.77.1.5.3": "a stereometric relationship",
}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def non_image_kind(sop_class_uid: str | None) -> str | None:
    """What a non-image SOP class is ("a structured report", ...), None for images."""
    uid = str(sop_class_uid or "")
    if uid in _NON_IMAGE_CLASSES:
        return _NON_IMAGE_CLASSES[uid]
    for prefix, kind in _NON_IMAGE_PREFIXES.items():
        if uid.startswith(prefix):
            return kind
    return None


def is_secondary_capture(sop_class_uid: str | None) -> bool:
    """Secondary Capture Image Storage, single- or multi-frame (PS3.4 B.5)."""
    uid = str(sop_class_uid or "")
    return uid == SECONDARY_CAPTURE_PREFIX or uid.startswith(SECONDARY_CAPTURE_PREFIX + ".")


@dataclass(frozen=True)
class Decision:
    """What became of one series: chosen (as *role*) or passed over, and why.

    Attributes
    ----------
    series
        The series decided on.
    category
        ``"chosen"`` or the reason it was passed over, a short stable key
        (``localizer``, ``mpr``, ``thicker``, ...; each pipeline's module lists
        its own).
    reason
        The sentence the timeline shows after the series' name.
    role
        What the series was chosen as (``"T1c"``, ``"R and L eye"``) or, for a
        candidate that lost to another, the role it was a candidate for.
    images
        Per-instance decisions, where a pipeline decides image by image
        (fundus photographs: ``ImageDecision``); empty otherwise.
    """

    series: SeriesInput
    category: str
    reason: str
    role: str | None = None
    images: tuple[Any, ...] = ()

    @property
    def chosen(self) -> bool:
        """Whether the series is an input of the job."""
        return self.category == CHOSEN

    @property
    def name(self) -> str:
        """How messages name the series (see :func:`series_name`)."""
        return series_name(self.series)

    @property
    def line(self) -> str:
        """The timeline line: ``chosen 'X' (series 3) as T1c: ...`` / ``passed over ...``."""
        if self.chosen:
            role = f" as {self.role}" if self.role else ""
            return f"chosen {self.name}{role}: {self.reason}"
        return f"passed over {self.name}: {self.reason}"


@dataclass(frozen=True)
class Selection(Generic[T]):
    """What a selection chose (*chosen*) and the decision on every series of the study."""

    chosen: T
    decisions: tuple[Decision, ...]

    def category_of(self, series_instance_uid: str) -> str:
        """The category of the decision on one series (KeyError if it was not decided on)."""
        for decision in self.decisions:
            if decision.series.series_instance_uid == series_instance_uid:
                return decision.category
        raise KeyError(series_instance_uid)


class SelectionError(PipelineError):
    """Nothing usable in the study: the sentence, and the decision on each series."""

    def __init__(self, message: str, decisions: Sequence[Decision]) -> None:
        super().__init__(message)
        self.decisions = tuple(decisions)


def log_decisions(decisions: Iterable[Decision], log: Callable[[str], None]) -> None:
    """One timeline line per series, chosen ones first."""
    ordered = sorted(decisions, key=lambda d: not d.chosen)
    for decision in ordered:
        log(decision.line)


def run_selection(choose: Callable[[], Selection[T]], log: Callable[[str], None]) -> T:
    """Run *choose*, write its decisions into the timeline (also when it fails), return the choice."""
    try:
        selection = choose()
    except SelectionError as exc:
        log_decisions(exc.decisions, log)
        raise
    log_decisions(selection.decisions, log)
    return selection.chosen


def found_list(decisions: Iterable[Decision], *, limit: int = 12) -> str:
    """``'A' (series 1): reason; 'B' (series 2): reason`` for an error sentence."""
    items = [f"{d.name}: {d.reason}" for d in decisions]
    if not items:
        return "no series"
    more = len(items) - limit
    shown = "; ".join(items[:limit])
    return shown + (f"; and {more} more" if more > 0 else "")


def series_name(series: SeriesInput) -> str:
    """``'description' (series N)``, as every selection message names a series."""
    text = f"'{series.series_description or 'no description'}'"
    number = series.attributes.get("SeriesNumber")
    return f"{text} (series {number})" if number not in (None, "") else text


def format_mm(value: float | None) -> str:
    """``1.25 mm`` (``? mm`` when unknown)."""
    return "? mm" if value is None else f"{value:g} mm"


# -- reading headers ---------------------------------------------------------------------


def _read(path: Path) -> Dataset | None:
    from pydicom import dcmread

    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:  # a missing or unreadable file: the stored attributes stand alone
        return None


def _sample_indices(n: int, count: int | None) -> list[int]:
    """Which of *n* instances to read: all (None), or *count* spread from first to last."""
    if count is None or count >= n:
        return list(range(n))
    if count <= 1:
        return [0]
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def _split(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part for part in value.split("\\")]
    if isinstance(value, list | tuple):
        return list(value)
    try:
        from pydicom.multival import MultiValue

        if isinstance(value, MultiValue):
            return list(value)
    except ImportError:  # pragma: no cover - pydicom is a dependency
        pass
    return [value]


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class SeriesHeader:
    """The attributes of one series as selection rules read them.

    Parameters
    ----------
    series
        The series; its stored ``attributes`` win over the files (they are
        what the node indexed, and what tests and admins may override).
    datasets
        Headers (no pixel data) of some of its instances, first one first.
    """

    def __init__(self, series: SeriesInput, datasets: Sequence[Dataset]) -> None:
        self.series = series
        self.datasets = tuple(datasets)

    @classmethod
    def read(cls, series: SeriesInput, count: int | None = 1) -> SeriesHeader:
        """Read *count* instances' headers (None: all), spread from the first to the last."""
        indices = _sample_indices(len(series.paths), count)
        datasets = [ds for ds in (_read(series.paths[i]) for i in indices) if ds is not None]
        return cls(series, datasets)

    @property
    def first(self) -> Dataset | None:
        """The first instance's header, when it could be read."""
        return self.datasets[0] if self.datasets else None

    @property
    def description(self) -> str:
        """Series Description (the stored one), else Protocol Name, else ""."""
        return str(
            self.series.series_description
            or self.get("SeriesDescription")
            or self.get("ProtocolName")
            or ""
        )

    @property
    def modality(self) -> str:
        """Modality, upper case ("" when absent)."""
        return str(self.series.modality or self.get("Modality") or "").upper()

    @property
    def sop_class_uid(self) -> str:
        """SOP Class UID of the first instance ("" when unknown)."""
        return str(self.get("SOPClassUID") or "")

    @property
    def instances(self) -> int:
        """Number of instances of the series."""
        return len(self.series.paths)

    @property
    def frames(self) -> int:
        """Number of Frames of the first instance (1 for single-frame)."""
        number = _float(self.get("NumberOfFrames"))
        return int(number) if number and number > 1 else 1

    @property
    def images(self) -> int:
        """Images in the series: instances, or frames of one multi-frame instance."""
        return self.frames if self.instances == 1 else self.instances

    def get(self, keyword: str, default: Any = None) -> Any:
        """*keyword*'s value: stored attributes, then the first header, then its functional groups."""
        value = self.series.attributes.get(keyword)
        if value not in (None, ""):
            return value
        first = self.first
        if first is None:
            return default
        found = _lookup(first, keyword)
        return default if found in (None, "") else found

    def values(self, keyword: str) -> list[str]:
        """The values of a multi-valued attribute, upper case, stripped."""
        return [str(v).strip().upper() for v in _split(self.get(keyword)) if v is not None]

    def strings(self, keyword: str) -> set[str]:
        """The values of *keyword* as a set (upper case, no empties)."""
        return {v for v in self.values(keyword) if v}

    def numbers(self, keyword: str) -> list[float]:
        """The numeric values of *keyword*."""
        out = []
        for v in _split(self.get(keyword)):
            number = _float(v)
            if number is not None:
                out.append(number)
        return out

    def number(self, keyword: str) -> float | None:
        """The first numeric value of *keyword*, None when absent."""
        numbers = self.numbers(keyword)
        return numbers[0] if numbers else None

    def each(self, keyword: str) -> Iterator[Any]:
        """*keyword* in every header read (for values that vary per instance)."""
        for ds in self.datasets:
            value = _lookup(ds, keyword)
            if value not in (None, ""):
                yield value

    def private(self, group: int, creator: str, element: int) -> list[Any]:
        """A private element's value in every header read (``element`` is the low byte)."""
        out = []
        for ds in self.datasets:
            try:
                out.append(ds.get_private_item(group, element, creator).value)
            except (KeyError, ValueError):
                continue
        return out

    def orientation(self) -> str | None:
        """``axial``, ``coronal``, ``sagittal`` or ``oblique`` (None: no orientation)."""
        return plane(self.numbers("ImageOrientationPatient"))

    def has_position(self) -> bool:
        """Whether the series has plane positions (Image Position (Patient))."""
        return len(self.numbers("ImagePositionPatient")) == 3

    def slice_thickness(self) -> float | None:
        """Slice Thickness, else Spacing Between Slices (mm)."""
        thickness = self.number("SliceThickness")
        if thickness is None or thickness <= 0:
            thickness = self.number("SpacingBetweenSlices")
        return thickness if thickness is not None and thickness > 0 else None


def _lookup(ds: Dataset, keyword: str) -> Any:
    """*keyword* at the top level of *ds*, else in its shared or first per-frame functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(groups)
        if not sequence:
            continue
        for element in sequence[0]:
            if element.VR != "SQ" or not element.value:
                continue
            item = element.value[0]
            if keyword in item:
                return item.get(keyword)
    return None


def plane(orientation: Sequence[float]) -> str | None:
    """The anatomical plane nearest to an Image Orientation (Patient).

    The slice normal's largest LPS component names the plane; when even that
    is under cos 37° the slices are ``oblique``. A gantry tilt up to ~35° is
    still ``axial``.
    """
    if len(orientation) != 6:
        return None
    row, column = orientation[:3], orientation[3:]
    normal = (
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    )
    size = math.sqrt(sum(c * c for c in normal))
    if size < 1e-6:
        return None
    largest = max(range(3), key=lambda i: abs(normal[i]))
    if abs(normal[largest]) / size < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[largest]
