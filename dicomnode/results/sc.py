"""Secondary Capture key images: findings burnt into an RGB copy of a slice.

For viewers without SEG/SR support. The image is windowed from the source
slice (Window Center/Width if present, else its range), findings are drawn as
coloured circles, and the notice is kept in the Series Description and Image
Comments (burnt-in text would need a font; the SR carries the words).
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
    values = pixels.astype(np.float32) * float(image.get("RescaleSlope", 1)) + float(
        image.get("RescaleIntercept", 0)
    )
    if "WindowCenter" in image and "WindowWidth" in image:
        centre = float(np.ravel([image.WindowCenter])[0])
        width = float(np.ravel([image.WindowWidth])[0])
        low, high = centre - width / 2.0, centre + width / 2.0
    else:
        low, high = float(values.min()), float(values.max()) or 1.0
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
) -> hd.sc.SCImage:
    """An RGB Secondary Capture of *rgb* in *image*'s study and patient, explicit VR.

    Body part and laterality come from *image* (:func:`~dicomnode.results.common.copy_body_part`).
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
        sop_instance_uid=result_uid(uid_key, f"sc-{instance_number}"),
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
    # The image it was made from (General Image, Source Image Sequence).
    source = Dataset()
    source.ReferencedSOPClassUID = image.SOPClassUID
    source.ReferencedSOPInstanceUID = image.SOPInstanceUID
    number = frame_number(image)
    if number is not None:
        source.ReferencedFrameNumber = number
    sc.SourceImageSequence = [source]
    sc.DerivationDescription = f"{algorithm.name} {algorithm.version}: findings drawn"[:1024]
    return sc


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
