"""``lung_nodule``: 3D RetinaNet lung nodule detection on chest CT.

select → the CT series with the most slices of plane geometry (thin slices
first when ``max_slice_thickness`` is set); load → :func:`load_series` (HU,
LPS affine); preprocess → what the Model Zoo bundle's raw-data path does
(``Orientationd`` RAS, ``Spacingd`` to the bundle's ``pixdim``,
``ScaleIntensityRanged`` with its ``a_min``/``a_max``), on our own grid so
boxes map back to the source slices exactly; infer → MONAI
``RetinaNetDetector`` with the bundle's anchors, box selector and sliding
window; postprocess → boxes to patient coordinates (as
``AffineBoxToWorldCoordinated`` with ``affine_lps_to_ras``), a mask per
nodule grown from the CT inside its box, measurements; write → one SEG
(one segment per nodule) and one TID 1500 SR (centre, long axis, volume,
score, link to the segment). No nodule is a valid result: an SR saying so.

Every detector parameter comes from the bundle's ``configs/inference.json``
(``anchor_generator``, ``infer_patch_size``, ``size_divisible``,
``detector_ops``, ``preprocessing``), so the shipped CPU bundle and the
Model Zoo ``lung_nodule_ct_detection`` bundle take the same code path.

Options (``[pipelines.lung_nodule]``): ``patch_size`` (sliding-window size,
default the bundle's ``infer_patch_size``), ``report_threshold`` (lowest
score reported; default the bundle's ``report_threshold`` key, else 0.5),
``max_nodules`` (default 20), ``max_slice_thickness`` (mm),
``mask_threshold_hu`` (default -650), ``sw_batch_size`` (default 1).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.pipelines.base import JobContext, PipelineError, SeriesInput, register
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.volume import Volume, load_series, resample

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicomnode.pipelines.inference import Plan

# -- geometry and intensity: shared with train/lung ------------------------------------


def ras_grid_affine(origin_lps: Sequence[float], pixdim: Sequence[float]) -> np.ndarray:
    """Affine (k, j, i) → LPS of a RAS-oriented grid: i runs to R, j to A, k to S.

    ``Volume(array, affine).to_ras_array()`` is then the ``(x, y, z)`` array
    MONAI's ``Orientationd(axcodes="RAS")`` + ``Spacingd(pixdim)`` would give,
    and ``pixdim`` is ``(x, y, z)`` spacing in mm as in ``Spacingd``.
    """
    px, py, pz = (float(v) for v in pixdim)
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, pz)  # slices: towards superior (+z in LPS)
    affine[:3, 1] = (0.0, -py, 0.0)  # rows: towards anterior (-y in LPS)
    affine[:3, 2] = (-px, 0.0, 0.0)  # columns: towards the right (-x in LPS)
    affine[:3, 3] = np.asarray(origin_lps, dtype=float)
    return affine


def ras_grid(volume: Volume, pixdim: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A RAS grid at *pixdim* covering every voxel centre of *volume* (any orientation)."""
    shape = np.array(volume.shape) - 1
    corners = np.array(
        [[k, j, i] for k in (0, shape[0]) for j in (0, shape[1]) for i in (0, shape[2])]
    )
    points = volume.index_to_lps(corners)
    low, high = points.min(axis=0), points.max(axis=0)
    px, py, pz = (float(v) for v in pixdim)
    size = (
        int(round((high[2] - low[2]) / pz)) + 1,
        int(round((high[1] - low[1]) / py)) + 1,
        int(round((high[0] - low[0]) / px)) + 1,
    )
    # Voxel (0, 0, 0) is the most right, anterior and inferior one: largest LPS x and y.
    return ras_grid_affine((high[0], high[1], low[2]), pixdim), size


