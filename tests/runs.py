"""Running the built-in pipelines on a study's files without a node, as a worker would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.base import JobContext, SeriesInput
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


def run_pipeline(name: str, paths: Sequence[Path], work: Path, job_id: int = 1) -> list[Path]:
    """The result files of pipeline *name* (shipped bundle, CPU) on the study of *paths*.

    Each pipeline is loaded once per test process, as a worker keeps it.
    """
    from dicomnode.pipelines.registry import pipeline_class

    if name not in _LOADED:
        _LOADED[name] = pipeline_class(name)(name, PipelineConfig(device="cpu"))
    return [r.path for r in _LOADED[name].run(job_context(paths, work, job_id))]
