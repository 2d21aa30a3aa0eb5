"""Routes: which pipeline a study goes to, decided from its content.

A route's ``match`` is a table of DICOM keywords to conditions. A study
matches when **one of its series** satisfies every condition (study-level
keywords such as StudyDescription are copied onto each series). Conditions:

- ``Modality = "CT"``: equality (strings compare case-insensitively after
  stripping); on a multi-valued attribute such as ImageType, the value must
  be one of its values;
- ``Modality = ["CT", "PT"]``: any of;
- ``SeriesDescription = { regex = "(?i)t1.*post" }``: a Python regex search;
- ``SliceThickness = { min = 0.5, max = 2.5 }``: an inclusive numeric range;
- ``ImageType = { contains = ["ORIGINAL", "AXIAL"] }``: all of these values;
- ``CallingAETitle`` / ``CalledAETitle``: the AE titles of the association
  the series arrived on.

Routes are tried in order; the first that matches wins unless it sets
``continue_matching = true``. A study no route matches is recorded as
``unmatched``. ``complete_when`` lists series conditions that, once each is
met by some series, let the study complete before ``quiet_seconds``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_OPERATORS = {"regex", "min", "max", "contains", "any"}
AE_KEYS = {"CallingAETitle", "CalledAETitle"}


def validate_conditions(conditions: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first malformed condition."""
    from pydicom.datadict import tag_for_keyword

    for keyword, condition in conditions.items():
        if keyword not in AE_KEYS and tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword!r} is not a DICOM keyword")
        if isinstance(condition, dict):
            unknown = set(condition) - _OPERATORS
            if unknown or not condition:
                raise ValueError(
                    f"{keyword}: use one of regex, min, max, contains, any (got {sorted(unknown)})"
                )
            if "regex" in condition:
                try:
                    re.compile(str(condition["regex"]))
                except re.error as exc:
                    raise ValueError(f"{keyword}: bad regex: {exc}") from None
            for bound in ("min", "max"):
                if bound in condition and not isinstance(condition[bound], int | float):
                    raise ValueError(f"{keyword}: {bound} must be a number")


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return bool(actual == expected)
    if isinstance(expected, int | float):
        try:
            return abs(float(actual) - float(expected)) < 1e-6
        except (TypeError, ValueError):
            return False
    return str(actual).strip().upper() == str(expected).strip().upper()


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def condition_holds(actual: Any, condition: Any) -> bool:
    """Whether an attribute value satisfies one condition (see module docs)."""
    values = _values(actual)
    if isinstance(condition, dict):
        if "regex" in condition:
            pattern = _regex(str(condition["regex"]))
            if not any(pattern.search(str(v)) for v in values):
                return False
        if "min" in condition or "max" in condition:
            numbers = [n for n in map(_number, values) if n is not None]
            if not numbers:
                return False
            lo = condition.get("min", float("-inf"))
            hi = condition.get("max", float("inf"))
            if not any(lo <= n <= hi for n in numbers):
                return False
        if "contains" in condition:
            wanted = _values(condition["contains"])
            if not all(any(_equal(v, w) for v in values) for w in wanted):
                return False
        if "any" in condition:
            options = _values(condition["any"])
            if not any(_equal(v, o) for v in values for o in options):
                return False
        return True
    if isinstance(condition, list):
        return any(_equal(v, option) for v in values for option in condition)
    return any(_equal(v, condition) for v in values)


def series_matches(attributes: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    """Whether one series' attributes satisfy every condition."""
    return all(condition_holds(attributes.get(k), c) for k, c in conditions.items())


@dataclass(frozen=True)
class SeriesView:
    """What routing sees of one series."""

    series_instance_uid: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class RouteDecision:
    """A route that matched a study."""

    index: int
    name: str
    pipeline: str
    send_to: tuple[str, ...]
    priority: int


def _route_name(index: int, route: Any) -> str:
    return str(route.name or f"route{index + 1}-{route.pipeline}")


def match_routes(routes: Sequence[Any], series: Iterable[SeriesView]) -> list[RouteDecision]:
    """The routes (``RouteConfig``) that a study made of *series* goes to, in order."""
    series = list(series)
    decisions: list[RouteDecision] = []
    for index, route in enumerate(routes):
        if any(d.pipeline == route.pipeline for d in decisions):
            continue  # one job per (study, pipeline): the earlier route's settings win
        if any(series_matches(s.attributes, route.match) for s in series):
            decisions.append(
                RouteDecision(
                    index=index,
                    name=_route_name(index, route),
                    pipeline=route.pipeline,
                    send_to=tuple(route.send_to),
                    priority=route.priority,
                )
            )
            if not route.continue_matching:
                break
    return decisions


def required_series_present(route: Any, series: Iterable[SeriesView]) -> bool:
    """Whether each ``complete_when`` entry of *route* is met by some series."""
    if not route.complete_when:
        return False
    series = list(series)
    return all(any(series_matches(s.attributes, c) for s in series) for c in route.complete_when)


def keywords_used(routes: Iterable[Any]) -> set[str]:
    """Every DICOM keyword that some route tests (the receiver keeps these per series)."""
    used: set[str] = set()
    for route in routes:
        for conditions in [route.match, *route.complete_when]:
            used.update(k for k in conditions if k not in AE_KEYS)
    return used