def scale_intensity(array: np.ndarray, a_min: float, a_max: float) -> np.ndarray:
    """``ScaleIntensityRanged(a_min, a_max, b_min=0, b_max=1, clip=True)``."""
    scaled = (array.astype(np.float32) - np.float32(a_min)) / np.float32(a_max - a_min)
    return np.clip(scaled, 0.0, 1.0)


def network_input(
    volume: Volume, pixdim: Sequence[float], window: tuple[float, float]
) -> tuple[np.ndarray, Volume]:
    """The detector's ``(x, y, z)`` input and the RAS-grid volume (in HU) it came from."""
    affine, shape = ras_grid(volume, pixdim)
    grid = resample(volume, affine, shape, order=1, cval=-1024.0)
    return scale_intensity(grid.to_ras_array(), *window), grid


def boxes_to_lps(boxes: np.ndarray, grid_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``xyzxyz`` boxes in a RAS grid's index space → (LPS centres, LPS corner boxes).

    The same mapping as MONAI's ``AffineBoxToWorldCoordinated(affine_lps_to_ras=True)``
    followed by the RAS → LPS sign change: box coordinates are voxel indices.
    """
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 6)
    grid = Volume(np.empty((0, 0, 0)), grid_affine)
    low = grid.index_to_lps(boxes[:, [2, 1, 0]])
    high = grid.index_to_lps(boxes[:, [5, 4, 3]])
    return (low + high) / 2.0, np.concatenate([np.minimum(low, high), np.maximum(low, high)], 1)


def lps_to_boxes(centers: np.ndarray, diameters: np.ndarray, grid_affine: np.ndarray) -> np.ndarray:
    """Truth spheres (LPS centre, diameter mm) → ``xyzxyz`` boxes in a RAS grid's index space."""
    centers = np.atleast_2d(np.asarray(centers, dtype=float))
    index = (centers - grid_affine[:3, 3]) @ np.linalg.inv(grid_affine[:3, :3]).T
    xyz = index[:, [2, 1, 0]]
    spacing = np.linalg.norm(grid_affine[:3, :3], axis=0)[[2, 1, 0]]
    half = np.asarray(diameters, dtype=float)[:, None] / 2.0 / spacing[None, :]
    return np.concatenate([xyz - half, xyz + half], axis=1).astype(np.float32)


# -- detector settings from the bundle --------------------------------------------------


@dataclass(frozen=True)
class DetectorSettings:
    """What the pipeline takes from a detection bundle's ``configs/inference.json``."""

    pixdim: tuple[float, float, float]
    window: tuple[float, float]
    patch_size: tuple[int, int, int]
    size_divisible: tuple[int, int, int]
    score_thresh: float = 0.02
    topk_candidates_per_level: int = 1000
    nms_thresh: float = 0.22
    detections_per_img: int = 300
    overlap: float = 0.25
    mode: str = "constant"
    report_threshold: float = 0.5


_NUMBER = r"([-+0-9.eE]+)"


def _call_arguments(ops: Sequence[str], method: str) -> dict[str, str]:
    """``key=value`` arguments of ``@detector.<method>(...)`` in ``detector_ops`` strings."""
    for op in ops:
        found = re.search(rf"{method}\((.*)\)", str(op))
        if found:
            return dict(re.findall(r"(\w+)\s*=\s*([^,]+?)\s*(?:,|$)", found.group(1)))
    return {}


def _transform(bundle: Any, name: str) -> dict[str, Any]:
    """The first ``preprocessing`` transform whose ``_target_`` ends with *name*."""
    transforms = (bundle.raw("preprocessing") or {}).get("transforms", [])
    for item in transforms:
        if isinstance(item, dict) and str(item.get("_target_", "")).split(".")[-1] == name:
            return item
    raise PipelineError(f"bundle {bundle.root.name}: its preprocessing has no {name} transform")


def _value(bundle: Any, value: Any) -> Any:
    """A config value, following one ``@key`` reference."""
    if isinstance(value, str) and value.startswith("@"):
        return bundle.parsed(value[1:])
    return value


def detector_settings(bundle: Any) -> DetectorSettings:
    """Read :class:`DetectorSettings` from a bundle (shipped or Model Zoo)."""
    spacing = _transform(bundle, "Spacingd")
    scale = _transform(bundle, "ScaleIntensityRanged")
    ops = [str(op) for op in (bundle.raw("detector_ops") or [])]
    selector = _call_arguments(ops, "set_box_selector_parameters")
    window = _call_arguments(ops, "set_sliding_window_inferer")
    defaults = DetectorSettings((1.0, 1.0, 1.0), (0.0, 1.0), (1, 1, 1), (1, 1, 1))
    try:
        return DetectorSettings(
            pixdim=tuple(float(v) for v in _value(bundle, spacing["pixdim"])),  # type: ignore[arg-type]
            window=(float(_value(bundle, scale["a_min"])), float(_value(bundle, scale["a_max"]))),
            patch_size=tuple(int(v) for v in bundle.raw("infer_patch_size")),  # type: ignore[arg-type]
            size_divisible=tuple(int(v) for v in bundle.raw("size_divisible", [1, 1, 1])),  # type: ignore[arg-type]
            score_thresh=float(selector.get("score_thresh", defaults.score_thresh)),
            topk_candidates_per_level=int(
                selector.get("topk_candidates_per_level", defaults.topk_candidates_per_level)
            ),
            nms_thresh=float(selector.get("nms_thresh", defaults.nms_thresh)),
            detections_per_img=int(selector.get("detections_per_img", defaults.detections_per_img)),
            overlap=float(window.get("overlap", defaults.overlap)),
            mode=str(window.get("mode", defaults.mode)).strip("'\""),
            report_threshold=float(bundle.raw("report_threshold", defaults.report_threshold)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(
            f"bundle {bundle.root.name}: cannot read the detector settings: {exc}"
        ) from None


def make_detector(network: Any, anchor_generator: Any, settings: DetectorSettings) -> Any:
    """A ``RetinaNetDetector`` around *network* with the bundle's box selector and window."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

    detector = RetinaNetDetector(
        network=network,
        anchor_generator=anchor_generator,
        spatial_dims=3,
        num_classes=1,
        size_divisible=list(settings.size_divisible),
    )
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=settings.score_thresh,
        topk_candidates_per_level=settings.topk_candidates_per_level,
        nms_thresh=settings.nms_thresh,
        detections_per_img=settings.detections_per_img,
    )
    return detector


# -- findings: masks grown from the CT inside each box, and their measurements -------------


@dataclass(frozen=True)
class Detection:
    """One nodule: its box and score, its mask on the source grid, its measurements."""

    score: float
    box_index: tuple[slice, slice, slice]  # where ``mask`` sits in the source volume
    mask: np.ndarray  # bool, shape of the source volume at box_index
    center_lps: tuple[float, float, float]
    long_axis_mm: float
    volume_mm3: float
    grown: bool  # False: the ellipsoid inscribed in the box (nothing to grow from)


def _ellipsoid(shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    total = sum(((g - c) / max(r, 0.5)) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return np.asarray(total <= 1.0)


def grow_mask(
    hu: np.ndarray, low: np.ndarray, high: np.ndarray, threshold: float
) -> tuple[tuple[slice, slice, slice], np.ndarray, bool]:
    """A nodule mask on *hu* from a fractional (k, j, i) box [*low*, *high*].

    Voxels above *threshold* HU inside the ellipsoid of the box enlarged by 30 %
    (detector boxes of faint part-solid nodules run small; the chest wall and
    vessels farther out cannot leak in), opened once
    to cut thin attached vessels, the connected part nearest the box centre,
    holes filled. If that is empty or implausible for the box (under a fifth
    or over three times the inscribed ellipsoid), the inscribed ellipsoid
    itself is the mask (``grown`` False).
    """
    from scipy import ndimage

    center = (low + high) / 2.0
    radii = np.maximum((high - low) / 2.0, 0.5)
    outer_low = np.clip(np.floor(center - 1.3 * radii - 1).astype(int), 0, np.array(hu.shape))
    outer_high = np.clip(np.ceil(center + 1.3 * radii + 2).astype(int), 0, np.array(hu.shape))
    index = tuple(slice(int(a), int(b)) for a, b in zip(outer_low, outer_high, strict=True))
    local = hu[index]
    c = center - outer_low
    inscribed = _ellipsoid(local.shape, c, radii)
    candidate = (local > threshold) & _ellipsoid(local.shape, c, 1.3 * radii + 0.5)
    opened = ndimage.binary_opening(candidate)
    # Opening also erases nodules of a few voxels: keep the unopened mask for those.
    if opened.sum() >= 0.5 * candidate.sum():
        candidate = opened
    labels, count = ndimage.label(candidate)
    if count:
        # The component holding the above-threshold voxel closest to the box centre.
        points = np.argwhere(labels > 0)
        nearest = points[np.argmin(np.sum((points - c) ** 2, axis=1))]
        mask = ndimage.binary_fill_holes(labels == labels[tuple(nearest)])
        size, expected = int(mask.sum()), int(inscribed.sum())
        if 0.2 * expected <= size <= 3.0 * expected and size >= 2:
            return index, np.asarray(mask), True  # type: ignore[return-value]
    return index, inscribed, False  # type: ignore[return-value]


def long_axis_mm(points_mm: np.ndarray, voxel_mm: float) -> float:
    """Largest distance between mask voxel centres (at least one voxel).

    No voxel extent is added: with the default threshold, partial-volume voxels
    at the edge already count, which makes up for it (measured on the phantoms).
    """
    from scipy.spatial import ConvexHull, QhullError

    if len(points_mm) < 2:
        return voxel_mm
    with contextlib.suppress(QhullError, ValueError):  # flat masks: keep all points
        points_mm = points_mm[ConvexHull(points_mm).vertices]
    if len(points_mm) > 4000:
        points_mm = points_mm[:: len(points_mm) // 4000 + 1]
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    return max(float(np.sqrt((diff**2).sum(-1)).max()), voxel_mm)


def measure(
    volume: Volume, index: tuple[slice, slice, slice], mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """LPS centroid, long axis (mm) and volume (mm3) of a mask placed at *index*."""
    offset = np.array([s.start for s in index])
    points = volume.index_to_lps(np.argwhere(mask) + offset)
    voxel_volume = float(abs(np.linalg.det(volume.affine[:3, :3])))
    in_plane = float(np.mean(volume.spacing[1:]))
    return points.mean(axis=0), long_axis_mm(points, in_plane), float(mask.sum()) * voxel_volume


# -- the pipeline ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """The detector input and the RAS grid it lives on."""

    image: np.ndarray  # (x, y, z), 0..1
    grid_affine: np.ndarray  # the RAS grid's (k, j, i) → LPS affine


@register("lung_nodule")
class LungNodulePipeline(ModelPipeline):
    """Detect lung nodules on chest CT; write a SEG and a TID 1500 SR."""

    default_bundle = "lung_nodule_ct"

    def load_model(self) -> None:
        self.settings = detector_settings(self.bundle)
        network = self.bundle.parsed("network_def")
        if network is None:
            raise PipelineError(f"bundle {self.bundle.root.name}: no network_def")
        self.bundle.load_weights(network, self.runtime.device)
        network.to(self.runtime.device).eval()
        self.detector = make_detector(
            network, self.bundle.parsed("anchor_generator"), self.settings
        )
        patch = self.option("patch_size", None)
        self.patch_size = tuple(int(v) for v in patch) if patch else self.settings.patch_size
        self.report_threshold = float(
            self.option("report_threshold", self.settings.report_threshold)
        )
        self.max_nodules = int(self.option("max_nodules", 20))
        self.mask_threshold = float(self.option("mask_threshold_hu", -650.0))

    # -- select and load --------------------------------------------------------------

    def select(self, context: JobContext) -> SeriesInput:
        from pydicom import dcmread

        thickest = self.option("max_slice_thickness", None)
        candidates = []
        for series in context.series:
            if (series.modality or "").upper() != "CT":
                continue
            header = dcmread(series.paths[0], stop_before_pixels=True)
            # One enhanced multi-frame instance is a whole volume; one plain slice is not.
            if len(series.paths) < 2 and int(header.get("NumberOfFrames", 1) or 1) < 2:
                continue
            if (
                "ImagePositionPatient" not in header
                and "PerFrameFunctionalGroupsSequence" not in header
            ):
                continue
            thickness = float(header.get("SliceThickness", 0) or 0)
            thin = thickest is None or thickness <= float(thickest)
            candidates.append((thin, len(series.paths), series))
        if not candidates:
            raise PipelineError(
                "no CT series with plane geometry and at least two slices in this study"
            )
        thin, _, chosen = max(candidates, key=lambda c: (c[0], c[1]))
        if not thin:
            context.log(
                f"no series with slices of {thickest} mm or thinner; using the largest series"
            )
        context.log(
            f"series {chosen.series_description or chosen.series_instance_uid}: {len(chosen.paths)} instances"
        )
        return chosen

    def load(self, selected: SeriesInput, context: JobContext) -> Volume:
        what = f"series {selected.series_description or selected.series_instance_uid}"
        volume = load_series(selected.paths, what=what)
        if len(volume.source) != volume.shape[0]:
            raise PipelineError(f"{what}: enhanced multi-frame CT results are not supported yet")
        return volume

    # -- preprocess and infer -----------------------------------------------------------

    def preprocess(self, loaded: Volume, context: JobContext) -> Prepared:
        image, grid = network_input(loaded, self.settings.pixdim, self.settings.window)
        context.log(
            f"resampled {loaded.shape[::-1]} voxels to {image.shape} RAS at "
            f"{'x'.join(f'{v:g}' for v in self.settings.pixdim)} mm"
        )
        return Prepared(image, grid.affine)

    def infer(self, prepared: Prepared, context: JobContext) -> dict[str, np.ndarray]:
        import torch

        from dicomnode.pipelines.inference import run_with_fallback

        image = torch.from_numpy(prepared.image)[None]
        sliding = any(s > p for s, p in zip(image.shape[1:], self.patch_size, strict=True))

        def attempt(plan: Plan) -> dict[str, np.ndarray]:
            self.detector.network.to(plan.device)
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
            with torch.no_grad(), self._autocast(plan):
                (out,) = self.detector([image.to(plan.device)], use_inferer=sliding)
            return {
                "box": out["box"].float().cpu().numpy(),
                "score": out["label_scores"].float().cpu().numpy(),
            }

        try:
            return run_with_fallback(
                attempt, self.runtime, int(self.option("sw_batch_size", 1)), context.log
            )
        finally:
            self.detector.network.to(self.runtime.device)

    @staticmethod
    def _autocast(plan: Plan) -> Any:
        from dicomnode.pipelines.inference import Runtime

        return Runtime(plan.device, plan.amp).autocast()

    # -- postprocess and write --------------------------------------------------------

    def postprocess(
        self, raw: dict[str, np.ndarray], prepared: Prepared, loaded: Volume, context: JobContext
    ) -> list[Detection]:
        keep = np.argsort(-raw["score"])
        keep = keep[raw["score"][keep] >= self.report_threshold][: self.max_nodules]
        context.log(
            f"{len(raw['score'])} candidate boxes; {len(keep)} at or above score {self.report_threshold:g}"
        )
        _, corners = boxes_to_lps(raw["box"][keep], prepared.grid_affine)
        detections = []
        claimed = np.zeros(loaded.shape, dtype=bool)
        for score, corner in zip(raw["score"][keep], corners, strict=True):
            ends = loaded.lps_to_index(np.array([corner[:3], corner[3:]]))
            low, high = ends.min(axis=0), ends.max(axis=0)
            index, mask, grown = grow_mask(loaded.array, low, high, self.mask_threshold)
            if not mask.any():
                continue  # the box lies outside the scanned volume
            # Boxes of different sizes on one nodule survive NMS (low IoU); keep the best one.
            if np.count_nonzero(claimed[index] & mask) > 0.3 * np.count_nonzero(mask):
                continue
            claimed[index] |= mask
            center, long_axis, volume_mm3 = measure(loaded, index, mask)
            detections.append(
                Detection(
                    float(score),
                    index,
                    mask,
                    tuple(float(v) for v in center),  # type: ignore[arg-type]
                    long_axis,
                    volume_mm3,
                    grown,
                )
            )
        return detections

    def write(
        self, findings: list[Detection], loaded: Volume, context: JobContext
    ) -> list[Dataset]:
        from pydicom.sr.codedict import codes

        from dicomnode.results import (
            NoduleFinding,
            SegmentSpec,
            write_measurement_report,
            write_segmentation,
        )

        source = list(loaded.source)
        key = self.uid_key(context)
        outputs: list[Dataset] = []
        segmentation = None
        if findings:
            labels = np.zeros(loaded.shape, dtype=np.uint8)
            for number, found in enumerate(findings, start=1):
                labels[found.box_index][found.mask] = number
            segments = [
                SegmentSpec(
                    f"Nodule {n}",
                    codes.SCT.MorphologicallyAbnormalStructure,
                    codes.SCT.Nodule,
                    tracking_id=f"Nodule {n}",
                    anatomic_region=codes.SCT.Lung,
                )
                for n in range(1, len(findings) + 1)
            ]
            segmentation = write_segmentation(
                source,
                labels,
                segments,
                algorithm=self.algorithm,
                series=self.series_spec("seg"),
                uid_key=key,
                omit_empty_frames=self.config.omit_empty_frames,
            )
            outputs.append(segmentation)
        nodules = [
            NoduleFinding(
                center_mm=found.center_lps,
                long_axis_mm=round(found.long_axis_mm, 1),
                volume_mm3=round(found.volume_mm3, 1),
                score=round(found.score, 3),
                key_slice=int(
                    np.clip(
                        round(loaded.lps_to_index(np.array(found.center_lps))[0, 0]),
                        0,
                        len(source) - 1,
                    )
                ),
                segment_number=number,
            )
            for number, found in enumerate(findings, start=1)
        ]
        if findings and self.config.key_images:
            outputs.append(self._key_image(findings, nodules, source, key))
        outputs.append(
            write_measurement_report(
                source,
                nodules,
                segmentation=segmentation,
                algorithm=self.algorithm,
                series=self.series_spec("sr"),
                uid_key=key,
            )
        )
        return outputs

    def _key_image(
        self, findings: list[Detection], nodules: list[Any], source: list[Dataset], key: str
    ) -> Dataset:
        """A Secondary Capture of the top nodule's slice, every nodule on it circled."""
        from dicomnode.results import KeyImageMark, write_key_image

        key_slice = nodules[0].key_slice
        marks = []
        for found, nodule in zip(findings, nodules, strict=True):
            if nodule.key_slice != key_slice:
                continue
            offset = np.array([s.start for s in found.box_index])
            _, row, column = np.argwhere(found.mask).mean(axis=0) + offset
            pixel = float(source[key_slice].PixelSpacing[1])
            marks.append(
                KeyImageMark(float(row), float(column), found.long_axis_mm / pixel / 2 + 3)
            )
        return write_key_image(
            source[key_slice],
            marks,
            algorithm=self.algorithm,
            series=self.series_spec("sc"),
            uid_key=key,
        )
