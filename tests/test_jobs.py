"""Job table and assembly against a real SQLite file (no network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.assembly import Assembler
from dicomnode.config import AssemblyConfig, RouteConfig
from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.jobs import JobError, JobQueue, job_to_dict
from dicomnode.models import Job, JobEvent, JobStatus, Output, Study, utcnow
from dicomnode.store import InstanceHeader, InstanceStore, Provenance

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
ROUTES = [RouteConfig(name="ct", pipeline="lung", match={"Modality": "CT"}, send_to=["pacs"])]
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

Sessions = sessionmaker[Session]


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


@pytest.fixture
def sessions(url: str) -> Sessions:
    return session_factory(make_engine(url))


@pytest.fixture
def store(sessions: Sessions, tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "storage", sessions, fsync=False)


def receive(
    store: InstanceStore,
    study: str,
    sop: str,
    *,
    series: str | None = None,
    when: datetime = T0,
    calling_aet: str = "SCANNER",
    **attributes: object,
) -> None:
    """Index one instance as the receiver would (the file itself is not needed here)."""
    attributes.setdefault("Modality", "CT")
    header = InstanceHeader(
        CT_IMAGE,
        sop,
        study,
        series or study + ".1",
        1,
        study={"study_description": "test study"},
        series=dict(attributes),
    )
    store.index(header, Path(f"{sop}.dcm"), 1, "1.2.840.10008.1.2.1", Provenance(calling_aet), when)


def jobs(sessions: Sessions) -> list[Job]:
    with sessions() as session:
        return list(session.execute(select(Job).order_by(Job.id)).scalars())


def study_row(sessions: Sessions, uid: str) -> Study:
    with sessions() as session:
        return session.execute(select(Study).where(Study.study_instance_uid == uid)).scalar_one()


def events(sessions: Sessions, job_id: int) -> list[JobEvent]:
    with sessions() as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(session.execute(query).scalars())


def outputs(sessions: Sessions, job_id: int) -> list[Output]:
    with sessions() as session:
        query = select(Output).where(Output.job_id == job_id).order_by(Output.id)
        return list(session.execute(query).scalars())


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- assembly -----------------------------------------------------------------------------


def test_assembly_waits_then_queues_once(sessions: Sessions, store: InstanceStore) -> None:
    receive(store, "1.2.1", "1.2.1.1.1", when=T0)
    receive(store, "1.2.1", "1.2.1.1.2", when=later(2))
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), ROUTES)
    assert assembler.tick(now=later(5)) == []
    (job,) = jobs(sessions)
    assert job.status == "waiting" and job.queued_at is None
    assert study_row(sessions, "1.2.1").status == "receiving"
    assert assembler.tick(now=later(8)) == []  # 6 s quiet: still waiting, still one job
    assert [j.status for j in jobs(sessions)] == ["waiting"]
    assert assembler.tick(now=later(12)) == ["1.2.1"]  # 10 s after the last instance
    (job,) = jobs(sessions)
    assert job.status == "queued" and job.queued_at == later(12)
    assert job.send_to == ["pacs"] and job.route_name == "ct" and job.pipeline == "lung"
    assert job.study_instance_uid == "1.2.1"
    study = study_row(sessions, "1.2.1")
    assert study.status == "complete" and study.completed_at == later(12)
    assert study.instance_count == 2
    assert [e.stage for e in events(sessions, job.id)] == ["waiting", "queued"]
    assert assembler.tick(now=later(20)) == []  # complete studies are not looked at again


def test_study_quiet_at_first_look_is_queued_directly(
    sessions: Sessions, store: InstanceStore
) -> None:
    receive(store, "1.2.9", "1.2.9.1.1", when=T0)
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), ROUTES)
    assert assembler.tick(now=later(60)) == ["1.2.9"]
    (job,) = jobs(sessions)
    assert job.status == "queued"
    assert [e.stage for e in events(sessions, job.id)] == ["queued"]


def test_late_instance_reopens_study_but_makes_no_second_job(
    sessions: Sessions, store: InstanceStore
) -> None:
    receive(store, "1.2.1", "1.2.1.1.1", when=T0)
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), ROUTES)
    assert assembler.tick(now=later(11)) == ["1.2.1"]
    receive(store, "1.2.1", "1.2.1.1.2", when=later(20))
    assert study_row(sessions, "1.2.1").status == "receiving"
    assert assembler.tick(now=later(25)) == []
    assert assembler.tick(now=later(31)) == ["1.2.1"]
    (job,) = jobs(sessions)  # unique per (study, pipeline)
    assert job.status == "queued"
    detail = job_to_dict(JobQueue(sessions).get(job.id), events=True)
    last = detail["events"][-1]
    # Still queued: it has not run, so it reads the late instance (docs/revisions.md).
    assert last["stage"] == "late" and last["level"] == "info"
    assert "late series 1.2.1.1 (CT, 1 instance) arrived 9 s after" in last["message"]
    assert "before this job ran: it reads them" in last["message"]
    assert study_row(sessions, "1.2.1").status == "complete"


def test_unmatched_study_is_recorded_without_a_job(
    sessions: Sessions, store: InstanceStore
) -> None:
    receive(store, "1.2.2", "1.2.2.1.1", Modality="OT", when=T0)
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=1), ROUTES)
    assert assembler.tick(now=later(0.5)) == []
    assert jobs(sessions) == []  # no waiting job either: no route matches
    assert assembler.tick(now=later(2)) == ["1.2.2"]
    study = study_row(sessions, "1.2.2")
    assert study.status == "unmatched" and "no route matched" in (study.note or "")
    assert jobs(sessions) == []


def test_routes_match_on_calling_aet_and_series_attributes(
    sessions: Sessions, store: InstanceStore
) -> None:
    routes = [
        RouteConfig(
            pipeline="thin",
            match={
                "CallingAETitle": "CT_ROOM1",
                "SliceThickness": {"max": 2.5},
                "SeriesDescription": {"regex": "(?i)chest"},
                "StudyDescription": "test study",
            },
            priority=7,
        )
    ]
    receive(
        store,
        "1.3.1",
        "1.3.1.1.1",
        calling_aet="CT_ROOM1",
        SliceThickness=1.25,
        SeriesDescription="CHEST thin",
    )
    receive(store, "1.3.2", "1.3.2.1.1", calling_aet="CT_ROOM2", SliceThickness=1.25)
    receive(store, "1.3.3", "1.3.3.1.1", calling_aet="CT_ROOM1", SliceThickness=5.0)
    Assembler(sessions, AssemblyConfig(quiet_seconds=1), routes).tick(now=later(2))
    (job,) = jobs(sessions)
    assert job.study_instance_uid == "1.3.1" and job.priority == 7
    assert job.route_name == "route1-thin"
    assert [study_row(sessions, s).status for s in ("1.3.2", "1.3.3")] == ["unmatched"] * 2


def test_continue_matching_creates_one_job_per_pipeline(
    sessions: Sessions, store: InstanceStore
) -> None:
    routes = [
        RouteConfig(pipeline="lung", match={"Modality": "CT"}, continue_matching=True),
        RouteConfig(pipeline="body", match={"Modality": "CT"}, priority=2),
        RouteConfig(pipeline="never", match={"Modality": "CT"}),
    ]
    receive(store, "1.4.1", "1.4.1.1.1")
    assert Assembler(sessions, AssemblyConfig(quiet_seconds=1), routes).tick(now=later(2)) == [
        "1.4.1"
    ]
    assert [(j.pipeline, j.priority, j.status) for j in jobs(sessions)] == [
        ("lung", 0, "queued"),
        ("body", 2, "queued"),
    ]
    assert study_row(sessions, "1.4.1").note == "routed to body, lung"


def test_two_matching_routes_to_the_same_pipeline_make_one_job(
    sessions: Sessions, store: InstanceStore
) -> None:
    routes = [
        RouteConfig(pipeline="lung", match={"Modality": "CT"}, continue_matching=True),
        RouteConfig(pipeline="lung", match={"CallingAETitle": "SCANNER"}),
    ]
    receive(store, "1.4.2", "1.4.2.1.1")
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), routes)
    assembler.tick(now=later(1))
    assert assembler.tick(now=later(20)) == ["1.4.2"]
    assert [(j.pipeline, j.status) for j in jobs(sessions)] == [("lung", "queued")]


def test_early_completion_when_required_series_are_present(
    sessions: Sessions, store: InstanceStore
) -> None:
    route = RouteConfig(
        pipeline="brain",
        match={"Modality": "MR"},
        complete_when=[
            {"SeriesDescription": {"regex": "(?i)t1.*post"}},
            {"SeriesDescription": {"regex": "(?i)flair"}},
        ],
    )
    assembler = Assembler(
        sessions, AssemblyConfig(quiet_seconds=60, early_quiet_seconds=2), [route]
    )
    receive(
        store, "1.5.1", "1.5.1.1.1", series="1.5.1.1", Modality="MR", SeriesDescription="T1 post"
    )
    assert assembler.tick(now=later(5)) == []  # FLAIR missing: wait for quiet_seconds
    assert [j.status for j in jobs(sessions)] == ["waiting"]
    receive(
        store,
        "1.5.1",
        "1.5.1.2.1",
        series="1.5.1.2",
        Modality="MR",
        SeriesDescription="AX FLAIR",
        when=later(6),
    )
    assert assembler.tick(now=later(7)) == []  # present, but not quiet for 2 s yet
    assert assembler.tick(now=later(8)) == ["1.5.1"]
    (job,) = jobs(sessions)
    assert job.status == "queued"
    assert "required series present" in events(sessions, job.id)[-1].message


def test_waiting_job_is_cancelled_when_the_complete_study_matches_another_route(
    sessions: Sessions, store: InstanceStore
) -> None:
    routes = [
        RouteConfig(pipeline="petct", match={"Modality": "PT"}),  # first match wins
        RouteConfig(pipeline="ct", match={"Modality": "CT"}),
    ]
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=10), routes)
    receive(store, "1.6.1", "1.6.1.1.1", series="1.6.1.1", when=T0)
    assembler.tick(now=later(1))
    assert [(j.pipeline, j.status) for j in jobs(sessions)] == [("ct", "waiting")]
    receive(store, "1.6.1", "1.6.1.2.1", series="1.6.1.2", Modality="PT", when=later(2))
    assert assembler.tick(now=later(13)) == ["1.6.1"]
    assert [(j.pipeline, j.status) for j in jobs(sessions)] == [
        ("ct", "cancelled"),
        ("petct", "queued"),
    ]


def test_one_bad_study_does_not_stop_the_others(
    sessions: Sessions, store: InstanceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    receive(store, "1.7.1", "1.7.1.1.1")
    receive(store, "1.7.2", "1.7.2.1.1")
    assembler = Assembler(sessions, AssemblyConfig(quiet_seconds=1), ROUTES)
    original = assembler._complete

    def flaky(study: Study, *args: object, **kwargs: object) -> bool:
        if study.study_instance_uid == "1.7.1":
            raise RuntimeError("boom")
        return original(study, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(assembler, "_complete", flaky)
    assert assembler.tick(now=later(2)) == ["1.7.2"]
    monkeypatch.undo()
    assert assembler.tick(now=later(3)) == ["1.7.1"]


# -- the queue ----------------------------------------------------------------------------


def queued(
    sessions: Sessions,
    n: int,
    *,
    priorities: Sequence[int] | None = None,
    pipelines: Sequence[str] | None = None,
    send_to: Sequence[str] = ("pacs",),
    status: str = JobStatus.QUEUED,
) -> list[int]:
    """*n* jobs, one study each, queued 1 ms apart."""
    now = utcnow()
    ids: list[int] = []
    with sessions.begin() as session:
        for i in range(n):
            uid = f"9.{len(ids)}.{time.monotonic_ns()}"
            study = Study(study_instance_uid=uid, first_received_at=now, last_received_at=now)
            session.add(study)
            session.flush()
            job = Job(
                study_id=study.id,
                study_instance_uid=uid,
                pipeline=pipelines[i] if pipelines else "p",
                send_to=list(send_to),
                status=status,
                created_at=now,
                queued_at=now + timedelta(milliseconds=i),
                priority=priorities[i] if priorities else 0,
            )
            session.add(job)
            session.flush()
            ids.append(job.id)
    return ids


def expire_leases(sessions: Sessions) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_claim_order_priority_then_oldest(sessions: Sessions) -> None:
    ids = queued(sessions, 4, priorities=[0, 5, 0, 1])
    queue = JobQueue(sessions)
    claimed = []
    while (job := queue.claim("w")) is not None:
        claimed.append(job.id)
    assert claimed == [ids[1], ids[3], ids[0], ids[2]]
    assert queue.claim("w") is None


def test_claim_returns_none_when_empty_and_skips_waiting_jobs(sessions: Sessions) -> None:
    queue = JobQueue(sessions)
    assert queue.claim("w") is None
    queued(sessions, 1, status=JobStatus.WAITING)
    assert queue.claim("w") is None


def test_claim_sets_lease_and_records_the_attempt(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1, send_to=("pacs", "sender"))
    queue = JobQueue(sessions, lease_seconds=30)
    before = utcnow()
    claimed = queue.claim("host-a:1")
    assert claimed is not None
    assert (claimed.id, claimed.pipeline, claimed.attempt) == (job_id, "p", 1)
    assert claimed.send_to == ("pacs", "sender")
    job = queue.get(job_id)
    assert job.status == "running" and job.lease_owner == "host-a:1" and job.attempts == 1
    assert job.started_at is not None and job.started_at >= before
    assert job.lease_expires_at is not None
    assert 29 <= (job.lease_expires_at - job.started_at).total_seconds() <= 31
    assert events(sessions, job_id)[-1].message == "claimed by host-a:1 (attempt 1)"


def test_claim_filters_by_pipeline(sessions: Sessions) -> None:
    ids = queued(sessions, 3, pipelines=["lung", "brain", "lung"], priorities=[0, 0, 9])
    queue = JobQueue(sessions)
    assert queue.claim("w", pipelines=["nothing"]) is None
    assert queue.claim("w", pipelines=[]) is None
    brain = queue.claim("w", pipelines=["brain"])
    assert brain is not None and brain.id == ids[1]
    assert queue.claim("w", pipelines=["brain"]) is None
    lung = queue.claim("w", pipelines=("lung", "brain"))
    assert lung is not None and lung.id == ids[2]  # higher priority first
    rest = queue.claim("w")
    assert rest is not None and rest.id == ids[0]


def test_a_busy_pipeline_does_not_starve_the_others(sessions: Sessions) -> None:
    queued(sessions, 6, pipelines=["slow"] * 5 + ["fast"])
    queue = JobQueue(sessions)
    first = queue.claim("w1")
    assert first is not None and first.pipeline == "slow"  # oldest, nothing running yet
    second = queue.claim("w2")
    assert second is not None and second.pipeline == "fast"  # slow already has a job running
    third = queue.claim("w3")
    assert third is not None and third.pipeline == "slow"


def test_heartbeat_extends_only_the_owners_lease(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions, lease_seconds=30)
    queue.claim("w1")
    expire_leases(sessions)
    assert queue.heartbeat(job_id, "w1")
    job = queue.get(job_id)
    assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()
    assert queue.claim("w2") is None  # the heartbeat kept it
    assert not queue.heartbeat(job_id, "w2")
    assert not queue.heartbeat(12345, "w1")


def test_lease_expiry_lets_another_worker_reclaim(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions, lease_seconds=0.2, max_attempts=3)
    first = queue.claim("dead-worker")
    assert first is not None and first.attempt == 1
    assert queue.claim("w2") is None  # still leased
    time.sleep(0.3)
    again = queue.claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 2
    assert not queue.heartbeat(job_id, "dead-worker")
    assert queue.complete(job_id, "dead-worker", []) is None  # the old worker lost it
    assert queue.heartbeat(job_id, "w2")
    messages = [e.message for e in events(sessions, job_id)]
    assert "lease of worker dead-worker expired; job claimed again" in messages


def test_expired_lease_is_reclaimed_then_failed_after_max_attempts(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions, lease_seconds=30, max_attempts=2)
    claimed = queue.claim("dead-worker-1")
    assert claimed is not None and claimed.attempt == 1
    assert queue.claim("w2") is None  # leased
    expire_leases(sessions)
    again = queue.claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 2
    assert not queue.heartbeat(job_id, "dead-worker-1")
    expire_leases(sessions)
    assert queue.claim("w3") is None
    job = queue.get(job_id)
    assert job.status == "failed" and job.finished_at is not None and job.lease_owner is None
    assert (
        job.error == "The worker running this job stopped responding 2 times (last: w2); giving up."
    )
    assert events(sessions, job_id)[-1].level == "error"


def test_expired_job_at_max_attempts_does_not_block_the_next_job(sessions: Sessions) -> None:
    dead, fresh = queued(sessions, 2, priorities=[1, 0])
    queue = JobQueue(sessions, max_attempts=1)
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == dead
    expire_leases(sessions)
    nxt = queue.claim("w2")
    assert nxt is not None and nxt.id == fresh
    assert queue.get(dead).status == "failed"


def test_release_gives_the_job_back(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w1")
    assert not queue.release(job_id, "w2", "not mine")
    assert queue.release(job_id, "w1", "worker shutting down")
    job = queue.get(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None
    again = queue.claim("w2")
    assert again is not None and again.attempt == 1


# -- outcomes -----------------------------------------------------------------------------


def test_complete_with_outputs_and_destinations_goes_sending(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1, send_to=("pacs", "sender"))
    queue = JobQueue(sessions)
    queue.claim("w")
    results = [("1.2.9.1", SEG, "results/1/seg.dcm"), ("1.2.9.2", SR, "results/1/sr.dcm")]
    assert queue.complete(job_id, "w", results) == "sending"
    rows = outputs(sessions, job_id)
    assert sorted((o.sop_instance_uid, o.destination) for o in rows) == [
        ("1.2.9.1", "pacs"),
        ("1.2.9.1", "sender"),
        ("1.2.9.2", "pacs"),
        ("1.2.9.2", "sender"),
    ]
    assert {o.status for o in rows} == {"pending"}
    assert {(o.sop_instance_uid, o.sop_class_uid, o.path) for o in rows} == set(results)
    job = queue.get(job_id)
    assert job.status == "sending" and job.lease_owner is None and job.finished_at is None
    assert queue.complete(job_id, "w", results) is None  # not running any more
    assert len(outputs(sessions, job_id)) == 4


def test_complete_without_destinations_is_done(sessions: Sessions) -> None:
    no_dest, no_results = queued(sessions, 2, pipelines=["a", "b"], send_to=())
    queue = JobQueue(sessions)
    queue.claim("w", pipelines=["a"])
    assert queue.complete(no_dest, "w", [("1.2.9.1", SEG, "results/seg.dcm")]) == "done"
    assert outputs(sessions, no_dest) == []
    job = queue.get(no_dest)
    assert job.status == "done" and job.finished_at is not None
    assert "no destination" in events(sessions, no_dest)[-1].message
    queue.claim("w", pipelines=["b"])
    assert queue.complete(no_results, "w", []) == "done"
    assert "no results" in events(sessions, no_results)[-1].message


def test_complete_by_another_worker_is_refused(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w1")
    assert queue.complete(job_id, "w2", [("1.2.9.1", SEG, "x.dcm")]) is None
    assert queue.get(job_id).status == "running"
    assert outputs(sessions, job_id) == []


def test_fail_records_a_sentence(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w1")
    assert not queue.fail(job_id, "w2", "not mine")
    message = "The CT series has only 3 slices; the model needs at least 16."
    assert queue.fail(job_id, "w1", message)
    job = queue.get(job_id)
    assert job.status == "failed" and job.error == message
    assert job.finished_at is not None and job.lease_owner is None
    last = events(sessions, job_id)[-1]
    assert (last.stage, last.level, last.message) == ("failed", "error", message)
    assert not queue.fail(job_id, None, "again")  # already final
    assert not queue.fail(999, None, "no such job")


def test_fail_without_worker_id_fails_a_queued_job(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    assert queue.fail(job_id, None, "The pipeline 'p' is not installed on this node.")
    assert queue.get(job_id).status == "failed"
    assert queue.claim("w") is None


def test_retry_of_failed_delivery_resends_the_same_objects(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1, send_to=("pacs", "archive"))
    queue = JobQueue(sessions)
    queue.claim("w")
    assert queue.complete(job_id, "w", [("1.2.9", SEG, "results/1/a.dcm")]) == "sending"
    with sessions.begin() as session:
        session.execute(
            update(Output)
            .where(Output.destination == "pacs")
            .values(status="sent", attempts=1, sent_at=utcnow())
        )
        session.execute(
            update(Output)
            .where(Output.destination == "archive")
            .values(status="failed", attempts=5, last_error="peer down")
        )
        session.execute(
            update(Job).values(status="failed", error="delivery failed", finished_at=utcnow())
        )
    job = queue.retry(job_id)
    assert job.status == "sending" and job.error is None and job.finished_at is None
    data = job_to_dict(queue.get(job_id))
    assert sorted(
        (o["destination"], o["status"], o["sop_instance_uid"]) for o in data["outputs"]
    ) == [
        ("archive", "pending", "1.2.9"),  # reset, same SOP Instance UID
        ("pacs", "sent", "1.2.9"),  # not sent twice
    ]
    archive = [o for o in outputs(sessions, job_id) if o.destination == "archive"][0]
    assert archive.attempts == 0
    assert "resending 1 result object(s)" in events(sessions, job_id)[-1].message


def test_retry_of_failed_job_without_outputs_queues_it(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    queue.fail(job_id, "w", "out of memory")
    job = queue.retry(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.error is None
    again = queue.claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 1


def test_retry_of_done_job_runs_it_again_with_fresh_outputs(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    queue.complete(job_id, "w", [("1.2.9", SEG, "a.dcm")])
    with sessions.begin() as session:
        session.execute(update(Output).values(status="sent"))
        session.execute(update(Job).values(status="done", finished_at=utcnow()))
    assert queue.retry(job_id).status == "queued"
    assert outputs(sessions, job_id) == []


def test_retry_and_cancel_check_the_state(sessions: Sessions) -> None:
    waiting, running, done = queued(sessions, 3, pipelines=["a", "b", "c"])
    queue = JobQueue(sessions)
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == waiting).values(status="waiting"))
    queue.claim("w", pipelines=["b"])
    queue.claim("w", pipelines=["c"])
    queue.complete(done, "w", [])
    with pytest.raises(JobError, match=f"job {running} is running; only done, failed or cancelled"):
        queue.retry(running)
    with pytest.raises(JobError, match=f"job {done} is already done"):
        queue.cancel(done)
    assert queue.get(done).status == "done"
    assert queue.cancel(waiting).status == "cancelled"
    with pytest.raises(JobError, match="no job with id 999"):
        queue.cancel(999)
    with pytest.raises(JobError, match="no job with id 999"):
        queue.retry(999)
    with pytest.raises(JobError, match="no job with id 999"):
        queue.get(999)


def test_cancel_stops_heartbeats(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    assert queue.heartbeat(job_id, "w")
    job = queue.cancel(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert not queue.heartbeat(job_id, "w")
    assert queue.complete(job_id, "w", []) is None  # too late: not this worker's any more
    assert queue.get(job_id).status == "cancelled"
    with pytest.raises(JobError, match="already cancelled"):
        queue.cancel(job_id)
    assert queue.retry(job_id).status == "queued"


def test_cancel_of_a_sending_job_stops_pending_outputs(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1)
    queue = JobQueue(sessions)
    queue.claim("w")
    queue.complete(job_id, "w", [("1.2.9", SEG, "a.dcm")])
    queue.cancel(job_id)
    (row,) = outputs(sessions, job_id)
    assert row.status == "failed" and row.last_error == "job cancelled"


# -- shape and listings -------------------------------------------------------------------


def test_job_to_dict_has_the_spec_keys(sessions: Sessions) -> None:
    (job_id,) = queued(sessions, 1, send_to=("pacs",))
    queue = JobQueue(sessions)
    queue.claim("w")
    queue.complete(job_id, "w", [("1.2.9", SEG, "results/1/a.dcm")])
    data = job_to_dict(queue.get(job_id))
    spec = {
        "id",
        "study_instance_uid",
        "pipeline",
        "status",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "outputs",
    }
    assert spec <= set(data)
    assert "events" not in data
    assert data["id"] == job_id and data["status"] == "sending" and data["error"] is None
    assert data["pipeline"] == "p" and data["study_instance_uid"].startswith("9.")
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None
    assert datetime.fromisoformat(data["started_at"]).tzinfo is not None
    assert data["finished_at"] is None
    (output,) = data["outputs"]
    assert {"sop_instance_uid", "sop_class_uid", "destination", "status"} <= set(output)
    assert (output["sop_instance_uid"], output["sop_class_uid"]) == ("1.2.9", SEG)
    assert (output["destination"], output["status"]) == ("pacs", "pending")
    timeline = job_to_dict(queue.get(job_id), events=True)["events"]
    assert [e["stage"] for e in timeline] == ["claim", "sending"]
    assert {"at", "stage", "duration_s", "level", "message"} <= set(timeline[0])


def test_list_and_counts(sessions: Sessions) -> None:
    ids = queued(sessions, 3, pipelines=["a", "b", "a"])
    queue = JobQueue(sessions)
    queue.claim("w", pipelines=["b"])
    assert [j.id for j in queue.list()] == ids[::-1]  # newest first
    assert [j.id for j in queue.list(status="queued")] == [ids[2], ids[0]]
    assert [j.id for j in queue.list(pipeline="b")] == [ids[1]]
    assert [j.id for j in queue.list(limit=1, offset=1)] == [ids[1]]
    first = queue.get(ids[0])
    assert [j.id for j in queue.list(study_instance_uid=first.study_instance_uid)] == [ids[0]]
    assert queue.counts() == {"queued": 2, "running": 1}


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_claims_take_each_job_once(url: str, sessions: Sessions) -> None:
    ids = queued(sessions, 50)
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(4)}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(name: str) -> None:
        try:
            # Each worker has its own engine, as separate processes would.
            queue = JobQueue(session_factory(make_engine(url)))
            start.wait()
            while (job := queue.claim(name)) is not None:
                claimed[name].append(job.id)
                assert queue.complete(job.id, name, []) == "done"
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    everything = [job_id for got in claimed.values() for job_id in got]
    assert sorted(everything) == sorted(ids)  # every job exactly once
    assert {j.status for j in jobs(sessions)} == {"done"}
    assert {j.attempts for j in jobs(sessions)} == {1}
