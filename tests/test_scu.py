"""``dicomnode send`` against a peer that aborts mid-association: a report, not a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode.scu import send
from dicomnode.synthetic import ct_series, write_series
from dicomnode.testing.peers import free_port


def test_peer_abort_marks_the_rest_as_failed(tmp_path: Path) -> None:
    files = write_series(ct_series(n_slices=4, rows=16, columns=16, seed=3), tmp_path / "ct")
    stored: list[str] = []

    def on_store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        if len(stored) == 2:
            event.assoc.abort()  # the second file never gets its response
        return 0x0000

    ae = AE(ae_title="ABORTER")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        report = send(files, "ABORTER", "127.0.0.1", port, timeout=3)
    finally:
        server.shutdown()
    assert report.sent == 1
    assert len(report.failures) == 3
    reasons = [report.failures[path] for path in files[1:]]
    assert reasons[0] == "status None no response"
    # Once the abort has reached the sender the rest is not even tried; until then
    # (timing) a file just gets no response. Either way: reported, never raised.
    for why in reasons[1:]:
        assert why == "status None no response" or "association closed before this file" in why
