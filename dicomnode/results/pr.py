"""Grayscale Softcopy Presentation State: findings outlined on the source images.

For PACS and viewers that display neither SEG nor SR but apply presentation
states (most diagnostic workstations do). One GSPS per result: each finding
is outlined (POLYLINE graphic objects) and labelled (a text object) on every
source image it appears on, and the GSPS references exactly those images.
Findings of one type share a graphic layer whose colour is the palette's
(:mod:`dicomnode.results.palette`), as in the SEG; graphic objects carry the
finding's tracking identifier and UID, as its SEG segment and SR groups do.
Grayscale only: colour photographs (fundus) would need a Color Softcopy
Presentation State, and their results come as SR and Secondary Capture.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset

from dicomnode.results.codes import declare_private_schemes
from dicomnode.results.common import (
    AlgorithmInfo,
    SeriesSpec,
    copy_body_part,
    equipment,
    finding_uid,
    result_uid,
)
from dicomnode.results.frames import frame_number, instance_of, instances
from dicomnode.results.palette import RGB, cielab
from dicomnode.results.seg import SegmentSpec


@dataclass(frozen=True)
class Annotation:
    """One finding on one source image: its outlines and the label written next to them."""

    source_index: int
    outlines: tuple[np.ndarray, ...]  # closed (n, 2) (column, row) polylines, image coordinates
    label: str
    layer: str  # e.g. "NODULE": findings of one type share a layer and its colour
    colour: RGB
    tracking_id: str | None = None
    tracking_uid: str | None = None


def segment_annotations(
    segments: Sequence[SegmentSpec],
    drawn: Mapping[int, Mapping[int, Sequence[np.ndarray]]],
    uid_key: str,
    texts: Mapping[int, str] | None = None,
) -> list[Annotation]:
    """The annotations of a SEG's segments: segment n outlined wherever it is.

    Parameters
    ----------
    segments
        The SEG's segments, in segment-number order.
    drawn
        Segment number -> slice index -> outlines (:func:`~dicomnode.results.outlines.segment_outlines`).
    uid_key
        The job's UID key: graphic objects carry segment n's tracking UID.
    texts
        Segment number -> label text (default: the segment label).
    """
    annotations = []
    for number, spec in enumerate(segments, start=1):
        for index, loops in sorted(drawn.get(number, {}).items()):
            annotations.append(
                Annotation(
                    source_index=index,
                    outlines=tuple(loops),
                    label=(texts or {}).get(number, spec.label),
                    layer=spec.property_type.meaning,
                    colour=spec.display_colour(number - 1),
                    tracking_id=spec.tracking_id,
                    tracking_uid=spec.tracking_uid or finding_uid(uid_key, number),
                )
            )
    return annotations


def _layer_name(name: str) -> str:
    """A Graphic Layer name (CS: 16 characters, upper case, digits, space, underscore)."""
    cleaned = "".join(c if c.isalnum() or c == " " else "_" for c in name.upper())
    return cleaned[:16].strip() or "FINDINGS"


def _objects(annotation: Annotation) -> tuple[list[hd.pr.GraphicObject], hd.pr.TextObject]:
    graphics = [
        hd.pr.GraphicObject(
            graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
            graphic_data=np.asarray(points, dtype=float),
            units=hd.pr.AnnotationUnitsValues.PIXEL,
            tracking_id=annotation.tracking_id,
            tracking_uid=annotation.tracking_uid,
        )
        for points in annotation.outlines
    ]
    every = np.concatenate(annotation.outlines)
    # The label sits just above the outline's top left corner; no anchor line to clutter it.
    anchor = (float(every[:, 0].min()), max(float(every[:, 1].min()) - 2.0, 0.0))
    text = hd.pr.TextObject(
        text_value=annotation.label[:64],
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        anchor_point=anchor,
        anchor_point_visible=False,
        tracking_id=annotation.tracking_id,
        tracking_uid=annotation.tracking_uid,
    )
    return graphics, text


def write_presentation_state(
    source_images: Sequence[Dataset],
    annotations: Sequence[Annotation],
    *,
    algorithm: AlgorithmInfo,
    series: SeriesSpec,
    uid_key: str,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A GSPS drawing *annotations* on *source_images* (greyscale slices, or frames of one image).

    *source_images* are single-frame images or frames
    (:class:`~dicomnode.results.frames.SourceFrame`) of one multi-frame image: each
    Graphic Annotation then references the instance and the frame's number, and
    the presentation state the instance.

    Raises
    ------
    ValueError
        When there is nothing to draw (write no GSPS for an empty result).
    """
    drawn = [a for a in annotations if a.outlines]
    if not drawn:
        raise ValueError("no annotation has an outline: write no GSPS for an empty result")
    layers: dict[str, hd.pr.GraphicLayer] = {}
    by_image: dict[tuple[int, str], list[Annotation]] = defaultdict(list)
    for annotation in drawn:
        name = _layer_name(annotation.layer)
        if name not in layers:
            layers[name] = hd.pr.GraphicLayer(
                layer_name=name,
                order=len(layers) + 1,
                description=annotation.layer[:64],
                display_color=cielab(annotation.colour),
            )
        by_image[(annotation.source_index, name)].append(annotation)
    graphic_annotations = []
    for (index, name), items in sorted(by_image.items()):
        graphics, texts = [], []
        for item in items:
            objects, text = _objects(item)
            graphics += objects
            texts.append(text)
        image = source_images[index]
        graphic_annotations.append(
            hd.pr.GraphicAnnotation(
                # A frame of a multi-frame image: the instance and the frame's number.
                referenced_images=[instance_of(image)],
                referenced_frame_number=frame_number(image),
                graphic_layer=layers[name],
                graphic_objects=graphics,
                text_objects=texts,
            )
        )
    referenced = instances([source_images[i] for i in sorted({a.source_index for a in drawn})])
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=result_uid(uid_key, "pr-series"),
        series_number=series.number,
        sop_instance_uid=result_uid(uid_key, "pr"),
        instance_number=1,
        **equipment(algorithm),
        content_label="AI_FINDINGS",
        content_description=algorithm.notice[:64] or None,
        graphic_annotations=graphic_annotations,
        graphic_layers=list(layers.values()),
    )
    for layer in gsps.GraphicLayerSequence:
        # Viewers of the grayscale era read this one, not the CIELab colour: full white.
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = 0xFFFF
    gsps.SeriesDescription = series.described(algorithm.notice)
    copy_body_part(gsps, referenced[0])
    return declare_private_schemes(gsps)
