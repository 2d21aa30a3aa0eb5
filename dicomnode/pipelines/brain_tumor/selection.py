"""Which MR series is the T1, the post-contrast T1 (T1c), the T2 and the FLAIR.

A brain tumour protocol holds many more series than the four inputs:
localisers and coil calibrations, diffusion (DWI, trace, ADC, FA),
susceptibility (SWI, phase, minIP, T2* GRE), perfusion (DSC, DCE, ASL and
their maps), angiography, 2D and 3D versions of one weighting before and
after contrast, reformats, subtractions and vendor-derived maps, named in the
language and style of each site. :func:`choose_sequences` reads each
series' description, physics and image type *together* and says, for every
series, what it was taken as or why it was passed over.

Passed over first (category: reason), in this order:

- ``other-modality``, ``not-image`` (SR, spectroscopy, ...), ``secondary-capture``;
- ``localizer`` (Image Type LOCALIZER, "localizer", "scout", "survey",
  "Übersicht", "repérage", "localizador", "位置決め" ...), ``calibration``
  (ASSET/SENSE reference, coil survey, field maps);
- ``diffusion`` (b-values above 0 in Diffusion b-value or the Siemens, GE or
  Philips private b-value elements, Image Type DIFFUSION/ADC/TRACEW/FA,
  "DWI", "diffusion", "拡散" ...), ``perfusion`` (DSC, DCE, ASL, "perf",
  CBV/CBF/MTT maps; a gradient-echo EPI without b-values), ``functional``
  (BOLD), ``susceptibility`` (SWI, SWAN, SWIp, T2*, phase images, minIP; a
  gradient echo with TE of 10 ms or more and no inversion), ``angiography``
  (TOF, MRA);
- ``subtraction``, ``reformat`` (MPR, MIP), ``derived`` (other DERIVED
  images: vendor maps, T1/T2 maps), ``too-few-slices`` (one image).

The rest are weighted by description and by physics:

- description (case-insensitive regexes, :data:`DEFAULT_PATTERNS`, which
  ``series_patterns`` may replace per role): T1 (``T1``, ``T1W``,
  ``MPRAGE``, ``SPGR``, ``BRAVO``, ``TFE`` ...), T2 (``T2``, ``TSE``/``FSE``
  without T1), FLAIR (``FLAIR``, ``dark-fluid``, ``TIRM``, ``da-fl``; not
  GE's T1 FLAIR, which is a T1), post-contrast markers in English, German
  (``KM``, ``nach KM``), French (``gado``, ``injecté``, ``après``), Spanish
  (``con contraste``), Japanese (``造影``) and their negations (``pre``,
  ``nativ``, ``sans``, ``sin``, ``単純``);
- physics: FLAIR is a long inversion (TI >= 1500 ms) with TE >= 60 ms; T2 a
  long TR (>= 1500 ms) and TE >= 60 ms; T1 a short TE (< 30 ms) with a short
  TR (< 1000 ms) or an inversion-prepared / gradient-echo sequence; PD and
  STIR are recognised as other weightings.

Description and physics must agree when both speak (a "T2" description on
TR 500/TE 12 is passed over as ``conflict``); either alone decides, except
that a role with a configured pattern is taken by description only
(``configured``). A T1-weighted series is the T1c when it is post-contrast,
else the T1; post-contrast is decided by, in this order, the acquisition
time against the contrast injection time (Contrast/Bolus Start Time of the
series, else the earliest one in the study), a pre-contrast word in the
description, a Contrast/Bolus Agent, a post-contrast word.

When two series qualify for one role, the documented preferences decide,
each only between those still equal (category of the one passed over):

1. T2 and FLAIR: acquired before contrast over after (``prefer-pre-contrast``);
2. 3D over 2D acquisition (``prefer-3d``, MR Acquisition Type);
3. T1, T2, FLAIR: the same orientation as the chosen T1c (``prefer-orientation``);
4. thinner slices (``prefer-thinner``, by 0.1 mm or more);
5. intensity-normalised over unfiltered images of the same acquisition
   (``prefer-normalised``: Image Type NORM, Siemens Prescan Normalize).

Series still equal after all of them are truly ambiguous: the job fails
naming them (``series_patterns`` resolves it). :func:`complete_when` gives
the description rules as route conditions, so a study completes early once
all four series are there (see :mod:`dicomnode.routing`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.pipelines.base import PipelineError, SeriesInput
from dicomnode.pipelines.selection import (
    CHOSEN,
    Decision,
    Selection,
    SelectionError,
    SeriesHeader,
    format_mm,
    is_secondary_capture,
    non_image_kind,
    series_name,
)

ROLES = ("T1", "T1c", "T2", "FLAIR")

# -- description patterns ----------------------------------------------------------------
# Tokens: "t1"/"t2" must not be part of a longer token ("st1", "t10", "t2*"); "_" and
# other separators count as boundaries, as vendors and sites use them.
_T1_TOKEN = r"(?<![a-z0-9])t1(?:w|flair|se|tse|ffe|tfe|(?![0-9a-z]))"
_T1_WORDS = (
    _T1_TOKEN + r"|mp-?rage|(?<![a-z])f?spgr|bravo|(?<![a-z])vibe(?![a-z])"
    r"|(?<![a-z])tfe(?![a-z])|(?<![a-z])tfl(?![a-z])"
)
_T2_TOKEN = r"(?<![a-z0-9])t2(?:w|flair|se|tse|(?![0-9*a-z]))"
_FLAIR_WORDS = (
    r"flair|dark[ _-]?fluid|(?<![a-z])tirm(?![a-z])|(?<![a-z])da[-_]?fl(?![a-z])"
    r"|(?<![a-z0-9])t2[ _-]?fl(?![a-z])|fluid.?attenuated"
)
# Pre- and post-contrast words: English, German (KM: Kontrastmittel, nativ), French
# (gado, injecté, après/avant, sans), Spanish (con/sin contraste), Japanese (造影: contrast
# enhanced, 造影前: before contrast, 単純: plain).
_PRE_WORDS = (
    r"(?<![a-z])(?:pre|pr[ée]|nativ|native|sans|sin|without|ohne|avant|plain)(?![a-z])"
    r"|non.?contrast|単純|造影前"
)
_POST_WORDS = (
    r"(?<![a-z])post|\+ ?c(?![a-z])|(?<![a-z])c\+|(?<![a-z])gd(?![a-z])|\+ ?gd|gado|contrast"
    r"|(?<![a-z])ce(?![a-z])|(?<![a-z])km(?![a-z])|\+ ?km|kontrast|injec|(?<![a-z])inj(?![a-z])"
    r"|apr[eè]s|gadolin|造影"
)

DEFAULT_PATTERNS: dict[str, str] = {
    # Not GE's "T1 FLAIR" (a T1 description without T2): that is a T1-weighted series.
    "FLAIR": rf"^(?!(?=.*(?:{_T1_TOKEN}))(?!.*(?:{_T2_TOKEN}))).*(?:{_FLAIR_WORDS})",
    "T1c": (
        rf"^(?!.*(?:{_PRE_WORDS})).*(?:(?:{_T1_WORDS}).*(?:{_POST_WORDS})"
        rf"|(?:{_POST_WORDS}).*(?:{_T1_WORDS})"
        r"|(?<![a-z0-9])t1 ?(?:ce|c|gd|\+ ?c?)(?![a-z0-9]))"
    ),
    # TSE/FSE alone is a T2, unless the description also says T1 or PD ("DP" in Spanish).
    "T2": (
        rf"{_T2_TOKEN}|^(?!.*(?:{_T1_WORDS}|(?<![a-z])(?:pd|dp)(?![a-z])))"
        r".*(?<![a-z])(?:tse|fse|frfse)(?![a-z])"
    ),
    "T1": _T1_WORDS,
}
# Order of tests: later roles' patterns also match earlier ones' descriptions (T1 ⊂ T1c).
_ORDER = ("FLAIR", "T1c", "T2", "T1")

_PRE = re.compile(_PRE_WORDS, re.I)
_POST = re.compile(_POST_WORDS, re.I)
_LOCALIZER = re.compile(
    r"locali[sz]|localizador|locator|(?<![a-z])loc(?![a-z])|scout|survey|surview|3.?plane|tri.?pilot"
    r"|rep[ée]rage|übersicht|uebersicht|位置決め|ロカライザ",
    re.I,
)
_CALIBRATION = re.compile(
    r"calibrat|kalibr|(?<![a-z])cal(?![a-z])|sense.?ref|ref.?scan|coil.?survey|field.?map"
    r"|(?<![a-z])b[01].?map|(?<![a-z])shim",
    re.I,
)
_DIFFUSION = re.compile(
    r"(?<![a-z])(?:dwi|dti|diff\w*|tensor|trace\w*|e?adc|fa|colfa|b ?\d{3,4}|resolve)(?![a-z])"
    r"|diffusion|difusi[oó]n|拡散",
    re.I,
)
_PERFUSION = re.compile(
    r"(?<![a-z])perf\w*|(?<![a-z])(?:dsc|dce|pwi|p?c?asl|(?:r|rel)?cb[fv]|mtt|ttp|tmax|k ?trans|leakage)"
    r"(?![a-z])|perfusi[oó]n|灌流",
    re.I,
)
_FUNCTIONAL = re.compile(r"(?<![a-z])(?:bold|fmri|resting.?state)(?![a-z])", re.I)
_SUSCEPTIBILITY = re.compile(
    r"(?<![a-z])(?:swi|swan|swip|venobold|hemo\w*|suscept\w*|minip|mnip|t2 ?star)(?![a-z])"
    r"|t2 ?\*|磁化率",
    re.I,
)
_ANGIOGRAPHY = re.compile(r"(?<![a-z])(?:tof|mra|mrv|angio\w*|venogra\w*)(?![a-z])", re.I)
_SUBTRACTION = re.compile(
    r"(?<![a-z])(?:sub|subtraction|subtrakt\w*|soustraction|sustracci[oó]n)(?![a-z])|差分",
    re.I,
)
_REFORMAT = re.compile(r"(?<![a-z])(?:mpr|mip|reformat\w*|3d.?recon)(?![a-z])", re.I)
_MAP = re.compile(r"(?<![a-z])(?:map|maps|mapping|mapa|carte|karte)(?![a-z])", re.I)
_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "0"}
_PHASE = {"P", "PHASE", "PHASE MAP", "R", "REAL", "I", "IMAGINARY"}

CATEGORIES = (
    "other-modality",
    "not-image",
    "secondary-capture",
    "localizer",
    "calibration",
    "diffusion",
    "perfusion",
    "functional",
    "susceptibility",
    "angiography",
    "subtraction",
    "reformat",
    "derived",
    "too-few-slices",
    "other-weighting",
    "not-recognised",
    "conflict",
    "configured",
    "prefer-pre-contrast",
    "prefer-3d",
    "prefer-orientation",
    "prefer-thinner",
    "prefer-normalised",
    "ambiguous",
)


@dataclass(frozen=True)
class Classified:
    """A series, the role it was given (None: not one of the four) and why.

    Attributes
    ----------
    reason
        The basis of the role (``description``, ``TR/TE/TI and contrast
        agent`` ...) or, without a role, the short reason it has none.
    category
        ``candidate`` for a role-bearing series, else the reason category (module docs).
    detail
        The sentence the timeline shows.
    """

    series: SeriesInput
    role: str | None
    reason: str
    category: str = "candidate"
    detail: str = ""
    acquisition_3d: bool = False
    orientation: str | None = None
    thickness: float | None = None
    post_contrast: bool = False
    normalised: bool = False

    @property
    def name(self) -> str:
        """How messages name the series: description and number."""
        return series_name(self.series)


# -- the physics ---------------------------------------------------------------------------


def _numbers(value: Any) -> list[float]:
    values = value if isinstance(value, list | tuple) else [value]
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _first_number(attributes: Mapping[str, Any], keyword: str) -> float | None:
    numbers = _numbers(attributes.get(keyword))
    return numbers[0] if numbers else None


def _strings(value: Any) -> set[str]:
    values = value if isinstance(value, list | tuple) else [value]
    out: set[str] = set()
    for v in values:
        if v is not None:
            out.update(p.strip().upper() for p in str(v).split("\\"))
    return out - {""}


def weighting(attributes: Mapping[str, Any]) -> str | None:
    """The weighting TR, TE, TI and Scanning Sequence say (None: they do not say).

    One of ``T1``, ``T2``, ``FLAIR``, ``PD``, ``STIR``, ``T2*`` (gradient echo
    with TE >= 10 ms and no inversion) or ``EPI`` (echo-planar: diffusion,
    perfusion or BOLD, never a structural input).
    """
    tr = _first_number(attributes, "RepetitionTime")
    te = _first_number(attributes, "EchoTime")
    ti = _first_number(attributes, "InversionTime")
    sequence = _strings(attributes.get("ScanningSequence"))
    if "EP" in sequence:
        return "EPI"
    if te is None:
        return None
    long_inversion = ti is not None and ti >= 1500
    if long_inversion and te >= 60:
        return "FLAIR"
    if "IR" in sequence and ti is not None and ti < 400 and te >= 30:
        return "STIR"
    if te >= 60 and (tr is None or tr >= 1500) and not long_inversion:
        return "T2"
    if "GR" in sequence and "IR" not in sequence and te >= 10:
        return "T2*"
    prepared = "GR" in sequence or ("IR" in sequence and ti is not None and ti < 1500)
    if te < 30 and ((tr is not None and tr < 1000) or prepared):
        return "T1"
    if te < 30 and tr is not None and tr >= 1500 and not long_inversion:
        return "PD"
    return None


def _has_agent(attributes: Mapping[str, Any]) -> bool:
    agent = attributes.get("ContrastBolusAgent")
    return agent is not None and str(agent).strip().upper() not in _NO_AGENT


def role_from_physics(attributes: Mapping[str, Any]) -> str | None:
    """The role from TR, TE, TI, Scanning Sequence and Contrast/Bolus Agent (None: unsure)."""
    weight = weighting(attributes)
    if weight == "T1":
        return "T1c" if _has_agent(attributes) else "T1"
    return weight if weight in ("T2", "FLAIR") else None


def _physics_text(attributes: Mapping[str, Any]) -> str:
    parts = []
    for label, keyword in (("TR", "RepetitionTime"), ("TE", "EchoTime"), ("TI", "InversionTime")):
        value = _first_number(attributes, keyword)
        if value is not None:
            parts.append(f"{label} {value:g}")
    return "/".join(parts) + " ms" if parts else "no TR/TE"


# -- descriptions --------------------------------------------------------------------------


def _compiled(patterns: Mapping[str, str] | None) -> dict[str, re.Pattern[str]]:
    merged = dict(DEFAULT_PATTERNS)
    for role, pattern in (patterns or {}).items():
        if role not in ROLES:
            raise PipelineError(f"series_patterns: {role!r} is not one of {', '.join(ROLES)}")
        merged[role] = str(pattern)
    try:
        return {role: re.compile(merged[role], re.IGNORECASE) for role in ROLES}
    except re.error as exc:
        raise PipelineError(f"series_patterns: bad regular expression: {exc}") from None


def check_patterns(patterns: Mapping[str, str] | None) -> None:
    """PipelineError when configured *patterns* name an unknown role or do not compile."""
    _compiled(patterns)


def role_from_description(description: str, patterns: Mapping[str, re.Pattern[str]]) -> str | None:
    """The first role (FLAIR, T1c, T2, T1) whose pattern the description matches."""
    for role in _ORDER:
        if patterns[role].search(description):
            return role
    return None


def _weight_of(role: str | None) -> str | None:
    return "T1" if role in ("T1", "T1c") else role


# -- what is not an input --------------------------------------------------------------------


def _b_values(header: SeriesHeader) -> list[float]:
    """b-values of the instances read: standard, Siemens, GE and Philips private elements."""
    values: list[Any] = list(header.each("DiffusionBValue"))
    values += header.private(0x0019, "SIEMENS MR HEADER", 0x0C)
    values += header.private(0x2001, "Philips Imaging DD 001", 0x03)
    # GE: the first of "Slop_int_6..9" is the b-value; some software versions add 1e9 to it.
    for value in header.private(0x0043, "GEMS_PARM_01", 0x39):
        numbers = _numbers(list(value) if not isinstance(value, str | bytes) else value)
        if not numbers and isinstance(value, str):
            numbers = _numbers(value.split("\\"))
        values += numbers[:1]
    out = []
    for value in values:
        for number in _numbers(value):
            out.append(number % 1e9 if number >= 1e9 else number)
    return sorted(set(out))


def _excluded(header: SeriesHeader) -> tuple[str, str] | None:
    """(category, sentence) when the series is none of the four inputs."""
    description = header.description
    modality = header.modality
    if modality and modality != "MR":
        return "other-modality", f"modality {modality}, not MR"
    kind = non_image_kind(header.sop_class_uid)
    if kind:
        return "not-image", f"{kind}, not an image"
    image_type = header.strings("ImageType")
    if is_secondary_capture(header.sop_class_uid) or "SCREEN SAVE" in image_type:
        return "secondary-capture", "a secondary capture (screen save), not an acquisition"
    if "LOCALIZER" in image_type or _LOCALIZER.search(description):
        return "localizer", "a localizer"
    if _CALIBRATION.search(description):
        return "calibration", "a calibration or reference scan"
    sequence = header.strings("ScanningSequence")
    sequence_name = str(header.get("SequenceName") or "")
    b_values = [b for b in _b_values(header) if b > 0]
    if (
        b_values
        or image_type & {"DIFFUSION", "ADC", "TRACEW", "FA", "EADC", "TENSOR"}
        or _DIFFUSION.search(description)
        or re.search(r"ep_b\d", sequence_name)
    ):
        shown = ", ".join(f"{b:g}" for b in sorted({0.0, *b_values})) if b_values else ""
        what = "a diffusion map" if "DERIVED" in image_type else "diffusion-weighted"
        return "diffusion", what + (f" (b = {shown} s/mm²)" if shown else "")
    if _PERFUSION.search(description) or image_type & {"PERFUSION", "PERF", "ASL"}:
        return "perfusion", "perfusion (DSC, DCE or ASL) or one of its maps"
    if _FUNCTIONAL.search(description):
        return "functional", "functional MRI (BOLD)"
    if "EP" in sequence:
        if "GR" in sequence:
            return "perfusion", "gradient-echo EPI (perfusion or BOLD), not a structural image"
        return "diffusion", "spin-echo EPI (diffusion), not a structural image"
    phase = image_type & _PHASE
    if (
        _SUSCEPTIBILITY.search(description)
        or image_type & {"SWI", "MNIP", "MINIP"}
        or "swi" in sequence_name.lower()
    ):
        return "susceptibility", "susceptibility-weighted (SWI, T2*, phase or minIP)"
    if phase:
        return "susceptibility", f"{'/'.join(sorted(phase))} images, not magnitude"
    if _ANGIOGRAPHY.search(description) or "TOF" in header.strings("SequenceVariant"):
        return "angiography", "angiography (TOF or contrast MRA)"
    derived = bool(image_type & {"DERIVED", "SECONDARY"})
    if "SUBTRACTION" in image_type or "SUB" in image_type or _SUBTRACTION.search(description):
        return "subtraction", "a subtraction"
    if image_type & {"MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP"} or (
        derived and _REFORMAT.search(description)
    ):
        return "reformat", "a reformat (MPR or MIP) of another series"
    if derived:
        return "derived", f"derived images (Image Type {'/'.join(header.values('ImageType'))})"
    if _MAP.search(description):
        return "derived", "a parameter map"
    weight = weighting(_physics(header))
    if weight == "T2*":
        return "susceptibility", f"T2*-weighted gradient echo ({_physics_text(_physics(header))})"
    if weight == "EPI":
        return "perfusion", "echo-planar, not a structural image"
    # Only a header read says a lone instance is one frame (not an enhanced multi-frame volume).
    if header.first is not None and header.images < 2:
        return "too-few-slices", "a single image"
    return None


def _physics(header: SeriesHeader) -> dict[str, Any]:
    """The physics attributes of a series, with stored values first."""
    keys = (
        "RepetitionTime",
        "EchoTime",
        "InversionTime",
        "ScanningSequence",
        "SequenceVariant",
        "ContrastBolusAgent",
    )
    return {k: header.get(k) for k in keys if header.get(k) is not None}


# -- contrast timing ------------------------------------------------------------------------


def _seconds(value: Any) -> float | None:
    """A TM value (``HHMMSS.ffffff`` or ``HH:MM:SS``) as seconds of the day."""
    text = str(value or "").strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}"


def _acquired(header: SeriesHeader) -> float | None:
    return _seconds(header.get("AcquisitionTime")) or _seconds(header.get("SeriesTime"))


def injection_time(headers: Sequence[SeriesHeader]) -> float | None:
    """The study's contrast injection: the earliest Contrast/Bolus Start Time of its series."""
    times = [t for t in (_seconds(h.get("ContrastBolusStartTime")) for h in headers) if t]
    return min(times) if times else None


