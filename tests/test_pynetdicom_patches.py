"""dicomnode's private pynetdicom patches go in only where pynetdicom looks as they assume.

``_dul_tuning.apply()`` and ``_reactor_fix.install()`` check pynetdicom's
private internals first. Here each expectation is broken in turn the way a
new pynetdicom release could break it (a name gone, renamed or reshaped):
the patch that needs it stays out, a WARNING names what differed, pynetdicom's
own object stays in place, and an association still completes on plain
pynetdicom.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import queue
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pynetdicom
import pynetdicom.association as _association
import pynetdicom.dimse as _dimse
import pynetdicom.dimse_primitives as _primitives
import pynetdicom.dul as _dul
import pynetdicom.transport as _transport
import pytest
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode import _dul_tuning, _reactor_fix
from dicomnode._dul_tuning import ASSOCIATION_WAITS, CONTEXT_COPY, DUL_WAITS, SINGLE_BUFFER_RECV
from dicomnode._reactor_fix import RESPONSE_REQUEUE
from dicomnode.testing.peers import dcmtk_tool, echoscu, free_port

Association = _association.Association
AssociationSocket = _transport.AssociationSocket
Break = Callable[[pytest.MonkeyPatch], None]

ALL_TUNING = (DUL_WAITS, ASSOCIATION_WAITS, CONTEXT_COPY, SINGLE_BUFFER_RECV)
VERSION = pynetdicom.__version__
MISSING = object()  # what a patch point holds once a test deleted it

# Where each patch goes: (owner, attribute).
PATCH_POINTS: dict[str, tuple[Any, str]] = {
    DUL_WAITS: (_dul, "time"),
    ASSOCIATION_WAITS: (_association, "time"),
    CONTEXT_COPY: (_transport, "deepcopy"),
    SINGLE_BUFFER_RECV: (AssociationSocket, "recv"),
    RESPONSE_REQUEUE: (Association, "_serve_request"),
}


def _at(patch: str) -> Any:
    owner, name = PATCH_POINTS[patch]
    return getattr(owner, name, MISSING)


def _snapshot() -> dict[str, Any]:
    return {patch: _at(patch) for patch in PATCH_POINTS}


@pytest.fixture
def pristine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pynetdicom's own objects at every patch point, neither module decided yet.

    Earlier tests (or importing dicomnode.scu) may have patched pynetdicom for
    the whole session; each patch keeps what it replaced as ``__wrapped__``.
    monkeypatch puts the session's state back afterwards.
    """
    for owner, name in PATCH_POINTS.values():
        monkeypatch.setattr(owner, name, inspect.unwrap(getattr(owner, name)))
    monkeypatch.setattr(_dul_tuning, "_applied", None)
    monkeypatch.setattr(_reactor_fix, "_installed", None)
    yield


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="dicomnode")
    return caplog


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# -- Ways a pynetdicom release could differ (each a monkeypatch) ---------------------


def _after_init(cls: Any, monkeypatch: pytest.MonkeyPatch, change: Callable[[Any], None]) -> None:
    """Make *cls* instances come out of ``__init__`` changed by *change*."""
    init = cls.__init__

    def changed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        change(self)

    monkeypatch.setattr(cls, "__init__", changed_init)


def _clock_stand_in() -> types.SimpleNamespace:
    """A module-like clock with time's functions: works, but is not ``time``."""
    return types.SimpleNamespace(**{n: getattr(time, n) for n in dir(time) if n[0] != "_"})


def _event_driven_run_reactor(self: Any) -> None:
    """A reactor with no polling sleep (what an event-driven release might have)."""


def _handler_without_deepcopy(self: Any) -> None:
    """A ``_create_association`` that builds its contexts some other way."""


def _run_reactor_with_other_dispatch(self: Any) -> None:
    """A reactor that hands messages to something other than ``_serve_request``."""
    self._reactor_checkpoint.wait()
    context_id, msg = self.dimse.get_msg(block=False)
    self._dispatch(msg, context_id)


def _send_c_store_without_checkpoint(self: Any, dataset: Any) -> None:
    """A ``send_c_store`` that no longer pauses the reactor."""
    self.dimse.get_msg(block=True)


def _recv_with_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    original = AssociationSocket.recv

    def recv(self: Any, nr_bytes: int, flags: int = 0) -> bytearray:
        return original(self, nr_bytes)

    monkeypatch.setattr(AssociationSocket, "recv", recv)


