"""The RetinaNet detector as a detection bundle defines it (shared with ``train/lung``).

Every detector parameter comes from the bundle's ``configs/inference.json``
(``anchor_generator``, ``infer_patch_size``, ``size_divisible``,
``detector_ops``, ``preprocessing``), so the shipped CPU bundle and the Model
Zoo ``lung_nodule_ct_detection`` bundle take the same code path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.pipelines.base import PipelineError


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
