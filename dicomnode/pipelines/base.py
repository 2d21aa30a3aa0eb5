"""The pipeline contract: what a pipeline is given, what it returns, how it fails."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ValidationError

from dicomnode.config import ConfigError, PipelineOptions, PriorsOptions
from dicomnode.revisions import (
    InputsUnchanged,
    Predecessor,
    PriorRevision,
    describe_inputs,
    input_changes,
    predecessors,
)


class PipelineError(Exception):
    """A failure the admin can act on; its message becomes the job's error sentence."""


class OptionsError(PipelineError, ConfigError):
    """A ``[pipelines.NAME]`` section its pipeline does not accept.

    Both a configuration error (``config check`` and start-up report it in one
    line naming the key) and the reason the pipeline cannot run.
    """


@dataclass(frozen=True)
class SeriesInput:
    """One stored series of the job's study."""

    series_instance_uid: str
    modality: str | None
    series_description: str | None
    attributes: dict[str, Any]
    paths: tuple[Path, ...]  # absolute paths, in InstanceNumber order


@dataclass(frozen=True)
class ResultObject:
    """A DICOM file a pipeline produced, to be delivered."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class PriorStudy:
    """An earlier study of the patient, its images in the node's store.

    Attributes
    ----------
    study_instance_uid, study_date, accession_number
        The prior's identity and when it was made.
    series
        Its stored series (paths in the node's store), as a job's own.
    origin
        Where it came from, for the report: ``"this node"`` or ``"source pacs"``.
    results
        The node's own SR(s) of it, from a done job of the same pipeline
        (empty: the node has no findings for it and the pipeline runs its model).
    """

    study_instance_uid: str
    study_date: date
    accession_number: str | None
    series: tuple[SeriesInput, ...]
    origin: str
    results: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PriorsResult:
    """What the node found of a study's priors.

    ``priors`` newest first (empty: a baseline); ``reason`` one sentence
    saying which prior was chosen or why there is none (a report quotes it);
    ``notes`` the lines of the search for the job's timeline.
    """

    priors: tuple[PriorStudy, ...]
    reason: str
    notes: tuple[str, ...] = ()
    current_date: date | None = None


class PriorsService(Protocol):
    """Finds and fetches priors for a pipeline that wants them (the node's job, not the pipeline's).

    The worker gives a :class:`JobContext` one (``context.priors``) when the
    pipeline declares ``wants_priors``; it queries the database and the
    ``[[sources]]`` and retrieves into the store, so pipelines never open sockets.
    """

    def fetch(self, series: SeriesInput, options: PriorsOptions) -> PriorsResult:
        """The priors of the study *series* belongs to (never raises for a missing prior)."""
        ...


@dataclass
class StageNote:
    """The line a timed stage writes when it ends (see :meth:`JobContext.stage`)."""

    message: str = ""
    level: str = "info"


@dataclass
class JobContext:
    """What a pipeline sees of its job.

    ``stage(name)`` times a block into the job's timeline; ``log(message)``
    adds a line; ``check_cancelled()`` raises when an admin cancelled the job;
    ``use_inputs(series)`` records what the run reads and decides the revision
    of its results (``docs/revisions.md``).

    Attributes
    ----------
    history
        The job's earlier revisions (empty: its first results).
    only_if_changed
        The run was queued for late instances: :meth:`use_inputs` raises
        :class:`~dicomnode.revisions.InputsUnchanged` when they change nothing.
    model
        ``"name version"`` of the pipeline's model (None: no model).
    revision
        The revision these results are (set by :meth:`use_inputs`).
    inputs
        What :meth:`use_inputs` recorded; None until it is called.
    priors
        The node's :class:`PriorsService` (pipelines with ``wants_priors``);
        None when there is none (then their reports are baselines and say so).
    """

    job_id: int
    study_instance_uid: str
    series: list[SeriesInput]
    work_dir: Path
    study: dict[str, Any] = field(default_factory=dict)
    event_sink: Callable[[str, str, float | None, str], None] | None = None
    cancelled: Callable[[], bool] = lambda: False
    history: tuple[PriorRevision, ...] = ()
    only_if_changed: bool = False
    model: str | None = None
    revision: int = 1
    inputs: dict[str, dict[str, Any]] | None = None
    revision_reason: str | None = None
    # Set by the worker for pipelines that want priors; None: none can be looked up (a baseline).
    priors: PriorsService | None = None

    @property
    def predecessors(self) -> tuple[Predecessor, ...]:
        """The SRs of the earlier revisions, which this revision's SR cites."""
        return predecessors(self.history, self.revision)

    def use_inputs(self, series: Iterable[SeriesInput]) -> int:
        """Record the series this run reads; return the revision its results are.

        Call before writing results (their UIDs depend on the revision).

        Raises
        ------
        InputsUnchanged
            When :attr:`only_if_changed` and neither the inputs nor the model
            differ from the last revision: nothing needs to be re-run or re-sent.
        """
        series = list(series)
        self.inputs = describe_inputs(series)
        if not self.history:
            self.revision = 1
            return self.revision
        last = max(self.history, key=lambda r: r.number)
        changes = input_changes(last.inputs, self.inputs)
        if last.model != self.model:
            changes.append(f"model {self.model} replaces {last.model}")
        if not changes:
            self.revision = last.number
            if self.only_if_changed:
                ignored = [s for s in self.series if s.series_instance_uid not in self.inputs]
                not_read = ", ".join(
                    f"{s.series_instance_uid} ({s.modality or '?'}, {len(s.paths)} instances)"
                    for s in ignored
                )
                read = ", ".join(
                    f"{s.series_instance_uid} ({len(s.paths)} instances)" for s in series
                )
                raise InputsUnchanged(
                    f"inputs unchanged: the pipeline reads {read or 'no series'}"
                    + (f", not {not_read}" if not_read else "")
                    + f"; revision {last.number} stands, nothing re-sent"
                )
            self.log(
                f"inputs and model as in revision {last.number}: the same results "
                "(same UIDs) are written again",
                stage="revision",
            )
            return self.revision
        self.revision = last.number + 1
        self.revision_reason = "; ".join(changes)
        self.log(
            f"{self.revision_reason}: results are revision {self.revision}; its SR cites "
            f"{len(self.predecessors)} earlier report(s)",
            stage="revision",
        )
        return self.revision

    def log(self, message: str, *, stage: str = "pipeline", level: str = "info") -> None:
        """Add one line to the job's timeline."""
        if self.event_sink is not None:
            self.event_sink(stage, message, None, level)

    @contextmanager
    def stage(self, name: str, message: str = "") -> Iterator[StageNote]:
        """Time a stage of the pipeline into the job's events.

        Yields a :class:`StageNote` whose ``message`` (and ``level``) the block may
        change: a stage whose outcome is its message (``priors``: compared with
        what, or why a baseline) says it in its own timed line.
        """
        note = StageNote(message)
        start = time.perf_counter()
        yield note
        if self.event_sink is not None:
            self.event_sink(name, note.message, time.perf_counter() - start, note.level)

    def for_prior(self, prior: PriorStudy) -> JobContext:
        """A context for running the pipeline's stages on *prior* (the ``priors`` stage).

        Its lines go to this job's timeline under ``priors`` ("prior load (1.2 s)"),
        its files under ``<work_dir>/prior``; it records no inputs and decides no
        revision (a prior is no input of the job's results).
        """
        sink = self.event_sink

        def forward(stage: str, message: str, seconds: float | None, level: str) -> None:
            if sink is not None:
                took = f" ({seconds:.2f} s)" if seconds is not None else ""
                text = f"prior {stage}{took}" + (f": {message}" if message else "")
                sink("priors", text, None, level)

        work = self.work_dir / "prior"
        work.mkdir(parents=True, exist_ok=True)
        return JobContext(
            job_id=self.job_id,
            study_instance_uid=prior.study_instance_uid,
            series=list(prior.series),
            work_dir=work,
            event_sink=forward,
            cancelled=self.cancelled,
            model=self.model,
        )

    def check_cancelled(self) -> None:
        """Raise PipelineError if the job was cancelled meanwhile."""
        if self.cancelled():
            raise PipelineError("job cancelled while running")


def option_error_line(pipeline: str, error: ValidationError) -> str:
    """``pipelines.NAME.KEY: what is wrong`` for the first problem of *error* (one line)."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key for pipeline {pipeline}"
    where = f"pipelines.{pipeline}" + (f".{key}" if key else "")
    more = len(error.errors()) - 1
    return f"{where}: {message}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


class Pipeline:
    """Base class of pipelines.

    A pipeline is a class installed under the entry-point group
    ``dicomnode.pipelines`` (see ``docs/pipelines.md``). Subclasses implement
    :meth:`run` and declare their options as a pydantic model
    (``options_model``, a subclass of :class:`~dicomnode.config.PipelineOptions`;
    unknown keys are errors). ``__init__`` is where a model is loaded: it runs
    once per worker process.

    Attributes
    ----------
    options_model
        The options a ``[pipelines.NAME]`` section may hold.
    wants_priors
        Whether the pipeline compares with earlier studies of the patient.
    declares_inputs
        Whether :meth:`run` calls ``context.use_inputs`` with the series it
        reads; otherwise every series of the study counts as its input, and
        any late series re-runs it.
    """

    options_model: ClassVar[type[PipelineOptions]] = PipelineOptions
    wants_priors: ClassVar[bool] = False
    # True: run() calls context.use_inputs() with the series it reads (ModelPipeline does,
    # after select); False: every series of the study is its input (the worker says so).
    declares_inputs: ClassVar[bool] = False

    def __init__(self, name: str, options: PipelineOptions | Mapping[str, Any]) -> None:
        self.pipeline_name = name
        self.options = self.validate_options(name, options)

    @classmethod
    def validate_options(
        cls, name: str, options: PipelineOptions | Mapping[str, Any]
    ) -> PipelineOptions:
        """*options* as this pipeline's ``options_model``; :class:`OptionsError` if it refuses them."""
        if isinstance(options, cls.options_model):
            return options
        values = (
            options.model_dump(exclude_unset=True) if isinstance(options, BaseModel) else options
        )
        try:
            return cls.options_model.model_validate(dict(values))
        except ValidationError as exc:
            raise OptionsError(option_error_line(name, exc)) from None

    @classmethod
    def check(cls, name: str, options: PipelineOptions) -> list[str]:
        """Problems an admin should know before start-up (e.g. a missing bundle), one line each."""
        return []

    def run(self, context: JobContext) -> list[ResultObject]:
        """Process one study; return the DICOM objects written under ``context.work_dir``."""
        raise NotImplementedError

    def model_identity(self) -> str | None:
        """The model that makes this pipeline's results, ``"name version"``; None: no model.

        Recorded on each job it finishes: backfill skips studies this model did.
        """
        return type(self).configured_model(self.pipeline_name, self.options)

    @classmethod
    def configured_model(cls, name: str, options: PipelineOptions) -> str | None:
        """What :meth:`model_identity` will be with *options*, without building the pipeline."""
        return None

    def close(self) -> None:
        """Release what ``__init__`` took (GPU memory, files)."""
