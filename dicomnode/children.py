"""Child processes of ``serve`` (receivers, workers): replacing them, and stopping them.

Both pools are watched from the scheduler's thread (``check`` every second or
two) while ``serve`` stops from its main thread. ``systemctl stop`` and
``kill -TERM -<pgid>`` signal the whole process group at once, so children
exit on their own while the parent is still winding down; a ``check`` that
ran then would see them dead and start replacements that no one stops, and
the parent would hang at exit joining them (multiprocessing joins non-daemon
children). So ``check`` and ``stop`` take one lock, and once the node has
begun to stop (``stopping``, the first thing ``Node.stop`` does, before it
stops anything) nothing is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)


def stop_processes(processes: Sequence[BaseProcess | None], timeout: float) -> None:
    """SIGTERM every live process, wait up to *timeout* in all, then SIGKILL stragglers.

    All are signalled before any is waited for, so they wind down in parallel
    (a worker finishing its job, a receiver closing its associations) and the
    whole pool takes *timeout* at most, not *timeout* per process.
    """
    for process in processes:
        if process is not None and process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        if process is not None:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)


def kill_stray_children() -> int:
    """SIGKILL child processes still alive after every pool stopped; return how many.

    The last line of defence against a parent that never exits: at exit
    multiprocessing joins every non-daemon child, without a timeout.
    """
    stray = multiprocessing.active_children()
    for child in stray:
        log.error("child process %s (pid %s) outlived its pool; killing it", child.name, child.pid)
        child.kill()
        child.join(5)
    return len(stray)


class ProcessPool:
    """Numbered child processes kept running until :meth:`stop`.

    Subclasses say how to make process *index* (:meth:`_process`) and may act
    when one has died (:meth:`_exited`). ``check`` replaces dead processes;
    ``stop`` signals them all and, from the moment it starts, ``check`` does
    nothing (see the module docstring for why).

    Parameters
    ----------
    count
        Processes in the pool.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.ctx = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess | None] = [None] * count
        self._lock = threading.Lock()
        self._stopping = False

    def _process(self, index: int) -> BaseProcess:
        """A new, unstarted process for slot *index*."""
        raise NotImplementedError

    def _exited(self, index: int, process: BaseProcess) -> None:
        """Slot *index*'s process has died and is about to be replaced."""

    def _spawn(self, index: int) -> None:
        process = self._process(index)
        process.start()
        self.processes[index] = process

    def start(self) -> None:
        """Start every process of the pool."""
        with self._lock:
            self._stopping = False
            for index in range(self.count):
                self._spawn(index)

    def check(self) -> None:
        """Replace processes that died (crash, kill, timeout), unless the pool is stopping."""
        with self._lock:
            if self._stopping:
                return
            for index, process in enumerate(self.processes):
                if process is not None and not process.is_alive():
                    self._exited(index, process)
                    self._spawn(index)

    def stopping(self) -> None:
        """Replace nothing from now on: the node is stopping, and its children may already be."""
        with self._lock:
            self._stopping = True

    def stop(self, timeout: float) -> None:
        """SIGTERM every process; wait up to *timeout* in all; SIGKILL what is left."""
        with self._lock:
            self._stopping = True
            stop_processes(self.processes, timeout)
            self.processes = [None] * self.count
