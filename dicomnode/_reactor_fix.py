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
sends: ``tests/test_reactor_fix.py`` reproduces it with a held-back reactor.

The fix: a response the reactor takes while a ``send_*`` call is waiting
(the checkpoint is clear) goes back on the message queue for that caller.
The reactor then pauses properly at its checkpoint, so it cannot take it
again. A response nobody waits for is still dropped, as before.
"""

from __future__ import annotations

import functools
from typing import Any

from pynetdicom.association import Association

_installed = False


def install() -> None:
    """Patch :meth:`Association._serve_request` (idempotent)."""
    global _installed
    if _installed:
        return
    serve = Association._serve_request

    @functools.wraps(serve)
    def _serve_request(self: Association, msg: Any, context_id: int) -> None:
        waiting = not self._reactor_checkpoint.is_set()
        if msg is not None and not msg.is_valid_request and waiting:
            self.dimse.msg_queue.put((context_id, msg))
            return
        serve(self, msg, context_id)

    Association._serve_request = _serve_request  # type: ignore[method-assign]
    _installed = True
