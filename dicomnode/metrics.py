"""Prometheus metrics of the node (``GET /metrics``).

Two sources:

- Counters of what happens: instances and bytes received, associations and
  refused stores, counted by every receiver process in a shared-memory table
  (:mod:`dicomnode.receivers`) and read at scrape time; deliveries and
  delivery failures, counted by the serving process.
- A collector that reads the database at scrape time: jobs by status and
  pipeline, queue depth, stage durations (histograms fed from new timeline
  events since the last scrape), storage free space and, when ``nvidia-smi``
  is present, GPU memory. Job and stage figures come from the database, so
  they include the work of every worker process and host, without
  prometheus_client's multiprocess mode.

Each :class:`NodeMetrics` has its own registry, so several nodes in one
process (tests) do not collide.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.models import Job, JobEvent, JobStatus, Output, utcnow

if TYPE_CHECKING:
    from dicomnode.receivers import ReceiverTable

log = logging.getLogger(__name__)
# ``*_created`` series double every counter and no dashboard of ours reads them.
disable_created_metrics()

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
GPU_CACHE_SECONDS = 5.0
# Timeline events are folded into the histograms once they are this old, so an
# event whose transaction committed after one with a higher id is not skipped.
EVENT_LAG = timedelta(seconds=2)


class NodeMetrics:
    """The node's registry, its event counters and (optionally) the database collector.

    Parameters
    ----------
    sessions
        Job database; None leaves out the database collector.
    storage_root
        Storage folder whose file system's free space is reported.
    receivers
        The receiver table (slots and counters of every receiver process);
        None reports the receiver metrics as zero (an API without a receiver).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None = None,
        storage_root: Path | None = None,
        receivers: ReceiverTable | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "dicomnode_deliveries",
            "Result objects stored at a destination.",
            ["destination"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "dicomnode_delivery_failures",
            "Failed attempts to store a result object at a destination.",
            ["destination"],
            registry=r,
        )
        self.stow_instances = Counter(
            "dicomnode_stow_instances",
            "Instances received by STOW-RS: stored, or refused (a Failed SOP item).",
            ["outcome"],
            registry=r,
        )
        if receivers is None:
            from dicomnode.receivers import ReceiverTable

            receivers = ReceiverTable(0, 1, Path(tempfile.gettempdir()) / "dicomnode-none.lock")
        r.register(ReceiverCollector(receivers))
        if sessions is not None:
            r.register(DatabaseCollector(sessions, storage_root))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ReceiverCollector(Collector):
    """Instances, bytes, refusals and associations of every receiver process, at scrape time.

    The receiver processes count in a shared-memory table
    (:class:`~dicomnode.receivers.ReceiverTable`); the serving process reads
    it here, so one ``/metrics`` covers the whole node without
    prometheus_client's multiprocess mode.
    """

    def __init__(self, table: ReceiverTable) -> None:
        self.table = table

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from dicomnode import receivers as columns

        table = self.table
        yield _counter(
            "dicomnode_instances_received",
            "Instances stored and acknowledged.",
            table.total(columns.INSTANCES),
        )
        yield _counter(
            "dicomnode_received_bytes",
            "Dataset bytes of acknowledged instances.",
            table.total(columns.BYTES),
        )
        refused = CounterMetricFamily(
            "dicomnode_store_refused",
            "C-STORE requests answered with a failure status.",
            labels=["status"],
        )
        for status, count in table.refused():
            if count:
                refused.add_metric([status], count)
        yield refused
        associations = CounterMetricFamily(
            "dicomnode_associations",
            "Associations by outcome (accepted, rejected, aborted).",
            labels=["outcome"],
        )
        for outcome, column in (
            ("accepted", columns.ACCEPTED),
            ("rejected", columns.REJECTED),
            ("aborted", columns.ABORTED),
        ):
            if table.total(column):
                associations.add_metric([outcome], table.total(column))
        yield associations
        active = GaugeMetricFamily("dicomnode_associations_active", "Associations open now.")
        active.add_metric([], table.total(columns.ACTIVE))
        yield active


def _counter(name: str, documentation: str, value: int) -> Metric:
    family = CounterMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


