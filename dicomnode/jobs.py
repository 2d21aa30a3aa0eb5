"""The job table: creation, claims with lease and heartbeat, state changes, timeline.

Several worker processes, on several hosts, share one database. A worker
*claims* a job by moving it to ``running`` with a lease (``lease_owner``,
``lease_expires_at``) inside one transaction: ``BEGIN IMMEDIATE`` on SQLite,
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL. It renews the lease
with heartbeats. A job whose lease expired (its worker died) is claimed again
by the next worker, up to ``workers.max_attempts`` claims, then it fails with
a sentence saying so.

Every state change writes a :class:`~dicomnode.models.JobEvent`, so
``jobs show`` is the job's timeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from sqlalchemy import ColumnElement, and_, case, func, inspect, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

from dicomnode.database import write_transaction
from dicomnode.models import (
    FINAL_JOB_STATES,
    Job,
    JobEvent,
    JobRevision,
    JobStatus,
    Output,
    OutputStatus,
    ProducedInstance,
    Study,
    StudyStatus,
    utcnow,
)
from dicomnode.revisions import NewRevision
from dicomnode.wakeups import JOBS, OUTPUTS, Wakeups

# Ids are PostgreSQL ``integer`` columns: anything larger cannot name a row and
# would make the driver raise instead of finding nothing.
MAX_ID = 2**31 - 1
MAX_PAGE = 1000
_RELATIVE = re.compile(r"^(\d{1,6})\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class JobError(Exception):
    """A job operation that cannot be done (unknown id, wrong state)."""


class UnknownJob(JobError):
    """No job has this id."""


class FilterError(JobError):
    """A job filter value that cannot be used, with a sentence naming the filter."""


def parse_time(text: str, name: str = "time", now: datetime | None = None) -> datetime:
    """Parse an admin's time: ISO 8601 (naive means UTC) or an age like ``30m``, ``24h``, ``7d``.

    Raises
    ------
    FilterError
        Naming *name* when *text* is neither.
    """
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        seconds = int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        return (now or utcnow()) - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(text)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise FilterError(
            f"{name}: {text!r} is not a time; use ISO 8601 (2024-05-01T08:00:00Z) "
            "or an age such as 30m, 24h, 7d"
        ) from None


def _check_id(job_id: int) -> None:
    if not 1 <= job_id <= MAX_ID:
        raise UnknownJob(f"no job with id {job_id}")


def _existing(session: Session, job_id: int) -> Job:
    """Job *job_id* in *session*'s transaction; :class:`UnknownJob` when there is none."""
    _check_id(job_id)
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJob(f"no job with id {job_id}")
    return job


def check_listing(listing: Any, text_fields: Sequence[str]) -> None:
    """Checks every listing filter shares: its text fields, ``since``/``until``, paging.

    *listing* is a frozen dataclass with ``since``, ``until``, ``limit`` and
    ``offset``; a naive ``since``/``until`` is made UTC in place.
    """
    for name in text_fields:
        _check_text(name, getattr(listing, name))
    for name in ("since", "until"):
        value = getattr(listing, name)
        if value is not None and value.tzinfo is None:
            object.__setattr__(listing, name, value.replace(tzinfo=UTC))
    if listing.since is not None and listing.until is not None and listing.since > listing.until:
        raise FilterError("since: later than until")
    if not 1 <= listing.limit <= MAX_PAGE:
        raise FilterError(f"limit: must be between 1 and {MAX_PAGE}")
    if not 0 <= listing.offset <= MAX_ID:
        raise FilterError(f"offset: must be between 0 and {MAX_ID}")


def _check_text(name: str, value: str | None, limit: int = 64) -> None:
    if value is None:
        return
    if len(value) > limit:
        raise FilterError(f"{name}: longer than {limit} characters")
    if any(ord(c) < 0x20 for c in value):
        raise FilterError(f"{name}: control characters are not allowed")


