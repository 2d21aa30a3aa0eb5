"""Route matching on series attributes (no network)."""

from __future__ import annotations

import pytest

from dicomnode.config import RouteConfig
from dicomnode.routing import (
    SeriesView,
    condition_holds,
    keywords_used,
    match_routes,
    required_series_present,
    series_matches,
    validate_conditions,
)

CT = SeriesView(
    "1.1",
    {
        "Modality": "CT",
        "SliceThickness": "1.25",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SeriesDescription": "Chest 1.25mm",
        "BodyPartExamined": "CHEST",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "CallingAETitle": "SCANNER1",
        "CalledAETitle": "DICOMNODE",
    },
)
SCOUT = SeriesView(
    "1.2",
    {
        "Modality": "CT",
        "SliceThickness": 5.0,
        "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
        "SeriesDescription": "Scout",
        "CallingAETitle": "SCANNER1",
    },
)
T1C = SeriesView("2.1", {"Modality": "MR", "SeriesDescription": "T1 post gad"})
FLAIR = SeriesView("2.2", {"Modality": "MR", "SeriesDescription": "AX FLAIR"})
DWI = SeriesView("2.3", {"Modality": "MR", "SeriesDescription": "DWI b1000"})


# -- single conditions --------------------------------------------------------------------


@pytest.mark.parametrize("expected", ["CT", "ct", " ct ", "Ct"])
def test_equality_is_case_insensitive_and_stripped(expected: str) -> None:
    assert series_matches(CT.attributes, {"Modality": expected})


def test_equality_mismatch_and_absent_attribute() -> None:
    assert not series_matches(CT.attributes, {"Modality": "MR"})
    assert not series_matches(SCOUT.attributes, {"BodyPartExamined": "CHEST"})  # absent
    assert not series_matches({"Modality": None}, {"Modality": "CT"})
    assert series_matches(CT.attributes, {"BodyPartExamined": "chest"})
    assert series_matches(CT.attributes, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"})
    assert not series_matches(CT.attributes, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})


def test_list_is_any_of() -> None:
    assert series_matches(CT.attributes, {"Modality": ["MR", "CT"]})
    assert series_matches(CT.attributes, {"Modality": ["pt", "ct"]})
    assert not series_matches(CT.attributes, {"Modality": ["MR", "PT"]})
    assert not series_matches(CT.attributes, {"Modality": []})
    assert series_matches(CT.attributes, {"Modality": {"any": ["MR", "CT"]}})
    assert not series_matches(CT.attributes, {"Modality": {"any": ["MR"]}})


def test_regex_on_series_description() -> None:
    chest = {"SeriesDescription": {"regex": "(?i)chest"}}
    assert series_matches(CT.attributes, chest)
    assert not series_matches(SCOUT.attributes, chest)
    # A search, not a full match; case-sensitive unless the pattern says otherwise.
    assert series_matches(CT.attributes, {"SeriesDescription": {"regex": r"1\.25"}})
    assert not series_matches(CT.attributes, {"SeriesDescription": {"regex": "chest"}})
    assert series_matches(CT.attributes, {"SeriesDescription": {"regex": "^Chest"}})
    assert not series_matches(CT.attributes, {"SeriesDescription": {"regex": "^1"}})
    assert series_matches(T1C.attributes, {"SeriesDescription": {"regex": "(?i)t1.*(post|gad)"}})
    assert not series_matches({}, {"SeriesDescription": {"regex": ".*"}})  # absent


@pytest.mark.parametrize(
    ("value", "condition", "matches"),
    [
        ("1.25", {"min": 0.5, "max": 2.5}, True),
        (1.25, {"min": 0.5, "max": 2.5}, True),
        (" 1.25 ", {"max": 2.5}, True),
        ("5", {"max": 2.5}, False),
        (5.0, {"max": 2.5}, False),
        (5.0, {"min": 2.5}, True),
        ("0.5", {"min": 0.5, "max": 2.5}, True),  # bounds are inclusive
        (2.5, {"min": 0.5, "max": 2.5}, True),
        (2.5000001, {"max": 2.5}, False),
        (0, {"min": 0}, True),
        ("thin", {"max": 2.5}, False),
        (None, {"max": 2.5}, False),
        (["1.0", "5.0"], {"min": 4}, True),  # multi-valued: any value in range
    ],
)
def test_numeric_range_on_slice_thickness(value: object, condition: dict, matches: bool) -> None:
    assert series_matches({"SliceThickness": value}, {"SliceThickness": condition}) is matches


