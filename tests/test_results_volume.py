"""TID 1500 volume report: outlines with the segment's volume, centres, composites, empty result."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.results import AlgorithmInfo, SegmentSpec, SeriesSpec, write_segmentation
from dicomnode.results.outlines import outlines, segment_outlines
from dicomnode.results.sr import SegmentVolumeFinding, write_volume_report
from dicomnode.synthetic import ct_series
from dicomnode.testing.peers import dciodvfy, dcmtk_tool
from tests.readers import absent, region_volumes

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
    drawn = segment_outlines(labels)
    findings = [
        SegmentVolumeFinding(
            "Enhancing tumour", codes.SCT.Neoplasm, volumes[0], 1, 5, outline=drawn[1][5][0]
        ),
        SegmentVolumeFinding(
            "Oedema",
            codes.SCT.Edema,
            volumes[1],
            2,
            6,
            outline=drawn[2][6][0],
            center_mm=(62.0, 74.0, 12.0),
        ),
        SegmentVolumeFinding(
            "Whole tumour",
            codes.SCT.Neoplasm,
            sum(volumes),
            None,
            5,
            outline=outlines(labels[5] > 0)[0],
        ),
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
    found = region_volumes(path)
    assert list(found) == ["Enhancing tumour", "Oedema", "Whole tumour"]
    assert [found[k]["segment"] for k in found] == [1, 2, None]
    assert {found[k]["seg"] for k in ("Enhancing tumour", "Oedema")} == {seg.SOPInstanceUID}
    assert [found[k]["volume"] for k in found] == pytest.approx([3.2, 0.8, 4.0])
    assert found["Oedema"]["unit"] == "ml"
    # Each region is drawn on its key slice.
    assert [found[k]["outline"][0] for k in found] == [source[k].SOPInstanceUID for k in (5, 6, 5)]
    assert np.array_equal(found["Oedema"]["outline"][1], drawn[2][6][0])
    # The SR finding and its SEG segment share a tracking UID, so viewers link them.
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert found["Enhancing tumour"]["tracking_uid"] == back.get_segment_description(1).tracking_uid
    content = hd.sr.srread(path).content
    # The outline comes first (viewers draw a finding by its first region); only the
    # oedema has a centre.
    groups = content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        "Enhancing tumour",
        "Oedema",
        "Oedema",
        "Whole tumour",
    ]
    point = groups[2]
    assert np.allclose(np.asarray(point.roi.value)[0], (62.0, 74.0, 12.0))
    with pytest.raises(ValueError, match="needs its outline"):
        write_volume_report(
            source,
            [SegmentVolumeFinding("x", codes.SCT.Neoplasm, 1.0, 1)],
            segmentation=seg,
            algorithm=ALGORITHM,
            series=SeriesSpec(9902, "volumes"),
            uid_key="v1",
        )
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
    assert absent(save(sr, tmp_path / "empty.dcm"), codes.SCT.Neoplasm)
