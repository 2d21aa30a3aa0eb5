"""The ``brain_tumor`` pipeline: its options and its stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from dicomnode.config import ModelOptions, PriorsOptions
from dicomnode.pipelines.base import JobContext, PipelineError, SeriesInput
from dicomnode.pipelines.brain_tumor.findings import (
    LABEL_NAMES,
    REGIONS,
    Findings,
    labels_from_probabilities,
    probabilities_on_grid,
)
from dicomnode.pipelines.brain_tumor.followup import BrainFollowUp, baseline, compare_with_prior
from dicomnode.pipelines.brain_tumor.preprocessing import (
    MULTIPLE,
    NORMALISATIONS,
    MaskFunction,
    Prepared,
    intensity_brain_mask,
    network_channels,
    pad_to_multiple,
    reference_grid,
    to_network_layout,
)
from dicomnode.pipelines.brain_tumor.report import write_results
from dicomnode.pipelines.brain_tumor.selection import ROLES, check_patterns, choose_sequences
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.registry import import_object
from dicomnode.pipelines.selection import run_selection
from dicomnode.pipelines.volume import Volume, load_series

if TYPE_CHECKING:
    import torch
    from pydicom import Dataset

Registration = Callable[[Volume, Volume], Volume]
Thresholds = float | list[float] | dict[str, float]


def thresholds_of(value: Thresholds | None, source: str) -> tuple[float, float, float] | None:
    """TC, WT, ET thresholds from one number, three, or a TC/WT/ET table (None: not given).

    Raises
    ------
    PipelineError
        Naming *source* (the option or the bundle) when *value* is none of those in (0, 1).
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        values: list[Any] = [value.get(region) for region in REGIONS]
    elif isinstance(value, int | float):
        values = [value] * 3
    else:
        values = list(value)
    try:
        thresholds = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        thresholds = ()
    if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
        raise PipelineError(
            f"{source} {value!r} is not a number in (0, 1), three of them (TC, WT, ET) "
            "or a table with TC, WT and ET"
        )
    return thresholds[0], thresholds[1], thresholds[2]


def _module_function(value: str | None, what: str, names: tuple[str, ...] = ()) -> str | None:
    if value is None or value in names or ":" in value.strip(":"):
        return value
    choices = ", ".join(names)
    raise ValueError(
        f"{what} {value!r} is not {choices + ' or ' if choices else ''}module:function"
    )


class BrainTumorOptions(ModelOptions):
    """``[pipelines.brain_tumor]``: the common model keys and these."""

    series_patterns: dict[str, str] | None = Field(
        None, description="role (T1, T1c, T2, FLAIR) → Series Description regex"
    )
    roi_size: tuple[int, int, int] | None = Field(
        None, description="sliding-window size (default: the bundle's inferer roi_size)"
    )
    overlap: float | None = Field(None, ge=0, lt=1, description="sliding-window overlap")
    sw_batch_size: int | None = Field(None, ge=1, description="windows per forward pass")
    threshold: Thresholds | None = Field(
        None, description="TC/WT/ET threshold: one number, three, or a table (default: bundle's)"
    )
    brain_mask: str = Field("intensity", description="intensity, none or module:function")
    registration: str | None = Field(
        None, description="module:function taking (moving, fixed) volumes, for other frames"
    )
    min_component_ml: float = Field(0.1, ge=0, description="smaller tumour regions are dropped")
    require_core: bool = Field(True, description="drop oedema-only regions")
    trim_core_rim: bool = Field(
        True, description="the necrosis layer outside the enhancing rim becomes oedema"
    )
    priors: PriorsOptions = Field(
        default_factory=PriorsOptions,
        description="comparison with the patient's prior MR (docs/followup.md)",
    )

    @field_validator("series_patterns")
    @classmethod
    def _patterns(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        try:
            check_patterns(value)
        except PipelineError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: Thresholds | None) -> Thresholds | None:
        try:
            thresholds_of(value, "threshold option")
        except PipelineError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("brain_mask")
    @classmethod
    def _mask(cls, value: str) -> str:
        return str(_module_function(value, "brain_mask", ("intensity", "none")))

    @field_validator("registration")
    @classmethod
    def _registration(cls, value: str | None) -> str | None:
        return _module_function(value, "registration")


