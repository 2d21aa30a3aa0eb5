"""The REST endpoints under ``/api/v1``: jobs, studies, statistics.

Listings take the same filters as ``dicomnode jobs list`` and build the same
:class:`~dicomnode.jobs.JobFilter`, so both select the same jobs and print
the same fields. Bad parameters are answered 422 with a sentence naming the
parameter (unknown parameters too: a typo must not silently widen a filter),
unknown ids 404, actions a job's state does not allow 409.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request

from dicomnode.api.auth import Principal
from dicomnode.api.context import admin, context, reader
from dicomnode.api.schemas import (
    JobDetailOut,
    JobPage,
    JobRequest,
    Problem,
    StudyOut,
    StudyPage,
)
from dicomnode.jobs import (
    JOB_LISTING,
    MAX_ID,
    MAX_PAGE,
    JobFilter,
    ListingField,
    TextListing,
    job_to_dict,
    parse_time,
)
from dicomnode.ondemand import request_study
from dicomnode.stats import StatsWindow, job_statistics
from dicomnode.studies import STUDY_LISTING, StudyFilter, find_studies

log = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No token, or an unknown one."},
    422: {"model": Problem, "description": "A bad or unknown query parameter."},
}
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": Problem, "description": "No job with this id."},
}
ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **JOB_ERRORS,
    403: {"model": Problem, "description": "A read-only token."},
    409: {"model": Problem, "description": "The job's state does not allow this action."},
}

router = APIRouter(prefix="/api/v1", dependencies=[Depends(reader)], responses=ERRORS)

PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # databases refuse NUL; nothing we store has controls
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="Job id")]
Text = Annotated[str | None, Query(max_length=64, pattern=PRINTABLE)]
Since = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=PRINTABLE,
        description="ISO 8601 (naive: UTC) or an age: 30m, 24h, 7d",
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Items to skip")]


class UnknownParameter(Exception):
    """A query parameter the endpoint does not take."""

    def __init__(self, name: str, allowed: set[str]) -> None:
        super().__init__(f"{name}: unknown query parameter; use {', '.join(sorted(allowed))}")


def only(*allowed: str) -> Callable[[Request], None]:
    """Dependency that refuses query parameters other than *allowed*."""
    names = set(allowed)

    def check(request: Request) -> None:
        for name in request.query_params:
            if name not in names:
                raise UnknownParameter(name, names)

    return check


def _time(value: str | None, name: str) -> Any:
    return parse_time(value, name) if value else None


_PAGING = (
    inspect.Parameter("limit", inspect.Parameter.KEYWORD_ONLY, annotation=Limit),
    inspect.Parameter("offset", inspect.Parameter.KEYWORD_ONLY, annotation=Offset, default=0),
)


def _parameter(field: ListingField) -> inspect.Parameter:
    """The query parameter of a listing filter, typed so FastAPI validates and documents it."""
    annotation: Any
    if field.choices:
        choice: Any = Literal.__getitem__(field.choices)  # Literal["a", "b", ...] from the table
        annotation = Annotated[choice | None, Query(description=field.help)]
    else:
        pattern = Since if field.name in ("since", "until") else Text
        annotation = Annotated[pattern, Query(description=field.help)]
    return inspect.Parameter(
        field.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=None
    )


def listing_query(
    listing: type[TextListing], fields: tuple[ListingField, ...], default_limit: int
) -> Callable[..., Any]:
    """A FastAPI dependency that builds *listing* from the query parameters of *fields*.

    The parameters come from the same :class:`~dicomnode.jobs.ListingField`
    table as the CLI's options and the dashboard's form, and nothing else is
    accepted (a typo must not silently widen a filter).
    """
    names = [f.name for f in fields] + [p.name for p in _PAGING]

    def build(request: Request, **values: Any) -> Any:
        only(*names)(request)
        return listing.parse(**values)

    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        *(_parameter(f) for f in fields),
        _PAGING[0].replace(default=default_limit),
        _PAGING[1],
    ]
    build.__signature__ = inspect.Signature(parameters, return_annotation=listing)  # type: ignore[attr-defined]
    return build


JobQuery = Annotated[JobFilter, Depends(listing_query(JobFilter, JOB_LISTING, 100))]
StudyQuery = Annotated[StudyFilter, Depends(listing_query(StudyFilter, STUDY_LISTING, 50))]


def _page(filters: Any, total: int, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"total": total, "limit": filters.limit, "offset": filters.offset, "items": items}


@router.get("/jobs", response_model=JobPage, tags=["jobs"])
def list_jobs(request: Request, filters: JobQuery) -> dict[str, Any]:
    """Jobs, newest first, filtered like ``dicomnode jobs list``; ``since``/``until`` on creation time."""
    jobs, total = context(request).queue.find(filters)
    return _page(filters, total, [job_to_dict(j) for j in jobs])


@router.post(
    "/jobs",
    response_model=JobDetailOut,
    status_code=201,
    responses={
        **ACTION_ERRORS,
        422: {"model": Problem, "description": "Unknown pipeline, source or destination."},
        502: {"model": Problem, "description": "The source could not be queried."},
    },
    tags=["jobs"],
)
def create_job(
    request: Request, body: JobRequest, who: Annotated[Principal, Depends(admin)]
) -> dict[str, Any]:
    """Queue a pipeline on one study (``dicomnode run``); with ``source`` the study is fetched
    from that PACS first and the job's timeline shows the retrieve. Admin only."""
    ctx = context(request)
    job = request_study(
        ctx.settings,
        ctx.queue,
        pipeline=body.pipeline,
        study_instance_uid=body.study_instance_uid,
        source=body.source,
        requested_by=f"api:{who.name}",
        send_to=body.send_to,
        priority=body.priority,
    )
    log.info(
        "job requested",
        extra={"job": job.id, "study": job.study_instance_uid, "by": who.name},
    )
    return job_to_dict(ctx.queue.get(job.id), events=True)


