"""Database rows for tests and benchmarks that need a job queue without a study flow."""

from __future__ import annotations

from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.models import Job, JobStatus, Study, utcnow


def queue_jobs(url: str, n: int, pipeline: str) -> None:
    """Migrate the database at *url* and add *n* queued jobs, one study each.

    Parameters
    ----------
    url
        SQLAlchemy URL of the database (SQLite or PostgreSQL).
    n
        Number of jobs.
    pipeline
        Pipeline name every job is queued for.

    Notes
    -----
    Jobs are unique per (study, pipeline), so each gets its own complete study.
    """
    upgrade(url)
    sessions = session_factory(make_engine(url))
    now = utcnow()
    with sessions.begin() as session:
        studies = [
            Study(
                study_instance_uid=f"2.25.{i + 1}",
                first_received_at=now,
                last_received_at=now,
                status="complete",
            )
            for i in range(n)
        ]
        session.add_all(studies)
        session.flush()
        session.add_all(
            Job(
                study_id=s.id,
                study_instance_uid=s.study_instance_uid,
                pipeline=pipeline,
                status=JobStatus.QUEUED,
                created_at=now,
                queued_at=now,
            )
            for s in studies
        )
