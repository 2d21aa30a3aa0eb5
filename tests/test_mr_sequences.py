"""Series selection for the brain tumour pipeline: descriptions, physics, errors, early completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import RouteConfig
from dicomnode.pipelines.base import PipelineError, SeriesInput
from dicomnode.pipelines.brain_tumor.selection import (
    brain_route,
    choose_sequences,
    classify,
    complete_when,
    role_from_physics,
    select_sequences,
)
from dicomnode.routing import SeriesView, match_routes, required_series_present


def series(description: str, number: int = 1, **attributes: Any) -> SeriesInput:
    attributes = {"Modality": "MR", "SeriesNumber": number, **attributes}
    return SeriesInput(
        f"1.2.3.{number}", "MR", description, attributes, (Path(f"/nonexistent/{number}.dcm"),)
    )


T1 = {"RepetitionTime": 550.0, "EchoTime": 12.0, "ScanningSequence": ["SE"]}
MPRAGE = {
    "RepetitionTime": 1900.0,
    "EchoTime": 2.5,
    "InversionTime": 900.0,
    "ScanningSequence": ["GR", "IR"],
}
T2 = {"RepetitionTime": 4200.0, "EchoTime": 100.0, "ScanningSequence": ["SE"]}
FLAIR = {
    "RepetitionTime": 9000.0,
    "EchoTime": 120.0,
    "InversionTime": 2500.0,
    "ScanningSequence": ["SE", "IR"],
}


@pytest.mark.parametrize(
    ("description", "role"),
    [
        ("T1 SE AX", "T1"),
        ("AX_T1_SE", "T1"),
        ("t1_mprage_sag_p2_iso", "T1"),
        ("AX T1 POST GD", "T1c"),
        ("T1 MPRAGE AX POST GD", "T1c"),
        ("T1+C", "T1c"),
        ("T1CE", "T1c"),
        ("post contrast T1 3D", "T1c"),
        ("T2 TSE AX", "T2"),
        ("t2_tse_tra", "T2"),
        ("Ax T2W", "T2"),
        ("T2 FLAIR AX", "FLAIR"),
        ("t2_fl_tra", "FLAIR"),
        ("FLAIR AX", "FLAIR"),
        ("DWI b1000", None),
        ("AX T2*", None),
    ],
)
def test_role_from_description(description: str, role: str | None) -> None:
    assert classify(series(description)).role == role


def test_role_from_physics_when_the_description_says_nothing() -> None:
    assert role_from_physics(T1) == "T1"
    assert role_from_physics(MPRAGE) == "T1"
    assert role_from_physics({**MPRAGE, "ContrastBolusAgent": "Gadobutrol"}) == "T1c"
    assert role_from_physics({**T1, "ContrastBolusAgent": "NONE"}) == "T1"
    assert role_from_physics(T2) == "T2"
    assert role_from_physics(FLAIR) == "FLAIR"
    assert role_from_physics({"RepetitionTime": 3000.0, "EchoTime": 40.0}) is None  # PD-ish
    assert role_from_physics({}) is None
    found = classify(series("series 7", **{**MPRAGE, "ContrastBolusAgent": "Gd"}))
    assert (found.role, found.reason) == ("T1c", "TR/TE/TI and contrast agent")
    # A plain T1 description with a contrast agent is the post-contrast T1.
    assert classify(series("T1 SE AX", ContrastBolusAgent="Gadoterate")).role == "T1c"


def test_localisers_derived_and_other_modalities_are_left_out() -> None:
    assert classify(series("3-plane localizer", **T1)).role is None
    assert classify(series("T1 reformat", ImageType=["DERIVED", "SECONDARY", "MPR"])).role is None
    ct = SeriesInput("1.2.9", "CT", "T1", {"Modality": "CT"}, ())
    assert classify(ct).role is None


def four() -> list[SeriesInput]:
    return [
        series("T1 SE AX", 1, **T1),
        series("T1 MPRAGE AX POST GD", 2, **MPRAGE, ContrastBolusAgent="Gadobutrol"),
        series("T2 TSE AX", 3, **T2),
        series("FLAIR AX", 4, **FLAIR),
        series("3-plane loc", 5),
    ]


def test_selects_one_series_per_role_in_order() -> None:
    chosen = select_sequences(four())
    assert list(chosen) == ["T1", "T1c", "T2", "FLAIR"]
    assert [s.series_description for s in chosen.values()] == [
        "T1 SE AX",
        "T1 MPRAGE AX POST GD",
        "T2 TSE AX",
        "FLAIR AX",
    ]


def test_missing_flair_is_a_sentence_naming_it() -> None:
    with pytest.raises(PipelineError) as error:
        select_sequences(four()[:3])
    message = str(error.value)
    assert "the study has no FLAIR series" in message
    assert "'T2 TSE AX' (series 3) as T2" in message


def test_two_post_contrast_candidates_are_ambiguous() -> None:
    studies = [*four(), series("AX T1 POST GD", 8, **T1, ContrastBolusAgent="Gd")]
    with pytest.raises(PipelineError) as error:
        select_sequences(studies)
    message = str(error.value)
    assert (
        "2 candidate T1c series ('T1 MPRAGE AX POST GD' (series 2) and 'AX T1 POST GD' (series 8))"
        in message
    )
    assert "series_patterns" in message
    # Configured patterns resolve it: the other post-contrast series is then no candidate,
    # neither for the T1c (its description does not match) nor for the T1 (it has contrast).
    selection = choose_sequences(studies, {"T1c": "mprage.*post"})
    assert selection.chosen["T1"].series_description == "T1 SE AX"
    assert selection.category_of("1.2.3.8") == "configured"
    chosen = select_sequences(studies, {"T1c": "mprage.*post", "T1": "^T1 SE"})
    assert chosen["T1c"].series_description == "T1 MPRAGE AX POST GD"
    assert chosen["T1"].series_description == "T1 SE AX"


def test_bad_configured_pattern_is_a_clear_error() -> None:
    with pytest.raises(PipelineError, match="series_patterns: 'T3' is not one of"):
        select_sequences(four(), {"T3": "x"})
    with pytest.raises(PipelineError, match="bad regular expression"):
        select_sequences(four(), {"T1": "("})


def views(items: list[SeriesInput]) -> list[SeriesView]:
    return [
        SeriesView(
            s.series_instance_uid, {**s.attributes, "SeriesDescription": s.series_description}
        )
        for s in items
    ]


def test_brain_route_completes_early_only_with_all_four_series() -> None:
    route = RouteConfig.model_validate(brain_route(["pacs"]))
    assert len(route.complete_when) == 4 and complete_when() == route.complete_when
    assert [d.pipeline for d in match_routes([route], views(four()[:1]))] == ["brain_tumor"]
    assert required_series_present(route, views(four()))
    for missing in range(4):
        partial = [s for n, s in enumerate(four()) if n != missing]
        assert not required_series_present(route, views(partial)), missing
    # The T1c alone must not stand in for the plain T1 (its description also says "T1").
    t1c_twice = [four()[1], four()[1], four()[2], four()[3]]
    assert not required_series_present(route, views(t1c_twice))
