"""Wake-ups between the node's steps: the next step starts when the previous one ends.

Each step of a study's way through the node runs in its own thread or
process: receiver, assembly, workers, delivery. Instead of each polling the
database on a timer, the one that finishes a step rings the next:

- ``ARRIVALS``: a receiver stored an instance (assembly recomputes when the
  study will be quiet);
- ``JOBS``: a job was queued (workers claim it);
- ``OUTPUTS``: results are waiting to be sent (delivery sends them).

On one host a ring is one datagram to each listener's Unix socket, in a
folder all processes of the node share (named after the database, so nodes
on one machine keep apart); it never blocks. With PostgreSQL, ``JOBS`` and
``OUTPUTS`` are also ``NOTIFY``'d, so workers and delivery on other hosts
wake too. Every wait still has a timeout (the old polling interval): a ring
that is lost, or a step whose ringer is on another host without PostgreSQL,
costs at most one interval, never correctness.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import select
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ARRIVALS = "arrivals"
JOBS = "jobs"
OUTPUTS = "outputs"
TOPICS = (ARRIVALS, JOBS, OUTPUTS)
_ACROSS_HOSTS = (JOBS, OUTPUTS)  # rung by processes that may be on other hosts
_LISTENERS_CACHE_SECONDS = 1.0
_counter = itertools.count()


def _folder(database_url: str) -> Path:
    digest = hashlib.sha1(database_url.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"dicomnode-wake-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _channel(topic: str) -> str:
    return f"dicomnode_{topic}"


class Wakeups:
    """Rings and listeners of one node (identified by its database URL).

    Parameters
    ----------
    database_url
        The node's ``database.url``; PostgreSQL URLs also ring across hosts.
    folder
        Where this host's listeners are (default: a folder named after the URL
        in the system's temporary folder).
    """

    def __init__(self, database_url: str, folder: Path | None = None) -> None:
        self.database_url = database_url
        self.folder = folder or _folder(database_url)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.postgres = database_url.startswith("postgresql")
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._known: dict[str, tuple[float, list[Path]]] = {}
        self._lock = threading.Lock()
        self._notifier: Any = None

    def _listeners(self, topic: str) -> list[Path]:
        now = time.monotonic()
        cached = self._known.get(topic)
        if cached is not None and now - cached[0] < _LISTENERS_CACHE_SECONDS:
            return cached[1]
        paths = sorted((self.folder / topic).glob("*.sock"))
        self._known[topic] = (now, paths)
        return paths

    def ring(self, topic: str) -> None:
        """Wake every listener of *topic* (on this host; and across hosts with PostgreSQL)."""
        with self._lock:
            for path in self._listeners(topic):
                try:
                    self._sender.sendto(b"!", str(path))
                except BlockingIOError:
                    pass  # its queue is full: it has wake-ups pending anyway
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        path.unlink(missing_ok=True)  # a listener that died
                        self._known.pop(topic, None)
        if self.postgres and topic in _ACROSS_HOSTS:
            self._notify(topic)

    def _notify(self, topic: str) -> None:
        try:
            with self._lock:
                if self._notifier is None:
                    self._notifier = _pg_connect(self.database_url)
                self._notifier.execute(f"NOTIFY {_channel(topic)}")
        except Exception as exc:  # a lost ring costs one polling interval, nothing more
            log.debug("NOTIFY %s failed: %s", topic, exc)
            with contextlib.suppress(Exception):
                if self._notifier is not None:
                    self._notifier.close()
            self._notifier = None

    def listen(self, topic: str) -> Listener:
        """A listener of *topic*; close it when done."""
        return Listener(self, topic)

    def close(self) -> None:
        """Release the sockets and connections of this object."""
        self._sender.close()
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                self._notifier.close()


def _pg_connect(url: str) -> Any:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(dsn, autocommit=True)


class Listener:
    """Waits for rings of one topic (and, with PostgreSQL, for its NOTIFYs)."""

    def __init__(self, wakeups: Wakeups, topic: str) -> None:
        folder = wakeups.folder / topic
        folder.mkdir(mode=0o700, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{next(_counter)}.sock"
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self._pg: Any = None
        if wakeups.postgres and topic in _ACROSS_HOSTS:
            try:
                self._pg = _pg_connect(wakeups.database_url)
                self._pg.execute(f"LISTEN {_channel(topic)}")
            except Exception as exc:  # polling still works without it
                log.warning("LISTEN %s not available: %s", topic, type(exc).__name__)
                self._pg = None

    def wait(self, timeout: float) -> bool:
        """Block until rung or *timeout* seconds pass; True when rung (all pending rings taken)."""
        watched: list[Any] = [self.sock]
        if self._pg is not None:
            watched.append(self._pg.pgconn.socket)
        try:
            ready, _, _ = select.select(watched, [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return False
        rung = self._drain()
        if self._pg is not None and self._pg.pgconn.socket in ready:
            rung = self._drain_notifies() or rung
        return rung

    def _drain(self) -> bool:
        rung = False
        with contextlib.suppress(BlockingIOError, OSError):
            while self.sock.recv(64):
                rung = True
        return rung

    def _drain_notifies(self) -> bool:
        pgconn = self._pg.pgconn
        pgconn.consume_input()
        rung = False
        while pgconn.notifies() is not None:
            rung = True
        return rung

    def interrupt(self) -> None:
        """Wake this listener's waiter (to stop it)."""
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
            contextlib.suppress(OSError),
        ):
            sender.sendto(b"!", str(self.path))

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()
        self.path.unlink(missing_ok=True)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
