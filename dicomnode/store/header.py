"""What the node reads from a received dataset: UIDs, routing attributes, file meta.

UIDs become folder and file names, so each is checked against the UID
grammar (PS3.5 9.1) before anything touches the disk. The header is read
from the raw bytes without decoding pixel data: a scan of the element headers
checks every length (a truncated data set is refused, not stored) and keeps
only the elements the index needs, which pydicom then decodes, by tag rather
than keyword (keyword lookups dominate the ingest path otherwise). The File
Meta Information written in front of the stored dataset is encoded by hand
for the same reason; that of a whole Part 10 file received (a STOW-RS part)
is read by hand from its first bytes, before the data set arrives.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode import __version__
from dicomnode.store.errors import InvalidFileMeta, InvalidUID, StoreError, UnreadableDataset

# A 2.25 (UUID-derived) UID: ours without registering an org root (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.308984858765460496973767668715525361296"
IMPLEMENTATION_VERSION_NAME = f"DICOMNODE_{__version__}"[:16]

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")

# Keywords kept per series so routes can match without reading files again.
ROUTING_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
    "ImageType",
    "SliceThickness",
    "PixelSpacing",
    "Rows",
    "Columns",
    "Manufacturer",
    "ScanningSequence",
    "SequenceVariant",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "ContrastBolusAgent",
    "Laterality",
    "ImageLaterality",
    "SeriesNumber",
)


def is_valid_uid(value: object) -> bool:
    """Whether *value* is a DICOM UID: digits and dots, no leading zeros, <= 64 chars."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def require_uid(value: object, name: str) -> str:
    """*value* if it is a valid UID, else :class:`InvalidUID` naming the attribute."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUID(f"{name} {shown} is not a valid DICOM UID")
    return str(value)


@dataclass(frozen=True)
class InstanceHeader:
    """What the index needs from one dataset, read without its pixel data."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    instance_number: int | None
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)


