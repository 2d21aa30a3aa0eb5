"""fundus_dr: preprocessing, grading with the shipped bundle, review flag, SR + SC end to end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.config import PipelineConfig
from dicomnode.pipelines import JobContext, PipelineError, SeriesInput, pipeline_class
from dicomnode.pipelines.fundus_dr.preprocessing import NotFundusError, prepare_fundus
from dicomnode.pipelines.fundus_dr.report import heat_map_overlay
from dicomnode.synthetic import ct_series
from dicomnode.synthetic.fundus import FundusStudyTruth, fundus_photo, write_fundus_study
from dicomnode.testing.peers import dciodvfy

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
REVIEW = Code("NEEDS_REVIEW", "99DICOMNODE", "Needs human review")
REFERABLE = Code("REFERABLE_DR", "99DICOMNODE", "Referable diabetic retinopathy")
GRADE_CODES = ["272519000", "312903003", "312904009", "312905005", "59276001"]
QUESTION = {
    "R": Code("71491-5", "LN", "Right eye Diabetic retinopathy severity level"),
    "L": Code("71490-7", "LN", "Left eye Diabetic retinopathy severity level"),
}


# -- preprocessing -------------------------------------------------------------------------


def test_prepare_finds_the_field_whatever_its_position_and_exposure() -> None:
    photo = fundus_photo(2, size=400, seed=11)
    prepared = prepare_fundus(photo, 160)
    assert prepared.array.shape == (3, 160, 160) and prepared.array.dtype == np.float32
    top, left, side, _ = prepared.box
    assert 0.75 * 400 < side < 0.98 * 400  # the field (radius 0.40-0.47 of the width)
    assert prepared.mask[80, 80] and not prepared.mask[2, 2]
    assert abs(float(prepared.array[:, prepared.mask].mean())) < 0.05  # local mean removed
    # Exposure drops out: a darker copy of the same photograph gives nearly the same input.
    darker = prepare_fundus((photo * 0.6).astype(np.uint8), 160)
    assert np.abs(darker.array - prepared.array).mean() < 0.05


@pytest.mark.parametrize(
    ("picture", "reason"),
    [
        (np.zeros((200, 200, 3), np.uint8), "black"),
        (np.full((200, 200, 3), 120, np.uint8), "colours"),
        (np.zeros((200, 200), np.uint8), "colour"),
    ],
)
def test_prepare_rejects_what_is_not_a_fundus(picture: np.ndarray, reason: str) -> None:
    with pytest.raises(NotFundusError, match=reason):
        prepare_fundus(picture)


def test_prepare_rejects_a_field_that_is_not_round() -> None:
    picture = np.zeros((200, 200, 3), np.uint8)
    triangle = np.tril(np.ones((160, 160), bool))  # fills half its box; a disc fills 79 %
    picture[20:180, 20:180][triangle] = (200, 90, 40)
    with pytest.raises(NotFundusError, match="not round"):
        prepare_fundus(picture)


def test_heat_map_overlay_colours_only_where_the_map_is_hot() -> None:
    photo = fundus_photo(0, size=200, seed=2)
    cam = np.zeros((10, 10), np.float32)
    cam[:5, :5] = 1.0
    overlay = heat_map_overlay(photo, cam, (0, 0, 200, 200))
    assert np.array_equal(overlay[150:, 150:], photo[150:, 150:])  # cold: unchanged
    assert not np.array_equal(overlay[40:60, 40:60], photo[40:60, 40:60])


# -- the pipeline on stored files ------------------------------------------------------------


class Events:
    """Collects a job's timeline."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def __call__(self, stage: str, message: str, duration: float | None, level: str) -> None:
        self.lines.append((stage, message, level))