def _recv_returning_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    original = AssociationSocket.recv

    def recv(self: Any, nr_bytes: int) -> bytes:
        return bytes(original(self, nr_bytes))

    monkeypatch.setattr(AssociationSocket, "recv", recv)


def _serve_request_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    serve = Association._serve_request

    @functools.wraps(serve)
    def someone_elses(self: Any, msg: Any, context_id: int) -> None:
        serve(self, msg, context_id)

    monkeypatch.setattr(Association, "_serve_request", someone_elses)


def _serve_request_with_extra_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    serve = Association._serve_request

    def serve_request(self: Any, msg: Any, context_id: int, priority: int = 0) -> None:
        serve(self, msg, context_id)

    monkeypatch.setattr(Association, "_serve_request", serve_request)


TUNING_BREAKS: list[tuple[str, Break, str, str]] = [
    # (id, how pynetdicom differs, the patch that must stay out, what the warning names)
    (
        "dul-time-gone",
        lambda mp: mp.delattr(_dul, "time"),
        DUL_WAITS,
        "pynetdicom.dul.time to be the time module",
    ),
    (
        "dul-time-replaced",
        lambda mp: mp.setattr(_dul, "time", _clock_stand_in()),
        DUL_WAITS,
        "pynetdicom.dul.time to be the time module",
    ),
    (
        "dul-reactor-event-driven",
        lambda mp: mp.setattr(_dul.DULServiceProvider, "run_reactor", _event_driven_run_reactor),
        DUL_WAITS,
        "DULServiceProvider.run_reactor to idle in time.sleep(self._run_loop_delay)",
    ),
    (
        "run-loop-delay-renamed",
        lambda mp: _after_init(
            _dul.DULServiceProvider,
            mp,
            lambda dul: setattr(dul, "_loop_delay", vars(dul).pop("_run_loop_delay")),
        ),
        DUL_WAITS,
        "a DULServiceProvider to have a float _run_loop_delay",
    ),
    (
        "to-provider-queue-reshaped",
        lambda mp: _after_init(
            _dul.DULServiceProvider, mp, lambda dul: setattr(dul, "to_provider_queue", [])
        ),
        DUL_WAITS,
        "a DULServiceProvider to have a queue.Queue to_provider_queue",
    ),
    (
        "dul-socket-gone",
        lambda mp: _after_init(_dul.DULServiceProvider, mp, lambda dul: delattr(dul, "socket")),
        DUL_WAITS,
        "AssociationSocket keeping the socket in .socket",
    ),
    (
        "association-time-replaced",
        lambda mp: mp.setattr(_association, "time", _clock_stand_in()),
        ASSOCIATION_WAITS,
        "pynetdicom.association.time to be the time module",
    ),
    (
        "association-reactor-event-driven",
        lambda mp: mp.setattr(Association, "_run_reactor", _event_driven_run_reactor),
        ASSOCIATION_WAITS,
        "Association._run_reactor to time.sleep(...) before self.dimse.get_msg(block=False)",
    ),
    (
        "msg-queue-simple",
        lambda mp: _after_init(
            _dimse.DIMSEServiceProvider, mp, lambda d: setattr(d, "msg_queue", queue.SimpleQueue())
        ),
        ASSOCIATION_WAITS,
        "an Association's dimse.msg_queue to be a queue.Queue",
    ),
    (
        "transport-deepcopy-replaced",
        lambda mp: mp.setattr(_transport, "deepcopy", functools.partial(copy.deepcopy)),
        CONTEXT_COPY,
        "pynetdicom.transport.deepcopy to be copy.deepcopy",
    ),
    (
        "contexts-not-deep-copied",
        lambda mp: mp.setattr(
            _transport.RequestHandler, "_create_association", _handler_without_deepcopy
        ),
        CONTEXT_COPY,
        "RequestHandler._create_association to copy deepcopy(self.server.contexts)",
    ),
    (
        "context-gains-mutable-state",
        lambda mp: _after_init(PresentationContext, mp, lambda cx: setattr(cx, "_extended", [])),
        CONTEXT_COPY,
        "a PresentationContext's only mutable state to be its _transfer_syntax list",
    ),
    (
        "recv-gone",
        lambda mp: mp.delattr(AssociationSocket, "recv"),
        SINGLE_BUFFER_RECV,
        "AssociationSocket.recv to be pynetdicom's own, not a wrapper (AttributeError",
    ),
    (
        "recv-new-parameter",
        _recv_with_flags,
        SINGLE_BUFFER_RECV,
        "AssociationSocket.recv to take (self, nr_bytes)",
    ),
    (
        "recv-returns-bytes",
        _recv_returning_bytes,
        SINGLE_BUFFER_RECV,
        "AssociationSocket.recv to return nr_bytes as a bytearray, short only on close",
    ),
]

