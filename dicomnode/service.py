"""The running node: receiver, scheduler (assembly, delivery), worker processes and admin API.

``dicomnode serve`` builds a :class:`Node` and calls :meth:`Node.run`.
Start-up order matters for the durability promise: check the pipelines'
configuration (a typo in an option stops start-up with a line naming it),
migrate the schema, clear partial temp files (never acknowledged), reindex
files that lost their row in a crash, and only then open the DICOM port.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode import database
from dicomnode.assembly import Assembler
from dicomnode.children import kill_stray_children
from dicomnode.config import Settings
from dicomnode.delivery import Deliverer
from dicomnode.metrics import NodeMetrics
from dicomnode.pipelines.registry import require_valid_pipelines
from dicomnode.receiver import Receiver
from dicomnode.receivers import ReceiverPool, ReceiverTable, make_store
from dicomnode.retention import Retention
from dicomnode.wakeups import OUTPUTS, Wakeups
from dicomnode.workers import WorkerPool

if TYPE_CHECKING:
    from dicomnode.api.server import APIServer

log = logging.getLogger(__name__)


class Node:
    """Everything ``serve`` runs, startable and stoppable in one process (tests use it so).

    Parameters
    ----------
    settings
        Node settings.
    workers
        Worker processes to start (default ``workers.processes``).
    """

    def __init__(self, settings: Settings, *, workers: int | None = None) -> None:
        self.settings = settings
        processes = settings.workers.processes if workers is None else workers
        # A receiver-only node runs no pipeline: those routed to may live on worker hosts.
        found = require_valid_pipelines(settings, runs=None if processes else ())
        for name in found.elsewhere:
            log.warning(
                "pipeline not installed here; its jobs wait for a worker host that has it",
                extra={"pipeline": name},
            )
        database.upgrade(settings.database.url)
        self.store, self.engine = make_store(settings)
        self.sessions = self.store.sessions
        node = settings.node
        count = (
            (os.cpu_count() or 1) if node.receiver_processes is None else node.receiver_processes
        )
        lock = Path(tempfile.gettempdir()) / f"dicomnode-{os.getpid()}-{id(self)}-associations.lock"
        self.receivers = ReceiverTable(count, node.max_associations, lock)
        self.wakeups = Wakeups(settings.database.url)
        self.metrics = NodeMetrics(self.sessions, Path(settings.storage.path), self.receivers)
        # receiver_processes = 0: the receiver's threads run in this process (tests, small sites).
        self.receiver: Receiver | ReceiverPool = (
            ReceiverPool(settings, count, self.receivers)
            if count
            else Receiver(node, self.store, self.receivers.row(0), wakeups=self.wakeups)
        )
        self.assembler = Assembler(self.sessions, settings.assembly, settings.routes)
        self.deliverer = Deliverer(self.sessions, settings, self.metrics)
        self.retention = Retention(self.sessions, self.store, settings.retention)
        self.pool = WorkerPool(settings, processes)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.api: APIServer | None = None
        self.stopped = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def recover(self) -> None:
        """Bring storage and index back in line after a crash."""
        removed = self.store.clear_tmp()
        if removed:
            log.warning("removed %d partial write(s) left by a crash", removed)
        self.store.reindex_orphans()

    def start(self) -> None:
        """Recover, open the DICOM port, start assembly, delivery and workers."""
        self.recover()
        self.receiver.start()
        self._loop("assembly", lambda: self.assembler.run(self._stopping, self.wakeups))
        options: dict[str, Any] = {"max_instances": 1, "coalesce": True}
        self.scheduler.add_job(
            self.deliverer.tick,
            "interval",
            seconds=self.settings.delivery.check_interval,
            id="delivery",
            **options,
        )
        self.scheduler.add_job(self.pool.check, "interval", seconds=2, id="workers", **options)
        if isinstance(self.receiver, ReceiverPool):
            self.scheduler.add_job(
                self.receiver.check, "interval", seconds=1, id="receivers", **options
            )
        if self.settings.retention.enabled:
            self.scheduler.add_job(
                self.retention.tick,
                "interval",
                seconds=self.settings.retention.check_interval_seconds,
                id="retention",
                **options,
            )
        self.scheduler.start()
        # Results queued by a worker are sent at once, not at the next delivery tick.
        self._loop("delivery-wakeup", lambda: self._wake_job("delivery", OUTPUTS))
        self.pool.start()
        if self.settings.api.enabled:
            try:
                self.start_api()
            except (OSError, RuntimeError) as exc:
                # Ingest matters more than the admin surface: keep receiving; /readyz
                # probes and the error line make the missing API visible.
                log.error(
                    "API not started: %s",
                    exc,
                    extra={"host": self.settings.api.host, "port": self.settings.api.port},
                )
                self.api = None

    def _loop(self, name: str, target: Any) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _wake_job(self, job_id: str, topic: str) -> None:
        """Run the scheduler's job *job_id* now whenever *topic* is rung (until stopping)."""
        listener = self.wakeups.listen(topic)
        try:
            while not self._stopping.is_set():
                if listener.wait(1.0):
                    job = self.scheduler.get_job(job_id)
                    if job is not None:
                        job.modify(next_run_time=datetime.now(UTC))
        finally:
            listener.close()

    def start_api(self) -> None:
        """Serve the REST API, dashboard and metrics (``api.port`` 0: any free port)."""
        from dicomnode.api import APIServer, create_app
        from dicomnode.api.health import storage_check

        app = create_app(
            self.settings,
            self.sessions,
            metrics=self.metrics,
            checks={
                "storage": storage_check(self.store.root),
                "receiver": self._receiver_check,
            },
            store=self.store,
            wakeups=self.wakeups,
        )
        server = APIServer(app, self.settings.api.host, self.settings.api.port)
        server.start()
        self.api = server
        if not self.settings.api.tokens:
            log.warning(
                "API open without tokens (loopback only); add [[api.tokens]] to require them",
                extra={"host": self.settings.api.host, "port": self.api.port},
            )

    def _receiver_check(self) -> tuple[bool, str]:
        if self.receiver.listening():
            return True, f"DICOM port {self.receiver.port} is listening"
        return False, "the DICOM receiver is not listening"

    def stop(self) -> None:
        """Stop taking associations first, then the API, the scheduler and the workers."""
        self._stop_replacing()
        self.receiver.stop()
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        if self.api is not None:
            self.api.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.stop()
        self.wakeups.close()
        self.engine.dispose()
        self.stopped.set()

    def _stop_replacing(self) -> None:
        """Children exiting from now on (a group SIGTERM reaches them too) are not replaced."""
        self.pool.stopping()
        if isinstance(self.receiver, ReceiverPool):
            self.receiver.stopping()

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT."""
        self.start()
        stop = threading.Event()

        def _on_signal(signum: int, frame: Any) -> None:
            self._stop_replacing()
            log.info("signal %d received; stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        stop.wait()
        self.stop()
        # This process is the node: nothing it started may keep it from exiting.
        kill_stray_children()
