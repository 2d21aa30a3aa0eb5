"""Why an instance is refused, each with the DIMSE status and the STOW-RS failure reason.

The receiver turns a :class:`StoreError` into its ``status`` and puts the
message in the Error Comment, so every message is a sentence a modality's
operator can act on. STOW-RS (:mod:`dicomnode.api.stow`) puts the
``failure_reason`` in the Failure Reason (0008,1197) of the refused part:
the same code, except where PS3.18 gives a code another meaning (its 0xC122
is "transfer syntax not supported", so a UID mismatch is 0xA900 there).
:class:`RecoveryError` is not an answer: it stops start-up when the index
cannot be brought back in line with the files.
"""

from __future__ import annotations


class StoreError(Exception):
    """An instance that must not be acknowledged.

    ``status`` is the DIMSE status of a C-STORE; ``failure_reason`` the
    Failure Reason (0008,1197) of a STOW-RS part (PS3.18 10.5.3).
    """

    status = 0xC000
    failure_reason = 0xC000

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class OutOfResources(StoreError):
    """Free space under the floor, or the disk refused the write."""

    status = 0xA700
    failure_reason = 0xA700


class InvalidUID(StoreError):
    """A UID that is not a valid DICOM UID (it would become a path)."""

    status = 0xC120
    failure_reason = 0xC120


class UnreadableDataset(StoreError):
    """The dataset bytes cannot be parsed."""

    status = 0xC121
    failure_reason = 0xC121


class UIDMismatch(StoreError):
    """The dataset's SOP UIDs differ from the C-STORE request's (a STOW-RS part: its file meta's)."""

    status = 0xC122
    failure_reason = 0xA900  # PS3.18: "data set does not match SOP class"


class UIDClash(StoreError):
    """The SOP Instance UID is already stored under another study or series."""

    status = 0xC123
    failure_reason = 0xC123


class IndexUnavailable(StoreError):
    """The file is durable but the database refused its row (e.g. it is down)."""

    status = 0xA701
    failure_reason = 0xA701


class InvalidFileMeta(UnreadableDataset):
    """A whole file (a STOW-RS part) that is not DICOM Part 10: no preamble, ``DICM`` or meta group."""


class SOPClassNotSupported(StoreError):
    """A SOP class the node does not store (the C-STORE contexts it accepts are the same)."""

    status = 0x0122
    failure_reason = 0x0122


class TransferSyntaxNotSupported(StoreError):
    """A transfer syntax the node does not take (a C-STORE would not negotiate it)."""

    status = 0xC124
    failure_reason = 0xC122  # PS3.18: "referenced transfer syntax not supported"


class StudyMismatch(StoreError):
    """A STOW-RS part whose Study Instance UID is not the one the request's URL names.

    0xC409 is the code dcm4chee-arc answers with, in the "cannot understand"
    (0xCxxx) range PS3.18 allows; the standard has no code of its own for it.
    """

    status = 0xC409
    failure_reason = 0xC409


class ProcessingFailure(StoreError):
    """Anything else that went wrong with one instance (a fault of the node, logged with its trace)."""

    status = 0x0110
    failure_reason = 0x0110


class RecoveryError(Exception):
    """Start-up recovery cannot index the stored files; the node must not open its port.

    Raised instead of quarantining a good file: a database that refuses rows
    is a fault of the node, not of the file, and serving on would acknowledge
    instances whose rows may be lost the same way.
    """
