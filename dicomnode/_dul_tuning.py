"""Lower pynetdicom's per-message latency without changing its behaviour.

pynetdicom's two per-association threads poll: the DUL reactor sleeps
``_run_loop_delay`` (1 ms) whenever it found nothing to do, and the
association reactor sleeps 1 ms on every loop before looking for a DIMSE
message. A C-STORE therefore waits up to ~2 ms in sleeps between "last PDU
arrived" and "response sent", which for 300 CT slices over one association is
more than the time spent writing them durably.

This module replaces the ``time`` module those two reactors see with one
whose ``sleep`` returns as soon as there is work:

- in a DUL thread: when the socket becomes readable or a primitive is queued
  for sending (a pipe signalled by the queue's ``put``);
- in an association thread: when a complete DIMSE message is queued.

It also makes the per-association copy of the supported contexts shallow
where that is safe (see :func:`_copy_contexts`) and reads PDUs into one
buffer (see :func:`_recv`).

The maximum wait stays what pynetdicom asked for, so idle behaviour, timers
and release/abort handling are unchanged. ``apply()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import os
import select
import socket
import threading
import time as _time
import types
import weakref
from typing import Any

import pynetdicom.association as _association
import pynetdicom.dul as _dul
import pynetdicom.transport as _transport
from pynetdicom.presentation import PresentationContext

_applied = False


class _Waker:
    """A pipe that becomes readable when a primitive is queued for the DUL to send.

    Installed on a DUL's ``to_provider_queue`` so the DUL thread can block in one
    ``select`` on (socket, pipe) instead of polling.
    """

    def __init__(self, dul: Any) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        queue = dul.to_provider_queue
        original_put = queue.put

        def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
            original_put(item, block, timeout)
            with contextlib.suppress(OSError):  # pipe full: a wake-up is pending anyway
                os.write(self.write_fd, b"x")

        queue.put = put
        weakref.finalize(dul, self.close)

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _dul_wait(dul: Any, seconds: float) -> None:
    """Block until the socket is readable, a primitive is queued, or *seconds* pass."""
    waker = dul.__dict__.get("_dicomnode_waker")
    if waker is None:
        waker = dul._dicomnode_waker = _Waker(dul)
    if dul.to_provider_queue.qsize():
        return
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    watched: list[Any] = [waker.read_fd]
    if sock is not None and sock.fileno() >= 0:
        watched.append(sock)
    try:
        ready, _, _ = select.select(watched, [], [], seconds)
    except (OSError, ValueError):
        return
    if waker.read_fd in ready:
        waker.drain()


def _association_wait(assoc: Any, seconds: float) -> None:
    dimse = getattr(assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    if messages is None:
        _time.sleep(seconds)
        return
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(seconds)


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, _dul.DULServiceProvider):
        _dul_wait(thread, seconds)
    elif isinstance(thread, _association.Association) and thread.is_acceptor:
        _association_wait(thread, seconds)
    else:
        _time.sleep(seconds)


def _time_proxy() -> types.SimpleNamespace:
    names = {name: getattr(_time, name) for name in dir(_time) if not name.startswith("__")}
    names["sleep"] = _sleep
    return types.SimpleNamespace(**names)


def _copy_contexts(obj: Any) -> Any:
    """``deepcopy`` for the acceptor's context list, without copying immutable UIDs.

    pynetdicom deep-copies ~150 storage contexts x ~30 transfer syntaxes for
    every association (about 0.3 s on a 2-core machine); each context only
    needs its own transfer-syntax list.
    """
    if isinstance(obj, list) and all(isinstance(cx, PresentationContext) for cx in obj):
        copies = []
        for context in obj:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies
    return copy.deepcopy(obj)


def _recv(self: Any, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` reading straight into one buffer.

    pynetdicom reads 4 KiB per call and appends; a 512 KiB CT slice costs 128
    Python-level iterations (0.27 ms here against 0.09 ms for this).
    """
    sock = self.socket
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    while received < nr_bytes:
        count = sock.recv_into(view[received:], nr_bytes - received)
        if not count:  # connection closed: return what arrived, as pynetdicom does
            del view
            return buffer[:received]
        received += count
    return buffer


def apply() -> None:
    """Install the low-latency waits into pynetdicom's reactors (idempotent)."""
    global _applied
    if _applied:
        return
    proxy = _time_proxy()
    _dul.time = proxy  # type: ignore[assignment]
    _association.time = proxy  # type: ignore[assignment]
    _transport.deepcopy = _copy_contexts  # type: ignore[assignment]
    _transport.AssociationSocket.recv = _recv  # type: ignore[method-assign]
    _applied = True


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: send each PDU at once (Nagle + delayed ACK stall ~40 ms)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
