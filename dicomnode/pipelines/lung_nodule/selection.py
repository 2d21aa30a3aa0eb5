"""Which CT series of the study the detector reads.

A chest CT study holds far more than the volume a nodule detector needs:
the scout (topogram, surview, scanogram), several reconstructions of one
acquisition (kernels, thicknesses), contrast phases, coronal and sagittal
reformats, MIPs, volume renderings, dose reports as SR or screen captures.
:func:`choose_ct_series` picks what a careful reader would, from headers
only, and says why every other series was passed over.

A series is passed over, checked in this order, as:

``dose-report``
    X-Ray Radiation Dose SR, or an SR/Secondary Capture whose description
    says dose (``Dose Report``, ``Patient Protocol``, ``Dosis``, ``線量`` ...);
``not-image``
    another non-image object (SR, presentation state, raw data, SEG ...);
``other-modality``
    not CT;
``secondary-capture``
    a Secondary Capture or screen save;
``localizer``
    Image Type LOCALIZER, or described as topogram/scout/surview/scanogram;
``mip``
    a maximum/minimum intensity projection (Image Type or description);
``mpr``
    a derived reformat (Image Type MPR/REFORMATTED, or DERIVED described as a
    reformat);
``no-geometry``
    no Image Position/Orientation (Patient);
``not-axial``
    slices that are not axial (coronal, sagittal, oblique);
``derived``
    any other DERIVED image (volume rendering, subtraction, CAD maps);
``too-few-slices``
    a single slice (one enhanced multi-frame instance is a whole volume);
``monitoring``
    bolus-tracking images, all at one table position (CARE Bolus, SmartPrep,
    SureStart), not a volume.

The others are candidates, ranked by (each step decides only between those
equal so far):

1. ``thicker`` — slices no thicker than ``max_slice_thickness`` first (when
   set), then the thinnest slices (within 0.05 mm);
2. ``kernel`` — with ``prefer_lung_kernel``, a lung kernel (Siemens ``Bl57``,
   GE ``LUNG``, Philips ``L``, Canon ``FC5x``, or "lung" in the description)
   before a sharp one (Siemens 60+, GE ``BONE``/``BONEPLUS``/``EDGE``,
   Philips ``YA``-``YD``/``D``/``E``, Canon ``FC8x``) before the rest;
3. ``contrast`` — a native (non-contrast) series before contrast phases;
4. ``equivalent`` — more slices (longer coverage), then the lower series
   number (the first reconstruction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dicomnode.pipelines.base import SeriesInput
from dicomnode.pipelines.selection import (
    CHOSEN,
    Decision,
    Selection,
    SelectionError,
    SeriesHeader,
    format_mm,
    found_list,
    is_secondary_capture,
    non_image_kind,
    series_name,
)

CT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image",
}
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR

# Reason categories, in the order the exclusions are checked, then the ranking ones.
CATEGORIES = (
    "dose-report",
    "not-image",
    "other-modality",
    "secondary-capture",
    "localizer",
    "mip",
    "mpr",
    "no-geometry",
    "not-axial",
    "derived",
    "too-few-slices",
    "monitoring",
    "thicker",
    "kernel",
    "contrast",
    "equivalent",
)

_DOSE = re.compile(
    r"dose|dosis|dosim|patient ?protocol|exposure|radiation|ctdi|(?<![a-z])dlp(?![a-z])|線量",
    re.I,
)
_LOCALIZER = re.compile(
    r"topogram|scout|surview|scanogram|locali[sz]|localizador|rep[ée]rage|übersicht|"
    r"uebersicht|スキャノ|位置決め",
    re.I,
)
_MIP = re.compile(r"(?<![a-z])(mip|minip|min ?ip|mpvr|maxip)(?![a-z])", re.I)
_REFORMAT = re.compile(
    r"(?<![a-z])(mpr|reformat\w*|cor(onal)?|sag(ittal)?|koronar|sagittal|coronale?|"
    r"sagitale?|冠状|矢状)(?![a-z])",
    re.I,
)
_MONITORING = re.compile(
    r"monitor|bolus|smart ?prep|sure ?start|care ?bolus|tracking|triggering", re.I
)
_NATIVE = re.compile(
    r"nativ|native|sans (injection|contraste)|sin contraste|non.?contrast|単純", re.I
)
_LUNG_WORD = re.compile(r"lung|lunge|poumon|pulm|parench|肺", re.I)
_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "0", "NATIVE", "NATIV"}


def kernel_class(kernels: Sequence[str], description: str = "") -> int:
    """2: a lung kernel, 1: another sharp kernel, 0: soft, standard or unknown.

    Modelled on the vendors' kernel names: Siemens ``Bl57d`` (``l``: lung) and
    the sharpness number (60 and above: sharp), GE ``LUNG`` and ``BONE``/
    ``BONEPLUS``/``EDGE``, Philips ``L`` and ``YA``-``YD``/``D``/``E``, Canon/Toshiba
    ``FC5x`` (lung) and ``FC8x``. Without a known kernel, a description saying
    "lung" (in any of the languages the corpus uses) counts as a lung kernel.
    """
    best = 0
    for raw in kernels:
        name = raw.strip().upper()
        if not name or name.isdigit():  # Siemens' second value is the iterative strength
            continue
        siemens = re.fullmatch(r"([BIQHJTVU])([A-Z]?)(\d{2})[A-Z]?", name)
        if siemens:
            family, letter, sharpness = siemens.group(1), siemens.group(2), int(siemens.group(3))
            if letter == "L":
                return 2
            if family in "BIQ" and sharpness >= 60:
                best = max(best, 1)
            continue
        canon = re.fullmatch(r"FC(\d{2})", name)
        if canon:
            number = int(canon.group(1))
            if 50 <= number <= 59:
                return 2
            if 80 <= number <= 89:
                best = max(best, 1)
            continue
        if name in ("LUNG", "L", "LUNG ENHANCED", "HD LUNG"):
            return 2
        if name in ("BONE", "BONEPLUS", "BONE PLUS", "EDGE", "YA", "YB", "YC", "YD", "D", "E"):
            best = max(best, 1)
    if best == 0 and _LUNG_WORD.search(description):
        return 2
    return best


_KERNEL_NAMES = {2: "a lung kernel", 1: "a sharp kernel", 0: "not a lung kernel"}


@dataclass(frozen=True)
class _Candidate:
    series: SeriesInput
    header: SeriesHeader
    thickness: float | None
    kernel: str
    kernel_class: int
    contrast: str | None
    slices: int
    number: int

    @property
    def summary(self) -> str:
        kernel = f", kernel {self.kernel}" if self.kernel else ""
        phase = f", contrast {self.contrast}" if self.contrast else ", native"
        return (
            f"axial original CT, {self.slices} slices of {format_mm(self.thickness)}{kernel}{phase}"
        )


def _contrast(header: SeriesHeader) -> str | None:
    """The contrast agent of a series (None: native)."""
    if _NATIVE.search(header.description):
        return None
    agent = str(header.get("ContrastBolusAgent") or "").strip()
    return None if agent.upper() in _NO_AGENT else agent


def _excluded(header: SeriesHeader) -> tuple[str, str] | None:
    """(category, sentence) when the series cannot be the detector's input."""
    sop = header.sop_class_uid
    description = header.description
    image_type = header.strings("ImageType")
    secondary = is_secondary_capture(sop) or "SCREEN SAVE" in image_type
    if sop == DOSE_SR:
        return "dose-report", "a radiation dose report (X-Ray Radiation Dose SR)"
    if (non_image_kind(sop) or secondary or header.modality == "SR") and _DOSE.search(description):
        form = "screen capture" if secondary else "structured report"
        return "dose-report", f"a dose report ({form})"
    kind = non_image_kind(sop)
    if kind:
        return "not-image", f"{kind}, not an image"
    if header.modality != "CT":
        return "other-modality", f"modality {header.modality or 'unknown'}, not CT"
    if secondary:
        return "secondary-capture", "a secondary capture (screen save), not an acquisition"
    if sop and sop not in CT_IMAGE_CLASSES:
        return "not-image", f"SOP class {sop} is not a CT image"
    if "LOCALIZER" in image_type or _LOCALIZER.search(description):
        return "localizer", "a localizer (scout) image"
    if image_type & {"MIP", "MINIP", "MAXIMUM", "MINIMUM", "PROJECTION IMAGE"} or _MIP.search(
        description
    ):
        return "mip", "an intensity projection (MIP/MinIP), not slices"
    derived = "DERIVED" in image_type or "SECONDARY" in image_type
    if image_type & {"MPR", "REFORMATTED", "CURVED", "MPR_THICK", "MPR THICK"} or (
        derived and _REFORMAT.search(description)
    ):
        return "mpr", f"a reformat (Image Type {'/'.join(header.values('ImageType'))})"
    orientation = header.orientation()
    if orientation is None or not header.has_position():
        return "no-geometry", "no plane geometry (Image Position/Orientation (Patient))"
    if orientation != "axial":
        return "not-axial", f"{orientation} slices, not axial"
    if derived:
        return "derived", f"derived images (Image Type {'/'.join(header.values('ImageType'))})"
    if header.images < 2:
        return "too-few-slices", "a single slice"
    positions = [tuple(round(float(v), 2) for v in p) for p in header.each("ImagePositionPatient")]
    if _MONITORING.search(description) or (
        header.instances > 1 and len(positions) > 1 and len(set(positions)) == 1
    ):
        return "monitoring", "bolus-tracking images at one table position, not a volume"
    return None


