"""What every pipeline's ``priors`` stage does first: the newest prior, and its registration.

A pipeline's stage (``pipelines/lung_nodule/followup.py``,
``pipelines/brain_tumor/followup.py``) asks :func:`newest_prior` for the prior
it compares with — or the sentence saying why there is none, which its
baseline report states — and registers the prior onto the current study with
:func:`registered`, which writes the timed line to the job's timeline. What
it compares, and how it reports it, is its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from dicomnode.config import PriorsOptions
from dicomnode.followup.registration import Anatomy, Registration, coarsened, register
from dicomnode.pipelines.base import JobContext, PriorStudy, SeriesInput
from dicomnode.pipelines.volume import Volume

T = TypeVar("T")


@dataclass(frozen=True)
class NoComparison:
    """Why a report is a baseline, and the current Study Date when it is known."""

    reason: str
    current_date: date | None = None


@dataclass(frozen=True)
class ChosenPrior:
    """The prior a stage compares with, and the current study's date."""

    prior: PriorStudy
    current_date: date

    @property
    def name(self) -> str:
        """``"prior study <uid> of <date>"``, as reports name it."""
        return f"prior study {self.prior.study_instance_uid} of {self.prior.study_date.isoformat()}"

    @property
    def interval_days(self) -> float:
        """Days from the prior's Study Date to the current one's."""
        return float((self.current_date - self.prior.study_date).days)

    def not_compared(self, registration: Registration) -> NoComparison:
        """The baseline's reason when *registration* is too poor to use."""
        why = registration.reason.rstrip(".")
        return NoComparison(f"{self.name} could not be compared: {why}", self.current_date)


def newest_prior(
    context: JobContext, series: SeriesInput, options: PriorsOptions
) -> ChosenPrior | NoComparison:
    """The newest prior of the study *series* belongs to (``context.priors``), or why there is none."""
    if not options.enabled:
        return NoComparison("comparison with priors is off (priors.enabled = false)")
    if context.priors is None:
        return NoComparison("no prior could be looked for (no priors service)")
    found = context.priors.fetch(series, options)
    if not found.priors or found.current_date is None:
        return NoComparison(found.reason, found.current_date)
    return ChosenPrior(found.priors[0], found.current_date)


def registered(
    prior: Volume,
    current: Volume,
    *,
    anatomy: Anatomy,
    grid_mm: Sequence[float],
    context: JobContext,
) -> Registration:
    """:func:`~dicomnode.followup.registration.register` on both volumes coarsened to *grid_mm*.

    The timed line goes to the job's timeline (stage ``priors``), a warning
    when the registration is poor.
    """
    started = time.perf_counter()
    registration = register(coarsened(prior, grid_mm), coarsened(current, grid_mm), anatomy=anatomy)
    context.log(
        f"registration prior → current ({time.perf_counter() - started:.1f} s): "
        f"{registration.reason}",
        stage="priors",
        level="warning" if registration.poor else "info",
    )
    return registration


TIME_POINT = "C2348792"  # UMLS "Time Point" (TID 1502)


def time_point_of(group: Any) -> str | None:
    """The TID 1502 Time Point of a measurement group read by highdicom (None: none)."""
    for item in group[0].ContentSequence if len(group) else ():
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == TIME_POINT:
            return str(item.TextValue)
    return None


def own_findings(prior: PriorStudy, read: Callable[[Path], T], context: JobContext) -> T | None:
    """The findings of the node's own report of *prior* (*read* reads one), None when it has none.

    A report that cannot be read is logged and skipped: the stage then runs its
    model on the prior instead.
    """
    for report in prior.results:
        try:
            return read(report)
        except Exception as exc:  # any reader failure: re-analyse rather than fail the job
            context.log(
                f"the node's report of the prior is unreadable ({exc}); re-analysing",
                stage="priors",
            )
    return None


def prior_uid_key(prior: PriorStudy, model: str) -> str:
    """The key of the node's stable Tracking UIDs for a prior it never reported on.

    From the prior study and the model (``"name version"``), so a re-run of
    the follow-up gives the same ones.
    """
    return f"{prior.study_instance_uid}/prior/{model}"
