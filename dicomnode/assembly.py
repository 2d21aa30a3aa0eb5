"""Study assembly: deciding when a study is complete, then routing it.

A study is complete after ``assembly.quiet_seconds`` without new instances,
or earlier, after ``assembly.early_quiet_seconds``, once a matching route's
``complete_when`` series are all present. While a study is still arriving,
its matching routes already have jobs in state ``waiting`` so admins see what
is coming; completion moves them to ``queued``.

:meth:`Assembler.run` (a thread of ``serve``) calls :meth:`Assembler.tick` when
the next receiving study can be quiet: the receivers ring an ``ARRIVALS``
wake-up (:mod:`dicomnode.wakeups`) with every instance, so assembly knows the
deadline moved, and a completed study rings ``JOBS`` for the workers. Every
wait is bounded by ``assembly.check_interval``. The assembler keeps no state
of its own: everything is read from and written to the database, so a
restarted node carries on.

Instances that arrive after a study completed re-open it (the store sets it
back to ``receiving``, so its quiet timer restarts and a late series is judged
once, whole). When it is quiet again (``docs/revisions.md``):

- the late instances arrived within ``assembly.reopen_window_seconds`` of the
  study's completion: each ``done`` job is queued again as a *late* re-run
  (``Job.rerun``): the worker runs the pipeline's selection and stops there when
  its inputs did not change (a dose report a CT pipeline does not read), or
  re-runs it as the next revision of its results; a ``failed`` job is queued
  again in full (the late series may be what it lacked); a job still running
  or sending keeps the study ``receiving`` until it has finished, so its
  results are never revised half delivered;
- later than that (or after retention removed the study's files): the
  instances are stored and counted, each job's timeline says so, and nothing
  re-runs (``jobs retry`` does, on the whole study).

Every job of the study gets one event naming the late series and what happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import AssemblyConfig, RouteConfig
from dicomnode.database import write_transaction
from dicomnode.jobs import add_event
from dicomnode.models import (
    Instance,
    Job,
    JobStatus,
    Series,
    Study,
    StudyStatus,
    utcnow,
)
from dicomnode.revisions import LATE
from dicomnode.routing import RouteDecision, SeriesView, match_routes, required_series_present
from dicomnode.wakeups import ARRIVALS, JOBS, Wakeups

log = logging.getLogger(__name__)


def series_views(study: Study, series: Sequence[Series]) -> list[SeriesView]:
    """Routing's view of a study: series attributes plus study-level and AE keys."""
    views = []
    for s in series:
        attributes = dict(s.attributes or {})
        attributes.setdefault("StudyDescription", study.study_description)
        attributes["CallingAETitle"] = s.calling_aet
        attributes["CalledAETitle"] = s.called_aet
        views.append(SeriesView(s.series_instance_uid, attributes))
    return views


