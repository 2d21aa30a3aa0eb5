"""One data set being received: its bytes go to disk as they arrive, never all into memory.

:class:`IncomingInstance` is what the receiver streams a C-STORE into (and
what :meth:`dicomnode.store.InstanceStore.store` uses for bytes it already
holds). :class:`IncomingFile` takes a whole DICOM Part 10 file instead (a
STOW-RS part): it buffers only the File Meta Information (at most
:data:`META_LIMIT` bytes), reads the transfer syntax and SOP UIDs from it,
and streams the rest into an :class:`IncomingInstance`. The order is the
store's durability promise:

1. the request's UIDs are checked (they become file names) and the File Meta
   Information is written to a new file under ``tmp/``;
2. each fragment of the data set is appended as it arrives, so memory per
   association is one network chunk whatever the object's size; every
   :data:`~dicomnode.store.files.WRITEBACK_BYTES` the write-out of what
   arrived is started (not waited for, not a durability step: it only
   leaves less for step 3's fsync);
3. :meth:`IncomingInstance.finish`: the file is memory-mapped and its element
   headers scanned (truncation, the UIDs the index needs, routing
   attributes), renamed into place and fsynced, and its row committed;
   only then may the receiver answer Success.

A refusal found early (an invalid UID, no disk space, a write error) is kept
until the data set is complete: the peer must be answered with a status,
and the rest of its data is read and dropped, not written.

STOW-RS stores a request's instances only once its whole body has parsed
(a broken body stores nothing), so step 3 is split there:
:meth:`IncomingInstance.park` does its checks (header scan, UIDs) and closes
the file, leaving it under ``tmp/`` as a :class:`ParkedInstance` that holds
no file descriptor (a request of thousands of instances must not exhaust
them); :meth:`ParkedInstance.commit` later renames, fsyncs and indexes it,
:meth:`ParkedInstance.discard` removes it. A crash in between leaves only
files under ``tmp/``, never acknowledged, which start-up removes.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.store.errors import (
    InvalidFileMeta,
    OutOfResources,
    StoreError,
    UIDMismatch,
    UnreadableDataset,
)
from dicomnode.store.files import WRITEBACK_BYTES
from dicomnode.store.header import (
    FileMeta,
    InstanceHeader,
    file_meta_bytes,
    parse_header,
    read_file_meta,
    require_uid,
)

if TYPE_CHECKING:
    from dicomnode.store import InstanceStore, StoredInstance
    from dicomnode.store.index import Provenance

# The most bytes of a Part 10 file buffered while looking for the end of its
# File Meta Information (a few hundred bytes in practice).
META_LIMIT = 64 * 1024


class IncomingInstance:
    """A data set arriving for *store*; ``write`` its bytes, then ``finish`` or ``discard``.

    Parameters
    ----------
    store
        Where it goes.
    sop_class_uid, sop_instance_uid
        The C-STORE request's Affected SOP Class and Instance UIDs.
    transfer_syntax
        The presentation context's transfer syntax.
    provenance
        Who sends it.
    """

    def __init__(
        self,
        store: InstanceStore,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        provenance: Provenance,
    ) -> None:
        self.store = store
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax = transfer_syntax
        self.provenance = provenance
        self.problem: StoreError | None = None
        self.size = 0  # data set bytes received
        self._fd: int | None = None
        self._tmp: Path | None = None
        self._meta_length = 0
        self._written = 0  # bytes in the file
        self._flushed = 0  # bytes whose write-out has been started
        try:
            require_uid(sop_instance_uid, "Affected SOP Instance UID")
            require_uid(sop_class_uid, "Affected SOP Class UID")
            store.files.check_space(0)
            self._open()
        except StoreError as exc:
            self.problem = exc

    def _open(self) -> None:
        meta = file_meta_bytes(
            self.sop_class_uid,
            self.sop_instance_uid,
            self.transfer_syntax,
            self.provenance.calling_aet,
        )
        self._fd, self._tmp = self.store.files.open_incoming()
        self._meta_length = len(meta)
        self._write(memoryview(meta))

    def _write(self, view: memoryview) -> None:
        assert self._fd is not None
        try:
            while view:
                count = os.write(self._fd, view)
                view = view[count:]
                self._written += count
            if self._written - self._flushed >= WRITEBACK_BYTES:
                files = self.store.files
                files.start_writeback(self._fd, self._flushed, self._written - self._flushed)
                self._flushed = self._written
        except OSError as exc:
            self.problem = OutOfResources(f"disk write failed: {exc.strerror or exc}")
            self._drop()

    def write(self, data: memoryview) -> None:
        """Append the next bytes of the data set (dropped once a refusal is known)."""
        self.size += len(data)
        if self.problem is None:
            self._write(data)

    def _drop(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def discard(self) -> None:
        """Drop what arrived (the association ended first); nothing was acknowledged."""
        self._drop()

    def finish(self) -> StoredInstance:
        """Check, place and index the complete data set.

        Raises
        ------
        StoreError
            A subclass whose ``status`` is the DIMSE status to answer; the
            temporary file is gone then.
        """
        try:
            if self.problem is not None:
                raise self.problem
            assert self._fd is not None and self._tmp is not None
            header = self._header()
            return self.store.adopt(
                self._fd, self._tmp, header, self.transfer_syntax, self.provenance
            )
        finally:
            self._drop()

    def park(self) -> ParkedInstance:
        """Check the complete data set as :meth:`finish` does, then close it and leave it in ``tmp/``.

        Raises
        ------
        StoreError
            As :meth:`finish`; the temporary file is gone then.
        """
        try:
            if self.problem is not None:
                raise self.problem
            assert self._fd is not None and self._tmp is not None
            parked = ParkedInstance(
                self.store, self._tmp, self._header(), self.transfer_syntax, self.provenance
            )
            self._tmp = None  # the parked instance owns the file now: _drop only closes it
            return parked
        finally:
            self._drop()

    def _header(self) -> InstanceHeader:
        """The data set's header, scanned from the file; its UIDs must be the request's."""
        assert self._fd is not None
        if self.size == 0:
            raise UnreadableDataset("dataset cannot be parsed: it is empty")
        with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as view:
            header = parse_header(
                view, self.transfer_syntax, self.store.keywords, start=self._meta_length
            )
        if header.sop_instance_uid != self.sop_instance_uid:
            raise UIDMismatch(
                f"dataset SOPInstanceUID {header.sop_instance_uid} differs from the request's "
                f"{self.sop_instance_uid}"
            )
        if header.sop_class_uid != self.sop_class_uid:
            raise UIDMismatch(
                f"dataset SOPClassUID {header.sop_class_uid} differs from the request's "
                f"{self.sop_class_uid}"
            )
        return header


@dataclass(frozen=True)
class ParkedInstance:
    """A complete, checked data set under ``tmp/``, closed, waiting to be committed or discarded."""

    store: InstanceStore
    path: Path
    header: InstanceHeader
    transfer_syntax: str
    provenance: Provenance

    def commit(self) -> StoredInstance:
        """Rename into place, fsync and index it: the last steps of :meth:`IncomingInstance.finish`.

        Raises
        ------
        StoreError
            A subclass whose ``status`` says why; the temporary file is gone then.
        """
        try:
            # Read-only is enough: fsync flushes the file whichever descriptor asks.
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.discard()
            raise OutOfResources(
                f"cannot reopen {self.path.name} in tmp/: {exc.strerror or exc}"
            ) from exc
        try:
            return self.store.adopt(
                fd, self.path, self.header, self.transfer_syntax, self.provenance
            )
        finally:
            os.close(fd)
            self.discard()  # after a refusal; a committed file is no longer there

    def discard(self) -> None:
        """Remove it; it was never acknowledged."""
        self.path.unlink(missing_ok=True)


class IncomingFile:
    """A whole DICOM Part 10 file arriving in chunks (a STOW-RS part).

    ``write`` its bytes, then ``finish``, ``park`` or ``discard``. Until the
    File Meta Information is complete the bytes are buffered (at most
    *meta_limit*); then the transfer syntax and SOP UIDs it names open an
    :class:`IncomingInstance` and every later byte goes straight to disk.

    Parameters
    ----------
    store
        Where it goes.
    provenance
        Who sends it.
    admit
        Called with the file meta once it is read and its UIDs are valid; it
        raises a :class:`StoreError` to refuse the file (e.g. a SOP class the
        node does not store), whose remaining bytes are then dropped.
    meta_limit
        The most bytes buffered while the File Meta Information is incomplete.
    """

    def __init__(
        self,
        store: InstanceStore,
        provenance: Provenance,
        admit: Callable[[FileMeta], None] | None = None,
        meta_limit: int = META_LIMIT,
    ) -> None:
        self.store = store
        self.provenance = provenance
        self.admit = admit
        self.meta_limit = meta_limit
        self.meta: FileMeta | None = None
        self.problem: StoreError | None = None
        self.size = 0  # bytes of the whole file received
        self._buffer = bytearray()
        self._incoming: IncomingInstance | None = None

    @property
    def sop_class_uid(self) -> str:
        """Media Storage SOP Class UID from the file meta ("" before it is read)."""
        return self.meta.sop_class_uid if self.meta else ""

    @property
    def sop_instance_uid(self) -> str:
        """Media Storage SOP Instance UID from the file meta ("" before it is read)."""
        return self.meta.sop_instance_uid if self.meta else ""

    def write(self, data: bytes | memoryview) -> None:
        """Append the next bytes of the file (dropped once a refusal is known)."""
        self.size += len(data)
        if self.problem is not None:
            return
        if self._incoming is not None:
            self._incoming.write(memoryview(data))
            return
        self._buffer += data
        self._read_meta(complete=False)

    def _read_meta(self, *, complete: bool) -> None:
        try:
            meta = read_file_meta(self._buffer, complete=complete)
            if meta is None:
                if len(self._buffer) > self.meta_limit:
                    raise InvalidFileMeta(
                        "the File Meta Information does not end within the first "
                        f"{self.meta_limit // 1024} KiB of the file"
                    )
                return
            self.meta = meta
            require_uid(meta.transfer_syntax, "TransferSyntaxUID")
            require_uid(meta.sop_class_uid, "MediaStorageSOPClassUID")
            require_uid(meta.sop_instance_uid, "MediaStorageSOPInstanceUID")
            if self.admit is not None:
                self.admit(meta)
        except StoreError as exc:
            self.problem = exc
            self._buffer = bytearray()
            return
        self._incoming = self.store.receive(
            meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax, self.provenance
        )
        rest, self._buffer = bytes(self._buffer[meta.length :]), bytearray()
        if rest:
            self._incoming.write(memoryview(rest))

    def _complete(self) -> IncomingInstance:
        """The data set, all bytes in; raises the refusal if there is one."""
        if self.problem is None and self._incoming is None:
            self._read_meta(complete=True)
        if self.problem is not None:
            raise self.problem
        assert self._incoming is not None
        return self._incoming

    def finish(self) -> StoredInstance:
        """Check, place and index the complete file (see :meth:`IncomingInstance.finish`)."""
        return self._complete().finish()

    def park(self) -> ParkedInstance:
        """Check the complete file and leave it in ``tmp/`` (see :meth:`IncomingInstance.park`)."""
        return self._complete().park()

    def discard(self) -> None:
        """Drop what arrived; nothing was acknowledged."""
        self._buffer = bytearray()
        if self._incoming is not None:
            self._incoming.discard()
