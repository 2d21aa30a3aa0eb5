"""Lung follow-up end to end: storescu → node → priors from Orthanc or the node → SR in Orthanc.

The prior sits in Orthanc (a ``[[sources]]`` entry, retrieved by C-MOVE) or
was processed by the node before; the follow-up is pushed by DCMTK storescu;
the SR the node sends into Orthanc carries statuses, VDTs, the Lung-RADS
suggestion and Tracking UIDs that match the prior's. The variants: no prior,
a source down, another patient's study with the same accession number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import Settings
from dicomnode.service import Node
from dicomnode.synthetic.followup import ChestPair, chest_pair, write_chest_pair
from dicomnode.testing.peers import dciodvfy
from tests.test_lung_followup import SEED, check_against_truth, followup_report, small_chest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair() -> ChestPair:
    return chest_pair(SEED)


# -- end to end: storescu → node (priors from Orthanc or its own database) → SR in Orthanc -----

ROUTE = {"pipeline": "lung_nodule", "match": {"Modality": "CT"}, "send_to": ["pacs"]}


def orthanc_sr(orthanc: Any, study_instance_uid: str, folder: Path) -> Path:
    """The (one) SR the node sent into *study_instance_uid* at Orthanc, downloaded into *folder*."""
    study = orthanc.find_study(study_instance_uid)
    assert study is not None
    (series,) = [
        s for s in orthanc.series_of_study(study) if s["MainDicomTags"].get("Modality") == "SR"
    ]
    (instance,) = series["Instances"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{instance}.dcm"
    path.write_bytes(orthanc.client.get(f"/instances/{instance}/file").content)
    return path


def lung_node(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], **sections: Any
) -> Node:
    settings = make_settings(
        routes=[ROUTE], pipelines={"lung_nodule": {"device": "cpu"}}, **sections
    )
    return start_node(settings, workers=1)


def push(node: Node, paths: list[Path]) -> None:
    from dicomnode.testing.peers import storescu
    from tests.conftest import NODE_AE

    sent = storescu(paths, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    assert sent.returncode == 0, sent.stderr


def job_of(node: Node, study_instance_uid: str, timeout: float = 420) -> dict[str, Any]:
    from dicomnode.jobs import JobQueue, job_to_dict

    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while True:
        for row in queue.list():
            job = job_to_dict(queue.get(row.id), events=True)
            if job["study_instance_uid"] == study_instance_uid and job["status"] in (
                "done",
                "failed",
                "cancelled",
            ):
                return job
        assert time.monotonic() < deadline, [job_to_dict(j) for j in queue.list()]
        time.sleep(0.5)


def test_follow_up_pushed_prior_retrieved_from_orthanc_sr_in_orthanc(
    pair: ChestPair,
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    from dicomnode.testing.peers import Orthanc
    from tests.conftest import NODE_AE

    paths = write_chest_pair(pair, tmp_path / "pair")
    prior_uid = pair.baseline.study.study_instance_uid
    current_uid = pair.followup.study.study_instance_uid
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in paths["baseline"]:
            orthanc.upload(path)  # the PACS has the prior; the node has never seen it
        node = lung_node(
            make_settings,
            start_node,
            sources=[orthanc.source()],
            destinations=[orthanc.destination()],
        )
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.settings.node.port)
        started = time.monotonic()
        push(node, paths["followup"])
        job = job_of(node, current_uid)
        seconds = time.monotonic() - started
        assert job["status"] == "done", job
        events = job["events"]
        fetched = [e["message"] for e in events if e["stage"] == "retrieve"]
        assert any(
            m.startswith(f"fetching prior study {prior_uid} from pacs (ORTHANC@")
            and "by C-MOVE to TESTNODE; 64 instance(s) expected" in m
            for m in fetched
        ), fetched
        assert any(
            m.startswith(f"{len(paths['baseline'])} instance(s) of prior study") for m in fetched
        )
        (priors,) = [
            e
            for e in events
            if e["stage"] == "priors"
            and e["duration_s"] is not None
            and e["message"].startswith(("Compared", "Baseline"))
        ]
        assert priors["message"].startswith(f"Compared with prior study {prior_uid}"), priors
        # Retrieved as a prior: the node made no job of its own for it.
        from dicomnode.jobs import JobQueue

        assert [j.study_instance_uid for j in JobQueue(node.sessions).list()] == [current_uid]
        assert {o["status"] for o in job["outputs"]} == {"sent"}
        sr = orthanc_sr(orthanc, current_uid, tmp_path)
        assert dciodvfy(sr) == [], dciodvfy(sr)
        report = followup_report(sr)
        assert report["other_studies"] == {prior_uid}
        statuses = check_against_truth(report, pair)
        assert "growing" in statuses.values()
        assert report["category"] in {"LR4A", "LR4B"}
        # A matched nodule: its current and prior groups share one Tracking UID.
        matched = [
            n for n in report["nodules"].values() if n["time_points"] == {"prior", "current"}
        ]
        assert matched and all("vdt" in n or n["status"] == "stable" for n in matched)
    print(f"follow-up job with the prior retrieved and analysed: {seconds:.1f} s")


def test_prior_processed_by_the_node_then_follow_up_carries_its_tracking_uids(
    pair: ChestPair,
    make_settings: Callable[..., Settings],
    start_node: Callable[..., Node],
    tmp_path: Path,
) -> None:
    from dicomnode.testing.peers import Orthanc

    paths = write_chest_pair(pair, tmp_path / "pair")
    prior_uid = pair.baseline.study.study_instance_uid
    current_uid = pair.followup.study.study_instance_uid
    with Orthanc(tmp_path / "orthanc") as orthanc:
        node = lung_node(make_settings, start_node, destinations=[orthanc.destination()])
        push(node, paths["baseline"])
        first = job_of(node, prior_uid)
        assert first["status"] == "done", first
        baseline = followup_report(orthanc_sr(orthanc, prior_uid, tmp_path / "a"))
        # The patient's first study: a baseline report that says there was no prior.
        assert baseline["text"].startswith("Baseline report: No prior found"), baseline["text"]
        assert baseline["other_studies"] == set()
        assert all("status" not in n for n in baseline["nodules"].values())
        started = time.monotonic()
        push(node, paths["followup"])
        job = job_of(node, current_uid)
        seconds = time.monotonic() - started
        assert job["status"] == "done", job
        assert not [e for e in job["events"] if e["stage"] == "retrieve"]
        line = next(
            e["message"]
            for e in job["events"]
            if e["stage"] == "priors" and e["message"].startswith("Compared")
        )
        assert "(this node; nodules from this node's report of it)" in line
        assert not any(e["message"].startswith("prior infer") for e in job["events"])
        report = followup_report(orthanc_sr(orthanc, current_uid, tmp_path / "b"))
        check_against_truth(report, pair)
        # Tracking: every nodule seen before has the prior report's identifier and UID.
        before = {u: n["label"] for u, n in baseline["nodules"].items()}
        seen = {u: n for u, n in report["nodules"].items() if "prior" in n["time_points"]}
        assert seen and set(seen) <= set(before)
        assert all(before[u] == n["label"] for u, n in seen.items())
        new = [n for u, n in report["nodules"].items() if n.get("status") == "new"]
        assert all(
            u not in before for u, n in report["nodules"].items() if n.get("status") == "new"
        )
        assert new or len(seen) == len(report["nodules"])
    print(f"follow-up job with the prior's findings at hand: {seconds:.1f} s")


def test_another_patients_study_with_the_same_accession_is_never_a_prior(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    from dicomnode.testing.peers import Orthanc

    other_uid, other = small_chest(tmp_path / "other", "PAT-OTHER", "20250105", "ACC-SHARED")
    current_uid, current = small_chest(tmp_path / "current", "PAT-A", "20260105", "ACC-SHARED")
    with Orthanc(tmp_path / "orthanc") as orthanc:
        for path in other:
            orthanc.upload(path)
        node = lung_node(
            make_settings,
            start_node,
            sources=[orthanc.source()],
            destinations=[orthanc.destination()],
        )
        from tests.conftest import NODE_AE

        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.settings.node.port)
        push(node, current)
        job = job_of(node, current_uid)
        assert job["status"] == "done", job
        assert not [e for e in job["events"] if e["stage"] == "retrieve"]
        report = followup_report(orthanc_sr(orthanc, current_uid, tmp_path))
        assert report["text"].startswith("Baseline report: No prior found"), report["text"]
        assert "PAT-A" in report["text"] and report["other_studies"] == set()
        from sqlalchemy import select

        from dicomnode.models import Study

        with node.sessions() as session:
            assert (
                session.execute(select(Study).where(Study.study_instance_uid == other_uid)).first()
                is None
            )


def test_source_down_gives_a_baseline_that_says_the_prior_could_not_be_fetched(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    from dicomnode.testing.peers import Orthanc, free_port

    current_uid, current = small_chest(tmp_path / "current", "PAT-B", "20260105", "ACC-B")
    down = {
        "name": "archive",
        "ae_title": "ARCHIVE",
        "host": "127.0.0.1",
        "port": free_port(),
        "response_timeout": 2,
    }
    with Orthanc(tmp_path / "orthanc") as orthanc:
        node = lung_node(
            make_settings, start_node, sources=[down], destinations=[orthanc.destination()]
        )
        push(node, current)
        job = job_of(node, current_uid)
        assert job["status"] == "done", job  # never blocked, never failed
        warnings = [e for e in job["events"] if e["stage"] == "priors" and e["level"] == "warning"]
        assert any("source archive unreachable" in e["message"] for e in warnings)
        report = followup_report(orthanc_sr(orthanc, current_uid, tmp_path))
        assert report["text"].startswith(
            "Baseline report: The prior could not be fetched: source archive unreachable: C-FIND"
        ), report["text"]
        assert report["category"] is not None  # a baseline Lung-RADS suggestion still
