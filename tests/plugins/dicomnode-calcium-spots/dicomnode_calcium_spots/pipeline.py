"""``calcium_spots``: hyperdense spots on CT (calcified nodules, say) as SEG and TID 1500 SR.

The network is the bundle's: a 3x3x3 mean filter (a ``torch.nn.Conv3d`` with
fixed weights), so that the smoothed volume above ``threshold_hu`` is a spot
and single noisy voxels are not. Everything else comes from dicomnode: the
series becomes a :class:`~dicomnode.pipelines.volume.Volume` with its patient
geometry, the stages are timed into the job's timeline, and the SEG and SR
are dicomnode's result writers, in the source study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from dicomnode.pipelines import JobContext, ModelOptions, PipelineError, SeriesInput
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.volume import Volume, load_series


class CalciumSpotsOptions(ModelOptions):
    """``[pipelines.calcium_spots]``: dicomnode's model keys and these."""

    threshold_hu: float = Field(200.0, description="smoothed HU above which a voxel is a spot")
    min_voxels: int = Field(8, ge=1, description="smaller spots are noise")


@dataclass(frozen=True)
class Spot:
    """One connected spot: its voxels on the source grid and where it is."""

    box: tuple[slice, ...]  # where ``mask`` sits in the volume
    mask: np.ndarray  # bool, the box's shape
    center_lps: tuple[float, float, float]
    extent_mm: float
    volume_mm3: float
    key_slice: int


class CalciumSpots(ModelPipeline[SeriesInput, Volume, Any, np.ndarray, tuple[Spot, ...]]):
    """Hyperdense spots on the largest CT series."""

    options_model: ClassVar[type[ModelOptions]] = CalciumSpotsOptions
    options: CalciumSpotsOptions
    # The bundle ships inside this package (an absolute path), not under dicomnode's models/.
    default_bundle = Path(__file__).resolve().parent / "bundle"

    def load_model(self) -> None:
        self.network = self.bundle.load_network(self.runtime.device)

    def select(self, context: JobContext) -> SeriesInput:
        ct = [s for s in context.series if (s.modality or "").upper() == "CT"]
        if not ct:
            raise PipelineError("calcium_spots needs a CT series; the study has none")
        return max(ct, key=lambda s: len(s.paths))

    def load(self, selected: SeriesInput, context: JobContext) -> Volume:
        return load_series(selected.paths, what=f"series {selected.series_description or ''}")

    def preprocess(self, loaded: Volume, context: JobContext) -> Any:
        import torch

        return torch.from_numpy(np.array(loaded.array, dtype=np.float32))[None, None]

    def infer(self, prepared: Any, context: JobContext) -> np.ndarray:
        import torch

        with torch.inference_mode():
            smoothed = self.network(prepared.to(self.runtime.device))
        return np.asarray(smoothed[0, 0].cpu().numpy())

    def postprocess(
        self, raw: np.ndarray, prepared: Any, loaded: Volume, context: JobContext
    ) -> tuple[Spot, ...]:
        from scipy import ndimage

        labels, _ = ndimage.label(raw > self.options.threshold_hu)
        voxel_mm3 = float(np.prod(loaded.spacing))
        spots = []
        for number, box in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[box] == number
            if mask.sum() < self.options.min_voxels:
                continue
            index = np.argwhere(mask) + [s.start for s in box]
            points = loaded.index_to_lps(index)
            extent = float(np.max(np.ptp(points, axis=0))) + max(loaded.spacing)
            centre = points.mean(axis=0)
            spots.append(
                Spot(
                    box,
                    mask,
                    (float(centre[0]), float(centre[1]), float(centre[2])),
                    extent,
                    float(mask.sum()) * voxel_mm3,
                    int(round(index[:, 0].mean())),
                )
            )
        context.log(f"{len(spots)} spot(s) above {self.options.threshold_hu:g} HU")
        return tuple(spots)

    def write(self, findings: tuple[Spot, ...], loaded: Volume, context: JobContext) -> list[Any]:
        from pydicom.sr.codedict import codes

        from dicomnode.results import NoduleFinding, SegmentSpec, write_measurement_report

        writer = self.results(context)
        source = list(loaded.source)
        outputs: list[Any] = []
        seg = None
        if findings:
            labels = np.zeros(loaded.shape, dtype=np.uint8)
            for number, spot in enumerate(findings, start=1):
                labels[spot.box][spot.mask] = number
            segments = SegmentSpec.numbered(
                "Spot", codes.SCT.IndividualCalcification, len(findings)
            )
            seg = writer.segmentation(source, labels, segments)
            outputs.append(seg)
        spots = [
            NoduleFinding(
                spot.center_lps,
                round(spot.extent_mm, 1),
                round(spot.volume_mm3, 1),
                score=1.0,
                key_slice=spot.key_slice,
                segment_number=number,
                finding_type=codes.SCT.IndividualCalcification,
                finding_site=None,
            )
            for number, spot in enumerate(findings, start=1)
        ]
        outputs.append(
            write_measurement_report(
                source,
                spots,
                segmentation=seg,
                algorithm=writer.algorithm,
                series=writer.series("sr"),
                uid_key=writer.uid_key,
                empty_finding=codes.SCT.IndividualCalcification,
            )
        )
        return outputs
