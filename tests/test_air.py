"""IHE AI Results (AIR): one test per requirement of docs/air.md, on the pipelines' own output.

The three pipelines run (shipped bundles, CPU) on synthetic studies: a chest
CT with nodules (the lung end-to-end test's), one without, a head MR with a
tumour (the brain end-to-end test's) and a pair of fundus photographs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.results.codes import CERTAINTY, PRIVATE_SCHEME, SCORE, STANDARD_SCHEMES
from dicomnode.testing.peers import dciodvfy, dciodvfy_warnings
from tests.readers import absent, nodule_findings, region_volumes
from tests.runs import run_pipeline

pytestmark = pytest.mark.slow

SEG, SR, SC, PR = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.11.1",
)


@dataclass
class Run:
    name: str
    sources: list[Path]
    results: dict[str, Path]  # SOP Class UID -> the (first) result of that class
    all_results: list[Path]

    def source(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.sources[0], stop_before_pixels=True)

    @property
    def source_uids(self) -> set[str]:
        return {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.sources
        }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    from dicomnode.synthetic.ct import write_chest_ct_study
    from dicomnode.synthetic.fundus import write_fundus_study
    from dicomnode.synthetic.mr import write_mr_study

    root = tmp_path_factory.mktemp("air")
    mr = write_mr_study(root / "mr", seed=21)
    studies = {
        "lung": ("lung_nodule", write_chest_ct_study(root / "ct", seed=21, n_slices=64).paths),
        "empty": (
            "lung_nodule",
            write_chest_ct_study(root / "empty", seed=12, nodules=(), n_slices=48).paths,
        ),
        "brain": ("brain_tumor", sorted(p for ps in mr.series.values() for p in ps)),
        "fundus": (
            "fundus_dr",
            [i.path for i in write_fundus_study(root / "op", {"R": 3, "L": 0}, seed=21).images],
        ),
    }
    found = {}
    for job, (name, (pipeline, paths)) in enumerate(studies.items(), start=1):
        results = run_pipeline(pipeline, paths, root / "work" / name, job)
        by_class: dict[str, Path] = {}
        for path in results:
            by_class.setdefault(
                str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID), path
            )
        found[name] = Run(name, list(paths), by_class, results)
    return found


def every(runs: dict[str, Run]) -> list[tuple[Run, pydicom.Dataset]]:
    return [(run, pydicom.dcmread(p)) for run in runs.values() for p in run.all_results]


def groups_of(path: Path) -> list[pydicom.Dataset]:
    sr = pydicom.dcmread(path)
    container = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    return list(container.ContentSequence)


def items(group: pydicom.Dataset, value_type: str | None = None) -> list[pydicom.Dataset]:
    return [i for i in group.ContentSequence if value_type is None or i.ValueType == value_type]


def test_air_1_results_join_the_source_study(runs: dict[str, Run]) -> None:
    for run, ds in every(runs):
        source = run.source()
        for keyword in (
            "StudyInstanceUID",
            "PatientID",
            "PatientName",
            "StudyDate",
            "AccessionNumber",
        ):
            assert ds.get(keyword) == source.get(keyword), (run.name, ds.Modality, keyword)
        assert ds.SeriesInstanceUID not in {
            pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in run.sources
        }
    for run in runs.values():  # one series per kind of result (heat maps share theirs)
        series: dict[str, set[str]] = {}
        for path in run.all_results:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series.setdefault(str(ds.SOPClassUID), set()).add(str(ds.SeriesInstanceUID))
        assert all(len(uids) == 1 for uids in series.values())
        assert len({uid for uids in series.values() for uid in uids}) == len(series)


def test_air_2_the_creator_is_identified(runs: dict[str, Run]) -> None:
    for run, ds in every(runs):
        assert ds.Manufacturer == "dicomnode", run.name
        if ds.SOPClassUID != SR:
            assert ds.get("ManufacturerModelName") and ds.get("SoftwareVersions"), (
                run.name,
                ds.Modality,
            )
    sr = pydicom.dcmread(runs["lung"].results[SR])
    context = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    assert context["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert context["Device Observer Manufacturer"].TextValue == "dicomnode"
    assert context["Device Observer Model Name"].TextValue.startswith(
        context["Device Observer Name"].TextValue
    )


def test_air_3_every_finding_names_its_algorithm(runs: dict[str, Run]) -> None:
    for run in runs.values():
        for group in groups_of(run.results[SR]):
            names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in items(group)]
            assert "Algorithm Name" in names and "Algorithm Version" in names, run.name
    for run in (runs["lung"], runs["brain"]):
        seg = hd.seg.segread(run.results[SEG])
        for number in seg.segment_numbers:
            description = seg.get_segment_description(number)
            assert description.SegmentAlgorithmType == "AUTOMATIC"
            algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
            assert algorithm.AlgorithmName and algorithm.AlgorithmVersion
            assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


def test_air_4_sr_is_a_tid_1500_measurement_report(runs: dict[str, Run]) -> None:
    for run in runs.values():
        sr = pydicom.dcmread(run.results[SR])
        assert sr.SOPClassUID == SR  # Comprehensive 3D SR
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
        names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in sr.ContentSequence]
        assert "Procedure reported" in names and "Language of Content Item and Descendants" in names


def _references(path: Path) -> set[str]:
    found: set[str] = set()

    def walk(seq: list[pydicom.Dataset]) -> None:
        for item in seq:
            for ref in item.get("ReferencedSOPSequence", []):
                found.add(str(ref.ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(groups_of(path))
    return found


def test_air_5_image_library_lists_the_referenced_images(runs: dict[str, Run]) -> None:
    for run in runs.values():
        sr = pydicom.dcmread(run.results[SR])
        (library,) = [
            i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"
        ]
        listed = {
            str(entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for group in library.ContentSequence
            for entry in group.ContentSequence
            if entry.ValueType == "IMAGE"
        }
        drawn_on = _references(run.results[SR]) & run.source_uids
        assert drawn_on <= listed <= run.source_uids, run.name
        if run.name == "fundus":
            assert listed == run.source_uids  # each eye's photographs, all graded


def test_air_6_every_reference_is_in_the_evidence(runs: dict[str, Run]) -> None:
    for run in runs.values():
        sr = pydicom.dcmread(run.results[SR])
        evidence = {
            str(i.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for i in series.ReferencedSOPSequence
        }
        assert _references(run.results[SR]) <= evidence, run.name
        if run.name == "empty":  # "nothing found" is about every source image
            assert run.source_uids <= evidence


def test_air_7_results_are_unverified_and_marked(runs: dict[str, Run]) -> None:
    for run, ds in every(runs):
        assert "Not for diagnostic use" in ds.SeriesDescription, (run.name, ds.Modality)
        if ds.SOPClassUID == SR:
            assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
                "COMPLETE",
                "UNVERIFIED",
                "PRELIMINARY",
            )


def test_air_8_a_finding_has_one_tracking_identity(runs: dict[str, Run]) -> None:
    for run in (runs["lung"], runs["brain"]):
        seg = pydicom.dcmread(run.results[SEG])
        by_uid = {}
        for group in groups_of(run.results[SR]):
            uid = next(str(i.UID) for i in items(group, "UIDREF"))
            text = next(
                str(i.TextValue)
                for i in items(group, "TEXT")
                if i.ConceptNameCodeSequence[0].CodeValue == "112039"
            )
            assert by_uid.setdefault(uid, text) == text  # one identifier per UID
        for segment in seg.SegmentSequence:
            assert by_uid[str(segment.TrackingUID)] == segment.SegmentLabel == segment.TrackingID
        gsps = pydicom.dcmread(run.results[PR])
        drawn = {
            str(g.TrackingUID)
            for a in gsps.GraphicAnnotationSequence
            for g in a.GraphicObjectSequence
        }
        assert drawn == {str(s.TrackingUID) for s in seg.SegmentSequence}


def test_air_9_findings_are_coded_and_negatives_stated(runs: dict[str, Run]) -> None:
    assert absent(runs["empty"].results[SR], codes.SCT.Nodule)
    for run in runs.values():
        for group in groups_of(run.results[SR]):
            for item in items(group, "CODE"):
                for code in (item.ConceptNameCodeSequence[0], item.ConceptCodeSequence[0]):
                    scheme = str(code.CodingSchemeDesignator)
                    assert scheme in STANDARD_SCHEMES or scheme == PRIVATE_SCHEME
            types = [
                i.ConceptCodeSequence[0]
                for i in items(group, "CODE")
                if i.ConceptNameCodeSequence[0].CodeValue == "121071"  # Finding
            ]
            if run.name != "empty":
                assert types and types[0].CodingSchemeDesignator == "SCT", run.name


def test_air_10_measurements_have_units_and_sources(runs: dict[str, Run]) -> None:
    for run in runs.values():
        for group in groups_of(run.results[SR]):
            for number in items(group, "NUM"):
                unit = number.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
                assert unit.CodingSchemeDesignator == "UCUM", run.name
    seg_uid = str(
        pydicom.dcmread(runs["lung"].results[SEG], stop_before_pixels=True).SOPInstanceUID
    )
    nodules = nodule_findings(runs["lung"].results[SR])
    assert nodules and all(
        n["seg"] == seg_uid and n["segment"] == k for k, n in enumerate(nodules, 1)
    )
    regions = region_volumes(runs["brain"].results[SR])
    assert [r["segment"] for r in regions.values()] == [
        *range(1, len(regions)),
        None,
    ]  # whole: none


def test_air_11_locations_are_points(runs: dict[str, Run]) -> None:
    for nodule in nodule_findings(runs["lung"].results[SR]):
        assert nodule["point"][0] in runs["lung"].source_uids and len(nodule["center"]) == 3
    content = hd.sr.srread(runs["brain"].results[SR]).content
    points = [
        g
        for g in content.get_planar_roi_measurement_groups()
        if isinstance(g.roi, hd.sr.ImageRegion3D)
    ]
    assert {g.tracking_identifier for g in points} == set(region_volumes(runs["brain"].results[SR]))


def test_air_12_regions_are_on_their_images(runs: dict[str, Run]) -> None:
    for run in runs.values():
        sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in run.sources)}
        for group in groups_of(run.results[SR]):
            regions = [*items(group, "SCOORD"), *items(group, "SCOORD3D")]
            assert regions, (run.name, "a group without coordinates")
            for scoord in items(group, "SCOORD"):
                image = sources[
                    str(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                ]
                points = np.asarray(scoord.GraphicData, dtype=float).reshape(-1, 2)
                assert (points >= 0).all() and (points[:, 0] <= image.Columns).all()
                assert (points[:, 1] <= image.Rows).all()

    # Each outline lies on the SEG segment it outlines (the whole tumour: on all of them), on
    # its key slice: for a nodule the image of its centre point.
    def seg_labels(path: Path) -> tuple[list[str], np.ndarray]:
        seg = hd.seg.segread(path)
        uids = [
            str(i.ReferencedSOPInstanceUID)
            for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        ]
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            combine_segments=True,
            ignore_spatial_locations=True,
            skip_overlap_checks=True,
        )
        return uids, labels

    def on_its_segment(
        outline: tuple[str, np.ndarray], segment: int | None, seg: tuple[list[str], np.ndarray]
    ) -> None:
        (image, points), (uids, labels) = outline, seg
        k = uids.index(image)
        mask = labels[k] > 0 if segment is None else labels[k] == segment
        inside = np.argwhere(mask)[:, ::-1] + 0.5
        for point in points:
            assert np.linalg.norm(inside - point, axis=1).min() < 0.8

    lung_seg = seg_labels(runs["lung"].results[SEG])
    nodules = nodule_findings(runs["lung"].results[SR])
    assert nodules and all("outline" in n for n in nodules)
    for nodule in nodules:
        assert nodule["outline"][0] == nodule["point"][0]
        on_its_segment(nodule["outline"], nodule["segment"], lung_seg)
    brain_seg = seg_labels(runs["brain"].results[SEG])
    regions = region_volumes(runs["brain"].results[SR])
    assert regions
    for region in regions.values():
        on_its_segment(region["outline"], region["segment"], brain_seg)


def test_air_13_segmentation_describes_each_segment(runs: dict[str, Run]) -> None:
    for run in (runs["lung"], runs["brain"]):
        ds = pydicom.dcmread(run.results[SEG], stop_before_pixels=True)
        assert ds.SegmentationType == "BINARY"
        referenced = {
            str(i.ReferencedSOPInstanceUID)
            for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced <= run.source_uids
        for segment in ds.SegmentSequence:
            assert segment.SegmentLabel and len(segment.RecommendedDisplayCIELabValue) == 3
            for key in (
                "SegmentedPropertyCategoryCodeSequence",
                "SegmentedPropertyTypeCodeSequence",
                "AnatomicRegionSequence",
            ):
                assert segment[key][0].CodingSchemeDesignator == "SCT", key


def test_air_14_key_images_are_identified(runs: dict[str, Run]) -> None:
    for run in (runs["lung"], runs["fundus"]):
        for path in run.all_results:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPClassUID == SC:
                (source,) = ds.SourceImageSequence
                assert str(source.ReferencedSOPInstanceUID) in run.source_uids
    # The key image of a nodule is the image of its first region, in the Image Library.
    for nodule in nodule_findings(runs["lung"].results[SR]):
        assert nodule["point"][0] in _references(runs["lung"].results[SR])


def test_air_16_confidence_is_a_calibrated_probability(runs: dict[str, Run]) -> None:
    from dicomnode.pipelines.bundle import Bundle

    root = Path(__file__).resolve().parents[1] / "models"
    lung = Bundle(root / "lung_nodule_ct").raw("score_calibration", None)
    concept = CERTAINTY if lung is not None else SCORE  # as the bundle is calibrated or not
    for nodule in nodule_findings(runs["lung"].results[SR]):
        assert nodule["score_concept"].value == concept.value
    fundus_calibrated = Bundle(root / "fundus_dr").raw("probability_calibration", None) is not None
    for group in hd.sr.srread(
        runs["fundus"].results[SR]
    ).content.get_planar_roi_measurement_groups():
        certainty = group.get_measurements(name=CERTAINTY)
        assert bool(certainty) == fundus_calibrated


def test_air_17_private_codes_are_declared(runs: dict[str, Run]) -> None:
    def designators(item: pydicom.Dataset) -> set[str]:
        found = set()
        for element in item:
            if element.VR == "SQ":
                for child in element.value:
                    found |= designators(child)
            elif element.keyword.endswith("CodingSchemeDesignator"):
                found.add(str(element.value))
        return found

    for run, ds in every(runs):
        declared = {
            str(i.CodingSchemeDesignator) for i in ds.get("CodingSchemeIdentificationSequence", [])
        }
        assert designators(ds) - STANDARD_SCHEMES <= declared, (run.name, ds.Modality)


def test_air_18_results_are_valid_iods(runs: dict[str, Run]) -> None:
    for run in runs.values():
        for path in run.all_results:
            assert dciodvfy(path) == [], (run.name, path.name)
            assert dciodvfy_warnings(path) == [], (run.name, path.name)
