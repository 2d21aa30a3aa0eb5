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
  for sending;
- in an association thread: when a complete DIMSE message is queued.

It also makes the per-association copy of the supported contexts shallow
where that is safe (see :func:`_copy_contexts`).

The maximum wait stays what pynetdicom asked for, so idle behaviour, timers
and release/abort handling are unchanged. ``apply()`` is idempotent.
"""

from __future__ import annotations

import contextlib
import copy
import select
import socket
import threading
import time as _time
import types
from typing import Any

import pynetdicom.association as _association
import pynetdicom.dul as _dul
import pynetdicom.transport as _transport
from pynetdicom.presentation import PresentationContext

_SLICE = 0.0002  # seconds between checks of the send queue while the socket is quiet
_applied = False


def _dul_wait(dul: Any, seconds: float) -> None:
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    deadline = _time.monotonic() + seconds
    while True:
        if dul.to_provider_queue.qsize():
            return
        remaining = deadline - _time.monotonic()
        if remaining <= 0:
            return
        if sock is None or sock.fileno() < 0:
            _time.sleep(remaining)
            return
        try:
            ready, _, _ = select.select([sock], [], [], min(_SLICE, remaining))
        except (OSError, ValueError):
            return
        if ready:
            return


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


def apply() -> None:
    """Install the low-latency waits into pynetdicom's reactors (idempotent)."""
    global _applied
    if _applied:
        return
    proxy = _time_proxy()
    _dul.time = proxy  # type: ignore[assignment]
    _association.time = proxy  # type: ignore[assignment]
    _transport.deepcopy = _copy_contexts  # type: ignore[assignment]
    _applied = True


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: send each PDU at once (Nagle + delayed ACK stall ~40 ms)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
