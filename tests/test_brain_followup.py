"""Brain tumour follow-up: compartment changes and the volumetric RANO suggestion against the prior MR.

A synthetic head MR pair (``dicomnode.synthetic.followup.head_pair``: the same
patient, a known interval, the tumour grown or shrunk with known compartment
volumes, the head moved in the scanner; written as four-series studies by
``write_head_pair``) is the data. The shipped segmentation model runs on both
studies; the node finds the prior (its own database, or Orthanc as a
``[[sources]]`` entry), registers it on the brain, and writes the follow-up SR.
Real parts throughout: SQLite, DCMTK storescu, Orthanc, SimpleITK, dciodvfy,
highdicom's ``srread``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.config import PipelineConfig, Settings
from dicomnode.followup import rano
from dicomnode.followup.stage import time_point_of
from dicomnode.pipelines import JobContext
from dicomnode.pipelines.brain_tumor import BrainTumorPipeline
from dicomnode.pipelines.brain_tumor.followup import COMPARTMENT_OF
from dicomnode.pipelines.brain_tumor.selection import ROLES
from dicomnode.results.codes import RANO_RESPONSE, VOLUME_CHANGE, VOLUME_CHANGE_ML
from dicomnode.service import Node
from dicomnode.synthetic.followup import HeadPair, head_pair, write_head_pair
from dicomnode.synthetic.mr import MRStudyTruth
from dicomnode.testing.peers import dciodvfy
from tests.readers import assessment
from tests.test_brain_tumor import series_input
from tests.test_priors import node_priors, push_and_settle

# A held-out evaluation seed (docs/followup.md), progression: the enhancing rim grew.
SEED = 3100003
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

pytestmark = pytest.mark.slow


def brain_followup_report(path: Path) -> dict[str, Any]:
    """What a TID 1500 reader gets from a brain follow-up SR (highdicom ``srread``).

    ``compartments``: per tracking identifier ("Enhancing tumour", …, "Whole
    tumour"), its ``uid``, ``volume`` (current, mL), ``prior_volume`` (mL),
    ``change_ml``, ``change_percent`` and ``time_points``; ``category`` the RANO
    code value; ``text`` the comparison or baseline sentence; ``other_studies``
    the studies of the Pertinent Other Evidence.
    """
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(path)
    content: Any = sr.content
    found: dict[str, dict[str, Any]] = {}
    groups = [
        *content.get_planar_roi_measurement_groups(),
        *content.get_volumetric_roi_measurement_groups(),
    ]
    for group in groups:
        label = str(group.tracking_identifier)
        item = found.setdefault(label, {"uids": set(), "time_points": set()})
        item["uids"].add(str(group.tracking_uid))
        point = time_point_of(group)
        if point is not None:
            item["time_points"].add(point)
        key = "prior_volume" if point == "prior" else "volume"
        for concept, name in (
            (codes.SCT.Volume, key),
            (VOLUME_CHANGE_ML, "change_ml"),
            (VOLUME_CHANGE, "change_percent"),
        ):
            measured = group.get_measurements(name=concept)
            if measured:
                assert measured[0].unit.value == ("%" if concept == VOLUME_CHANGE else "ml")
                item[name] = float(measured[0].value)
    for item in found.values():
        (item["uid"],) = item.pop("uids")  # one Tracking UID per compartment, both time points
    return {
        "compartments": {k: v for k, v in found.items() if k in COMPARTMENT_OF},
        **assessment(sr, RANO_RESPONSE),
    }


def check_changes(report: dict[str, Any], pair: HeadPair, within_pp: float) -> dict[str, float]:
    """Each compartment's reported change (%) against the phantom's; the errors (points)."""
    truth = pair.true_change_percent()
    errors = {}
    for label, name in COMPARTMENT_OF.items():
        item = report["compartments"][label]
        assert item["time_points"] == {"prior", "current"}, (label, item)
        assert item["change_ml"] == pytest.approx(item["volume"] - item["prior_volume"], abs=2e-3)
        if math.isnan(truth[name]) or truth[name] is None:
            continue
        errors[name] = item["change_percent"] - truth[name]
    # The compartments the model measures well (the model card: the necrotic core of a
    # small tumour is a few mL and the hardest), within *within_pp* points.
    for name in ("enhancing", "oedema", "whole"):
        assert abs(errors[name]) <= within_pp, errors
    return errors


@pytest.fixture(scope="module")
def pair() -> HeadPair:
    return head_pair(SEED, scenario="progression")


@pytest.fixture(scope="module")
def studies(pair: HeadPair, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MRStudyTruth]:
    return write_head_pair(pair, tmp_path_factory.mktemp("head-pair"))


@pytest.fixture(scope="module")
def shipped() -> BrainTumorPipeline:
    return BrainTumorPipeline("brain_tumor", PipelineConfig(device="cpu"))


def _paths(study: MRStudyTruth) -> list[Path]:
    return [p for role in ROLES for p in study.series[role]]


def _context(
    node: Node, study: MRStudyTruth, work: Path, events: list[tuple[str, str, str]]
) -> JobContext:
    def sink(stage: str, message: str, seconds: float | None, level: str) -> None:
        events.append((stage, message, level))

    work.mkdir(parents=True)
    uid = study.study_instance_uid
    return JobContext(
        job_id=11,
        study_instance_uid=uid,
        series=[series_input(study.series[role]) for role in ROLES],
        work_dir=work,
        event_sink=sink,
        priors=node_priors(node, uid, sink, job_id=11, pipeline="brain_tumor"),
    )


def test_priors_stage_reports_each_compartments_change_and_the_rano_suggestion(
    shipped: BrainTumorPipeline,
    pair: HeadPair,
    studies: dict[str, MRStudyTruth],
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    node = start_node(make_settings())
    baseline = studies["baseline"]
    push_and_settle(node, _paths(baseline), [baseline.study_instance_uid])
    events: list[tuple[str, str, str]] = []
    results = shipped.run(_context(node, studies["followup"], tmp_path / "out", events))
    (line,) = [m for s, m, _ in events if s == "priors" and m.startswith("Compared with")]
    assert baseline.study_instance_uid in line and f"{pair.interval_days} days" in line, line
    assert "running the model on it" in line  # the node never reported on the prior
    assert any(s == "priors" and m.startswith("prior infer") for s, m, _ in events)
    sr = next(r.path for r in results if r.sop_class_uid == SR_CLASS)
    assert dciodvfy(sr) == [], dciodvfy(sr)
    report = brain_followup_report(sr)
    assert report["other_studies"] == {baseline.study_instance_uid}
    errors = check_changes(report, pair, within_pp=10.0)
    print("change errors (points):", {k: round(v, 1) for k, v in errors.items()})
    truth = rano.volumetric_response(
        pair.baseline.true_volumes_ml["enhancing"], pair.followup.true_volumes_ml["enhancing"]
    )
    assert truth.category == "PD"
    assert report["category"] == "RANOPD", report
    assert "RANO 2.0 volumetric PD" in report["text"]
    # The SEG's segments carry the SR's Tracking UIDs (the prior's derived ones).
    seg = hd.seg.segread(next(r.path for r in results if r.sop_class_uid == SEG_CLASS))
    uids = {c["uid"] for c in report["compartments"].values()}
    assert {str(s.TrackingUID) for s in seg.SegmentSequence} <= uids
    # Stable: the same prior gives the same Tracking UIDs on a second run.
    again = shipped.run(_context(node, studies["followup"], tmp_path / "again", []))
    sr2 = next(r.path for r in again if r.sop_class_uid == SR_CLASS)
    assert {k: v["uid"] for k, v in brain_followup_report(sr2)["compartments"].items()} == {
        k: v["uid"] for k, v in report["compartments"].items()
    }


def test_no_prior_gives_a_baseline_report(
    shipped: BrainTumorPipeline,
    studies: dict[str, MRStudyTruth],
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    node = start_node(make_settings())
    events: list[tuple[str, str, str]] = []
    results = shipped.run(_context(node, studies["followup"], tmp_path / "out", events))
    sr = next(r.path for r in results if r.sop_class_uid == SR_CLASS)
    assert dciodvfy(sr) == []
    report = brain_followup_report(sr)
    assert report["text"].startswith("Baseline report: No prior found: no earlier MR study"), (
        report["text"]
    )
    assert report["category"] is None and report["other_studies"] == set()
    for item in report["compartments"].values():
        assert item["time_points"] == set() and "change_ml" not in item
    head = pydicom.dcmread(sr)
    assert head.StudyInstanceUID == studies["followup"].study_instance_uid
    assert np.isfinite(report["compartments"]["Whole tumour"]["volume"])


# -- end to end: storescu → node (prior from Orthanc or its own database) → SR in Orthanc -------


def brain_node(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], **sections: Any
) -> Node:
    from dicomnode.pipelines.brain_tumor.selection import brain_route

    settings = make_settings(
        # The four-series rule completes each study (the test does not wait out a quiet time).
        assembly={"quiet_seconds": 600, "early_quiet_seconds": 2.0},
        routes=[brain_route(["pacs"])],
        pipelines={"brain_tumor": {"device": "cpu"}},
        **sections,
    )
    return start_node(settings, workers=1)


def test_follow_up_pushed_prior_retrieved_from_orthanc_sr_in_orthanc(
    pair: HeadPair,
    studies: dict[str, MRStudyTruth],
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    from dicomnode.jobs import JobQueue
    from dicomnode.testing.peers import Orthanc
    from tests.conftest import NODE_AE
    from tests.test_lung_followup_e2e import job_of, orthanc_sr, push

    prior_uid = studies["baseline"].study_instance_uid
    current_uid = studies["followup"].study_instance_uid
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in _paths(studies["baseline"]):
            orthanc.upload(path)  # the PACS has the prior; the node has never seen it
        node = brain_node(
            make_settings,
            start_node,
            sources=[orthanc.source()],
            destinations=[orthanc.destination()],
        )
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.settings.node.port)
        push(node, _paths(studies["followup"]))
        job = job_of(node, current_uid)
        assert job["status"] == "done", job
        fetched = [e["message"] for e in job["events"] if e["stage"] == "retrieve"]
        assert any(m.startswith(f"fetching prior study {prior_uid} from pacs") for m in fetched)
        line = next(
            e["message"]
            for e in job["events"]
            if e["stage"] == "priors" and e["duration_s"] is not None
        )
        assert line.startswith(f"Compared with prior study {prior_uid}"), line
        assert "(retrieved from source pacs; volumes found by running the model on it)" in line
        # Retrieved as a prior: the node made no job of its own for it.
        assert [j.study_instance_uid for j in JobQueue(node.sessions).list()] == [current_uid]
        sr = orthanc_sr(orthanc, current_uid, tmp_path / "sr")
        assert dciodvfy(sr) == [], dciodvfy(sr)
        report = brain_followup_report(sr)
        assert report["other_studies"] == {prior_uid}
        check_changes(report, pair, within_pp=10.0)
        assert report["category"] == "RANOPD"


def test_prior_processed_by_the_node_then_follow_up_carries_its_tracking_uids(
    pair: HeadPair,
    studies: dict[str, MRStudyTruth],
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    from dicomnode.testing.peers import Orthanc
    from tests.test_lung_followup_e2e import job_of, orthanc_sr, push

    prior_uid = studies["baseline"].study_instance_uid
    current_uid = studies["followup"].study_instance_uid
    with Orthanc(tmp_path / "orthanc") as orthanc:
        node = brain_node(make_settings, start_node, destinations=[orthanc.destination()])
        push(node, _paths(studies["baseline"]))
        first = job_of(node, prior_uid)
        assert first["status"] == "done", first
        before = brain_followup_report(orthanc_sr(orthanc, prior_uid, tmp_path / "a"))
        assert before["text"].startswith("Baseline report: No prior found"), before["text"]
        push(node, _paths(studies["followup"]))
        job = job_of(node, current_uid)
        assert job["status"] == "done", job
        assert not [e for e in job["events"] if e["stage"] == "retrieve"]
        assert not any(e["message"].startswith("prior infer") for e in job["events"])
        line = next(
            e["message"]
            for e in job["events"]
            if e["stage"] == "priors" and e["message"].startswith("Compared")
        )
        assert "(this node; volumes from this node's report of it)" in line, line
        sr = orthanc_sr(orthanc, current_uid, tmp_path / "b")
        assert dciodvfy(sr) == []
        report = brain_followup_report(sr)
        # Each compartment keeps the prior report's Tracking UID, and its prior volume is
        # the one that report stated.
        for label, item in report["compartments"].items():
            assert item["uid"] == before["compartments"][label]["uid"], label
            assert item["prior_volume"] == pytest.approx(
                before["compartments"][label]["volume"], abs=1e-3
            )
        check_changes(report, pair, within_pp=10.0)
        assert report["category"] == "RANOPD"
