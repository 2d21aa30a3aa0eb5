"""Result writers: dciodvfy-clean, read back by highdicom, parsed by DCMTK dsrdump."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.results import (
    AlgorithmInfo,
    ClassificationFinding,
    KeyImageMark,
    NoduleFinding,
    SegmentSpec,
    SeriesSpec,
    write_classification_report,
    write_key_image,
    write_measurement_report,
    write_segmentation,
)
from dicomnode.results.outlines import key_outline, segment_outlines
from dicomnode.synthetic import Nodule, ct_series, nodule_labels
from dicomnode.testing.peers import dciodvfy, dcmtk_tool
from tests.readers import absent, nodule_findings

ALGORITHM = AlgorithmInfo("test-detector", "1.2.3", "Not for diagnostic use")
NODULES = [Nodule((-60.0, -20.0, 20.0), 10.0), Nodule((70.0, 10.0, 40.0), 8.0)]


@pytest.fixture(scope="module")
def source() -> list[pydicom.Dataset]:
    return ct_series(
        40, 96, 96, pixel_spacing=(4.0, 4.0), slice_thickness=1.5, seed=5, nodules=NODULES
    )


def label_map(source: list[pydicom.Dataset]) -> np.ndarray:
    return nodule_labels(source, NODULES)


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == [], dciodvfy(path)
    return path


def test_seg_and_sr_round_trip(source: list[pydicom.Dataset], tmp_path: Path) -> None:
    segments = [
        SegmentSpec(
            f"Nodule {n}",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Nodule,
            tracking_id=f"Nodule {n}",
            anatomic_region=codes.SCT.Lung,
        )
        for n in (1, 2)
    ]
    labels = label_map(source)
    seg = write_segmentation(
        source,
        labels,
        segments,
        algorithm=ALGORITHM,
        series=SeriesSpec(901, "AI nodules SEG"),
        uid_key="job-1",
    )
    seg_path = save(seg, tmp_path / "seg.dcm")
    # Nodule 1 is outlined on its key slice; nodule 2 has no outline (its ellipse stands in).
    key_slice, outline = key_outline(
        segment_outlines(labels)[1], round(NODULES[0].center_mm[2] / 1.5)
    )
    findings = [
        NoduleFinding(
            center_mm=n.center_mm,
            long_axis_mm=n.diameter_mm,
            volume_mm3=float((labels == i).sum() * 24.0),
            score=0.9 - 0.1 * i,
            key_slice=key_slice if i == 1 else round(n.center_mm[2] / 1.5),
            segment_number=i,
            label=f"Nodule {i}",
            outline=outline if i == 1 else None,
        )
        for i, n in enumerate(NODULES, start=1)
    ]
    sr = write_measurement_report(
        source,
        findings,
        segmentation=seg,
        algorithm=ALGORITHM,
        series=SeriesSpec(902, "AI nodules SR"),
        uid_key="job-1",
    )
    sr_path = save(sr, tmp_path / "sr.dcm")

    back = hd.seg.segread(seg_path)
    assert back.StudyInstanceUID == source[0].StudyInstanceUID
    assert back.PatientID == source[0].PatientID
    assert back.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert back.SeriesDescription == "AI nodules SEG (Not for diagnostic use)"
    assert back.number_of_segments == 2
    assert back.get_segment_description(1).segmented_property_type == codes.SCT.Nodule
    volume = back.get_volume(combine_segments=True).array  # label map on the source grid
    assert volume.shape[1:] == labels.shape[1:]
    assert back.NumberOfFrames == int(np.count_nonzero(labels.reshape(len(source), -1).any(axis=1)))
    mapped = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in source],
        combine_segments=True,
        ignore_spatial_locations=True,
        skip_overlap_checks=True,
    )
    assert np.array_equal(mapped, labels)

    report = hd.sr.srread(sr_path)
    assert report.StudyInstanceUID == source[0].StudyInstanceUID
    found = nodule_findings(sr_path)
    assert [f["label"] for f in found] == ["Nodule 1", "Nodule 2"]  # the segments' labels
    assert [f["segment"] for f in found] == [1, 2]
    assert {f["seg"] for f in found} == {seg.SOPInstanceUID}
    assert [f["volume"] for f in found] == pytest.approx([f.volume_mm3 for f in findings])
    assert [f["long_axis"] for f in found] == [10.0, 8.0]
    assert [f["score"] for f in found] == pytest.approx([0.8, 0.7])
    # Every group has coordinates; the first one of each finding is its key-slice centre.
    for finding, nodule in zip(found, findings, strict=True):
        image, (column, row) = finding["point"]
        assert image == source[nodule.key_slice].SOPInstanceUID
        assert np.allclose(finding["center"], nodule.center_mm, atol=0.01)
    # The outline, with the volume and the score, is on the key slice too.
    assert found[0]["outline"][0] == source[key_slice].SOPInstanceUID
    assert np.array_equal(found[0]["outline"][1], outline)
    assert "outline" not in found[1]
    # The SEG segment and the SR finding share a Tracking UID: viewers link them.
    uids = [str(g.tracking_uid) for g in report.content.get_planar_roi_measurement_groups()]
    assert uids[0] == str(back.get_segment_description(1).tracking_uid)
    library = [
        i for i in report.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"
    ]
    assert len(library) == 1  # TID 1600 Image Library
    dump = subprocess.run(
        [dcmtk_tool("dsrdump"), str(sr_path)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "Not for diagnostic use" in dump.stdout


def test_same_key_same_uids_no_nodule_report(source: list[pydicom.Dataset], tmp_path: Path) -> None:
    a = write_measurement_report(
        source,
        [],
        segmentation=None,
        algorithm=ALGORITHM,
        series=SeriesSpec(902, "AI SR"),
        uid_key="job-7",
    )
    b = write_measurement_report(
        source,
        [],
        segmentation=None,
        algorithm=ALGORITHM,
        series=SeriesSpec(902, "AI SR"),
        uid_key="job-7",
    )
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    save(a, tmp_path / "empty.dcm")
    assert absent(tmp_path / "empty.dcm", codes.SCT.Nodule)
    # Drawn as the whole middle image, so viewers show it; about every image: all in evidence.
    (group,) = hd.sr.srread(tmp_path / "empty.dcm").content.get_planar_roi_measurement_groups()
    drawn_on = group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert drawn_on == source[len(source) // 2].SOPInstanceUID
    evidence = {
        i.ReferencedSOPInstanceUID
        for series in a.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in source}
    (library,) = [
        i for i in a.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"
    ]
    listed = [
        entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library.ContentSequence
        for entry in group.ContentSequence
        if entry.ValueType == "IMAGE"
    ]
    assert listed == [drawn_on]  # the Image Library: the image the group is drawn on
    with pytest.raises(ValueError, match="no segment has any pixel"):
        write_segmentation(
            source,
            np.zeros((40, 96, 96), np.uint8),
            [SegmentSpec("x", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Nodule)],
            algorithm=ALGORITHM,
            series=SeriesSpec(1, "x"),
            uid_key="k",
        )


def test_key_image_and_classification_report(source: list[pydicom.Dataset], tmp_path: Path) -> None:
    image = source[13]
    sc = write_key_image(
        image,
        [KeyImageMark(row=40, column=30, radius=5)],
        algorithm=ALGORITHM,
        series=SeriesSpec(903, "AI key images"),
        uid_key="job-1",
    )
    sc_path = save(sc, tmp_path / "sc.dcm")
    back = pydicom.dcmread(sc_path)
    assert back.StudyInstanceUID == image.StudyInstanceUID and back.SamplesPerPixel == 3
    assert tuple(back.pixel_array[40, 25]) == KeyImageMark(0, 0, 0).colour  # on the ring
    # A CT slice is of no side: no (empty) Laterality; explicit VR like every result.
    assert "Laterality" not in back and back.BodyPartExamined == image.BodyPartExamined
    assert back.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    grades = [
        ClassificationFinding(
            source_index=0,
            finding=codes.SCT.Normal,
            probabilities={"none": 0.9, "mild": 0.1},
            flags={"needs review": False},
        )
    ]
    sr = write_classification_report(
        source[:1],
        grades,
        algorithm=ALGORITHM,
        series=SeriesSpec(904, "grade"),
        uid_key="job-2",
        procedure=codes.LN.CTUnspecifiedBodyRegion,
        finding_type=codes.SCT.Nodule,
    )
    save(sr, tmp_path / "grade.dcm")


def test_comparison_image_puts_a_prior_frame_beside_the_current_slice(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    from dicomnode.results import ComparisonPanel, write_comparison_image
    from dicomnode.results.frames import source_frames
    from dicomnode.results.sc import DIVIDER_COLUMNS, DIVIDER_GREY
    from dicomnode.synthetic.multiframe import enhanced

    # The prior as an enhanced multi-frame instance: its frame is named with its number.
    prior = source_frames(enhanced(source[10:16]))[3]
    current = source[13]
    hu = current.pixel_array * float(current.RescaleSlope) + float(current.RescaleIntercept)
    mark = KeyImageMark(row=40, column=30, radius=5)
    halves = (
        ComparisonPanel(prior, hu, (mark,), "PRIOR 2025-01-06"),
        ComparisonPanel(current, hu, (), "CURRENT 2026-01-06"),
    )
    sc = write_comparison_image(
        *halves,
        description="Nodule 1, growing: prior 2025-01-06 left, current 2026-01-06 right",
        algorithm=ALGORITHM,
        series=SeriesSpec(903, "AI key images"),
        uid_key="job-1",
        uid_role="sc-comparison-1",
        instance_number=2,
    )
    back = pydicom.dcmread(save(sc, tmp_path / "comparison.dcm"))
    columns = int(current.Columns)
    assert (back.Rows, back.Columns) == (current.Rows, 2 * columns + DIVIDER_COLUMNS)
    assert back.StudyInstanceUID == current.StudyInstanceUID
    assert [float(v) for v in back.PixelSpacing] == [float(v) for v in current.PixelSpacing]
    first, second = back.SourceImageSequence
    assert first.ReferencedSOPInstanceUID == prior.SOPInstanceUID
    assert first.ReferencedFrameNumber == 4
    assert second.ReferencedSOPInstanceUID == current.SOPInstanceUID
    assert "ReferencedFrameNumber" not in second
    assert back.DerivationDescription.startswith("Nodule 1, growing: prior")
    pixels = back.pixel_array
    assert (pixels[:, columns : columns + DIVIDER_COLUMNS] == DIVIDER_GREY).all()
    # The circle on the prior half only; one window, so the same HU is the same grey.
    assert tuple(pixels[40, 25]) == mark.colour
    assert tuple(pixels[40, columns + DIVIDER_COLUMNS + 25]) != mark.colour
    assert (pixels[60:, :columns] == pixels[60:, columns + DIVIDER_COLUMNS :]).all()
    # Each label burnt in white on black at its half's top left.
    for left in (0, columns + DIVIDER_COLUMNS):
        corner = pixels[:9, left : left + 40]
        assert (corner == 255).all(axis=2).any() and (corner == 0).all(axis=2).any()
    # A re-run gives the same instance; halves of two sizes are refused.
    assert (
        write_comparison_image(
            *halves,
            description="d",
            algorithm=ALGORITHM,
            series=SeriesSpec(903, "AI key images"),
            uid_key="job-1",
            uid_role="sc-comparison-1",
            instance_number=2,
        ).SOPInstanceUID
        == back.SOPInstanceUID
    )
    with pytest.raises(ValueError, match="differ in size"):
        write_comparison_image(
            halves[0],
            ComparisonPanel(current, hu[:-1], ()),
            description="d",
            algorithm=ALGORITHM,
            series=SeriesSpec(903, "AI key images"),
            uid_key="job-1",
            uid_role="sc-comparison-1",
            instance_number=2,
        )
