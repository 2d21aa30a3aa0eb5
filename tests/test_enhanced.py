"""Enhanced multi-frame CT and MR sources (Enhanced and Legacy Converted Enhanced), end to end.

One phantom as single-frame slices and as one multi-frame instance through
the same pipeline: the same findings, and results that reference the source
frames (SEG per frame, SR regions and Image Library, GSPS annotations, the
key image) at the positions the single-frame results reference slices.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.lung_nodule import LungNodulePipeline
from dicomnode.pipelines.volume import load_series
from dicomnode.results.frames import SourceFrame
from dicomnode.synthetic.ct import write_chest_ct_study
from dicomnode.synthetic.multiframe import (
    ENHANCED_CT,
    ENHANCED_MR,
    LEGACY_CT,
    LEGACY_MR,
    enhanced,
    legacy_converted,
)
from dicomnode.testing.peers import dciodvfy
from tests.readers import nodule_findings

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
KINDS = {SEG_CLASS: "seg", SR_CLASS: "sr", SC_CLASS: "sc", PR_CLASS: "pr"}


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def position(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Image Position (Patient) of a single-frame image, or of *frame* (1-based) of a multi-frame one."""
    if frame is None:
        return np.array([float(v) for v in ds.ImagePositionPatient])
    return np.array([float(v) for v in SourceFrame(ds, frame).ImagePositionPatient])


# -- the synthetic sources ----------------------------------------------------------------


def test_multiframe_sources_are_valid_and_load_as_the_slices(tmp_path: Path) -> None:
    from dicomnode.synthetic.mr import mr_study_datasets

    ct = write_chest_ct_study(tmp_path / "ct", n_slices=12, rows=64, columns=64, nodules=())
    slices = [pydicom.dcmread(p) for p in ct.paths]
    mr = mr_study_datasets(3, roles=("T1c", "FLAIR"))[0]
    cases = [(slices, enhanced, ENHANCED_CT), (slices, legacy_converted, LEGACY_CT)]
    cases += [(mr[r], enhanced, ENHANCED_MR) for r in ("T1c", "FLAIR")]
    cases += [(mr["T1c"], legacy_converted, LEGACY_MR)]
    for n, (series, convert, sop_class) in enumerate(cases):
        path = save(convert(series), tmp_path / f"{n}.dcm")
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == sop_class
        assert int(ds.NumberOfFrames) == len(series)
        assert dciodvfy(path) == [], (sop_class, dciodvfy(path))
        single, multi = load_series(series), load_series([path])
        assert np.array_equal(multi.array, single.array)
        assert np.allclose(multi.affine, single.affine)
        # Slice k is frame frame_numbers[k], at slice k's position.
        for k, frame in enumerate(multi.frame_numbers):
            assert np.allclose(position(ds, frame), position(single.source[k]))


# -- the lung pipeline: single frames, Enhanced CT, Legacy Converted Enhanced CT -----------


def run_lung(pipeline: LungNodulePipeline, paths: list[Path], work: Path) -> dict[str, Path]:
    from tests.test_lung_nodule import run

    return {KINDS[r.sop_class_uid]: r.path for r in run(pipeline, paths, work)}


