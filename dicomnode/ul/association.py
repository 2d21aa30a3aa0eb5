"""One accepted association: negotiation, then DIMSE messages streamed to the application.

The thread that accepted a connection runs :meth:`Association.run` to its end:

1. read the A-ASSOCIATE-RQ (within ``acse_timeout``), ask the application
   whether to accept it (:meth:`Application.review`: called and calling AE
   titles, the node-wide association limit), answer A-ASSOCIATE-AC or -RJ;
2. read P-DATA-TF PDUs (each within ``network_timeout``). Command fragments
   are collected (they are small); dataset fragments go straight from the
   socket into the application's :class:`DataSink` in bounded chunks, so a
   1 GiB multi-frame object costs no more memory than a CT slice;
3. when a message is complete, the application answers it (C-STORE: the
   instance is durable and indexed by then) and the response goes back;
4. A-RELEASE-RQ is answered and the connection closed (the application
   hears the association is over just before the A-RELEASE-RP goes out, so a
   peer that opens its next association at once finds its slot free); an A-ABORT, a peer
   that goes away, a timeout or a protocol error ends it too, and whatever
   was half received is discarded (it was never acknowledged).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from dicomnode.ul import dimse, pdu

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # dataset bytes read from the socket at a time
MAX_COMMAND = 1024 * 1024  # a command set is a few hundred bytes; more is not DICOM
MAX_ASSOCIATE_RQ = 4 * 1024 * 1024  # 128 contexts x many transfer syntaxes fit easily
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class AssociationEnded(Exception):
    """The association is over (released, aborted, closed, timed out or broken)."""

    def __init__(self, outcome: str, detail: str = "") -> None:
        super().__init__(detail or outcome)
        self.outcome = outcome  # "released", "aborted" or "closed"
        self.detail = detail


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result, source and reason (PS3.8 table 9-21) and why, for the log."""

    result: int
    source: int
    reason: int
    why: str


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of an association."""

    calling_ae_title: str
    called_ae_title: str
    address: str
    port: int


class DataSink(Protocol):
    """Where the data set of one C-STORE-RQ goes while it arrives."""

    def write(self, data: memoryview) -> None:
        """Take the next bytes of the data set."""

    def finish(self) -> tuple[int, str]:
        """The data set is complete: keep it durably and return (DIMSE status, error comment)."""

    def discard(self) -> None:
        """The association ended before the data set was complete: drop what arrived."""


class Application(Protocol):
    """What the acceptor asks of the node (the receiver implements it)."""

    def review(self, peer: Peer, request: pdu.AssociateRequest) -> Rejection | None:
        """None to accept the association, else how to reject it."""

    def negotiate(self, proposed: pdu.ProposedContext) -> pdu.AcceptedContext:
        """The answer to one proposed presentation context."""

    def echo(self, peer: Peer) -> int:
        """The status of a C-ECHO."""

    def receive(self, peer: Peer, command: dimse.Command, transfer_syntax: str) -> DataSink:
        """A sink for the data set of a C-STORE-RQ on a context of *transfer_syntax*."""

    def opened(self, peer: Peer) -> None:
        """The association was accepted (A-ASSOCIATE-AC sent)."""

    def ended(self, peer: Peer | None, outcome: str, detail: str) -> None:
        """The association is over: *outcome* is rejected, released, aborted or closed."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds the acceptor waits.

    Attributes
    ----------
    acse
        For the A-ASSOCIATE-RQ after the connection opens.
    network
        For the next PDU while no message is in progress (an idle association).
    dimse
        For the next PDU of a message that has begun.
    """

    acse: float
    network: float
    dimse: float


@dataclass
class _Message:
    """A DIMSE message being received on one presentation context."""

    context_id: int
    command_bytes: bytearray
    command: dimse.Command | None = None
    sink: DataSink | None = None


class Association:
    """One connection from a requestor, served by the thread that calls :meth:`run`.

    Parameters
    ----------
    sock
        The accepted (and, for TLS, wrapped) socket.
    address
        The requestor's (host, port).
    application
        The node's side of the association.
    timeouts
        ACSE and network timeouts.
    maximum_length
        The largest P-DATA-TF PDU we accept (0: no limit), announced in the A-ASSOCIATE-AC.
    implementation
        Our Implementation Class UID and Version Name.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        application: Application,
        timeouts: Timeouts,
        maximum_length: int,
        implementation: tuple[str, str],
    ) -> None:
        self.sock = sock
        self.address = address
        self.application = application
        self.timeouts = timeouts
        self.maximum_length = maximum_length
        self.implementation = implementation
        self.peer: Peer | None = None
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self.peer_maximum_length = 0
        self._buffer = bytearray(CHUNK)
        self._ended = False

    # -- the socket ---------------------------------------------------------------------

    def _recv_into(self, view: memoryview) -> None:
        while view:
            try:
                count = self.sock.recv_into(view)
            except TimeoutError:
                raise AssociationEnded("aborted", "network timeout: the peer went silent") from None
            except OSError as exc:
                raise AssociationEnded("aborted", f"connection lost: {exc}") from None
            if not count:
                raise AssociationEnded("closed", "the peer closed the connection")
            view = view[count:]

    def _read(self, count: int) -> bytes:
        data = bytearray(count)
        self._recv_into(memoryview(data))
        return bytes(data)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AssociationEnded("aborted", f"connection lost while sending: {exc}") from None

    def _ack_now(self) -> None:
        """Acknowledge what arrived at once, before waiting for the next PDU.

        Most senders write a C-STORE's command and its data set as separate
        PDUs without ``TCP_NODELAY`` (pynetdicom, and DCMTK unless its
        environment sets it): Nagle holds the data set until the command is
        acknowledged, and Linux's delayed ACK waits up to 40 ms for data to
        carry it, which never comes while we wait for the data set. Measured,
        that was ~43 ms of the ~51 ms of every instance pynetdicom sent. Linux
        sends a pending ACK when ``TCP_QUICKACK`` is set; it is not sticky, so
        it is set before every PDU.
        """
        if _TCP_QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)

    def _pdu_header(self) -> tuple[int, int]:
        header = self._read(6)
        pdu_type, _, length = struct.unpack(">BBI", header)
        return pdu_type, length

    # -- the association ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve the association to its end; never raises."""
        outcome, detail = "closed", ""
        try:
            self.sock.settimeout(self.timeouts.acse)
            rejection = self._associate()
            if rejection is not None:
                outcome, detail = "rejected", rejection.why
                return
            assert self.peer is not None
            self.application.opened(self.peer)
            self._serve()
        except AssociationEnded as ended:
            outcome, detail = ended.outcome, ended.detail
            if outcome == "aborted" and "A-ABORT" not in detail:
                # Tell the peer, when it can still hear us, that we let go.
                with contextlib.suppress(OSError):
                    self.sock.sendall(pdu.encode_abort())
        except (pdu.PDUError, dimse.CommandError) as exc:
            outcome, detail = "aborted", f"protocol error: {exc}"
            with contextlib.suppress(OSError):
                self.sock.sendall(pdu.encode_abort(2, 0))
        except Exception:  # the node keeps serving whatever one peer does
            log.exception("association failed unexpectedly")
            outcome, detail = "aborted", "internal error"
        finally:
            with contextlib.suppress(OSError):
                self.sock.close()
            self._end(outcome, detail)

    def _end(self, outcome: str, detail: str = "") -> None:
        """Tell the application the association is over, once."""
        if not self._ended:
            self._ended = True
            self.application.ended(self.peer, outcome, detail)

    def _associate(self) -> Rejection | None:
        pdu_type, length = self._pdu_header()
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise pdu.PDUError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
        if length > MAX_ASSOCIATE_RQ:
            raise pdu.PDUError(f"A-ASSOCIATE-RQ of {length} bytes")
        request = pdu.parse_associate_request(self._read(length))
        self.peer = Peer(request.calling_ae_title, request.called_ae_title, *self.address)
        rejection = self.application.review(self.peer, request)
        if rejection is not None:
            self._send(
                pdu.encode_associate_reject(rejection.result, rejection.source, rejection.reason)
            )
            return rejection
        accepted = [self.application.negotiate(c) for c in request.contexts]
        for proposed, answer in zip(request.contexts, accepted, strict=True):
            if answer.result == pdu.ACCEPTANCE:
                self.contexts[answer.context_id] = (
                    proposed.abstract_syntax,
                    answer.transfer_syntax,
                )
        self.peer_maximum_length = request.maximum_length
        accepted_classes = {self.contexts[c][0] for c in self.contexts}
        self._send(
            pdu.encode_associate_accept(
                pdu.AssociateAccept(
                    called_ae_title=request.called_ae_title,
                    calling_ae_title=request.calling_ae_title,
                    contexts=tuple(accepted),
                    maximum_length=self.maximum_length,
                    implementation_class_uid=self.implementation[0],
                    implementation_version_name=self.implementation[1],
                    # The requestor stays SCU; we never act as SCU for it (no C-GET here).
                    roles=tuple(
                        pdu.RoleSelection(r.sop_class_uid, r.scu_role, False)
                        for r in request.roles
                        if r.sop_class_uid in accepted_classes
                    ),
                    asynchronous_operations=(1, 1) if request.asynchronous_operations else None,
                )
            )
        )
        return None

    def _serve(self) -> None:
        message: _Message | None = None
        try:
            while True:
                self.sock.settimeout(
                    self.timeouts.network if message is None else self.timeouts.dimse
                )
                self._ack_now()
                pdu_type, length = self._pdu_header()
                if pdu_type == pdu.P_DATA_TF:
                    message = self._p_data(length, message)
                elif pdu_type == pdu.A_RELEASE_RQ:
                    self._read(length)
                    # Over for the application (its slot given back) before the peer hears
                    # it is: the peer may open its next association the moment it does.
                    self._end("released")
                    self._send(pdu.encode_release_response())
                    raise AssociationEnded("released")
                elif pdu_type == pdu.A_ABORT:
                    self._read(min(length, 16))
                    raise AssociationEnded("aborted", "the peer sent A-ABORT")
                else:
                    raise pdu.PDUError(f"unexpected PDU type 0x{pdu_type:02X} on an association")
        finally:
            if message is not None and message.sink is not None:
                message.sink.discard()

    def _p_data(self, length: int, message: _Message | None) -> _Message | None:
        """Consume one P-DATA-TF PDU; return the message still in progress, if any."""
        if self.maximum_length and length > self.maximum_length:
            raise pdu.PDUError(
                f"P-DATA-TF of {length} bytes, more than the {self.maximum_length} agreed"
            )
        left = length
        while left:
            if left < 6:
                raise pdu.PDUError("a PDV header runs past the end of its P-DATA-TF")
            item_length, context_id, control = struct.unpack(">IBB", self._read(6))
            left -= 6
            size = item_length - 2
            if size < 0 or size > left:
                raise pdu.PDUError("a PDV runs past the end of its P-DATA-TF")
            left -= size
            if context_id not in self.contexts:
                raise pdu.PDUError(f"presentation context {context_id} was not accepted")
            if message is None:
                message = _Message(context_id, bytearray())
            elif message.context_id != context_id:
                raise pdu.PDUError("a message switches presentation context midway")
            if control & 0x01:
                message = self._command_fragment(message, size, bool(control & 0x02))
            else:
                message = self._data_fragment(message, size, bool(control & 0x02))
        return message

    def _command_fragment(self, message: _Message, size: int, last: bool) -> _Message | None:
        if message.command is not None:
            raise pdu.PDUError("a command fragment after the command set was complete")
        if len(message.command_bytes) + size > MAX_COMMAND:
            raise pdu.PDUError("a command set larger than 1 MiB")
        message.command_bytes += self._read(size)
        if not last:
            return message
        message.command = dimse.decode_command(message.command_bytes)
        if not message.command.has_data_set:
            self._answer(message)
            return None
        if message.command.command_field == dimse.C_STORE_RQ:
            _, transfer_syntax = self.contexts[message.context_id]
            assert self.peer is not None
            message.sink = self.application.receive(self.peer, message.command, transfer_syntax)
        return message

    def _data_fragment(self, message: _Message, size: int, last: bool) -> _Message | None:
        if message.command is None:
            raise pdu.PDUError("a data set fragment before its command set")
        buffer = memoryview(self._buffer)
        while size:
            chunk = buffer[: min(size, CHUNK)]
            self._recv_into(chunk)
            if message.sink is not None:
                message.sink.write(chunk)
            size -= len(chunk)
        if not last:
            return message
        self._answer(message)
        return None

    def _answer(self, message: _Message) -> None:
        command = message.command
        assert command is not None and self.peer is not None
        abstract, _ = self.contexts[message.context_id]
        if command.command_field == dimse.C_ECHO_RQ:
            status, comment, field = self.application.echo(self.peer), "", dimse.C_ECHO_RSP
        elif command.command_field == dimse.C_STORE_RQ and message.sink is not None:
            sink, message.sink = message.sink, None
            (status, comment), field = sink.finish(), dimse.C_STORE_RSP
        else:
            raise pdu.PDUError(f"DIMSE command 0x{command.command_field:04X} is not served here")
        response = dimse.encode_response(
            field,
            command.message_id,
            status,
            sop_class_uid=command.affected_sop_class_uid or abstract,
            sop_instance_uid=command.affected_sop_instance_uid,
            error_comment=comment,
        )
        self._send_command(message.context_id, response)

    def _send_command(self, context_id: int, command: bytes) -> None:
        """The command set in as many PDUs as the requestor's maximum length asks for."""
        room = self.peer_maximum_length - 6 if self.peer_maximum_length else len(command)
        room = max(room, 1)
        pieces = [command[i : i + room] for i in range(0, len(command), room)] or [b""]
        for n, piece in enumerate(pieces):
            control = 0x03 if n == len(pieces) - 1 else 0x01
            self._send(pdu.encode_p_data(context_id, [(control, piece)]))
