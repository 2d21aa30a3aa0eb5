"""Receiver processes: ``node.receiver_processes`` listeners sharing the node's DICOM port.

Why one listener per process with ``SO_REUSEPORT`` rather than an acceptor
that hands connections to workers: the kernel spreads new connections over
the listening processes, so no process sits in the data path copying every
byte (or every file descriptor) to another, and a receiver process that dies
takes only its own associations with it; the others keep their sockets and
keep accepting while the serving process starts a replacement. Each process
has its own GIL, so concurrent associations use every core.

What must be node-wide, and how it is:

- ``max_associations``: every process counts its open associations in a row of
  a shared-memory :class:`ReceiverTable`; taking a slot sums the rows under a
  host lock (``flock``, dropped by the kernel if its holder dies), so one more
  association than the limit is refused whichever process receives it;
- the calling-AE policy: every process has the same configuration;
- the Prometheus metrics: instances, bytes, refusals and associations are
  counted in the same table and read by the serving process's ``/metrics``;
  the rows of a process that died are kept (folded into the retired row);
- the index's write lock and retention's removal lock: host locks
  (:mod:`dicomnode.locks`);
- logs: every process writes JSON lines to the same stderr.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.children import ProcessPool
from dicomnode.config import Settings
from dicomnode.locks import HostLock
from dicomnode.ul.server import listening_socket

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dicomnode.store import InstanceStore

log = logging.getLogger(__name__)

# Columns of a table row.
ACTIVE, ACCEPTED, REJECTED, ABORTED, INSTANCES, BYTES, READY, PID = range(8)
# Refusal statuses counted by name; anything else is counted as "other".
REFUSED_STATUSES = (0xA700, 0xA701, 0xC120, 0xC121, 0xC122, 0xC123, 0x0110)
_REFUSED = 8
_OTHER = _REFUSED + len(REFUSED_STATUSES)
COLUMNS = _OTHER + 1
RETIRED = 0  # row 0: the counts of receiver processes that are gone


class ReceiverTable:
    """Per-process association slots and counters in shared memory (one row per process).

    Parameters
    ----------
    processes
        Receiver processes (rows 1..processes); row 0 keeps the counts of the
        dead and is the row of an in-process receiver.
    limit
        ``node.max_associations``, node-wide.
    lock_path
        A host-local file for the slot lock.
    """

    def __init__(self, processes: int, limit: int, lock_path: Path) -> None:
        self.rows = processes + 1
        self.limit = limit
        self.lock_path = Path(lock_path)
        context = multiprocessing.get_context("spawn")
        self.cells = context.RawArray("q", self.rows * COLUMNS)

    def row(self, index: int) -> ReceiverRow:
        """The view a receiver process (or the in-process receiver, index 0) writes through."""
        return ReceiverRow(self, index)

    def total(self, column: int) -> int:
        """A column summed over all rows."""
        return int(sum(self.cells[r * COLUMNS + column] for r in range(self.rows)))

    def refused(self) -> Iterator[tuple[str, int]]:
        """(status, count) of refused C-STOREs, node-wide."""
        for offset, status in enumerate(REFUSED_STATUSES):
            yield f"0x{status:04X}", self.total(_REFUSED + offset)
        yield "other", self.total(_OTHER)

    def retire(self, index: int) -> None:
        """Fold the counts of a dead process's row into the retired row and clear it."""
        with HostLock(self.lock_path):
            for column in range(COLUMNS):
                cell = index * COLUMNS + column
                if column not in (ACTIVE, READY, PID):
                    self.cells[RETIRED * COLUMNS + column] += self.cells[cell]
                self.cells[cell] = 0


class ReceiverRow:
    """One process's row: its :class:`~dicomnode.receiver.AssociationSlots` and its counters."""

    def __init__(self, table: ReceiverTable, index: int) -> None:
        self.table = table
        self.base = index * COLUMNS
        self._lock = threading.Lock()  # the row's threads; the host lock guards slots
        self._slots = HostLock(table.lock_path)

    def _add(self, column: int, amount: int = 1) -> None:
        with self._lock:
            self.table.cells[self.base + column] += amount

    def set(self, column: int, value: int) -> None:
        """Set a cell of this row (ready flag, process id)."""
        self.table.cells[self.base + column] = value

    # -- slots ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take an association slot if the node has one free."""
        with self._slots:
            if self.table.total(ACTIVE) >= self.table.limit:
                return False
            self._add(ACTIVE)
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._slots:
            self._add(ACTIVE, -1)

    def count(self) -> int:
        """Associations open now, node-wide."""
        return self.table.total(ACTIVE)

    # -- counters -------------------------------------------------------------------

    def received(self, size: int) -> None:
        """One instance stored and acknowledged."""
        with self._lock:
            self.table.cells[self.base + INSTANCES] += 1
            self.table.cells[self.base + BYTES] += size

    def refused(self, status: int) -> None:
        """One C-STORE answered with failure *status*."""
        column = _REFUSED + REFUSED_STATUSES.index(status) if status in REFUSED_STATUSES else _OTHER
        self._add(column)

    def association(self, outcome: str) -> None:
        """One association accepted, rejected or aborted."""
        self._add({"accepted": ACCEPTED, "rejected": REJECTED, "aborted": ABORTED}[outcome])


