"""Classification reports with per-eye groups and heat-map overlays: dciodvfy-clean, read back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.results import (
    AlgorithmInfo,
    ClassificationFinding,
    SeriesSpec,
    write_classification_report,
    write_overlay_image,
)
from dicomnode.synthetic.fundus import write_fundus_study
from dicomnode.testing.peers import dciodvfy, dcmtk_tool

ALGORITHM = AlgorithmInfo("test-grader", "2.0", "Not for diagnostic use")
REVIEW = Code("NEEDS_REVIEW", "99DICOMNODE", "Needs human review")
SEVERITY = Code("71491-5", "LN", "Right eye Diabetic retinopathy severity level")


@pytest.fixture(scope="module")
def photographs(tmp_path_factory: pytest.TempPathFactory) -> list[pydicom.Dataset]:
    truth = write_fundus_study(
        tmp_path_factory.mktemp("op"), {"R": 1, "L": 0}, seed=3, size=192, images_per_eye=2
    )
    return [pydicom.dcmread(i.path) for i in truth.images]


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == [], dciodvfy(path)
    return path


def test_overlay_is_an_rgb_secondary_capture_in_the_photographs_study(
    photographs: list[pydicom.Dataset], tmp_path: Path
) -> None:
    source = photographs[2]  # left eye
    picture = np.zeros((source.Rows, source.Columns, 3), np.uint8)
    picture[10:20, 30:40] = (255, 0, 0)
    sc = write_overlay_image(
        source, picture, algorithm=ALGORITHM, series=SeriesSpec(9903, "heat maps"), uid_key="k"
    )
    back = pydicom.dcmread(save(sc, tmp_path / "sc.dcm"))
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == source.PatientID
    assert back.Laterality == "L"
    assert np.array_equal(back.pixel_array, picture)
    with pytest.raises(ValueError, match="uint8"):
        write_overlay_image(
            source, picture[..., 0], algorithm=ALGORITHM, series=SeriesSpec(1, "x"), uid_key="k"
        )


def test_eye_group_covers_its_images_and_references_the_overlays(
    photographs: list[pydicom.Dataset], tmp_path: Path
) -> None:
    overlays = [
        write_overlay_image(
            ds,
            np.asarray(ds.pixel_array),
            algorithm=ALGORITHM,
            series=SeriesSpec(9903, "heat maps"),
            uid_key="job",
            instance_number=n,
        )
        for n, ds in enumerate(photographs[:2], start=1)
    ]
    eye = ClassificationFinding(
        source_index=1,
        source_indices=(0, 1),
        finding=codes.SCT.Absent,
        answer_concept=SEVERITY,
        probabilities={"none": 0.7, "mild": 0.3},
        label="Right eye",
        finding_type=Code("4855003", "SCT", "Diabetic retinopathy"),
        finding_site=codes.SCT.Eye,
        finding_site_laterality=codes.SCT.Right,
        evaluations=((REVIEW, codes.SCT.Yes),),
        measurements=(
            (Code("ENTROPY", "99DICOMNODE", "Predictive entropy"), 0.61, codes.UCUM.NoUnits),
        ),
        illustrations=tuple(overlays),
    )
    plain = ClassificationFinding(
        source_index=2, finding=codes.SCT.Normal, flags={"gradable": True}
    )
    sr = write_classification_report(
        photographs,
        [eye, plain],
        algorithm=ALGORITHM,
        series=SeriesSpec(9902, "grades"),
        uid_key="job",
        procedure=codes.DCM.OphthalmicPhotography,
        finding_type=codes.SCT.Retina,
    )
    path = save(sr, tmp_path / "sr.dcm")
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {o.SOPInstanceUID for o in overlays} <= evidence
    first, second = hd.sr.srread(path).content.get_planar_roi_measurement_groups()
    assert first.tracking_identifier == "Right eye" and second.tracking_identifier == "Image 2"
    assert first.finding_type == Code("4855003", "SCT", "Diabetic retinopathy")
    assert second.finding_type == codes.SCT.Retina
    assert first.finding_sites[0].laterality == codes.SCT.Right
    assert first.get_qualitative_evaluations(name=REVIEW)[0].value == codes.SCT.Yes
    # The answer is readable by its concept, apart from the finding type.
    assert first.get_qualitative_evaluations(name=SEVERITY)[0].value == codes.SCT.Absent
    # Drawn on the image it was graded on (the whole image here: the inscribed ellipse)...
    assert first.roi.graphic_type == hd.sr.GraphicTypeValues.ELLIPSE
    drawn_on = first.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert drawn_on == photographs[1].SOPInstanceUID
    rows, columns = photographs[1].Rows, photographs[1].Columns
    assert np.allclose(
        first.roi.value, [[0, rows / 2], [columns, rows / 2], [columns / 2, 0], [columns / 2, rows]]
    )
    # ...and about both photographs of the eye: both in the evidence.
    assert {photographs[0].SOPInstanceUID, photographs[1].SOPInstanceUID} <= evidence
    (entropy,) = first.get_measurements(name=Code("ENTROPY", "99DICOMNODE", "Predictive entropy"))
    assert entropy.value == pytest.approx(0.61)
    pictures = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in first[0].ContentSequence
        if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == "121200"
    ]
    assert pictures == [o.SOPInstanceUID for o in overlays]
    dump = subprocess.run(
        [dcmtk_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert "Illustration of ROI" in dump.stdout
