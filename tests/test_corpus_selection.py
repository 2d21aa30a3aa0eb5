"""Every corpus study through every pipeline's series selection, and unusable ones through a worker.

The corpus (:mod:`dicomnode.synthetic.corpus_studies`) holds realistic study
compositions of Siemens, GE, Philips and Canon CT and MR and of four fundus
camera makers, named as sites in English, German, French, Spanish and
Japanese do. For each study the expected series must be chosen and every
other series passed over with the expected reason category and a sentence;
no study may crash any pipeline's selection; an unusable study ends as a
failed job whose error names what is missing and what was found.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicomnode.pipelines.base import SeriesInput
from dicomnode.pipelines.brain_tumor import selection as brain
from dicomnode.pipelines.fundus_dr import selection as fundus
from dicomnode.pipelines.lung_nodule import selection as lung
from dicomnode.pipelines.selection import CHOSEN, Decision, Selection, SelectionError
from dicomnode.synthetic.corpus import CorpusStudy, StudySpec, write_corpus_study
from dicomnode.synthetic.corpus_studies import STUDIES, study

Choose = Callable[[Sequence[SeriesInput], Mapping[str, Any]], Selection[Any]]

CHOOSE: dict[str, Choose] = {
    "lung_nodule": lambda series, options: lung.choose_ct_series(series, **options),
    "brain_tumor": lambda series, options: brain.choose_sequences(
        series, options.get("series_patterns")
    ),
    "fundus_dr": lambda series, options: fundus.choose_photographs(series),
}
CATEGORIES = {
    "lung_nodule": set(lung.CATEGORIES),
    "brain_tumor": set(brain.CATEGORIES),
    "fundus_dr": set(fundus.CATEGORIES),
}
NAMES = [spec.name for spec in STUDIES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusStudy]:
    root = tmp_path_factory.mktemp("corpus")
    return {spec.name: write_corpus_study(spec, root / spec.name) for spec in STUDIES}


def decide(
    study_: CorpusStudy, pipeline: str
) -> tuple[Selection[Any] | None, tuple[Decision, ...], str]:
    """Run *pipeline*'s selection: (selection or None, decisions, error sentence or "")."""
    options = study_.spec.options if pipeline == study_.spec.pipeline else {}
    try:
        selection = CHOOSE[pipeline](study_.inputs(), options)
    except SelectionError as exc:
        return None, exc.decisions, str(exc)
    return selection, selection.decisions, ""


def outcome(spec: StudySpec, decision: Decision) -> str:
    """What the corpus expects a decision to say: the role for MR inputs, else the category."""
    if decision.chosen and spec.pipeline == "brain_tumor":
        return str(decision.role)
    return decision.category


def number(decision: Decision) -> int:
    return int(decision.series.attributes["SeriesNumber"])


@pytest.mark.parametrize("name", NAMES)
def test_each_study_chooses_what_a_careful_reader_would(
    corpus: dict[str, CorpusStudy], name: str
) -> None:
    study_ = corpus[name]
    spec = study_.spec
    selection, decisions, error = decide(study_, spec.pipeline)
    # One decision per series, in the study's order, each with a sentence.
    assert [number(d) for d in decisions] == sorted(s.number for s in spec.series)
    got = {number(d): outcome(spec, d) for d in decisions}
    assert got == spec.expected(), "\n".join(d.line for d in decisions)
    for decision in decisions:
        assert decision.reason and decision.line.startswith(
            "chosen " if decision.chosen else "passed over "
        ), decision.line
        assert decision.name in decision.line
        assert decision.chosen or decision.category in CATEGORIES[spec.pipeline]
    if spec.error:
        assert selection is None, "an unusable study must fail"
        for words in spec.error:
            assert words in error, error
        return
    assert selection is not None, error
    chosen = selection.chosen
    if spec.pipeline == "lung_nodule":
        (expected,) = [s.number for s in spec.series if s.expect == CHOSEN]
        assert chosen.series_instance_uid == study_.series_uid(expected)
    elif spec.pipeline == "brain_tumor":
        assert list(chosen) == list(brain.ROLES)
        for role, series in chosen.items():
            (expected,) = [s.number for s in spec.series if s.expect == role]
            assert series.series_instance_uid == study_.series_uid(expected), role
    else:
        # Per image: the chosen instances are exactly the expected ones, each other its reason.
        by_number = {number(d): d for d in decisions}
        for series_spec in spec.series:
            if not series_spec.images:
                continue
            images = sorted(by_number[series_spec.number].images, key=lambda i: i.instance_number)
            assert [i.category for i in images] == [i.expect for i in series_spec.images]
            kept = {s.series_instance_uid: s.paths for s in chosen}
            wanted = tuple(i.path for i in images if i.chosen)
            assert kept.get(study_.series_uid(series_spec.number), ()) == wanted


