"""Pipelines: what runs on a study once it is routed.

A pipeline is a class installed under the entry-point group
``dicomnode.pipelines`` (the built-in ones register the same way, in
``pyproject.toml``), or named in config as ``type = "package.module:Class"``;
``docs/pipelines.md`` is the guide to writing one. A worker builds each
pipeline once and keeps it (models load once per worker), then calls
:meth:`Pipeline.run` with a :class:`JobContext` per job. Pipelines read
files, never sockets: results are written under ``context.work_dir`` and
returned as :class:`ResultObject`; delivery is the node's business.

- :mod:`.base` — the contract (:class:`Pipeline`, :class:`JobContext`,
  :class:`SeriesInput`, :class:`ResultObject`, :class:`PipelineError`);
- :mod:`.registry` — finding installed pipelines, validating their options;
- :mod:`.model` — :class:`~dicomnode.pipelines.model.ModelPipeline` (stages
  select → load → preprocess → infer → postprocess → write, each timed and
  typed), with :mod:`.volume` (series to volume with patient geometry),
  :mod:`.bundle` (MONAI bundles) and :mod:`.inference` (device, AMP, sliding
  windows, GPU out-of-memory fallback). These import torch and MONAI lazily,
  so the core node does not pay for them;
- one package per built-in pipeline: :mod:`.lung_nodule`, :mod:`.brain_tumor`,
  :mod:`.fundus_dr`, each split into selection, preprocessing (shared with
  ``train/``), findings and report; and :mod:`.geometry_qa`.
"""

from dicomnode.config import ModelOptions, PipelineOptions, ResultOptions
from dicomnode.pipelines.base import (
    JobContext,
    OptionsError,
    Pipeline,
    PipelineError,
    PriorsResult,
    PriorsService,
    PriorStudy,
    ResultObject,
    SeriesInput,
)
from dicomnode.pipelines.registry import build_pipeline, installed, pipeline_class

__all__ = [
    "JobContext",
    "ModelOptions",
    "OptionsError",
    "Pipeline",
    "PipelineError",
    "PipelineOptions",
    "PriorStudy",
    "PriorsResult",
    "PriorsService",
    "ResultObject",
    "ResultOptions",
    "SeriesInput",
    "build_pipeline",
    "installed",
    "pipeline_class",
]
