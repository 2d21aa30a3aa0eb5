"""The running node: receiver, scheduler (assembly, delivery), worker processes and admin API.

``dicomnode serve`` builds a :class:`Node` and calls :meth:`Node.run`.
Start-up order matters for the durability promise: check the pipelines'
configuration (a typo in an option stops start-up with a line naming it),
migrate the schema, clear partial temp files (never acknowledged), reindex
files that lost their row in a crash, and only then open the DICOM port.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode import database
from dicomnode.assembly import Assembler
from dicomnode.config import Settings
from dicomnode.delivery import Deliverer
from dicomnode.metrics import NodeMetrics
from dicomnode.pipelines.registry import require_valid_pipelines
from dicomnode.receiver import Receiver
from dicomnode.retention import Retention
from dicomnode.routing import keywords_used
from dicomnode.store import ROUTING_KEYWORDS, InstanceStore
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
        self.engine = database.make_engine(settings.database.url)
        self.sessions = database.session_factory(self.engine)
        keywords = tuple(
            dict.fromkeys([*ROUTING_KEYWORDS, *sorted(keywords_used(settings.routes))])
        )
        self.store = InstanceStore(
            Path(settings.storage.path),
            self.sessions,
            fsync=settings.storage.fsync,
            fsync_directory=settings.storage.fsync_directory,
            min_free_bytes=settings.storage.min_free_bytes,
            keywords=keywords,
        )
        self.metrics = NodeMetrics(self.sessions, Path(settings.storage.path))
        self.receiver = Receiver(settings.node, self.store, self.metrics)
        self.assembler = Assembler(self.sessions, settings.assembly, settings.routes)
        self.deliverer = Deliverer(self.sessions, settings, self.metrics)
        self.retention = Retention(self.sessions, self.store, settings.retention)
        self.pool = WorkerPool(settings, processes)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.api: APIServer | None = None
        self.stopped = threading.Event()

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
        every = self.settings.assembly.check_interval
        options: dict[str, Any] = {"max_instances": 1, "coalesce": True}
        self.scheduler.add_job(
            self.assembler.tick, "interval", seconds=every, id="assembly", **options
        )
        self.scheduler.add_job(
            self.deliverer.tick,
            "interval",
            seconds=self.settings.delivery.check_interval,
            id="delivery",
            **options,
        )
        self.scheduler.add_job(self.pool.check, "interval", seconds=2, id="workers", **options)
        if self.settings.retention.enabled:
            self.scheduler.add_job(
                self.retention.tick,
                "interval",
                seconds=self.settings.retention.check_interval_seconds,
                id="retention",
                **options,
            )
        self.scheduler.start()
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
        self.receiver.stop()
        if self.api is not None:
            self.api.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.pool.stop()
        self.engine.dispose()
        self.stopped.set()

    def run(self) -> None:
        """Start, then block until SIGTERM or SIGINT."""
        self.start()
        stop = threading.Event()

        def _on_signal(signum: int, frame: Any) -> None:
            log.info("signal %d received; stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        stop.wait()
        self.stop()
