"""Diabetic retinopathy grading on colour fundus photographs (ICDR grades 0-4).

Input: the study's ophthalmic photographs (Ophthalmic Photography 8 Bit, VL
Photographic or Secondary Capture; Modality OP, XC or OT), RGB, usually JPEG
baseline. Each photograph is graded on its own; an eye's grade is the worst
grade among its photographs, as a human grader reads a multi-field set.

Preprocessing (:func:`prepare_fundus`), the same code in training and here:

1. Field of view: luminance above 4 % of its 99th percentile is "inside the
   camera's field stop"; the rows and columns where it covers more than 2 %
   of the width give the bounding box (robust to JPEG noise in the black
   surround). No field, a field that is not round (fills under 55 % of its
   box) or a field that is not red-dominant (R < 1.1 G, as the choroid makes
   every fundus) means "not a fundus photograph": that image is reported and
   skipped, the study goes on.
2. Crop to the box, pad to a square, resize to ``image_size`` (bundle).
3. Normalise as B. Graham did for the Kaggle DR challenge: subtract a Gaussian
   blur (sigma = size / 30), so only local contrast remains (lesions and
   vessels), and divide by the field's mean luminance, so exposure drops out.
   Outside the (eroded) field the input is 0.

Uncertainty: the softmax outputs of ``tta`` flips (test-time augmentation)
are averaged; the predictive entropy of the mean (nats, 0 to ln 5 = 1.61) above
``review_entropy_threshold`` sets "needs human review". The network was
trained to spread its probability on defocused and half-dark photographs, so
those come out uncertain.

Explanation: Grad-CAM (MONAI) of the predicted class on the unflipped input,
blended over the photograph, goes out as an RGB Secondary Capture in the
same study and is referenced from the SR.

Outputs: one Comprehensive 3D SR (TID 1500) per study, with a group per
photograph and a group per eye: the grade (SNOMED CT, see ``_grade_codes``)
as the answer to LOINC's per-eye severity question, the five probabilities,
the predictive entropy, referable DR (moderate or worse) and the review flag,
the photographs as sources and the heat maps as "Illustration of ROI"; and
one RGB Secondary Capture heat map per photograph (``sc`` series).

Options (``[pipelines.fundus_dr]``): ``review_entropy_threshold`` (nats;
default from the bundle), ``tta`` (flips to average, from "none", "hflip",
"vflip", "hvflip"), ``heat_maps`` (default: ``key_images``), ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.pipelines.base import JobContext, PipelineError, SeriesInput, register
from dicomnode.pipelines.model import ModelPipeline

if TYPE_CHECKING:
    import torch
    from monai.visualize import GradCAM
    from pydicom import Dataset

GRADE_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
TTA_FLIPS: dict[str, tuple[int, ...]] = {"none": (), "hflip": (3,), "vflip": (2,), "hvflip": (2, 3)}

# Storage SOP classes a fundus camera or a scanned print arrives as.
PHOTOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
}
PHOTOGRAPH_MODALITIES = {"OP", "XC", "OT"}


class NotFundusError(ValueError):
    """A photograph that cannot be graded; the message says why, as a sentence."""


# -- preprocessing (numpy only: shared with train/fundus) ------------------------------------


@dataclass(frozen=True)
class PreparedFundus:
    """Network input of one photograph and where it came from in the photograph."""

    array: np.ndarray  # (3, size, size) float32
    box: tuple[int, int, int, int]  # (top, left, side, side) of the square crop, source pixels
    mask: np.ndarray  # (size, size) bool: inside the field of view


def _field_box(luminance: np.ndarray, threshold: float) -> tuple[np.ndarray, int, int, int, int]:
    reference = float(np.percentile(luminance, 99))
    if reference < 20.0:
        raise NotFundusError("the photograph is black (no field of view)")
    inside = luminance > threshold * reference
    rows = np.nonzero(inside.sum(axis=1) > 0.02 * inside.shape[1])[0]
    cols = np.nonzero(inside.sum(axis=0) > 0.02 * inside.shape[0])[0]
    if len(rows) < 0.3 * inside.shape[0] or len(cols) < 0.3 * inside.shape[1]:
        raise NotFundusError("no round field of view covers the photograph (too small)")
    return inside, int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _check_fundus(rgb: np.ndarray, inside: np.ndarray, box: tuple[int, int, int, int]) -> None:
    top, bottom, left, right = box
    fill = float(inside[top:bottom, left:right].mean())
    if fill < 0.55:
        raise NotFundusError(f"the field of view is not round ({fill:.0%} of its box)")
    red, green, blue = (float(rgb[..., c][inside].mean()) for c in range(3))
    if red < 1.1 * green or red < blue:
        raise NotFundusError(
            f"the colours are not those of a fundus (mean R {red:.0f}, G {green:.0f}, B {blue:.0f})"
        )


def _square_crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    """The box padded (with black) to a square around its centre; its top-left corner."""
    top, bottom, left, right = box
    side = max(bottom - top, right - left)
    y0 = top + (bottom - top - side) // 2
    x0 = left + (right - left - side) // 2
    square = np.zeros((side, side, 3), dtype=np.uint8)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + side, rgb.shape[0]), min(x0 + side, rgb.shape[1])
    square[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return square, y0, x0


def prepare_fundus(rgb: np.ndarray, size: int = 160, threshold: float = 0.04) -> PreparedFundus:
    """Find the field of view, crop, resize and normalise one RGB photograph.

    Parameters
    ----------
    rgb
        ``(rows, columns, 3)`` uint8.
    size
        Side of the network input.
    threshold
        Field of view: luminance above this fraction of its 99th percentile.

    Raises
    ------
    NotFundusError
        The photograph has no round, red-dominant field of view.
    """
    from PIL import Image
    from scipy import ndimage

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise NotFundusError("the photograph is not in colour (RGB)")
    inside, top, bottom, left, right = _field_box(rgb.mean(axis=2), threshold)
    _check_fundus(rgb, inside, (top, bottom, left, right))
    square, y0, x0 = _square_crop(rgb, (top, bottom, left, right))
    small = Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2)
    image = np.asarray(small, dtype=np.float32) / 255.0
    luminance = image.mean(axis=2)
    mask = luminance > threshold * float(np.percentile(luminance, 99))
    local = ndimage.gaussian_filter(image, sigma=(size / 30.0, size / 30.0, 0))
    scale = max(float(luminance[mask].mean()), 1e-3)
    normalised = np.clip((image - local) / scale, -3.0, 3.0)
    # The blur mixes in the black surround at the rim: keep only the field well inside it.
    core = ndimage.binary_erosion(mask, iterations=max(1, size // 40))
    normalised[~core] = 0.0
    return PreparedFundus(
        np.ascontiguousarray(normalised.transpose(2, 0, 1)),
        (y0, x0, square.shape[0], square.shape[1]),
        core,
    )


# -- inference (torch, imported lazily) -------------------------------------------------------


def predictive_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of class probabilities."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return np.asarray(-(p * np.log(p)).sum(axis=-1))


def predict(
    network: torch.nn.Module, batch: torch.Tensor, flips: Sequence[str] = tuple(TTA_FLIPS)
) -> np.ndarray:
    """Class probabilities averaged over the test-time flips: ``(n, classes)``."""
    import torch

    with torch.inference_mode():
        total = None
        for name in flips:
            dims = TTA_FLIPS[name]
            view = torch.flip(batch, dims) if dims else batch
            p = torch.softmax(network(view).float(), dim=1)
            total = p if total is None else total + p
    assert total is not None, "at least one test-time flip"
    return np.asarray((total / len(flips)).cpu().numpy())


def grad_cam(cam: GradCAM, batch: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps (0..1) of *classes*, one per input: ``(n, rows, columns)``.

    *cam* is made once per network: MONAI's GradCAM hooks its layer for good.
    """
    maps = []
    for n, target in enumerate(classes):
        with_grad = batch[n : n + 1].clone().requires_grad_(True)
        maps.append(cam(x=with_grad, class_idx=int(target)).detach().float().cpu().numpy()[0, 0])
    return np.stack(maps)