@pytest.fixture(scope="module")
def lung_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same 48-slice chest phantom through the shipped lung model three ways."""
    root = tmp_path_factory.mktemp("enhanced-ct")
    study = write_chest_ct_study(root / "ct", seed=11, n_slices=48, rows=192, columns=192)
    slices = [pydicom.dcmread(p) for p in study.paths]
    sources = {
        "single": list(study.paths),
        "enhanced": [save(enhanced(slices), root / "enhanced.dcm")],
        "legacy": [save(legacy_converted(slices), root / "legacy.dcm")],
    }
    pipeline = LungNodulePipeline("lung_nodule", PipelineConfig(device="cpu"))
    results = {name: run_lung(pipeline, paths, root / name) for name, paths in sources.items()}
    return {"study": study, "sources": sources, "results": results}


@pytest.mark.parametrize("kind", ["enhanced", "legacy"])
def test_lung_nodules_on_multiframe_ct_as_on_single_frames(
    lung_runs: dict[str, Any], kind: str
) -> None:
    single = nodule_findings(lung_runs["results"]["single"]["sr"])
    multi = nodule_findings(lung_runs["results"][kind]["sr"])
    assert len(multi) == len(single) >= 3
    for a, b in zip(single, multi, strict=True):
        assert np.allclose(a["center"], b["center"], atol=0.1), (a, b)
        assert b["long_axis"] == pytest.approx(a["long_axis"], rel=0.02)
        assert b["volume"] == pytest.approx(a["volume"], rel=0.02)
    for path in lung_runs["results"][kind].values():
        assert dciodvfy(path) == [], (path.name, dciodvfy(path))


@pytest.mark.parametrize("kind", ["enhanced", "legacy"])
def test_seg_frames_reference_the_source_frames_at_their_positions(
    lung_runs: dict[str, Any], kind: str
) -> None:
    (source_path,) = lung_runs["sources"][kind]
    source = pydicom.dcmread(source_path)
    path = lung_runs["results"][kind]["seg"]
    seg = pydicom.dcmread(path)
    assert [str(s.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence
            for s in r.ReferencedInstanceSequence] == [str(source.SOPInstanceUID)]  # fmt: skip
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = frame.DerivationImageSequence[0].SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(reference.ReferencedFrameNumber)
        seg_position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(seg_position, position(source, number))
    # The same voxels as the single-frame SEG, slice by slice.
    volume = load_series([source_path])
    multi = hd.seg.segread(path).get_pixels_by_source_frame(
        source_sop_instance_uid=str(source.SOPInstanceUID),
        source_frame_numbers=list(volume.frame_numbers),
        assert_missing_frames_are_empty=True,  # frames without a nodule are left out
        combine_segments=True,
        ignore_spatial_locations=True,
        skip_overlap_checks=True,
    )
    slices = load_series(lung_runs["sources"]["single"])
    single = hd.seg.segread(lung_runs["results"]["single"]["seg"]).get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in slices.source],
        combine_segments=True,
        ignore_spatial_locations=True,
        skip_overlap_checks=True,
    )
    assert multi.shape == single.shape and multi.any()
    assert np.array_equal(multi, single)


def _image_references(items: Any) -> list[Dataset]:
    """Every Referenced SOP Sequence item under the content items *items*, depth first."""
    found: list[Dataset] = []
    for item in items:
        found += list(item.get("ReferencedSOPSequence", []))
        found += _image_references(item.get("ContentSequence", []))
    return found


@pytest.mark.parametrize("kind", ["enhanced", "legacy"])
def test_sr_regions_and_image_library_point_at_the_nodules_frames(
    lung_runs: dict[str, Any], kind: str
) -> None:
    (source_path,) = lung_runs["sources"][kind]
    source = pydicom.dcmread(source_path)
    spacing = load_series([source_path]).spacing[0]
    sr = hd.sr.srread(lung_runs["results"][kind]["sr"])
    slices = {
        str(ds.SOPInstanceUID): ds for ds in load_series(lung_runs["sources"]["single"]).source
    }
    single = nodule_findings(lung_runs["results"]["single"]["sr"])
    groups = sr.content.get_planar_roi_measurement_groups()
    assert groups
    for group in groups:
        (reference,) = group.roi.ContentSequence[0].ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        (number,) = np.ravel([reference.ReferencedFrameNumber])
        # The key slice holds the nodule's centre (or is the nearest slice with the nodule on it).
        nodule = next(f for f in nodule_findings(lung_runs["results"][kind]["sr"])
                      if f["label"] == group.tracking_identifier)  # fmt: skip
        assert abs(position(source, int(number))[2] - nodule["center"][2]) <= spacing
        # ... the same slice the single-frame SR draws that nodule on.
        twin = next(f for f in single if f["label"] == group.tracking_identifier)
        assert np.allclose(position(source, int(number)), position(slices[twin["point"][0]]))
    # Image Library entries: the frames drawn on, each with its own position.
    library = next(
        item for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"
    )  # fmt: skip
    entries = _image_references(library.ContentSequence)
    assert entries and all(e.ReferencedSOPInstanceUID == source.SOPInstanceUID for e in entries)
    drawn = {int(n) for g in groups for n in np.ravel([g.roi.ContentSequence[0]
             .ReferencedSOPSequence[0].ReferencedFrameNumber])}  # fmt: skip
    assert {int(e.ReferencedFrameNumber) for e in entries} == drawn
    # The evidence lists the instance once.
    evidence = [
        str(i.ReferencedSOPInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    ]
    assert evidence.count(str(source.SOPInstanceUID)) == 1


@pytest.mark.parametrize("kind", ["enhanced", "legacy"])
def test_gsps_and_key_image_name_the_frames(lung_runs: dict[str, Any], kind: str) -> None:
    (source_path,) = lung_runs["sources"][kind]
    source = pydicom.dcmread(source_path)
    single = {
        str(ds.SOPInstanceUID): ds for ds in load_series(lung_runs["sources"]["single"]).source
    }

    def drawn_positions(gsps: Dataset, multi: bool) -> list[tuple[float, ...]]:
        found = []
        for annotation in gsps.GraphicAnnotationSequence:
            (reference,) = annotation.ReferencedImageSequence
            if multi:
                assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
                where = position(source, int(reference.ReferencedFrameNumber))
            else:
                where = position(single[str(reference.ReferencedSOPInstanceUID)])
            found.append(tuple(np.round(where, 3)))
        return sorted(found)

    gsps = pydicom.dcmread(lung_runs["results"][kind]["pr"])
    reference_gsps = pydicom.dcmread(lung_runs["results"]["single"]["pr"])
    assert drawn_positions(gsps, True) == drawn_positions(reference_gsps, False)
    sc = pydicom.dcmread(lung_runs["results"][kind]["sc"])
    reference_sc = pydicom.dcmread(lung_runs["results"]["single"]["sc"])
    (from_frame,) = sc.SourceImageSequence
    assert from_frame.ReferencedSOPInstanceUID == source.SOPInstanceUID
    key_slice = single[str(reference_sc.SourceImageSequence[0].ReferencedSOPInstanceUID)]
    assert np.allclose(position(source, int(from_frame.ReferencedFrameNumber)), position(key_slice))
    assert np.array_equal(sc.pixel_array, reference_sc.pixel_array)  # same slice, same circles


# -- end to end: storescu -> node -> Orthanc ------------------------------------------------


@pytest.mark.slow
def test_enhanced_ct_storescu_to_node_to_orthanc(
    make_settings: Callable[..., Any], start_node: Callable[..., Any], tmp_path: Path
) -> None:
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.conftest import NODE_AE
    from tests.test_flow import wait_for_jobs

    study = write_chest_ct_study(tmp_path / "ct", seed=11, n_slices=48, rows=192, columns=192)
    slices = [pydicom.dcmread(p) for p in study.paths]
    source = save(enhanced(slices), tmp_path / "enhanced" / "ct.dcm")
    # What the same phantom in single frames gives, without a node.
    pipeline = LungNodulePipeline("lung_nodule", PipelineConfig(device="cpu"))
    single = nodule_findings(run_lung(pipeline, list(study.paths), tmp_path / "single")["sr"])
    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            destinations=[orthanc.destination()],
            routes=[{"pipeline": "lung_nodule", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
            pipelines={"lung_nodule": {"device": "cpu"}},
        )
        node = start_node(settings, workers=1)
        pushed = storescu(
            [source],
            host="127.0.0.1",
            port=node.receiver.port,
            called_aet=NODE_AE,
            extra_args=["-R"],  # the classes of the files: DCMTK's default list lacks some
        )
        assert pushed.returncode == 0, pushed.stderr
        (job,) = wait_for_jobs(node, timeout=240)
        assert job["status"] == "done", job
        assert {o["status"] for o in job["outputs"]} == {"sent"}
        paths = {KINDS[o["sop_class_uid"]]: node.store.root / o["path"] for o in job["outputs"]}
        assert set(paths) == {"seg", "sr", "sc", "pr"}
        for path in paths.values():
            assert dciodvfy(path) == [], (path.name, dciodvfy(path))
        orthanc_study = orthanc.find_study(study.study_instance_uid)
        assert orthanc_study is not None
        modalities = sorted(
            s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(orthanc_study)
        )
        assert modalities == ["OT", "PR", "SEG", "SR"]
        hd.seg.segread(paths["seg"])
        found = nodule_findings(paths["sr"])
        for nodule in study.nodules:  # every nodule of 6 mm or more, measured
            best = min(found, key=lambda f: np.linalg.norm(f["center"] - nodule.center_mm))
            assert np.linalg.norm(best["center"] - np.array(nodule.center_mm)) <= 3.0
            assert best["long_axis"] == pytest.approx(nodule.diameter_mm, rel=0.2)
        # ... exactly as on the single frames.
        assert len(found) == len(single)
        for a, b in zip(single, found, strict=True):
            assert np.allclose(a["center"], b["center"], atol=0.1), (a, b)
            assert b["volume"] == pytest.approx(a["volume"], rel=0.02), (a, b)
            assert b["long_axis"] == pytest.approx(a["long_axis"], rel=0.02), (a, b)


@pytest.mark.slow
def test_enhanced_mr_storescu_to_node_to_orthanc(
    make_settings: Callable[..., Any], start_node: Callable[..., Any], tmp_path: Path
) -> None:
    """T1c and FLAIR as Enhanced MR, T1 as Legacy Converted Enhanced MR, T2 single frames."""
    from dicomnode.pipelines.brain_tumor.selection import brain_route
    from dicomnode.synthetic.mr import write_mr_study
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.test_brain_tumor import SEED, check_results
    from tests.test_flow import wait_for_jobs

    study = write_mr_study(tmp_path / "mr", seed=SEED)
    folders = {"T2": study.series["T2"][0].parent}
    for role, convert in (("T1c", enhanced), ("FLAIR", enhanced), ("T1", legacy_converted)):
        series = [pydicom.dcmread(p) for p in study.series[role]]
        uid = study.series_instance_uids[role]
        folders[role] = save(
            convert(series, series_instance_uid=uid), tmp_path / "multiframe" / role / "mf.dcm"
        ).parent
    t1c = next(folders["T1c"].iterdir())
    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            assembly={"quiet_seconds": 600, "early_quiet_seconds": 2.0},
            destinations=[orthanc.destination()],
            routes=[brain_route(["pacs"])],
            pipelines={"brain_tumor": {"device": "cpu"}},
        )
        node = start_node(settings, workers=1)
        start = time.monotonic()
        pushed = storescu(
            [folders[r] for r in ("T1", "T1c", "T2", "FLAIR")],
            host="127.0.0.1",
            port=node.receiver.port,
            called_aet="TESTNODE",
            # Propose the classes of the files: DCMTK's default list has no Legacy Converted MR.
            extra_args=["-R"],
        )
        assert pushed.returncode == 0, pushed.stderr
        (job,) = wait_for_jobs(node, timeout=240)
        assert job["status"] == "done", job["error"]
        assert time.monotonic() - start < 240
        kinds = {SEG_CLASS: "seg", SR_CLASS: "sr", PR_CLASS: "pr"}
        paths = {kinds[o["sop_class_uid"]]: node.store.root / o["path"] for o in job["outputs"]}
        assert set(paths) == {"seg", "sr", "pr"}
        for path in paths.values():
            assert dciodvfy(path) == [], (path.name, dciodvfy(path))
        orthanc_study = orthanc.find_study(study.study_instance_uid)
        assert orthanc_study is not None
        # Results on the enhanced T1c: its frames, by number.
        seg = pydicom.dcmread(paths["seg"])
        t1c_uid = pydicom.dcmread(t1c, stop_before_pixels=True).SOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence:
            (reference,) = frame.DerivationImageSequence[0].SourceImageSequence
            assert reference.ReferencedSOPInstanceUID == t1c_uid
            assert 1 <= int(reference.ReferencedFrameNumber) <= len(study.series["T1c"])
        scores = check_results(paths, study, t1c)
        print(scores)
        # As the single-frame brain test asks (tests/test_brain_tumor.py).
        assert scores["WT"] >= 0.9 and scores["TC"] >= 0.85 and scores["ET"] >= 0.8, scores
        for region in ("WT volume", "TC volume", "ET volume", "oedema volume"):
            assert abs(scores[region]) <= 0.10, scores


def test_body_part_of_an_enhanced_source_comes_from_its_frame_anatomy() -> None:
    """An enhanced image keeps its laterality in Frame Anatomy: U means none, R/L a side."""
    from dicomnode.results.common import copy_body_part

    for frame_laterality, expected in (("U", None), ("R", "R")):
        source = Dataset()
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
            "816094009",
            "SCT",
            "Chest",
        )
        anatomy = Dataset()
        anatomy.AnatomicRegionSequence = [region]
        anatomy.FrameLaterality = frame_laterality
        shared = Dataset()
        shared.FrameAnatomySequence = [anatomy]
        source.SharedFunctionalGroupsSequence = [shared]
        result = Dataset()
        copy_body_part(result, source)
        assert result.get("Laterality") == expected, frame_laterality
        assert result.BodyPartExamined == "CHEST"  # so a reader knows it is unpaired
        # A frame of it, as the key-image writer gets it, says the same.
        source.NumberOfFrames = 1
        frame = Dataset()
        copy_body_part(frame, SourceFrame(source, 1))
        assert frame.get("Laterality") == expected and frame.BodyPartExamined == "CHEST"
