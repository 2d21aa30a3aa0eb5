"""Retention removes files of finished studies only; records stay."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomnode.models import Instance, Study, utcnow
from dicomnode.testing.peers import storescu
from tests.conftest import NODE_AE, sample_paths
from tests.test_flow import wait_for_jobs, write_study

pytestmark = pytest.mark.slow


def populate(node, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Three studies: one done, one failed (missing slice), one unmatched (MR)."""
    port = node.receiver.port
    (tmp_path / "done").mkdir()
    (tmp_path / "failed").mkdir()
    done = write_study(tmp_path / "done", 4)
    failed = write_study(tmp_path / "failed", 6)
    del failed[2]
    for files in (done, failed, [sample_paths()[1]]):
        assert storescu(files, host="127.0.0.1", port=port, called_aet=NODE_AE).returncode == 0
    jobs = wait_for_jobs(node, 2)
    by_status = {j["status"]: j["study_instance_uid"] for j in jobs}
    # A fresh transaction per poll: one long-lived SQLite (WAL) read transaction keeps
    # its first snapshot and would never see assembly mark the study unmatched.
    deadline = time.monotonic() + 60
    while True:
        with node.sessions() as session:
            unmatched = session.execute(
                select(Study.study_instance_uid).where(Study.status == "unmatched")
            ).scalar()
        if unmatched is not None:
            break
        assert time.monotonic() < deadline, "the unrouted study was never marked unmatched"
        time.sleep(0.1)
    return {"done": by_status["done"], "failed": by_status["failed"], "unmatched": unmatched}


def files_of(node, uid: str) -> list[Path]:  # type: ignore[no-untyped-def]
    return [p for p in (node.store.instances_dir / uid).rglob("*.dcm")]


def test_old_finished_studies_lose_their_files_failed_and_young_ones_keep_them(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
        retention={"enabled": True, "max_age_hours": 1},
    )
    node = start_node(settings, workers=1)
    studies = populate(node, tmp_path)
    with node.sessions() as session:
        rows_before = session.execute(select(func.count()).select_from(Instance)).scalar_one()
    assert node.retention.tick(now=utcnow()) == []  # nothing is an hour old yet
    removed = node.retention.tick(now=utcnow() + timedelta(hours=2))
    assert {r.study_instance_uid for r in removed} == {studies["done"], studies["unmatched"]}
    assert files_of(node, studies["done"]) == [] and files_of(node, studies["unmatched"]) == []
    assert len(files_of(node, studies["failed"])) == 5  # a failed job may be retried: kept
    with node.sessions() as session:
        assert (
            session.execute(select(func.count()).select_from(Instance)).scalar_one() == rows_before
        )
        marked = session.execute(
            select(Study.study_instance_uid).where(Study.files_removed_at.is_not(None))
        )
        assert set(marked.scalars()) == {studies["done"], studies["unmatched"]}
    (job,) = [j for j in wait_for_jobs(node, 2) if j["status"] == "done"]
    assert job["events"][-1]["stage"] == "retention"
    assert node.retention.tick(now=utcnow() + timedelta(hours=3)) == []  # once only


def test_unfinished_studies_are_never_touched_even_in_an_emergency(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
        retention={"enabled": True, "max_age_hours": 10_000, "emergency_free_bytes": 2**60},
        assembly={"quiet_seconds": 1.0},
    )
    node = start_node(settings, workers=0)  # nobody runs the job: it stays queued
    storescu(
        write_study(tmp_path, 3), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    (job,) = wait_for_jobs(node, final=False)
    while job["status"] != "queued":
        (job,) = wait_for_jobs(node, final=False)
    assert node.retention.tick(now=utcnow() + timedelta(days=3650)) == []
    assert len(files_of(node, job["study_instance_uid"])) == 3


def test_emergency_removes_oldest_finished_first(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
        retention={"enabled": True, "max_age_hours": 10_000, "emergency_free_bytes": 2**60},
    )
    node = start_node(settings, workers=1)
    studies = populate(node, tmp_path)
    with node.sessions() as session:
        completed = dict(
            session.execute(select(Study.study_instance_uid, Study.completed_at)).all()
        )
    removed = node.retention.tick()
    expected = sorted([studies["done"], studies["unmatched"]], key=lambda uid: completed[uid])
    assert [r.study_instance_uid for r in removed] == expected
    assert all(r.reason == "free space under retention.emergency_free_bytes" for r in removed)
    assert len(files_of(node, studies["failed"])) == 5
