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
where that is safe (see :func:`_shallow_context_copy`) and reads PDUs into one
buffer (see :func:`_single_buffer_recv`).

The maximum wait stays what pynetdicom asked for, so idle behaviour, timers
and release/abort handling are unchanged.

All of this leans on pynetdicom 3.0.4's private internals, so :func:`apply`
first checks that each one is still there and still does what the patch
assumes (names, shapes of an idle ``Association``, the source lines the
patch relies on, and the behaviour of a copy and a read on a socket pair).
The four patches are independent: each replaces one object, relies on
nothing the others change, and each ``sleep`` proxy only special-cases the
threads of its own module. So each is checked and applied on its own: a
failed check costs that one optimisation, logged as a WARNING naming what
differed, and leaves pynetdicom's own object in place. Every replacement
keeps what it replaced as ``__wrapped__`` (``inspect.unwrap`` gives it
back). The checks are :mod:`dicomnode._pynetdicom_checks`'s, shared with
:mod:`dicomnode._reactor_fix`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import queue
import select
import socket
import threading
import time as _time
import types
import weakref
from collections.abc import Callable
from typing import Any

import pynetdicom.association as _association
import pynetdicom.dimse as _dimse
import pynetdicom.dul as _dul
import pynetdicom.transport as _transport
from pynetdicom.presentation import PresentationContext

from dicomnode._pynetdicom_checks import (
    Expectation,
    in_order,
    own,
    parameters,
    probe_association,
    refuse,
    report,
    unmet,
)

log = logging.getLogger(__name__)

DUL_WAITS = "low-latency DUL waits"
ASSOCIATION_WAITS = "low-latency association waits"
CONTEXT_COPY = "shallow context copy"
SINGLE_BUFFER_RECV = "single-buffer recv"

Recv = Callable[[Any, int], bytearray]

_lock = threading.Lock()
_applied: tuple[str, ...] | None = None  # None: apply() has not decided yet


# -- Low-latency waits ---------------------------------------------------------


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
        """Empty the pipe so the next ``select`` blocks again."""
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        """Close both ends (when the DUL is collected)."""
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
    """Block until a DIMSE message is queued for *assoc*, or *seconds* pass."""
    dimse = getattr(assoc, "dimse", None)
    messages = getattr(dimse, "msg_queue", None)
    if messages is None:
        _time.sleep(seconds)
        return
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(seconds)


def _dul_sleep(seconds: float) -> None:
    """``time.sleep`` for ``pynetdicom.dul``: a DUL thread wakes on work.

    Other threads (an association thread waiting in ``stop_dul`` for the DUL
    to exit) sleep plainly: nothing queued would make them done any sooner.
    """
    thread = threading.current_thread()
    if isinstance(thread, _dul.DULServiceProvider):
        _dul_wait(thread, seconds)
    else:
        _time.sleep(seconds)


def _association_sleep(seconds: float) -> None:
    """``time.sleep`` for ``pynetdicom.association``: an acceptor's reactor wakes on work."""
    thread = threading.current_thread()
    if isinstance(thread, _association.Association) and thread.is_acceptor:
        _association_wait(thread, seconds)
    else:
        _time.sleep(seconds)


def _time_proxy(sleep: Callable[[float], None]) -> types.SimpleNamespace:
    """The ``time`` module with its ``sleep`` replaced; ``inspect.unwrap`` gives ``time``."""
    names: dict[str, Any] = {
        name: getattr(_time, name) for name in dir(_time) if not name.startswith("__")
    }
    names["sleep"] = sleep
    names["__wrapped__"] = _time
    return types.SimpleNamespace(**names)


def _dul_wait_expectations(probe: Callable[[], Any]) -> list[Expectation]:
    """What :func:`_dul_sleep` and :func:`_dul_wait` need: the DUL idles in ``time.sleep``.

    Every name is looked up inside its probe, so a missing one is an unmet
    expectation rather than an error here.
    """
    return [
        ("pynetdicom.dul.time to be the time module", lambda: getattr(_dul, "time", None) is _time),
        (
            "DULServiceProvider to be a threading.Thread (DUL threads are told by type)",
            lambda: issubclass(_dul.DULServiceProvider, threading.Thread),
        ),
        (
            "DULServiceProvider.run_reactor to idle in time.sleep(self._run_loop_delay)",
            lambda: in_order(
                _dul.DULServiceProvider.run_reactor,
                "while True:",
                "time.sleep(self._run_loop_delay)",
            ),
        ),
        (
            "a DULServiceProvider to have a float _run_loop_delay",
            lambda: isinstance(probe().dul._run_loop_delay, float),
        ),
        (
            "a DULServiceProvider to have a queue.Queue to_provider_queue",
            lambda: isinstance(probe().dul.to_provider_queue, queue.Queue),
        ),
        (
            "a DULServiceProvider's socket to be an AssociationSocket keeping the socket in .socket",
            lambda: hasattr(probe().dul, "socket") and _keeps_raw_socket(probe()),
        ),
    ]


