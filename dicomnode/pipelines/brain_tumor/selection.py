"""Which MR series is the T1, the post-contrast T1 (T1c), the T2 and the FLAIR.

A series is classified by its Series Description first (regexes, configurable
per role), else by its acquisition physics:

- FLAIR: long inversion time (TI >= 1500 ms) with a long echo time;
- T2: long TR and long TE (TE >= 60 ms) and no long inversion;
- T1: short TE (< 30 ms) with a short TR (< 1000 ms), or a gradient echo /
  inversion-prepared (MPRAGE-like, TI < 1500 ms) sequence;
- a T1 with a Contrast/Bolus Agent is the T1c, as is a description that says
  post-contrast (``post``, ``+C``, ``Gd``, ``contrast``, ``T1CE`` ...).

Configured patterns (``series_patterns``) replace the defaults, and a role
with a configured pattern is chosen by description only. Localisers and
derived images (reformats, maps, subtractions) are left out.
:func:`select_sequences` needs exactly one series per role and fails with a
sentence naming what is missing or ambiguous; :func:`complete_when` gives the
same description rules as route conditions, so a study completes early once
all four series are there (see :mod:`dicomnode.routing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.pipelines.base import PipelineError, SeriesInput

ROLES = ("T1", "T1c", "T2", "FLAIR")

# Description patterns (case-insensitive, searched anywhere). "t1" must not be part of a
# longer token such as "st1" or "t10"; separators like "_" count as boundaries.
DEFAULT_PATTERNS: dict[str, str] = {
    "FLAIR": r"flair|dark[ _-]?fluid|(?<![a-z0-9])t2[ _-]?fl(?![a-z])",
    "T1c": (
        r"(?<![a-z0-9])(t1|mprage|spgr|bravo|vibe|t1w)(?![0-9]).*"
        r"(post|\+ ?c(?![a-z])|(?<![a-z])gd|gado|contrast|(?<![a-z])ce(?![a-z])|(?<![a-z])c\+)"
        r"|(?<![a-z0-9])t1 ?(ce|c|gd|\+c?)(?![a-z0-9])"
        r"|(post|(?<![a-z])gd|gado|contrast).*(?<![a-z0-9])(t1|mprage|spgr|bravo)(?![0-9])"
    ),
    "T2": r"(?<![a-z0-9])t2(w|(?![0-9*a-z]))|(?<![a-z])tse(?![a-z])",
    "T1": r"(?<![a-z0-9])t1(w|(?![0-9a-z]))|mprage|spgr|bravo",
}
# Order of tests: later roles' patterns also match earlier ones' descriptions (T1 ⊂ T1c).
_ORDER = ("FLAIR", "T1c", "T2", "T1")
_SKIP = re.compile(r"loc(alizer|aliser)?(?![a-z])|scout|survey|calibration|3-?plane", re.I)
_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "0"}


@dataclass(frozen=True)
class Classified:
    """A series and the role it was given (None: not one of the four), with why."""

    series: SeriesInput
    role: str | None
    reason: str

    @property
    def name(self) -> str:
        """How messages name the series: description and number."""
        attributes = self.series.attributes
        text = f"'{self.series.series_description or 'no description'}'"
        number = attributes.get("SeriesNumber")
        return f"{text} (series {number})" if number not in (None, "") else text


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


def _has_agent(attributes: Mapping[str, Any]) -> bool:
    agent = attributes.get("ContrastBolusAgent")
    return agent is not None and str(agent).strip().upper() not in _NO_AGENT


def role_from_physics(attributes: Mapping[str, Any]) -> str | None:
    """The role from TR, TE, TI, Scanning Sequence and Contrast/Bolus Agent (None: unsure)."""
    tr = _first_number(attributes, "RepetitionTime")
    te = _first_number(attributes, "EchoTime")
    ti = _first_number(attributes, "InversionTime")
    sequence = _strings(attributes.get("ScanningSequence"))
    long_inversion = ti is not None and ti >= 1500
    if te is None:
        return None
    if long_inversion and te >= 60:
        return "FLAIR"
    if te >= 60 and (tr is None or tr >= 1500) and not long_inversion:
        return "T2"
    prepared = "GR" in sequence or ("IR" in sequence and ti is not None and ti < 1500)
    if te < 30 and ((tr is not None and tr < 1000) or prepared):
        return "T1c" if _has_agent(attributes) else "T1"
    return None


def role_from_description(description: str, patterns: Mapping[str, re.Pattern[str]]) -> str | None:
    """The first role (FLAIR, T1c, T2, T1) whose pattern the description matches."""
    for role in _ORDER:
        if patterns[role].search(description):
            return role
    return None


def _skipped(series: SeriesInput) -> str | None:
    attributes = series.attributes
    modality = series.modality or attributes.get("Modality")
    if modality and str(modality).upper() != "MR":
        return f"modality {modality}"
    image_type = _strings(attributes.get("ImageType"))
    if "LOCALIZER" in image_type or _SKIP.search(series.series_description or ""):
        return "localiser"
    if "DERIVED" in image_type:
        return "derived images"
    return None


def classify(series: SeriesInput, patterns: Mapping[str, str] | None = None) -> Classified:
    """The role of one series, with the reason (see module docs)."""
    skipped = _skipped(series)
    if skipped:
        return Classified(series, None, skipped)
    compiled = _compiled(patterns)
    role = role_from_description(series.series_description or "", compiled)
    if role is not None:
        # A plain "T1" description with a contrast agent given is the post-contrast T1,
        # unless the T1c pattern is configured: then the description decides alone.
        configured_t1c = bool(patterns and "T1c" in patterns)
        if role == "T1" and _has_agent(series.attributes) and not configured_t1c:
            return Classified(series, "T1c", "description T1, contrast agent given")
        return Classified(series, role, "description")
    role = role_from_physics(series.attributes)
    if role is not None and patterns and role in patterns:
        # A configured pattern is the rule for its role: physics does not add candidates.
        return Classified(series, None, f"description does not match the configured {role} pattern")
    if role is not None:
        return Classified(series, role, "TR/TE/TI and contrast agent")
    return Classified(series, None, "not recognised")


def _described(items: Iterable[Classified]) -> str:
    return ", ".join(f"{c.name} as {c.role or 'unrecognised'}" for c in items) or "none"


def select_sequences(
    series: Sequence[SeriesInput], patterns: Mapping[str, str] | None = None
) -> dict[str, SeriesInput]:
    """Exactly one series per role (T1, T1c, T2, FLAIR), in that order.

    Raises
    ------
    PipelineError
        A role has no series, or more than one, with a sentence saying which
        and how the series of the study were classified.
    """
    classified = [classify(s, patterns) for s in series]
    by_role: dict[str, list[Classified]] = {role: [] for role in ROLES}
    for item in classified:
        if item.role is not None:
            by_role[item.role].append(item)
    missing = [role for role in ROLES if not by_role[role]]
    ambiguous = [role for role in ROLES if len(by_role[role]) > 1]
    if not missing and not ambiguous:
        return {role: by_role[role][0].series for role in ROLES}
    problems = []
    if missing:
        problems.append(f"no {' and no '.join(missing)} series")
    for role in ambiguous:
        names = " and ".join(c.name for c in by_role[role])
        problems.append(f"{len(by_role[role])} candidate {role} series ({names})")
    mr = [
        c
        for c in classified
        if c.reason not in ("localiser",) and not c.reason.startswith("modality")
    ]
    hint = "; set series_patterns in [pipelines.brain_tumor] to choose" if ambiguous else ""
    raise PipelineError(
        f"brain tumour segmentation needs one T1, T1c, T2 and FLAIR series: the study has "
        f"{'; '.join(problems)} (found: {_described(mr)}){hint}"
    )


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
