"""The model pipeline: select → load → preprocess → infer → postprocess → write.

:class:`ModelPipeline` fixes the order of the stages and times each into the
job's timeline; a subclass (one per clinical task) fills them in. The model
bundle and the network are loaded in ``__init__``, which a worker runs once
and keeps, so a job pays only for its own data.

Stages pass typed values along: ``ModelPipeline[Selected, Loaded, Prepared,
Raw, Findings]`` says what each returns. Stage outputs are immutable: make
them frozen dataclasses (or tuples); after each stage the base class also
makes every numpy array in the output read-only, so a later stage that tried
to change an earlier stage's data in place fails at once instead of silently
changing what the SEG is written from. ``write`` returns highdicom/pydicom
datasets; the base class saves them under the job's work directory and hands
them to delivery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
from pydicom import Dataset

from dicomnode.config import ModelOptions, PipelineOptions, ResultOptions
from dicomnode.pipelines.base import (
    JobContext,
    Pipeline,
    PipelineError,
    ResultObject,
    SeriesInput,
)
from dicomnode.pipelines.bundle import Bundle, bundle_identity, load_bundle, resolve_bundle_path
from dicomnode.pipelines.inference import Runtime

if TYPE_CHECKING:
    from dicomnode.results import AlgorithmInfo, SegmentSpec, SeriesSpec
    from dicomnode.results.pr import Annotation
    from dicomnode.revisions import Predecessor

STAGES = ("select", "load", "preprocess", "infer", "postprocess", "write")
# Pipelines that want priors add this stage between postprocess and write.
PRIORS_STAGE = "priors"

Selected = TypeVar("Selected")
Loaded = TypeVar("Loaded")
Prepared = TypeVar("Prepared")
Raw = TypeVar("Raw")
Findings = TypeVar("Findings")


def _nodes(value: Any) -> Iterator[Any]:
    """*value* and everything in it, reached through dataclasses, tuples, lists and dicts."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from _nodes(getattr(value, item.name))
    elif isinstance(value, tuple | list):
        for part in value:
            yield from _nodes(part)
    elif isinstance(value, Mapping):
        for part in value.values():
            yield from _nodes(part)


def freeze(value: Any) -> Any:
    """Make the numpy arrays in *value* read-only, through dataclasses, tuples, lists and dicts.

    Returns *value*. Other objects (datasets, tensors) are left as they are.
    """
    for node in _nodes(value):
        if isinstance(node, np.ndarray):
            node.flags.writeable = False
    return value


def series_read(value: Any) -> list[SeriesInput]:
    """The :class:`SeriesInput` objects in a ``select`` result, each once, in order.

    Walks dataclasses, tuples, lists and dicts as :func:`freeze` does, so a
    stage may return one series, several, or a dataclass holding them.
    """
    found: dict[str, SeriesInput] = {}
    for node in _nodes(value):
        if isinstance(node, SeriesInput):
            found.setdefault(node.series_instance_uid, node)
    return list(found.values())


