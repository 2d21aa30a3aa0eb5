"""The study's fundus photographs: which series, which instances, and which eye.

An ophthalmic study holds more than colour fundus photographs: external-eye
and anterior-segment photographs, red-free, fluorescein and autofluorescence
images, stereo pairs, OCT, scanned referral letters and screen captures of
reports. :func:`choose_photographs` reads the header of every instance (no
pixels) and keeps colour fundus photographs only, one or more per eye; each
other image is passed over as (category: when):

``other-modality``
    the series is not OP, XC or OT;
``unreadable``
    its header cannot be read;
``not-image``
    no image: a stereometric relationship, SR, encapsulated PDF ...;
``not-photograph``
    an image of another kind (OCT, 16-bit photography, CT ...);
``document``
    a Secondary Capture of a scanned document, drawing or synthetic image
    (Conversion Type SD, DRW, SYN), or described as a report or document;
``not-colour``
    one sample per pixel: red-free, angiography, autofluorescence;
``not-fundus``
    anatomy of the outer or anterior eye (Anatomic Region: eyelid, cornea,
    iris, conjunctiva, lens, ...), an external camera or slit lamp
    (Acquisition Device Type), or described as external/anterior in one of
    the languages sites use ("external", "äußeres Auge", "segment
    antérieur", "segmento anterior", "前眼部" ...);
``derived``
    a DERIVED ophthalmic photograph (montage, annotated copy): the originals
    are graded;
``stereo-pair``
    the second image of a stereo pair (the Stereometric Relationship names
    the pairs; without one, images of one eye in a series that says Stereo
    Pairs Present are paired in instance order): both show the same field.

A photograph that none of these excludes is chosen; one whose header says
nothing either way (a Secondary Capture without anatomy) is chosen too, and
the field-of-view check in preprocessing has the last word.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.pipelines.base import SeriesInput
from dicomnode.pipelines.selection import (
    CHOSEN,
    Decision,
    Selection,
    SelectionError,
    found_list,
    is_secondary_capture,
    non_image_kind,
)

if TYPE_CHECKING:
    from pydicom import Dataset

# Storage SOP classes a fundus camera or a scanned print arrives as.
PHOTOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
}
PHOTOGRAPH_MODALITIES = {"OP", "XC", "OT"}

# CID 4209 (Ophthalmic Anatomic Structure Imaged), SNOMED CT: what a fundus photograph shows...
FUNDUS_STRUCTURES = {
    "5665001": "Retina",
    "81016008": "Optic nerve head",
    "67046006": "Fovea centralis",
    "68703001": "Choroid of eye",
}
# ... and the outer and anterior eye, which it does not. "Eye" (81745001) says neither.
EXTERNAL_STRUCTURES = {
    "31636006": "Anterior chamber of eye",
    "29534007": "Ciliary body",
    "29445007": "Conjunctiva",
    "28726007": "Cornea",
    "80243003": "Eyelid",
    "62736007": "Lower Eyelid",
    "38934000": "Upper Eyelid",
    "41296002": "Iris",
    "43045000": "Lacrimal caruncle",
    "13561001": "Lacrimal gland",
    "3954005": "Lacrimal sac",
    "78076003": "Lens",
    "18619003": "Sclera",
    "89545001": "Face",
}
# CID 4202 (Ophthalmic Image Acquisition Device).
FUNDUS_DEVICES = {
    "409898007": "Fundus Camera",
    "392001008": "Scanning Laser Ophthalmoscope",
    "392004000": "Confocal Scanning Laser Ophthalmoscope",
    "409900009": "Direct Ophthalmoscope",
    "409901008": "Indirect Ophthalmoscope",
}
EXTERNAL_DEVICES = {
    "409903006": "External Camera",
    "397247004": "Slit Lamp Biomicroscope",
    "397522002": "Keratoscope",
    "409899004": "Specular Microscope",
    "420827006": "Pupillograph",
    "102321001": "Operating Microscope",
}
STEREOMETRIC_RELATIONSHIP = "1.2.840.10008.5.1.4.1.1.77.1.5.3"

CATEGORIES = (
    "other-modality",
    "unreadable",
    "not-image",
    "not-photograph",
    "document",
    "not-colour",
    "not-fundus",
    "derived",
    "stereo-pair",
)

_EXTERNAL = re.compile(
    r"extern|anterior|au(?:ß|ss)enaufnahme|vorderabschnitt|vorderer augenabschnitt"
    r"|äußeres auge|aeusseres auge"
    r"|segment ant[ée]rieur|segmento anterior|ext[ée]rieur|slit.?lamp|spaltlampe"
    r"|lampe? à fente|l[áa]mpara de hendidura|(?<![a-z])(?:face|lids?|eyelids?)(?![a-z])"
    r"|paupi[èe]re|p[áa]rpado|前眼部|外眼",
    re.I,
)
_NOT_COLOUR = re.compile(
    r"red.?free|rotfrei|anérythre|aneritr|fluoresc|angiogra|(?<![a-z])(fa|icg|faf|af)(?![a-z])"
    r"|autofluo|蛍光",
    re.I,
)
_DOCUMENT = re.compile(
    r"report|befund|rapport|informe|document|dokument|letter|brief|courrier|carta"
    r"|visual.?field|gesichtsfeld|champ visuel|campo visual|screen ?(?:shot|capture|save)"
    r"|bildschirm|報告|視野",
    re.I,
)


@dataclass(frozen=True)
class Photograph:
    """One source photograph as read."""

    dataset: Dataset
    laterality: str  # "R", "L" or "" (unknown)
    rgb: np.ndarray  # (rows, columns, 3) uint8
    name: str  # for messages: "image <InstanceNumber> (<file>)"


@dataclass(frozen=True)
class FundusStudy:
    """The readable photographs of a study and the reasons others were skipped."""

    photographs: tuple[Photograph, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageDecision:
    """What became of one instance of a photograph series."""

    path: Path
    instance_number: int | None
    category: str
    reason: str
    laterality: str = ""
    sop_instance_uid: str = ""

    @property
    def chosen(self) -> bool:
        """Whether the instance is graded."""
        return self.category == CHOSEN

    @property
    def label(self) -> str:
        """``image 3`` (or the file name when it has no Instance Number)."""
        return (
            f"image {self.instance_number}" if self.instance_number is not None else self.path.name
        )


def _laterality(ds: Dataset) -> str:
    value = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "")).upper()
    return value if value in ("R", "L") else ""


def _codes(ds: Dataset, keyword: str) -> list[tuple[str, str]]:
    """(code value, code meaning) of each item of a code sequence."""
    return [
        (str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")))
        for item in ds.get(keyword) or []
    ]


def _judge(ds: Dataset, series_description: str) -> tuple[str, str]:
    """(category, sentence) of one instance header (module docs); ``chosen`` when graded."""
    sop = str(ds.get("SOPClassUID", ""))
    kind = non_image_kind(sop)
    if kind:
        return "not-image", f"{kind}, not an image"
    if sop not in PHOTOGRAPH_SOP_CLASSES:
        return "not-photograph", f"SOP class {sop} is not a colour photograph"
    description = " ".join(
        str(ds.get(k, "") or "")
        for k in ("SeriesDescription", "ImageComments", "DerivationDescription")
    )
    description = f"{series_description} {description}"
    conversion = str(ds.get("ConversionType", "") or "").upper()
    if is_secondary_capture(sop) and (
        conversion in ("SD", "DRW", "SYN") or _DOCUMENT.search(description)
    ):
        what = {"SD": "a scanned document", "DRW": "a drawing", "SYN": "a synthetic image"}
        return "document", f"{what.get(conversion, 'a document or report')}, not a photograph"
    samples = int(ds.get("SamplesPerPixel", 3) or 3)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if samples == 1 or photometric.startswith("MONOCHROME"):
        return "not-colour", "monochrome (red-free, angiography or autofluorescence), not colour"
    if _NOT_COLOUR.search(description):
        return "not-colour", "red-free, angiography or autofluorescence, not a colour photograph"
    anatomy = _codes(ds, "AnatomicRegionSequence") + _codes(ds, "PrimaryAnatomicStructureSequence")
    devices = _codes(ds, "AcquisitionDeviceTypeCodeSequence")
    # What was photographed (anatomy) outranks what took it (a fundus camera can also take
    # the anterior segment), which outranks the words of the description.
    for value, _ in anatomy:
        if value in EXTERNAL_STRUCTURES:
            structure = EXTERNAL_STRUCTURES[value].lower()
            return "not-fundus", f"a photograph of the {structure}, not the fundus"
    fundus = any(v in FUNDUS_STRUCTURES for v, _ in anatomy)
    if not fundus:
        for value, meaning in devices:
            if value in EXTERNAL_DEVICES or re.search(r"external|slit", meaning, re.I):
                name = EXTERNAL_DEVICES.get(value, meaning).lower()
                article = "an" if name[:1] in "aeiou" else "a"
                return "not-fundus", f"taken with {article} {name}, not a fundus camera"
        if _EXTERNAL.search(description):
            return "not-fundus", "an external or anterior-segment photograph, not the fundus"
        fundus = any(v in FUNDUS_DEVICES for v, _ in devices)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if image_type[:1] == ["DERIVED"] and not is_secondary_capture(sop):
        return "derived", "a derived image (montage or annotated copy); the originals are graded"
    if fundus:
        return CHOSEN, "colour fundus photograph"
    return CHOSEN, "colour photograph (no anatomy recorded: the field-of-view check decides)"


def _stereo_pairs(headers: Sequence[Dataset]) -> dict[str, str]:
    """SOP Instance UID of each second image of a stereo pair → the first one's."""
    second: dict[str, str] = {}
    for ds in headers:
        if str(ds.get("SOPClassUID", "")) != STEREOMETRIC_RELATIONSHIP:
            continue
        for pair in ds.get("StereoPairsSequence") or []:
            left = [
                str(i.get("ReferencedSOPInstanceUID", ""))
                for i in pair.get("LeftImageSequence") or []
            ]
            right = [
                str(i.get("ReferencedSOPInstanceUID", ""))
                for i in pair.get("RightImageSequence") or []
            ]
            if left and right:
                second[right[0]] = left[0]
    return second


