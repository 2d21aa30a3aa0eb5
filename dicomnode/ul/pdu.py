"""DICOM Upper Layer PDUs (PS3.8 section 9.3): what an acceptor reads and writes.

Only the acceptor's side: an A-ASSOCIATE-RQ is parsed, A-ASSOCIATE-AC/RJ,
P-DATA-TF, A-RELEASE-RP and A-ABORT are encoded. P-DATA-TF PDUs are not
parsed here but streamed by :mod:`dicomnode.ul.association`, so a large
dataset never has to sit in memory. All multi-byte fields are big endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# PDU types (PS3.8 table 9-1 and following).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
PROTOCOL_VERSION = 0x0001

# Item types of the variable part of A-ASSOCIATE-RQ/AC.
_APPLICATION_CONTEXT_ITEM = 0x10
_PRESENTATION_CONTEXT_RQ = 0x20
_PRESENTATION_CONTEXT_AC = 0x21
_ABSTRACT_SYNTAX = 0x30
_TRANSFER_SYNTAX = 0x40
_USER_INFORMATION = 0x50
_MAXIMUM_LENGTH = 0x51
_IMPLEMENTATION_CLASS_UID = 0x52
_ASYNCHRONOUS_OPERATIONS = 0x53
_ROLE_SELECTION = 0x54
_IMPLEMENTATION_VERSION_NAME = 0x55

# Presentation context results (PS3.8 9.3.3.2).
ACCEPTANCE = 0
USER_REJECTION = 1
NO_REASON = 2
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class PDUError(Exception):
    """A PDU that does not follow PS3.8: the association is aborted."""


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class RoleSelection:
    """An SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class AssociateRequest:
    """What an A-ASSOCIATE-RQ proposes."""

    protocol_version: int
    called_ae_title: str
    calling_ae_title: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    maximum_length: int = 0  # the requestor's largest P-DATA-TF it can receive (0: no limit)
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    asynchronous_operations: tuple[int, int] | None = None
    roles: tuple[RoleSelection, ...] = ()


@dataclass(frozen=True)
class AcceptedContext:
    """The acceptor's answer to one proposed presentation context."""

    context_id: int
    result: int
    transfer_syntax: str = ""  # the chosen one, when accepted


@dataclass(frozen=True)
class AssociateAccept:
    """An A-ASSOCIATE-AC."""

    called_ae_title: str
    calling_ae_title: str
    contexts: tuple[AcceptedContext, ...]
    maximum_length: int
    implementation_class_uid: str
    implementation_version_name: str
    roles: tuple[RoleSelection, ...] = field(default=())
    asynchronous_operations: tuple[int, int] | None = None


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def _items(data: bytes, start: int, end: int, length_size: int = 2) -> Iterator[tuple[int, bytes]]:
    """(type, value) of the items between *start* and *end* (type, reserved, length, value)."""
    length_format = ">H" if length_size == 2 else ">I"
    position = start
    while position < end:
        if position + 2 + length_size > end:
            raise PDUError("an item header runs past the end of its PDU")
        item_type = data[position]
        (length,) = struct.unpack_from(length_format, data, position + 2)
        value_start = position + 2 + length_size
        if value_start + length > end:
            raise PDUError(f"item 0x{item_type:02X} is longer than its PDU")
        yield item_type, data[value_start : value_start + length]
        position = value_start + length


def _presentation_context(value: bytes) -> ProposedContext:
    if len(value) < 4:
        raise PDUError("a presentation context item is too short")
    abstract = ""
    transfers = []
    for item_type, sub in _items(value, 4, len(value)):
        if item_type == _ABSTRACT_SYNTAX:
            abstract = _uid(sub)
        elif item_type == _TRANSFER_SYNTAX:
            transfers.append(_uid(sub))
    return ProposedContext(value[0], abstract, tuple(transfers))


def _role(value: bytes) -> RoleSelection:
    (length,) = struct.unpack_from(">H", value, 0)
    if len(value) < 4 + length:
        raise PDUError("a role selection item is too short")
    return RoleSelection(
        _uid(value[2 : 2 + length]), bool(value[2 + length]), bool(value[3 + length])
    )


