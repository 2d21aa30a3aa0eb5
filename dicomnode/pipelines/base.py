"""The pipeline contract, the registry and the per-job context."""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dicomnode.config import PipelineConfig


class PipelineError(Exception):
    """A failure the admin can act on; its message becomes the job's error sentence."""


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


@dataclass
class JobContext:
    """What a pipeline sees of its job.

    ``stage(name)`` times a block into the job's timeline; ``log(message)``
    adds a line; ``check_cancelled()`` raises when an admin cancelled the job.
    """

    job_id: int
    study_instance_uid: str
    series: list[SeriesInput]
    work_dir: Path
    study: dict[str, Any] = field(default_factory=dict)
    event_sink: Callable[[str, str, float | None, str], None] | None = None
    cancelled: Callable[[], bool] = lambda: False

    def log(self, message: str, *, stage: str = "pipeline", level: str = "info") -> None:
        """Add one line to the job's timeline."""
        if self.event_sink is not None:
            self.event_sink(stage, message, None, level)

    @contextmanager
    def stage(self, name: str, message: str = "") -> Iterator[None]:
        """Time a stage of the pipeline into the job's events."""
        start = time.perf_counter()
        yield
        if self.event_sink is not None:
            self.event_sink(name, message, time.perf_counter() - start, "info")

    def check_cancelled(self) -> None:
        """Raise PipelineError if the job was cancelled meanwhile."""
        if self.cancelled():
            raise PipelineError("job cancelled while running")


class Pipeline:
    """Base class of pipelines.

    Subclasses set ``name`` and implement :meth:`run`. ``__init__`` is where a
    model is loaded: it runs once per worker process.
    """

    name: ClassVar[str] = ""

    def __init__(self, name: str, config: PipelineConfig) -> None:
        self.pipeline_name = name
        self.config = config

    def run(self, context: JobContext) -> list[ResultObject]:
        """Process one study; return the DICOM objects written under ``context.work_dir``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``__init__`` took (GPU memory, files)."""


_REGISTRY: dict[str, type[Pipeline]] = {}
P = TypeVar("P", bound=type[Pipeline])


def register(name: str) -> Callable[[P], P]:
    """Class decorator: make a pipeline available under *name*."""

    def decorate(cls: P) -> P:
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorate


def registered() -> dict[str, type[Pipeline]]:
    """The built-in and registered pipelines by name."""
    _load_builtins()
    return dict(_REGISTRY)


# Built-in pipelines; each imports torch and MONAI lazily, so registering them is cheap.
_BUILTINS = ("geometry_qa", "lung_nodule", "brain_tumor", "fundus_dr")


def _load_builtins() -> None:
    for module in _BUILTINS:
        name = f"dicomnode.pipelines.{module}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def get_pipeline_class(name: str, config: PipelineConfig) -> type[Pipeline]:
    """Resolve ``config.type`` (or *name*): a registered name or ``"module:Class"``."""
    target = config.type or name
    if ":" in target:
        module_name, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PipelineError(f"pipeline {name}: cannot import {target}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
            raise PipelineError(f"pipeline {name}: {target} is not a Pipeline subclass")
        return cls
    classes = registered()
    if target not in classes:
        known = ", ".join(sorted(classes)) or "none"
        raise PipelineError(f"no pipeline named {target!r} (known: {known})")
    return classes[target]