def _heuristic_pairs(items: Sequence[tuple[ImageDecision, Dataset]]) -> dict[str, str]:
    """Consecutive images of one eye in a series saying Stereo Pairs Present YES."""
    second: dict[str, str] = {}
    by_eye: dict[str, list[ImageDecision]] = {}
    for decision, ds in items:
        if decision.chosen and str(ds.get("StereoPairsPresent", "")).upper() == "YES":
            by_eye.setdefault(decision.laterality, []).append(decision)
    for images in by_eye.values():
        ordered = sorted(images, key=lambda d: (d.instance_number or 0, d.path.name))
        for first, other in zip(ordered[::2], ordered[1::2], strict=False):
            second[other.sop_instance_uid] = first.sop_instance_uid
    return second


def _plural(count: int) -> str:
    return f"{count} image{'s' * (count != 1)}"


def _labels(images: Sequence[ImageDecision]) -> str:
    """``image 3`` / ``images 1, 2``."""
    numbers = [str(d.instance_number) for d in images if d.instance_number is not None]
    if len(numbers) == len(images):
        return f"image{'s' * (len(numbers) > 1)} {', '.join(numbers)}"
    return ", ".join(d.label for d in images)


def _series_line(images: Sequence[ImageDecision]) -> tuple[str, str, str | None]:
    """(category, sentence, eyes) of a series from its images' decisions."""
    chosen = [d for d in images if d.chosen]
    others = [d for d in images if not d.chosen]
    passed = "; ".join(f"{d.label} passed over: {d.reason}" for d in others)
    if chosen:
        eyes = sorted({d.laterality or "?" for d in chosen}, key="RL?".index)
        per_eye = "; ".join(
            f"{eye}: {_labels([d for d in chosen if (d.laterality or '?') == eye])}" for eye in eyes
        )
        kinds = "; ".join(sorted({d.reason for d in chosen}))
        count = f"{len(chosen)} of {len(images)} images" if others else _plural(len(chosen))
        sentence = f"{count} ({per_eye}), {kinds}"
        role = " and ".join(f"{e} eye" if e != "?" else "eye not recorded" for e in eyes)
        return CHOSEN, sentence + (f"; {passed}" if passed else ""), role
    categories = {d.category for d in others}
    if len(categories) == 1 and len({d.reason for d in others}) == 1:
        return others[0].category, f"{others[0].reason} ({_labels(others)})", None
    return others[0].category, passed, None


