"""Workers: processes that claim jobs and run pipelines.

``dicomnode serve`` starts ``workers.processes`` of them beside the receiver;
``dicomnode worker`` starts only them (scale-out hosts). They run in separate
processes so inference never competes with ingest for the GIL.

One job: claim (lease) -> fetch the study from its source when the job names
one (:mod:`dicomnode.retrieval.fetch`, the ``retrieve`` stage) -> build the
:class:`JobContext` from the database -> ``pipeline.run`` -> record outputs (the job becomes ``sending`` or ``done``)
or the error sentence (``failed``). A heartbeat thread renews the lease; if
the job was cancelled or re-claimed meanwhile the pipeline is told to stop,
and if it runs past its timeout the job is failed and the worker process
exits so its supervisor starts a fresh one (a stuck thread cannot be killed).

A worker process lives no longer than the process that started it: when
``serve`` (or ``dicomnode worker``) dies, even by kill -9 or the OOM killer,
its workers exit within a second instead of polling on as orphans that hold
their models and GPU memory; a job one of them was running is claimed again
once its lease expires.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.children import ProcessPool
from dicomnode.config import Settings
from dicomnode.database import make_engine, session_factory
from dicomnode.followup.priors import NodePriors, stored_series
from dicomnode.jobs import ClaimedJob, JobQueue, add_event
from dicomnode.models import Job, JobRevision, Study
from dicomnode.pipelines import JobContext, Pipeline, PipelineError, build_pipeline
from dicomnode.retrieval import RetrieveError
from dicomnode.retrieval.fetch import StudyFetch
from dicomnode.revisions import LATE, SR_CLASS_PREFIX, InputsUnchanged, NewRevision, PriorRevision
from dicomnode.store import InstanceStore
from dicomnode.store.files import results_dir
from dicomnode.wakeups import JOBS, Listener, Wakeups

log = logging.getLogger(__name__)

TIMEOUT_EXIT_CODE = 75
PARENT_GONE_EXIT_CODE = 76


def worker_identity(index: int | None = None) -> str:
    """``host:pid[:index]-random``: unique across hosts and restarts."""
    suffix = f":{index}" if index is not None else ""
    return f"{socket.gethostname()}:{os.getpid()}{suffix}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs jobs in the current process.

    Parameters
    ----------
    settings
        Node settings.
    pipelines
        Only claim jobs of these pipelines (None: all).
    exit_on_timeout
        Exit the process when a job overruns its timeout (True in worker
        processes; tests running a worker in-process leave it False).
    device
        Device for every model pipeline (``dicomnode worker --device``), whether
        or not it has a ``[pipelines.NAME]`` section; None: each section's own.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sessions: sessionmaker[Session] | None = None,
        pipelines: Sequence[str] | None = None,
        worker_id: str | None = None,
        exit_on_timeout: bool = False,
        device: str | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.sessions = sessions or session_factory(make_engine(settings.database.url))
        self.wakeups = Wakeups(settings.database.url)
        self.queue = JobQueue(
            self.sessions,
            lease_seconds=settings.workers.lease_seconds,
            max_attempts=settings.workers.max_attempts,
            wakeups=self.wakeups,
        )
        self._listener: Listener | None = None
        self.pipelines = list(pipelines) if pipelines else None
        self.worker_id = worker_id or worker_identity()
        self.exit_on_timeout = exit_on_timeout
        self.storage = Path(settings.storage.path)
        self._loaded: dict[str, Pipeline] = {}
        self._store: InstanceStore | None = None
        self.stop_event = threading.Event()
        self.stop_requested_at: float | None = None

    # -- loop ------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Claim and run jobs until :attr:`stop_event` is set.

        Between jobs the worker sleeps until a job is queued (the ``JOBS``
        wake-up) or ``workers.poll_seconds`` pass, whichever comes first.
        """
        log.info("worker started", extra={"worker": self.worker_id})
        self._listener = self.wakeups.listen(JOBS)
        try:
            self.preload()
            while not self.stop_event.is_set():
                try:
                    ran = self.run_once()
                except Exception:
                    log.exception("worker loop error; continuing")
                    ran = False
                if not ran and not self.stop_event.is_set():
                    self._listener.wait(self.settings.workers.poll_seconds)
        finally:
            self._listener.close()
            self._listener = None
        for pipeline in self._loaded.values():
            pipeline.close()
        log.info("worker stopped", extra={"worker": self.worker_id})

    def preload(self) -> None:
        """Build the pipelines this worker may run before the first job arrives.

        Loading a model (torch, MONAI, weights) takes seconds; paying it at start-up
        keeps it out of the first study's turnaround. A pipeline that cannot be
        built is left for its first job, which then fails with the reason.
        """
        names = self.pipelines or list(dict.fromkeys(r.pipeline for r in self.settings.routes))
        for name in names:
            if self.stop_event.is_set():
                return
            try:
                self._pipeline(name)
            except Exception as exc:
                log.warning(
                    "pipeline not preloaded", extra={"pipeline": name, "reason": str(exc)[:300]}
                )

    def run_once(self) -> bool:
        """Claim one job and run it; False when there was nothing to do."""
        claimed = self.queue.claim(self.worker_id, self.pipelines)
        if claimed is None:
            return False
        self.execute(claimed)
        return True

    # -- one job ---------------------------------------------------------------------

    def _pipeline(self, name: str) -> Pipeline:
        if name not in self._loaded:
            self._loaded[name] = build_pipeline(name, self.settings, self.device)
        return self._loaded[name]

    def instance_store(self) -> InstanceStore:
        """The store C-GET and WADO-RS retrieves write into (made on first use)."""
        if self._store is None:
            from dicomnode.receivers import make_store

            self._store = make_store(self.settings)[0]
        return self._store

    def _event(
        self, job_id: int, stage: str, message: str, duration: float | None, level: str
    ) -> None:
        with self.sessions.begin() as session:
            add_event(session, job_id, stage, message, duration_s=duration, level=level)

    def _context(self, job: ClaimedJob) -> JobContext:
        with self.sessions() as session:
            study = session.get_one(Study, job.study_id)
            # The node's own results may come back with the study (a PACS forwarding it
            # whole, a retrieve after an earlier run): never an input of a pipeline.
            inputs = stored_series(session, job.study_id, self.storage)
            study_info = {
                "study_instance_uid": study.study_instance_uid,
                "accession_number": study.accession_number,
                "calling_aet": study.calling_aet,
            }
            history = tuple(
                PriorRevision(r.number, r.model, r.inputs or {}, tuple(r.objects or ()))
                for r in session.execute(
                    select(JobRevision)
                    .where(JobRevision.job_id == job.id)
                    .order_by(JobRevision.number)
                ).scalars()
            )
            rerun = session.execute(select(Job.rerun).where(Job.id == job.id)).scalar()
        work_dir = results_dir(self.storage, job.id)
        work_dir.mkdir(parents=True, exist_ok=True)
        return JobContext(
            job_id=job.id,
            study_instance_uid=job.study_instance_uid,
            series=inputs,
            work_dir=work_dir,
            study=study_info,
            event_sink=lambda stage, msg, dur, level: self._event(job.id, stage, msg, dur, level),
            history=history,
            only_if_changed=rerun == LATE,
        )

    def execute(self, job: ClaimedJob) -> None:
        """Run one claimed job to an outcome recorded in the database."""
        lost = threading.Event()
        done = threading.Event()
        timeout = (
            self.settings.pipeline(job.pipeline).timeout_seconds
            or self.settings.workers.job_timeout_seconds
        )
        beat = threading.Thread(
            target=self._heartbeat,
            args=(job, lost, done, timeout),
            daemon=True,
            name=f"heartbeat-{job.id}",
        )
        beat.start()
        started = time.perf_counter()
        ids = {"job": job.id, "study": job.study_instance_uid, "pipeline": job.pipeline}
        log.info("job started", extra={**ids, "attempt": job.attempt, "worker": self.worker_id})
        outcome: str | None = "failed"
        try:
            if job.needs_retrieve:
                StudyFetch(
                    self.settings, self.sessions, self.instance_store(), job, lost.is_set
                ).run()
            context = self._context(job)
            context.cancelled = lost.is_set
            pipeline = self._pipeline(job.pipeline)
            context.model = pipeline.model_identity()
            if pipeline.wants_priors:
                # The pipeline asks; the node queries and retrieves (pipelines open no sockets).
                context.priors = NodePriors(
                    self.settings,
                    self.sessions,
                    self.instance_store,
                    job_id=job.id,
                    pipeline=job.pipeline,
                    study_instance_uid=job.study_instance_uid,
                    event=lambda stage, msg, dur, level: self._event(
                        job.id, stage, msg, dur, level
                    ),
                    cancelled=lost.is_set,
                )
            if not pipeline.declares_inputs:
                # It does not say which series it reads: all of them are its input.
                context.use_inputs(context.series)
            results = pipeline.run(context)
            outputs = [
                (
                    r.sop_instance_uid,
                    r.sop_class_uid,
                    str(Path(r.path).resolve().relative_to(self.storage.resolve())),
                )
                for r in results
            ]
            self._event(
                job.id,
                "pipeline",
                f"{job.pipeline} produced {len(results)} object(s)",
                time.perf_counter() - started,
                "info",
            )
            outcome = self.queue.complete(
                job.id,
                self.worker_id,
                outputs,
                model=context.model,
                revision=NewRevision(
                    number=context.revision,
                    model=context.model,
                    inputs=context.inputs or {},
                    objects=[_described(r, job.study_instance_uid) for r in results],
                    reason=context.revision_reason,
                ),
            )
            if outcome is None:
                log.warning("job finished after it was taken away", extra=ids)
        except InputsUnchanged as exc:
            outcome = "done" if self.queue.unchanged(job.id, self.worker_id, str(exc)) else None
        except (PipelineError, RetrieveError) as exc:
            self.queue.fail(job.id, self.worker_id, str(exc))
        except Exception as exc:
            log.error("pipeline crashed: %s", traceback.format_exc(), extra=ids)
            self.queue.fail(
                job.id, self.worker_id, f"{job.pipeline} failed: {type(exc).__name__}: {exc}"
            )
        finally:
            done.set()
            beat.join(timeout=5)
        # The error sentence stays in the job's timeline (database), not in the log line.
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO,
            "job finished",
            extra={**ids, "status": outcome, "seconds": round(time.perf_counter() - started, 3)},
        )

    def _heartbeat(
        self, job: ClaimedJob, lost: threading.Event, done: threading.Event, timeout: float
    ) -> None:
        """Renew the lease; enforce the job timeout and the shutdown grace period."""
        started = last_beat = time.monotonic()
        interval = self.settings.workers.heartbeat_seconds
        grace = self.settings.workers.shutdown_grace_seconds
        while not done.wait(min(0.5, interval)):
            now = time.monotonic()
            if now - started >= timeout:
                self.queue.fail(
                    job.id, self.worker_id, f"{job.pipeline} timed out after {timeout:g} s"
                )
                self._abandon(
                    job, lost, "job timed out; restarting worker process", TIMEOUT_EXIT_CODE
                )
                return
            if self.stop_requested_at is not None and now - self.stop_requested_at >= grace:
                self.queue.release(
                    job.id, self.worker_id, f"worker {self.worker_id} shut down; job handed back"
                )
                self._abandon(job, lost, "shutdown grace over; job released", 0)
                return
            if now - last_beat < interval:
                continue
            last_beat = now
            try:
                if not self.queue.heartbeat(job.id, self.worker_id):
                    lost.set()  # cancelled or re-claimed: tell the pipeline to stop
                    return
            except Exception:
                log.exception("heartbeat failed; will retry")

    def _abandon(self, job: ClaimedJob, lost: threading.Event, why: str, code: int) -> None:
        """Stop caring about *job*; in a worker process, exit (a stuck thread cannot be killed)."""
        lost.set()
        if self.exit_on_timeout:
            log.error(why, extra={"job": job.id})
            os._exit(code)

    def request_stop(self) -> None:
        """Finish the current job (within the grace period), then stop."""
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.stop_event.set()
        if self._listener is not None:
            self._listener.interrupt()