@pytest.mark.parametrize("name", NAMES)
def test_no_study_crashes_any_pipelines_selection(
    corpus: dict[str, CorpusStudy], name: str
) -> None:
    study_ = corpus[name]
    for pipeline in CHOOSE:
        selection, decisions, error = decide(study_, pipeline)
        assert len(decisions) == len(study_.spec.series), pipeline
        if selection is None:
            # What is there is named, series by series.
            assert "found:" in error
            for decision in decisions:
                assert decision.name in error or "more" in error, (pipeline, error)


def test_the_corpus_covers_vendors_languages_and_series_kinds() -> None:
    def of(pipeline: str) -> list[StudySpec]:
        return [s for s in STUDIES if s.pipeline == pipeline]

    for pipeline in ("lung_nodule", "brain_tumor"):
        assert {s.vendor for s in of(pipeline)} >= {"Siemens", "GE", "Philips", "Canon"}
        assert len({s.language for s in of(pipeline)} - {"en"}) >= 2
    assert len({s.vendor for s in of("fundus_dr")}) >= 4
    assert len({s.language for s in of("fundus_dr")} - {"en"}) >= 2
    expected = {
        pipeline: {e for s in of(pipeline) for e in s.expected().values()}
        | {i.expect for s in of(pipeline) for series in s.series for i in series.images}
        for pipeline in CHOOSE
    }
    assert expected["lung_nodule"] >= {
        "chosen",
        "localizer",
        "thicker",
        "kernel",
        "contrast",
        "mip",
        "mpr",
        "not-axial",
        "derived",
        "secondary-capture",
        "dose-report",
        "monitoring",
        "other-modality",
    }
    assert expected["brain_tumor"] >= {
        *brain.ROLES,
        "localizer",
        "calibration",
        "diffusion",
        "perfusion",
        "susceptibility",
        "angiography",
        "reformat",
        "subtraction",
        "derived",
        "other-weighting",
        "secondary-capture",
        "prefer-3d",
        "prefer-orientation",
        "prefer-pre-contrast",
        "prefer-normalised",
        "ambiguous",
    }
    assert expected["fundus_dr"] >= {
        "chosen",
        "not-colour",
        "not-fundus",
        "stereo-pair",
        "document",
        "derived",
        "not-image",
        "other-modality",
    }
    # Dose reports both as RDSR and as screen captures; enhanced multi-frame CT chosen.
    ct_series = [x for s in of("lung_nodule") for x in s.series]
    assert {x.kind for x in ct_series if x.expect == "dose-report"} == {"dose-sr", "screen"}
    assert any(x.frames and x.expect == CHOSEN for x in ct_series)
    # Photographs as OP, VL Photographic and Secondary Capture.
    photo_classes = {
        x.sop_class_uid for s in of("fundus_dr") for x in s.series if x.expect == CHOSEN
    }
    assert photo_classes >= {fundus_class for fundus_class in fundus.PHOTOGRAPH_SOP_CLASSES}


def test_written_headers_are_what_the_specs_say(corpus: dict[str, CorpusStudy]) -> None:
    # Japanese descriptions survive ISO 2022 IR 87 and the node's stored attributes.
    canon = corpus["ct-canon-ja"]
    described = {s.series_description for s in canon.inputs()}
    assert "肺野 0.5 FC51" in described and "胸部 単純 1.0 FC07" in described
    enhanced = pydicom.dcmread(canon.files[4][0], stop_before_pixels=True)
    assert int(enhanced.NumberOfFrames) == 4 and len(canon.files[4]) == 1
    # Fundus cameras' JPEG baseline, YBR_FULL_422.
    topcon = pydicom.dcmread(corpus["fundus-topcon"].files[1][0])
    assert topcon.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert topcon.PhotometricInterpretation == "YBR_FULL_422"
    assert topcon.pixel_array.shape == (64, 64, 3)
    # Vendor private b-values where the vendors put them.
    siemens = pydicom.dcmread(corpus["mr-siemens-de"].files[7][-1], stop_before_pixels=True)
    assert siemens.get_private_item(0x0019, 0x0C, "SIEMENS MR HEADER").value == 1000
    ge = pydicom.dcmread(corpus["mr-ge-es"].files[5][-1], stop_before_pixels=True)
    assert list(ge.get_private_item(0x0043, 0x39, "GEMS_PARM_01").value)[0] == 1000