# -- results ------------------------------------------------------------------------------------


def _jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map of values in 0..1 (uint8 RGB), without matplotlib."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return np.asarray(rgb * 255.0, dtype=np.uint8)


def heat_map_overlay(
    rgb: np.ndarray, cam: np.ndarray, box: tuple[int, int, int, int], alpha: float = 0.45
) -> np.ndarray:
    """The photograph with the Grad-CAM map of its crop blended in (uint8 RGB)."""
    from PIL import Image

    top, left, side, _ = box
    up = Image.fromarray(np.asarray(cam * 255.0, dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BILINEAR
    )
    full = np.zeros(rgb.shape[:2], dtype=np.float32)
    sy0, sx0 = max(top, 0), max(left, 0)
    sy1, sx1 = min(top + side, rgb.shape[0]), min(left + side, rgb.shape[1])
    full[sy0:sy1, sx0:sx1] = np.asarray(up, dtype=np.float32)[
        sy0 - top : sy1 - top, sx0 - left : sx1 - left
    ]
    full /= 255.0
    weight = alpha * full[..., None]  # cold areas stay the photograph
    blended = rgb.astype(np.float32) * (1.0 - weight) + _jet(full).astype(np.float32) * weight
    return np.asarray(np.clip(blended, 0, 255), dtype=np.uint8)


# -- coded concepts ----------------------------------------------------------------------------
# SNOMED CT disorders for ICDR grades 1-4: "Mild / Moderate / Severe nonproliferative
# retinopathy co-occurrent and due to diabetes mellitus" 312903003 / 312904009 / 312905005 and
# "Proliferative retinopathy co-occurrent and due to diabetes mellitus" 59276001; the parent
# "Retinopathy co-occurrent and due to diabetes mellitus" 4855003 is the finding type. Checked
# against the VSAC diabetes value set expansion (SNOMED CT US edition) and the eCQM value set
# "Level of Severity of Retinopathy Findings". SNOMED CT has no international concept for
# "no diabetic retinopathy": grade 0 is "Diabetic retinopathy: Absent" (272519000, DICOM CID
# 240, as pydicom's codedict has it), the pattern the measurement report uses for "Nodule: Absent".
# The question is LOINC 71491-5 / 71490-7 "Right / Left eye Diabetic retinopathy severity level
# by Ophthalmoscopy" (loinc.org; its own answer list LL2117-1 is the same five ICDR levels), or
# a private concept when the photograph has no laterality.


def _grade_codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    return {
        "finding_type": Code("4855003", "SCT", "Diabetic retinopathy"),
        "grades": (
            codes.SCT.Absent,
            Code("312903003", "SCT", "Mild nonproliferative diabetic retinopathy"),
            Code("312904009", "SCT", "Moderate nonproliferative diabetic retinopathy"),
            Code("312905005", "SCT", "Severe nonproliferative diabetic retinopathy"),
            Code("59276001", "SCT", "Proliferative diabetic retinopathy"),
        ),
        "question": {
            "R": Code("71491-5", "LN", "Right eye Diabetic retinopathy severity level"),
            "L": Code("71490-7", "LN", "Left eye Diabetic retinopathy severity level"),
            "": Code("ICDR_GRADE", "99DICOMNODE", "Diabetic retinopathy severity level"),
        },
        "laterality": {"R": codes.SCT.Right, "L": codes.SCT.Left},
        # Private: no standard concept says "referable" or "needs review" for a model's output.
        "referable": Code("REFERABLE_DR", "99DICOMNODE", "Referable diabetic retinopathy"),
        "review": Code("NEEDS_REVIEW", "99DICOMNODE", "Needs human review"),
        "entropy": Code("ENTROPY", "99DICOMNODE", "Predictive entropy"),
        "entropy_unit": codes.UCUM.NoUnits,  # entropy in nats is a pure number
        "procedure": codes.DCM.OphthalmicPhotography,
    }


# -- the pipeline ------------------------------------------------------------------------------


@dataclass
class Photograph:
    """One source photograph and, once graded, what the model said about it."""

    dataset: Dataset
    laterality: str  # "R", "L" or "" (unknown)
    rgb: np.ndarray
    name: str  # for messages: "image <InstanceNumber> (<file>)"
    prepared: PreparedFundus | None = None
    probabilities: np.ndarray | None = None
    entropy: float = 0.0
    cam: np.ndarray | None = None
    overlay: Any = None  # the Secondary Capture, once written

    @property
    def grade(self) -> int:
        assert self.probabilities is not None, "graded"
        return int(self.probabilities.argmax())


@dataclass
class FundusStudy:
    """The gradable photographs of a study and the reasons others were skipped."""

    photographs: list[Photograph] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _laterality(ds: Dataset) -> str:
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    return value if value in ("R", "L") else ""


def _describe(ds: Dataset, path: Any) -> str:
    return f"image {ds.get('InstanceNumber', '?')} ({getattr(path, 'name', path)})"


@register("fundus_dr")
class FundusDR(ModelPipeline):
    """ICDR grade per eye, referable DR, review flag (entropy) and Grad-CAM overlays."""

    default_bundle = "fundus_dr"

    def load_model(self) -> None:
        network = self.bundle.parsed("network_def")
        self.bundle.load_weights(network, self.runtime.device)
        self.network = network.to(self.runtime.device).eval()
        self.image_size = int(self.bundle.raw("image_size", 160))
        self.field_threshold = float(self.bundle.raw("field_threshold", 0.04))
        self.referable_min_grade = int(self.bundle.raw("referable_min_grade", 2))
        self.gradcam_layer = str(self.bundle.raw("gradcam_layer", "class_layers.relu"))
        self.review_threshold = float(
            self.option(
                "review_entropy_threshold", self.bundle.raw("review_entropy_threshold", 1.0)
            )
        )
        self.tta = [str(f) for f in self.option("tta", self.bundle.raw("tta", list(TTA_FLIPS)))]
        unknown = [f for f in self.tta if f not in TTA_FLIPS]
        if unknown or not self.tta:
            raise PipelineError(
                f"pipeline {self.pipeline_name}: tta must list some of {', '.join(TTA_FLIPS)}, "
                f"not {self.tta}"
            )
        self.heat_maps = bool(self.option("heat_maps", self.config.key_images))
        self.cam: GradCAM | None = None
        if self.heat_maps:
            from monai.visualize import GradCAM

            if self.gradcam_layer not in dict(self.network.named_modules()):
                raise PipelineError(
                    f"bundle {self.bundle.name}: gradcam_layer {self.gradcam_layer!r} is not a "
                    "layer of its network"
                )
            self.cam = GradCAM(nn_module=self.network, target_layers=self.gradcam_layer)

    def select(self, context: JobContext) -> list[SeriesInput]:
        series = [s for s in context.series if (s.modality or "").upper() in PHOTOGRAPH_MODALITIES]
        if not series:
            found = ", ".join(sorted({s.modality or "?" for s in context.series})) or "none"
            raise PipelineError(
                f"the study has no ophthalmic photographs (Modality OP, XC or OT); found {found}"
            )
        return series

    def load(self, selected: list[SeriesInput], context: JobContext) -> FundusStudy:
        from pydicom import dcmread

        study = FundusStudy()
        for path in (p for s in selected for p in s.paths):
            try:
                ds = dcmread(path)
                if str(ds.SOPClassUID) not in PHOTOGRAPH_SOP_CLASSES:
                    study.skipped.append(f"{_describe(ds, path)} is not a photograph")
                    continue
                rgb = np.asarray(ds.pixel_array)
            except Exception as exc:  # pydicom raises many kinds for unreadable pixel data
                study.skipped.append(f"{getattr(path, 'name', path)} cannot be read: {exc}")
                continue
            if rgb.ndim == 4:  # multi-frame: grade the first frame
                rgb = rgb[0]
            if rgb.dtype != np.uint8:
                study.skipped.append(f"{_describe(ds, path)} is not 8 bits per sample")
                continue
            study.photographs.append(Photograph(ds, _laterality(ds), rgb, _describe(ds, path)))
        return study

    def preprocess(self, loaded: FundusStudy, context: JobContext) -> FundusStudy:
        kept = []
        for photo in loaded.photographs:
            try:
                photo.prepared = prepare_fundus(photo.rgb, self.image_size, self.field_threshold)
                kept.append(photo)
            except NotFundusError as exc:
                loaded.skipped.append(f"{photo.name} is not gradable: {exc}")
        loaded.photographs = kept
        for reason in loaded.skipped:
            context.log(reason, stage="preprocess", level="warning")
        if not kept:
            detail = "; ".join(loaded.skipped) or "no images"
            raise PipelineError(f"no gradable fundus photograph in the study ({detail})")
        return loaded

    def infer(self, prepared: FundusStudy, context: JobContext) -> FundusStudy:
        import torch

        from dicomnode.pipelines.inference import Plan, Runtime, run_with_fallback

        photos = prepared.photographs
        batch = torch.from_numpy(np.stack([p.prepared.array for p in photos if p.prepared]))

        def attempt(plan: Plan) -> tuple[np.ndarray, np.ndarray | None]:
            # The fallback plans halve plan.batch_size: photographs go through in chunks of it.
            network = self.network.to(plan.device)
            probabilities, cams = [], []
            for start in range(0, len(batch), plan.batch_size):
                inputs = batch[start : start + plan.batch_size].to(plan.device)
                with Runtime(plan.device, plan.amp).autocast():
                    probabilities.append(predict(network, inputs, self.tta))
                if self.cam is not None:
                    cams.append(grad_cam(self.cam, inputs, probabilities[-1].argmax(1).tolist()))
            return np.concatenate(probabilities), np.concatenate(cams) if cams else None

        try:
            probabilities, cams = run_with_fallback(
                attempt,
                self.runtime,
                int(self.option("batch_size", 16)),
                lambda m: context.log(m, stage="infer"),
            )
        finally:
            self.network.to(self.runtime.device)
        for n, photo in enumerate(photos):
            photo.probabilities = probabilities[n]
            photo.entropy = float(predictive_entropy(probabilities[n]))
            photo.cam = None if cams is None else cams[n]
        return prepared

    def postprocess(
        self, raw: FundusStudy, prepared: FundusStudy, loaded: FundusStudy, context: JobContext
    ) -> FundusStudy:
        for photo in raw.photographs:
            flag = " (needs human review)" if photo.entropy > self.review_threshold else ""
            context.log(
                f"{photo.name}, eye {photo.laterality or '?'}: grade "
                f"{photo.grade} {GRADE_NAMES[photo.grade]}, entropy {photo.entropy:.2f}{flag}",
                stage="postprocess",
            )
        return raw

    def write(self, findings: FundusStudy, loaded: FundusStudy, context: JobContext) -> list[Any]:
        from dicomnode.results import write_overlay_image

        key = self.uid_key(context)
        outputs: list[Any] = []
        for number, photo in enumerate(findings.photographs, start=1):
            if photo.cam is None or photo.prepared is None:
                continue
            photo.overlay = write_overlay_image(
                photo.dataset,
                heat_map_overlay(
                    # Only the field of view: the camera's black surround stays black.
                    photo.rgb,
                    photo.cam * photo.prepared.mask,
                    photo.prepared.box,
                ),
                algorithm=self.algorithm,
                series=self.series_spec("sc"),
                uid_key=key,
                instance_number=number,
                comments=(
                    f"Grad-CAM of grade {photo.grade} ({GRADE_NAMES[photo.grade]}); "
                    f"{self.algorithm.name} {self.algorithm.version}: {self.algorithm.notice}"
                ),
            )
            outputs.append(photo.overlay)
        outputs.append(self._report(findings.photographs, key))
        return outputs

    # -- the report ----------------------------------------------------------------------

    def _report(self, photos: list[Photograph], key: str) -> Any:
        from dicomnode.results import write_classification_report

        c = _grade_codes()
        findings = [self._finding(photos, [n], f"Image {n + 1}", c) for n in range(len(photos))]
        for eye in ("R", "L"):
            members = [n for n, p in enumerate(photos) if p.laterality == eye]
            if members:
                label = "Right eye" if eye == "R" else "Left eye"
                findings.append(self._finding(photos, members, label, c, eye))
        return write_classification_report(
            [p.dataset for p in photos],
            findings,
            algorithm=self.algorithm,
            series=self.series_spec("sr"),
            uid_key=key,
            procedure=c["procedure"],
            finding_type=c["finding_type"],
        )

    def _finding(
        self,
        photos: list[Photograph],
        members: list[int],
        label: str,
        c: dict[str, Any],
        eye: str | None = None,
    ) -> Any:
        """One group: a photograph, or an eye (graded as its worst photograph)."""
        from pydicom.sr.codedict import codes

        from dicomnode.results import ClassificationFinding

        worst = max(members, key=lambda n: (photos[n].grade, -n))
        photo = photos[worst]
        assert photo.probabilities is not None
        grade = photo.grade
        review = any(photos[n].entropy > self.review_threshold for n in members)
        laterality = eye or photo.laterality
        evaluations = [
            (c["referable"], codes.SCT.Yes if grade >= self.referable_min_grade else codes.SCT.No),
            (c["review"], codes.SCT.Yes if review else codes.SCT.No),
        ]
        return ClassificationFinding(
            source_index=worst,
            source_indices=tuple(members),
            finding=c["grades"][grade],
            answer_concept=c["question"][laterality],
            probabilities={
                name: float(p) for name, p in zip(GRADE_NAMES, photo.probabilities, strict=True)
            },
            finding_site=codes.SCT.Eye if laterality else codes.SCT.Retina,
            finding_site_laterality=c["laterality"].get(laterality),
            label=label,
            evaluations=tuple(evaluations),
            measurements=((c["entropy"], photo.entropy, c["entropy_unit"]),),
            illustrations=tuple(photos[n].overlay for n in members if photos[n].overlay),
        )
