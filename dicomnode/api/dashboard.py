"""The dashboard: server-rendered pages over the same queries as the REST API.

- ``/dashboard``: the job table with the API's filters, live refresh (a few
  lines of JavaScript re-fetch the page and swap in rows, counts and charts),
  and small charts of the last
  24 hours: finished jobs per hour and p50/p95 time per pipeline;
- ``/dashboard/jobs/{id}``: one job with its timeline, outputs and the retry
  and cancel buttons;
- ``/dashboard/failures``: failed jobs with a retry button each;
- ``/dashboard/studies``: received studies with series and instance counts.

With ``[[api.tokens]]`` configured, a login form keeps the token in an
HttpOnly, SameSite=Strict cookie; buttons post forms (no JavaScript needed).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from dicomnode.api.auth import COOKIE, Principal
from dicomnode.api.context import context
from dicomnode.jobs import (
    FINAL_JOB_STATES,
    JOB_LISTING,
    MAX_ID,
    FilterError,
    JobError,
    JobFilter,
    UnknownJob,
    job_to_dict,
)
from dicomnode.models import JobStatus, utcnow
from dicomnode.stats import StatsWindow, job_statistics
from dicomnode.studies import StudyFilter, find_studies

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dashboard", include_in_schema=False)
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
FILTER_FIELDS = tuple(f.name for f in JOB_LISTING)  # the same filters as the API and CLI
PAGE_SIZE = 50
NOTICES = {
    "retry": "Retry requested: the job is queued again (or its results are being resent).",
    "cancel": "The job was cancelled.",
    "login": "Signed in.",
}


# -- helpers --------------------------------------------------------------------------


def _viewer(request: Request) -> Principal:
    """The signed-in principal; without one, a redirect to the login form."""
    auth = context(request).auth
    try:
        return auth.identify(request)
    except HTTPException:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            303,
            "login required",
            headers={"Location": "/dashboard/login?" + urlencode({"next": target})},
        ) from None


def _render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    ctx = context(request)
    html = templates.get_template(name).render(
        node=ctx.settings.node.ae_title,
        tokens=not ctx.auth.open,
        viewer=values.pop("viewer", None),
        notice=NOTICES.get(request.query_params.get("done", "")),
        **values,
    )
    return HTMLResponse(html, status_code=status)


def _job_filter(query: dict[str, str], limit: int = PAGE_SIZE) -> JobFilter:
    """A :class:`JobFilter` from the page's query string (the API's parameter names)."""
    try:
        offset = int(query.get("offset") or 0)
    except ValueError:
        raise FilterError("offset: must be a whole number") from None
    # Empty form fields arrive as "" and mean "any".
    fields = {name: query.get(name) or None for name in FILTER_FIELDS}
    return JobFilter.parse(**fields, limit=limit, offset=offset)


def _query(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k in (*FILTER_FIELDS, "offset")}


def _jobs_page(request: Request) -> tuple[list[dict[str, Any]], int, JobFilter | None, str | None]:
    try:
        filters = _job_filter(_query(request))
    except FilterError as exc:
        return [], 0, None, str(exc)
    jobs, total = context(request).queue.find(filters)
    return [job_to_dict(j) for j in jobs], total, filters, None


# -- charts ---------------------------------------------------------------------------


def _charts(request: Request) -> dict[str, Any]:
    """Hourly throughput bars and p50/p95 bars per pipeline over the last 24 hours."""
    now = utcnow()
    window = StatsWindow.make(now - timedelta(hours=24), now)
    stats = job_statistics(context(request).sessions, window)
    hours = [
        (window.since + timedelta(hours=i + 1)).replace(minute=0, second=0, microsecond=0)
        for i in range(24)
    ]
    keys = [h.isoformat() for h in hours]
    throughput: dict[str, dict[str, Any]] = {}
    for row in stats["throughput"]:
        chart = throughput.setdefault(
            row["pipeline"], {"done": dict.fromkeys(keys, 0), "failed": dict.fromkeys(keys, 0)}
        )
        if row["hour"] in chart["done"]:
            chart["done"][row["hour"]] = row["done"]
            chart["failed"][row["hour"]] = row["failed"]
    bars = {
        pipeline: [
            {"hour": k[11:16], "done": chart["done"][k], "failed": chart["failed"][k]} for k in keys
        ]
        for pipeline, chart in sorted(throughput.items())
    }
    peak = max([b["done"] + b["failed"] for rows in bars.values() for b in rows] or [0]) or 1
    latency = [{"pipeline": p["pipeline"], **p["queued_to_done"]} for p in stats["pipelines"]]
    slowest = max([row["p95_s"] or 0 for row in latency] or [0]) or 1
    return {
        "throughput": bars,
        "peak": peak,
        "latency": latency,
        "slowest": slowest,
        "stages": stats["stages"],
        "by_status": stats["jobs_by_status"],
    }


# -- pages ----------------------------------------------------------------------------


@router.get("")
def jobs(request: Request) -> Response:
    """The job table with filters, paging, live refresh and charts."""
    viewer = _viewer(request)
    rows, total, filters, error = _jobs_page(request)
    query = _query(request)
    pager = {}
    if filters is not None:
        base = {k: v for k, v in query.items() if k != "offset" and v}
        if filters.offset > 0:
            pager["newer"] = urlencode({**base, "offset": max(0, filters.offset - PAGE_SIZE)})
        if filters.offset + PAGE_SIZE < total:
            pager["older"] = urlencode({**base, "offset": filters.offset + PAGE_SIZE})
    try:
        refresh = min(300, max(1, int(request.query_params.get("refresh") or 5)))
    except ValueError:
        refresh = 5
    pipelines = sorted({r.pipeline for r in context(request).settings.routes})
    return _render(
        request,
        "jobs.html",
        status=422 if error else 200,
        viewer=viewer,
        jobs=rows,
        total=total,
        offset=filters.offset if filters else 0,
        error=error,
        query=query,
        statuses=[s.value for s in JobStatus],
        pipelines=pipelines,
        pager=pager,
        refresh=refresh,
        charts=_charts(request),
    )


@router.get("/failures")
def failures(request: Request) -> Response:
    """Failed jobs, newest first, each with its error and a retry button."""
    viewer = _viewer(request)
    jobs, total = context(request).queue.find(JobFilter(status=JobStatus.FAILED, limit=200))
    return _render(
        request,
        "failures.html",
        viewer=viewer,
        jobs=[job_to_dict(j) for j in jobs],
        total=total,
    )


@router.get("/studies")
def studies(request: Request) -> Response:
    """Received studies with their series, instance counts and jobs."""
    viewer = _viewer(request)
    rows, total = find_studies(context(request).sessions, StudyFilter(limit=200))
    return _render(request, "studies.html", viewer=viewer, studies=rows, total=total)


def _job_id(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise UnknownJob(f"no job with id {raw}")
    return int(raw)


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str) -> Response:
    """One job: summary, timeline, outputs, retry and cancel."""
    viewer = _viewer(request)
    return _job_page(request, viewer, job_id)


def _job_page(
    request: Request, viewer: Principal, raw_id: str, status: int = 200, error: str | None = None
) -> Response:
    try:
        data = job_to_dict(context(request).queue.get(_job_id(raw_id)), events=True)
    except UnknownJob as exc:
        return _render(request, "missing.html", status=404, viewer=viewer, message=str(exc))
    longest = max([e["duration_s"] or 0 for e in data["events"]] or [0]) or 1
    return _render(
        request,
        "job.html",
        status=status,
        viewer=viewer,
        job=data,
        longest=longest,
        error=error,
        can_retry=data["status"] in FINAL_JOB_STATES and viewer.may("admin"),
        can_cancel=data["status"] not in FINAL_JOB_STATES and viewer.may("admin"),
    )


@router.post("/jobs/{job_id}/{action}")
def act(request: Request, job_id: str, action: str) -> Response:
    """Retry or cancel from a button (admin); back to the job page, or to ``next``."""
    viewer = _viewer(request)
    if action not in ("retry", "cancel"):
        raise HTTPException(404, "no such action")
    if not viewer.may("admin"):
        return _job_page(request, viewer, job_id, 403, f"{action} needs an admin token")
    try:
        number = _job_id(job_id)
        queue = context(request).queue
        done = queue.retry(number) if action == "retry" else queue.cancel(number)
    except UnknownJob as exc:
        return _render(request, "missing.html", status=404, viewer=viewer, message=str(exc))
    except JobError as exc:
        return _job_page(request, viewer, job_id, 409, str(exc))
    log.info(
        f"job {action} requested",
        extra={"job": done.id, "study": done.study_instance_uid, "by": viewer.name},
    )
    back = request.query_params.get("next", "")
    if not back.startswith("/dashboard") or "//" in back:  # never an open redirect
        back = f"/dashboard/jobs/{done.id}"
    separator = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{separator}done={action}", status_code=303)


# -- sign-in --------------------------------------------------------------------------


def _next(raw: str | None) -> str:
    return raw if raw and raw.startswith("/dashboard") and "//" not in raw else "/dashboard"


@router.get("/login")
def login_form(request: Request) -> Response:
    """The token form."""
    return _render(request, "login.html", next=_next(request.query_params.get("next")))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token, keep it in a cookie and go on."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _next((form.get("next") or [""])[0])
    if context(request).auth.lookup(token) is None:
        return _render(request, "login.html", status=401, next=target, error="Unknown token.")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Forget the token cookie."""
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
