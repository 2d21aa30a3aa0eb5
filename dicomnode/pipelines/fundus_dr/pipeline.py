"""The ``fundus_dr`` pipeline: its options and its stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field, field_validator

from dicomnode.config import ModelOptions
from dicomnode.pipelines.base import JobContext, PipelineError, SeriesInput
from dicomnode.pipelines.calibration import probability_calibration
from dicomnode.pipelines.fundus_dr.findings import GradedPhotograph, GradingRules
from dicomnode.pipelines.fundus_dr.inference import (
    GRADE_NAMES,
    TTA_FLIPS,
    grad_cam,
    predict,
    predictive_entropy,
)
from dicomnode.pipelines.fundus_dr.preprocessing import (
    NotFundusError,
    PreparedFundus,
    prepare_fundus,
)
from dicomnode.pipelines.fundus_dr.report import write_heat_maps, write_report
from dicomnode.pipelines.fundus_dr.selection import (
    FundusStudy,
    Photograph,
    choose_photographs,
    load_photographs,
)
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.selection import run_selection

if TYPE_CHECKING:
    from monai.visualize import GradCAM
    from pydicom import Dataset

    from dicomnode.pipelines.inference import Plan


class FundusOptions(ModelOptions):
    """``[pipelines.fundus_dr]``: the common model keys and these."""

    review_entropy_threshold: float | None = Field(
        None, gt=0, description="nats; above it: needs human review (default: the bundle's)"
    )
    tta: list[str] | None = Field(
        None, description="test-time flips averaged: none, hflip, vflip, hvflip (default: bundle's)"
    )
    heat_maps: bool | None = Field(None, description="Grad-CAM overlays (default: key_images)")
    batch_size: int = Field(16, ge=1, description="photographs per forward pass")

    @field_validator("tta")
    @classmethod
    def _flips(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(f not in TTA_FLIPS for f in value)):
            raise ValueError(f"tta must list some of {', '.join(TTA_FLIPS)}, not {value}")
        return value


@dataclass(frozen=True)
class GradableStudy:
    """The photographs that passed the field-of-view checks, with their network inputs."""

    photographs: tuple[Photograph, ...]
    prepared: tuple[PreparedFundus, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class Predictions:
    """The network's answers, one row per gradable photograph."""

    probabilities: np.ndarray  # (n, 5)
    cams: np.ndarray | None  # (n, size, size) Grad-CAM maps, or None without heat maps


