"""Pipelines: what runs on a study once it is routed.

A pipeline is a class registered under a name (``@register("lung_nodule")``)
or named in config as ``"package.module:Class"``. A worker builds each
pipeline once and keeps it (models load once per worker), then calls
:meth:`Pipeline.run` with a :class:`JobContext` per job. Pipelines read
files, never sockets: results are written under ``context.work_dir`` and
returned as :class:`ResultObject`; delivery is the node's business.

Model pipelines build on :class:`~dicomnode.pipelines.model.ModelPipeline`
(stages select → load → preprocess → infer → postprocess → write, each timed),
:mod:`.volume` (series to volume with patient geometry), :mod:`.bundle`
(MONAI bundles) and :mod:`.inference` (device, AMP, sliding windows, GPU
out-of-memory fallback). Those import torch and MONAI lazily, so the core node
does not pay for them.
"""

from dicomnode.pipelines.base import (
    JobContext,
    Pipeline,
    PipelineError,
    ResultObject,
    SeriesInput,
    get_pipeline_class,
    register,
    registered,
)

__all__ = [
    "JobContext",
    "Pipeline",
    "PipelineError",
    "ResultObject",
    "SeriesInput",
    "get_pipeline_class",
    "register",
    "registered",
]
