"""TID 1500 volume report: per-segment TID 1411 groups, composites, empty result; dciodvfy clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.results import AlgorithmInfo, SegmentSpec, SeriesSpec, write_segmentation
from dicomnode.results.sr import SegmentVolumeFinding, write_volume_report
from dicomnode.synthetic import ct_series
from dicomnode.testing.peers import dciodvfy, dcmtk_tool

ALGORITHM = AlgorithmInfo("test-volumes", "0.1", "Not for diagnostic use")


@pytest.fixture(scope="module")
def source() -> list[pydicom.Dataset]:
    return ct_series(12, 48, 48, pixel_spacing=(2.0, 2.0), slice_thickness=2.0, seed=3)


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    return path


def test_segment_volumes_reference_their_segments(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    labels = np.zeros((12, 48, 48), np.uint8)
    labels[4:8, 10:20, 10:20] = 1  # 400 voxels of 8 mm3: 3.2 mL
    labels[5:7, 30:35, 30:40] = 2  # 100 voxels: 0.8 mL
    segments = [
        SegmentSpec(name, codes.SCT.MorphologicallyAbnormalStructure, kind, tracking_id=name)
        for name, kind in (("Enhancing tumour", codes.SCT.Neoplasm), ("Oedema", codes.SCT.Edema))
    ]
    seg = write_segmentation(
        source, labels, segments, algorithm=ALGORITHM, series=SeriesSpec(9901, "seg"), uid_key="v1"
    )
    save(seg, tmp_path / "seg.dcm")
    volumes = [float((labels == n).sum() * 8.0 / 1000.0) for n in (1, 2)]
    findings = [
        SegmentVolumeFinding("Enhancing tumour", codes.SCT.Neoplasm, volumes[0], 1, key_slice=5),
        SegmentVolumeFinding("Oedema", codes.SCT.Edema, volumes[1], 2, key_slice=5),
        SegmentVolumeFinding("Whole tumour", codes.SCT.Neoplasm, sum(volumes), None, key_slice=5),
    ]
    sr = write_volume_report(
        source,
        findings,
        segmentation=seg,
        algorithm=ALGORITHM,
        series=SeriesSpec(9902, "volumes"),
        uid_key="v1",
    )
    path = save(sr, tmp_path / "sr.dcm")
    content = hd.sr.srread(path).content
    groups = content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[1], [2]]
    assert all(
        g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID for g in groups
    )
    measured = [g.get_measurements(name=codes.SCT.Volume)[0] for g in groups]
    assert [m.value for m in measured] == pytest.approx([3.2, 0.8])
    assert measured[0].unit.value == "ml"
    # The SR finding and its SEG segment share a tracking UID, so viewers link them.
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert groups[0].tracking_uid == back.get_segment_description(1).tracking_uid
    (whole,) = content.get_image_measurement_groups()
    assert whole.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(4.0)
    dump = subprocess.run(
        [dcmtk_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0 and "Whole tumour" in dump.stdout


def test_no_finding_is_an_explicit_absent_report(
    source: list[pydicom.Dataset], tmp_path: Path
) -> None:
    sr = write_volume_report(
        source,
        [],
        segmentation=None,
        algorithm=ALGORITHM,
        series=SeriesSpec(9902, "volumes"),
        uid_key="v2",
    )
    content = hd.sr.srread(save(sr, tmp_path / "empty.dcm")).content
    assert content.get_volumetric_roi_measurement_groups() == []
    (group,) = content.get_image_measurement_groups()
    evaluation = group.get_qualitative_evaluations(name=codes.SCT.Neoplasm)[0]
    assert evaluation.value == codes.SCT.Absent