def _post_contrast(
    header: SeriesHeader, described_post: bool, injected: float | None
) -> tuple[bool, str]:
    """Whether a series was acquired after contrast, and the evidence (module docs)."""
    acquired = _acquired(header)
    start = _seconds(header.get("ContrastBolusStartTime")) or injected
    if acquired is not None and start is not None:
        minutes = (acquired - start) / 60
        if minutes >= 0:
            return (
                True,
                f"acquired {minutes:.0f} min after the contrast injection ({_clock(start)})",
            )
        return False, f"acquired {-minutes:.0f} min before the contrast injection ({_clock(start)})"
    description = header.description
    if _PRE.search(description):
        return False, "the description says pre-contrast"
    agent = str(header.get("ContrastBolusAgent") or "").strip()
    if agent.upper() not in _NO_AGENT:
        return True, f"Contrast/Bolus Agent {agent}"
    if described_post or _POST.search(description):
        return True, "the description says post-contrast"
    return False, "no contrast agent"


# -- classification ----------------------------------------------------------------------------


def classify(
    series: SeriesInput,
    patterns: Mapping[str, str] | None = None,
    *,
    header: SeriesHeader | None = None,
    injected: float | None = None,
) -> Classified:
    """The role of one series, with the reason (see module docs).

    *header* is read from the series' first, middle and last instance when
    not given; *injected* is the study's contrast injection time (seconds of
    the day), see :func:`injection_time`.
    """
    header = header or SeriesHeader.read(series, 3)
    excluded = _excluded(header)
    if excluded:
        category, sentence = excluded
        return Classified(series, None, sentence, category, sentence)
    compiled = _compiled(patterns)
    configured = set(patterns or {})
    physics = _physics(header)
    described = role_from_description(header.description, compiled)
    described_weight = _weight_of(described)
    measured = weighting(physics)
    acquisition_3d = str(header.get("MRAcquisitionType") or "").upper() == "3D"
    orientation, thickness = header.orientation(), header.slice_thickness()
    # Siemens "Prescan Normalize" with unfiltered images kept: two series of one description.
    normalised = "NORM" in header.strings("ImageType")

    def result(
        role: str | None, reason: str, category: str, detail: str, post: bool = False
    ) -> Classified:
        return Classified(
            series,
            role,
            reason,
            category,
            detail,
            acquisition_3d,
            orientation,
            thickness,
            post,
            normalised,
        )

    physics_text = _physics_text(physics)
    if described_weight and measured in ("T1", "T2", "FLAIR", "PD", "STIR"):
        # A FLAIR without Inversion Time in its header looks like a T2: not a conflict.
        compatible = measured == described_weight or (
            described_weight == "FLAIR" and measured == "T2" and "InversionTime" not in physics
        )
        if not compatible:
            sentence = (
                f"the description says {described_weight} but {physics_text} is {measured}-weighted"
            )
            return result(None, "conflict", "conflict", sentence)
        basis, weight = "description", described_weight
        agree = f"description and {physics_text} agree"
    elif described_weight:
        basis, weight, agree = "description", described_weight, f"description ({physics_text})"
    elif measured in ("T1", "T2", "FLAIR"):
        basis, weight, agree = "physics", measured, physics_text
    elif measured in ("PD", "STIR"):
        sentence = f"{measured}-weighted ({physics_text}), none of T1, T2 or FLAIR"
        return result(None, "other weighting", "other-weighting", sentence)
    else:
        sentence = f"neither its description nor {physics_text} says T1, T2 or FLAIR"
        return result(None, "not recognised", "not-recognised", sentence)

    post, evidence = _post_contrast(header, described == "T1c", injected)
    if weight == "T1":
        role = "T1c" if post else "T1"
        if basis == "description" and "T1c" in configured:
            # A configured T1c pattern is the rule for the T1c: the description decides it.
            role = "T1c" if described == "T1c" else "T1"
            if role == "T1" and post:
                sentence = (
                    f"post-contrast T1 ({evidence}) whose description does not match the "
                    "configured T1c pattern"
                )
                return result(None, "configured", "configured", sentence)
    else:
        role = weight
    if basis == "physics" and role in configured:
        sentence = f"description does not match the configured {role} pattern"
        return result(None, sentence, "configured", sentence)
    if basis == "description":
        reason = "description"
        if role == "T1c" and described != "T1c":
            reason = f"description T1, {evidence}"
    else:
        reason = "TR/TE/TI and contrast agent"
    dimension = "3D" if acquisition_3d else "2D"
    phase = "post-contrast" if post else "pre-contrast"
    sentence = f"{dimension} {weight}-weighted, {phase} ({evidence}); {agree}"
    return result(role, reason, "candidate", sentence, post)


