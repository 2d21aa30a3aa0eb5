"""Durable storage of received instances, and their index rows.

The order of :meth:`InstanceStore.store` is the node's durability promise:
validate the UIDs (they become file names), write the raw dataset bytes to a
temporary file, fsync it, rename it into place, fsync the folder, commit the
index row, and only then let the receiver answer Success.

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

import io
import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, UID
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.database import write_transaction
from dicomnode.models import Instance, Series, Study, StudyStatus, utcnow

log = logging.getLogger(__name__)

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1447.1"
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
        data = zlib.decompress(raw, -zlib.MAX_WBITS) if ts == DeflatedExplicitVRLittleEndian else raw
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
            if element.length != 0xFFFFFFFF and element.value_tell + element.length > len(data):
                raise UnreadableDataset(
                    f"dataset is truncated: element {element.tag} needs {element.length} bytes, "
                    f"{len(data) - element.value_tell} are left"
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


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
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
            value = ds.get(keyword)
        except Exception:  # a malformed value of a routing attribute must not block storage
            continue
        if value is not None and value != "":
            out[keyword] = _json_value(value)
    return out


def file_meta_bytes(header: InstanceHeader, transfer_syntax: str, calling_aet: str | None) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for a received dataset."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = header.sop_class_uid
    meta.MediaStorageSOPInstanceUID = header.sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if calling_aet:
        meta.SourceApplicationEntityTitle = calling_aet
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    return buf.getvalue()


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
    min_free_bytes
        Refuse (0xA700) when the file system has less free space than this.
    """

    def __init__(
        self,
        root: Path,
        sessions: sessionmaker[Session],
        *,
        fsync: bool = True,
        min_free_bytes: int = 0,
        keywords: Iterable[str] = ROUTING_KEYWORDS,
    ) -> None:
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        self.sessions = sessions
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self.keywords = tuple(keywords)
        self._known_dirs: set[Path] = set()
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
        """Write *parts* to ``root/relative`` atomically and durably; return the size."""
        target = self.root / relative
        self._ensure_dir(target.parent)
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
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
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if self.fsync:
                _fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(f"writing {relative.name} failed: {exc.strerror or exc}") from exc
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
        """Record an instance; return whether it replaced a stored copy."""
        now = received_at or utcnow()
        with write_transaction(self.sessions) as session:
            study_id = self._study_id(session, header, provenance, now)
            series_id = self._series_id(session, study_id, header, provenance, now)
            existing = session.execute(
                select(Instance.id, Instance.series_id).where(
                    Instance.sop_instance_uid == header.sop_instance_uid
                )
            ).first()
            if existing is not None and existing.series_id != series_id:
                raise UIDClash(
                    f"SOPInstanceUID {header.sop_instance_uid} is already stored in another "
                    "series or study"
                )
            if existing is not None:
                session.execute(
                    update(Instance)
                    .where(Instance.id == existing.id)
                    .values(
                        path=str(relative),
                        size_bytes=size,
                        transfer_syntax_uid=transfer_syntax,
                        received_at=now,
                        times_received=Instance.times_received + 1,
                    )
                )
            else:
                session.execute(
                    insert(Instance).values(
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid,
                        transfer_syntax_uid=transfer_syntax,
                        instance_number=header.instance_number,
                        path=str(relative),
                        size_bytes=size,
                        received_at=now,
                    )
                )
            added = 0 if existing is not None else 1
            session.execute(
                update(Series)
                .where(Series.id == series_id)
                .values(instance_count=Series.instance_count + added, last_received_at=now)
            )
            # Any arrival (re)opens the study: assembly waits for quiet again.
            session.execute(
                update(Study)
                .where(Study.id == study_id)
                .values(
                    instance_count=Study.instance_count + added,
                    last_received_at=now,
                    status=StudyStatus.RECEIVING,
                )
            )
        return existing is not None

    def _insert_ignore(self, session: Session, table: Any, values: dict[str, Any]) -> None:
        dialect = session.get_bind().dialect.name
        module: Any = postgresql if dialect == "postgresql" else sqlite
        session.execute(module.insert(table).values(**values).on_conflict_do_nothing())

    def _study_id(
        self, session: Session, header: InstanceHeader, prov: Provenance, now: datetime
    ) -> int:
        uid = header.study_instance_uid
        found = session.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar()
        if found is None:
            self._insert_ignore(
                session,
                Study,
                dict(
                    study_instance_uid=uid,
                    calling_aet=prov.calling_aet,
                    called_aet=prov.called_aet,
                    sender_host=prov.host,
                    status=StudyStatus.RECEIVING,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    **header.study,
                ),
            )
            found = session.execute(select(Study.id).where(Study.study_instance_uid == uid)).scalar_one()
        return int(found)

    def _series_id(
        self,
        session: Session,
        study_id: int,
        header: InstanceHeader,
        prov: Provenance,
        now: datetime,
    ) -> int:
        uid = header.series_instance_uid
        row = session.execute(
            select(Series.id, Series.study_id).where(Series.series_instance_uid == uid)
        ).first()
        if row is None:
            attrs = header.series
            self._insert_ignore(
                session,
                Series,
                dict(
                    study_id=study_id,
                    series_instance_uid=uid,
                    modality=str(attrs.get("Modality", ""))[:16] or None,
                    series_number=_int_or_none(attrs.get("SeriesNumber")),
                    series_description=(str(attrs["SeriesDescription"])[:64]
                                        if "SeriesDescription" in attrs else None),
                    attributes=attrs,
                    calling_aet=prov.calling_aet,
                    called_aet=prov.called_aet,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                ),
            )
            row = session.execute(
                select(Series.id, Series.study_id).where(Series.series_instance_uid == uid)
            ).one()
        if row.study_id != study_id:
            raise UIDClash(f"SeriesInstanceUID {uid} already belongs to another study")
        return int(row.id)

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
                prov = Provenance(calling_aet=str(meta.get("SourceApplicationEntityTitle", "")) or None)
                self.index(header, relative, path.stat().st_size, str(meta.TransferSyntaxUID), prov)
                restored += 1
            except Exception as exc:
                log.error("cannot reindex %s: %s", path.name, exc)
        if restored:
            log.warning("reindexed %d stored instance(s) that had no database row", restored)
        return restored

    def remove_study_files(self, study_instance_uid: str) -> None:
        """Delete a study's instance folder (retention)."""
        require_uid(study_instance_uid, "StudyInstanceUID")
        shutil.rmtree(self.instances_dir / study_instance_uid, ignore_errors=True)


def parse_header_from_dataset(ds: Dataset, keywords: Iterable[str] = ROUTING_KEYWORDS) -> InstanceHeader:
    """An :class:`InstanceHeader` from an already-read dataset."""
    return InstanceHeader(
        sop_class_uid=require_uid(ds.get("SOPClassUID"), "SOPClassUID"),
        sop_instance_uid=require_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID"),
        study_instance_uid=require_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID"),
        series_instance_uid=require_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID"),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        study=_study_attributes(ds),
        series=_attributes(ds, keywords),
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