def test_numeric_equality_compares_numbers() -> None:
    assert series_matches({"SliceThickness": "1.25"}, {"SliceThickness": 1.25})
    assert series_matches({"SeriesNumber": "3"}, {"SeriesNumber": 3})
    assert not series_matches({"SeriesNumber": "3"}, {"SeriesNumber": 4})
    assert not series_matches({"SeriesNumber": "three"}, {"SeriesNumber": 3})


def test_contains_on_multi_valued_image_type() -> None:
    assert series_matches(CT.attributes, {"ImageType": "AXIAL"})  # equality: one of the values
    assert series_matches(CT.attributes, {"ImageType": "axial"})
    assert not series_matches(SCOUT.attributes, {"ImageType": "AXIAL"})
    both = {"ImageType": {"contains": ["ORIGINAL", "AXIAL"]}}
    assert series_matches(CT.attributes, both)
    assert not series_matches(SCOUT.attributes, both)  # has ORIGINAL but not AXIAL
    assert series_matches(SCOUT.attributes, {"ImageType": {"contains": "localizer"}})
    assert series_matches({"ImageType": ("DERIVED", "SECONDARY")}, {"ImageType": "SECONDARY"})
    assert not series_matches({}, {"ImageType": {"contains": ["ORIGINAL"]}})


def test_operators_combine_with_and() -> None:
    condition = {"regex": "^ORIG", "contains": ["AXIAL"]}
    assert series_matches(CT.attributes, {"ImageType": condition})
    assert not series_matches(SCOUT.attributes, {"ImageType": condition})


def test_calling_and_called_ae_title() -> None:
    assert series_matches(CT.attributes, {"CallingAETitle": "SCANNER1"})
    assert series_matches(CT.attributes, {"CallingAETitle": ["SCANNER2", "scanner1"]})
    assert not series_matches(CT.attributes, {"CallingAETitle": "SCANNER2"})
    assert series_matches({"CallingAETitle": "SCANNER1  "}, {"CallingAETitle": "SCANNER1"})
    assert series_matches(CT.attributes, {"CalledAETitle": "DICOMNODE"})
    assert not series_matches(T1C.attributes, {"CallingAETitle": "SCANNER1"})  # unknown caller


def test_all_conditions_must_hold_and_empty_match_is_a_catch_all() -> None:
    conditions = {"Modality": "CT", "SliceThickness": {"max": 2.5}, "CallingAETitle": "SCANNER1"}
    assert series_matches(CT.attributes, conditions)
    assert not series_matches(SCOUT.attributes, conditions)
    assert series_matches(T1C.attributes, {})


