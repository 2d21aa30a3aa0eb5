"""What the node reads from a received dataset: UIDs, routing attributes, file meta.

UIDs become folder and file names, so each is checked against the UID
grammar (PS3.5 9.1) before anything touches the disk. The header is read
from the raw bytes without decoding pixel data, by tag rather than keyword
(keyword lookups dominate the ingest path otherwise), and the File Meta
Information written in front of the stored dataset is encoded by hand for
the same reason.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode import __version__
from dicomnode.store.errors import InvalidUID, StoreError, UnreadableDataset

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
    raw: bytes, transfer_syntax: str, keywords: Iterable[str] = ROUTING_KEYWORDS
) -> InstanceHeader:
    """Read UIDs and routing attributes from the raw bytes of a dataset (no file meta).

    Raises
    ------
    UnreadableDataset
        When the bytes do not parse as a dataset of *transfer_syntax*.
    InvalidUID
        When a UID the node stores by is missing or malformed.
    """
    ts = UID(transfer_syntax)
    try:
        data = (
            zlib.decompress(raw, -zlib.MAX_WBITS) if ts == DeflatedExplicitVRLittleEndian else raw
        )
        # Walk every element header (values past 4 KiB are skipped, not read): a
        # truncated dataset raises EOFError here instead of being stored.
        elements = data_element_generator(
            io.BytesIO(data),
            ts == ImplicitVRLittleEndian,
            ts != "1.2.840.10008.1.2.2",
            defer_size=4096,
        )
        found = {}
        for element in elements:
            tell = getattr(element, "value_tell", None)  # sequences come back parsed
            length = getattr(element, "length", 0)
            if tell is not None and length != 0xFFFFFFFF and tell + length > len(data):
                raise UnreadableDataset(
                    f"dataset is truncated: element {element.tag} needs {length} bytes, "
                    f"{len(data) - tell} are left"
                )
            found[element.tag] = element
        return parse_header_from_dataset(Dataset(found), keywords)
    except StoreError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise UnreadableDataset(f"dataset cannot be parsed: {exc}") from None


def parse_header_from_dataset(
    ds: Dataset, keywords: Iterable[str] = ROUTING_KEYWORDS
) -> InstanceHeader:
    """An :class:`InstanceHeader` from an already-read dataset."""
    return InstanceHeader(
        sop_class_uid=require_uid(_get(ds, "SOPClassUID"), "SOPClassUID"),
        sop_instance_uid=require_uid(_get(ds, "SOPInstanceUID"), "SOPInstanceUID"),
        study_instance_uid=require_uid(_get(ds, "StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=require_uid(_get(ds, "SeriesInstanceUID"), "SeriesInstanceUID"),
        instance_number=int_or_none(_get(ds, "InstanceNumber")),
        study=_study_attributes(ds),
        series=_attributes(ds, keywords),
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


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _get(ds, keyword)
    return None if value in (None, "") else str(value)[:limit]


def _study_attributes(ds: Dataset) -> dict[str, Any]:
    return {
        "patient_id": _text(ds, "PatientID", 64),
        "patient_name": _text(ds, "PatientName", 324),
        "accession_number": _text(ds, "AccessionNumber", 16),
        "study_date": _text(ds, "StudyDate", 8),
        "study_description": _text(ds, "StudyDescription", 64),
    }


def _attributes(ds: Dataset, keywords: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword in keywords:
        try:
            value = _get(ds, keyword)
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


def file_meta_bytes(header: InstanceHeader, transfer_syntax: str, calling_aet: str | None) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a received dataset.

    Encoded by hand (explicit VR little endian, PS3.10 7.1): pydicom's writer
    costs more than the rest of the header work on the ingest path.
    """
    body = b"".join(
        [
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", header.sop_class_uid.encode()),
            _meta_element(0x0003, b"UI", header.sop_instance_uid.encode()),
            _meta_element(0x0010, b"UI", transfer_syntax.encode()),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
            _meta_element(0x0016, b"AE", calling_aet.encode()) if calling_aet else b"",
        ]
    )
    group_length = _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