def context_for(paths: Sequence[Path], work: Path, events: Events) -> JobContext:
    groups: dict[str, list[Path]] = {}
    modalities: dict[str, str] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        groups.setdefault(ds.SeriesInstanceUID, []).append(path)
        modalities[ds.SeriesInstanceUID] = ds.Modality
        study = ds.StudyInstanceUID
    series = [
        SeriesInput(uid, modalities[uid], None, {}, tuple(group)) for uid, group in groups.items()
    ]
    work.mkdir(parents=True, exist_ok=True)
    return JobContext(7, study, series, work, event_sink=events)


@pytest.fixture(scope="module")
def pipeline() -> Any:
    config = PipelineConfig(device="cpu")
    return pipeline_class("fundus_dr")("fundus_dr", config)


def test_unknown_test_time_augmentation_is_a_config_error() -> None:
    config = PipelineConfig.model_validate({"device": "cpu", "tta": ["none", "rotate"]})
    with pytest.raises(PipelineError, match="tta must list some of none, hflip"):
        pipeline_class("fundus_dr")("fundus_dr", config)


def eye_groups(sr_path: Path) -> dict[str, Any]:
    groups = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    return {g.tracking_identifier: g for g in groups if g.tracking_identifier.endswith("eye")}


def run(pipeline: Any, truth: FundusStudyTruth, tmp_path: Path, extra: Sequence[Path] = ()) -> Any:
    events = Events()
    paths = [i.path for i in truth.images] + list(extra)
    results = pipeline.run(context_for(paths, tmp_path / "work", events))
    for result in results:
        assert dciodvfy(result.path) == [], (result.path, dciodvfy(result.path))
    return results, events


def test_grades_each_eye_with_codes_probabilities_and_heat_maps(
    pipeline: Any, tmp_path: Path
) -> None:
    truth = write_fundus_study(tmp_path / "in", {"R": 3, "L": 0}, seed=21, size=448)
    results, events = run(pipeline, truth, tmp_path)
    assert sorted(r.sop_class_uid for r in results) == [SC_CLASS, SC_CLASS, SR_CLASS]
    sr_path = next(r.path for r in results if r.sop_class_uid == SR_CLASS)
    eyes = eye_groups(sr_path)
    assert sorted(eyes) == ["Left eye", "Right eye"]
    for label, eye in (("Right eye", "R"), ("Left eye", "L")):
        group = eyes[label]
        assert group.finding_type.value == "4855003"  # diabetic retinopathy
        (grade,) = group.get_qualitative_evaluations(name=QUESTION[eye])
        assert grade.value.value == GRADE_CODES[truth.grade_of_eye(eye)]
        (referable,) = group.get_qualitative_evaluations(name=REFERABLE)
        assert referable.value == (codes.SCT.Yes if eye == "R" else codes.SCT.No)
        (review,) = group.get_qualitative_evaluations(name=REVIEW)
        assert review.value == codes.SCT.No  # sharp, well exposed: confident
        probabilities = [m.value for m in group.get_measurements() if m.name.value.startswith("P")]
        assert len(probabilities) == 5 and sum(probabilities) == pytest.approx(100, abs=0.1)
    sc = [pydicom.dcmread(r.path) for r in results if r.sop_class_uid == SC_CLASS]
    assert {s.StudyInstanceUID for s in sc} == {truth.study_instance_uid}
    assert sorted(s.Laterality for s in sc) == ["L", "R"]
    assert all(s.SamplesPerPixel == 3 and s.Rows == 448 for s in sc)
    assert any(stage == "postprocess" and "grade 3" in m for stage, m, _ in events.lines)


def test_blurred_and_half_dark_photographs_need_human_review(pipeline: Any, tmp_path: Path) -> None:
    truth = write_fundus_study(
        tmp_path / "in", {"R": 2, "L": 1}, seed=22, size=448, degrade={"R": "blur", "L": "dark"}
    )
    results, _ = run(pipeline, truth, tmp_path)
    eyes = eye_groups(next(r.path for r in results if r.sop_class_uid == SR_CLASS))
    for label in ("Right eye", "Left eye"):
        (review,) = eyes[label].get_qualitative_evaluations(name=REVIEW)
        assert review.value == codes.SCT.Yes, label


