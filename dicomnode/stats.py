"""Job statistics for admins: counts, hourly throughput and p50/p95 times.

Computed from the job tables on request, so they hold for every worker
process and host that shares the database. Percentiles are computed here,
not in SQL, because SQLite has no percentile function.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs import FilterError
from dicomnode.models import Job, JobEvent, JobStatus, utcnow

DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=366)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _summary(values: Sequence[float]) -> dict[str, Any]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return {
        "count": len(values),
        "p50_s": round(p50, 3) if p50 is not None else None,
        "p95_s": round(p95, 3) if p95 is not None else None,
    }


@dataclass(frozen=True)
class StatsWindow:
    """The time window statistics cover: ``since <= t < until``."""

    since: datetime
    until: datetime

    @classmethod
    def make(
        cls, since: datetime | None, until: datetime | None, now: datetime | None = None
    ) -> StatsWindow:
        """Default: the last 24 hours; at most a year (hourly buckets stay few)."""
        until = until or now or utcnow()
        since = since or until - DEFAULT_WINDOW
        if since > until:
            raise FilterError("since: later than until")
        if until - since > MAX_WINDOW:
            raise FilterError(f"since: the window may span at most {MAX_WINDOW.days} days")
        return cls(since, until)


def _hour(value: datetime) -> str:
    return value.replace(minute=0, second=0, microsecond=0).isoformat()


def job_statistics(
    sessions: sessionmaker[Session], window: StatsWindow, pipeline: str | None = None
) -> dict[str, Any]:
    """Jobs per status (now), and over *window*: throughput per hour, stage and pipeline times.

    Returns
    -------
    dict
        ``jobs_by_status`` ({status: n}, all jobs), ``throughput`` (finished jobs per
        hour and pipeline), ``stages`` (p50/p95 of timeline durations per pipeline
        and stage) and ``pipelines`` (p50/p95 from queued to finished, done jobs).
    """
    only = [Job.pipeline == pipeline] if pipeline else []
    with sessions() as session:
        counts = session.execute(
            select(Job.status, func.count()).where(*only).group_by(Job.status)
        ).all()
        finished = session.execute(
            select(Job.pipeline, Job.status, Job.queued_at, Job.finished_at).where(
                *only,
                Job.finished_at >= window.since,
                Job.finished_at < window.until,
                Job.status.in_([JobStatus.DONE, JobStatus.FAILED]),
            )
        ).all()
        durations = session.execute(
            select(Job.pipeline, JobEvent.stage, JobEvent.duration_s)
            .join(Job, JobEvent.job_id == Job.id)
            .where(
                *only,
                JobEvent.duration_s.is_not(None),
                JobEvent.at >= window.since,
                JobEvent.at < window.until,
            )
        ).all()
    return {
        "since": window.since.isoformat(),
        "until": window.until.isoformat(),
        "pipeline": pipeline,
        "jobs_by_status": {s.value: 0 for s in JobStatus} | {str(s): int(n) for s, n in counts},
        "throughput": _throughput(finished),
        "stages": _stages(durations),
        "pipelines": _pipelines(finished),
    }


def _throughput(finished: Sequence[Any]) -> list[dict[str, Any]]:
    buckets: Counter[tuple[str, str, str]] = Counter(
        (_hour(row.finished_at), row.pipeline, row.status) for row in finished
    )
    hours = sorted({(hour, name) for hour, name, _ in buckets})
    return [
        {
            "hour": hour,
            "pipeline": name,
            "done": buckets[(hour, name, JobStatus.DONE.value)],
            "failed": buckets[(hour, name, JobStatus.FAILED.value)],
        }
        for hour, name in hours
    ]


def _stages(durations: Sequence[Any]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name, stage, seconds in durations:
        grouped[(name, stage)].append(float(seconds))
    return [
        {"pipeline": name, "stage": stage, **_summary(values)}
        for (name, stage), values in sorted(grouped.items())
    ]


def _pipelines(finished: Sequence[Any]) -> list[dict[str, Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in finished:
        grouped[row.pipeline].append(row)
    out = []
    for name, rows in sorted(grouped.items()):
        times = [
            (r.finished_at - r.queued_at).total_seconds()
            for r in rows
            if r.status == JobStatus.DONE and r.queued_at is not None
        ]
        out.append(
            {
                "pipeline": name,
                "done": sum(r.status == JobStatus.DONE for r in rows),
                "failed": sum(r.status == JobStatus.FAILED for r in rows),
                "queued_to_done": _summary(times),
            }
        )
    return out