def choose_photographs(series: Sequence[SeriesInput]) -> Selection[tuple[SeriesInput, ...]]:
    """The series with colour fundus photographs, each narrowed to those instances.

    Raises
    ------
    SelectionError
        No photograph series (Modality OP, XC or OT) or no fundus photograph
        in them; the sentence says what the study holds.
    """
    from pydicom import dcmread

    headers: dict[Path, Dataset | None] = {}
    for item in series:
        if (item.modality or "").upper() not in PHOTOGRAPH_MODALITIES:
            continue
        for path in item.paths:
            try:
                headers[path] = dcmread(path, stop_before_pixels=True)
            except Exception:  # pydicom raises many kinds on a damaged file
                headers[path] = None
    pairs = _stereo_pairs([ds for ds in headers.values() if ds is not None])
    decisions: list[Decision] = []
    chosen: list[SeriesInput] = []
    for item in series:
        modality = (item.modality or "").upper()
        if modality not in PHOTOGRAPH_MODALITIES:
            decisions.append(
                Decision(
                    item, "other-modality", f"modality {modality or 'unknown'}, not OP, XC or OT"
                )
            )
            continue
        images: list[tuple[ImageDecision, Dataset]] = []
        unreadable: list[ImageDecision] = []
        for path in item.paths:
            ds = headers[path]
            if ds is None:
                unreadable.append(
                    ImageDecision(path, None, "unreadable", "the header cannot be read")
                )
                continue
            try:
                category, reason = _judge(ds, item.series_description or "")
                number = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") else None
            except (TypeError, ValueError) as exc:  # a malformed value in a camera's header
                category, reason, number = "unreadable", f"its header is malformed: {exc}", None
            images.append(
                (
                    ImageDecision(
                        path,
                        number,
                        category,
                        reason,
                        _laterality(ds),
                        str(ds.get("SOPInstanceUID", "")),
                    ),
                    ds,
                )
            )
        second = {**_heuristic_pairs(images), **pairs}
        by_uid = {d.sop_instance_uid: d for d, _ in images}
        judged = []
        for decision, _ in images:
            first = second.get(decision.sop_instance_uid)
            if decision.chosen and first is not None:
                partner = by_uid.get(first)
                label = partner.label if partner is not None else "another image"
                decision = dataclasses.replace(
                    decision,
                    category="stereo-pair",
                    reason=f"the second image of a stereo pair with {label} (the same field)",
                )
            judged.append(decision)
        judged += unreadable
        category, sentence, role = _series_line(judged)
        kept = tuple(d.path for d in judged if d.chosen)
        decisions.append(Decision(item, category, sentence, role, images=tuple(judged)))
        if kept:
            chosen.append(dataclasses.replace(item, paths=kept))
    if not chosen:
        photographs = any(d.category != "other-modality" for d in decisions)
        what = (
            "no colour fundus photograph"
            if photographs
            else "no ophthalmic photographs (Modality OP, XC or OT)"
        )
        raise SelectionError(
            f"diabetic retinopathy grading needs colour fundus photographs: the study has {what} "
            f"(found: {found_list(decisions)})",
            decisions,
        )
    return Selection(tuple(chosen), tuple(decisions))


