"""Locks that hold across the node's processes, not only its threads.

The receiver runs in several processes (``node.receiver_processes``) beside
the serving process (retention, assembly). Two things must be node-wide:

- :class:`HostLock`, one writer of the SQLite index at a time: SQLite's own
  busy handler would make the others sleep 1-100 ms and retry; a lock queues
  them and wakes the next at once;
- :class:`SharedHostLock`, stores (shared) against retention removing a
  study's folder (exclusive).

Both are a thread lock in front of ``flock(2)`` on a file: the kernel drops a
process's flock when the process dies, whatever it was doing, so a receiver
killed mid-instance never leaves the node locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o640)


class HostLock:
    """One holder at a time among all threads of all processes that lock *path*."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._thread = threading.Lock()
        self._fd = -1
        self._pid = -1

    def _file(self) -> int:
        # A forked child must not share its parent's open file description (and lock).
        if self._pid != os.getpid():
            self._fd, self._pid = _open(self.path), os.getpid()
        return self._fd

    def __enter__(self) -> HostLock:
        self._thread.acquire()
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()


class SharedHostLock:
    """Many holders in shared mode, or one in exclusive mode, across threads and processes.

    In a process, threads in shared mode count; the first takes the shared
    flock and the last drops it. Exclusive mode waits out the other threads,
    then every other process's shared holders.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._fd = -1
        self._pid = -1

    def _file(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = _open(self.path), os.getpid()
        return self._fd

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._exclusive:
                self._condition.wait()
            if self._shared == 0:
                fcntl.flock(self._file(), fcntl.LOCK_SH)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                if self._shared == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            while self._exclusive or self._shared:
                self._condition.wait()
            self._exclusive = True
        try:
            fcntl.flock(self._file(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()