# -- choosing one per role -------------------------------------------------------------------


def _preferences(
    item: Classified, role: str, reference: Classified | None
) -> tuple[tuple[int, str, str], ...]:
    """(rank, category, what) per preference step: lower ranks win (module docs)."""
    steps = []
    if role in ("T2", "FLAIR"):
        steps.append((int(item.post_contrast), "prefer-pre-contrast", "acquired before contrast"))
    steps.append((0 if item.acquisition_3d else 1, "prefer-3d", "a 3D acquisition"))
    if role != "T1c" and reference is not None and reference.orientation:
        same = item.orientation == reference.orientation
        steps.append(
            (0 if same else 1, "prefer-orientation", f"{reference.orientation}, as the T1c")
        )
    thickness = round(item.thickness * 10) if item.thickness else 1 << 30
    steps.append((thickness, "prefer-thinner", "thinner slices"))
    steps.append((0 if item.normalised else 1, "prefer-normalised", "intensity-normalised (NORM)"))
    return tuple(steps)


def _pick(
    candidates: list[Classified], role: str, reference: Classified | None
) -> tuple[Classified | None, list[Classified], dict[str, tuple[str, str]]]:
    """The winner (None: ambiguous), the tied best, and why each loser lost."""
    if not candidates:
        return None, [], {}
    keyed = [(tuple(s[0] for s in _preferences(c, role, reference)), c) for c in candidates]
    keyed.sort(key=lambda kc: kc[0])
    best_key = keyed[0][0]
    tied = [c for k, c in keyed if k == best_key]
    reasons: dict[str, tuple[str, str]] = {}
    if len(tied) > 1:
        return None, tied, reasons
    winner = keyed[0][1]
    winning_steps = _preferences(winner, role, reference)
    for _, loser in keyed[1:]:
        for (mine, category, _), (theirs, _, what) in zip(
            _preferences(loser, role, reference), winning_steps, strict=True
        ):
            if mine != theirs:
                detail = what
                if category == "prefer-thinner":
                    detail = f"thinner slices ({format_mm(winner.thickness)} against "
                    detail += f"{format_mm(loser.thickness)})"
                reasons[loser.series.series_instance_uid] = (
                    category,
                    f"a {role} candidate ({loser.detail}), but {winner.name} is {detail}, "
                    "which goes first",
                )
                break
    return winner, tied, reasons