REACTOR_BREAKS: list[tuple[str, Break, str]] = [
    (
        "serve-request-gone",
        lambda mp: mp.delattr(Association, "_serve_request"),
        "Association._serve_request to be pynetdicom's own, not a wrapper (AttributeError",
    ),
    (
        "serve-request-wrapped",
        _serve_request_wrapped,
        "Association._serve_request to be pynetdicom's own, not a wrapper",
    ),
    (
        "serve-request-new-parameter",
        _serve_request_with_extra_parameter,
        "Association._serve_request to take (self, msg, context_id)",
    ),
    (
        "reactor-dispatches-elsewhere",
        lambda mp: mp.setattr(Association, "_run_reactor", _run_reactor_with_other_dispatch),
        "Association._run_reactor to wait on self._reactor_checkpoint, then pass",
    ),
    (
        "send-c-store-without-checkpoint",
        lambda mp: mp.setattr(Association, "send_c_store", _send_c_store_without_checkpoint),
        "Association.send_c_store to clear the checkpoint",
    ),
    (
        "checkpoint-reshaped",
        lambda mp: _after_init(
            Association, mp, lambda a: setattr(a, "_reactor_checkpoint", threading.Lock())
        ),
        "an Association to have a threading.Event _reactor_checkpoint",
    ),
    (
        "msg-queue-simple",
        lambda mp: _after_init(
            _dimse.DIMSEServiceProvider, mp, lambda d: setattr(d, "msg_queue", queue.SimpleQueue())
        ),
        "a queue.Queue dimse.msg_queue",
    ),
    (
        "is-valid-request-gone",
        lambda mp: mp.delattr(_primitives.DIMSEPrimitive, "is_valid_request"),
        "DIMSE primitives to tell a request from a response by is_valid_request",
    ),
]


# -- With pynetdicom as installed ------------------------------------------------------


@pytest.mark.usefixtures("pristine")
def test_real_pynetdicom_gets_every_patch_and_the_log_says_so(
    logs: pytest.LogCaptureFixture,
) -> None:
    before = _snapshot()
    assert _dul_tuning.apply() == ALL_TUNING
    assert _reactor_fix.install() == (RESPONSE_REQUEUE,)
    for patch, original in before.items():
        assert _at(patch) is not original
        assert inspect.unwrap(_at(patch)) is original  # each patch keeps what it replaced
    assert _messages(logs, logging.WARNING) == []
    assert _messages(logs, logging.INFO) == [
        f"pynetdicom {VERSION}: low-latency DUL waits, low-latency association waits, "
        "shallow context copy, single-buffer recv applied",
        f"pynetdicom {VERSION}: reactor response requeue applied",
    ]


@pytest.mark.usefixtures("pristine")
def test_applying_twice_changes_and_logs_nothing_more(logs: pytest.LogCaptureFixture) -> None:
    _dul_tuning.apply()
    _reactor_fix.install()
    patched = _snapshot()
    logs.clear()
    assert _dul_tuning.apply() == ALL_TUNING
    assert _reactor_fix.install() == (RESPONSE_REQUEUE,)
    assert _snapshot() == patched
    assert logs.records == []


# -- With pynetdicom changed -------------------------------------------------------------


@pytest.mark.usefixtures("pristine")
@pytest.mark.parametrize(
    ("differs", "refused", "expectation"),
    [pytest.param(*case[1:], id=case[0]) for case in TUNING_BREAKS],
)
def test_a_tuning_patch_whose_expectation_fails_stays_out(
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    differs: Break,
    refused: str,
    expectation: str,
) -> None:
    differs(monkeypatch)
    before = _snapshot()
    assert _dul_tuning.apply() == tuple(p for p in ALL_TUNING if p != refused)
    assert _at(refused) is before[refused]  # pynetdicom's own object, untouched
    for patch in set(ALL_TUNING) - {refused}:  # the independent ones still go in
        assert inspect.unwrap(_at(patch)) is before[patch]
    (warning,) = _messages(logs, logging.WARNING)
    assert warning.startswith(f"pynetdicom {VERSION}: {refused} not applied, falling back")
    assert expectation in warning