@dataclass(frozen=True)
class ResultWriter:
    """What every result object of one job shares: model, series settings, the UID key.

    Result UIDs derive from *uid_key* (the study, the job, the model and, from
    revision 2 on, the revision), so the same job re-run by the same model on the
    same inputs resends the same objects, and a revision (a late series changed
    the inputs, a model update) makes new ones in new series instead of
    overwriting what radiologists already saw under the old UIDs; its SR cites
    the earlier SRs (*predecessors*, ``docs/revisions.md``).
    """

    algorithm: AlgorithmInfo
    options: ResultOptions
    pipeline: str
    uid_key: str
    revision: int = 1
    predecessors: tuple[Predecessor, ...] = ()

    @classmethod
    def for_job(
        cls, algorithm: AlgorithmInfo, options: ResultOptions, pipeline: str, context: JobContext
    ) -> ResultWriter:
        """The writer of *context*'s job: UIDs keyed on its study, job id, model and revision."""
        key = f"{context.study_instance_uid}/{context.job_id}/{algorithm.name} {algorithm.version}"
        if context.revision > 1:
            # Revision 1 keeps the key results always had: their UIDs do not change.
            key += f"/revision {context.revision}"
        return cls(algorithm, options, pipeline, key, context.revision, context.predecessors)

    def series(self, kind: str) -> SeriesSpec:
        """Series Number and Description of result *kind* ("seg", "sr", "sc" or "pr")."""
        from dicomnode.results import SeriesSpec

        number, description = self.options.result_series(kind, self.pipeline)
        return SeriesSpec(
            number,
            description,
            revision=self.revision,
            predecessors=self.predecessors if kind == "sr" else (),
        )

    def segmentation(
        self, source: Sequence[Dataset], labels: np.ndarray, segments: Sequence[SegmentSpec]
    ) -> Dataset:
        """A SEG of *labels* (0: background, n: ``segments[n - 1]``) on *source*."""
        from dicomnode.results import write_segmentation

        return write_segmentation(
            source,
            labels,
            segments,
            algorithm=self.algorithm,
            series=self.series("seg"),
            uid_key=self.uid_key,
            omit_empty_frames=self.options.omit_empty_frames,
        )

    def presentation_state(
        self, source: Sequence[Dataset], annotations: Sequence[Annotation]
    ) -> Dataset | None:
        """A GSPS of *annotations* on *source*; None when the options ask for none or none is drawn."""
        from dicomnode.results.pr import write_presentation_state

        if not self.options.presentation_states or not any(a.outlines for a in annotations):
            return None
        return write_presentation_state(
            source,
            annotations,
            algorithm=self.algorithm,
            series=self.series("pr"),
            uid_key=self.uid_key,
        )


