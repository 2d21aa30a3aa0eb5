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
back to ``receiving``); when it completes again, pipelines that already have
a job are not run twice: their job gets an event saying new instances came,
and ``jobs retry`` re-runs it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import AssemblyConfig, RouteConfig
from dicomnode.database import write_transaction
from dicomnode.jobs import add_event
from dicomnode.models import Job, JobStatus, Series, Study, StudyStatus, utcnow
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
                    Study.status == StudyStatus.RECEIVING
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
                else:
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
