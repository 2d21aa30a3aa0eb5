"""DICOM Segmentation (BINARY) pixel-aligned with a source series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.coding import Code

from dicomnode.results.common import (
    AlgorithmInfo,
    SeriesSpec,
    equipment,
    finding_uid,
    result_uid,
)
from dicomnode.results.palette import RGB, cielab, colour_of


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: what it is (SNOMED CT category and type), how to track it, its colour.

    The colour defaults to the palette's colour of the property type
    (:mod:`dicomnode.results.palette`); the SEG carries it as the segment's
    Recommended Display CIELab Value.
    """

    label: str
    category: Code
    property_type: Code
    tracking_id: str | None = None
    tracking_uid: str | None = None
    anatomic_region: Code | None = None
    colour: RGB | None = None

    def display_colour(self, index: int = 0) -> RGB:
        """This segment's colour (*index*: which fallback colour, for unlisted types)."""
        return self.colour or colour_of(self.property_type, index)

    @classmethod
    def numbered(
        cls,
        name: str,
        property_type: Code,
        count: int,
        *,
        category: Code | None = None,
        anatomic_region: Code | None = None,
    ) -> list[SegmentSpec]:
        """*count* findings of one kind: "<name> 1", "<name> 2", ... as label and tracking id.

        The category defaults to SNOMED CT "Morphologically abnormal structure".
        """
        from pydicom.sr.codedict import codes

        return [
            cls(
                f"{name} {n}",
                category or codes.SCT.MorphologicallyAbnormalStructure,
                property_type,
                tracking_id=f"{name} {n}",
                anatomic_region=anatomic_region,
            )
            for n in range(1, count + 1)
        ]


def _descriptions(
    segments: Sequence[SegmentSpec], algorithm: AlgorithmInfo, uid_key: str
) -> list[hd.seg.SegmentDescription]:
    identification = algorithm.identification()
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.label[:64],
            segmented_property_category=spec.category,
            segmented_property_type=spec.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            tracking_id=spec.tracking_id,
            # Same UID as the SR's finding n by default, so viewers link them.
            tracking_uid=(spec.tracking_uid or finding_uid(uid_key, number))
            if spec.tracking_id
            else None,
            anatomic_regions=[spec.anatomic_region] if spec.anatomic_region else None,
            display_color=cielab(spec.display_colour(number - 1)),
        )
        for number, spec in enumerate(segments, start=1)
    ]


def _by_source_frame(
    source_images: Sequence[Dataset], pixels: np.ndarray
) -> tuple[list[Dataset], np.ndarray]:
    """highdicom's source images and the pixels in their order.

    Single-frame sources are passed as they are. For the frames of one
    multi-frame instance highdicom wants the instance and one plane per source
    frame, in frame order (plane i is frame i + 1: that is what it references);
    volume order is slice order, which need not be frame order.
    """
    from dicomnode.results.frames import frame_number, instances

    numbers = [frame_number(image) for image in source_images]
    if all(n is None for n in numbers):
        return list(source_images), pixels
    found = instances(source_images)
    if len(found) != 1 or None in numbers or len(set(numbers)) != len(numbers):
        raise ValueError("the source frames must be distinct frames of one instance")
    instance = found[0]
    ordered = np.zeros((int(instance.NumberOfFrames), *pixels.shape[1:]), dtype=pixels.dtype)
    ordered[np.array(numbers, dtype=int) - 1] = pixels
    return [instance], ordered


def write_segmentation(
    source_images: Sequence[Dataset],
    labels: np.ndarray,
    segments: Sequence[SegmentSpec],
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
    omit_empty_frames: bool = True,
) -> hd.seg.Segmentation:
    """A BINARY SEG over *source_images* (single-frame slices or frames, in volume order).

    Parameters
    ----------
    source_images
        The source series, one dataset per slice, in the order of *labels*' first axis:
        single-frame images, or the frames (:class:`~dicomnode.results.frames.SourceFrame`)
        of one multi-frame instance. On frames the SEG's one source image is the
        instance, and each SEG frame references the source frame it was derived
        from (Derivation Image and Source Image Sequence, Referenced Frame Number).
    labels
        Either a label map ``(slices, rows, columns)`` of integers where value
        ``n`` is segment ``n`` (segments must not overlap; this is also ~7x faster
        in highdicom), or a stack ``(slices, rows, columns, segments)`` of booleans.
    segments
        One entry per segment, in segment-number order.
    omit_empty_frames
        Leave out frames without any segment pixel (smaller object; every viewer
        we target handles it).

    Returns
    -------
    highdicom.seg.Segmentation
        Same study and patient as the source, in a new series; uncompressed.
    """
    if labels.shape[0] != len(source_images):
        raise ValueError(
            f"labels have {labels.shape[0]} slices, the source series {len(source_images)}"
        )
    if labels.ndim == 3:
        if labels.max(initial=0) > len(segments):
            raise ValueError("label map has values beyond the described segments")
        pixels = labels.astype(np.uint8 if len(segments) < 256 else np.uint16, copy=False)
    elif labels.ndim == 4 and labels.shape[3] == len(segments):
        pixels = labels.astype(bool, copy=False)
    else:
        raise ValueError(f"labels of shape {labels.shape} do not match {len(segments)} segment(s)")
    if not pixels.any():
        # An empty result is reported in the SR; a SEG needs at least one frame.
        raise ValueError("no segment has any pixel: write no SEG for an empty result")
    sources, pixels = _by_source_frame(source_images, pixels)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(segments, algorithm, uid_key),
        series_instance_uid=result_uid(uid_key, "seg-series"),
        series_number=series.number,
        sop_instance_uid=result_uid(uid_key, "seg"),
        instance_number=1,
        **equipment(algorithm),
        content_label="AI_SEG",
        content_description=algorithm.notice[:64] or None,
        omit_empty_frames=omit_empty_frames,
    )
    seg.SeriesDescription = series.described(algorithm.notice)
    return seg
