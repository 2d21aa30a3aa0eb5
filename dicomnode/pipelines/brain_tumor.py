"""Brain tumour segmentation on multi-sequence MR (T1, T1c, T2, FLAIR).

The network is a SegResNet as in the MONAI Model Zoo ``brats_mri_segmentation``
bundle: four input channels in the order T1c, T1, T2, FLAIR on a 1 mm grid,
normalised channel-wise over non-zero (brain) voxels, and three sigmoid
outputs: tumour core (TC), whole tumour (WT) and enhancing tumour (ET).

Stages:

- select: the four series by :mod:`dicomnode.pipelines.mr_sequences`;
- load: each series as a :class:`~dicomnode.pipelines.volume.Volume`; all
  must share the T1c's Frame of Reference unless ``registration`` is set;
- preprocess: resample the four onto one 1 mm grid over the T1c's extent (in
  world coordinates), brain mask (``brain_mask`` option), non-zero
  normalisation;
- infer: sliding window (bundle ``inferer`` roi/overlap, or the ``roi_size``
  and ``overlap`` options) with the GPU out-of-memory fallback;
- postprocess: probabilities back onto the T1c series' own grid (linear),
  thresholded per region (the bundle's calibrated ``thresholds``, else 0.5),
  TC/WT/ET to exclusive labels (enhancing tumour, necrotic core, oedema), the
  threshold-disagreement layer of "necrosis" outside the enhancing rim back to
  oedema, regions under ``min_component_ml`` and oedema-only regions dropped,
  volumes;
- write: SEG with one segment per present label on the T1c series, TID 1500
  SR with each volume (mL) and the whole tumour's; an explicit "absent"
  report and no SEG when there is no tumour.

The array helpers (:func:`network_channels`, :func:`intensity_brain_mask`,
:func:`normalise_nonzero`, :func:`exclusive_labels`) are also what
``train/brain`` uses, so training sees exactly what the pipeline feeds.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.pipelines.base import JobContext, PipelineError, register
from dicomnode.pipelines.model import ModelPipeline
from dicomnode.pipelines.mr_sequences import select_sequences
from dicomnode.pipelines.volume import Volume, isotropic_grid, load_series, resample

if TYPE_CHECKING:
    from pydicom import Dataset

# Network channel order (Model Zoo metadata: 0 T1c, 1 T1, 2 T2, 3 FLAIR).
CHANNELS = ("T1c", "T1", "T2", "FLAIR")
# Network output channels.
REGIONS = ("TC", "WT", "ET")
# Exclusive labels of the result, in SEG segment order.
ENHANCING, NECROSIS, OEDEMA = 1, 2, 3
LABEL_NAMES = {ENHANCING: "Enhancing tumour", NECROSIS: "Necrotic core", OEDEMA: "Oedema"}
# SegResNet halves the grid three times: inputs must be multiples of 8.
_MULTIPLE = 8

MaskFunction = Callable[[np.ndarray], np.ndarray]
Registration = Callable[[Volume, Volume], Volume]


# -- array helpers shared with train/brain ------------------------------------------------


def reference_grid(reference: Volume, spacing: float = 1.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """The common grid: *reference*'s directions and extent at *spacing* mm."""
    return isotropic_grid(reference, spacing)


def network_channels(
    volumes: Mapping[str, Volume], affine: np.ndarray, shape: Sequence[int]
) -> np.ndarray:
    """The four series resampled (linear) onto one grid, ``(4, slices, rows, columns)``."""
    return np.stack(
        [resample(volumes[role], affine, shape, order=1).array for role in CHANNELS]
    ).astype(np.float32)


def intensity_brain_mask(channels: np.ndarray) -> np.ndarray:
    """Intracranial mask from intensities: above-noise signal, cut off from the scalp.

    Each channel is scaled by its 99th percentile; voxels whose mean is above
    0.15 are tissue (bone and air are dark on every sequence). An erosion
    separates the scalp from the brain across the dark skull, the largest
    component is kept, dilated back and its holes filled.
    """
    from scipy import ndimage

    scaled = [c / max(float(np.percentile(c, 99)), 1e-6) for c in channels]
    tissue = np.mean(scaled, axis=0) > 0.15
    ball = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(tissue, ball, iterations=3)
    labels, count = ndimage.label(core)
    if count == 0:
        return tissue
    sizes = np.bincount(labels.ravel())[1:]
    brain = labels == (int(np.argmax(sizes)) + 1)
    brain = ndimage.binary_dilation(brain, ball, iterations=3) & tissue
    filled: np.ndarray = ndimage.binary_fill_holes(brain)
    return filled


