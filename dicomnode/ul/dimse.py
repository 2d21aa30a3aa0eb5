"""DIMSE command sets (PS3.7 section 9.3 and annex E) the acceptor reads and answers.

Command sets are always Implicit VR Little Endian group 0000 elements; the
few a Storage and Verification SCP needs are decoded and encoded by hand,
which is what makes a C-STORE response cost microseconds instead of a
pydicom dataset round trip.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Command Field values (PS3.7 E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101

_AFFECTED_SOP_CLASS_UID = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
_PRIORITY = 0x00000700
_COMMAND_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_ERROR_COMMENT = 0x00000902
_AFFECTED_SOP_INSTANCE_UID = 0x00001000
_MOVE_ORIGINATOR_AE_TITLE = 0x00001030
_MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031


class CommandError(Exception):
    """A command set that cannot be decoded."""


@dataclass(frozen=True)
class Command:
    """The fields of a request command set the SCP acts on."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    priority: int = 0
    move_originator_ae_title: str = ""
    move_originator_message_id: int | None = None


def _us(value: bytes) -> int:
    if len(value) < 2:
        raise CommandError("a US element is shorter than 2 bytes")
    return int(struct.unpack_from("<H", value, 0)[0])


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """The request fields of an encoded command set.

    Raises
    ------
    CommandError
        An element overruns the command set, or Command Field or Message ID is absent.
    """
    view = memoryview(data)
    values: dict[int, bytes] = {}
    position = 0
    while position + 8 <= len(view):
        group, element, length = struct.unpack_from("<HHI", view, position)
        start = position + 8
        if start + length > len(view):
            raise CommandError(f"element ({group:04X},{element:04X}) overruns the command set")
        values[(group << 16) | element] = bytes(view[start : start + length])
        position = start + length
    if position != len(view):
        raise CommandError("the command set ends inside an element header")
    if _COMMAND_FIELD not in values or _MESSAGE_ID not in values:
        raise CommandError("the command set has no Command Field or Message ID")
    data_set_type = values.get(_COMMAND_DATA_SET_TYPE)
    originator_id = values.get(_MOVE_ORIGINATOR_MESSAGE_ID)
    return Command(
        command_field=_us(values[_COMMAND_FIELD]),
        message_id=_us(values[_MESSAGE_ID]),
        has_data_set=data_set_type is not None and _us(data_set_type) != NO_DATA_SET,
        affected_sop_class_uid=_text(values.get(_AFFECTED_SOP_CLASS_UID, b"")),
        affected_sop_instance_uid=_text(values.get(_AFFECTED_SOP_INSTANCE_UID, b"")),
        priority=_us(values[_PRIORITY]) if _PRIORITY in values else 0,
        move_originator_ae_title=_text(values.get(_MOVE_ORIGINATOR_AE_TITLE, b"")),
        move_originator_message_id=_us(originator_id) if originator_id else None,
    )


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


def _element(tag: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    *,
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
    error_comment: str = "",
) -> bytes:
    """A response command set (no data set) with its Command Group Length, tags ascending."""
    body = b"".join(
        [
            _element(_AFFECTED_SOP_CLASS_UID, sop_class_uid.encode()) if sop_class_uid else b"",
            _element(_COMMAND_FIELD, struct.pack("<H", command_field)),
            _element(_MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", message_id)),
            _element(_COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
            _element(_STATUS, struct.pack("<H", status)),
            # Error Comment is LO: 64 characters, no backslash, space-padded.
            _element(
                _ERROR_COMMENT,
                error_comment.replace("\\", "/")[:64].encode("ascii", "replace"),
                b" ",
            )
            if error_comment
            else b"",
            _element(_AFFECTED_SOP_INSTANCE_UID, sop_instance_uid.encode())
            if sop_instance_uid
            else b"",
        ]
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body