@router.get("/jobs/{job_id}", response_model=JobDetailOut, responses=JOB_ERRORS, tags=["jobs"])
def get_job(request: Request, job_id: JobId) -> dict[str, Any]:
    """One job with its timeline (stage, start, duration, message) and its outputs."""
    return job_to_dict(context(request).queue.get(job_id), events=True)


def _act(request: Request, job_id: int, action: str, who: Principal) -> dict[str, Any]:
    queue = context(request).queue
    job = queue.retry(job_id) if action == "retry" else queue.cancel(job_id)
    log.info(
        f"job {action} requested",
        extra={"job": job.id, "study": job.study_instance_uid, "by": who.name},
    )
    return job_to_dict(queue.get(job_id), events=True)


@router.post(
    "/jobs/{job_id}/retry", response_model=JobDetailOut, responses=ACTION_ERRORS, tags=["jobs"]
)
def retry_job(
    request: Request, job_id: JobId, who: Annotated[Principal, Depends(admin)]
) -> dict[str, Any]:
    """Queue a finished job again (a failed delivery is resent with the same UIDs). Admin only."""
    return _act(request, job_id, "retry", who)


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobDetailOut, responses=ACTION_ERRORS, tags=["jobs"]
)
def cancel_job(
    request: Request, job_id: JobId, who: Annotated[Principal, Depends(admin)]
) -> dict[str, Any]:
    """Cancel a job that has not finished. Admin only."""
    return _act(request, job_id, "cancel", who)


@router.get("/studies", response_model=StudyPage, tags=["studies"])
def list_studies(request: Request, filters: StudyQuery) -> dict[str, Any]:
    """Studies, newest received first, with their series and instance counts; ``since``/``until`` on last receipt."""
    items, total = find_studies(context(request).sessions, filters)
    return _page(filters, total, items)


@router.get(
    "/studies/{study_instance_uid}",
    response_model=StudyOut,
    responses={404: {"model": Problem, "description": "No such study."}},
    tags=["studies"],
)
def get_study(
    request: Request, study_instance_uid: Annotated[str, Path(max_length=64, pattern=PRINTABLE)]
) -> dict[str, Any]:
    """One study with its series, instance counts and jobs."""
    items, _ = find_studies(
        context(request).sessions, StudyFilter(study_instance_uid=study_instance_uid, limit=1)
    )
    if not items:
        raise HTTPException(404, f"no study with Study Instance UID {study_instance_uid}")
    return items[0]


@router.get("/stats", dependencies=[Depends(only("since", "until", "pipeline"))], tags=["stats"])
def stats(
    request: Request, since: Since = None, until: Since = None, pipeline: Text = None
) -> dict[str, Any]:
    """Jobs per status; over the window (default the last 24 h): finished jobs per hour and
    pipeline, p50/p95 of each stage per pipeline, and p50/p95 from queued to done per pipeline."""
    window = StatsWindow.make(_time(since, "since"), _time(until, "until"))
    return job_statistics(context(request).sessions, window, pipeline)
