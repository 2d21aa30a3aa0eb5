"""pynetdicom's reactor must not swallow a C-STORE response (see dicomnode._reactor_fix).

On a busy CPU the reactor thread of a sending association can wake late from
its checkpoint and take the response its caller is waiting for; the caller
then hits the DIMSE timeout (the demo lost its MR push this way in CI). Here
the two threads are held back on purpose so the race happens every time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomnode import _reactor_fix
from dicomnode.synthetic import ct_series
from dicomnode.testing.peers import free_port

REACTOR_LATE = 0.4  # the reactor runs this long after its checkpoint was set
CALLER_LATE = 1.0  # the caller reads the response queue this long after sending


class _LateWake(threading.Event):
    """A reactor checkpoint whose waiter, once woken, is not scheduled for a while."""

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        if isinstance(threading.current_thread(), Association):
            time.sleep(REACTOR_LATE)
        return woke


@pytest.fixture
def scp_port() -> Iterator[int]:
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)]
    )
    yield port
    server.shutdown()


def _send_with_late_threads(port: int, n: int) -> list[int | None]:
    """C-STORE *n* slices with both threads held back; the status of each (None: no response)."""
    ae = AE(ae_title="SENDER")
    ae.dimse_timeout = 1.5
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    checkpoint = _LateWake()
    checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    get_msg = assoc.dimse.get_msg

    def late_get_msg(block: bool = False) -> Any:
        if block:
            time.sleep(CALLER_LATE)
        return get_msg(block)

    assoc.dimse.get_msg = late_get_msg  # type: ignore[method-assign]
    statuses: list[int | None] = []
    try:
        for ds in ct_series(n_slices=n, rows=16, columns=16, seed=5):
            if not assoc.is_established:
                break
            statuses.append(getattr(assoc.send_c_store(ds), "Status", None))
    finally:
        assoc.release()
    return statuses


def test_without_the_fix_the_reactor_swallows_a_response(
    scp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: this is the failure the fix exists for."""
    _reactor_fix.install()
    monkeypatch.setattr(
        Association,
        "_serve_request",
        Association._serve_request.__wrapped__,  # type: ignore[attr-defined]
    )
    assert None in _send_with_late_threads(scp_port, 3)


def test_with_the_fix_every_response_reaches_its_caller(scp_port: int) -> None:
    _reactor_fix.install()
    assert _send_with_late_threads(scp_port, 3) == [0x0000, 0x0000, 0x0000]
