"""The DICOM receiver: C-ECHO and C-STORE SCP on the node's port.

A C-STORE travels: the Upper Layer acceptor (:mod:`dicomnode.ul`) reads the
command set, asks :meth:`Receiver.store` for a sink, and streams the data set
from the socket into it chunk by chunk (:class:`dicomnode.store.IncomingInstance`:
a file under ``tmp/``, never the whole object in memory) -> when the last
fragment is in, the store scans the header, renames the file into place,
fsyncs it and commits its row -> only then does the DIMSE status go back.
Nothing else runs in the receiver: assembly, routing and pipelines live in
other threads and processes so a busy model never slows ingest.

Association policy (A-ASSOCIATE-RJ result/source/reason, PS3.8 table 9-21):
- called AE title must equal ``node.ae_title`` (1/1/7, called AE not recognised);
- calling AE title must be in ``node.allowed_calling_aets`` unless it is empty
  (1/1/3, calling AE not recognised);
- at most ``node.max_associations`` at once, node-wide when several receiver
  processes share the port (2/3/2, local limit exceeded).

Presentation contexts: every storage SOP class pynetdicom knows and
Verification, in every transfer syntax pynetdicom lists; the first transfer
syntax the requestor proposes that is among them is accepted, and the data
set is stored in it as received.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Protocol

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

from dicomnode.config import NodeConfig
from dicomnode.store import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IncomingInstance,
    InstanceStore,
    Provenance,
    StoreError,
)
from dicomnode.ul import dimse, pdu
from dicomnode.ul.association import Association, Peer, Rejection, Timeouts
from dicomnode.ul.server import Server, listening_socket
from dicomnode.wakeups import ARRIVALS, Wakeups

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
VERIFICATION = "1.2.840.10008.1.1"
SUPPORTED_ABSTRACT_SYNTAXES = frozenset(
    [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts] + [VERIFICATION]
)
SUPPORTED_TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)

# A-ASSOCIATE-RJ (result, source, reason).
CALLED_AE_NOT_RECOGNISED = (1, 1, 7)
CALLING_AE_NOT_RECOGNISED = (1, 1, 3)
APPLICATION_CONTEXT_NOT_SUPPORTED = (1, 1, 2)
PROTOCOL_VERSION_NOT_SUPPORTED = (1, 2, 2)
LOCAL_LIMIT_EXCEEDED = (2, 3, 2)


class ReceiverStats(Protocol):
    """Association slots and counters of a receiver (:class:`dicomnode.receivers.ReceiverRow`).

    Slots are node-wide (``node.max_associations`` over every receiver
    process); the counters feed ``/metrics``.
    """

    def acquire(self) -> bool:
        """Take an association slot; False when the node-wide limit is reached."""

    def release(self) -> None:
        """Give a slot back."""

    def count(self) -> int:
        """Associations open now, node-wide."""

    def received(self, size: int) -> None:
        """One instance stored and acknowledged."""

    def refused(self, status: int) -> None:
        """One C-STORE answered with failure *status*."""

    def association(self, outcome: str) -> None:
        """One association accepted, rejected or aborted."""


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The TLS context for the listening socket, or None when TLS is off."""
    tls = config.tls
    if not tls.enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        ctx.load_verify_locations(str(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    return ctx


class _StoreSink:
    """A C-STORE's data set on its way into the store; DIMSE status and metrics at the end."""

    def __init__(self, incoming: IncomingInstance, receiver: Receiver) -> None:
        self.incoming = incoming
        self.receiver = receiver

    def write(self, data: memoryview) -> None:
        self.incoming.write(data)

    def discard(self) -> None:
        self.incoming.discard()

    def finish(self) -> tuple[int, str]:
        calling = self.incoming.provenance.calling_aet
        try:
            self.incoming.finish()
        except StoreError as exc:
            log.warning(
                "C-STORE refused: %s",
                exc.message,
                extra={"status": f"0x{exc.status:04X}", "calling_aet": calling},
            )
            self.receiver.stats.refused(exc.status)
            return exc.status, exc.message
        except Exception as exc:  # the node keeps serving whatever one dataset does
            log.exception("C-STORE failed unexpectedly")
            self.receiver.stats.refused(STATUS_PROCESSING_FAILURE)
            return STATUS_PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"
        self.receiver.stats.received(self.incoming.size)
        if self.receiver.wakeups is not None:
            self.receiver.wakeups.ring(ARRIVALS)  # assembly: the study's quiet time starts again
        return STATUS_SUCCESS, ""


class Receiver:
    """The node's DICOM SCP (the :class:`dicomnode.ul.association.Application` of each association).

    Parameters
    ----------
    config
        ``[node]`` settings.
    store
        Where received instances go.
    stats
        Association slots and counters (a row of the node's receiver table).
    reuse_port
        Listen with ``SO_REUSEPORT``, beside the node's other receiver processes.
    wakeups
        Rung (``ARRIVALS``) after each stored instance.
    """

    def __init__(
        self,
        config: NodeConfig,
        store: InstanceStore,
        stats: ReceiverStats,
        *,
        reuse_port: bool = False,
        wakeups: Wakeups | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.stats = stats
        self.reuse_port = reuse_port
        self.wakeups = wakeups
        self.timeouts = Timeouts(config.acse_timeout, config.network_timeout, config.dimse_timeout)
        self.server: Server | None = None
        self._holding: set[int] = set()  # id() of the peers that hold a slot
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None, "receiver not started"
        return self.server.port

    def open_associations(self) -> int:
        """Associations open now, node-wide."""
        return self.stats.count()

    def listening(self) -> bool:
        """Whether the DICOM port is open (for ``/readyz``)."""
        return self.server is not None and self.server.listening()

    def start(self) -> None:
        """Start listening in background threads."""
        sock = listening_socket(self.config.host, self.config.port, reuse_port=self.reuse_port)
        self.server = Server(
            sock,
            self._serve,
            ssl_context=server_ssl_context(self.config),
            handshake_timeout=self.config.acse_timeout,
        )
        self.server.start()
        log.info(
            "receiver listening",
            extra={"ae_title": self.config.ae_title, "port": self.port, "host": self.config.host},
        )

    def stop(self) -> None:
        """Stop accepting and close open associations."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _serve(self, sock: socket.socket, address: tuple[str, int]) -> None:
        Association(
            sock,
            address,
            self,
            self.timeouts,
            self.config.maximum_pdu_size,
            (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME),
        ).run()

    # -- the association's questions: each returns quickly and never raises -----------

    def review(self, peer: Peer, request: pdu.AssociateRequest) -> Rejection | None:
        """Accept, or reject with the standard reason (see the module docstring)."""
        allowed = self.config.allowed_calling_aets
        if request.protocol_version & 0x0001 == 0:
            return Rejection(*PROTOCOL_VERSION_NOT_SUPPORTED, "protocol version not supported")
        if request.application_context != pdu.APPLICATION_CONTEXT:
            return Rejection(
                *APPLICATION_CONTEXT_NOT_SUPPORTED,
                f"application context {request.application_context!r} not supported",
            )
        if request.called_ae_title != self.config.ae_title:
            return Rejection(
                *CALLED_AE_NOT_RECOGNISED, f"called AE {request.called_ae_title!r} is not ours"
            )
        if allowed and request.calling_ae_title not in allowed:
            return Rejection(
                *CALLING_AE_NOT_RECOGNISED,
                f"calling AE {request.calling_ae_title!r} is not allowed "
                f"(allowed callers: {', '.join(allowed)})",
            )
        if not self.stats.acquire():
            return Rejection(
                *LOCAL_LIMIT_EXCEEDED, f"{self.config.max_associations} associations are open"
            )
        with self._lock:  # the slot is this peer's until ended()
            self._holding.add(id(peer))
        return None

    def negotiate(self, proposed: pdu.ProposedContext) -> pdu.AcceptedContext:
        """Accept a storage or Verification context in the first transfer syntax we take."""
        if proposed.abstract_syntax not in SUPPORTED_ABSTRACT_SYNTAXES:
            return pdu.AcceptedContext(proposed.context_id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED)
        for syntax in proposed.transfer_syntaxes:
            if syntax in SUPPORTED_TRANSFER_SYNTAXES:
                return pdu.AcceptedContext(proposed.context_id, pdu.ACCEPTANCE, syntax)
        return pdu.AcceptedContext(proposed.context_id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED)

    def opened(self, peer: Peer) -> None:
        """Log and count an accepted association."""
        self._count_association("accepted")
        log.info(
            "association accepted",
            extra={"calling_aet": peer.calling_ae_title, "peer": f"{peer.address}:{peer.port}"},
        )

    def ended(self, peer: Peer | None, outcome: str, detail: str) -> None:
        """Give the slot back; log and count rejections and aborts."""
        if peer is not None:
            with self._lock:
                held = id(peer) in self._holding
                self._holding.discard(id(peer))
            if held:
                self.stats.release()
        if outcome == "rejected":
            self._count_association("rejected")
            log.warning(
                "association rejected: %s",
                detail,
                extra={"peer": f"{peer.address}:{peer.port}" if peer else "?"},
            )
        elif outcome in ("aborted", "closed"):
            self._count_association("aborted")
            log.warning(
                "association aborted: %s",
                detail or outcome,
                extra={"calling_aet": peer.calling_ae_title if peer else None},
            )

    def echo(self, peer: Peer) -> int:
        """C-ECHO: always Success while the node runs."""
        return STATUS_SUCCESS

    def receive(self, peer: Peer, command: dimse.Command, transfer_syntax: str) -> _StoreSink:
        """A sink streaming the C-STORE's data set into the store."""
        provenance = Provenance(
            calling_aet=peer.calling_ae_title, called_aet=peer.called_ae_title, host=peer.address
        )
        incoming = self.store.receive(
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid,
            transfer_syntax,
            provenance,
        )
        return _StoreSink(incoming, self)

    def _count_association(self, outcome: str) -> None:
        self.stats.association(outcome)
