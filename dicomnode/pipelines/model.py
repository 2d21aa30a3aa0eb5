"""The model pipeline: select → load → preprocess → infer → postprocess → write.

:class:`ModelPipeline` fixes the order of the stages and times each into the
job's timeline; a subclass (one per clinical task) fills them in. The model
bundle and the network are loaded in ``__init__``, which a worker runs once
and keeps, so a job pays only for its own data.

Stages pass one value along: what ``select`` returns goes to ``load``, and
so on. ``write`` returns highdicom/pydicom datasets; the base class saves them
under the job's work directory and hands them to delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydicom import Dataset

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.base import JobContext, Pipeline, ResultObject
from dicomnode.pipelines.bundle import Bundle, load_bundle
from dicomnode.pipelines.inference import Runtime
from dicomnode.results import AlgorithmInfo, SeriesSpec

STAGES = ("select", "load", "preprocess", "infer", "postprocess", "write")


class ModelPipeline(Pipeline):
    """Base of pipelines that run a bundle's network on a study.

    Subclasses set ``default_bundle`` (the folder under ``models/``) and
    implement the six stage methods. ``self.bundle``, ``self.runtime`` and
    ``self.algorithm`` are ready when ``load_model`` runs.
    """

    default_bundle: ClassVar[str] = ""

    def __init__(self, name: str, config: PipelineConfig) -> None:
        super().__init__(name, config)
        self.runtime = Runtime.from_config(config.device, self.option("amp", None))
        self.bundle: Bundle = load_bundle(config.bundle, self.default_bundle)
        self.algorithm = AlgorithmInfo(self.bundle.name, self.bundle.version, config.notice)
        self.load_model()

    # -- configuration -------------------------------------------------------------

    def option(self, key: str, default: Any) -> Any:
        """A pipeline option: ``[pipelines.<name>] key = ...``, else *default*."""
        extra = self.config.model_extra or {}
        return extra.get(key, default)

    def series_spec(self, kind: str) -> SeriesSpec:
        """Series Number and Description of result *kind* ("seg", "sr" or "sc")."""
        return SeriesSpec(*self.config.result_series(kind, self.pipeline_name))

    @staticmethod
    def uid_key(context: JobContext) -> str:
        """The key result UIDs derive from: the same job re-run resends the same objects."""
        return f"{context.study_instance_uid}/{context.job_id}"

    # -- the stages --------------------------------------------------------------------

    def load_model(self) -> None:
        """Build the network from ``self.bundle`` and load its weights (once per worker)."""
        raise NotImplementedError

    def select(self, context: JobContext) -> Any:
        """Choose the series (and instances) this job uses; PipelineError if absent."""
        raise NotImplementedError

    def load(self, selected: Any, context: JobContext) -> Any:
        """Read pixels and geometry of the selected series."""
        raise NotImplementedError

    def preprocess(self, loaded: Any, context: JobContext) -> Any:
        """Turn the loaded data into network input (resampling, intensity scaling)."""
        raise NotImplementedError

    def infer(self, prepared: Any, context: JobContext) -> Any:
        """Run the network."""
        raise NotImplementedError

    def postprocess(self, raw: Any, prepared: Any, loaded: Any, context: JobContext) -> Any:
        """Turn network output into findings in the source geometry."""
        raise NotImplementedError

    def write(self, findings: Any, loaded: Any, context: JobContext) -> Sequence[Dataset]:
        """Build the DICOM result objects (SEG, SR, SC)."""
        raise NotImplementedError

    # -- the order ---------------------------------------------------------------------

    def run(self, context: JobContext) -> list[ResultObject]:
        with context.stage("select"):
            selected = self.select(context)
        context.check_cancelled()
        with context.stage("load"):
            loaded = self.load(selected, context)
        context.check_cancelled()
        with context.stage("preprocess"):
            prepared = self.preprocess(loaded, context)
        context.check_cancelled()
        with context.stage(
            "infer", f"{self.algorithm.name} {self.algorithm.version} on {self.runtime.device}"
        ):
            raw = self.infer(prepared, context)
        context.check_cancelled()
        with context.stage("postprocess"):
            findings = self.postprocess(raw, prepared, loaded, context)
        with context.stage("write"):
            datasets = list(self.write(findings, loaded, context))
            return save_results(datasets, context)


def save_results(datasets: Sequence[Dataset], context: JobContext) -> list[ResultObject]:
    """Write *datasets* as DICOM files under the job's work directory."""
    results = []
    for ds in datasets:
        path = context.work_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        results.append(ResultObject(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
    return results