class FundusDR(
    ModelPipeline[
        tuple[SeriesInput, ...],
        FundusStudy,
        GradableStudy,
        Predictions,
        tuple[GradedPhotograph, ...],
    ]
):
    """ICDR grade per eye, referable DR, review flag (entropy) and Grad-CAM overlays."""

    options_model: ClassVar[type[ModelOptions]] = FundusOptions
    options: FundusOptions
    default_bundle = "fundus_dr"

    def load_model(self) -> None:
        self.network = self.bundle.load_network(self.runtime.device)
        self.image_size = int(self.bundle.raw("image_size", 160))
        self.field_threshold = float(self.bundle.raw("field_threshold", 0.04))
        self.gradcam_layer = str(self.bundle.raw("gradcam_layer", "class_layers.relu"))
        threshold = self.options.review_entropy_threshold
        self.rules = GradingRules(
            float(
                self.bundle.raw("review_entropy_threshold", 1.0) if threshold is None else threshold
            ),
            int(self.bundle.raw("referable_min_grade", 2)),
        )
        self.tta = [str(f) for f in self.options.tta or self.bundle.raw("tta", list(TTA_FLIPS))]
        if not self.tta or any(f not in TTA_FLIPS for f in self.tta):
            raise PipelineError(
                f"bundle {self.bundle.name}: tta must list some of {', '.join(TTA_FLIPS)}, "
                f"not {self.tta}"
            )
        # Grade probabilities as stated are calibrated when the bundle was
        # (train/fundus/calibrate.py); the review flag stays on the raw entropy it was set on.
        self.calibration = probability_calibration(
            self.bundle.raw("probability_calibration", None)
        )
        heat_maps = self.options.heat_maps
        self.cam: GradCAM | None = None
        if self.options.key_images if heat_maps is None else heat_maps:
            from monai.visualize import GradCAM

            if self.gradcam_layer not in dict(self.network.named_modules()):
                raise PipelineError(
                    f"bundle {self.bundle.name}: gradcam_layer {self.gradcam_layer!r} is not a "
                    "layer of its network"
                )
            self.cam = GradCAM(nn_module=self.network, target_layers=self.gradcam_layer)

    def select(self, context: JobContext) -> tuple[SeriesInput, ...]:
        return run_selection(lambda: choose_photographs(context.series), context.log)

    def load(self, selected: tuple[SeriesInput, ...], context: JobContext) -> FundusStudy:
        return load_photographs([p for s in selected for p in s.paths])

    def preprocess(self, loaded: FundusStudy, context: JobContext) -> GradableStudy:
        kept, prepared, skipped = [], [], list(loaded.skipped)
        for photo in loaded.photographs:
            try:
                prepared.append(prepare_fundus(photo.rgb, self.image_size, self.field_threshold))
                kept.append(photo)
            except NotFundusError as exc:
                skipped.append(f"{photo.name} is not gradable: {exc}")
        for reason in skipped:
            context.log(reason, stage="preprocess", level="warning")
        if not kept:
            detail = "; ".join(skipped) or "no images"
            raise PipelineError(f"no gradable fundus photograph in the study ({detail})")
        return GradableStudy(tuple(kept), tuple(prepared), tuple(skipped))

    def infer(self, prepared: GradableStudy, context: JobContext) -> Predictions:
        import torch

        from dicomnode.pipelines.inference import placed, run_with_fallback

        batch = torch.from_numpy(np.stack([p.array for p in prepared.prepared]))

        def attempt(plan: Plan) -> Predictions:
            # The fallback plans halve plan.batch_size: photographs go through in chunks of it.
            probabilities, cams = [], []
            with placed(self.network, plan, self.runtime) as network:
                for start in range(0, len(batch), plan.batch_size):
                    inputs = batch[start : start + plan.batch_size].to(plan.device)
                    with plan.autocast():
                        probabilities.append(predict(network, inputs, self.tta))
                    if self.cam is not None:
                        classes = probabilities[-1].argmax(1).tolist()
                        cams.append(grad_cam(self.cam, inputs, classes))
            return Predictions(
                np.concatenate(probabilities), np.concatenate(cams) if cams else None
            )

        return run_with_fallback(
            attempt,
            self.runtime,
            self.options.batch_size,
            lambda m: context.log(m, stage="infer"),
        )

    def postprocess(
        self,
        raw: Predictions,
        prepared: GradableStudy,
        loaded: FundusStudy,
        context: JobContext,
    ) -> tuple[GradedPhotograph, ...]:
        stated = raw.probabilities if self.calibration is None else self.calibration(raw.probabilities)
        graded = tuple(
            GradedPhotograph(
                photo,
                inputs,
                stated[n],
                float(predictive_entropy(raw.probabilities[n])),
                None if raw.cams is None else raw.cams[n],
            )
            for n, (photo, inputs) in enumerate(
                zip(prepared.photographs, prepared.prepared, strict=True)
            )
        )
        for item in graded:
            flag = " (needs human review)" if self.rules.needs_review(item) else ""
            context.log(
                f"{item.photograph.name}, eye {item.photograph.laterality or '?'}: grade "
                f"{item.grade} {GRADE_NAMES[item.grade]}, entropy {item.entropy:.2f}{flag}",
                stage="postprocess",
            )
        return graded

    def write(
        self, findings: tuple[GradedPhotograph, ...], loaded: FundusStudy, context: JobContext
    ) -> list[Dataset]:
        writer = self.results(context)
        overlays = write_heat_maps(findings, writer)
        report = write_report(
            findings, overlays, writer, self.rules, calibrated=self.calibration is not None
        )
        return [*(o for o in overlays if o is not None), report]