def _normalise_channels(
    channels: np.ndarray,
    mask: np.ndarray,
    centre_and_scale: Callable[[np.ndarray], tuple[float, float]],
) -> np.ndarray:
    """Channel-wise (x - centre) / scale over the mask's non-zero voxels; zero elsewhere."""
    out = np.zeros_like(channels, dtype=np.float32)
    for c, channel in enumerate(channels):
        inside = mask & (channel != 0)
        values = channel[inside]
        if values.size == 0:
            continue
        centre, scale = centre_and_scale(values)
        out[c][inside] = (values - centre) / scale
    return out


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std()) or 1.0


def _median_iqr(values: np.ndarray) -> tuple[float, float]:
    q25, median, q75 = np.percentile(values, (25, 50, 75))
    return float(median), float(q75 - q25) / 1.349 or float(values.std()) or 1.0


def normalise_nonzero(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Channel-wise (x - mean) / std over the mask; zero outside (MONAI NormalizeIntensity nonzero)."""
    return _normalise_channels(channels, mask, _mean_std)


def normalise_robust(channels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Channel-wise (x - median) / (IQR / 1.349) over the mask; zero outside.

    The non-zero mean and standard deviation move with the tumour itself (a
    large bright oedema raises both), so the same tissue edge lands at other
    input values in a large tumour than in a small one. Median and
    interquartile range barely move while the tumour is a minority of the
    brain. 1.349 makes the scale a standard deviation for normal data.
    """
    return _normalise_channels(channels, mask, _median_iqr)


NORMALISATIONS = {"nonzero": normalise_nonzero, "robust": normalise_robust}


def to_network_layout(array: np.ndarray) -> np.ndarray:
    """``(C, slices, rows, columns)`` → ``(C, columns, rows, slices)``, as MONAI loads volumes."""
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1))


