"""Route matching on series attributes (no network)."""

from __future__ import annotations

from dicomnode.config import RouteConfig
from dicomnode.routing import (
    SeriesView,
    keywords_used,
    match_routes,
    required_series_present,
    series_matches,
)

CT = SeriesView(
    "1.1",
    {
        "Modality": "CT",
        "SliceThickness": "1.25",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SeriesDescription": "Chest 1.25mm",
        "CallingAETitle": "SCANNER1",
    },
)
SCOUT = SeriesView(
    "1.2",
    {
        "Modality": "CT",
        "SliceThickness": 5.0,
        "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
        "SeriesDescription": "Scout",
    },
)
T1C = SeriesView("2.1", {"Modality": "MR", "SeriesDescription": "T1 post gad"})
FLAIR = SeriesView("2.2", {"Modality": "MR", "SeriesDescription": "AX FLAIR"})


def test_conditions() -> None:
    assert series_matches(CT.attributes, {"Modality": "ct "})
    assert series_matches(CT.attributes, {"Modality": ["MR", "CT"]})
    assert not series_matches(CT.attributes, {"Modality": ["MR", "PT"]})
    assert series_matches(CT.attributes, {"SeriesDescription": {"regex": "(?i)chest"}})
    assert not series_matches(SCOUT.attributes, {"SeriesDescription": {"regex": "(?i)chest"}})
    assert series_matches(CT.attributes, {"SliceThickness": {"min": 0.5, "max": 2.5}})
    assert not series_matches(SCOUT.attributes, {"SliceThickness": {"max": 2.5}})
    assert series_matches(CT.attributes, {"ImageType": "AXIAL"})
    assert series_matches(CT.attributes, {"ImageType": {"contains": ["ORIGINAL", "AXIAL"]}})
    assert not series_matches(SCOUT.attributes, {"ImageType": {"contains": ["ORIGINAL", "AXIAL"]}})
    assert series_matches(CT.attributes, {"CallingAETitle": "SCANNER1"})
    assert not series_matches(CT.attributes, {"BodyPartExamined": "CHEST"})  # absent: no match
    assert not series_matches({"SliceThickness": "thin"}, {"SliceThickness": {"max": 2.5}})


def test_first_match_wins_unless_continue() -> None:
    routes = [
        RouteConfig(pipeline="lung", match={"Modality": "CT", "SliceThickness": {"max": 2.5}}),
        RouteConfig(pipeline="ct_any", match={"Modality": "CT"}),
        RouteConfig(pipeline="brain", match={"Modality": "MR"}),
    ]
    assert [d.pipeline for d in match_routes(routes, [CT, SCOUT])] == ["lung"]
    assert [d.pipeline for d in match_routes(routes, [SCOUT])] == ["ct_any"]
    routes[0] = RouteConfig(
        pipeline="lung", match={"Modality": "CT"}, continue_matching=True, priority=5
    )
    decisions = match_routes(routes, [CT])
    assert [(d.pipeline, d.priority) for d in decisions] == [("lung", 5), ("ct_any", 0)]
    assert match_routes(routes, [SeriesView("3", {"Modality": "OP"})]) == []


def test_complete_when_needs_every_series() -> None:
    route = RouteConfig(
        pipeline="brain",
        match={"Modality": "MR"},
        complete_when=[
            {"SeriesDescription": {"regex": "(?i)t1.*(post|gad)"}},
            {"SeriesDescription": {"regex": "(?i)flair"}},
        ],
    )
    assert not required_series_present(route, [T1C])
    assert required_series_present(route, [T1C, FLAIR])
    assert not required_series_present(RouteConfig(pipeline="x"), [T1C, FLAIR])
    assert keywords_used([route]) == {"Modality", "SeriesDescription"}
