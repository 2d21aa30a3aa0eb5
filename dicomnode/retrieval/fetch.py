"""A job's ``retrieve`` stage: bring its study from its source, check it all arrived.

The worker runs this before the pipeline when the job names a source
(:attr:`dicomnode.jobs.ClaimedJob.needs_retrieve`). In order:

1. query the source for the study: it must be there, and its
   ``NumberOfStudyRelatedInstances`` is what is expected (a source that does
   not count at study level is asked per series, then per instance); the
   timeline says what is fetched, from where, and how;
2. retrieve it (C-MOVE, C-GET or WADO-RS) while a thread counts, once a
   second, the study's instances this node stored since the retrieve
   began: that count is the job's progress (``retrieve_received`` of
   ``retrieve_expected``), from the index, not from what the source claims;
3. check: the source's own failures, then what it reported sent against what
   was stored, then what was stored against what was expected. Any shortfall
   is a :class:`~dicomnode.retrieval.RetrieveError` naming both numbers;
4. only then is the study ``complete`` and the job goes on to its pipeline.

A retrieve that fails leaves the study ``incomplete`` (see
:func:`dicomnode.jobs.end_retrieve`): nothing half-retrieved is processed, and
``jobs retry`` fetches it again (instances already here are stored again as
resends, so a retry completes a partial study).

The count compares arrival times written by the receivers with a start time
taken here: on several hosts their clocks must agree (NTP), as the leases do.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings, SourceConfig
from dicomnode.database import write_transaction
from dicomnode.jobs import ClaimedJob, add_event, end_retrieve
from dicomnode.models import Instance, Job, utcnow
from dicomnode.retrieval import RetrieveError, RetrieveReport, StudyQuery, open_source
from dicomnode.retrieval.query import StudyMatch
from dicomnode.store import InstanceStore

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 1.0


class StudyFetch:
    """The retrieve stage of one claimed job.

    Parameters
    ----------
    settings
        Node settings (the job's source must be in ``[[sources]]``).
    sessions
        Job database.
    store
        Where C-GET and WADO-RS instances are written (C-MOVE's arrive at the receiver).
    job
        The claimed job.
    cancelled
        True once the job was cancelled or taken away: the retrieve is aborted.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: InstanceStore,
        job: ClaimedJob,
        cancelled: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.job = job
        self.cancelled = cancelled

    def _source(self) -> SourceConfig:
        name = str(self.job.source)
        try:
            return self.settings.source(name)
        except KeyError:
            known = ", ".join(s.name for s in self.settings.sources) or "none"
            raise RetrieveError(
                f"source {name!r} is not in this node's [[sources]] (configured: {known})"
            ) from None

    def run(self) -> int:
        """Retrieve and check the study; return how many instances arrived."""
        config = self._source()
        source = open_source(config, self.settings.node)
        uid = self.job.study_instance_uid
        matches = source.find_studies(StudyQuery(study_instance_uid=uid))
        if not matches:
            raise RetrieveError(f"study {uid} is not at {source.name}")
        study = matches[0]
        method = _method(config, self.settings.node.ae_title)
        expected = study.instance_count
        if expected is None:  # not counted at study level (dcmqrscp): count the instances
            expected = source.count_instances(uid)
            study = dataclasses.replace(study, instance_count=expected)
        announced = f"{expected} instance(s) expected" if expected is not None else "count unknown"
        self._begin(expected, f"fetching the study from {source.name} by {method}; {announced}")
        began, started = utcnow(), time.perf_counter()
        deadline = time.monotonic() + config.retrieve_timeout
        with _Progress(self, began):
            report = source.retrieve_study(study, self.store, self.cancelled, deadline)
        received = self.count_since(began)
        self._check(source.name, report, study, received)
        self._finish(received, expected, source.name, report.method, time.perf_counter() - started)
        return received

    # -- the database ----------------------------------------------------------------

    def count_since(self, began: datetime) -> int:
        """The study's instances stored (or stored again) since *began*."""
        with self.sessions() as session:
            return int(
                session.execute(
                    select(func.count(Instance.id)).where(
                        Instance.study_id == self.job.study_id, Instance.received_at >= began
                    )
                ).scalar_one()
            )

    def progress(self, received: int) -> None:
        """Record how many instances arrived so far (the dashboard shows it)."""
        with write_transaction(self.sessions) as session:
            session.execute(
                update(Job).where(Job.id == self.job.id).values(retrieve_received=received)
            )

    def _begin(self, expected: int | None, message: str) -> None:
        with write_transaction(self.sessions) as session:
            job = session.get_one(Job, self.job.id)
            job.retrieve_expected = expected
            job.retrieve_received = 0
            job.retrieved_at = None
            add_event(session, job.id, "retrieve", message)

    def _finish(
        self, received: int, expected: int | None, source: str, method: str, seconds: float
    ) -> None:
        now = utcnow()
        with write_transaction(self.sessions) as session:
            job = session.get_one(Job, self.job.id)
            job.retrieve_received = received
            job.retrieved_at = now
            of = f" of {expected}" if expected is not None else ""
            add_event(
                session,
                job.id,
                "retrieve",
                f"{received}{of} instance(s) retrieved from {source} by {method}",
                duration_s=seconds,
            )
            end_retrieve(session, job, now, complete=True)
        log.info(
            "study retrieved",
            extra={"job": self.job.id, "study": self.job.study_instance_uid, "instances": received},
        )

    # -- the check -------------------------------------------------------------------

    def _check(self, source: str, report: RetrieveReport, study: StudyMatch, received: int) -> None:
        """Compare what arrived with what the source reported and announced."""
        sent = report.completed
        if sent is not None and report.method != "WADO-RS":
            sent += report.warning
            if received < sent:
                raise RetrieveError(
                    f"{report.method} from {source} reported {sent} instance(s) sent, but this "
                    f"node stored {received} of them; the study is incomplete"
                )
        expected = study.instance_count
        if expected is not None and received < expected:
            raise RetrieveError(
                f"partial retrieve from {source}: {received} of {expected} instance(s) arrived"
            )
        if received == 0:
            raise RetrieveError(f"{report.method} from {source} brought no instance of the study")


def _method(config: SourceConfig, node_aet: str) -> str:
    if config.kind == "dicomweb":
        return "WADO-RS"
    return f"C-MOVE to {node_aet}" if config.retrieve == "move" else "C-GET"


class _Progress:
    """Counts the study's arrivals once a second while the retrieve runs."""

    def __init__(self, fetch: StudyFetch, began: datetime) -> None:
        self.fetch = fetch
        self.began = began
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="retrieve-progress", daemon=True)
        self.last = -1

    def _run(self) -> None:
        while not self.done.wait(PROGRESS_SECONDS):
            try:
                count = self.fetch.count_since(self.began)
                if count != self.last:
                    self.fetch.progress(count)
                    self.last = count
            except Exception:  # a busy database must not stop the retrieve
                log.exception("retrieve progress not recorded")

    def __enter__(self) -> _Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)
