"""Jobs an admin asks for: one study on demand, or a backfill over a source's studies.

``dicomnode run PIPELINE --study UID [--from SOURCE]`` and ``POST /api/v1/jobs``
call :func:`request_study`; ``dicomnode backfill`` calls :func:`backfill`.
Both only write job rows (:meth:`dicomnode.jobs.JobQueue.request`): the
node's workers fetch the study (the ``retrieve`` stage) and run the pipeline,
so a CLI call returns at once and survives nothing it need not.

Backfill queries the source once (C-FIND or QIDO-RS), skips every study the
pipeline's current model already processed (a ``done`` job whose ``model`` is
the one configured now) or that has a job under way, and queues the rest,
oldest study first; ``--rate N/h`` spaces their ``queued_at`` so the PACS
sees at most N retrieves an hour; ``--limit`` caps how many are queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.jobs import JobError, JobQueue
from dicomnode.models import FINAL_JOB_STATES, Job, JobStatus, Study, utcnow
from dicomnode.retrieval import RetrieveError, Source, StudyMatch, StudyQuery, open_source


class RequestError(JobError):
    """A request that cannot be queued, with a sentence (unknown pipeline or source...)."""


def default_send_to(settings: Settings, pipeline: str) -> list[str]:
    """Where results of an on-demand *pipeline* job go: the first route of that pipeline's."""
    for route in settings.routes:
        if route.pipeline == pipeline:
            return list(route.send_to)
    return []


def check_pipeline(settings: Settings, pipeline: str) -> str | None:
    """The model *pipeline* runs with now (``name version``); RequestError if it cannot run."""
    from dicomnode.pipelines import PipelineError
    from dicomnode.pipelines.registry import pipeline_class, pipeline_options

    try:
        cls = pipeline_class(pipeline, settings.pipelines.get(pipeline))
        options = pipeline_options(pipeline, cls, settings.pipeline(pipeline))
    except PipelineError as exc:
        raise RequestError(str(exc)) from None
    return cls.configured_model(pipeline, options)


def open_named_source(settings: Settings, name: str) -> Source:
    """The client of ``[[sources]]`` entry *name*; RequestError naming the known ones."""
    try:
        return open_source(settings.source(name), settings.node)
    except KeyError:
        known = ", ".join(s.name for s in settings.sources) or "none configured"
        raise RequestError(f"no source named {name!r} (sources: {known})") from None


def _check_send_to(settings: Settings, send_to: Sequence[str]) -> None:
    names = {d.name for d in settings.destinations} | {"sender"}
    for target in send_to:
        if target not in names:
            raise RequestError(f"send_to: unknown destination {target!r}")


def request_study(
    settings: Settings,
    queue: JobQueue,
    *,
    pipeline: str,
    study_instance_uid: str,
    source: str | None,
    requested_by: str,
    send_to: Sequence[str] | None = None,
    priority: int = 0,
) -> Job:
    """Queue *pipeline* on one study, fetched from *source* first when given.

    The study is looked up at the source now, so a wrong UID or an unreachable
    PACS is reported to the admin at once rather than in a failed job.

    Raises
    ------
    RequestError
        Unknown pipeline, source or destination; the study is not at the source.
    RetrieveError
        The source could not be queried.
    JobError
        A job of this pipeline is already under way on the study.
    """
    check_pipeline(settings, pipeline)
    targets = list(default_send_to(settings, pipeline) if send_to is None else send_to)
    _check_send_to(settings, targets)
    fields: dict[str, str | None] = {}
    if source is not None:
        found = open_named_source(settings, source).find_studies(
            StudyQuery(study_instance_uid=study_instance_uid)
        )
        if not found:
            raise RequestError(f"study {study_instance_uid} is not at source {source}")
        fields = _study_fields(settings, source, found[0])
    return queue.request(
        study_instance_uid,
        pipeline,
        requested_by=requested_by,
        source=source,
        study_fields=fields,
        send_to=targets,
        priority=priority,
    )


def _study_fields(settings: Settings, source: str, match: StudyMatch) -> dict[str, str | None]:
    """The new study row's columns; its calling AE is the source's, so ``sender`` means it."""
    fields = match.study_fields()
    config = settings.source(source)
    if config.kind == "dimse":
        fields["calling_aet"] = config.ae_title
    return fields