def _json_value(value: Any) -> Any:
    """A JSON-friendly copy of a pydicom element value (DS/IS become float/int)."""
    if value is None or isinstance(value, bytes):
        return None
    if isinstance(value, list | tuple | MultiValue):
        return [_json_value(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def parse_header(
    raw: bytes | bytearray | memoryview | mmap.mmap,
    transfer_syntax: str,
    keywords: Iterable[str] = ROUTING_KEYWORDS,
    *,
    start: int = 0,
) -> InstanceHeader:
    """Read UIDs and routing attributes from the encoded data set in *raw*[*start*:].

    *raw* may be a memory map of a file being received (:mod:`dicomnode.store.incoming`):
    the scan reads element headers and the few values it needs, never the
    pixel data, so a 1 GiB object costs no more to check than a CT slice.

    Raises
    ------
    UnreadableDataset
        When the bytes do not parse as a data set of *transfer_syntax*, or are truncated.
    InvalidUID
        When a UID the node stores by is missing or malformed.
    """
    ts = UID(transfer_syntax)
    try:
        data: Any = raw
        if ts == DeflatedExplicitVRLittleEndian:
            data, start = zlib.decompress(bytes(raw[start:]), -zlib.MAX_WBITS), 0
        implicit = ts == ImplicitVRLittleEndian
        little = ts != "1.2.840.10008.1.2.2"
        scanner = _Scanner(data, implicit, little)
        found = scanner.top_level(start, _wanted_tags(tuple(keywords)))
        return _header(_ScannedValues(data, found, scanner.implicit, little), keywords)
    except StoreError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage values
        raise UnreadableDataset(f"dataset cannot be parsed: {exc}") from None


# Value lengths above this are 4-byte fields in explicit VR (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ALWAYS = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
_HEADER_KEYWORDS = (
    *_ALWAYS,
    "SeriesInstanceUID",
    "InstanceNumber",
    "PatientID",
    "PatientName",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
)


@lru_cache(maxsize=32)
def _wanted_tags(keywords: tuple[str, ...]) -> frozenset[int]:
    return frozenset(_tag(k) for k in (*_HEADER_KEYWORDS, *keywords))


class _Scanner:
    """Walks the element headers of an encoded data set (PS3.5 7.1), checking every length.

    Values are skipped by their length; sequences and encapsulated pixel data
    of undefined length are walked item by item to their delimiter, so a
    truncated data set is found wherever it ends. Only top-level elements whose
    tag is wanted are kept, as (VR, length, value offset).
    """

    def __init__(self, data: Any, implicit: bool, little: bool) -> None:
        self.data = data
        self.end = len(data)
        self.implicit = implicit
        order = "<" if little else ">"
        self.tag_format, self.u16, self.u32 = f"{order}HH", f"{order}H", f"{order}I"

    def _element(self, position: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at *position*."""
        if position + 8 > self.end:
            raise UnreadableDataset(
                f"dataset is truncated: an element header at byte {position} needs 8 bytes, "
                f"{self.end - position} are left"
            )
        group, element = struct.unpack_from(self.tag_format, self.data, position)
        tag = (group << 16) | element
        if self.implicit or group == 0xFFFE:  # items and delimiters: tag + 4-byte length
            return tag, None, struct.unpack_from(self.u32, self.data, position + 4)[0], position + 8
        vr = bytes(self.data[position + 4 : position + 6])
        if vr in _LONG_VRS:
            if position + 12 > self.end:
                raise UnreadableDataset(f"dataset is truncated inside element {_shown(tag)}")
            return tag, vr, struct.unpack_from(self.u32, self.data, position + 8)[0], position + 12
        return tag, vr, struct.unpack_from(self.u16, self.data, position + 6)[0], position + 8

    def _skip(self, tag: int, length: int, value: int) -> int:
        if value + length > self.end:
            raise UnreadableDataset(
                f"dataset is truncated: element {_shown(tag)} needs {length} bytes, "
                f"{self.end - value} are left"
            )
        return value + length

    def _guess_encoding(self, start: int) -> None:
        """Read implicit VR when the first element has no VR (as pydicom does).

        Some senders encode a data set in implicit VR on an explicit VR
        context; pydicom reads it with a warning, so the node keeps it too.
        """
        if not self.implicit and start + 6 <= self.end:
            vr = bytes(self.data[start + 4 : start + 6])
            if not (vr.isalpha() and vr.isupper()):
                self.implicit = True

    def top_level(
        self, start: int, wanted: frozenset[int]
    ) -> dict[int, tuple[bytes | None, int, int]]:
        """The wanted top-level elements of the data set from *start* to the end."""
        found: dict[int, tuple[bytes | None, int, int]] = {}
        self._guess_encoding(start)
        position = start
        while position < self.end:
            tag, vr, length, value = self._element(position)
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise UnreadableDataset(
                    f"dataset has a stray item tag {_shown(tag)} at the top level"
                )
            if length == _UNDEFINED:
                position = self._sequence(value)
                continue
            position = self._skip(tag, length, value)
            if tag in wanted:
                found[tag] = (vr, length, value)
        return found

    def _sequence(self, position: int) -> int:
        """Past the delimiter of a sequence (or encapsulated pixel data) of undefined length."""
        while True:
            tag, _, length, value = self._element(position)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise UnreadableDataset(f"a sequence holds {_shown(tag)} where an item should be")
            position = self._item(value) if length == _UNDEFINED else self._skip(tag, length, value)

    def _item(self, position: int) -> int:
        """Past the delimiter of an item of undefined length."""
        while True:
            tag, _, length, value = self._element(position)
            if tag == _ITEM_END:
                return value
            position = (
                self._sequence(value) if length == _UNDEFINED else self._skip(tag, length, value)
            )


def _shown(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


Getter = Callable[[str], Any]

# How pydicom splits and trims each text VR (pydicom.values): the whole value
# right-stripped then split; split then each value right-stripped; split then
# each value stripped both sides; or one value, right-stripped.
_STRIP_WHOLE = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "PN"})
_STRIP_EACH_END = frozenset({"SH", "LO", "UC"})
_STRIP_EACH = frozenset({"AE"})
_SINGLE_TEXT = frozenset({"LT", "ST", "UR", "UT"})
_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_UNDECODED = object()


class _ScannedValues:
    """Values of the scanned elements by keyword, decoded as pydicom would decode them.

    The common cases are decoded here (ASCII text, DS/IS numbers, US and
    other binary numbers): pydicom's general conversion, with its value
    validation, costs more than the rest of the ingest path. Anything else
    (non-ASCII text under a Specific Character Set, other VRs) goes to pydicom.
    """

    def __init__(
        self,
        data: Any,
        found: dict[int, tuple[bytes | None, int, int]],
        implicit: bool,
        little: bool,
    ) -> None:
        self.data = data
        self.found = found
        self.implicit = implicit
        self.order = "<" if little else ">"
        self._fallback: Dataset | None = None

    def __call__(self, keyword: str) -> Any:
        tag = _tag(keyword)
        if tag not in self.found:
            return None
        vr_bytes, length, offset = self.found[tag]
        vr = vr_bytes.decode("ascii") if vr_bytes else _dictionary_vr(tag)
        decoded = _decode(vr, bytes(self.data[offset : offset + length]), self.order)
        if decoded is not _UNDECODED:
            return decoded
        return self._pydicom()[tag].value

    def _pydicom(self) -> Dataset:
        """The scanned elements as a pydicom Dataset (it decodes what :func:`_decode` does not)."""
        if self._fallback is None:
            self._fallback = Dataset(
                {
                    BaseTag(tag): RawDataElement(
                        BaseTag(tag),
                        vr.decode("ascii") if vr else None,
                        length,
                        bytes(self.data[value : value + length]),
                        value,
                        self.implicit,
                        self.order == "<",
                    )
                    for tag, (vr, length, value) in self.found.items()
                }
            )
        return self._fallback


@lru_cache(maxsize=512)
def _dictionary_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _decode(vr: str, raw: bytes, order: str) -> Any:
    """The value pydicom gives for *raw* of *vr*, or ``_UNDECODED`` when only pydicom can tell.

    ``tests/test_store.py`` checks the two agree on every local pydicom test file.
    """
    if vr in _BINARY:
        size = struct.calcsize(_BINARY[vr])
        if len(raw) % size:
            return _UNDECODED
        values = list(struct.unpack(f"{order}{len(raw) // size}{_BINARY[vr]}", raw))
        return None if not values else values[0] if len(values) == 1 else values
    if not raw.isascii() or b"\x1b" in raw:  # character sets, ISO 2022 escapes: pydicom's job
        return _UNDECODED
    text = raw.decode("ascii")
    if vr in _SINGLE_TEXT:
        return text.rstrip("\x00 ")
    if vr in _STRIP_WHOLE:
        parts = text.rstrip(" \x00").split("\\")
    elif vr in _STRIP_EACH_END:
        parts = [p.rstrip("\x00 ") for p in text.split("\\")]
    elif vr in _STRIP_EACH:
        parts = [p.strip() for p in text.split("\\")]
    elif vr in ("DS", "IS"):
        return _numbers(text, vr)
    else:
        return _UNDECODED
    return parts[0] if len(parts) == 1 else parts


def _numbers(text: str, vr: str) -> Any:
    """DS and IS text as pydicom gives it: float or int per value, "" for an empty one."""
    parts = (text.strip() if vr == "DS" else text).rstrip(" \x00").split("\\")
    convert = float if vr == "DS" else int
    try:
        numbers = [convert(p) if p.strip() else "" for p in parts]
    except ValueError:  # an invalid number: pydicom decides what it becomes
        return _UNDECODED
    return numbers[0] if len(numbers) == 1 else numbers


def parse_header_from_dataset(
    ds: Dataset, keywords: Iterable[str] = ROUTING_KEYWORDS
) -> InstanceHeader:
    """An :class:`InstanceHeader` from an already-read dataset."""
    return _header(lambda keyword: _get(ds, keyword), keywords)


def _header(get: Getter, keywords: Iterable[str]) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=require_uid(get("SOPClassUID"), "SOPClassUID"),
        sop_instance_uid=require_uid(get("SOPInstanceUID"), "SOPInstanceUID"),
        study_instance_uid=require_uid(get("StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=require_uid(get("SeriesInstanceUID"), "SeriesInstanceUID"),
        instance_number=int_or_none(get("InstanceNumber")),
        study=_study_attributes(get),
        series=_attributes(get, keywords),
    )


def read_file_header(
    path: Path, keywords: Iterable[str] = ROUTING_KEYWORDS
) -> tuple[InstanceHeader, str, str | None]:
    """Header, transfer syntax and sender AE title of a stored DICOM file.

    Raises
    ------
    UnreadableDataset
        When the file does not parse as DICOM (e.g. a write cut short by a crash).
    InvalidUID
        When a UID the node stores by is missing or malformed.
    OSError
        When the file cannot be read at all: a fault of the disk, not of the file.
    """
    try:
        ds = dcmread(path, stop_before_pixels=True)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        sender = str(ds.file_meta.get("SourceApplicationEntityTitle", "")) or None
        return parse_header_from_dataset(ds, keywords), transfer_syntax, sender
    except (StoreError, OSError):
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise UnreadableDataset(f"file cannot be parsed as DICOM: {exc}") from None


def int_or_none(value: Any) -> int | None:
    """*value* as an int, or None when it is empty or not a number (IS values)."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=512)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not a DICOM keyword")
    return int(tag)


def _get(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)`` by tag: keyword lookups cost ~25 us each on the ingest path."""
    tag = _tag(keyword)
    return ds[tag].value if tag in ds else None


def _text(get: Getter, keyword: str, limit: int) -> str | None:
    value = get(keyword)
    return None if value in (None, "") else str(value)[:limit]


def _study_attributes(get: Getter) -> dict[str, Any]:
    return {
        "patient_id": _text(get, "PatientID", 64),
        "patient_name": _text(get, "PatientName", 324),
        "accession_number": _text(get, "AccessionNumber", 16),
        "study_date": _text(get, "StudyDate", 8),
        "study_description": _text(get, "StudyDescription", 64),
    }


def _attributes(get: Getter, keywords: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in keywords:
        try:
            value = get(keyword)
        except Exception:  # a malformed value of a routing attribute must not block storage
            continue
        if value is not None and value != "":
            out[keyword] = _json_value(value)
    return out


def _meta_element(group_element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    tag = struct.pack("<HH", 0x0002, group_element)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_aet: str | None
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a received dataset.

    Encoded by hand (explicit VR little endian, PS3.10 7.1): pydicom's writer
    costs more than the rest of the header work on the ingest path.
    """
    body = b"".join(
        [
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode()),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode()),
            _meta_element(0x0010, b"UI", transfer_syntax.encode()),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
            _meta_element(0x0016, b"AE", calling_aet.encode()) if calling_aet else b"",
        ]
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body


_PREAMBLE = 128
_MAGIC = b"DICM"


@dataclass(frozen=True)
class FileMeta:
    """What the File Meta Information of a Part 10 file says about its data set.

    The UIDs are as written (padding stripped), not yet checked.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    length: int  # bytes from the start of the file to its data set


def read_file_meta(data: bytes | bytearray | memoryview, *, complete: bool) -> FileMeta | None:
    """The File Meta Information at the start of a Part 10 file, or None until more bytes arrive.

    The group (explicit VR little endian, PS3.10 7.1) is walked element by
    element until the first tag outside group 0002, as pydicom reads it: the
    group length (0002,0000) is not trusted, since files with a wrong one are
    read by other tools and must not have their data set misplaced here.

    Parameters
    ----------
    data
        The first bytes of the file.
    complete
        *data* is the whole file: the group may end where the data ends.

    Raises
    ------
    InvalidFileMeta
        When the bytes are not a Part 10 file (no preamble and ``DICM``, a
        meta element without a VR, truncated, a required UID missing).
    """
    if len(data) < _PREAMBLE + len(_MAGIC):
        if complete:
            raise InvalidFileMeta(
                f"not a DICOM file (PS3.10): {len(data)} bytes, shorter than the "
                "128-byte preamble and 'DICM'"
            )
        return None
    if bytes(data[_PREAMBLE : _PREAMBLE + 4]) != _MAGIC:
        raise InvalidFileMeta("not a DICOM file (PS3.10): no 'DICM' after the 128-byte preamble")
    values: dict[int, bytes] = {}
    position = _PREAMBLE + len(_MAGIC)
    while position + 2 <= len(data) and struct.unpack_from("<H", data, position)[0] == 0x0002:
        element = _meta_element_at(data, position, complete)
        if element is None:
            return None
        number, value, position = element
        values[number] = value
    if position + 2 > len(data) and not complete:
        return None  # the next tag's group decides whether the meta goes on
    return FileMeta(
        sop_class_uid=_meta_text(values, 0x0002, "MediaStorageSOPClassUID"),
        sop_instance_uid=_meta_text(values, 0x0003, "MediaStorageSOPInstanceUID"),
        transfer_syntax=_meta_text(values, 0x0010, "TransferSyntaxUID"),
        length=position,
    )


def _meta_element_at(
    data: bytes | bytearray | memoryview, position: int, complete: bool
) -> tuple[int, bytes, int] | None:
    """(element number, value, next position) of the meta element at *position*, None if cut."""
    vr = bytes(data[position + 4 : position + 6])
    header = 12 if vr in _LONG_VRS else 8
    if position + header > len(data):
        _refuse_cut(position, complete)
        return None
    number = struct.unpack_from("<H", data, position + 2)[0]
    if not (len(vr) == 2 and vr.isalpha() and vr.isupper()):
        raise InvalidFileMeta(
            f"the File Meta Information is not explicit VR little endian: (0002,{number:04X}) "
            "has no VR"
        )
    long = header == 12  # a 4-byte length after 2 reserved bytes, else a 2-byte one
    length = struct.unpack_from("<I" if long else "<H", data, position + (8 if long else 6))[0]
    if length == _UNDEFINED:
        raise InvalidFileMeta(
            f"the File Meta Information element (0002,{number:04X}) has no length"
        )
    end = position + header + length
    if end > len(data):
        _refuse_cut(position, complete)
        return None
    return number, bytes(data[position + header : end]), end


def _refuse_cut(position: int, complete: bool) -> None:
    """An element cut short is an error only when no more bytes come."""
    if complete:
        raise InvalidFileMeta(f"the File Meta Information is truncated at byte {position}")
    return None


def _meta_text(values: dict[int, bytes], number: int, keyword: str) -> str:
    if number not in values:
        raise InvalidFileMeta(f"the File Meta Information has no {keyword} (0002,{number:04X})")
    return values[number].decode("ascii", errors="replace").strip("\x00 ")