@dataclass
class _Histogram:
    """Non-cumulative bucket counts and the sum of one label set."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(STAGE_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, le in enumerate(STAGE_BUCKETS) if value <= le), len(STAGE_BUCKETS))
        self.counts[index] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for le, count in zip([*map(str, STAGE_BUCKETS), "+Inf"], self.counts, strict=True):
            running += count
            out.append((le, float(running)))
        return out


class DatabaseCollector(Collector):
    """Metrics read from the job database (and the file system) at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], storage_root: Path | None) -> None:
        self.sessions = sessions
        self.storage_root = storage_root
        self._lock = threading.Lock()
        self._histograms: dict[tuple[str, str], _Histogram] = {}
        # Last timeline event folded into the histograms: count from start-up on, like
        # any process-local histogram (None: the database did not answer yet).
        self._cursor: int | None = None
        try:
            with self.sessions() as session:
                self._cursor = self._last_event(session)
        except Exception:  # the first scrape tries again
            log.warning("metrics: job database unavailable at start-up")
        self._gpu_cache: tuple[float, list[Metric]] = (0.0, [])
        self._nvidia_smi = shutil.which("nvidia-smi")

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the registry must not scrape the database when we register."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every metric of this collector; a database outage shows as ``dicomnode_database_up 0``."""
        up = GaugeMetricFamily("dicomnode_database_up", "1 when the job database answered.")
        try:
            with self._lock, self.sessions() as session:
                metrics = [*self._jobs(session), self._stage_durations(session)]
                metrics.append(self._outputs(session))
            up.add_metric([], 1)
        except Exception as exc:  # a scrape must answer even when the database does not
            log.warning("metrics: job database unavailable: %s", type(exc).__name__)
            metrics = []
            up.add_metric([], 0)
        yield up
        yield from metrics
        yield from self._storage()
        yield from self._gpu()

    def _jobs(self, session: Session) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "dicomnode_jobs", "Jobs by pipeline and status.", labels=["pipeline", "status"]
        )
        depth = GaugeMetricFamily(
            "dicomnode_queue_depth", "Queued jobs waiting for a worker.", labels=["pipeline"]
        )
        rows = session.execute(
            select(Job.pipeline, Job.status, func.count()).group_by(Job.pipeline, Job.status)
        ).all()
        for pipeline, status, n in rows:
            jobs.add_metric([pipeline, status], n)
        queued: dict[str, int] = {str(p): 0 for p, _, _ in rows}
        for pipeline, status, n in rows:
            if status == JobStatus.QUEUED:
                queued[pipeline] = int(n)
        for pipeline, n in sorted(queued.items()):
            depth.add_metric([pipeline], n)
        return [jobs, depth]

    def _outputs(self, session: Session) -> Metric:
        outputs = GaugeMetricFamily(
            "dicomnode_outputs",
            "Result objects per destination and delivery status.",
            labels=["destination", "status"],
        )
        for destination, status, n in session.execute(
            select(Output.destination, Output.status, func.count()).group_by(
                Output.destination, Output.status
            )
        ):
            outputs.add_metric([destination, status], n)
        return outputs

    @staticmethod
    def _last_event(session: Session) -> int:
        return int(session.execute(select(func.max(JobEvent.id))).scalar() or 0)

    def _stage_durations(self, session: Session) -> Metric:
        if self._cursor is None:
            self._cursor = self._last_event(session)
        rows = session.execute(
            select(JobEvent.id, Job.pipeline, JobEvent.stage, JobEvent.duration_s)
            .join(Job, JobEvent.job_id == Job.id)
            .where(JobEvent.id > self._cursor, JobEvent.at < utcnow() - EVENT_LAG)
            .order_by(JobEvent.id)
        ).all()
        for event_id, pipeline, stage, seconds in rows:
            self._cursor = max(self._cursor, int(event_id))
            if seconds is not None:
                self._histograms.setdefault((pipeline, stage), _Histogram()).observe(float(seconds))
        family = HistogramMetricFamily(
            "dicomnode_stage_duration_seconds",
            "Duration of job stages (pipeline steps) since the node started.",
            labels=["pipeline", "stage"],
        )
        for (pipeline, stage), histogram in sorted(self._histograms.items()):
            family.add_metric([pipeline, stage], histogram.buckets(), histogram.total)
        return family

    def _storage(self) -> Iterator[Metric]:
        if self.storage_root is None:
            return
        try:
            st = os.statvfs(self.storage_root)
        except OSError:
            return
        free = GaugeMetricFamily(
            "dicomnode_storage_free_bytes", "Free bytes on the storage file system."
        )
        free.add_metric([], st.f_bavail * st.f_frsize)
        yield free

    def _gpu(self) -> list[Metric]:
        """GPU memory from nvidia-smi (cached briefly: a scrape must stay cheap)."""
        if self._nvidia_smi is None:
            return []
        at, cached = self._gpu_cache
        if time.monotonic() - at < GPU_CACHE_SECONDS:
            return cached
        metrics = gpu_memory_metrics(self._nvidia_smi)
        self._gpu_cache = (time.monotonic(), metrics)
        return metrics


def gpu_memory_metrics(nvidia_smi: str) -> list[Metric]:
    """``dicomnode_gpu_memory_used_bytes`` and ``..._total_bytes`` per GPU; [] on any failure."""
    try:
        result = subprocess.run(
            [
                nvidia_smi,
                "--query-gpu=index,name,memory.used,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    used = GaugeMetricFamily(
        "dicomnode_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu", "name"]
    )
    total = GaugeMetricFamily(
        "dicomnode_gpu_memory_total_bytes", "GPU memory in all.", labels=["gpu", "name"]
    )
    for line in result.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            used_mib, total_mib = float(parts[2]), float(parts[3])
        except ValueError:
            continue
        used.add_metric(parts[:2], used_mib * 1_048_576)
        total.add_metric(parts[:2], total_mib * 1_048_576)
    return [used, total] if used.samples else []
