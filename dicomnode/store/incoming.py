"""One data set being received: its bytes go to disk as they arrive, never all into memory.

:class:`IncomingInstance` is what the receiver streams a C-STORE into (and
what :meth:`dicomnode.store.InstanceStore.store` uses for bytes it already
holds). The order is the store's durability promise:

1. the request's UIDs are checked (they become file names) and the File Meta
   Information is written to a new file under ``tmp/``;
2. each fragment of the data set is appended as it arrives, so memory per
   association is one network chunk whatever the object's size;
3. :meth:`IncomingInstance.finish`: the file is memory-mapped and its element
   headers scanned (truncation, the UIDs the index needs, routing
   attributes), renamed into place and fsynced, and its row committed;
   only then may the receiver answer Success.

A refusal found early (an invalid UID, no disk space, a write error) is kept
until the data set is complete: the peer must be answered with a status,
and the rest of its data is read and dropped, not written.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.store.errors import OutOfResources, StoreError, UIDMismatch, UnreadableDataset
from dicomnode.store.header import InstanceHeader, file_meta_bytes, parse_header, require_uid

if TYPE_CHECKING:
    from dicomnode.store import InstanceStore, StoredInstance
    from dicomnode.store.index import Provenance


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
                view = view[os.write(self._fd, view) :]
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
