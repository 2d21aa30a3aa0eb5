"""Durable storage of received instances, and their index rows.

The order of :meth:`InstanceStore.store` is the node's durability promise:
validate the UIDs (they become file names), write the raw dataset bytes to a
temporary file, rename it into place and fsync it (see
:meth:`StorageFiles.adopt <dicomnode.store.files.StorageFiles.adopt>`
for why one fsync suffices, and when the folder is fsynced too), commit the
index row, and only then let the receiver answer Success. A crash at any
point before the commit leaves at most a file that was never acknowledged:
a partial one under ``tmp/`` (removed at start-up) or a complete one without
its row (indexed at start-up by :meth:`InstanceStore.reindex_orphans`). A
crash after the commit loses nothing, because the file was durable first.

A whole Part 10 file (a STOW-RS part, :meth:`InstanceStore.receive_file`)
takes the same steps, its transfer syntax and UIDs read from its own File
Meta Information. STOW-RS splits the last step: each part is checked (header
scanned, UIDs compared) and *parked* closed under ``tmp/``, and only once the
request's whole body has parsed are the parked parts committed (rename,
fsync, index row, in that order, each as above) or, when the body is
broken, all removed. Until its commit a parked part is a file under ``tmp/``
like any partial write: never acknowledged, removed at start-up.

Receiving a SOP Instance UID that is already stored replaces the stored copy
(the newest copy wins, as when a modality resends a corrected image), counts
it in ``times_received`` and re-opens the study for assembly. The same SOP
Instance UID under another study or series is refused: that is a UID clash,
not a resend.

The package: :mod:`~dicomnode.store.errors` (refusals and their DIMSE
statuses), :mod:`~dicomnode.store.header` (UIDs, header, file meta),
:mod:`~dicomnode.store.files` (layout and the durable write),
:mod:`~dicomnode.store.index` (the database rows); this module joins them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.locks import SharedHostLock
from dicomnode.store.errors import (
    IndexUnavailable,
    InvalidFileMeta,
    InvalidUID,
    OutOfResources,
    ProcessingFailure,
    RecoveryError,
    SOPClassNotSupported,
    StoreError,
    StudyMismatch,
    TransferSyntaxNotSupported,
    UIDClash,
    UIDMismatch,
    UnreadableDataset,
)
from dicomnode.store.files import StorageFiles, Written, relative_path, results_dir
from dicomnode.store.header import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    ROUTING_KEYWORDS,
    FileMeta,
    InstanceHeader,
    is_valid_uid,
    parse_header,
    parse_header_from_dataset,
    read_file_header,
    require_uid,
)
from dicomnode.store.incoming import IncomingFile, IncomingInstance, ParkedInstance
from dicomnode.store.index import InstanceIndex, Provenance

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "ROUTING_KEYWORDS",
    "FileMeta",
    "IncomingFile",
    "IncomingInstance",
    "IndexUnavailable",
    "InstanceHeader",
    "InstanceStore",
    "InvalidFileMeta",
    "InvalidUID",
    "OutOfResources",
    "ParkedInstance",
    "ProcessingFailure",
    "Provenance",
    "RecoveryError",
    "SOPClassNotSupported",
    "StoreError",
    "StoredInstance",
    "StudyMismatch",
    "TransferSyntaxNotSupported",
    "UIDClash",
    "UIDMismatch",
    "UnreadableDataset",
    "is_valid_uid",
    "parse_header",
    "parse_header_from_dataset",
    "require_uid",
    "results_dir",
]

log = logging.getLogger(__name__)

_UNKNOWN_SENDER = Provenance()


@dataclass(frozen=True)
class StoredInstance:
    """Result of a successful store."""

    path: Path
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    replaced: bool


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
        Also fsync the folder after each rename (see :meth:`StorageFiles.adopt`).
    min_free_bytes
        Refuse (0xA700) when the file system has less free space than this.
    keywords
        Attributes kept per series for routing.
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
        self.files = StorageFiles(
            root, fsync=fsync, fsync_directory=fsync_directory, min_free_bytes=min_free_bytes
        )
        self.sessions = sessions
        self.engine = sessions.kw["bind"]
        self.index_rows = InstanceIndex(self.engine)
        self.keywords = tuple(keywords)
        # Stores (shared, in every receiver process) against retention (exclusive).
        self._removal = SharedHostLock(self.files.root / ".locks" / "removal")

    # -- the layout ---------------------------------------------------------------

    @property
    def root(self) -> Path:
        """``storage.path``."""
        return self.files.root

    @property
    def instances_dir(self) -> Path:
        """``instances/``: the received instances."""
        return self.files.instances_dir

    @property
    def tmp_dir(self) -> Path:
        """``tmp/``: partial writes."""
        return self.files.tmp_dir

    @property
    def min_free_bytes(self) -> int:
        """The free-space floor under which C-STOREs are refused (0xA700)."""
        return self.files.min_free_bytes

    @min_free_bytes.setter
    def min_free_bytes(self, value: int) -> None:
        self.files.min_free_bytes = value

    def relative_path(self, header: InstanceHeader) -> Path:
        """Where an instance lives, relative to the storage root (UIDs already validated)."""
        return relative_path(header)

    def results_dir(self, job_id: int) -> Path:
        """The folder of the objects job *job_id* produced."""
        return results_dir(self.root, job_id)

    def free_bytes(self) -> int:
        """Free bytes available to us on the storage file system."""
        return self.files.free_bytes()

    def clear_tmp(self) -> int:
        """Remove partial writes left by a crash (they were never acknowledged)."""
        return self.files.clear_tmp()

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file."""
        return self.files.iter_files()

    # -- the C-STORE path -------------------------------------------------------------

    def receive(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        provenance: Provenance = _UNKNOWN_SENDER,
    ) -> IncomingInstance:
        """A data set about to arrive (C-STORE): stream its bytes in, then ``finish()``."""
        return IncomingInstance(self, sop_class_uid, sop_instance_uid, transfer_syntax, provenance)

    def receive_file(
        self,
        provenance: Provenance = _UNKNOWN_SENDER,
        admit: Callable[[FileMeta], None] | None = None,
    ) -> IncomingFile:
        """A whole Part 10 file about to arrive (a STOW-RS part): stream it in, then finish or park.

        *admit* may refuse the file once its File Meta Information is read
        (see :class:`~dicomnode.store.incoming.IncomingFile`).
        """
        return IncomingFile(self, provenance, admit)

    def store(
        self,
        raw: bytes,
        transfer_syntax: str,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        provenance: Provenance = _UNKNOWN_SENDER,
    ) -> StoredInstance:
        """Store one data set already in memory (raw bytes, no file meta) durably, then index it.

        Without the request's UIDs, the data set's own are taken. The same path
        as a streamed C-STORE (:meth:`receive`).

        Raises
        ------
        StoreError
            A subclass whose ``status`` is the DIMSE status to answer.
        """
        if sop_class_uid is None or sop_instance_uid is None:
            header = parse_header(raw, transfer_syntax, self.keywords)
            sop_class_uid = sop_class_uid or header.sop_class_uid
            sop_instance_uid = sop_instance_uid or header.sop_instance_uid
        incoming = self.receive(sop_class_uid, sop_instance_uid, transfer_syntax, provenance)
        incoming.write(memoryview(raw))
        return incoming.finish()

    def adopt(
        self,
        fd: int,
        tmp: Path,
        header: InstanceHeader,
        transfer_syntax: str,
        provenance: Provenance,
    ) -> StoredInstance:
        """Place a complete, checked file from ``tmp/`` durably and index it (the last steps)."""
        relative = relative_path(header)
        # Shared with other stores, exclusive with retention: a study's folder is
        # never removed between writing an instance and indexing it.
        with self._removal.shared():
            written = self.files.adopt(fd, tmp, relative)
            replaced = self._index_written(header, relative, written, transfer_syntax, provenance)
        return StoredInstance(
            path=self.root / relative,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            replaced=replaced,
        )

    def _index_written(
        self,
        header: InstanceHeader,
        relative: Path,
        written: Written,
        transfer_syntax: str,
        provenance: Provenance,
    ) -> bool:
        """Index a file just written; on refusal, answer so that nothing is acknowledged."""
        try:
            return self.index(header, relative, written.size, transfer_syntax, provenance)
        except UIDClash:
            # A refused instance must not stay in instances/ (recovery would find it
            # again); a copy it replaced is gone already, and that name stays taken.
            if not written.replaced:
                with contextlib.suppress(OSError):  # else recovery finds it and logs the clash
                    self.files.remove_file(relative)
            raise
        except StoreError:
            raise
        except Exception as exc:
            # The file is durable; start-up reindexing will pick it up. Do not acknowledge.
            log.error("index row for %s not written: %s", header.sop_instance_uid, exc)
            raise IndexUnavailable(f"database unavailable: {type(exc).__name__}") from exc

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

        Any arrival (re)opens the study: assembly waits for quiet again.

        Raises
        ------
        UIDClash
            When the instance or its series is stored under another series or study.
        """
        return self.index_rows.record(
            header, relative, size, transfer_syntax, provenance, received_at
        )

    # -- recovery --------------------------------------------------------------------

    def reindex_orphans(self) -> int:
        """Index files that are on disk but have no row (a crash between fsync and commit).

        A file that does not parse as DICOM, or lacks valid UIDs, was cut short
        by a crash and never acknowledged: it goes to ``quarantine/``. A file
        whose UIDs clash with the index stays where it is, with an error in
        the log, for the admin to decide.

        Returns
        -------
        int
            The number of instances indexed.

        Raises
        ------
        RecoveryError
            When the database refuses a row, or a stored file cannot be read:
            start-up must stop rather than serve with files it cannot index.
        """
        try:
            known = self.index_rows.known_sop_instance_uids()
        except self.index_rows.database_errors as exc:
            raise RecoveryError(
                f"start-up stopped: the database could not list the indexed instances "
                f"({type(exc).__name__}: {exc}); fix the database and start again"
            ) from exc
        restored = 0
        for path in self.iter_files():
            if path.stem not in known and self._reindex(path):
                restored += 1
        if restored:
            log.warning("reindexed %d stored instance(s) that had no database row", restored)
        return restored

    def _reindex(self, path: Path) -> bool:
        """Index one file without a row; return whether it was indexed."""
        relative = path.relative_to(self.root)
        try:
            header, transfer_syntax, sender = read_file_header(path, self.keywords)
            size = path.stat().st_size
        except (UnreadableDataset, InvalidUID) as exc:
            moved = self.files.quarantine(path)
            log.error("moved unreadable %s to %s: %s", relative, moved.relative_to(self.root), exc)
            return False
        except OSError as exc:
            raise RecoveryError(
                f"start-up stopped: stored file {relative} cannot be read "
                f"({exc.strerror or exc}); check the storage and start again"
            ) from exc
        try:
            self.index(header, relative, size, transfer_syntax, Provenance(calling_aet=sender))
        except UIDClash as exc:
            log.error(
                "UID clash: %s not indexed, left in place for an admin to resolve: %s",
                relative,
                exc.message,
            )
            return False
        except self.index_rows.database_errors as exc:
            raise RecoveryError(
                f"start-up stopped: the database refused the index row of stored file "
                f"{relative} ({type(exc).__name__}: {exc}); the file is kept, fix the "
                "database and start again"
            ) from exc
        return True

    # -- retention -------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off every C-STORE of every receiver process (retention deletes under it)."""
        with self._removal.exclusive():
            yield

    def remove_study_files(self, study_instance_uid: str) -> int:
        """Delete a study's instance folder; call inside :meth:`exclusive`. Returns bytes freed."""
        return self.files.remove_study_files(study_instance_uid)