def _described(result: Any, study_instance_uid: str) -> dict[str, str]:
    """What a revision records of one result object; SRs also their series (a later SR cites it)."""
    described = {
        "sop_instance_uid": result.sop_instance_uid,
        "sop_class_uid": result.sop_class_uid,
        "study_instance_uid": study_instance_uid,
    }
    if result.sop_class_uid.startswith(SR_CLASS_PREFIX):
        from pydicom import dcmread

        header = dcmread(result.path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        described["series_instance_uid"] = str(header.SeriesInstanceUID)
    return described


# -- processes ------------------------------------------------------------------------


def exit_with_parent(worker_id: str) -> None:
    """Exit this process as soon as its parent is gone (kill -9, OOM killer, crash).

    ``multiprocessing`` gives a spawned child a sentinel that becomes ready when
    the parent process ends, on every platform it supports; a thread waits on
    it. The job this worker runs is not released: it is left to its lease, so
    the node that restarts claims it again as it would after any crash.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        log.error("parent process gone; worker exits", extra={"worker": worker_id})
        logging.shutdown()
        os._exit(PARENT_GONE_EXIT_CODE)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_process(
    settings_data: dict[str, Any], index: int, pipelines: list[str] | None, device: str | None
) -> None:
    from dicomnode.logs import setup_logging

    settings = Settings.model_validate(settings_data)
    setup_logging(settings.log_level)
    worker_id = worker_identity(index)
    exit_with_parent(worker_id)
    worker = Worker(
        settings,
        pipelines=pipelines,
        worker_id=worker_id,
        exit_on_timeout=True,
        device=device,
    )

    def _stop(signum: int, frame: Any) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    worker.run_forever()


class WorkerPool(ProcessPool):
    """Starts worker processes and restarts those that die."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        pipelines: Sequence[str] | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__(count)
        # Unset keys stay unset: a pipeline section is checked against its own options again.
        self.settings_data = settings.model_dump(mode="json", exclude_unset=True)
        self.grace = settings.workers.shutdown_grace_seconds
        self.pipelines = list(pipelines) if pipelines else None
        self.device = device

    def _process(self, index: int) -> BaseProcess:
        return self.ctx.Process(
            target=_worker_process,
            args=(self.settings_data, index, self.pipelines, self.device),
            name=f"dicomnode-worker-{index}",
            daemon=False,
        )

    def _exited(self, index: int, process: BaseProcess) -> None:
        log.warning("worker %d exited with %s; restarting", index, process.exitcode)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker; each finishes or releases its job; then kill stragglers."""
        if timeout is None:
            timeout = self.grace + 10.0
        super().stop(timeout)
