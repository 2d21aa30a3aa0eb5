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
from dicomnode.synthetic import Nodule, ct_series, nodule_labels
from dicomnode.testing.peers import dciodvfy, dcmtk_tool

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
            tracking_id=f"Finding {n}",
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
    findings = [
        NoduleFinding(
            center_mm=n.center_mm,
            long_axis_mm=n.diameter_mm,
            volume_mm3=float((labels == i).sum() * 24.0),
            score=0.9 - 0.1 * i,
            key_slice=round(n.center_mm[2] / 1.5),
            segment_number=i,
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
    content = report.content
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    assert groups[0].referenced_segment.referenced_segment_numbers == [1]
    assert groups[0].referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert groups[0].get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(
        findings[0].volume_mm3
    )
    planar = content.get_planar_roi_measurement_groups()
    long_axes = [g.get_measurements(name=codes.SCT.LongAxis) for g in planar]
    assert [m[0].value for m in long_axes if m] == [10.0, 8.0]
    assert groups[0].tracking_uid == planar[0].tracking_uid
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
    content = hd.sr.srread(tmp_path / "empty.dcm").content
    assert content.get_planar_roi_measurement_groups() == []
    (group,) = content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=codes.SCT.Nodule)[0].value == codes.SCT.Absent
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
    assert tuple(back.pixel_array[40, 25]) == (255, 64, 64)  # on the ring
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