def from_network_layout(array: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_network_layout`."""
    return np.ascontiguousarray(array.transpose(0, 3, 2, 1))


def pad_to_multiple(array: np.ndarray, multiple: int = _MULTIPLE) -> np.ndarray:
    """``(C, X, Y, Z)`` zero-padded at the far end of each axis to a *multiple*, as float32.

    What :meth:`BrainTumorPipeline.infer` feeds the network (and whole-volume
    training, which must see the same).
    """
    padded = [-(-n // multiple) * multiple for n in array.shape[1:]]
    out = np.zeros((array.shape[0], *padded), dtype=np.float32)
    out[(slice(None), *(slice(0, n) for n in array.shape[1:]))] = array
    return out


def region_targets(labels: np.ndarray) -> np.ndarray:
    """Exclusive labels → the three overlapping BraTS regions TC, WT, ET (training targets)."""
    tumour_core = (labels == ENHANCING) | (labels == NECROSIS)
    whole = labels > 0
    return np.stack([tumour_core, whole, labels == ENHANCING]).astype(np.float32)


def exclusive_labels(regions: np.ndarray) -> np.ndarray:
    """Binary TC, WT, ET → one label map: ET wins, then core (necrosis), then whole (oedema).

    The same rule as the Model Zoo bundle's postprocessing (4, 1, 2 there).
    """
    tc, wt, et = (regions[i] > 0 for i in range(3))
    out = np.zeros(tc.shape, dtype=np.uint8)
    out[wt] = OEDEMA
    out[tc] = NECROSIS
    out[et] = ENHANCING
    return out


def remove_small_components(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop connected tumour regions smaller than *min_voxels* (isolated false positives)."""
    from scipy import ndimage

    if min_voxels <= 0 or not labels.any():
        return labels
    components, count = ndimage.label(labels > 0)
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    out = labels.copy()
    out[small[components]] = 0
    return out


def core_rim_to_oedema(labels: np.ndarray) -> np.ndarray:
    """Necrotic-core voxels in the one-voxel layer outside the enhancing rim → oedema.

    The TC and ET thresholds place the tumour's outer edge (the same edge in
    both regions when the core is enclosed) up to a voxel apart; where TC
    reaches further, :func:`exclusive_labels` makes that layer "TC but not
    ET", i.e. necrosis wrapped round the outside of the tumour (0.2-0.5 mL on
    every solid phantom tumour, mostly oedema in truth). A necrotic voxel is
    in that layer when it touches the enhancing tumour and the tissue outside
    the core (oedema or nothing) and lies outside the rim's filled hull.
    Necrosis inside the rim, and necrotic regions away from it (a
    non-enhancing core), are kept. The layer takes the next label down,
    oedema, so the whole tumour does not change.
    """
    from scipy import ndimage

    necrosis = labels == NECROSIS
    enhancing = labels == ENHANCING
    if not necrosis.any() or not enhancing.any():
        return labels
    outside_core = (labels == OEDEMA) | (labels == 0)
    touching = np.ones((3, 3, 3), dtype=bool)  # edges and corners too: a one-voxel layer
    layer = (
        necrosis
        & ndimage.binary_dilation(enhancing, touching)
        & ndimage.binary_dilation(outside_core, touching)
        & ~ndimage.binary_fill_holes(enhancing)
    )
    out = labels.copy()
    out[layer] = OEDEMA
    return out


def drop_regions_without_core(labels: np.ndarray) -> np.ndarray:
    """Drop connected tumour regions with no tumour core (enhancing or necrotic voxel).

    Oedema is the reaction around a tumour; an oedema-only region is, for this
    model, a false positive (seen at CSF borders on thick-slice FLAIR).
    """
    from scipy import ndimage

    components, count = ndimage.label(labels > 0)
    if count == 0:
        return labels
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(components[(labels == ENHANCING) | (labels == NECROSIS)])] = True
    keep[0] = False
    return np.where(keep[components], labels, 0).astype(labels.dtype)


def probabilities_on_grid(raw: np.ndarray, prepared: Prepared, target: Volume) -> np.ndarray:
    """TC/WT/ET probabilities (network layout, common grid) → *target*'s grid, linear.

    The probabilities, not thresholded labels, are resampled, so that partial
    voxels are decided on the target grid itself.
    """
    regions = from_network_layout(raw) * prepared.mask[None]
    return np.stack(
        [
            resample(Volume(r, prepared.affine), target.affine, target.shape, order=1).array
            for r in regions
        ]
    )


def labels_from_probabilities(
    probabilities: np.ndarray,
    thresholds: Sequence[float],
    *,
    voxel_mm3: float,
    min_component_ml: float,
    require_core: bool,
    trim_core_rim: bool = True,
) -> np.ndarray:
    """TC/WT/ET probabilities → exclusive labels (per-region thresholds), cleaned up."""
    regions = np.stack([probabilities[i] > thresholds[i] for i in range(3)])
    labels = exclusive_labels(regions)
    if trim_core_rim:
        labels = core_rim_to_oedema(labels)
    labels = remove_small_components(labels, int(min_component_ml * 1000 / voxel_mm3))
    if require_core:
        labels = drop_regions_without_core(labels)
    return labels


def _import(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PipelineError(f"brain_tumor: cannot import {what} {target!r}: {exc}") from None


# -- the pipeline --------------------------------------------------------------------------


@dataclass
class Prepared:
    """Network input and the grid it lives on."""

    image: np.ndarray  # (4, columns, rows, slices) on the common grid, network layout
    mask: np.ndarray  # (slices, rows, columns) brain mask on the common grid
    affine: np.ndarray  # common grid
    frame_of_reference_uid: str


@dataclass
class Findings:
    """Exclusive labels on the T1c grid and the volume of each label (mL)."""

    labels: np.ndarray
    volumes_ml: dict[int, float]

    @property
    def whole_tumour_ml(self) -> float:
        """Enhancing + necrotic + oedema."""
        return float(sum(self.volumes_ml.values()))


@register("brain_tumor")
class BrainTumorPipeline(ModelPipeline):
    """SegResNet brain tumour segmentation: SEG (3 segments) and volumes SR on the T1c series.

    Options (``[pipelines.brain_tumor]``): ``series_patterns`` (role → Series
    Description regex), ``roi_size``, ``overlap``, ``sw_batch_size``,
    ``threshold`` (one number, or TC/WT/ET as a list or table; default: the
    bundle's calibrated ``thresholds``, else 0.5), ``brain_mask`` ("intensity", "none" or
    "module:function"), ``registration`` ("module:function" taking
    (moving, fixed) volumes, for series in other Frames of Reference),
    ``min_component_ml`` (0.1), ``require_core`` (true: drop oedema-only regions),
    ``trim_core_rim`` (true: the necrosis layer wrapped round the outside of the
    enhancing rim becomes oedema, :func:`core_rim_to_oedema`).
    """

    default_bundle = "brain_tumor_mri"

    def load_model(self) -> None:
        import torch

        network = self.bundle.parsed("network_def")
        if network is None:
            raise PipelineError(f"bundle {self.bundle.root.name}: no network_def")
        self.bundle.load_weights(network, self.runtime.device)
        self.network: torch.nn.Module = network.to(self.runtime.device).eval()
        inferer = self.bundle.raw("inferer", {}) or {}
        self.roi_size = [
            int(v) for v in self.option("roi_size", inferer.get("roi_size", [240, 240, 160]))
        ]
        self.overlap = float(self.option("overlap", inferer.get("overlap", 0.5)))
        self.sw_batch_size = int(self.option("sw_batch_size", inferer.get("sw_batch_size", 1)))
        self.thresholds = self._thresholds(self.option("threshold", None))
        self.min_component_ml = float(self.option("min_component_ml", 0.1))
        self.require_core = bool(self.option("require_core", True))
        self.trim_core_rim = bool(self.option("trim_core_rim", True))
        # Model Zoo bundles: MONAI NormalizeIntensity (nonzero, channel-wise).
        normalisation = str(self.bundle.raw("normalization", "nonzero"))
        if normalisation not in NORMALISATIONS:
            raise PipelineError(
                f"bundle {self.bundle.root.name}: normalization {normalisation!r} is not one of "
                + ", ".join(NORMALISATIONS)
            )
        self.normalise = NORMALISATIONS[normalisation]
        self.mask_function = self._mask_function(str(self.option("brain_mask", "intensity")))
        registration = self.option("registration", None)
        self.registration: Registration | None = (
            _import(str(registration), "registration") if registration else None
        )

    def _thresholds(self, option: Any) -> tuple[float, float, float]:
        """TC, WT, ET thresholds: the option, else the bundle's calibrated ones, else 0.5."""
        source = "threshold option"
        if option is None:
            option, source = self.bundle.raw("thresholds", None), "bundle thresholds"
        if option is None:
            return (0.5, 0.5, 0.5)
        if isinstance(option, Mapping):
            values = [option.get(region) for region in REGIONS]
        elif isinstance(option, (int, float)):
            values = [option] * 3
        else:
            values = list(option)
        try:
            thresholds = tuple(float(v) for v in values)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            thresholds = ()
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise PipelineError(
                f"brain_tumor: {source} {option!r} is not a number in (0, 1), three of them "
                "(TC, WT, ET) or a table with TC, WT and ET"
            )
        return thresholds[0], thresholds[1], thresholds[2]

    @staticmethod
    def _mask_function(name: str) -> MaskFunction:
        if name == "intensity":
            return intensity_brain_mask
        if name == "none":
            return lambda channels: np.ones(channels.shape[1:], dtype=bool)
        if ":" in name:
            function: MaskFunction = _import(name, "brain_mask")
            return function
        raise PipelineError(
            f"brain_tumor: brain_mask {name!r} is not one of intensity, none or module:function"
        )

    def select(self, context: JobContext) -> Any:
        patterns = self.option("series_patterns", None)
        selected = select_sequences(context.series, patterns)
        context.log(
            "series: "
            + ", ".join(
                f"{role} = {s.series_description or s.series_instance_uid}"
                for role, s in selected.items()
            )
        )
        return selected

    def load(self, selected: Any, context: JobContext) -> dict[str, Volume]:
        volumes = {
            role: load_series(
                series.paths, what=f"{role} series {series.series_description or ''}".strip()
            )
            for role, series in selected.items()
        }
        return self._align_frames(volumes, context)

    def _align_frames(self, volumes: dict[str, Volume], context: JobContext) -> dict[str, Volume]:
        reference = volumes["T1c"]
        for role, volume in list(volumes.items()):
            if volume.frame_of_reference_uid == reference.frame_of_reference_uid:
                continue
            if self.registration is None:
                raise PipelineError(
                    f"the {role} series is in a different Frame of Reference than the T1c series "
                    f"({volume.frame_of_reference_uid or 'none'} vs "
                    f"{reference.frame_of_reference_uid or 'none'}); without a registration step "
                    "the series cannot be aligned (set registration in [pipelines.brain_tumor])"
                )
            volumes[role] = self.registration(volume, reference)
            context.log(f"{role} registered onto the T1c series")
        return volumes

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
        roi = [max(_MULTIPLE, (r // _MULTIPLE) * _MULTIPLE) for r in self.roi_size]
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
            min_component_ml=self.min_component_ml,
            require_core=self.require_core,
            trim_core_rim=self.trim_core_rim,
        )
        volumes = {
            label: float((labels == label).sum() * voxel_mm3 / 1000.0) for label in LABEL_NAMES
        }
        context.log(
            "volumes: "
            + ", ".join(f"{LABEL_NAMES[k].lower()} {v:.2f} mL" for k, v in volumes.items())
        )
        return Findings(labels, volumes)

    def write(
        self, findings: Findings, loaded: dict[str, Volume], context: JobContext
    ) -> list[Dataset]:
        return write_results(
            list(loaded["T1c"].source),
            findings,
            pipeline=self,
            uid_key=self.uid_key(context),
        )


def write_results(
    source: Sequence[Dataset], findings: Findings, *, pipeline: BrainTumorPipeline, uid_key: str
) -> list[Dataset]:
    """SEG (present labels only) and the volume SR on the T1c source slices."""
    from pydicom.sr.codedict import codes

    from dicomnode.results import SegmentSpec, write_segmentation
    from dicomnode.results.sr import SegmentVolumeFinding, write_volume_report

    if len(source) != findings.labels.shape[0]:
        raise PipelineError(
            "the T1c series is one multi-frame instance; SEG on multi-frame sources is not supported yet"
        )
    types = {ENHANCING: codes.SCT.Neoplasm, NECROSIS: codes.SCT.Necrosis, OEDEMA: codes.SCT.Edema}
    present = [label for label in LABEL_NAMES if findings.volumes_ml[label] > 0]
    outputs: list[Dataset] = []
    seg = None
    if present:
        # Segment numbers follow the present labels; the SR references the same numbers.
        remap = np.zeros(max(LABEL_NAMES) + 1, dtype=np.uint8)
        for number, label in enumerate(present, start=1):
            remap[label] = number
        segments = [
            SegmentSpec(
                LABEL_NAMES[label],
                codes.SCT.MorphologicallyAbnormalStructure,
                types[label],
                tracking_id=LABEL_NAMES[label],
                anatomic_region=codes.SCT.Brain,
            )
            for label in present
        ]
        seg = write_segmentation(
            source,
            remap[findings.labels],
            segments,
            algorithm=pipeline.algorithm,
            series=pipeline.series_spec("seg"),
            uid_key=uid_key,
            omit_empty_frames=pipeline.config.omit_empty_frames,
        )
        outputs.append(seg)
    key_slice = _key_slice(findings.labels)
    volume_findings = [
        SegmentVolumeFinding(
            label=LABEL_NAMES[label],
            finding_type=types[label],
            volume_ml=findings.volumes_ml[label],
            segment_number=number,
            key_slice=key_slice,
            finding_site=codes.SCT.Brain,
        )
        for number, label in enumerate(present, start=1)
    ]
    if present:
        volume_findings.append(
            SegmentVolumeFinding(
                label="Whole tumour",
                finding_type=codes.SCT.Neoplasm,
                volume_ml=findings.whole_tumour_ml,
                segment_number=None,
                key_slice=key_slice,
                finding_site=codes.SCT.Brain,
            )
        )
    outputs.append(
        write_volume_report(
            source,
            volume_findings,
            segmentation=seg,
            algorithm=pipeline.algorithm,
            series=pipeline.series_spec("sr"),
            uid_key=uid_key,
            procedure=codes.LN.MRIHeadReport,
            empty_finding=codes.SCT.Neoplasm,
        )
    )
    return outputs


def _key_slice(labels: np.ndarray) -> int:
    """The slice with the most tumour voxels (0 when there is none)."""
    per_slice = (labels > 0).reshape(labels.shape[0], -1).sum(axis=1)
    return int(np.argmax(per_slice)) if per_slice.any() else 0