def _association_wait_expectations(probe: Callable[[], Any]) -> list[Expectation]:
    """What :func:`_association_sleep` needs: the reactor polls ``msg_queue`` after a sleep."""
    return [
        (
            "pynetdicom.association.time to be the time module",
            lambda: getattr(_association, "time", None) is _time,
        ),
        (
            "Association to be a threading.Thread with an is_acceptor property",
            lambda: (
                issubclass(_association.Association, threading.Thread)
                and isinstance(_association.Association.is_acceptor, property)
            ),
        ),
        (
            "Association._run_reactor to time.sleep(...) before self.dimse.get_msg(block=False)",
            lambda: in_order(
                _association.Association._run_reactor,
                "time.sleep(",
                "self.dimse.get_msg(block=False)",
            ),
        ),
        (
            "DIMSEServiceProvider.get_msg to take messages from self.msg_queue",
            lambda: in_order(_dimse.DIMSEServiceProvider.get_msg, "self.msg_queue.get("),
        ),
        (
            "an Association's dimse.msg_queue to be a queue.Queue (with not_empty and _qsize)",
            lambda: _is_stdlib_queue(probe().dimse.msg_queue),
        ),
    ]


def _is_stdlib_queue(candidate: object) -> bool:
    """Whether *candidate* is a ``queue.Queue`` with the condition we wait on."""
    return (
        isinstance(candidate, queue.Queue)
        and isinstance(candidate.not_empty, threading.Condition)
        and callable(getattr(candidate, "_qsize", None))
    )


def _keeps_raw_socket(assoc: Any) -> bool:
    """Whether ``AssociationSocket(assoc, client_socket=s).socket is s``."""
    ours, peer = socket.socketpair()
    with ours, peer:
        return _transport.AssociationSocket(assoc, client_socket=ours).socket is ours


# -- Shallow context copy ----------------------------------------------------------