def parse_associate_request(body: bytes) -> AssociateRequest:
    """An A-ASSOCIATE-RQ from its body (the bytes after the 6-byte PDU header).

    Raises
    ------
    PDUError
        A body too short or with items that overrun it.
    """
    if len(body) < 68:
        raise PDUError("A-ASSOCIATE-RQ is shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    called, calling = _text(body[4:20]), _text(body[20:36])
    application_context = ""
    contexts: list[ProposedContext] = []
    user: dict[str, object] = {}
    roles: list[RoleSelection] = []
    for item_type, value in _items(body, 68, len(body)):
        if item_type == _APPLICATION_CONTEXT_ITEM:
            application_context = _uid(value)
        elif item_type == _PRESENTATION_CONTEXT_RQ:
            contexts.append(_presentation_context(value))
        elif item_type == _USER_INFORMATION:
            for sub_type, sub in _items(value, 0, len(value)):
                if sub_type == _MAXIMUM_LENGTH and len(sub) >= 4:
                    user["maximum_length"] = struct.unpack_from(">I", sub, 0)[0]
                elif sub_type == _IMPLEMENTATION_CLASS_UID:
                    user["implementation_class_uid"] = _uid(sub)
                elif sub_type == _IMPLEMENTATION_VERSION_NAME:
                    user["implementation_version_name"] = _text(sub)
                elif sub_type == _ASYNCHRONOUS_OPERATIONS and len(sub) >= 4:
                    user["asynchronous_operations"] = struct.unpack_from(">HH", sub, 0)
                elif sub_type == _ROLE_SELECTION:
                    roles.append(_role(sub))
    return AssociateRequest(
        protocol_version=version,
        called_ae_title=called,
        calling_ae_title=calling,
        application_context=application_context,
        contexts=tuple(contexts),
        roles=tuple(roles),
        **user,  # type: ignore[arg-type]
    )


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def _user_information(accept: AssociateAccept) -> bytes:
    subs = [
        _item(_MAXIMUM_LENGTH, struct.pack(">I", accept.maximum_length)),
        _item(_IMPLEMENTATION_CLASS_UID, accept.implementation_class_uid.encode()),
    ]
    if accept.asynchronous_operations is not None:
        subs.append(
            _item(_ASYNCHRONOUS_OPERATIONS, struct.pack(">HH", *accept.asynchronous_operations))
        )
    for role in accept.roles:
        uid = role.sop_class_uid.encode()
        subs.append(
            _item(
                _ROLE_SELECTION,
                struct.pack(">H", len(uid)) + uid + bytes([role.scu_role, role.scp_role]),
            )
        )
    subs.append(_item(_IMPLEMENTATION_VERSION_NAME, accept.implementation_version_name.encode()))
    return _item(_USER_INFORMATION, b"".join(subs))


def encode_associate_accept(accept: AssociateAccept) -> bytes:
    """An A-ASSOCIATE-AC PDU."""
    fixed = (
        struct.pack(">HH", PROTOCOL_VERSION, 0)
        + _ae(accept.called_ae_title)
        + _ae(accept.calling_ae_title)
        + bytes(32)
    )
    contexts = [
        _item(
            _PRESENTATION_CONTEXT_AC,
            bytes([c.context_id, 0, c.result, 0])
            + _item(_TRANSFER_SYNTAX, c.transfer_syntax.encode()),
        )
        for c in accept.contexts
    ]
    body = (
        fixed
        + _item(_APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT.encode())
        + b"".join(contexts)
        + _user_information(accept)
    )
    return _pdu(A_ASSOCIATE_AC, body)


def encode_associate_reject(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 table 9-21)."""
    return _pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_response() -> bytes:
    """An A-RELEASE-RP PDU."""
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    """An A-ABORT PDU; source 2 is the service provider (us, on a protocol problem)."""
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def encode_p_data(context_id: int, fragments: Iterable[tuple[int, bytes]]) -> bytes:
    """One P-DATA-TF PDU with one PDV per ``(message control header, fragment)``."""
    pdvs = b"".join(
        struct.pack(">IBB", len(data) + 2, context_id, control) + data
        for control, data in fragments
    )
    return _pdu(P_DATA_TF, pdvs)
