"""Durable storage of received instances, and their index rows.

The order of :meth:`InstanceStore.store` is the node's durability promise:
validate the UIDs (they become file names), write the raw dataset bytes to a
temporary file, rename it into place and fsync it (see
:meth:`InstanceStore.write_file` for why one fsync suffices, and when the
folder is fsynced too), commit the index row, and only then let the receiver
answer Success.

Layout under ``storage.path``::

    instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    tmp/                      partial writes; emptied at start-up (never acknowledged)
    results/<job id>/...      objects produced by pipelines

Receiving a SOP Instance UID that is already stored replaces the stored copy
(the newest copy wins, as when a modality resends a corrected image), counts
it in ``times_received`` and re-opens the study for assembly. The same SOP
Instance UID under another study or series is refused: that is a UID clash,
not a resend.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.models import Instance, StudyStatus, utcnow

log = logging.getLogger(__name__)

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


class StoreError(Exception):
    """A C-STORE that must not be acknowledged; ``status`` is the DIMSE status."""

    status = 0xC000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OutOfResources(StoreError):
    """Free space under the floor, or the disk refused the write."""

    status = 0xA700


class InvalidUID(StoreError):
    """A UID that is not a valid DICOM UID (it would become a path)."""

    status = 0xC120


class UnreadableDataset(StoreError):
    """The dataset bytes cannot be parsed."""

    status = 0xC121


class UIDMismatch(StoreError):
    """The dataset's SOP UIDs differ from the C-STORE request's."""

    status = 0xC122


class UIDClash(StoreError):
    """The SOP Instance UID is already stored under another study or series."""

    status = 0xC123


class IndexUnavailable(StoreError):
    """The file is durable but the database refused its row (e.g. it is down)."""

    status = 0xA701


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
class Provenance:
    """Who sent an instance."""

    calling_aet: str | None = None
    called_aet: str | None = None
    host: str | None = None


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


@dataclass(frozen=True)
class StoredInstance:
    """Result of a successful store."""

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    replaced: bool


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


def _int_or_none(value: Any) -> int | None:
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


_INDEX_SQL = {
    "study_id": "SELECT id FROM studies WHERE study_instance_uid = ?",
    "study_insert": (
        "INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number, "
        "study_date, study_description, calling_aet, called_aet, sender_host, status, "
        "instance_count, first_received_at, last_received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) "
        "ON CONFLICT (study_instance_uid) DO NOTHING"
    ),
    "series_row": "SELECT id, study_id FROM series WHERE series_instance_uid = ?",
    "series_insert": (
        "INSERT INTO series (study_id, series_instance_uid, modality, series_number, "
        "series_description, attributes, calling_aet, called_aet, instance_count, "
        "first_received_at, last_received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) "
        "ON CONFLICT (series_instance_uid) DO NOTHING"
    ),
    "instance_row": "SELECT id, series_id FROM instances WHERE sop_instance_uid = ?",
    "instance_insert": (
        "INSERT INTO instances (study_id, series_id, sop_instance_uid, sop_class_uid, "
        "transfer_syntax_uid, instance_number, path, size_bytes, received_at, times_received) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
    ),
    "instance_update": (
        "UPDATE instances SET path = ?, size_bytes = ?, transfer_syntax_uid = ?, "
        "received_at = ?, times_received = times_received + 1 WHERE id = ?"
    ),
    "series_touch": (
        "UPDATE series SET instance_count = instance_count + ?, last_received_at = ? WHERE id = ?"
    ),
    "study_touch": (
        "UPDATE studies SET instance_count = instance_count + ?, last_received_at = ?, "
        "status = ? WHERE id = ?"
    ),
}


class _IndexSQL:
    """The index statements in the DBAPI dialect of one engine (SQLite or psycopg)."""

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"
        self.statements = {
            name: sql if self.sqlite else sql.replace("?", "%s") for name, sql in _INDEX_SQL.items()
        }

    def begin(self, cur: Any) -> None:
        if self.sqlite:
            cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks

    def run(self, cur: Any, name: str, params: tuple[Any, ...]) -> None:
        cur.execute(self.statements[name], params)

    def one(self, cur: Any, name: str, params: tuple[Any, ...]) -> Any:
        cur.execute(self.statements[name], params)
        return cur.fetchone()

    def timestamp(self, value: datetime) -> Any:
        """Naive UTC, in the text form SQLAlchemy's SQLite DateTime reads back."""
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive

    def json(self, value: dict[str, Any]) -> Any:
        if self.sqlite:
            return json.dumps(value)
        from psycopg.types.json import Json

        return Json(value)