class Assembler:
    """Completes quiet studies and creates their jobs.

    Parameters
    ----------
    sessions
        Session factory of the job database.
    config
        ``[assembly]`` settings.
    routes
        ``[[routes]]`` in order.
    """

    def __init__(
        self, sessions: sessionmaker[Session], config: AssemblyConfig, routes: Sequence[RouteConfig]
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.routes = list(routes)
        # Re-opened studies quiet but waiting for a job of theirs to finish: not "due" again
        # before check_interval (in memory only: a restarted node finds them again).
        self._deferred: set[int] = set()

    def run(self, stop: threading.Event, wakeups: Wakeups) -> None:
        """Complete studies as they become quiet, until *stop* is set."""
        listener = wakeups.listen(ARRIVALS)
        quiet = self._shortest_quiet()
        try:
            due = time.monotonic()
            while not stop.is_set():
                if time.monotonic() >= due:
                    try:
                        if self.tick():
                            wakeups.ring(JOBS)
                    except Exception:  # the database may be away for a moment
                        log.exception("assembly tick failed; retrying")
                    due = time.monotonic() + self._next_due()
                # An arrival makes its study quiet at the earliest `quiet` from now.
                if listener.wait(min(due - time.monotonic(), self.config.check_interval)):
                    due = min(due, time.monotonic() + quiet)
        finally:
            listener.close()

    def _shortest_quiet(self) -> float:
        """The shortest time after its last instance at which a study may complete."""
        if any(route.complete_when for route in self.routes):
            return min(self.config.quiet_seconds, self.config.early_quiet_seconds)
        return self.config.quiet_seconds

    def _next_due(self) -> float:
        """Seconds until the first receiving study can be quiet (at most ``check_interval``)."""
        with self.sessions() as session:
            first = session.execute(
                select(func.min(Study.last_received_at)).where(
                    Study.status == StudyStatus.RECEIVING, Study.id.not_in(sorted(self._deferred))
                )
            ).scalar()
        if first is None:
            return self.config.check_interval
        ahead = (first + timedelta(seconds=self._shortest_quiet()) - utcnow()).total_seconds()
        return max(0.0, min(ahead, self.config.check_interval))

    def tick(self, now: datetime | None = None) -> list[str]:
        """Look at every receiving study once; return the UIDs completed now."""
        now = now or utcnow()
        with self.sessions() as session:
            studies = list(
                session.execute(
                    select(Study).where(Study.status == StudyStatus.RECEIVING)
                ).scalars()
            )
            by_study: dict[int, list[Series]] = defaultdict(list)
            if studies:
                rows = session.execute(
                    select(Series).where(Series.study_id.in_([s.id for s in studies]))
                ).scalars()
                for s in rows:
                    by_study[s.study_id].append(s)
        completed = []
        self._deferred.clear()
        for study in studies:
            views = series_views(study, by_study[study.id])
            decisions = match_routes(self.routes, views)
            quiet_for = (now - study.last_received_at).total_seconds()
            early = quiet_for >= self.config.early_quiet_seconds and any(
                required_series_present(self.routes[d.index], views) for d in decisions
            )
            try:
                if quiet_for >= self.config.quiet_seconds or early:
                    if self._complete(
                        study, decisions, now, early=early and quiet_for < self.config.quiet_seconds
                    ):
                        completed.append(study.study_instance_uid)
                elif decisions:
                    self._ensure_waiting(study, decisions, now)
            except Exception:  # one bad study must not stop assembly of the others
                log.exception(
                    "assembly of a study failed", extra={"study": study.study_instance_uid}
                )
        return completed

    def _ensure_waiting(
        self, study: Study, decisions: Sequence[RouteDecision], now: datetime
    ) -> None:
        with self.sessions() as session:
            have = set(
                session.execute(select(Job.pipeline).where(Job.study_id == study.id)).scalars()
            )
        if {d.pipeline for d in decisions} <= have:
            return  # nothing to add: no write lock (ingest is writing meanwhile)
        with write_transaction(self.sessions) as session:
            existing = {
                j.pipeline
                for j in session.execute(select(Job).where(Job.study_id == study.id)).scalars()
            }
            for d in decisions:
                if d.pipeline not in existing:
                    job = _new_job(study, d, JobStatus.WAITING, now)
                    session.add(job)
                    session.flush()
                    add_event(
                        session, job.id, "waiting", f"route {d.name} matched; study still arriving"
                    )

    def _complete(
        self, study: Study, decisions: Sequence[RouteDecision], now: datetime, *, early: bool
    ) -> bool:
        with write_transaction(self.sessions) as session:
            current = session.get(Study, study.id)
            # An instance arrived since we looked: not quiet any more.
            if (
                current is None
                or current.status != StudyStatus.RECEIVING
                or current.last_received_at != study.last_received_at
            ):
                return False
            jobs = {
                j.pipeline: j
                for j in session.execute(select(Job).where(Job.study_id == study.id)).scalars()
            }
            wanted = {d.pipeline for d in decisions}
            late = _late_arrivals(session, current) if current.completed_at is not None else None
            if late is not None and any(
                jobs[p].status in (JobStatus.RUNNING, JobStatus.SENDING)
                for p in wanted
                if p in jobs
            ):
                # Revising results still being made or delivered would cite a report the
                # PACS may never get: wait (receiving) until they are out, then decide.
                self._deferred.add(study.id)
                return False
            reopen = late is not None and self._within_window(current, late)
            reason = (
                "required series present" if early else f"quiet for {self.config.quiet_seconds:g} s"
            )
            for d in decisions:
                job = jobs.get(d.pipeline)
                if job is None:
                    job = _new_job(study, d, JobStatus.QUEUED, now)
                    session.add(job)
                    session.flush()
                    add_event(
                        session, job.id, "queued", f"study complete ({reason}); route {d.name}"
                    )
                elif job.status == JobStatus.WAITING:
                    job.status = JobStatus.QUEUED
                    job.queued_at = now
                    add_event(session, job.id, "queued", f"study complete ({reason})")
                elif late is not None:
                    _late_job(session, job, late, reopen, self.config.reopen_window_seconds, now)
                else:  # resent instances while the study was complete, nothing newer
                    add_event(
                        session,
                        job.id,
                        "study",
                        f"{current.instance_count} instance(s) in the study now; more arrived after "
                        "this job was created. Use 'jobs retry' to run it on the full study.",
                        level="warning",
                    )
            for pipeline, job in jobs.items():
                if pipeline not in wanted and job.status == JobStatus.WAITING:
                    job.status = JobStatus.CANCELLED
                    job.finished_at = now
                    add_event(
                        session,
                        job.id,
                        "cancelled",
                        "the complete study no longer matches this route",
                    )
            current.completed_at = now
            if decisions:
                current.status = StudyStatus.COMPLETE
                current.note = f"routed to {', '.join(sorted(wanted))}"
                if late is not None:
                    current.note = (
                        f"re-opened by {late.summary()}; routed to {', '.join(sorted(wanted))}"
                        if reopen
                        else f"{late.summary()} arrived {late.after_s:.0f} s after the study was "
                        "complete, outside the re-open window: stored; jobs that ran are not re-run"
                    )
            else:
                current.status = StudyStatus.UNMATCHED
                current.note = "no route matched this study; recorded, not processed"
        log.info(
            "study complete",
            extra={
                "study": study.study_instance_uid,
                "pipelines": sorted(wanted),
                "reason": reason,
            },
        )
        return True

    def _within_window(self, study: Study, late: LateArrivals) -> bool:
        """Whether *late* re-opens *study*: soon enough, and its earlier files still here."""
        window = self.config.reopen_window_seconds
        return window > 0 and late.after_s <= window and study.files_removed_at is None


@dataclass(frozen=True)
class LateSeries:
    """A series that gained instances after its study was complete."""

    series_instance_uid: str
    modality: str | None
    description: str | None
    instances: int  # received since the study was complete

    def __str__(self) -> str:
        parts = [self.modality or "", f"'{self.description}'" if self.description else ""]
        parts.append(f"{self.instances} instance{'s' * (self.instances != 1)}")
        return f"series {self.series_instance_uid} ({', '.join(p for p in parts if p)})"


@dataclass(frozen=True)
class LateArrivals:
    """The instances a re-opened study received since it was last complete."""

    series: tuple[LateSeries, ...]
    after_s: float  # from the study's completion to the first of them

    def summary(self) -> str:
        """``late series X (CT, 'desc', 120 instances)``, for timelines and the study's note."""
        return "late " + "; ".join(str(s) for s in self.series)


def _late_arrivals(session: Session, study: Study) -> LateArrivals | None:
    """What arrived since *study* was last complete; None when nothing did (by time received)."""
    assert study.completed_at is not None
    rows = session.execute(
        select(
            Series.series_instance_uid,
            Series.modality,
            Series.series_description,
            func.count(Instance.id),
            func.min(Instance.received_at),
        )
        .join(Series, Instance.series_id == Series.id)
        .where(Instance.study_id == study.id, Instance.received_at > study.completed_at)
        .group_by(Series.id)
        .order_by(func.min(Instance.received_at))
    ).all()
    if not rows:
        return None
    first = min(r[4] for r in rows)  # min() keeps the column's type: aware UTC
    return LateArrivals(
        series=tuple(LateSeries(str(uid), m, d, int(n)) for uid, m, d, n, _ in rows),
        after_s=(first - study.completed_at).total_seconds(),
    )


def _late_job(
    session: Session,
    job: Job,
    late: LateArrivals,
    reopen: bool,
    window: float,
    now: datetime,
) -> None:
    """What late instances do to one existing job of the study, with its timeline event."""
    arrived = f"{late.summary()} arrived {late.after_s:.0f} s after the study was complete"
    if job.status == JobStatus.QUEUED:
        add_event(session, job.id, "late", f"{arrived}, before this job ran: it reads them")
        return
    if not reopen:
        why = (
            "retention removed the study's earlier files"
            if job.study.files_removed_at is not None
            else f"outside the re-open window ({window:g} s)"
        )
        add_event(
            session,
            job.id,
            "late",
            f"{arrived}, {why}: stored, not processed; 'jobs retry {job.id}' runs "
            f"{job.pipeline} on the whole study",
            level="warning",
        )
        return
    if job.status == JobStatus.CANCELLED:
        add_event(
            session,
            job.id,
            "late",
            f"{arrived}; this job was cancelled, so it is not re-run ('jobs retry {job.id}' does)",
        )
        return
    if job.status == JobStatus.DONE:
        # The results went out: re-run only if the pipeline's inputs changed (the worker's
        # selection decides); the delivery rows stay until a new revision replaces them.
        job.rerun = LATE
        message = f"{arrived}; queued again: {job.pipeline} re-runs if its inputs changed"
    else:  # failed: nothing of it stands; the late series may be what it lacked
        job.rerun = None
        for output in list(job.outputs):
            session.delete(output)
        message = f"{arrived}; queued again after its failure"
    job.status = JobStatus.QUEUED
    job.queued_at = now
    job.attempts = 0
    job.error = None
    job.finished_at = None
    add_event(session, job.id, "late", message)


def _new_job(study: Study, decision: RouteDecision, status: JobStatus, now: datetime) -> Job:
    return Job(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        pipeline=decision.pipeline,
        route_name=decision.name,
        send_to=list(decision.send_to),
        priority=decision.priority,
        status=status,
        created_at=now,
        queued_at=now if status == JobStatus.QUEUED else None,
    )