def test_a_non_fundus_image_is_skipped_with_a_sentence_not_a_failed_study(
    pipeline: Any, tmp_path: Path
) -> None:
    truth = write_fundus_study(tmp_path / "in", {"R": 0}, seed=23, size=320)
    grey = pydicom.dcmread(truth.images[0].path)
    grey.SOPInstanceUID = grey.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    grey.InstanceNumber = 2
    grey.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    grey.PixelData = np.full((320, 320, 3), 90, np.uint8).tobytes()
    grey.PhotometricInterpretation = "RGB"
    grey.NumberOfFrames = 1
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio"):
        delattr(grey, keyword)
    grey["PixelData"].VR = "OB"
    path = tmp_path / "grey.dcm"
    grey.save_as(path, enforce_file_format=True)
    results, events = run(pipeline, truth, tmp_path, extra=[path])
    warnings = [m for _, m, level in events.lines if level == "warning"]
    assert warnings == [
        "image 2 (grey.dcm) is not gradable: the colours are not those of a fundus "
        "(mean R 90, G 90, B 90)"
    ]
    assert sorted(r.sop_class_uid for r in results) == [SC_CLASS, SR_CLASS]


def test_a_study_without_photographs_fails_with_a_sentence(pipeline: Any, tmp_path: Path) -> None:
    paths = []
    for n, ds in enumerate(ct_series(2, 32, 32, seed=1)):
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    with pytest.raises(PipelineError, match="no ophthalmic photographs"):
        pipeline.run(context_for(paths, tmp_path / "work", Events()))


# -- end to end: storescu → node → Orthanc -------------------------------------------------------


@pytest.mark.slow
def test_fundus_study_by_storescu_gets_sr_and_heat_maps_in_orthanc(
    make_settings: Any, start_node: Any, tmp_path: Path
) -> None:
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.conftest import NODE_AE
    from tests.test_flow import wait_for_jobs

    truth = write_fundus_study(tmp_path / "in", {"R": 2, "L": 4}, seed=24, size=512)
    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            destinations=[orthanc.destination()],
            routes=[{"pipeline": "fundus_dr", "match": {"Modality": "OP"}, "send_to": ["pacs"]}],
            pipelines={"fundus_dr": {"device": "cpu"}},
        )
        node = start_node(settings, workers=1)
        study_id = [orthanc.upload(i.path)["ParentStudy"] for i in truth.images][0]
        sent = storescu(
            [i.path for i in truth.images],
            host="127.0.0.1",
            port=node.receiver.port,
            called_aet=NODE_AE,
        )
        assert sent.returncode == 0, sent.stderr
        (job,) = wait_for_jobs(node, timeout=120)
        assert job["status"] == "done", job
        assert [o["status"] for o in job["outputs"]] == ["sent"] * 3
        for output in job["outputs"]:
            assert dciodvfy(node.store.root / output["path"]) == []
        assert orthanc.find_study(truth.study_instance_uid) == study_id
        series = {
            s["MainDicomTags"]["Modality"]: s["MainDicomTags"]
            for s in orthanc.series_of_study(study_id)
        }
        assert sorted(series) == ["OP", "OT", "SR"]  # results in the source study
        assert series["SR"]["SeriesDescription"] == "fundus_dr report (Not for diagnostic use)"
        sr_path = next(
            node.store.root / o["path"] for o in job["outputs"] if o["sop_class_uid"] == SR_CLASS
        )
        eyes = eye_groups(sr_path)
        for label, eye in (("Right eye", "R"), ("Left eye", "L")):
            (grade,) = eyes[label].get_qualitative_evaluations(name=QUESTION[eye])
            assert grade.value.value == GRADE_CODES[truth.grade_of_eye(eye)], label