def test_condition_holds_directly() -> None:
    assert condition_holds(["A", "B"], "b")
    assert condition_holds("x", {"regex": ""})
    assert not condition_holds(None, "CT")


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"Modallity": "CT"}, "'Modallity' is not a DICOM keyword"),
        ({"SeriesDescription": {"regex": "("}}, "SeriesDescription: bad regex"),
        ({"SliceThickness": {"maximum": 1}}, "use one of regex, min, max, contains, any"),
        ({"SliceThickness": {}}, "use one of"),
        ({"SliceThickness": {"min": "0.5"}}, "min must be a number"),
    ],
)
def test_validate_conditions_rejects(conditions: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_conditions(conditions)


def test_validate_conditions_accepts_ae_keys_and_operators() -> None:
    validate_conditions(
        {
            "CallingAETitle": "SCANNER1",
            "CalledAETitle": ["A", "B"],
            "SliceThickness": {"min": 0, "max": 2.5},
            "ImageType": {"contains": ["AXIAL"], "regex": "ORIG"},
            "Modality": {"any": ["CT", "PT"]},
        }
    )


def test_route_config_validates_match_and_complete_when() -> None:
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        RouteConfig(pipeline="x", match={"NotAKeyword": "1"})
    with pytest.raises(ValueError, match="bad regex"):
        RouteConfig(pipeline="x", complete_when=[{"SeriesDescription": {"regex": "["}}])


# -- routes -------------------------------------------------------------------------------


def test_first_match_wins_unless_continue() -> None:
    routes = [
        RouteConfig(pipeline="lung", match={"Modality": "CT", "SliceThickness": {"max": 2.5}}),
        RouteConfig(pipeline="ct_any", match={"Modality": "CT"}),
        RouteConfig(pipeline="brain", match={"Modality": "MR"}),
    ]
    assert [d.pipeline for d in match_routes(routes, [CT, SCOUT])] == ["lung"]
    assert [d.pipeline for d in match_routes(routes, [SCOUT])] == ["ct_any"]
    assert [d.pipeline for d in match_routes(routes, [T1C, FLAIR])] == ["brain"]
    routes[0] = RouteConfig(
        pipeline="lung", match={"Modality": "CT"}, continue_matching=True, priority=5
    )
    decisions = match_routes(routes, [CT])
    assert [(d.pipeline, d.priority) for d in decisions] == [("lung", 5), ("ct_any", 0)]
    assert [d.index for d in decisions] == [0, 1]


def test_continue_matching_on_a_later_route_only() -> None:
    routes = [
        RouteConfig(pipeline="a", match={"Modality": "CT"}),
        RouteConfig(pipeline="b", match={"Modality": "CT"}, continue_matching=True),
        RouteConfig(pipeline="c", match={"Modality": "CT"}),
    ]
    assert [d.pipeline for d in match_routes(routes, [CT])] == ["a"]  # a stops the search
    routes = [routes[1], routes[0], routes[2]]
    assert [d.pipeline for d in match_routes(routes, [CT])] == ["b", "a"]


def test_one_series_must_meet_every_condition() -> None:
    # The study has a thin series and a scout; the route wants a thin scout: no match.
    route = RouteConfig(
        pipeline="x",
        match={"SliceThickness": {"max": 2.5}, "ImageType": "LOCALIZER"},
    )
    assert match_routes([route], [CT, SCOUT]) == []


def test_no_match_gives_empty_list() -> None:
    routes = [RouteConfig(pipeline="lung", match={"Modality": "CT"})]
    assert match_routes(routes, [SeriesView("3", {"Modality": "OP"})]) == []
    assert match_routes(routes, []) == []
    assert match_routes([], [CT]) == []


def test_decision_carries_name_send_to_and_priority() -> None:
    routes = [
        RouteConfig(pipeline="brain", match={"Modality": "MR"}),
        RouteConfig(
            name="chest",
            pipeline="lung",
            match={"Modality": "CT"},
            send_to=["pacs", "sender"],
            priority=3,
        ),
    ]
    (decision,) = match_routes(routes, [CT])
    assert decision.name == "chest"
    assert decision.send_to == ("pacs", "sender")
    assert decision.priority == 3 and decision.index == 1
    (unnamed,) = match_routes(routes, [T1C])
    assert unnamed.name == "route1-brain"  # derived from position and pipeline
    assert unnamed.send_to == ()


def test_complete_when_needs_every_series() -> None:
    route = RouteConfig(
        pipeline="brain",
        match={"Modality": "MR"},
        complete_when=[
            {"SeriesDescription": {"regex": "(?i)t1.*(post|gad)"}},
            {"SeriesDescription": {"regex": "(?i)flair"}},
        ],
    )
    assert not required_series_present(route, [])
    assert not required_series_present(route, [T1C])
    assert not required_series_present(route, [FLAIR, DWI])
    assert required_series_present(route, [T1C, FLAIR])
    assert required_series_present(route, [DWI, FLAIR, T1C])
    # Without complete_when a route never completes early.
    assert not required_series_present(RouteConfig(pipeline="x"), [T1C, FLAIR])


def test_keywords_used_collects_match_and_complete_when_but_not_ae_titles() -> None:
    routes = [
        RouteConfig(
            pipeline="brain",
            match={"Modality": "MR", "CallingAETitle": "SCANNER1"},
            complete_when=[{"SeriesDescription": {"regex": "(?i)flair"}}],
        ),
        RouteConfig(
            pipeline="lung",
            match={"SliceThickness": {"max": 2.5}, "ImageType": "AXIAL", "CalledAETitle": "N"},
        ),
    ]
    assert keywords_used(routes) == {"Modality", "SeriesDescription", "SliceThickness", "ImageType"}
    assert keywords_used([]) == set()
