"""Outlines, colours, private codes and the GSPS: what viewers without SEG/SR support are given.

The GSPS is checked by dicom3tools (dciodvfy), by DCMTK's presentation state
checker (dcmpschk) and by DCMTK's presentation state engine applying it to a
source image (dcmp2pgm), besides highdicom: OHIF 3.13 does not render
presentation states.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.results import (
    AlgorithmInfo,
    SegmentSpec,
    SeriesSpec,
    segment_annotations,
    write_presentation_state,
    write_segmentation,
)
from dicomnode.results.codes import PRIVATE_SCHEME, declare_private_schemes, private
from dicomnode.results.outlines import (
    MIN_POINTS,
    key_outline,
    outlines,
    outlines_by_slice,
    segment_outlines,
)
from dicomnode.results.palette import BY_FINDING_TYPE, FALLBACK, colour_of
from dicomnode.synthetic import Nodule, ct_series, nodule_labels
from dicomnode.testing.peers import dciodvfy, dcmtk_tool

ALGORITHM = AlgorithmInfo("test-outliner", "0.3", "Not for diagnostic use")
NODULES = [Nodule((-60.0, -20.0, 20.0), 12.0), Nodule((70.0, 10.0, 40.0), 9.0)]


@pytest.fixture(scope="module")
def source() -> list[pydicom.Dataset]:
    return ct_series(
        40, 96, 96, pixel_spacing=(4.0, 4.0), slice_thickness=1.5, seed=5, nodules=NODULES
    )


def test_outlines_follow_the_pixel_edges_in_image_coordinates() -> None:
    mask = np.zeros((10, 12), bool)
    mask[3:6, 4:9] = True  # rows 3-5, columns 4-8
    (loop,) = outlines(mask)
    assert np.array_equal(loop[0], loop[-1])  # closed
    # (column, row); (0, 0) is the top left corner of the top left pixel: the outline runs
    # through the midpoints between inside and outside pixel centres.
    assert loop[:, 0].min() == 4.0 and loop[:, 0].max() == 9.0
    assert loop[:, 1].min() == 3.0 and loop[:, 1].max() == 6.0
    ring = np.zeros((40, 40), bool)
    yy, xx = np.ogrid[:40, :40]
    ring[((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) & ((yy - 20) ** 2 + (xx - 20) ** 2 > 16)] = True
    outer, inner = outlines(ring)  # the hole has its own outline, the longer one first
    assert len(outer) > len(inner)
    centre = np.array([20.5, 20.5])
    assert np.linalg.norm(outer[:-1] - centre, axis=1).min() > 9.0
    assert np.linalg.norm(inner[:-1] - centre, axis=1).max() < 5.5
    # A single pixel still has more than five points: Cornerstone3D takes a closed
    # 4- or 5-point polyline for a rectangle.
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    (small,) = outlines(dot)
    assert len(small) >= MIN_POINTS
    assert outlines(np.zeros((4, 4), bool)) == []


def test_segment_outlines_are_placed_in_their_slices(source: list[pydicom.Dataset]) -> None:
    labels = nodule_labels(source, NODULES)
    drawn = segment_outlines(labels)
    assert sorted(drawn) == [1, 2]
    for number, by_slice in drawn.items():
        assert sorted(by_slice) == [k for k in range(len(source)) if (labels[k] == number).any()]
        for k, loops in by_slice.items():
            # Every outline point lies between a segment pixel and one outside it (less
            # than 0.8 pixel from the centres of both): on the segment's edge, on slice k.
            inside = np.argwhere(labels[k] == number)[:, ::-1] + 0.5  # (column, row) centres
            outside = np.argwhere(labels[k] != number)[:, ::-1] + 0.5
            for point in np.concatenate(loops):
                assert np.linalg.norm(inside - point, axis=1).min() < 0.8
                assert np.linalg.norm(outside - point, axis=1).min() < 0.8


def test_outlines_of_a_crop_and_the_key_outline(source: list[pydicom.Dataset]) -> None:
    labels = nodule_labels(source, NODULES)
    drawn = segment_outlines(labels)
    # A crop's outlines, placed by its box, are the series' own.
    box = (slice(2, None), slice(10, 80), slice(5, 90))
    cropped = outlines_by_slice(labels[box] == 1, box)
    assert sorted(cropped) == sorted(drawn[1])
    for k, loops in cropped.items():
        assert all(np.array_equal(a, b) for a, b in zip(loops, drawn[1][k], strict=True))
    # The key slice is the one asked for when the finding is on it, else the nearest one.
    first, last = min(drawn[1]), max(drawn[1])
    middle = (first + last) // 2
    assert key_outline(drawn[1], middle)[0] == middle
    assert key_outline(drawn[1], 0)[0] == first and key_outline(drawn[1], 999)[0] == last
    # On a slice with a hole, the outline drawn is the outer edge, not the hole's.
    ring = np.zeros((40, 40), bool)
    yy, xx = np.ogrid[:40, :40]
    ring[((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) & ((yy - 20) ** 2 + (xx - 20) ** 2 > 16)] = True
    outer, inner = outlines(ring)
    assert np.array_equal(key_outline({3: [inner, outer]}, 3)[1], outer)
    with pytest.raises(ValueError, match="no outline"):
        key_outline({}, 3)


def test_palette_gives_each_finding_type_one_colour() -> None:
    assert colour_of(codes.SCT.Nodule) == BY_FINDING_TYPE["27925004"]
    assert colour_of(codes.SCT.Edema) != colour_of(codes.SCT.Necrosis)
    other = codes.SCT.Mass
    assert colour_of(other, 0) == FALLBACK[0] and colour_of(other, 1) == FALLBACK[1]
    spec = SegmentSpec("Oedema", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Edema)
    assert spec.display_colour() == BY_FINDING_TYPE["79654002"]


def test_seg_carries_the_palette_as_recommended_display_cielab(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    segments = SegmentSpec.numbered("Nodule", codes.SCT.Nodule, 2)
    seg = write_segmentation(
        source,
        nodule_labels(source, NODULES),
        segments,
        algorithm=ALGORITHM,
        series=SeriesSpec(9901, "seg"),
        uid_key="pal",
    )
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    assert dciodvfy(tmp_path / "seg.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    for number in (1, 2):
        value = back.get_segment_description(number).RecommendedDisplayCIELabValue
        rgb = hd.color.CIELabColor.from_dicom_value(value).to_rgb(clip=True)
        assert np.allclose(rgb, BY_FINDING_TYPE["27925004"], atol=1)


def test_private_codes_are_declared_and_standard_ones_are_not() -> None:
    ds = pydicom.Dataset()
    item = pydicom.Dataset()
    concept = private("REVIEW", "Needs review")
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        concept.value,
        concept.scheme_designator,
        concept.meaning,
    )
    standard = pydicom.Dataset()
    standard.CodeValue, standard.CodingSchemeDesignator, standard.CodeMeaning = (
        "27925004",
        "SCT",
        "Nodule",
    )
    ds.ConceptNameCodeSequence = [item, standard]
    declare_private_schemes(declare_private_schemes(ds))  # twice: declared once
    (declared,) = ds.CodingSchemeIdentificationSequence
    assert declared.CodingSchemeDesignator == PRIVATE_SCHEME
    assert declared.CodingSchemeName and declared.CodingSchemeResponsibleOrganization


def _gsps(source: list[pydicom.Dataset], tmp_path: Path) -> tuple[Path, np.ndarray, list[str]]:
    labels = nodule_labels(source, NODULES)
    segments = SegmentSpec.numbered("Nodule", codes.SCT.Nodule, 2)
    seg = write_segmentation(
        source, labels, segments, algorithm=ALGORITHM, series=SeriesSpec(9901, "s"), uid_key="pr"
    )
    uids = [str(s.TrackingUID) for s in seg.SegmentSequence]
    annotations = segment_annotations(
        segments, segment_outlines(labels), "pr", {1: "Nodule 1 12 mm", 2: "Nodule 2 9 mm"}
    )
    gsps = write_presentation_state(
        source, annotations, algorithm=ALGORITHM, series=SeriesSpec(9904, "outlines"), uid_key="pr"
    )
    path = tmp_path / "pr.dcm"
    gsps.save_as(path, enforce_file_format=True)
    return path, labels, uids


def test_gsps_outlines_each_finding_on_exactly_its_images(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    path, labels, uids = _gsps(source, tmp_path)
    assert dciodvfy(path) == [], dciodvfy(path)
    checked = subprocess.run(
        [dcmtk_tool("dcmpschk"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and "Test passed" in checked.stdout + checked.stderr
    gsps = pydicom.dcmread(path)
    assert gsps.StudyInstanceUID == source[0].StudyInstanceUID
    assert gsps.Modality == "PR" and "Laterality" not in gsps  # a chest: no side
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for series in gsps.ReferencedSeriesSequence
        for i in series.ReferencedImageSequence
    }
    with_findings = {str(source[k].SOPInstanceUID) for k in np.nonzero(labels.any(axis=(1, 2)))[0]}
    assert referenced == with_findings  # exactly the images drawn on
    layers = {str(layer.GraphicLayer): layer for layer in gsps.GraphicLayerSequence}
    assert list(layers) == ["NODULE"]
    colour = hd.color.CIELabColor.from_dicom_value(
        layers["NODULE"].GraphicLayerRecommendedDisplayCIELabValue
    ).to_rgb(clip=True)
    assert np.allclose(colour, colour_of(codes.SCT.Nodule), atol=1)
    tracking = {
        str(g.TrackingUID) for a in gsps.GraphicAnnotationSequence for g in a.GraphicObjectSequence
    }
    assert tracking == set(uids)  # the SEG segments' Tracking UIDs


def test_dcmtk_applies_the_gsps_to_a_source_image(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    path, labels, _ = _gsps(source, tmp_path)
    k = int(np.argmax((labels == 1).sum(axis=(1, 2))))  # the first nodule's largest slice
    image = tmp_path / "image.dcm"
    source[k].save_as(image, enforce_file_format=True)
    rendered = subprocess.run(
        [dcmtk_tool("dcmp2pgm"), "-v", "-p", str(path), str(image), str(tmp_path / "out.pgm")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    dump = rendered.stdout + rendered.stderr
    assert "Graphic Layer #1 [NODULE]" in dump
    assert '"Nodule 1 12 mm"' in dump
    (count,) = re.findall(r"Number of graphic objects: (\d+)", dump)
    assert int(count) == len(outlines(labels[k] == 1))
