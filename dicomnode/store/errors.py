"""Why a C-STORE is refused, each with the DIMSE status the receiver answers.

The receiver turns a :class:`StoreError` into its ``status`` and puts the
message in the Error Comment, so every message is a sentence a modality's
operator can act on. :class:`RecoveryError` is not a C-STORE answer: it stops
start-up when the index cannot be brought back in line with the files.
"""

from __future__ import annotations


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


class RecoveryError(Exception):
    """Start-up recovery cannot index the stored files; the node must not open its port.

    Raised instead of quarantining a good file: a database that refuses rows
    is a fault of the node, not of the file, and serving on would acknowledge
    instances whose rows may be lost the same way.
    """
