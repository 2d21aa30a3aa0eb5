"""Secondary Capture key images: findings burnt into an RGB copy of a slice.

For viewers without SEG/SR support. The image is windowed from the source
slice (Window Center/Width if present, else its range), findings are drawn as
coloured circles, and the notice is kept in the Series Description and Image
Comments (the SR carries the words). A comparison image
(:func:`write_comparison_image`) puts a prior slice and the current one side
by side, each half labelled in burnt-in capitals (:mod:`.glyphs`: a viewer
that shows only pixels must still tell prior from current).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.results.common import (
    MANUFACTURER,
    AlgorithmInfo,
    SeriesSpec,
    copy_body_part,
    result_uid,
    software_versions,
)
from dicomnode.results.frames import SourceFrame, frame_number
from dicomnode.results.palette import RGB


@dataclass(frozen=True)
class KeyImageMark:
    """A circle to draw: centre (row, column) and radius in pixels, in the finding's colour."""

    row: float
    column: float
    radius: float
    colour: RGB = (255, 165, 0)


def _window(image: Dataset, pixels: np.ndarray) -> np.ndarray:
    """*image*'s stored *pixels* rescaled to modality values and windowed to uint8 grey."""
    values = pixels.astype(np.float32) * float(image.get("RescaleSlope", 1)) + float(
        image.get("RescaleIntercept", 0)
    )
    return _windowed(image, values)