def _shallow_context_copy(deepcopy: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``deepcopy`` for the acceptor's context list, without copying immutable UIDs.

    pynetdicom deep-copies ~150 storage contexts x ~30 transfer syntaxes for
    every association (about 0.3 s on a 2-core machine); each context only
    needs its own transfer-syntax list. Anything else goes to *deepcopy*.
    """

    @functools.wraps(deepcopy)
    def copy_contexts(obj: Any, *args: Any) -> Any:
        if args or not _is_context_list(obj):
            return deepcopy(obj, *args)
        copies = []
        for context in obj:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies

    return copy_contexts


def _is_context_list(obj: Any) -> bool:
    """Whether *obj* is what ``_create_association`` copies: a list of contexts."""
    return isinstance(obj, list) and all(isinstance(cx, PresentationContext) for cx in obj)


def _copies_like_deepcopy(copy_contexts: Callable[[Any], Any]) -> bool:
    """Whether *copy_contexts* gives what ``deepcopy`` gives, sharing only immutables.

    The shallow copy is only safe while a context's one mutable attribute is
    its ``_transfer_syntax`` list: a new mutable attribute would be shared
    between associations.
    """
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = "1.2.840.10008.1.1"
    context.transfer_syntax = ["1.2.840.10008.1.2"]
    state = vars(context)
    others = [value for name, value in state.items() if name != "_transfer_syntax"]
    (twin,) = copy_contexts([context])
    return (
        isinstance(state.get("_transfer_syntax"), list)
        and all(value is None or isinstance(value, (bool, int, str)) for value in others)
        and vars(twin) == vars(copy.deepcopy(context))
        and twin._transfer_syntax is not context._transfer_syntax
    )


def _context_copy_expectations(candidate: Callable[[Any], Any]) -> list[Expectation]:
    """What the shallow copy needs: one ``deepcopy`` of contexts, with one mutable part."""
    return [
        (
            "pynetdicom.transport.deepcopy to be copy.deepcopy",
            lambda: getattr(_transport, "deepcopy", None) is copy.deepcopy,
        ),
        (
            "RequestHandler._create_association to copy deepcopy(self.server.contexts)",
            lambda: in_order(
                _transport.RequestHandler._create_association, "deepcopy(self.server.contexts)"
            ),
        ),
        (
            "a PresentationContext's only mutable state to be its _transfer_syntax list",
            lambda: _copies_like_deepcopy(candidate),
        ),
    ]


# -- Single-buffer recv ------------------------------------------------------------


def _single_buffer_recv(original: Recv) -> Recv:
    """``AssociationSocket.recv`` reading straight into one buffer.

    pynetdicom reads 4 KiB per call and appends; a 512 KiB CT slice costs 128
    Python-level iterations (0.27 ms here against 0.09 ms for this).
    """

    @functools.wraps(original)
    def recv(self: Any, nr_bytes: int) -> bytearray:
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

    return recv


def _reads_like_pynetdicom(recv: Recv, assoc: Any) -> bool:
    """Whether *recv* returns exactly *nr_bytes*, short only once the peer has closed."""
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.settimeout(2)  # a recv that waits for more than was asked fails, not hangs
        wrapped = _transport.AssociationSocket(assoc, client_socket=ours)
        peer.sendall(b"0123456789")
        peer.close()
        reads = [recv(wrapped, 4), recv(wrapped, 4), recv(wrapped, 8)]
    return reads == [b"0123", b"4567", b"89"] and all(type(r) is bytearray for r in reads)


def _recv_expectations(probe: Callable[[], Any]) -> list[Expectation]:
    """What the single-buffer recv must match: pynetdicom's recv, read on a socket pair."""

    def original() -> Recv:
        return _transport.AssociationSocket.recv

    return [
        ("AssociationSocket.recv to be pynetdicom's own, not a wrapper", lambda: own(original())),
        (
            "AssociationSocket.recv to take (self, nr_bytes)",
            lambda: parameters(original()) == ["self", "nr_bytes"],
        ),
        (
            "AssociationSocket.recv to read from self.socket.recv(...)",
            lambda: in_order(original(), "self.socket.recv("),
        ),
        (
            "AssociationSocket.recv to return nr_bytes as a bytearray, short only on close",
            lambda: _reads_like_pynetdicom(original(), probe()),
        ),
        (
            "the single-buffer recv to read the same bytes",
            lambda: _reads_like_pynetdicom(_single_buffer_recv(original()), probe()),
        ),
    ]


# -- Applying ------------------------------------------------------------------------


def _patches(probe: Callable[[], Any]) -> list[tuple[str, list[Expectation], Callable[[], None]]]:
    """Each patch: its name, what it needs of pynetdicom, and how to put it in."""
    copy_contexts = _shallow_context_copy(copy.deepcopy)

    def dul_waits() -> None:
        _dul.time = _time_proxy(_dul_sleep)  # type: ignore[assignment]

    def association_waits() -> None:
        _association.time = _time_proxy(_association_sleep)  # type: ignore[assignment]

    def context_copy() -> None:
        _transport.deepcopy = copy_contexts  # type: ignore[assignment]

    def single_buffer_recv() -> None:
        recv = _single_buffer_recv(_transport.AssociationSocket.recv)
        _transport.AssociationSocket.recv = recv  # type: ignore[method-assign, assignment]

    return [
        (DUL_WAITS, _dul_wait_expectations(probe), dul_waits),
        (ASSOCIATION_WAITS, _association_wait_expectations(probe), association_waits),
        (CONTEXT_COPY, _context_copy_expectations(copy_contexts), context_copy),
        (SINGLE_BUFFER_RECV, _recv_expectations(probe), single_buffer_recv),
    ]


def _apply_checked() -> tuple[str, ...]:
    """Check every patch first, then put in those whose expectations all hold."""
    probe = functools.cache(probe_association)
    checked = [(name, unmet(needs), put_in) for name, needs, put_in in _patches(probe)]
    applied = []
    for name, failed, put_in in checked:
        if failed:
            refuse(log, name, failed)
        else:
            put_in()
            applied.append(name)
    report(log, applied)
    return tuple(applied)


def apply() -> tuple[str, ...]:
    """Install the low-latency waits, shallow context copy and single-buffer recv.

    Each patch goes in only if pynetdicom still looks the way it assumes
    (see the module docstring); the others are logged as a WARNING and left
    to pynetdicom. Idempotent: the first call decides, later calls return its
    answer without checking or logging again.

    Returns
    -------
    tuple of str
        The names of the patches in effect (:data:`DUL_WAITS`,
        :data:`ASSOCIATION_WAITS`, :data:`CONTEXT_COPY`,
        :data:`SINGLE_BUFFER_RECV`), empty when none could be applied.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply_checked()
        return _applied


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: send each PDU at once (Nagle + delayed ACK stall ~40 ms)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