def select_photograph_series(series: Sequence[SeriesInput]) -> tuple[SeriesInput, ...]:
    """The photograph series narrowed to their fundus photographs; PipelineError if none."""
    return choose_photographs(series).chosen


def _describe(ds: Dataset, path: Path) -> str:
    return f"image {ds.get('InstanceNumber', '?')} ({path.name})"


def load_photographs(paths: Sequence[Path]) -> FundusStudy:
    """Read each photograph (the first frame of a multi-frame one); skip what is not one."""
    from pydicom import dcmread

    photographs, skipped = [], []
    for path in paths:
        try:
            ds = dcmread(path)
            if str(ds.SOPClassUID) not in PHOTOGRAPH_SOP_CLASSES:
                skipped.append(f"{_describe(ds, path)} is not a photograph")
                continue
            rgb = np.asarray(ds.pixel_array)
        except Exception as exc:  # pydicom raises many kinds for unreadable pixel data
            skipped.append(f"{path.name} cannot be read: {exc}")
            continue
        if rgb.ndim == 4:  # multi-frame: grade the first frame
            rgb = rgb[0]
        if rgb.dtype != np.uint8:
            skipped.append(f"{_describe(ds, path)} is not 8 bits per sample")
            continue
        photographs.append(Photograph(ds, _laterality(ds), rgb, _describe(ds, path)))
    return FundusStudy(tuple(photographs), tuple(skipped))