class TextListing:
    """``parse``: a listing filter from the text the CLI and the API receive.

    Shared by :class:`JobFilter` and :class:`~dicomnode.studies.StudyFilter`,
    whose ``since``/``until`` arrive as text in both interfaces.
    """

    @classmethod
    def parse(cls, since: str | None = None, until: str | None = None, **fields: Any) -> Self:
        """A filter from the text the CLI and the API receive.

        Parameters
        ----------
        since, until
            An ISO 8601 time or an age such as ``24h`` (:func:`parse_time`);
            empty or None is no bound.
        **fields
            The listing's other attributes, as they are.

        Raises
        ------
        FilterError
            Naming the first field that is not valid.
        """
        make: Callable[..., Self] = cls  # a dataclass: its fields are the keywords
        return make(
            since=parse_time(since, "since") if since else None,
            until=parse_time(until, "until") if until else None,
            **fields,
        )


@dataclass(frozen=True)
class ListingField:
    """One filter of a listing as every interface offers it (CLI, REST API, dashboard).

    Attributes
    ----------
    name
        The filter's attribute, the query parameter and the dashboard's form field.
    help
        What it matches, for ``--help`` and the OpenAPI docs.
    flags
        CLI flags; default ``--name`` with dashes.
    choices
        The allowed values, when there is a fixed set (states).
    """

    name: str
    help: str
    flags: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()

    @property
    def cli_flags(self) -> tuple[str, ...]:
        """The flags of this filter on the command line."""
        return self.flags or (f"--{self.name.replace('_', '-')}",)


_SINCE_HELP = "ISO 8601 (naive: UTC) or an age such as 30m, 24h, 7d"

# The filters of ``jobs list``, ``GET /api/v1/jobs`` and the dashboard's job table.
JOB_LISTING = (
    ListingField("status", "job state", choices=tuple(s.value for s in JobStatus)),
    ListingField("pipeline", "pipeline name"),
    ListingField("study_instance_uid", "Study Instance UID", ("--study", "--study-instance-uid")),
    ListingField(
        "accession_number", "the study's Accession Number", ("--accession-number", "--accession")
    ),
    ListingField("calling_aet", "the AE title that sent the study"),
    ListingField("since", f"created at or after: {_SINCE_HELP}"),
    ListingField("until", "created before: same forms as since"),
)


@dataclass(frozen=True)
class JobFilter(TextListing):
    """Which jobs to list, shared by ``dicomnode jobs list`` and ``GET /api/v1/jobs``.

    Attributes
    ----------
    status, pipeline, study_instance_uid, accession_number, calling_aet
        Exact matches; None matches anything. Accession number and calling AE
        are the study's.
    since, until
        ``since <= created_at < until`` (timezone-aware; naive means UTC).
    limit, offset
        Paging, newest job first.
    """

    status: str | None = None
    pipeline: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    calling_aet: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in {s.value for s in JobStatus}:
            raise FilterError(
                f"status: {self.status!r} is not one of {', '.join(s.value for s in JobStatus)}"
            )
        check_listing(self, ("pipeline", "study_instance_uid", "accession_number", "calling_aet"))

    @property
    def needs_study(self) -> bool:
        """Whether the query must join the study (its accession number or calling AE)."""
        return self.accession_number is not None or self.calling_aet is not None

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions of this filter (join :class:`Study` when :attr:`needs_study`)."""
        where: list[ColumnElement[bool]] = []
        if self.status is not None:
            where.append(Job.status == self.status)
        if self.pipeline is not None:
            where.append(Job.pipeline == self.pipeline)
        if self.study_instance_uid is not None:
            where.append(Job.study_instance_uid == self.study_instance_uid)
        if self.accession_number is not None:
            where.append(Study.accession_number == self.accession_number)
        if self.calling_aet is not None:
            where.append(Study.calling_aet == self.calling_aet)
        if self.since is not None:
            where.append(Job.created_at >= self.since)
        if self.until is not None:
            where.append(Job.created_at < self.until)
        return where


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a claimed job.

    ``needs_retrieve``: the study must first be fetched from ``source`` (it was
    not yet, or retention removed the files since).
    """

    id: int
    study_id: int
    study_instance_uid: str
    pipeline: str
    send_to: tuple[str, ...]
    attempt: int
    source: str | None = None
    needs_retrieve: bool = False