def choose_sequences(
    series: Sequence[SeriesInput], patterns: Mapping[str, str] | None = None
) -> Selection[dict[str, SeriesInput]]:
    """One series per role (T1, T1c, T2, FLAIR, in that order) and the decision on every series.

    Raises
    ------
    SelectionError
        A role has no series, or several that no preference separates, with
        a sentence saying which and how the series of the study were taken.
    """
    headers = {s.series_instance_uid: SeriesHeader.read(s, 3) for s in series}
    injected = injection_time([h for h in headers.values() if h.modality in ("MR", "")])
    classified = [
        classify(s, patterns, header=headers[s.series_instance_uid], injected=injected)
        for s in series
    ]
    by_role: dict[str, list[Classified]] = {role: [] for role in ROLES}
    for item in classified:
        if item.role is not None:
            by_role[item.role].append(item)
    chosen: dict[str, Classified] = {}
    lost: dict[str, tuple[str, str]] = {}
    ambiguous: dict[str, list[Classified]] = {}
    for role in ("T1c", "T1", "T2", "FLAIR"):  # the T1c first: the others follow its orientation
        winner, tied, reasons = _pick(by_role[role], role, chosen.get("T1c"))
        lost.update(reasons)
        if winner is not None:
            chosen[role] = winner
        elif tied:
            ambiguous[role] = tied
    decisions = []
    for item in classified:
        uid = item.series.series_instance_uid
        if item.role is not None and chosen.get(item.role) is item:
            decisions.append(Decision(item.series, CHOSEN, item.detail, item.role))
        elif uid in lost:
            decisions.append(Decision(item.series, *lost[uid], item.role))
        elif item.role is not None:
            others = " and ".join(c.name for c in ambiguous[item.role] if c is not item)
            sentence = f"a {item.role} candidate ({item.detail}) as good as {others}"
            decisions.append(Decision(item.series, "ambiguous", sentence, item.role))
        else:
            decisions.append(Decision(item.series, item.category, item.detail))
    missing = [role for role in ROLES if role not in chosen and role not in ambiguous]
    if not missing and not ambiguous:
        return Selection({role: chosen[role].series for role in ROLES}, tuple(decisions))
    problems = []
    if missing:
        problems.append(f"no {' and no '.join(missing)} series")
    for role in ROLES:
        if role in ambiguous:
            names = " and ".join(c.name for c in ambiguous[role])
            problems.append(
                f"{len(ambiguous[role])} candidate {role} series ({names}) that no preference "
                "(pre-contrast, 3D, orientation, thinner slices, normalised) separates"
            )
    hint = "; set series_patterns in [pipelines.brain_tumor] to choose" if ambiguous else ""
    raise SelectionError(
        f"brain tumour segmentation needs one T1, T1c, T2 and FLAIR series: the study has "
        f"{'; '.join(problems)} (found: {_described(classified)}){hint}",
        decisions,
    )


