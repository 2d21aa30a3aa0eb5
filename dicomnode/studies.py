"""Study listings for admins: the CLI's ``studies list`` and ``GET /api/v1/studies``.

A study comes with its series (instance counts per series) and the jobs made
for it. Patient name, ID and birth date are never part of these listings:
PHI stays in the database, where SQL on the tables can reach it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.jobs import FilterError, ListingField, TextListing, check_listing
from dicomnode.models import Job, Series, Study, StudyStatus


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# The filters of ``studies list``, ``GET /api/v1/studies`` and the dashboard's study page.
STUDY_LISTING = (
    ListingField("status", "study state", choices=tuple(s.value for s in StudyStatus)),
    ListingField("study_instance_uid", "Study Instance UID", ("--study", "--study-instance-uid")),
    ListingField("accession_number", "Accession Number", ("--accession-number", "--accession")),
    ListingField("calling_aet", "the AE title that sent the study"),
    ListingField(
        "since", "last received at or after: ISO 8601 (naive: UTC) or an age such as 30m, 24h, 7d"
    ),
    ListingField("until", "last received before: same forms as since"),
)


@dataclass(frozen=True)
class StudyFilter(TextListing):
    """Which studies to list, newest received first.

    Attributes
    ----------
    status, study_instance_uid, accession_number, calling_aet
        Exact matches; None matches anything.
    since, until
        ``since <= last_received_at < until``.
    limit, offset
        Paging.
    """

    status: str | None = None
    study_instance_uid: str | None = None
    accession_number: str | None = None
    calling_aet: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in {s.value for s in StudyStatus}:
            raise FilterError(
                f"status: {self.status!r} is not one of {', '.join(s.value for s in StudyStatus)}"
            )
        check_listing(self, ("study_instance_uid", "accession_number", "calling_aet"))

    def conditions(self) -> list[ColumnElement[bool]]:
        """SQL conditions on :class:`Study`."""
        where: list[ColumnElement[bool]] = []
        for name in ("status", "study_instance_uid", "accession_number", "calling_aet"):
            value = getattr(self, name)
            if value is not None:
                where.append(getattr(Study, name) == value)
        if self.since is not None:
            where.append(Study.last_received_at >= self.since)
        if self.until is not None:
            where.append(Study.last_received_at < self.until)
        return where


def study_to_dict(study: Study, series: list[Series], jobs: list[Job]) -> dict[str, Any]:
    """The JSON shape of a study with its series and jobs (no patient data)."""
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "status": study.status,
        "note": study.note,
        "calling_aet": study.calling_aet,
        "called_aet": study.called_aet,
        "instances": study.instance_count,
        "modalities": sorted({s.modality for s in series if s.modality}),
        "first_received_at": _iso(study.first_received_at),
        "last_received_at": _iso(study.last_received_at),
        "completed_at": _iso(study.completed_at),
        "files_removed_at": _iso(study.files_removed_at),
        "series": [
            {
                "series_instance_uid": s.series_instance_uid,
                "modality": s.modality,
                "series_number": s.series_number,
                "series_description": s.series_description,
                "instances": s.instance_count,
            }
            for s in series
        ],
        "jobs": [{"id": j.id, "pipeline": j.pipeline, "status": j.status} for j in jobs],
    }


def find_studies(
    sessions: sessionmaker[Session], filters: StudyFilter
) -> tuple[list[dict[str, Any]], int]:
    """One page of studies (as :func:`study_to_dict`) and how many match in all."""
    where = filters.conditions()
    with sessions() as session:
        studies = list(
            session.execute(
                select(Study)
                .where(*where)
                .order_by(Study.last_received_at.desc(), Study.id.desc())
                .limit(filters.limit)
                .offset(filters.offset)
            ).scalars()
        )
        total = int(session.execute(select(func.count(Study.id)).where(*where)).scalar_one())
        ids = [s.id for s in studies]
        series: dict[int, list[Series]] = defaultdict(list)
        jobs: dict[int, list[Job]] = defaultdict(list)
        if ids:
            for row in session.execute(
                select(Series)
                .where(Series.study_id.in_(ids))
                .order_by(Series.series_number, Series.id)
            ).scalars():
                series[row.study_id].append(row)
            for job in session.execute(
                select(Job).where(Job.study_id.in_(ids)).order_by(Job.id)
            ).scalars():
                jobs[job.study_id].append(job)
    return [study_to_dict(s, series[s.id], jobs[s.id]) for s in studies], total
