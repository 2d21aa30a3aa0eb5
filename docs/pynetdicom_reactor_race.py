"""Deterministic reproduction: pynetdicom's association reactor swallows a C-STORE response.

Uses only pynetdicom (and pydicom, its dependency). Starts a Storage SCP and a
requestor in this process, on a free loopback port, and sends three C-STOREs
over one association. To make the race happen every time instead of only on a
busy CPU, two threads of the *requestor* are held back, as an overloaded
scheduler would:

- its reactor thread runs ``REACTOR_LATE`` seconds late each time it is woken
  from ``Association._reactor_checkpoint.wait()``;
- the thread calling ``send_c_store`` reads the response queue
  ``CALLER_LATE`` seconds after sending its request.

Neither delay changes what the code does, only when. Run::

    python pynetdicom_reactor_race.py                      # plain pynetdicom: fails
    python pynetdicom_reactor_race.py --with-fix           # requeue workaround: passes
    python pynetdicom_reactor_race.py --with-upstream-fix  # suggested reactor fix: passes

Exit status 1 when a response was lost, 0 when every C-STORE got its response.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import platform
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom
import pynetdicom
import pynetdicom.association
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

REACTOR_LATE = 0.4  # seconds the requestor's reactor runs late after being woken
CALLER_LATE = 1.0  # seconds the send_c_store caller reads its response late
DIMSE_TIMEOUT = 1.5  # seconds send_c_store waits for its response
N_STORES = 3


class LateWake(threading.Event):
    """A reactor checkpoint whose waiter, once woken, is not scheduled for a while."""

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        if isinstance(threading.current_thread(), Association):
            time.sleep(REACTOR_LATE)
        return woke


def hold_back_threads(assoc: Association) -> None:
    """Delay the reactor after each wake-up, and the caller before it reads a response."""
    checkpoint = LateWake()
    checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    get_msg = assoc.dimse.get_msg

    def late_get_msg(block: bool = False) -> Any:
        if block:  # only send_*() blocks; the reactor polls with block=False
            time.sleep(CALLER_LATE)
        return get_msg(block)

    assoc.dimse.get_msg = late_get_msg  # type: ignore[method-assign]


def requeue_fix() -> None:
    """The workaround dicomnode applies: a response taken while send_*() waits goes back."""
    serve = Association._serve_request

    @functools.wraps(serve)
    def _serve_request(self: Association, msg: Any, context_id: int) -> None:
        waiting = not self._reactor_checkpoint.is_set()
        if msg is not None and not msg.is_valid_request and waiting:
            self.dimse.msg_queue.put((context_id, msg))
            return
        serve(self, msg, context_id)

    Association._serve_request = _serve_request  # type: ignore[method-assign]


UPSTREAM_FIX_AFTER = "        self._reactor_checkpoint.wait()\n        self._is_paused = False\n"
UPSTREAM_FIX_ADDED = (
    "        if not self._reactor_checkpoint.is_set():\n"
    "            # Paused again between the wake-up and now: the message is the caller's\n"
    "            continue\n"
)


def upstream_fix() -> None:
    """The suggested upstream change, applied to pynetdicom's own ``_run_reactor`` source.

    After waking from the checkpoint the reactor checks that it is still set
    before it takes a message. (Demonstration only: it edits the installed
    source text and fails loudly if that text is not what 3.0.4 has.)
    """
    source = textwrap.dedent(inspect.getsource(Association._run_reactor))
    position = source.index(UPSTREAM_FIX_AFTER) + len(UPSTREAM_FIX_AFTER)
    patched = source[:position] + UPSTREAM_FIX_ADDED + source[position:]
    module = pynetdicom.association
    namespace: dict[str, Any] = {}
    exec(compile(patched, module.__file__ or "association.py", "exec"), vars(module), namespace)
    Association._run_reactor = namespace["_run_reactor"]  # type: ignore[method-assign]


FIXES: dict[str, Callable[[], None]] = {"requeue": requeue_fix, "upstream": upstream_fix}


def free_port() -> int:
    """A TCP port free on loopback just now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_dataset() -> Dataset:
    """The smallest CT Image Storage dataset the SCP will take (no pixel data needed)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "RACE"
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def start_scp(port: int) -> Any:
    """A Storage SCP answering every C-STORE with Success, in background threads."""
    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    handlers: list[Any] = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)


def store(assoc: Association, n: int) -> int | None:
    """Send C-STORE number *n*; print and return its status (None: no response)."""
    if not assoc.is_established:
        print(f"C-STORE {n}: not sent, association no longer established")
        return None
    started = time.monotonic()
    status = getattr(assoc.send_c_store(ct_dataset(), msg_id=n), "Status", None)
    shown = "no response" if status is None else f"status 0x{status:04X}"
    print(f"C-STORE {n}: {shown} after {time.monotonic() - started:.1f} s")
    return status


def send_stores(port: int) -> list[int | None]:
    """C-STORE ``N_STORES`` datasets over one association with the held-back threads."""
    ae = AE(ae_title="STORESCU")
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
    if not assoc.is_established:
        sys.exit("association not established")
    hold_back_threads(assoc)
    statuses = [store(assoc, n) for n in range(1, N_STORES + 1)]
    print(f"association aborted: {assoc.is_aborted}")
    assoc.release()
    return statuses


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--with-fix",
        action="store_const",
        const="requeue",
        dest="fix",
        help="apply the requeue workaround to Association._serve_request",
    )
    group.add_argument(
        "--with-upstream-fix",
        action="store_const",
        const="upstream",
        dest="fix",
        help="apply the suggested fix to Association._run_reactor",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="pynetdicom's INFO log too")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(threadName)s: %(message)s",
        stream=sys.stdout,
    )
    print(
        f"Python {platform.python_version()}, pydicom {pydicom.__version__}, "
        f"pynetdicom {pynetdicom.__version__}, {platform.system()} {platform.machine()}"
    )
    print(
        f"fix: {args.fix or 'none'}; reactor {REACTOR_LATE} s late, caller {CALLER_LATE} s "
        f"late, DIMSE timeout {DIMSE_TIMEOUT} s"
    )
    if args.fix:
        FIXES[args.fix]()
    port = free_port()
    server = start_scp(port)
    try:
        statuses = send_stores(port)
    finally:
        server.shutdown()
    lost = any(status is None for status in statuses)
    print("RESULT: a C-STORE response was lost" if lost else "RESULT: every response arrived")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
