"""What every source shares: the error sentence, the retrieve report, the protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dicomnode.retrieval.query import SeriesMatch, StudyMatch, StudyQuery
from dicomnode.store import InstanceStore


class RetrieveError(Exception):
    """A query or retrieve that did not succeed, as a sentence for the job record."""


@dataclass
class RetrieveReport:
    """What the source said about one retrieve.

    Attributes
    ----------
    method
        ``C-MOVE``, ``C-GET`` or ``WADO-RS``.
    status
        The final DIMSE status (None for WADO-RS, or before the final response).
    completed, failed, warning, remaining
        The sub-operation counts of the last response (WADO-RS: instances
        received, and 0).
    comment
        The source's Error Comment, if it sent one.
    """

    method: str
    status: int | None = None
    completed: int | None = None
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    comment: str = ""

    def update(self, status: Any) -> None:
        """Take the counts of one C-MOVE/C-GET response (missing counts keep their value)."""
        for keyword, name in (
            ("NumberOfCompletedSuboperations", "completed"),
            ("NumberOfFailedSuboperations", "failed"),
            ("NumberOfWarningSuboperations", "warning"),
            ("NumberOfRemainingSuboperations", "remaining"),
        ):
            value = status.get(keyword)
            if value is not None and value != "":
                setattr(self, name, int(value))
        self.comment = str(status.get("ErrorComment", "") or self.comment)

    @property
    def total(self) -> int:
        """Sub-operations the source counted."""
        return (self.completed or 0) + self.failed + self.warning + (self.remaining or 0)


class Source(Protocol):
    """A PACS the node queries and retrieves from (DIMSE or DICOMweb)."""

    name: str

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Studies matching *query*."""
        ...

    def find_series(self, study_instance_uid: str) -> list[SeriesMatch]:
        """The series of one study."""
        ...

    def count_instances(self, study_instance_uid: str) -> int | None:
        """How many instances the study has there, asked instance by instance."""
        ...

    def retrieve_study(
        self,
        study: StudyMatch,
        store: InstanceStore,
        cancelled: Callable[[], bool],
        deadline: float,
    ) -> RetrieveReport:
        """Bring every instance of *study* into *store* (or have it sent to the node)."""
        ...
