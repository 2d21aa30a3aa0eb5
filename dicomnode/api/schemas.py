"""Response shapes of the REST API (they document the OpenAPI schema).

They mirror :func:`dicomnode.jobs.job_to_dict` and
:func:`dicomnode.studies.study_to_dict` field for field (a test checks it),
so ``dicomnode jobs list --json`` and ``GET /api/v1/jobs`` agree. Times are
ISO 8601 strings in UTC.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class OutputOut(BaseModel):
    """One result object for one destination, with its delivery status."""

    sop_instance_uid: str
    sop_class_uid: str
    destination: str
    status: str  # pending, sent, failed, skipped (the destination does not take its kind)
    attempts: int
    error: str | None
    warning: str | None  # what the peer said beside success (a C-STORE or STOW-RS warning)
    path: str


class EventOut(BaseModel):
    """One line of a job's timeline."""

    at: str | None
    started_at: str | None  # at minus the duration, for stages that took time
    stage: str
    duration_s: float | None
    level: str
    message: str


class RetrieveOut(BaseModel):
    """Progress of a job's retrieve stage: instances stored here of those the source announced."""

    received: int | None
    expected: int | None
    finished_at: str | None


class JobRequest(BaseModel):
    """``POST /api/v1/jobs``: run a pipeline on one study, fetched from a source first."""

    model_config = {"extra": "forbid"}

    pipeline: str = Field(max_length=64)
    study_instance_uid: str = Field(max_length=64)
    source: str | None = Field(None, max_length=64, description="a [[sources]] name")
    send_to: list[str] | None = Field(None, description="default: the pipeline's route's")
    priority: int = Field(0, ge=-1000, le=1000)


class JobOut(BaseModel):
    """A job as listed."""

    id: int
    study_instance_uid: str
    accession_number: str | None
    calling_aet: str | None
    pipeline: str
    route: str | None
    status: str
    error: str | None
    priority: int
    attempts: int
    worker: str | None
    created_at: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    requested_by: str | None  # on-demand and backfill jobs: who asked (None: a route)
    model: str | None  # "name version" of the model that made the results
    revision: int | None  # revision of the current results (docs/revisions.md); None: none yet
    source: str | None  # the [[sources]] entry the study is fetched from
    retrieve: RetrieveOut | None
    outputs: list[OutputOut]


class RevisionOut(BaseModel):
    """One revision of a job's results: what it read, the model, the objects it made."""

    number: int
    created_at: str | None
    model: str | None
    reason: str | None  # what changed from the previous revision
    inputs: dict[str, Any]  # series UID -> instances, digest, modality, description
    objects: list[dict[str, Any]]  # sop_instance_uid, sop_class_uid, series_instance_uid


class JobDetailOut(JobOut):
    """A job with its revisions and timeline."""

    revisions: list[RevisionOut]
    events: list[EventOut]


class JobPage(BaseModel):
    """One page of jobs, newest first."""

    total: int
    limit: int
    offset: int
    items: list[JobOut]


class SeriesOut(BaseModel):
    """One series of a study."""

    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    instances: int


class StudyJobOut(BaseModel):
    """A job of a study, in short."""

    id: int
    pipeline: str
    status: str


class StudyOut(BaseModel):
    """A study with its series and jobs (no patient data)."""

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    status: str
    note: str | None
    calling_aet: str | None
    called_aet: str | None
    instances: int
    modalities: list[str]
    first_received_at: str | None
    last_received_at: str | None
    completed_at: str | None
    files_removed_at: str | None
    series: list[SeriesOut]
    jobs: list[StudyJobOut]


class StudyPage(BaseModel):
    """One page of studies, newest received first."""

    total: int
    limit: int
    offset: int
    items: list[StudyOut]


class Problem(BaseModel):
    """An error: ``detail`` is one sentence naming the bad parameter where there is one."""

    detail: str
    errors: list[dict[str, Any]] | None = None


class Readiness(BaseModel):
    """``/readyz``: each check with ok and a sentence."""

    ready: bool
    checks: dict[str, dict[str, Any]]