class _BoundedCache(dict[str, Any]):
    """UID -> row id; rows are never renumbered, so entries never go stale."""

    limit = 20_000

    def put(self, key: str, value: Any) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


class SharedExclusiveLock:
    """Many holders in shared mode, or one in exclusive mode (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class InstanceStore:
    """Writes received instances durably and indexes them.

    Parameters
    ----------
    root
        ``storage.path``.
    sessions
        Session factory of the job database.
    fsync
        fsync files and folders before acknowledging (only disk benchmarks turn it off).
    fsync_directory
        Also fsync the folder after each rename (see :meth:`write_file`).
    min_free_bytes
        Refuse (0xA700) when the file system has less free space than this.
    """

    def __init__(
        self,
        root: Path,
        sessions: sessionmaker[Session],
        *,
        fsync: bool = True,
        fsync_directory: bool = False,
        min_free_bytes: int = 0,
        keywords: Iterable[str] = ROUTING_KEYWORDS,
    ) -> None:
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        self.sessions = sessions
        self.engine = sessions.kw["bind"]
        self._sql = _IndexSQL(self.engine.dialect.name)
        self._study_ids = _BoundedCache()
        self._series_ids = _BoundedCache()
        # SQLite has one writer at a time and its busy handler sleeps 1-100 ms when
        # the lock is taken; queueing our own threads on a lock wakes them at once.
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if self._sql.sqlite else contextlib.nullcontext()
        )
        self.fsync = fsync
        self.fsync_directory = fsync_directory
        self.min_free_bytes = min_free_bytes
        self.keywords = tuple(keywords)
        self._known_dirs: set[Path] = set()
        self._removal = SharedExclusiveLock()
        for folder in (self.instances_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- file system ---------------------------------------------------------------

    def free_bytes(self) -> int:
        """Free bytes available to us on the storage file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, incoming: int) -> None:
        """Raise :class:`OutOfResources` when storing *incoming* bytes would cross the floor."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise OutOfResources(
                f"storage has {free // 1_048_576} MiB free, below the floor of "
                f"{self.min_free_bytes // 1_048_576} MiB (storage.min_free_bytes)"
            )

    def relative_path(self, header: InstanceHeader) -> Path:
        """Where an instance lives, relative to the storage root (UIDs already validated)."""
        return (
            Path("instances")
            / header.study_instance_uid
            / header.series_instance_uid
            / f"{header.sop_instance_uid}.dcm"
        )

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        missing = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.fsync:
            # A new folder is durable only once its parent's entry is.
            for created in missing:
                _fsync_dir(created.parent)
        self._known_dirs.add(folder)

    def write_file(self, relative: Path, parts: Iterable[bytes | memoryview]) -> int:
        """Write *parts* to ``root/relative`` atomically and durably; return the size.

        A new file is written under ``tmp/``, renamed into place, then fsynced
        once: on ext4, XFS and btrfs the journal commit that fsync forces holds
        every earlier metadata change of the file, its new name included, so the
        folder needs no fsync of its own. When the name already holds a copy
        (a resend), the new copy is fsynced *before* it replaces the old one and
        the folder after, so a crash never leaves a partial file where a good one
        was. ``storage.fsync_directory = true`` uses that strict order for every
        file, for file systems that do not journal a rename with the data.
        """
        target = self.root / relative
        self._ensure_dir(target.parent)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        strict = self.fsync_directory or target.exists()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for part in parts:
                    view = memoryview(part)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                        size += written
                if self.fsync and strict:
                    os.fsync(fd)
                os.replace(tmp, target)
                if self.fsync:
                    if strict:
                        _fsync_dir(target.parent)
                    else:
                        os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(
                f"disk write failed: {exc.strerror or exc} ({relative.name})"
            ) from exc
        return size

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash (they were never acknowledged)."""
        removed = 0
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    # -- the C-STORE path -------------------------------------------------------------

    def store(
        self,
        raw: bytes,
        transfer_syntax: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        provenance: Provenance = Provenance(),
    ) -> StoredInstance:
        """Store one received dataset (raw bytes without file meta) durably, then index it.

        Raises
        ------
        StoreError
            A subclass whose ``status`` is the DIMSE status to answer.
        """
        if sop_instance_uid is not None:
            require_uid(sop_instance_uid, "Affected SOP Instance UID")
        if sop_class_uid is not None:
            require_uid(sop_class_uid, "Affected SOP Class UID")
        header = parse_header(raw, transfer_syntax, self.keywords)
        if sop_instance_uid is not None and header.sop_instance_uid != sop_instance_uid:
            raise UIDMismatch(
                f"dataset SOPInstanceUID {header.sop_instance_uid} differs from the request's "
                f"{sop_instance_uid}"
            )
        if sop_class_uid is not None and header.sop_class_uid != sop_class_uid:
            raise UIDMismatch(
                f"dataset SOPClassUID {header.sop_class_uid} differs from the request's "
                f"{sop_class_uid}"
            )
        self.check_space(len(raw) + 4096)
        relative = self.relative_path(header)
        meta = file_meta_bytes(header, transfer_syntax, provenance.calling_aet)
        # Shared with other stores, exclusive with retention: a study's folder is
        # never removed between writing an instance and indexing it.
        with self._removal.shared():
            size = self.write_file(relative, (meta, raw))
            try:
                replaced = self.index(header, relative, size, transfer_syntax, provenance)
            except StoreError:
                raise
            except Exception as exc:
                # The file is durable; start-up reindexing will pick it up. Do not acknowledge.
                log.error("index row for %s not written: %s", header.sop_instance_uid, exc)
                raise IndexUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return StoredInstance(
            path=self.root / relative,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            replaced=replaced,
        )

    # -- the index -------------------------------------------------------------------

    def index(
        self,
        header: InstanceHeader,
        relative: Path,
        size: int,
        transfer_syntax: str,
        provenance: Provenance,
        received_at: datetime | None = None,
    ) -> bool:
        """Record an instance in one write transaction; return whether it replaced a copy.

        This is the hot path of ingest, so it speaks SQL to the DBAPI connection
        directly (the ORM costs several milliseconds per instance). Any arrival
        (re)opens the study: assembly waits for quiet again.
        """
        now = self._sql.timestamp(received_at or utcnow())
        with self._write_lock:
            return self._index(header, relative, size, transfer_syntax, provenance, now)

    def _index(
        self,
        header: InstanceHeader,
        relative: Path,
        size: int,
        transfer_syntax: str,
        provenance: Provenance,
        now: Any,
    ) -> bool:
        conn = self.engine.raw_connection()
        try:
            cur = conn.cursor()
            self._sql.begin(cur)
            study_id = self._study_id(cur, header, provenance, now)
            series_id = self._series_id(cur, study_id, header, provenance, now)
            existing = self._sql.one(cur, "instance_row", (header.sop_instance_uid,))
            if existing is not None and existing[1] != series_id:
                raise UIDClash(
                    f"SOPInstanceUID {header.sop_instance_uid} is already stored in another "
                    "series or study"
                )
            if existing is None:
                self._sql.run(
                    cur,
                    "instance_insert",
                    (
                        study_id,
                        series_id,
                        header.sop_instance_uid,
                        header.sop_class_uid,
                        transfer_syntax,
                        header.instance_number,
                        str(relative),
                        size,
                        now,
                    ),
                )
            else:
                self._sql.run(
                    cur, "instance_update", (str(relative), size, transfer_syntax, now, existing[0])
                )
            added = 0 if existing is not None else 1
            self._sql.run(cur, "series_touch", (added, now, series_id))
            self._sql.run(cur, "study_touch", (added, now, StudyStatus.RECEIVING.value, study_id))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()
        return existing is not None

    def _study_id(self, cur: Any, header: InstanceHeader, prov: Provenance, now: Any) -> int:
        uid = header.study_instance_uid
        cached = self._study_ids.get(uid)
        if cached is not None:
            return cached
        row = self._sql.one(cur, "study_id", (uid,))
        if row is None:
            info = header.study
            self._sql.run(
                cur,
                "study_insert",
                (
                    uid,
                    info.get("patient_id"),
                    info.get("patient_name"),
                    info.get("accession_number"),
                    info.get("study_date"),
                    info.get("study_description"),
                    prov.calling_aet,
                    prov.called_aet,
                    prov.host,
                    StudyStatus.RECEIVING.value,
                    now,
                    now,
                ),
            )
            row = self._sql.one(cur, "study_id", (uid,))
        assert row is not None
        self._study_ids.put(uid, int(row[0]))
        return int(row[0])

    def _series_id(
        self, cur: Any, study_id: int, header: InstanceHeader, prov: Provenance, now: Any
    ) -> int:
        uid = header.series_instance_uid
        row = self._series_ids.get(uid)
        if row is None:
            row = self._sql.one(cur, "series_row", (uid,))
            if row is None:
                attrs = header.series
                description = attrs.get("SeriesDescription")
                self._sql.run(
                    cur,
                    "series_insert",
                    (
                        study_id,
                        uid,
                        str(attrs.get("Modality", ""))[:16] or None,
                        _int_or_none(attrs.get("SeriesNumber")),
                        str(description)[:64] if description is not None else None,
                        self._sql.json(attrs),
                        prov.calling_aet,
                        prov.called_aet,
                        now,
                        now,
                    ),
                )
                row = self._sql.one(cur, "series_row", (uid,))
            assert row is not None
            row = (int(row[0]), int(row[1]))
            self._series_ids.put(uid, row)
        if row[1] != study_id:
            raise UIDClash(f"SeriesInstanceUID {uid} already belongs to another study")
        return row[0]

    # -- recovery --------------------------------------------------------------------

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file."""
        yield from self.instances_dir.glob("*/*/*.dcm")

    def reindex_orphans(self) -> int:
        """Index files that are on disk but have no row (a crash between fsync and commit).

        Returns the number of instances indexed.
        """
        with self.sessions() as session:
            known = set(session.execute(select(Instance.sop_instance_uid)).scalars())
        restored = 0
        for path in self.iter_files():
            if path.stem in known:
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
                meta = ds.file_meta
                header = parse_header_from_dataset(ds, self.keywords)
                relative = path.relative_to(self.root)
                prov = Provenance(
                    calling_aet=str(meta.get("SourceApplicationEntityTitle", "")) or None
                )
                self.index(header, relative, path.stat().st_size, str(meta.TransferSyntaxUID), prov)
                restored += 1
            except Exception as exc:
                # Unreadable: a write cut short by a crash, so never acknowledged.
                quarantine = self.root / "quarantine"
                quarantine.mkdir(exist_ok=True)
                path.replace(quarantine / path.name)
                log.error("moved unreadable %s to quarantine/: %s", path.name, exc)
        if restored:
            log.warning("reindexed %d stored instance(s) that had no database row", restored)
        return restored

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off every C-STORE of this process (retention deletes under it)."""
        with self._removal.exclusive():
            yield

    def remove_study_files(self, study_instance_uid: str) -> int:
        """Delete a study's instance folder; call inside :meth:`exclusive`. Returns bytes freed."""
        folder = self.instances_dir / require_uid(study_instance_uid, "StudyInstanceUID")
        freed = sum(p.stat().st_size for p in folder.glob("*/*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        self._known_dirs = {d for d in self._known_dirs if folder not in d.parents and d != folder}
        return freed


def parse_header_from_dataset(
    ds: Dataset, keywords: Iterable[str] = ROUTING_KEYWORDS
) -> InstanceHeader:
    """An :class:`InstanceHeader` from an already-read dataset."""
    return InstanceHeader(
        sop_class_uid=require_uid(_get(ds, "SOPClassUID"), "SOPClassUID"),
        sop_instance_uid=require_uid(_get(ds, "SOPInstanceUID"), "SOPInstanceUID"),
        study_instance_uid=require_uid(_get(ds, "StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=require_uid(_get(ds, "SeriesInstanceUID"), "SeriesInstanceUID"),
        instance_number=_int_or_none(_get(ds, "InstanceNumber")),
        study=_study_attributes(ds),
        series=_attributes(ds, keywords),
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
