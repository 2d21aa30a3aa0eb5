"""Retention: remove stored files of finished studies; the records stay.

A study's files (its instances and the results of its jobs) may go once the
study is complete and every job of it is ``done`` or ``cancelled`` (a
``failed`` job may still be retried, so its data stays), or, for an
``unmatched`` study, once it is complete. :meth:`Retention.tick` removes
those completed more than ``retention.max_age_hours`` ago; when free space is
under ``retention.emergency_free_bytes`` it removes the oldest such studies
first, whatever their age, until there is room again. Studies still
receiving, and studies with a waiting, queued, running or sending job, are
never touched.

Removal runs in the ``serve`` process, under the store's exclusive lock, and
re-checks the study in the database there: an instance that arrived a moment
ago re-opened the study and saves it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import RetentionConfig
from dicomnode.database import write_transaction
from dicomnode.jobs import add_event
from dicomnode.models import Job, JobStatus, Study, StudyStatus, utcnow
from dicomnode.store import InstanceStore

log = logging.getLogger(__name__)

_KEEP_JOB_STATES = [s.value for s in JobStatus if s not in (JobStatus.DONE, JobStatus.CANCELLED)]


@dataclass(frozen=True)
class Removal:
    """One study whose files were removed."""

    study_instance_uid: str
    bytes_freed: int
    reason: str


# Studies nothing more happens to by itself (an incomplete one waits for a retry that may
# never come: its age counts from when its retrieve stopped).
_FINISHED_STUDIES = (StudyStatus.COMPLETE, StudyStatus.UNMATCHED, StudyStatus.INCOMPLETE)


class Retention:
    """Applies ``[retention]`` to the store."""

    def __init__(
        self, sessions: sessionmaker[Session], store: InstanceStore, config: RetentionConfig
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.config = config

    def _removable(self, session: Session, older_than: datetime | None) -> list[Study]:
        unfinished = exists().where(Job.study_id == Study.id, Job.status.in_(_KEEP_JOB_STATES))
        query = (
            select(Study)
            .where(
                Study.status.in_(_FINISHED_STUDIES),
                Study.files_removed_at.is_(None),
                ~unfinished,
            )
            .order_by(Study.completed_at, Study.id)
        )
        if older_than is not None:
            query = query.where(Study.completed_at < older_than)
        return list(session.execute(query).scalars())

    def tick(self, now: datetime | None = None) -> list[Removal]:
        """Remove what is due; return what was removed."""
        if not self.config.enabled:
            return []
        now = now or utcnow()
        removed = []
        with self.sessions() as session:
            due = self._removable(session, now - timedelta(hours=self.config.max_age_hours))
        for study in due:
            removal = self._remove(study, now, f"older than {self.config.max_age_hours:g} h")
            if removal is not None:
                removed.append(removal)
        if (
            self.config.emergency_free_bytes
            and self.store.free_bytes() < self.config.emergency_free_bytes
        ):
            with self.sessions() as session:
                oldest = self._removable(session, None)
            for study in oldest:
                if self.store.free_bytes() >= self.config.emergency_free_bytes:
                    break
                removal = self._remove(
                    study, now, "free space under retention.emergency_free_bytes"
                )
                if removal is not None:
                    removed.append(removal)
        return removed

    def _remove(self, study: Study, now: datetime, reason: str) -> Removal | None:
        with self.store.exclusive(), write_transaction(self.sessions) as session:
            current = session.get(Study, study.id)
            still_removable = (
                current is not None
                and current.files_removed_at is None
                and current.last_received_at == study.last_received_at
                and current.status in _FINISHED_STUDIES
                and not session.execute(
                    select(Job.id).where(Job.study_id == study.id, Job.status.in_(_KEEP_JOB_STATES))
                ).first()
            )
            if not still_removable or current is None:
                return None
            freed = self.store.remove_study_files(current.study_instance_uid)
            jobs = list(session.execute(select(Job).where(Job.study_id == study.id)).scalars())
            for job in jobs:
                freed += _remove_tree(self.store.results_dir(job.id))
                add_event(session, job.id, "retention", f"stored files removed ({reason})")
            current.files_removed_at = now
        log.info(
            "retention removed study files",
            extra={"study": study.study_instance_uid, "bytes": freed, "reason": reason},
        )
        return Removal(study.study_instance_uid, freed, reason)


def _remove_tree(folder: Path) -> int:
    if not folder.exists():
        return 0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return size
