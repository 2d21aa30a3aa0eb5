"""Running the built-in pipelines on a study's files without a node, as a worker would."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom

from dicomnode.config import PipelineConfig, PriorsOptions
from dicomnode.pipelines.base import (
    JobContext,
    PriorsResult,
    PriorsService,
    PriorStudy,
    SeriesInput,
)
from dicomnode.store import parse_header_from_dataset

_LOADED: dict[str, Any] = {}


def job_context(paths: Sequence[Path], work: Path, job_id: int = 1) -> JobContext:
    """What a worker hands a pipeline: the study's series with their stored attributes."""
    by_series: dict[str, list[tuple[int, Path, pydicom.Dataset]]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(
            (int(ds.get("InstanceNumber", 0)), path, ds)
        )
    series = []
    for uid, items in by_series.items():
        items.sort(key=lambda item: item[0])
        first = items[0][2]
        series.append(
            SeriesInput(
                uid,
                str(first.Modality),
                first.get("SeriesDescription"),
                parse_header_from_dataset(first).series,
                tuple(path for _, path, _ in items),
            )
        )
    work.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id, str(first.StudyInstanceUID), series, work)


def _study_date(path: Path) -> date:
    return datetime.strptime(
        str(pydicom.dcmread(path, stop_before_pixels=True).StudyDate), "%Y%m%d"
    ).date()


class FilesPriors:
    """A :class:`PriorsService` that offers one prior study already on disk (no node, no search).

    For tests of what a pipeline writes with a prior (e.g. a viewer loading
    the follow-up SR); the search itself is tested with the node's own
    service (``tests/test_priors.py``).
    """

    def __init__(self, prior: Sequence[Path], current: Sequence[Path], work: Path) -> None:
        head = pydicom.dcmread(prior[0], stop_before_pixels=True)
        self.prior = PriorStudy(
            str(head.StudyInstanceUID),
            _study_date(prior[0]),
            head.get("AccessionNumber"),
            tuple(job_context(prior, work / "prior-series").series),
            "this node",
        )
        self.current_date = _study_date(current[0])

    def fetch(self, series: SeriesInput, options: PriorsOptions) -> PriorsResult:
        reason = f"prior study {self.prior.study_instance_uid} ({self.prior.origin})"
        return PriorsResult((self.prior,), reason, (), self.current_date)


def run_pipeline(
    name: str,
    paths: Sequence[Path],
    work: Path,
    job_id: int = 1,
    priors: PriorsService | None = None,
) -> list[Path]:
    """The result files of pipeline *name* (shipped bundle, CPU) on the study of *paths*.

    Each pipeline is loaded once per test process, as a worker keeps it. A
    pipeline that wants priors gets *priors* (None: none; its report is a baseline).
    """
    from dicomnode.pipelines.registry import pipeline_class

    if name not in _LOADED:
        _LOADED[name] = pipeline_class(name)(name, PipelineConfig(device="cpu"))
    context = job_context(paths, work, job_id)
    context.priors = priors
    return [r.path for r in _LOADED[name].run(context)]