@dataclass
class BackfillResult:
    """What a backfill found, queued and skipped (each skip with its reason)."""

    found: int = 0
    queued: list[tuple[str, int, datetime]] = field(default_factory=list)  # uid, job id, not before
    skipped: list[tuple[str, str]] = field(default_factory=list)  # uid, why
    model: str | None = None

    def summary(self, source: str, pipeline: str) -> str:
        """One line for the admin."""
        return (
            f"{self.found} matching stud{'y' if self.found == 1 else 'ies'} at {source}; "
            f"{len(self.queued)} queued for {pipeline}, {len(self.skipped)} skipped"
        )


def backfill(
    settings: Settings,
    queue: JobQueue,
    *,
    source: str,
    pipeline: str,
    requested_by: str,
    modality: str | None = None,
    since: date | None = None,
    until: date | None = None,
    limit: int | None = None,
    rate_per_hour: float | None = None,
    send_to: Sequence[str] | None = None,
    dry_run: bool = False,
) -> BackfillResult:
    """Queue *pipeline* on the studies at *source* it has not processed with its current model.

    Raises
    ------
    RequestError
        Unknown pipeline, source or destination; a bad limit or rate.
    RetrieveError
        The source could not be queried.
    """
    if limit is not None and limit < 1:
        raise RequestError("limit: must be at least 1")
    if rate_per_hour is not None and rate_per_hour <= 0:
        raise RequestError("rate: must be a positive number of studies per hour")
    result = BackfillResult(model=check_pipeline(settings, pipeline))
    targets = list(default_send_to(settings, pipeline) if send_to is None else send_to)
    _check_send_to(settings, targets)
    query = StudyQuery(modality=modality, since=since, until=until)
    matches = sorted(
        open_named_source(settings, source).find_studies(query),
        key=lambda m: (m.study_date or "", m.study_instance_uid),
    )
    result.found = len(matches)
    jobs = _existing_jobs(queue, pipeline, [m.study_instance_uid for m in matches])
    spacing = timedelta(hours=1 / rate_per_hour) if rate_per_hour else timedelta(0)
    start = utcnow()
    for match in matches:
        uid = match.study_instance_uid
        why = _skip_reason(jobs.get(uid), result.model)
        if why is not None:
            result.skipped.append((uid, why))
            continue
        if limit is not None and len(result.queued) >= limit:
            result.skipped.append((uid, f"over the limit of {limit}"))
            continue
        not_before = start + spacing * len(result.queued)
        if dry_run:
            result.queued.append((uid, 0, not_before))
            continue
        job = queue.request(
            uid,
            pipeline,
            requested_by=requested_by,
            source=source,
            study_fields=_study_fields(settings, source, match),
            send_to=targets,
            not_before=not_before,
            reason=f"backfill from {source}",
        )
        result.queued.append((uid, job.id, not_before))
    return result


def _existing_jobs(queue: JobQueue, pipeline: str, uids: list[str]) -> dict[str, Job]:
    """The jobs of *pipeline* on these studies, by Study Instance UID."""
    found: dict[str, Job] = {}
    with queue.sessions() as session:
        for start in range(0, len(uids), 500):  # bounded IN lists
            rows = session.execute(
                select(Job)
                .join(Study, Job.study_id == Study.id)
                .where(
                    Job.pipeline == pipeline,
                    Study.study_instance_uid.in_(uids[start : start + 500]),
                )
            ).scalars()
            found.update({job.study_instance_uid: job for job in rows})
    return found


def _skip_reason(job: Job | None, model: str | None) -> str | None:
    """Why backfill leaves a study alone, or None to queue it."""
    if job is None:
        return None
    if job.status not in FINAL_JOB_STATES:
        return f"job {job.id} is {job.status}"
    if job.status == JobStatus.DONE and job.model == model:
        return f"already processed by {model or 'this pipeline'} (job {job.id})"
    if job.status == JobStatus.CANCELLED:
        return f"job {job.id} was cancelled by an administrator; run it on its own to force"
    return None  # failed, or done by another model: run again


__all__ = [
    "BackfillResult",
    "RequestError",
    "RetrieveError",
    "backfill",
    "check_pipeline",
    "default_send_to",
    "request_study",
]