class BrainTumorPipeline(
    ModelPipeline[dict[str, SeriesInput], dict[str, Volume], Prepared, np.ndarray, Findings]
):
    """SegResNet brain tumour segmentation: SEG (3 segments) and volumes SR on the T1c series.

    With a prior MR of the patient (``wants_priors``) the SR states each
    compartment's change and a volumetric RANO 2.0 suggestion (:mod:`.followup`).
    """

    options_model: ClassVar[type[ModelOptions]] = BrainTumorOptions
    options: BrainTumorOptions
    default_bundle = "brain_tumor_mri"
    wants_priors: ClassVar[bool] = True

    def load_model(self) -> None:
        self.network: torch.nn.Module = self.bundle.load_network(self.runtime.device)
        inferer = self.bundle.raw("inferer", {}) or {}
        options = self.options
        self.roi_size = [
            int(v) for v in options.roi_size or inferer.get("roi_size", [240, 240, 160])
        ]
        self.overlap = float(
            inferer.get("overlap", 0.5) if options.overlap is None else options.overlap
        )
        self.sw_batch_size = int(options.sw_batch_size or inferer.get("sw_batch_size", 1))
        self.thresholds = (
            thresholds_of(options.threshold, "threshold option")
            or thresholds_of(self.bundle.raw("thresholds", None), "bundle thresholds")
            or (0.5, 0.5, 0.5)
        )
        # Model Zoo bundles: MONAI NormalizeIntensity (nonzero, channel-wise).
        normalisation = str(self.bundle.raw("normalization", "nonzero"))
        if normalisation not in NORMALISATIONS:
            raise PipelineError(
                f"bundle {self.bundle.root.name}: normalization {normalisation!r} is not one of "
                + ", ".join(NORMALISATIONS)
            )
        self.normalise = NORMALISATIONS[normalisation]
        self.mask_function = self._mask_function(options.brain_mask)
        self.registration: Registration | None = (
            import_object(options.registration, "brain_tumor registration")
            if options.registration
            else None
        )

    @staticmethod
    def _mask_function(name: str) -> MaskFunction:
        if name == "intensity":
            return intensity_brain_mask
        if name == "none":
            return lambda channels: np.ones(channels.shape[1:], dtype=bool)
        function: MaskFunction = import_object(name, "brain_tumor brain_mask")
        return function

    def select(self, context: JobContext) -> dict[str, SeriesInput]:
        return run_selection(
            lambda: choose_sequences(context.series, self.options.series_patterns), context.log
        )

    def load(self, selected: dict[str, SeriesInput], context: JobContext) -> dict[str, Volume]:
        volumes = {
            role: load_series(
                series.paths, what=f"{role} series {series.series_description or ''}".strip()
            )
            for role, series in selected.items()
        }
        return self._align_frames(volumes, context)

    def _align_frames(self, volumes: dict[str, Volume], context: JobContext) -> dict[str, Volume]:
        reference = volumes["T1c"]
        aligned = {}
        for role in ROLES:
            volume = volumes[role]
            if volume.frame_of_reference_uid != reference.frame_of_reference_uid:
                if self.registration is None:
                    raise PipelineError(
                        f"the {role} series is in a different Frame of Reference than the T1c "
                        f"series ({volume.frame_of_reference_uid or 'none'} vs "
                        f"{reference.frame_of_reference_uid or 'none'}); without a registration "
                        "step the series cannot be aligned (set registration in "
                        "[pipelines.brain_tumor])"
                    )
                volume = self.registration(volume, reference)
                context.log(f"{role} registered onto the T1c series")
            aligned[role] = volume
        return aligned

    def preprocess(self, loaded: dict[str, Volume], context: JobContext) -> Prepared:
        affine, shape = reference_grid(loaded["T1c"], 1.0)
        channels = network_channels(loaded, affine, shape)
        mask = np.asarray(self.mask_function(channels), dtype=bool)
        if mask.shape != channels.shape[1:] or not mask.any():
            raise PipelineError("the brain mask step found no brain in the T1c field of view")
        image = to_network_layout(self.normalise(channels, mask))
        context.log(
            f"common grid {shape[2]}x{shape[1]}x{shape[0]} at 1 mm, brain {mask.sum() / 1000:.0f} mL"
        )
        return Prepared(image, mask, affine, loaded["T1c"].frame_of_reference_uid)

    def infer(self, prepared: Prepared, context: JobContext) -> np.ndarray:
        import torch

        from dicomnode.pipelines.inference import sliding_window

        spatial = prepared.image.shape[1:]
        image = pad_to_multiple(prepared.image)
        roi = [max(MULTIPLE, (r // MULTIPLE) * MULTIPLE) for r in self.roi_size]
        tensor = torch.from_numpy(image)[None].to(self.runtime.device)
        logits = sliding_window(
            self.network,
            tensor,
            roi_size=roi,
            overlap=self.overlap,
            batch_size=self.sw_batch_size,
            runtime=self.runtime,
            log=context.log,
        )
        probabilities = torch.sigmoid(logits[0]).numpy()
        return probabilities[:, : spatial[0], : spatial[1], : spatial[2]]

    def postprocess(
        self, raw: np.ndarray, prepared: Prepared, loaded: dict[str, Volume], context: JobContext
    ) -> Findings:
        t1c = loaded["T1c"]
        on_t1c = probabilities_on_grid(raw, prepared, t1c)
        voxel_mm3 = float(np.prod(t1c.spacing))
        labels = labels_from_probabilities(
            on_t1c,
            self.thresholds,
            voxel_mm3=voxel_mm3,
            min_component_ml=self.options.min_component_ml,
            require_core=self.options.require_core,
            trim_core_rim=self.options.trim_core_rim,
        )
        volumes = {
            label: float((labels == label).sum() * voxel_mm3 / 1000.0) for label in LABEL_NAMES
        }
        context.log(
            "volumes: "
            + ", ".join(f"{LABEL_NAMES[k].lower()} {v:.2f} mL" for k, v in volumes.items())
        )
        return Findings(labels, volumes)

    def compare(
        self,
        selected: dict[str, SeriesInput],
        findings: Findings,
        loaded: dict[str, Volume],
        context: JobContext,
    ) -> BrainFollowUp:
        return compare_with_prior(self, selected, findings, loaded, context)

    def baseline(self, findings: Findings, reason: str, context: JobContext) -> BrainFollowUp:
        return baseline(reason)

    def write(
        self, findings: Findings, loaded: dict[str, Volume], context: JobContext
    ) -> list[Dataset]:
        return self.write_compared(findings, loaded, context, None)

    def write_compared(
        self,
        findings: Findings,
        loaded: dict[str, Volume],
        context: JobContext,
        comparison: BrainFollowUp | None,
    ) -> list[Dataset]:
        return write_results(loaded["T1c"], findings, self.results(context), comparison)
