"""Keep pynetdicom's association reactor from swallowing a DIMSE response.

pynetdicom (3.0.4) runs one reactor thread per association. ``send_c_store``
and the other ``send_*`` methods pause it before sending a request, so the
response is left for the calling thread::

    # caller (send_c_store)                # reactor loop
    checkpoint.clear()                     _is_paused = True
    while not _is_paused: sleep()          checkpoint.wait()
    send request; get_msg(block=True)      _is_paused = False
    checkpoint.set()                       get_msg(block=False) -> serve it

When the caller sets the checkpoint after one response and clears it again
for the next request before the reactor thread has been scheduled, it still
reads the stale ``_is_paused = True`` and goes on. The reactor then wakes,
takes the next response off the queue, finds it is not a request, logs
"Received unexpected C-STORE service message" and drops it; the caller waits
out the whole DIMSE timeout and aborts the association. It needs a busy CPU
to happen (a model running beside the sender), which is exactly when a node
sends: ``tests/test_reactor_fix.py`` reproduces it with a held-back reactor,
``docs/pynetdicom-reactor-race.md`` writes it up for upstream.

The fix: a response the reactor takes while a ``send_*`` call is waiting
(the checkpoint is clear) goes back on the message queue for that caller.
The reactor then pauses properly at its checkpoint, so it cannot take it
again. A response nobody waits for is still dropped, as before.

The fix is one patch that leans on all of the internals below at once, so
:func:`install` checks them all first and installs nothing if any is not as
expected: a WARNING names what differs, and pynetdicom keeps its own
``_serve_request`` (and the race).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pynetdicom.association as _association
import pynetdicom.dimse as _dimse
import pynetdicom.dimse_primitives as _primitives

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

RESPONSE_REQUEUE = "reactor response requeue"

_lock = threading.Lock()
_installed: tuple[str, ...] | None = None  # None: install() has not decided yet


def _tells_requests_apart() -> bool:
    """Whether ``is_valid_request`` is True for a request, False for its response."""
    verification = "1.2.840.10008.1.1"
    request = _primitives.C_ECHO()
    request.MessageID = 1
    request.AffectedSOPClassUID = verification
    response = _primitives.C_ECHO()
    response.MessageIDBeingRespondedTo = 1
    response.AffectedSOPClassUID = verification
    response.Status = 0x0000
    return request.is_valid_request is True and response.is_valid_request is False


def _has_checkpoint_and_queue(assoc: Any) -> bool:
    """Whether *assoc* has the Event and the Queue the fix reads and puts back on."""
    return isinstance(assoc._reactor_checkpoint, threading.Event) and isinstance(
        assoc.dimse.msg_queue, queue.Queue
    )


def _expectations(probe: Callable[[], Any]) -> list[Expectation]:
    """What the fix needs of pynetdicom; each name is looked up inside its probe."""

    def assoc() -> Any:
        return _association.Association

    return [
        (
            "Association._serve_request to be pynetdicom's own, not a wrapper",
            lambda: own(assoc()._serve_request),
        ),
        (
            "Association._serve_request to take (self, msg, context_id)",
            lambda: parameters(assoc()._serve_request) == ["self", "msg", "context_id"],
        ),
        (
            "Association._serve_request to drop a message that is not msg.is_valid_request",
            lambda: in_order(assoc()._serve_request, "if not msg.is_valid_request:", "return"),
        ),
        (
            "Association._run_reactor to wait on self._reactor_checkpoint, then pass "
            "self.dimse.get_msg(block=False) to self._serve_request(msg, context_id)",
            lambda: in_order(
                assoc()._run_reactor,
                "self._reactor_checkpoint.wait()",
                "self.dimse.get_msg(block=False)",
                "self._serve_request(msg,",
            ),
        ),
        (
            "Association.send_c_store to clear the checkpoint, read its response with "
            "self.dimse.get_msg(block=True), then set it",
            lambda: in_order(
                assoc().send_c_store,
                "self._reactor_checkpoint.clear()",
                "self.dimse.get_msg(block=True)",
                "self._reactor_checkpoint.set()",
            ),
        ),
        (
            "DIMSEServiceProvider.get_msg to take messages from self.msg_queue",
            lambda: in_order(_dimse.DIMSEServiceProvider.get_msg, "self.msg_queue.get("),
        ),
        (
            "an Association to have a threading.Event _reactor_checkpoint and a "
            "queue.Queue dimse.msg_queue",
            lambda: _has_checkpoint_and_queue(probe()),
        ),
        (
            "DIMSE primitives to tell a request from a response by is_valid_request",
            _tells_requests_apart,
        ),
    ]


def _requeue_responses(serve: Callable[[Any, Any, int], None]) -> Callable[[Any, Any, int], None]:
    """Wrap *serve* so a response taken while a ``send_*`` call waits goes back to it."""

    @functools.wraps(serve)
    def _serve_request(self: Any, msg: Any, context_id: int) -> None:
        waiting = not self._reactor_checkpoint.is_set()
        if msg is not None and not msg.is_valid_request and waiting:
            self.dimse.msg_queue.put((context_id, msg))
            return
        serve(self, msg, context_id)

    return _serve_request


def _install_checked() -> tuple[str, ...]:
    failed = unmet(_expectations(functools.cache(probe_association)))
    if failed:
        refuse(log, RESPONSE_REQUEUE, failed)
        return ()
    serve = _requeue_responses(_association.Association._serve_request)
    _association.Association._serve_request = serve  # type: ignore[method-assign, assignment]
    report(log, [RESPONSE_REQUEUE])
    return (RESPONSE_REQUEUE,)


def install() -> tuple[str, ...]:
    """Patch :meth:`Association._serve_request` if pynetdicom still looks as assumed.

    Idempotent: the first call decides, later calls return its answer without
    checking or logging again.

    Returns
    -------
    tuple of str
        ``(RESPONSE_REQUEUE,)`` when the fix is in effect, ``()`` when pynetdicom
        did not look as expected and keeps its own ``_serve_request``.
    """
    global _installed
    with _lock:
        if _installed is None:
            _installed = _install_checked()
        return _installed