@pytest.mark.usefixtures("pristine")
@pytest.mark.parametrize(
    ("differs", "expectation"),
    [pytest.param(*case[1:], id=case[0]) for case in REACTOR_BREAKS],
)
def test_the_reactor_fix_stays_out_when_an_expectation_fails(
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    differs: Break,
    expectation: str,
) -> None:
    differs(monkeypatch)
    before = _at(RESPONSE_REQUEUE)
    assert _reactor_fix.install() == ()
    assert _at(RESPONSE_REQUEUE) is before
    (warning,) = _messages(logs, logging.WARNING)
    assert warning.startswith(f"pynetdicom {VERSION}: {RESPONSE_REQUEUE} not applied, falling")
    assert expectation in warning
    assert _messages(logs, logging.INFO) == []


@pytest.mark.usefixtures("pristine")
def test_a_refusal_is_decided_once(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_transport, "deepcopy", functools.partial(copy.deepcopy))
    first = _dul_tuning.apply()
    logs.clear()
    assert _dul_tuning.apply() == first
    assert CONTEXT_COPY not in first
    assert logs.records == []


# -- The fallback carries a real association ---------------------------------------------


class _Counted:
    """Counts the calls that went through pynetdicom's own code."""

    def __init__(self) -> None:
        self.recv = 0
        self.serve = 0


def _refuse_everything(monkeypatch: pytest.MonkeyPatch) -> _Counted:
    """Make every expectation fail with stand-ins that keep pynetdicom's behaviour."""
    counted = _Counted()
    recv, serve = AssociationSocket.recv, Association._serve_request

    def recv_with_flags(self: Any, nr_bytes: int, flags: int = 0) -> bytearray:
        counted.recv += 1
        return recv(self, nr_bytes)

    def serve_with_priority(self: Any, msg: Any, context_id: int, priority: int = 0) -> None:
        counted.serve += 1
        serve(self, msg, context_id)

    monkeypatch.setattr(_dul, "time", _clock_stand_in())
    monkeypatch.setattr(_association, "time", _clock_stand_in())
    monkeypatch.setattr(_transport, "deepcopy", functools.partial(copy.deepcopy))
    monkeypatch.setattr(AssociationSocket, "recv", recv_with_flags)
    monkeypatch.setattr(Association, "_serve_request", serve_with_priority)
    return counted


@pytest.fixture
def echo_scp() -> Iterator[int]:
    """A pynetdicom Verification SCP on a free loopback port.

    pynetdicom looks up what the patches replace per association (``deepcopy``
    when it accepts, ``time`` in each new thread), so the SCP may start before
    the test decides which patches go in.
    """
    ae = AE(ae_title="ECHOSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    assert server is not None
    yield port
    server.shutdown()


def _echo_with_dcmtk(port: int) -> None:
    """C-ECHO from DCMTK's echoscu (found by its banner: the venv has pynetdicom's too)."""
    try:
        dcmtk_tool("echoscu")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    done = echoscu(host="127.0.0.1", port=port, called_aet="ECHOSCP", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _echo_with_pynetdicom(port: int) -> None:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOSCP")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


@pytest.mark.usefixtures("pristine")
@pytest.mark.parametrize(
    "client", [_echo_with_dcmtk, _echo_with_pynetdicom], ids=["dcmtk", "pynetdicom"]
)
def test_after_every_patch_is_refused_a_c_echo_still_completes(
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    echo_scp: int,
    client: Callable[[int], None],
) -> None:
    counted = _refuse_everything(monkeypatch)
    before = _snapshot()
    assert _dul_tuning.apply() == ()
    assert _reactor_fix.install() == ()
    assert len(_messages(logs, logging.WARNING)) == len(PATCH_POINTS)
    assert _messages(logs, logging.INFO) == []
    client(echo_scp)
    assert _snapshot() == before
    assert counted.recv > 0 and counted.serve > 0  # the association ran on pynetdicom's code