def _candidate(series: SeriesInput, header: SeriesHeader) -> _Candidate:
    kernels = header.values("ConvolutionKernel")
    number = header.number("SeriesNumber")
    return _Candidate(
        series,
        header,
        header.slice_thickness(),
        "\\".join(k for k in (str(v).strip() for v in _raw_kernels(header)) if k),
        kernel_class(kernels, header.description),
        _contrast(header),
        header.images,
        int(number) if number is not None else 1 << 30,
    )


def _raw_kernels(header: SeriesHeader) -> list[str]:
    value = header.get("ConvolutionKernel")
    if value is None:
        return []
    if isinstance(value, str):
        return value.split("\\")
    return [str(v) for v in (value if isinstance(value, list | tuple) else list(value))]


def choose_ct_series(
    series: Sequence[SeriesInput],
    *,
    max_slice_thickness: float | None = None,
    prefer_lung_kernel: bool = False,
) -> Selection[SeriesInput]:
    """The CT series the detector reads, and the decision on every series (module docs).

    Raises
    ------
    SelectionError
        No axial original CT series with plane geometry and at least two
        slices; the sentence lists what the study holds and why each was
        passed over.
    """
    decisions: dict[str, Decision] = {}
    candidates: list[_Candidate] = []
    for item in series:
        header = SeriesHeader.read(item, 2)  # the first and the last slice
        excluded = _excluded(header)
        if excluded:
            decisions[item.series_instance_uid] = Decision(item, *excluded)
        else:
            candidates.append(_candidate(item, header))
    if not candidates:
        passed = [decisions[s.series_instance_uid] for s in series]
        raise SelectionError(
            "lung nodule detection needs an axial, original CT series: no CT series with plane "
            f"geometry and at least two slices in this study that is one (found: "
            f"{found_list(passed)})",
            passed,
        )

    def thin(c: _Candidate) -> bool:
        return max_slice_thickness is None or (
            c.thickness is not None and c.thickness <= max_slice_thickness + 1e-6
        )

    def rank(c: _Candidate) -> tuple[object, ...]:
        thickness = round(c.thickness / 0.05) if c.thickness is not None else 1 << 30
        return (
            not thin(c),
            thickness,
            -c.kernel_class if prefer_lung_kernel else 0,
            c.contrast is not None,
            -c.slices,
            c.number,
        )

    ordered = sorted(candidates, key=rank)
    chosen = ordered[0]
    note = ""
    if not thin(chosen):
        note = f"; no series has slices of {max_slice_thickness:g} mm or thinner"
    decisions[chosen.series.series_instance_uid] = Decision(
        chosen.series, CHOSEN, chosen.summary + note, "detector input"
    )
    for other in ordered[1:]:
        decisions[other.series.series_instance_uid] = Decision(
            other.series, *_why_not(other, chosen, rank(other), rank(chosen), max_slice_thickness)
        )
    return Selection(chosen.series, tuple(decisions[s.series_instance_uid] for s in series))


