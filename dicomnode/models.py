"""The database tables: studies, series, instances, jobs, job events, outputs.

The database is the single source of truth of the node: every state a study
or a job is in lives here, so a restarted node (or a worker on another host)
resumes from these rows alone. Schema changes go through Alembic
(``dicomnode/migrations``); ``dicomnode db upgrade`` applies them.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)
AET = String(16)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class StudyStatus(enum.StrEnum):
    """Where a study is in assembly."""

    RECEIVING = "receiving"  # instances may still arrive
    COMPLETE = "complete"  # quiet long enough (or a route's series are present); routed
    UNMATCHED = "unmatched"  # complete, but no route matched: recorded, not processed
    # A job fetches it from a source; assembly leaves it alone (the job runs when it is all here).
    RETRIEVING = "retrieving"
    # A retrieve stopped part way: what arrived (and arrives later) is kept, nothing is
    # processed until a retry of the job fetches the rest.
    INCOMPLETE = "incomplete"


class JobStatus(enum.StrEnum):
    """The job states of SPEC.md."""

    WAITING = "waiting"  # study still arriving
    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_JOB_STATES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class OutputStatus(enum.StrEnum):
    """Delivery state of one (result object, destination)."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # the destination does not take this kind of object (its ``outputs``)


naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (Alembic needs them)."""

    metadata = MetaData(naming_convention=naming_convention)


class Study(Base):
    """One Study Instance UID seen by the node."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_description: Mapped[str | None] = mapped_column(String(64))
    calling_aet: Mapped[str | None] = mapped_column(AET)
    called_aet: Mapped[str | None] = mapped_column(AET)
    sender_host: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.RECEIVING, index=True)
    note: Mapped[str | None] = mapped_column(Text)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when retention removed the stored files; the rows stay as the record.
    files_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")


class Series(Base):
    """One series of a study, with the attributes routes match on."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    # Routing keywords of the first instance (Modality, SOPClassUID, ImageType, ...).
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    calling_aet: Mapped[str | None] = mapped_column(AET)
    called_aet: Mapped[str | None] = mapped_column(AET)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance; ``path`` is relative to ``storage.path``."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    times_received: Mapped[int] = mapped_column(Integer, default=1)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One (study, pipeline) unit of work."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "pipeline", name="uq_jobs_study_pipeline"),
        Index("ix_jobs_claim", "status", "priority", "queued_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    pipeline: Mapped[str] = mapped_column(String(64), index=True)
    route_name: Mapped[str | None] = mapped_column(String(64))
    send_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.WAITING)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who asked for an on-demand or backfill job (a token's name, "cli"); None: a route.
    requested_by: Mapped[str | None] = mapped_column(String(64))
    # The [[sources]] entry the study is fetched from before the pipeline runs; None: pushed.
    source: Mapped[str | None] = mapped_column(String(64))
    retrieved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the fetch finished
    retrieve_received: Mapped[int | None] = mapped_column(Integer)  # progress of the fetch
    retrieve_expected: Mapped[int | None] = mapped_column(Integer)
    # The model that made the results ("name version"): backfill skips studies it did.
    model: Mapped[str | None] = mapped_column(String(128))
    # Why the job was queued again without an admin: "late" (assembly, late instances within
    # the re-open window): the worker re-runs the pipeline only if its inputs changed.
    rerun: Mapped[str | None] = mapped_column(String(16))

    study: Mapped[Study] = relationship(back_populates="jobs")
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    outputs: Mapped[list[Output]] = relationship(
        back_populates="job", order_by="Output.id", cascade="all, delete-orphan"
    )
    revisions: Mapped[list[JobRevision]] = relationship(
        back_populates="job", order_by="JobRevision.number", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    """One line of a job's timeline."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stage: Mapped[str] = mapped_column(String(32))
    duration_s: Mapped[float | None] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[Job] = relationship(back_populates="events")


class Output(Base):
    """One result object to deliver to one destination."""

    __tablename__ = "outputs"
    __table_args__ = (
        UniqueConstraint(
            "job_id", "sop_instance_uid", "destination", name="uq_outputs_job_sop_destination"
        ),
        Index("ix_outputs_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=OutputStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # What the peer said beside success (a C-STORE warning status, a STOW-RS WarningReason).
    warning: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="outputs")


class ProducedInstance(Base):
    """Every SOP Instance UID a pipeline of this node wrote, kept when its job is re-run.

    A PACS may send the node's own results back with the study (forwarding a
    whole study, a retrieve after an earlier run); they are never the input of
    a pipeline, and the outputs that named them may be gone by then.
    """

    __tablename__ = "produced_instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    produced_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobRevision(Base):
    """One revision of a job's results: what it read, which model, which objects it made.

    A job's first results are revision 1. When it runs again on changed inputs
    (a late series) or with another model (``jobs retry`` after an update), its
    results are revision n + 1: new UIDs, and its SR cites the SRs of the earlier
    revisions (Predecessor Documents Sequence). A re-run with the same inputs and
    model rewrites the same revision (the same UIDs), so it is never a duplicate.
    """

    __tablename__ = "job_revisions"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_job_revisions_job_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    model: Mapped[str | None] = mapped_column(String(128))
    # Series UID -> {"instances": n, "digest": sha1 of the instance file names} it read.
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What changed from the previous revision, as the timeline said it.
    reason: Mapped[str | None] = mapped_column(Text)
    # [{sop_instance_uid, sop_class_uid, series_instance_uid}] of the objects it made.
    objects: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)

    job: Mapped[Job] = relationship(back_populates="revisions")
