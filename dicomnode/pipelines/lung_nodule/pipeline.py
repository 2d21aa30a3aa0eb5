"""The ``lung_nodule`` pipeline: its options and its stages."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field

from dicomnode.config import ModelOptions, PriorsOptions
from dicomnode.pipelines.base import JobContext, SeriesInput
from dicomnode.pipelines.calibration import score_calibration
from dicomnode.pipelines.lung_nodule.detector import detector_settings, make_detector
from dicomnode.pipelines.lung_nodule.findings import Detection, find_nodules
from dicomnode.pipelines.lung_nodule.followup import LungFollowUp, baseline, compare_with_prior
from dicomnode.pipelines.lung_nodule.preprocessing import network_input
from dicomnode.pipelines.lung_nodule.report import write_results
from dicomnode.pipelines.lung_nodule.selection import choose_ct_series
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.selection import run_selection
from dicomnode.pipelines.volume import Volume, load_series

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.inference import Plan


class LungNoduleOptions(ModelOptions):
    """``[pipelines.lung_nodule]``: the common model keys and these."""

    patch_size: tuple[int, int, int] | None = Field(
        None, description="sliding-window size (default: the bundle's infer_patch_size)"
    )
    sw_batch_size: int = Field(1, ge=1, description="windows per forward pass")
    report_threshold: float | None = Field(
        None, ge=0, le=1, description="lowest score reported (default: the bundle's, else 0.5)"
    )
    max_nodules: int = Field(20, ge=1, description="nodules reported at most")
    max_slice_thickness: float | None = Field(
        None, gt=0, description="prefer series of slices this thin (mm)"
    )
    prefer_lung_kernel: bool | None = Field(
        None,
        description="among equally thin series, a lung kernel first (default: the bundle's, else no)",
    )
    mask_threshold_hu: float = Field(-650.0, description="HU above which a nodule mask grows")
    priors: PriorsOptions = Field(
        default_factory=PriorsOptions,
        description="comparison with the patient's prior CT (docs/followup.md)",
    )


@dataclass(frozen=True)
class Prepared:
    """The detector input and the RAS grid it lives on."""

    image: np.ndarray  # (x, y, z), 0..1
    grid_affine: np.ndarray  # the RAS grid's (k, j, i) → LPS affine


@dataclass(frozen=True)
class Boxes:
    """What the detector returned: ``xyzxyz`` boxes on the RAS grid and their scores."""

    box: np.ndarray
    score: np.ndarray


class LungNodulePipeline(
    ModelPipeline[SeriesInput, Volume, Prepared, Boxes, tuple[Detection, ...]]
):
    """Detect lung nodules on chest CT; compare with the prior; write a SEG and a TID 1500 SR."""

    options_model: ClassVar[type[ModelOptions]] = LungNoduleOptions
    options: LungNoduleOptions
    default_bundle = "lung_nodule_ct"
    # The priors stage compares with the patient's prior CT (followup.py); never blocking.
    wants_priors: ClassVar[bool] = True

    def load_model(self) -> None:
        self.settings = detector_settings(self.bundle)
        network = self.bundle.load_network(self.runtime.device)
        self.detector = make_detector(
            network, self.bundle.parsed("anchor_generator"), self.settings
        )
        self.patch_size = self.options.patch_size or self.settings.patch_size
        self.report_threshold = (
            self.settings.report_threshold
            if self.options.report_threshold is None
            else self.options.report_threshold
        )
        # Raw scores are what report_threshold is in; what the SR states is calibrated,
        # when the bundle was calibrated (train/lung/calibrate.py), else called a score.
        self.calibration = score_calibration(self.bundle.raw("score_calibration", None))
        # A bundle trained on lung-kernel reconstructions says so in its inference.json.
        self.prefer_lung_kernel = bool(
            self.bundle.raw("prefer_lung_kernel", False)
            if self.options.prefer_lung_kernel is None
            else self.options.prefer_lung_kernel
        )

    def select(self, context: JobContext) -> SeriesInput:
        return run_selection(
            lambda: choose_ct_series(
                context.series,
                max_slice_thickness=self.options.max_slice_thickness,
                prefer_lung_kernel=self.prefer_lung_kernel,
            ),
            context.log,
        )

    def load(self, selected: SeriesInput, context: JobContext) -> Volume:
        what = f"series {selected.series_description or selected.series_instance_uid}"
        # Single-frame slices or one enhanced multi-frame instance (Enhanced or Legacy
        # Converted Enhanced CT): results reference its frames by number.
        return load_series(selected.paths, what=what)

    def preprocess(self, loaded: Volume, context: JobContext) -> Prepared:
        image, grid = network_input(loaded, self.settings.pixdim, self.settings.window)
        context.log(
            f"resampled {loaded.shape[::-1]} voxels to {image.shape} RAS at "
            f"{'x'.join(f'{v:g}' for v in self.settings.pixdim)} mm"
        )
        return Prepared(image, grid.affine)

    def infer(self, prepared: Prepared, context: JobContext) -> Boxes:
        import torch

        from dicomnode.pipelines.inference import placed, run_with_fallback

        with warnings.catch_warnings():
            # The input is frozen (read-only) and the detector only reads it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            image = torch.from_numpy(prepared.image)[None]
        sliding = any(s > p for s, p in zip(image.shape[1:], self.patch_size, strict=True))

        def attempt(plan: Plan) -> Boxes:
            with placed(self.detector.network, plan, self.runtime):
                if sliding:
                    self.detector.set_sliding_window_inferer(
                        roi_size=list(self.patch_size),
                        overlap=self.settings.overlap,
                        sw_batch_size=plan.batch_size,
                        mode=self.settings.mode,
                        sw_device=plan.device,
                        device=plan.stitch_device,
                    )
                self.detector.eval()
                with torch.no_grad(), plan.autocast():
                    (out,) = self.detector([image.to(plan.device)], use_inferer=sliding)
            return Boxes(
                out["box"].float().cpu().numpy(), out["label_scores"].float().cpu().numpy()
            )

        return run_with_fallback(attempt, self.runtime, self.options.sw_batch_size, context.log)

    def postprocess(
        self, raw: Boxes, prepared: Prepared, loaded: Volume, context: JobContext
    ) -> tuple[Detection, ...]:
        found = find_nodules(
            raw.box,
            raw.score,
            prepared.grid_affine,
            loaded,
            report_threshold=self.report_threshold,
            max_nodules=self.options.max_nodules,
            mask_threshold_hu=self.options.mask_threshold_hu,
        )
        kept = int(np.count_nonzero(raw.score >= self.report_threshold))
        context.log(
            f"{len(raw.score)} candidate boxes; {min(kept, self.options.max_nodules)} at or above "
            f"score {self.report_threshold:g}"
        )
        return tuple(found)

    def compare(
        self,
        selected: SeriesInput,
        findings: tuple[Detection, ...],
        loaded: Volume,
        context: JobContext,
    ) -> LungFollowUp:
        return compare_with_prior(self, selected, findings, loaded, context)

    def baseline(
        self, findings: tuple[Detection, ...], reason: str, context: JobContext
    ) -> LungFollowUp:
        return baseline(findings, self.results(context).uid_key, reason)

    def write(
        self, findings: tuple[Detection, ...], loaded: Volume, context: JobContext
    ) -> list[Dataset]:
        return self.write_compared(findings, loaded, context, None)

    def write_compared(
        self,
        findings: tuple[Detection, ...],
        loaded: Volume,
        context: JobContext,
        comparison: LungFollowUp | None,
    ) -> list[Dataset]:
        return write_results(
            findings,
            loaded,
            self.results(context),
            key_images=self.options.key_images,
            calibration=self.calibration,
            follow_up=comparison,
        )
