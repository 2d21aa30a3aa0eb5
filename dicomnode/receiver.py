"""The DICOM receiver: C-ECHO and C-STORE SCP on the node's port (pynetdicom).

A C-STORE travels: pynetdicom assembles the P-DATA fragments into
``event.request.DataSet`` (raw bytes, never decoded here) ->
:meth:`Receiver.on_c_store` -> :meth:`dicomnode.store.InstanceStore.store`
(validate, fsync, index) -> the DIMSE status goes back. Nothing else runs in
the receiver: assembly, routing and pipelines live in other threads and
processes so a busy model never slows ingest.

Association policy (A-ASSOCIATE-RJ reasons are pynetdicom's):
- called AE title must equal ``node.ae_title`` (reason 7, called AE not recognised);
- calling AE title must be in ``node.allowed_calling_aets`` unless it is empty
  (reason 3, calling AE not recognised);
- at most ``node.max_associations`` at once (reason 2, local limit exceeded).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, cast

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode import _dul_tuning
from dicomnode.config import NodeConfig
from dicomnode.metrics import NodeMetrics
from dicomnode.store import InstanceStore, Provenance, StoreError

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


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


def make_ae(config: NodeConfig) -> AE:
    """A pynetdicom AE with the node's association policy and timeouts."""
    ae = AE(ae_title=config.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    ae.require_called_aet = True
    ae.require_calling_aet = list(config.allowed_calling_aets)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.maximum_pdu_size
    ae.network_timeout = config.network_timeout
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    return ae


class Receiver:
    """The node's DICOM SCP.

    Parameters
    ----------
    config
        ``[node]`` settings.
    store
        Where received instances go.
    metrics
        Counters of instances, bytes and associations (None: not counted).
    """

    def __init__(
        self, config: NodeConfig, store: InstanceStore, metrics: NodeMetrics | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        if metrics is not None:
            metrics.watch_associations(self.open_associations)
        self.ae = make_ae(config)
        self.server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None, "receiver not started"
        return int(self.server.server_address[1])

    def open_associations(self) -> int:
        """Associations open now (0 when stopped)."""
        server = self.server
        return len(server.active_associations) if server is not None else 0

    def listening(self) -> bool:
        """Whether the DICOM port is open (for ``/readyz``)."""
        server = self.server
        return server is not None and server.socket is not None and server.socket.fileno() >= 0

    def start(self) -> None:
        """Start listening in background threads."""
        _dul_tuning.apply()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_ABORTED, self.on_aborted),
            (evt.EVT_CONN_OPEN, _dul_tuning.set_nodelay),
        ]
        self.server = self.ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=server_ssl_context(self.config),
        )
        log.info(
            "receiver listening",
            extra={"ae_title": self.config.ae_title, "port": self.port, "host": self.config.host},
        )

    def stop(self) -> None:
        """Stop accepting and close open associations."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # -- event handlers: each returns quickly and never raises -----------------------

    def on_c_echo(self, event: evt.Event) -> int:
        """C-ECHO: always Success while the node runs."""
        return STATUS_SUCCESS

    def on_c_store(self, event: evt.Event) -> int | Dataset:
        """C-STORE: store durably, then Success; otherwise a failure status and comment."""
        request = cast(C_STORE, event.request)
        raw = request.DataSet.getvalue() if request.DataSet is not None else b""
        requestor = event.assoc.requestor
        provenance = Provenance(
            calling_aet=requestor.ae_title,
            called_aet=event.assoc.acceptor.ae_title,
            host=requestor.address,
        )
        try:
            self.store.store(
                raw,
                str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                provenance=provenance,
            )
        except StoreError as exc:
            log.warning(
                "C-STORE refused: %s",
                exc.message,
                extra={"status": f"0x{exc.status:04X}", "calling_aet": provenance.calling_aet},
            )
            self._count_refused(exc.status)
            return _status(exc.status, exc.message)
        except Exception as exc:  # the node keeps serving whatever one dataset does
            log.exception("C-STORE failed unexpectedly")
            self._count_refused(STATUS_PROCESSING_FAILURE)
            return _status(STATUS_PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")
        if self.metrics is not None:
            self.metrics.received(len(raw))
        return STATUS_SUCCESS

    def _count_refused(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(status=f"0x{status:04X}").inc()

    def _count_association(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.associations.labels(outcome=outcome).inc()

    def on_accepted(self, event: evt.Event) -> None:
        """Log and count accepted associations."""
        self._count_association("accepted")
        requestor = event.assoc.requestor
        log.info(
            "association accepted",
            extra={
                "calling_aet": requestor.ae_title,
                "peer": f"{requestor.address}:{requestor.port}",
            },
        )

    def on_rejected(self, event: evt.Event) -> None:
        """Log and count refused associations, with the reason."""
        self._count_association("rejected")
        requestor = event.assoc.requestor
        log.warning(
            "association rejected: calling AE %r, called AE %r (allowed callers: %s)",
            requestor.ae_title,
            event.assoc.acceptor.ae_title,
            ", ".join(self.config.allowed_calling_aets) or "any",
            extra={"peer": f"{requestor.address}:{requestor.port}"},
        )

    def on_aborted(self, event: evt.Event) -> None:
        """Log and count aborted associations (peer gone, timeouts)."""
        self._count_association("aborted")
        log.warning("association aborted", extra={"calling_aet": event.assoc.requestor.ae_title})