def _described(items: Sequence[Classified], limit: int = 16) -> str:
    parts = [f"{c.name} as {c.role}" if c.role else f"{c.name}: {c.detail}" for c in items]
    more = len(parts) - limit
    return (", ".join(parts[:limit]) + (f", and {more} more" if more > 0 else "")) or "none"


def select_sequences(
    series: Sequence[SeriesInput], patterns: Mapping[str, str] | None = None
) -> dict[str, SeriesInput]:
    """The series of each role (T1, T1c, T2, FLAIR): :func:`choose_sequences` without decisions."""
    return choose_sequences(series, patterns).chosen


def complete_when(patterns: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Route ``complete_when`` conditions: one series description per role is present.

    Each role's regex excludes the roles tested before it (a T1c description
    also matches the T1 pattern), so the study completes early only when all
    four distinct series have arrived.
    """
    merged = {**DEFAULT_PATTERNS, **(patterns or {})}
    conditions = []
    for index, role in enumerate(_ORDER):
        earlier = "|".join(f"(?:{merged[r]})" for r in _ORDER[:index])
        exclude = f"^(?!.*(?:{earlier}))" if earlier else ""
        regex = f"(?i){exclude}.*(?:{merged[role]})"
        conditions.append({"Modality": "MR", "SeriesDescription": {"regex": regex}})
    return conditions


def brain_route(send_to: Sequence[str] = (), *, name: str = "mr-brain-tumour") -> dict[str, Any]:
    """A ``[[routes]]`` entry sending MR studies to ``brain_tumor``, completing early on four series."""
    return {
        "name": name,
        "pipeline": "brain_tumor",
        "match": {"Modality": "MR"},
        "send_to": list(send_to),
        "complete_when": complete_when(),
    }