def test_kernel_classes_of_the_four_vendors() -> None:
    assert lung.kernel_class(["Bl57d", "3"]) == 2
    assert lung.kernel_class(["Br40d", "3"]) == 0
    assert lung.kernel_class(["I70f", "3"]) == 1
    assert lung.kernel_class(["B70f"]) == 1
    assert lung.kernel_class(["LUNG"]) == 2 and lung.kernel_class(["BONE"]) == 1
    assert lung.kernel_class(["STANDARD"]) == 0
    assert lung.kernel_class(["L"]) == 2 and lung.kernel_class(["YA"]) == 1
    assert lung.kernel_class(["B"]) == 0
    assert lung.kernel_class(["FC51"]) == 2 and lung.kernel_class(["FC86"]) == 1
    assert lung.kernel_class(["FC07"]) == 0
    assert lung.kernel_class([], "Lunge 1.0") == 2 and lung.kernel_class([], "Thorax") == 0


def test_repeated_images_at_one_position_are_bolus_monitoring(
    corpus: dict[str, CorpusStudy],
) -> None:
    # Not named as monitoring: its positions give it away.
    inputs = corpus["ct-siemens-de"].inputs()
    monitoring = next(s for s in inputs if s.attributes["SeriesNumber"] == 11)
    renamed = SeriesInput(
        monitoring.series_instance_uid,
        "CT",
        "Thorax  10.0  Br36d",
        {**monitoring.attributes, "SeriesDescription": "Thorax  10.0  Br36d"},
        monitoring.paths,
    )
    selection = lung.choose_ct_series([*inputs[:3], renamed])
    assert selection.category_of(renamed.series_instance_uid) == "monitoring"


def test_stereo_pairs_without_a_relationship_pair_in_instance_order(
    corpus: dict[str, CorpusStudy],
) -> None:
    inputs = [s for s in corpus["fundus-zeiss-de"].inputs() if s.attributes["SeriesNumber"] != 4]
    selection = fundus.choose_photographs(inputs)
    stereo = next(d for d in selection.decisions if number(d) == 3)
    assert [i.category for i in stereo.images] == ["chosen", "stereo-pair"]


def test_mr_series_patterns_settle_an_ambiguous_study(corpus: dict[str, CorpusStudy]) -> None:
    inputs = corpus["mr-siemens-ambiguous"].inputs()
    selection = brain.choose_sequences(inputs, {"T1c": "repeat"})
    assert selection.chosen["T1c"].series_description == "t1_se_tra_post_repeat"
    # The other post-contrast T1 is then neither T1c (its description) nor T1 (it has contrast).
    first = next(s for s in inputs if s.series_description == "t1_se_tra_post")
    assert selection.category_of(first.series_instance_uid) == "configured"


# -- through the job queue and a worker ---------------------------------------------------------


def dataset_bytes(path: Path) -> bytes:
    """The data set of a DICOM file (after preamble and file meta), as C-STORE carries it."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[fp.tell() :]


@pytest.mark.parametrize(
    ("name", "pipeline", "words"),
    [
        ("ct-siemens-unusable", "lung_nodule", ("no CT series with plane geometry",)),
        ("mr-ge-missing-flair", "brain_tumor", ("the study has no FLAIR series",)),
        ("fundus-heidelberg-unusable", "fundus_dr", ("no colour fundus photograph",)),
    ],
)
def test_an_unusable_study_fails_its_job_naming_what_is_missing_and_found(
    make_settings: Callable[..., Any],
    tmp_path: Path,
    name: str,
    pipeline: str,
    words: tuple[str, ...],
) -> None:
    from dicomnode.assembly import Assembler
    from dicomnode.config import RouteConfig
    from dicomnode.database import make_engine, session_factory, upgrade
    from dicomnode.jobs import JobQueue, job_to_dict
    from dicomnode.store import InstanceStore
    from dicomnode.workers import Worker

    spec = study(name)
    written = write_corpus_study(spec, tmp_path / "study")
    route = {"name": "corpus", "pipeline": pipeline, "match": {}}
    settings = make_settings(routes=[route], pipelines={pipeline: {"device": "cpu"}})
    upgrade(settings.database.url)
    sessions = session_factory(make_engine(settings.database.url))
    store = InstanceStore(Path(settings.storage.path), sessions, fsync=False)
    for paths in written.files.values():
        for path in paths:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            store.store(dataset_bytes(path), str(meta.TransferSyntaxUID))
    assembler = Assembler(sessions, settings.assembly, [RouteConfig.model_validate(route)])
    time.sleep(settings.assembly.quiet_seconds + 0.1)  # the study is complete once quiet
    assert assembler.tick() == [written.study_instance_uid]
    assert Worker(settings, sessions=sessions).run_once()
    queue = JobQueue(sessions)
    (job,) = [job_to_dict(queue.get(j.id), events=True) for j in queue.list()]
    assert job["status"] == "failed"
    for expected in (*words, *spec.error):
        assert expected in job["error"], job["error"]
    # The timeline has one line per series, saying what became of it.
    lines = [
        e["message"] for e in job["events"] if e["message"].startswith(("chosen ", "passed over "))
    ]
    assert len(lines) == len(spec.series), lines
    for series in spec.series:
        assert any(f"(series {series.number})" in line for line in lines), series.number