def make_store(settings: Settings) -> tuple[InstanceStore, Engine]:
    """The instance store as ``[storage]`` and the routes want it, and its engine."""
    from dicomnode.database import make_engine, session_factory
    from dicomnode.routing import keywords_used
    from dicomnode.store import ROUTING_KEYWORDS, InstanceStore

    engine = make_engine(settings.database.url)
    keywords = tuple(dict.fromkeys([*ROUTING_KEYWORDS, *sorted(keywords_used(settings.routes))]))
    store = InstanceStore(
        Path(settings.storage.path),
        session_factory(engine),
        fsync=settings.storage.fsync,
        fsync_directory=settings.storage.fsync_directory,
        min_free_bytes=settings.storage.min_free_bytes,
        keywords=keywords,
    )
    return store, engine


def _receiver_process(settings_data: dict[str, Any], index: int, table: ReceiverTable) -> None:
    """A receiver process: the node's receiver on the shared port until SIGTERM or its parent dies."""
    from dicomnode.logs import setup_logging
    from dicomnode.receiver import Receiver
    from dicomnode.workers import exit_with_parent

    settings = Settings.model_validate(settings_data)
    setup_logging(settings.log_level)
    exit_with_parent(f"receiver-{index}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    from dicomnode.wakeups import Wakeups

    store, engine = make_store(settings)
    row = table.row(index)
    wakeups = Wakeups(settings.database.url)
    receiver = Receiver(settings.node, store, row, reuse_port=True, wakeups=wakeups)
    receiver.start()
    row.set(PID, os.getpid())
    row.set(READY, 1)
    stop.wait()
    receiver.stop()
    wakeups.close()
    engine.dispose()


class ReceiverPool(ProcessPool):
    """The receiver processes of a node: started, watched, replaced when they die.

    Parameters
    ----------
    settings
        Node settings; ``node.port`` 0 picks a free port for all of them.
    count
        Receiver processes.
    table
        Their shared slots and counters.
    """

    def __init__(self, settings: Settings, count: int, table: ReceiverTable) -> None:
        super().__init__(count)
        self.settings = settings
        self.table = table
        self._reserved: Any = None
        self._port = settings.node.port

    @property
    def port(self) -> int:
        """The DICOM port every receiver process listens on."""
        return self._port

    def open_associations(self) -> int:
        """Associations open now, node-wide."""
        return self.table.total(ACTIVE)

    def listening(self) -> bool:
        """Whether at least one receiver process is up and listening."""
        return any(
            p is not None and p.is_alive() and self.table.cells[(i + 1) * COLUMNS + READY]
            for i, p in enumerate(self.processes)
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start every receiver process and wait until each listens."""
        node = self.settings.node
        # A bound socket that never listens holds the port in the SO_REUSEPORT group:
        # it fixes "any free port" for all receivers, and keeps the port while they restart.
        self._reserved = listening_socket(node.host, node.port, reuse_port=True, listen=False)
        self._port = int(self._reserved.getsockname()[1])
        super().start()
        deadline = time.monotonic() + timeout
        while not all(self._ready(i) for i in range(self.count)):
            dead = [i for i, p in enumerate(self.processes) if p is not None and not p.is_alive()]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"receiver process(es) {dead or 'all'} did not start listening on port {self._port}"
                )
            time.sleep(0.05)
        log.info(
            "receiver processes listening", extra={"port": self._port, "processes": self.count}
        )

    def _ready(self, index: int) -> bool:
        return bool(self.table.cells[(index + 1) * COLUMNS + READY])

    def _process(self, index: int) -> BaseProcess:
        data = self.settings.model_dump(mode="json", exclude_unset=True)
        data.setdefault("node", {})["port"] = self._port
        return self.ctx.Process(
            target=_receiver_process,
            args=(data, index + 1, self.table),
            name=f"dicomnode-receiver-{index}",
            daemon=False,
        )

    def _exited(self, index: int, process: BaseProcess) -> None:
        """Its associations are gone; its counts are kept (folded into the retired row)."""
        log.warning(
            "receiver process %d exited with %s; starting a new one", index, process.exitcode
        )
        self.table.retire(index + 1)

    def pids(self) -> list[int]:
        """Process ids of the receiver processes alive now."""
        return [p.pid for p in self.processes if p is not None and p.is_alive() and p.pid]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every receiver process; each closes its associations; then kill stragglers."""
        super().stop(timeout)
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
