"""Job table and assembly against a real SQLite file (no network)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.assembly import Assembler
from dicomnode.config import AssemblyConfig, RouteConfig
from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.jobs import JobError, JobQueue, job_to_dict
from dicomnode.models import Job, JobStatus, Output, Study, utcnow
from dicomnode.store import InstanceHeader, InstanceStore, Provenance

ROUTES = [RouteConfig(name="ct", pipeline="lung", match={"Modality": "CT"}, send_to=["pacs"])]


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return session_factory(make_engine(url))


def receive(
    sessions: sessionmaker[Session],
    tmp_path: Path,
    study: str,
    sop: str,
    modality: str = "CT",
    when=None,
) -> None:  # type: ignore[no-untyped-def]
    store = InstanceStore(tmp_path / "storage", sessions)
    header = InstanceHeader(
        "1.2.840.10008.5.1.4.1.1.2", sop, study, study + ".1", 1, series={"Modality": modality}
    )
    store.index(
        header, Path("x.dcm"), 1, "1.2.840.10008.1.2.1", Provenance("SCANNER"), received_at=when
    )


def jobs(sessions: sessionmaker[Session]) -> list[Job]:
    with sessions() as session:
        return list(session.execute(select(Job).order_by(Job.id)).scalars())


def test_assembly_waits_then_queues_once(sessions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t0 = utcnow()
    receive(sessions, tmp_path, "1.2.1", "1.2.1.1.1", when=t0)
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), ROUTES)
    assert assembler.tick(now=t0 + timedelta(seconds=3)) == []
    assert [j.status for j in jobs(sessions)] == ["waiting"]
    assert assembler.tick(now=t0 + timedelta(seconds=11)) == ["1.2.1"]
    (job,) = jobs(sessions)
    assert job.status == "queued" and job.send_to == ["pacs"] and job.route_name == "ct"
    # A late instance re-opens the study; completing again makes no second job.
    receive(sessions, tmp_path, "1.2.1", "1.2.1.1.2", when=t0 + timedelta(seconds=20))
    assert assembler.tick(now=t0 + timedelta(seconds=31)) == ["1.2.1"]
    (job,) = jobs(sessions)
    detail = job_to_dict(JobQueue(sessions).get(job.id), events=True)
    assert "more arrived after this job was created" in detail["events"][-1]["message"]


def test_unmatched_study_is_recorded(sessions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t0 = utcnow()
    receive(sessions, tmp_path, "1.2.2", "1.2.2.1.1", modality="OT", when=t0)
    Assembler(sessions, AssemblyConfig(quiet_seconds=1), ROUTES).tick(now=t0 + timedelta(seconds=2))
    with sessions() as session:
        study = session.execute(select(Study)).scalar_one()
    assert study.status == "unmatched" and jobs(sessions) == []


def test_early_completion_when_required_series_are_present(sessions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    route = RouteConfig(
        pipeline="lung", match={"Modality": "CT"}, complete_when=[{"Modality": "CT"}]
    )
    t0 = utcnow()
    receive(sessions, tmp_path, "1.2.3", "1.2.3.1.1", when=t0)
    assembler = Assembler(
        sessions, AssemblyConfig(quiet_seconds=60, early_quiet_seconds=2), [route]
    )
    assert assembler.tick(now=t0 + timedelta(seconds=1)) == []
    assert assembler.tick(now=t0 + timedelta(seconds=3)) == ["1.2.3"]


def queued(
    sessions: sessionmaker[Session], n: int, priorities: list[int] | None = None
) -> list[int]:
    now = utcnow()
    with sessions.begin() as session:
        study = Study(
            study_instance_uid=f"9.{n}.{id(priorities)}",
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
        rows = []
        for i in range(n):
            job = Job(
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                pipeline=f"p{i}",
                send_to=["pacs"],
                status=JobStatus.QUEUED,
                created_at=now,
                queued_at=now + timedelta(milliseconds=i),
                priority=(priorities or [0] * n)[i],
            )
            session.add(job)
            rows.append(job)
        session.flush()
        return [j.id for j in rows]


def test_claim_order_priority_then_oldest(sessions) -> None:  # type: ignore[no-untyped-def]
    ids = queued(sessions, 3, priorities=[0, 5, 0])
    queue = JobQueue(sessions)
    assert [queue.claim("w").id for _ in range(3)] == [ids[1], ids[0], ids[2]]  # type: ignore[union-attr]
    assert queue.claim("w") is None


def test_expired_lease_is_reclaimed_then_failed_after_max_attempts(sessions) -> None:  # type: ignore[no-untyped-def]
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions, lease_seconds=30, max_attempts=2)

    def expire() -> None:
        with sessions.begin() as session:
            session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))

    assert queue.claim("dead-worker-1").attempt == 1  # type: ignore[union-attr]
    assert queue.claim("w2") is None  # leased
    expire()
    again = queue.claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 2
    assert not queue.heartbeat(job_id, "dead-worker-1")
    expire()
    assert queue.claim("w3") is None
    job = queue.get(job_id)
    assert job.status == "failed"
    assert (
        job.error == "The worker running this job stopped responding 2 times (last: w2); giving up."
    )


def test_complete_with_outputs_goes_sending_and_retry_resends(sessions) -> None:  # type: ignore[no-untyped-def]
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    assert (
        queue.complete(job_id, "w", [("1.2.9", "1.2.840.10008.5.1.4.1.1.66.4", "results/1/a.dcm")])
        == "sending"
    )
    with sessions.begin() as session:
        session.execute(update(Output).values(status="failed", last_error="peer down"))
        session.execute(update(Job).values(status="failed", error="delivery failed"))
    job = queue.retry(job_id)
    assert job.status == "sending"
    data = job_to_dict(queue.get(job_id))
    assert [(o["status"], o["sop_instance_uid"]) for o in data["outputs"]] == [("pending", "1.2.9")]
    for key in (
        "id",
        "study_instance_uid",
        "pipeline",
        "status",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "outputs",
    ):
        assert key in data
    assert set(data["outputs"][0]) >= {"sop_instance_uid", "sop_class_uid", "destination", "status"}


def test_cancel_stops_heartbeats_and_final_jobs_cannot_be_cancelled(sessions) -> None:  # type: ignore[no-untyped-def]
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    assert queue.cancel(job_id).status == "cancelled"
    assert not queue.heartbeat(job_id, "w")
    assert queue.complete(job_id, "w", []) is None  # too late: not this worker's any more
    with pytest.raises(JobError, match="already cancelled"):
        queue.cancel(job_id)
    assert queue.retry(job_id).status == "queued"
    with pytest.raises(JobError, match="no job with id 999"):
        queue.retry(999)


def test_concurrent_claims_take_each_job_once(sessions) -> None:  # type: ignore[no-untyped-def]
    queued(sessions, 50)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        queue = JobQueue(sessions)
        while (job := queue.claim(name)) is not None:
            with lock:
                claimed.append(job.id)
            queue.complete(job.id, name, [])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 50 == len(set(claimed))
    assert {j.status for j in jobs(sessions)} == {"done"}


def test_a_busy_pipeline_does_not_starve_the_others(sessions) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    with sessions.begin() as session:
        for i, pipeline in enumerate(["slow"] * 5 + ["fast"]):  # one study per job
            study = Study(study_instance_uid=f"8.{i}", first_received_at=now, last_received_at=now)
            session.add(study)
            session.flush()
            session.add(
                Job(
                    study_id=study.id,
                    study_instance_uid=f"8.{i}",
                    pipeline=pipeline,
                    status=JobStatus.QUEUED,
                    created_at=now,
                    queued_at=now + timedelta(seconds=i),
                )
            )
    queue = JobQueue(sessions)
    first = queue.claim("w1")
    assert first is not None and first.pipeline == "slow"  # oldest, nothing running yet
    second = queue.claim("w2")
    assert second is not None and second.pipeline == "fast"  # slow already has a job running
    third = queue.claim("w3")
    assert third is not None and third.pipeline == "slow"