class ModelPipeline(Pipeline, Generic[Selected, Loaded, Prepared, Raw, Findings]):
    """Base of pipelines that run a bundle's network on a study.

    Subclasses set ``default_bundle`` (a folder under ``models/``, or an
    absolute path for a bundle shipped inside a plugin package), their
    ``options_model`` (a subclass of :class:`~dicomnode.config.ModelOptions`)
    and implement the stage methods. ``self.bundle``, ``self.runtime`` and
    ``self.algorithm`` are ready when ``load_model`` runs.
    """

    options_model: ClassVar[type[ModelOptions]] = ModelOptions
    options: ModelOptions
    declares_inputs: ClassVar[bool] = True  # run() records what select() took
    default_bundle: ClassVar[str | Path] = ""

    def __init__(self, name: str, options: ModelOptions | Mapping[str, Any]) -> None:
        from dicomnode.results import AlgorithmInfo  # highdicom: only where models run

        super().__init__(name, options)
        self.runtime = Runtime.from_config(self.options.device, self.options.amp)
        self.bundle: Bundle = load_bundle(self.options.bundle, self.default_bundle)
        self.algorithm = AlgorithmInfo(self.bundle.name, self.bundle.version, self.options.notice)
        self.load_model()

    def model_identity(self) -> str | None:
        """``name version`` of the loaded bundle (what the results' algorithm identification says)."""
        return f"{self.algorithm.name} {self.algorithm.version}"

    @classmethod
    def configured_model(cls, name: str, options: PipelineOptions) -> str | None:
        """``name version`` of the bundle *options* point at, read from its metadata only."""
        bundle = options.bundle if isinstance(options, ModelOptions) else None
        try:
            return bundle_identity(resolve_bundle_path(bundle, cls.default_bundle))
        except PipelineError:
            return None

    @classmethod
    def check(cls, name: str, options: Any) -> list[str]:
        """The bundle folder must be there (weights and configs are read at start-up)."""
        try:
            resolve_bundle_path(options.bundle, cls.default_bundle)
        except PipelineError as exc:
            return [f"pipelines.{name}.bundle: {exc}"]
        return []

    # -- configuration -------------------------------------------------------------

    def results(self, context: JobContext) -> ResultWriter:
        """The :class:`ResultWriter` of *context*'s job."""
        return ResultWriter.for_job(self.algorithm, self.options, self.pipeline_name, context)

    # -- the stages --------------------------------------------------------------------

    def load_model(self) -> None:
        """Build the network from ``self.bundle`` and load its weights (once per worker)."""
        raise NotImplementedError

    def select(self, context: JobContext) -> Selected:
        """Choose the series (and instances) this job uses; PipelineError if absent."""
        raise NotImplementedError

    def load(self, selected: Selected, context: JobContext) -> Loaded:
        """Read pixels and geometry of the selected series."""
        raise NotImplementedError

    def preprocess(self, loaded: Loaded, context: JobContext) -> Prepared:
        """Turn the loaded data into network input (resampling, intensity scaling)."""
        raise NotImplementedError

    def infer(self, prepared: Prepared, context: JobContext) -> Raw:
        """Run the network."""
        raise NotImplementedError

    def postprocess(
        self, raw: Raw, prepared: Prepared, loaded: Loaded, context: JobContext
    ) -> Findings:
        """Turn network output into findings in the source geometry."""
        raise NotImplementedError

    def write(self, findings: Findings, loaded: Loaded, context: JobContext) -> Sequence[Dataset]:
        """Build the DICOM result objects (SEG, SR, SC)."""
        raise NotImplementedError

    def compare(
        self, selected: Selected, findings: Findings, loaded: Loaded, context: JobContext
    ) -> Any:
        """The ``priors`` stage of a pipeline that ``wants_priors``: compare with the priors.

        Returns what :meth:`write_compared` takes (a pipeline's own type). Must
        never fail the job for a prior that cannot be had or used: it returns a
        baseline that says why (the base class turns an exception into one by
        calling :meth:`baseline`).
        """
        return None

    def baseline(self, findings: Findings, reason: str, context: JobContext) -> Any:
        """What :meth:`compare` returns when there is no comparison, saying *reason*."""
        return None

    def write_compared(
        self, findings: Findings, loaded: Loaded, context: JobContext, comparison: Any
    ) -> Sequence[Dataset]:
        """:meth:`write` with what :meth:`compare` returned (default: ignores it)."""
        return self.write(findings, loaded, context)

    # -- the order ---------------------------------------------------------------------

    def analyse(
        self, context: JobContext, *, record_inputs: bool = True
    ) -> tuple[Selected, Loaded, Findings]:
        """select → load → preprocess → infer → postprocess on *context*'s study, each timed.

        *record_inputs* False: a prior's analysis (its series are no input of the
        job's results and decide no revision).
        """
        with context.stage("select"):
            selected = freeze(self.select(context))
            # Before anything costly: a re-run for a late series that this pipeline does
            # not read stops here (InputsUnchanged), and the revision fixes the UIDs.
            if record_inputs:
                context.use_inputs(series_read(selected))
        context.check_cancelled()
        with context.stage("load"):
            loaded = freeze(self.load(selected, context))
        context.check_cancelled()
        with context.stage("preprocess"):
            prepared = freeze(self.preprocess(loaded, context))
        context.check_cancelled()
        with context.stage(
            "infer", f"{self.algorithm.name} {self.algorithm.version} on {self.runtime.device}"
        ):
            raw = freeze(self.infer(prepared, context))
        context.check_cancelled()
        with context.stage("postprocess"):
            findings = freeze(self.postprocess(raw, prepared, loaded, context))
        return selected, loaded, findings

    def run(self, context: JobContext) -> list[ResultObject]:
        selected, loaded, findings = self.analyse(context)
        comparison = None
        if self.wants_priors:
            context.check_cancelled()
            with context.stage("priors") as note:
                try:
                    comparison = freeze(self.compare(selected, findings, loaded, context))
                except Exception as exc:
                    if context.cancelled():
                        raise
                    # A prior never fails the job: the report goes out as a baseline. A
                    # PipelineError is a sentence already (e.g. the prior has no usable series).
                    if isinstance(exc, PipelineError):
                        reason = f"the prior could not be analysed: {exc}"
                    else:
                        reason = (
                            f"the comparison with the prior failed ({type(exc).__name__}: {exc})"
                        )
                    note.level = "warning"
                    comparison = freeze(self.baseline(findings, reason, context))
                note.message = getattr(comparison, "summary", "") or note.message
        with context.stage("write"):
            if self.wants_priors:
                datasets = list(self.write_compared(findings, loaded, context, comparison))
            else:
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