def _windowed(image: Dataset, values: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Modality *values* windowed to uint8 grey with *image*'s Window Center/Width.

    Without a window in *image*, the range of *fallback* (default: *values*) is the window.
    """
    if "WindowCenter" in image and "WindowWidth" in image:
        centre = float(np.ravel([image.WindowCenter])[0])
        width = float(np.ravel([image.WindowWidth])[0])
        low, high = centre - width / 2.0, centre + width / 2.0
    else:
        span = values if fallback is None else fallback
        low, high = float(span.min()), float(span.max()) or 1.0
    return (np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0).astype(np.uint8)


def _draw_circle(
    rgb: np.ndarray, mark: KeyImageMark, colour: tuple[int, int, int], width: float = 1.5
) -> None:
    rows, cols = np.ogrid[: rgb.shape[0], : rgb.shape[1]]
    distance = np.sqrt((rows - mark.row) ** 2 + (cols - mark.column) ** 2)
    ring = np.abs(distance - mark.radius) <= width
    rgb[ring] = colour


def write_key_image(
    image: Dataset,
    marks: Sequence[KeyImageMark],
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of *image* with *marks* drawn, in *image*'s study.

    *image* may be a frame (:class:`~dicomnode.results.frames.SourceFrame`) of a
    multi-frame image: its pixels, rescale and window are the frame's, and the
    Source Image Sequence names the frame.
    """
    pixels = image.pixels() if isinstance(image, SourceFrame) else image.pixel_array
    grey = _window(image, pixels)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for mark in marks:
        _draw_circle(rgb, mark, mark.colour)
    return _secondary_capture(
        image,
        rgb,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        instance_number=instance_number,
        patient_orientation=("L", "P"),
    )


def _secondary_capture(
    image: Dataset,
    rgb: np.ndarray,
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    instance_number: int,
    patient_orientation: tuple[str, str],
    sources: Sequence[Dataset] = (),
    uid_role: str | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of *rgb* in *image*'s study and patient, explicit VR.

    Body part and laterality come from *image* (:func:`~dicomnode.results.common.copy_body_part`).
    The Source Image Sequence names *sources* (default: *image*); the SOP Instance
    UID is keyed on *uid_role* (default ``sc-<instance number>``).
    """
    # highdicom's hint says ints; the attribute is DS (mm).
    spacing: Any = tuple(float(v) for v in image.PixelSpacing) if "PixelSpacing" in image else None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=image,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(uid_key, "sc-series"),
        series_number=series.number,
        sop_instance_uid=result_uid(uid_key, uid_role or f"sc-{instance_number}"),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=spacing,
        patient_orientation=patient_orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.SeriesDescription = series.described(algorithm.notice)
    sc.ImageComments = f"{algorithm.name} {algorithm.version}: {algorithm.notice}"[:10240]
    sc.BurnedInAnnotation = "YES"
    sc.ManufacturerModelName = algorithm.name[:64]
    sc.SoftwareVersions = software_versions()
    copy_body_part(sc, image)
    # The images it was made from (General Image, Source Image Sequence).
    sc.SourceImageSequence = [_source_item(s) for s in (sources or (image,))]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version}: findings drawn"[:1024]
    return sc


def _source_item(image: Dataset) -> Dataset:
    """A Source Image Sequence item naming *image* (and its frame, for a frame of a multi-frame)."""
    source = Dataset()
    source.ReferencedSOPClassUID = image.SOPClassUID
    source.ReferencedSOPInstanceUID = image.SOPInstanceUID
    number = frame_number(image)
    if number is not None:
        source.ReferencedFrameNumber = number
    return source


def write_overlay_image(
    image: Dataset,
    rgb: np.ndarray,
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    instance_number: int = 1,
    comments: str | None = None,
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of an overlay already drawn (e.g. a heat map on a photograph).

    Parameters
    ----------
    image
        The source image: study, patient and laterality are copied from it.
    rgb
        ``(rows, columns, 3)`` uint8, the picture to send.
    comments
        Image Comments; default: model name, version and notice.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"an overlay is (rows, columns, 3) uint8, not {rgb.shape} {rgb.dtype}")
    # A photograph faces the patient: columns run to the patient's left, rows to the feet.
    sc = _secondary_capture(
        image,
        rgb,
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        instance_number=instance_number,
        patient_orientation=("L", "F"),
    )
    if comments:
        sc.ImageComments = comments[:10240]
    return sc


# A side-by-side image: [prior | divider | current]. The divider is light grey, which no
# lung-window pixel of air or the circles' colours is, so the halves cannot be mistaken.
DIVIDER_COLUMNS = 4
DIVIDER_GREY = 192


@dataclass(frozen=True)
class ComparisonPanel:
    """One half of a side-by-side key image.

    Attributes
    ----------
    image
        The source slice shown (Source Image Sequence; a
        :class:`~dicomnode.results.frames.SourceFrame` is named with its frame).
    values
        ``(rows, columns)`` modality values (HU), already at the pixel spacing
        of the image the comparison is written in (the current slice's).
    marks
        Circles to draw, in *values*' pixels.
    label
        Burnt in at the top left (upper case; the font of :mod:`.glyphs`).
    """

    image: Dataset
    values: np.ndarray
    marks: tuple[KeyImageMark, ...] = ()
    label: str = ""


def comparison_pixels(prior: ComparisonPanel, current: ComparisonPanel) -> np.ndarray:
    """``(rows, 2 x columns + DIVIDER_COLUMNS, 3)`` uint8: *prior* left, *current* right.

    Both halves are windowed with the current image's Window Center/Width (or
    the range of both, when it has none), so one grey is one HU on either side.
    """
    from dicomnode.results.glyphs import burn_text

    if prior.values.shape != current.values.shape:
        raise ValueError(
            f"the halves differ in size: prior {prior.values.shape}, current {current.values.shape}"
        )
    both = np.concatenate([prior.values.ravel(), current.values.ravel()])
    rows, columns = current.values.shape
    scale = max(1, columns // 160)  # about 3 % of the width per letter at any matrix size
    halves = []
    for panel in (prior, current):
        grey = _windowed(current.image, panel.values.astype(np.float32), fallback=both)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        for mark in panel.marks:
            _draw_circle(rgb, mark, mark.colour)
        burn_text(rgb, panel.label, top=scale, left=scale, scale=scale)
        halves.append(rgb)
    divider = np.full((rows, DIVIDER_COLUMNS, 3), DIVIDER_GREY, dtype=np.uint8)
    return np.concatenate([halves[0], divider, halves[1]], axis=1)


def write_comparison_image(
    prior: ComparisonPanel,
    current: ComparisonPanel,
    *,
    description: str,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    uid_role: str,
    instance_number: int,
) -> hd.sc.SCImage:
    """A Secondary Capture of *prior* and *current* side by side, in the current image's study.

    Parameters
    ----------
    prior, current
        The halves (:func:`comparison_pixels`); the current image gives the
        patient, study, pixel spacing and window.
    description
        Derivation Description: what is shown (which finding, which side is which).
    uid_role
        What the SOP Instance UID is keyed on with *uid_key* (one per finding,
        e.g. its Tracking UID), so a re-run resends the same instance.
    """
    sc = _secondary_capture(
        current.image,
        comparison_pixels(prior, current),
        algorithm=algorithm,
        series=series,
        uid_key=uid_key,
        instance_number=instance_number,
        patient_orientation=("L", "P"),
        sources=(prior.image, current.image),
        uid_role=uid_role,
    )
    sc.DerivationDescription = description[:1024]
    comments = f"{description}. {algorithm.name} {algorithm.version}: {algorithm.notice}"
    sc.ImageComments = comments[:10240]
    return sc