def add_event(
    session: Session,
    job_id: int,
    stage: str,
    message: str = "",
    *,
    duration_s: float | None = None,
    level: str = "info",
) -> None:
    """Append one line to a job's timeline (in the caller's transaction)."""
    session.add(
        JobEvent(
            job_id=job_id,
            stage=stage,
            message=message,
            duration_s=duration_s,
            level=level,
            at=utcnow(),
        )
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _loaded_study(job: Job) -> Study | None:
    """The job's study when it was loaded with the job (never a lazy query)."""
    return None if "study" in inspect(job).unloaded else job.study


def _loaded_revisions(job: Job) -> list[JobRevision]:
    """The job's revisions when they were loaded with the job (never a lazy query)."""
    return [] if "revisions" in inspect(job).unloaded else list(job.revisions)


def job_to_dict(job: Job, *, events: bool = False) -> dict[str, Any]:
    """The JSON shape of a job (SPEC: id, study_instance_uid, pipeline, status, ...).

    The CLI's ``--json`` and the REST API both print this, so they agree field
    for field. No patient name, ID or birth date: those stay in the database.
    ``revision`` is the revision of the job's current results (None: none yet);
    with *events*, ``revisions`` lists them all (``docs/revisions.md``).
    """
    study = _loaded_study(job)
    revisions = _loaded_revisions(job)
    data: dict[str, Any] = {
        "id": job.id,
        "study_instance_uid": job.study_instance_uid,
        "accession_number": study.accession_number if study is not None else None,
        "calling_aet": study.calling_aet if study is not None else None,
        "pipeline": job.pipeline,
        "route": job.route_name,
        "status": job.status,
        "error": job.error,
        "priority": job.priority,
        "attempts": job.attempts,
        "worker": job.lease_owner,
        "created_at": _iso(job.created_at),
        "queued_at": _iso(job.queued_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "requested_by": job.requested_by,
        "model": job.model,
        "revision": max((r.number for r in revisions), default=None),
        "source": job.source,
        "retrieve": (
            {
                "received": job.retrieve_received,
                "expected": job.retrieve_expected,
                "finished_at": _iso(job.retrieved_at),
            }
            if job.source is not None
            else None
        ),
        "outputs": [
            {
                "sop_instance_uid": o.sop_instance_uid,
                "sop_class_uid": o.sop_class_uid,
                "destination": o.destination,
                "status": o.status,
                "attempts": o.attempts,
                "error": o.last_error,
                "warning": o.warning,
                "path": o.path,
            }
            for o in job.outputs
        ],
    }
    if events:
        data["revisions"] = [
            {
                "number": r.number,
                "created_at": _iso(r.created_at),
                "model": r.model,
                "reason": r.reason,
                "inputs": r.inputs,
                "objects": r.objects,
            }
            for r in revisions
        ]
        data["events"] = [
            {
                "at": _iso(e.at),
                # Stages with a duration are written when they end.
                "started_at": _iso(
                    e.at - timedelta(seconds=e.duration_s) if e.duration_s is not None else e.at
                ),
                "stage": e.stage,
                "duration_s": e.duration_s,
                "level": e.level,
                "message": e.message,
            }
            for e in job.events
        ]
    return data


def start_retrieve(session: Session, job: Job) -> None:
    """Mark *job*'s study as being fetched: assembly leaves it alone until the job has it all."""
    study = session.get_one(Study, job.study_id)
    study.status = StudyStatus.RETRIEVING
    study.note = f"being retrieved from {job.source} for job {job.id}"


def end_retrieve(session: Session, job: Job, now: datetime, *, complete: bool = False) -> None:
    """The fetch of *job*'s study ended (*complete*: all of it arrived; else it stopped).

    The study stays ``retrieving`` while another job still fetches it. A complete
    fetch makes it ``complete`` (it is not routed: the job that fetched it runs
    its pipeline); one that stopped leaves it ``incomplete``: what arrived is
    kept, and nothing runs on it until a retry fetches the rest.
    """
    if job.source is None or (job.retrieved_at is not None and not complete):
        return
    study = session.get_one(Study, job.study_id)
    if study.status != StudyStatus.RETRIEVING:
        return
    others = session.execute(
        select(func.count(Job.id)).where(
            Job.study_id == job.study_id,
            Job.id != job.id,
            Job.source.is_not(None),
            Job.retrieved_at.is_(None),
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
        )
    ).scalar_one()
    if others:
        return
    study.completed_at = now
    if complete:
        study.status = StudyStatus.COMPLETE
        study.note = f"retrieved from {job.source} for job {job.id}"
    else:
        study.status = StudyStatus.INCOMPLETE
        study.note = (
            f"the retrieve from {job.source} for job {job.id} stopped part way; "
            f"'jobs retry {job.id}' fetches it again"
        )


class JobQueue:
    """Operations on the job table.

    Parameters
    ----------
    sessions
        Session factory of the job database.
    lease_seconds
        How long a claim lasts without a heartbeat.
    max_attempts
        Claims of one job before it is failed (a worker keeps dying on it).
    wakeups
        Rung after changes that give work to others (:mod:`dicomnode.wakeups`).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        wakeups: Wakeups | None = None,
    ) -> None:
        self.sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.max_attempts = max_attempts
        self.wakeups = wakeups

    def _ring(self, topic: str) -> None:
        """Wake whoever takes the next step (workers for queued jobs, delivery for outputs)."""
        if self.wakeups is not None:
            self.wakeups.ring(topic)

    # -- claims ----------------------------------------------------------------------

    def claim(self, worker_id: str, pipelines: Iterable[str] | None = None) -> ClaimedJob | None:
        """Claim the next job for *worker_id*, or None when there is nothing to do.

        Order: a job whose worker died (lease expired) first; then, among queued
        jobs, the highest priority; within a priority the pipeline with the fewest
        running jobs, so one slow pipeline cannot starve the others; then the
        oldest queued.
        """
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = self._pick(session, now, list(pipelines) if pipelines is not None else None)
            if job is None:
                return None
            if job.status == JobStatus.RUNNING:
                add_event(
                    session,
                    job.id,
                    "claim",
                    f"lease of worker {job.lease_owner} expired; job claimed again",
                    level="warning",
                )
            job.status = JobStatus.RUNNING
            job.lease_owner = worker_id
            job.lease_expires_at = now + self.lease
            job.heartbeat_at = now
            job.started_at = now
            job.attempts += 1
            job.error = None
            add_event(session, job.id, "claim", f"claimed by {worker_id} (attempt {job.attempts})")
            files_removed = session.get_one(Study, job.study_id).files_removed_at is not None
            return ClaimedJob(
                id=job.id,
                study_id=job.study_id,
                study_instance_uid=job.study_instance_uid,
                pipeline=job.pipeline,
                send_to=tuple(job.send_to or ()),
                attempt=job.attempts,
                source=job.source,
                needs_retrieve=job.source is not None
                and (job.retrieved_at is None or files_removed),
            )

    def _pick(self, session: Session, now: datetime, pipelines: list[str] | None) -> Job | None:
        skip_locked = session.get_bind().dialect.name == "postgresql"

        def restrict(query: Any) -> Any:
            return query if pipelines is None else query.where(Job.pipeline.in_(pipelines))

        def first(query: Any) -> Job | None:
            query = restrict(query).limit(1)
            if skip_locked:  # another worker holds it: take the next one, do not wait
                query = query.with_for_update(skip_locked=True)
            return session.execute(query).scalars().first()

        while (
            orphan := first(
                select(Job)
                .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
                .order_by(Job.lease_expires_at)
            )
        ) is not None:
            if orphan.attempts < self.max_attempts:
                return orphan
            self._give_up(session, orphan, now)
        # One pass over queued and running jobs: per pipeline its best priority,
        # oldest queued job and how many run now. A job queued for later (backfill's
        # --rate) is not due before its queued_at.
        queued = and_(Job.status == JobStatus.QUEUED, Job.queued_at <= now)
        rows = session.execute(
            restrict(
                select(
                    Job.pipeline,
                    func.max(case((queued, Job.priority))),
                    func.min(case((queued, Job.queued_at))),
                    func.sum(case((Job.status == JobStatus.RUNNING, 1), else_=0)),
                )
                .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                .group_by(Job.pipeline)
            )
        ).all()
        waiting = [row for row in rows if row[1] is not None]
        for pipeline, priority, _oldest, _running in sorted(
            waiting, key=lambda row: (-row[1], row[3], row[2])
        ):
            job = first(
                select(Job)
                .where(queued, Job.pipeline == pipeline, Job.priority == priority)
                .order_by(Job.queued_at, Job.id)
            )
            if job is not None:
                return job
        return None

    def _give_up(self, session: Session, job: Job, now: datetime) -> None:
        """Fail a job whose worker died on its last allowed attempt."""
        job.status = JobStatus.FAILED
        job.finished_at = now
        job.error = (
            f"The worker running this job stopped responding {job.attempts} times "
            f"(last: {job.lease_owner}); giving up."
        )
        job.lease_owner = None
        add_event(session, job.id, "failed", job.error, level="error")

    def heartbeat(self, job_id: int, worker_id: str) -> bool:
        """Extend the lease; False when the job is no longer ours (cancelled, re-claimed)."""
        now = utcnow()
        with write_transaction(self.sessions) as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_owner == worker_id,
                    Job.status == JobStatus.RUNNING,
                )
                .values(heartbeat_at=now, lease_expires_at=now + self.lease)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- outcomes --------------------------------------------------------------------

    def _owned(self, session: Session, job_id: int, worker_id: str) -> Job | None:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.lease_owner != worker_id or job.status != JobStatus.RUNNING:
            return None
        return job

    def complete(
        self,
        job_id: int,
        worker_id: str,
        outputs: Sequence[tuple[str, str, str]],
        model: str | None = None,
        revision: NewRevision | None = None,
    ) -> str | None:
        """Record a finished pipeline run.

        *outputs* are ``(sop_instance_uid, sop_class_uid, path)``; one delivery row
        is made per output and destination. *model* (``"name version"``) is the
        model that made them; *revision* what the run read and made (recorded in
        ``job_revisions``, the same number rewritten when it is a re-run of the
        same revision). Returns the new status, or None when the job was no
        longer this worker's.
        """
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = self._owned(session, job_id, worker_id)
            if job is None:
                return None
            job.model = model
            job.rerun = None
            # A re-run for late instances kept the previous revision's delivery rows
            # until now (it might have changed nothing); they were all sent.
            for output in list(job.outputs):
                session.delete(output)
            session.flush()
            if revision is not None and outputs:
                self._record_revision(session, job, revision, now)
            destinations = list(job.send_to or ())
            for sop_uid, _, _ in outputs:
                if session.get(ProducedInstance, sop_uid) is None:
                    session.add(
                        ProducedInstance(sop_instance_uid=sop_uid, job_id=job.id, produced_at=now)
                    )
            for sop_uid, sop_class, path in outputs:
                for dest in destinations:
                    session.add(
                        Output(
                            job_id=job.id,
                            sop_instance_uid=sop_uid,
                            sop_class_uid=sop_class,
                            path=path,
                            destination=dest,
                            status=OutputStatus.PENDING,
                            next_attempt_at=now,
                        )
                    )
            job.lease_owner = None
            job.lease_expires_at = None
            if outputs and destinations:
                job.status = JobStatus.SENDING
                add_event(
                    session,
                    job.id,
                    "sending",
                    f"{len(outputs)} result object(s) queued for {', '.join(destinations)}",
                )

            else:
                job.status = JobStatus.DONE
                job.finished_at = now
                what = (
                    f"{len(outputs)} result object(s), no destination" if outputs else "no results"
                )
                add_event(session, job.id, "done", f"finished with {what}")
            status = str(job.status)
        if status == JobStatus.SENDING:
            self._ring(OUTPUTS)  # after the commit: delivery must see the rows
        return status

    @staticmethod
    def _record_revision(session: Session, job: Job, revision: NewRevision, now: datetime) -> None:
        row = session.execute(
            select(JobRevision).where(
                JobRevision.job_id == job.id, JobRevision.number == revision.number
            )
        ).scalar_one_or_none()
        if row is None:
            row = JobRevision(job_id=job.id, number=revision.number, reason=revision.reason)
            session.add(row)
        row.created_at = now
        row.model = revision.model
        row.inputs = dict(revision.inputs)
        row.objects = [dict(o) for o in revision.objects]

    def unchanged(self, job_id: int, worker_id: str, message: str) -> bool:
        """End a re-run for late instances that changed nothing: the last revision stands.

        The job goes back to ``done`` with its delivery rows as they were (sent);
        *message* says why, in the timeline.
        """
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = self._owned(session, job_id, worker_id)
            if job is None:
                return False
            job.status = JobStatus.DONE
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            job.rerun = None
            add_event(session, job.id, "done", message)
            return True

    def fail(self, job_id: int, worker_id: str | None, error: str) -> bool:
        """Mark a job failed with a human-readable *error*."""
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = session.get(Job, job_id)
            if job is None or job.status in FINAL_JOB_STATES:
                return False
            if worker_id is not None and job.lease_owner != worker_id:
                return False
            job.status = JobStatus.FAILED
            job.error = error
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            add_event(session, job.id, "failed", error, level="error")
            end_retrieve(session, job, now)
            return True

    def release(self, job_id: int, worker_id: str, reason: str) -> bool:
        """Give a running job back to the queue (graceful worker shutdown)."""
        with write_transaction(self.sessions) as session:
            job = self._owned(session, job_id, worker_id)
            if job is None:
                return False
            job.status = JobStatus.QUEUED
            job.lease_owner = None
            job.lease_expires_at = None
            job.attempts = max(0, job.attempts - 1)
            add_event(session, job.id, "released", reason, level="warning")
        self._ring(JOBS)
        return True

    # -- admin actions ---------------------------------------------------------------

    def request(
        self,
        study_instance_uid: str,
        pipeline: str,
        *,
        requested_by: str,
        source: str | None = None,
        study_fields: Mapping[str, str | None] | None = None,
        send_to: Sequence[str] = (),
        priority: int = 0,
        not_before: datetime | None = None,
        reason: str = "on demand",
    ) -> Job:
        """Queue *pipeline* on a study: an on-demand run or one study of a backfill.

        With *source*, the worker first fetches the study from that ``[[sources]]``
        entry (a study the node never saw gets its row now, from *study_fields*:
        patient_id, patient_name, accession_number, study_date, study_description).
        Without, the study must be stored here, complete. A finished job of the
        same pipeline on the study is queued again (its outputs forgotten; the new
        results get new UIDs when the model changed); one that has not finished
        is an error. *not_before* delays the claim (backfill's rate).

        Raises
        ------
        JobError
            With a sentence: no such study here and no source, a study still
            arriving, a job already under way.
        """
        now = utcnow()
        with write_transaction(self.sessions) as session:
            study = self._requested_study(session, study_instance_uid, source, study_fields, now)
            job = session.execute(
                select(Job).where(Job.study_id == study.id, Job.pipeline == pipeline)
            ).scalar_one_or_none()
            if job is not None and job.status not in FINAL_JOB_STATES:
                raise JobError(
                    f"job {job.id} already runs {pipeline} on study {study_instance_uid} "
                    f"({job.status})"
                )
            if job is None:
                job = Job(study_id=study.id, study_instance_uid=study_instance_uid)
                job.pipeline = pipeline
                job.created_at = now
                session.add(job)
            else:
                for output in list(job.outputs):
                    session.delete(output)
            job.route_name = None
            job.send_to = list(send_to)
            job.priority = priority
            job.status = JobStatus.QUEUED
            job.queued_at = max(now, not_before) if not_before is not None else now
            job.started_at = job.finished_at = job.error = None
            job.attempts = 0
            job.requested_by = requested_by
            job.rerun = None
            job.source = source
            job.retrieved_at = job.retrieve_received = job.retrieve_expected = None
            session.flush()
            fetch = f"; fetched from {source} first" if source else ""
            later = f"; not before {job.queued_at.isoformat()}" if job.queued_at > now else ""
            add_event(
                session, job.id, "queued", f"{reason}, requested by {requested_by}{fetch}{later}"
            )
            if source is not None:
                start_retrieve(session, job)
            session.flush()
            session.refresh(job)
        self._ring(JOBS)
        return job

    @staticmethod
    def _requested_study(
        session: Session,
        uid: str,
        source: str | None,
        fields: Mapping[str, str | None] | None,
        now: datetime,
    ) -> Study:
        study = session.execute(
            select(Study).where(Study.study_instance_uid == uid)
        ).scalar_one_or_none()
        if source is None:
            if study is None:
                raise JobError(f"study {uid} is not stored here; name a source to fetch it from")
            if study.files_removed_at is not None:
                raise JobError(
                    f"the files of study {uid} were removed by retention; name a source to "
                    "fetch it again"
                )
            if study.status not in (StudyStatus.COMPLETE, StudyStatus.UNMATCHED):
                raise JobError(f"study {uid} is {study.status}, not complete; try again later")
            return study
        if study is None:
            values = {k: v for k, v in (fields or {}).items() if v is not None}
            study = Study(
                study_instance_uid=uid,
                status=StudyStatus.RETRIEVING,
                instance_count=0,
                first_received_at=now,
                last_received_at=now,
                **values,
            )
            session.add(study)
            session.flush()
        return study

    def retry(self, job_id: int) -> Job:
        """Queue a finished job again; failed deliveries are re-sent with the same UIDs."""
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = _existing(session, job_id)
            if job.status not in FINAL_JOB_STATES:
                raise JobError(
                    f"job {job_id} is {job.status}; only done, failed or cancelled jobs can be retried"
                )
            unsent = [o for o in job.outputs if o.status != OutputStatus.SENT]
            if job.status == JobStatus.FAILED and job.outputs and unsent:
                # The pipeline ran; only delivery failed: resend, do not recompute.
                for output in unsent:
                    output.status = OutputStatus.PENDING
                    output.attempts = 0
                    output.next_attempt_at = now
                job.status = JobStatus.SENDING
                message = f"retry requested: resending {len(unsent)} result object(s)"
            else:
                for output in list(job.outputs):
                    session.delete(output)
                job.status = JobStatus.QUEUED
                job.queued_at = now
                job.attempts = 0
                message = "retry requested: queued again"
                if job.source is not None and job.retrieved_at is None:
                    start_retrieve(session, job)
                    message += f"; the study is fetched from {job.source} again"
            job.error = None
            job.finished_at = None
            job.rerun = None  # an admin's retry runs the pipeline whatever changed
            add_event(session, job.id, "retry", message)
            session.flush()
        self._ring(OUTPUTS if job.status == JobStatus.SENDING else JOBS)
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a job that has not finished; a running worker stops at its next heartbeat."""
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = _existing(session, job_id)
            if job.status in FINAL_JOB_STATES:
                raise JobError(f"job {job_id} is already {job.status}")
            job.status = JobStatus.CANCELLED
            job.finished_at = now
            job.lease_owner = None
            job.lease_expires_at = None
            for output in job.outputs:
                if output.status == OutputStatus.PENDING:
                    output.status = OutputStatus.FAILED
                    output.last_error = "job cancelled"
            add_event(session, job.id, "cancelled", "cancelled by an administrator")
            end_retrieve(session, job, now)
            return job

    # -- queries ---------------------------------------------------------------------

    def find(self, filters: JobFilter) -> tuple[list[Job], int]:
        """One page of jobs matching *filters* (newest first) and how many match in all.

        The CLI (``jobs list``) and the REST API both call this, so the same
        filters select the same jobs.
        """
        where = filters.conditions()
        query = (
            select(Job)
            .options(
                selectinload(Job.outputs), selectinload(Job.study), selectinload(Job.revisions)
            )
            .where(*where)
            .order_by(Job.id.desc())
            .limit(filters.limit)
            .offset(filters.offset)
        )
        counting = select(func.count(Job.id)).where(*where)
        if filters.needs_study:
            query = query.join(Study, Job.study_id == Study.id)
            counting = counting.join(Study, Job.study_id == Study.id)
        with self.sessions() as session:
            jobs = list(session.execute(query).scalars())
            total = int(session.execute(counting).scalar_one())
        return jobs, total

    def list(self, filters: JobFilter | None = None, **criteria: Any) -> list[Job]:
        """Jobs, newest first, with outputs and study loaded.

        Pass a :class:`JobFilter`, or its fields as keywords
        (``queue.list(status="failed", limit=10)``).
        """
        return self.find(filters or JobFilter(**criteria))[0]

    def get(self, job_id: int) -> Job:
        """One job with its events, outputs and study (:class:`UnknownJob` if there is none)."""
        _check_id(job_id)
        with self.sessions() as session:
            job = session.execute(
                select(Job)
                .where(Job.id == job_id)
                .options(
                    selectinload(Job.outputs),
                    selectinload(Job.events),
                    selectinload(Job.study),
                    selectinload(Job.revisions),
                )
            ).scalar_one_or_none()
            if job is None:
                raise UnknownJob(f"no job with id {job_id}")
            return job

    def counts(self) -> dict[str, int]:
        """Number of jobs per status."""
        with self.sessions() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {str(status): int(n) for status, n in rows}