def _why_not(
    other: _Candidate,
    chosen: _Candidate,
    mine: tuple[object, ...],
    theirs: tuple[object, ...],
    max_slice_thickness: float | None,
) -> tuple[str, str]:
    """(category, sentence): the first ranking step (*mine* vs *theirs*) that put *chosen* first."""
    name = series_name(chosen.series)
    if mine[0] != theirs[0]:
        return (
            "thicker",
            f"{format_mm(other.thickness)} slices, thicker than max_slice_thickness "
            f"{max_slice_thickness:g} mm; {name} is thinner",
        )
    if mine[1] != theirs[1]:
        return (
            "thicker",
            f"{format_mm(other.thickness)} slices; {name} has thinner ones "
            f"({format_mm(chosen.thickness)})",
        )
    if mine[2] != theirs[2]:
        return (
            "kernel",
            f"kernel {other.kernel or 'unknown'} is {_KERNEL_NAMES[other.kernel_class]}; "
            f"{name} has {_KERNEL_NAMES[chosen.kernel_class]} ({chosen.kernel}), which "
            "prefer_lung_kernel asks for",
        )
    if mine[3] != theirs[3]:
        return (
            "contrast",
            f"contrast-enhanced ({other.contrast}); the native series {name} goes first",
        )
    if mine[4] != theirs[4]:
        return (
            "equivalent",
            f"as thin as {name} but fewer slices ({other.slices} against {chosen.slices})",
        )
    return (
        "equivalent",
        f"same slices ({format_mm(other.thickness)}, {other.slices}) as {name}, which comes "
        "first"
        + (
            ""
            if other.kernel_class == chosen.kernel_class
            else "; set prefer_lung_kernel to prefer a lung kernel"
        ),
    )
