"""Frames of enhanced multi-frame images, seen as the single-frame images the writers draw on.

The result writers take the source as one dataset per slice, in volume
order, and read each slice's geometry from it (Image Position, Orientation,
Pixel Spacing) to place outlines and points. An enhanced multi-frame instance
(Enhanced or Legacy Converted Enhanced CT/MR) holds all slices, with their
geometry in functional groups; a :class:`SourceFrame` is one of its frames
with that geometry flattened to the top level, plus what is needed to
reference it: the instance and the 1-based frame number. Every writer
references a :class:`SourceFrame` as (instance, Referenced Frame Number):

- SEG: one source image (the instance); each SEG frame's Derivation Image /
  Source Image Sequence names the source frame it was derived from;
- SR: image regions (SCOORD) and Image Library entries name the frame; the
  evidence lists the instance once;
- GSPS: each Graphic Annotation's Referenced Image Sequence names the frame;
- Secondary Capture: the Source Image Sequence names the frame.

Only pydicom is needed here, so :mod:`dicomnode.pipelines.volume` can make
frames without loading highdicom.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pydicom import Dataset

# Per-frame and shared functional groups whose attributes a single-frame image has at the top level.
_FLATTENED = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    # Where the frame is of the body: results.common.copy_body_part reads these.
    "FrameAnatomySequence": ("AnatomicRegionSequence", "FrameLaterality"),
}
# Instance attributes a frame does not have (its pixels and frame description are the instance's).
_LEFT_OUT = {
    "PixelData",
    "NumberOfFrames",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "FrameIncrementPointer",
}


class SourceFrame(Dataset):
    """Frame *frame_number* (1-based) of the multi-frame *instance*, as a single-frame header.

    It has the instance's attributes (SOP Instance UID included: it is not an
    instance of its own) except the pixel data and the functional groups, and
    the frame's plane position, orientation, pixel measures, rescale and window
    at the top level.
    """

    def __init__(self, instance: Dataset, frame_number: int) -> None:
        super().__init__()
        frames = int(instance.get("NumberOfFrames", 1) or 1)
        if not 1 <= frame_number <= frames:
            raise ValueError(f"frame {frame_number} is not one of the instance's {frames} frames")
        for element in instance:
            if element.keyword not in _LEFT_OUT:
                self.add(element)
        for keyword, attributes in _FLATTENED.items():
            item = _group_item(instance, frame_number - 1, keyword)
            if item is None:
                continue
            for attribute in attributes:
                if attribute in item:
                    self.add(item[attribute])
        # Python attributes (not DICOM ones): what references to this frame need.
        self.instance = instance
        self.frame_number = frame_number

    def pixels(self) -> np.ndarray:
        """This frame's stored pixel values (the instance's pixel data, decoded)."""
        pixels: np.ndarray = self.instance.pixel_array
        return pixels if pixels.ndim == 2 else pixels[self.frame_number - 1]


def _group_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Functional group *keyword* of frame *index*: per-frame if there, else shared."""
    for groups, at in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        if groups in ds and len(ds[groups].value) > at and keyword in ds[groups][at]:
            item: Dataset = ds[groups][at][keyword][0]
            return item
    return None


def source_frames(
    instance: Dataset, frame_numbers: Iterable[int] | None = None
) -> list[SourceFrame]:
    """Frames *frame_numbers* (1-based; default all, in frame order) of *instance*."""
    numbers = (
        range(1, int(instance.get("NumberOfFrames", 1) or 1) + 1)
        if frame_numbers is None
        else frame_numbers
    )
    return [SourceFrame(instance, n) for n in numbers]


def frame_number(image: Dataset) -> int | None:
    """The Referenced Frame Number of *image*: its frame's number, None for a single-frame image."""
    return image.frame_number if isinstance(image, SourceFrame) else None


def instance_of(image: Dataset) -> Dataset:
    """The instance *image* is (single-frame) or is a frame of."""
    return image.instance if isinstance(image, SourceFrame) else image


def instances(images: Sequence[Dataset]) -> list[Dataset]:
    """The instances of *images*, each once, in order of first appearance."""
    seen: dict[str, Dataset] = {}
    for image in images:
        instance = instance_of(image)
        seen.setdefault(str(instance.SOPInstanceUID), instance)
    return list(seen.values())
