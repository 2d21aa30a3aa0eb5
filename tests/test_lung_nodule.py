"""lung_nodule pipeline: geometry, bundle settings, masks, the shipped model, a Model Zoo bundle, end to end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.config import PipelineConfig
from dicomnode.pipelines import JobContext, PipelineError, ResultObject, SeriesInput
from dicomnode.pipelines.bundle import Bundle
from dicomnode.pipelines.lung_nodule import LungNodulePipeline
from dicomnode.pipelines.lung_nodule.detector import detector_settings
from dicomnode.pipelines.lung_nodule.findings import grow_mask, measure
from dicomnode.pipelines.lung_nodule.preprocessing import boxes_to_lps, lps_to_boxes, network_input
from dicomnode.pipelines.volume import Volume, load_series
from dicomnode.results.codes import SCORE
from dicomnode.synthetic.ct import Nodule, nodule_labels, write_chest_ct_study
from dicomnode.testing.peers import dciodvfy
from tests.readers import absent, nodule_findings

ROOT = Path(__file__).resolve().parents[1]
MODEL_ZOO = ROOT / "tests" / "data" / "model_zoo" / "lung_nodule_ct_detection"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State


def run(
    pipeline: LungNodulePipeline, paths: list[Path], work: Path, **study: Any
) -> list[ResultObject]:
    """One job of *pipeline* on a single-series study, without a node."""
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    work.mkdir(parents=True, exist_ok=True)
    events: list[tuple[str, str]] = []
    context = JobContext(
        job_id=1,
        study_instance_uid=str(first.StudyInstanceUID),
        series=[SeriesInput(str(first.SeriesInstanceUID), "CT", "chest", {}, tuple(paths))],
        work_dir=work,
        event_sink=lambda stage, message, seconds, level: events.append((stage, message)),
    )
    results = pipeline.run(context)
    assert [stage for stage, _ in events if stage != "pipeline"] == [
        "select",
        "load",
        "preprocess",
        "infer",
        "postprocess",
        "priors",  # no priors service here: a baseline report that says so
        "write",
    ]
    return results


# -- geometry and settings ---------------------------------------------------------------


def test_network_input_is_the_ras_grid_and_boxes_map_back_to_lps() -> None:
    # An oblique-free but odd grid: rows run anterior, 0.8 x 0.6 mm pixels, 3 mm slices.
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, 3.0)
    affine[:3, 1] = (0.0, -0.8, 0.0)
    affine[:3, 2] = (0.6, 0.0, 0.0)
    affine[:3, 3] = (-20.0, 30.0, 100.0)
    array = np.full((10, 50, 60), -1000.0, np.float32)
    array[5, 20, 30] = 300.0  # one bright voxel
    volume = Volume(array, affine)
    image, grid = network_input(volume, (0.6, 0.8, 3.0), (-1024.0, 300.0))
    assert image.shape == (60, 50, 10)  # (x, y, z): same voxel size, RAS axes
    assert image.min() >= 0.0 and image.max() == pytest.approx(1.0)
    bright = np.unravel_index(np.argmax(image), image.shape)
    point = volume.index_to_lps(np.array([5, 20, 30]))[0]
    assert grid.index_to_lps(np.array(bright[::-1]))[0] == pytest.approx(point)
    # A truth box around that point comes back to the same LPS centre.
    boxes = lps_to_boxes(point[None], np.array([6.0]), grid.affine)
    centers, corners = boxes_to_lps(boxes, grid.affine)
    assert centers[0] == pytest.approx(point)
    assert corners[0, 3:] - corners[0, :3] == pytest.approx([6.0, 6.0, 6.0])


def test_settings_come_from_the_bundle_shipped_and_model_zoo() -> None:
    shipped = detector_settings(Bundle(ROOT / "models" / "lung_nodule_ct"))
    assert shipped.pixdim == (1.4, 1.4, 2.5)
    zoo = detector_settings(Bundle(MODEL_ZOO))
    assert zoo.pixdim == (0.703125, 0.703125, 1.25)
    assert zoo.window == (-1024.0, 300.0)
    assert zoo.patch_size == (512, 512, 192) and zoo.size_divisible == (16, 16, 8)
    assert (zoo.score_thresh, zoo.nms_thresh, zoo.detections_per_img) == (0.02, 0.22, 300)
    assert (zoo.topk_candidates_per_level, zoo.overlap, zoo.mode) == (1000, 0.25, "constant")
    for settings in (shipped, zoo):
        assert (settings.score_thresh, settings.nms_thresh, settings.detections_per_img) == (
            0.02,
            0.22,
            300,
        )


def test_mask_grown_from_the_ct_or_the_inscribed_ellipsoid() -> None:
    spacing = np.array([1.25, 0.7, 0.7])
    affine = np.diag([*spacing, 1.0])
    k, j, i = np.ogrid[:40, :60, :60]
    distance = np.sqrt(((k - 20) * 1.25) ** 2 + ((j - 30) * 0.7) ** 2 + ((i - 30) * 0.7) ** 2)
    hu = np.where(distance <= 5.0, 40.0, -850.0).astype(np.float32)
    hu[20, 30:, 30:33] = 40.0  # a vessel leaving the nodule: must not leak in
    volume = Volume(hu, affine)
    box = np.array([20 - 4.4, 30 - 7.5, 30 - 7.5]), np.array([20 + 4.4, 30 + 7.5, 30 + 7.5])
    index, mask, grown = grow_mask(hu, *box, threshold=-600.0)
    assert grown
    center, long_axis, volume_mm3 = measure(volume, index, mask)
    assert center == pytest.approx([20 * 1.25, 30 * 0.7, 30 * 0.7], abs=0.5)
    assert long_axis == pytest.approx(10.0, rel=0.1)
    assert volume_mm3 == pytest.approx(4 / 3 * np.pi * 125, rel=0.15)
    empty = np.full_like(hu, -850.0)
    _, fallback, grown = grow_mask(empty, *box, threshold=-600.0)
    assert not grown and 0 < fallback.sum() < np.prod(fallback.shape)


def test_chest_phantom_study_matches_its_truth(tmp_path: Path) -> None:
    study = write_chest_ct_study(
        tmp_path, n_slices=40, rows=128, columns=128, pixel_spacing=(2.8, 2.8), seed=3
    )
    again = write_chest_ct_study(
        tmp_path / "again", n_slices=40, rows=128, columns=128, pixel_spacing=(2.8, 2.8), seed=3
    )
    volume = load_series(study.paths)
    assert np.array_equal(volume.array, load_series(again.paths).array)  # seeded
    assert volume.shape == (40, 128, 128) and len(study.nodules) == 4
    for nodule in study.nodules:
        k, j, i = np.round(volume.lps_to_index(np.array(nodule.center_mm))[0]).astype(int)
        assert volume.array[k, j, i] == pytest.approx(nodule.hu, abs=80)  # solid (core) HU
    lung = (
        volume.lps_to_index(np.array([study.phantom.lung_offset_mm, 60.0, 50.0]))[0]
        .round()
        .astype(int)
    )
    assert volume.array[tuple(lung)] < -700  # aerated lung


# -- the shipped model on a synthetic chest CT -------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> LungNodulePipeline:
    return LungNodulePipeline("lung_nodule", PipelineConfig(device="cpu"))


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_chest_ct_study(tmp_path_factory.mktemp("chest"), seed=11)


def test_shipped_model_finds_the_nodules_with_measurements(
    shipped: LungNodulePipeline, chest: Any, tmp_path: Path
) -> None:
    results = run(shipped, chest.paths, tmp_path)
    by_class = {r.sop_class_uid: r.path for r in results}
    # Key image and GSPS: config defaults.
    assert set(by_class) == {SEG_CLASS, SR_CLASS, SC_CLASS, PR_CLASS}
    for result in results:
        assert dciodvfy(result.path) == [], dciodvfy(result.path)
    sr = pydicom.dcmread(by_class[SR_CLASS])
    assert sr.StudyInstanceUID == chest.study_instance_uid
    found = nodule_findings(by_class[SR_CLASS])
    seg = hd.seg.segread(by_class[SEG_CLASS])
    volume = load_series(chest.paths)
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in volume.source],
        combine_segments=True,
        ignore_spatial_locations=True,
        skip_overlap_checks=True,
    )
    centers = [f["center"] for f in found]
    truth_labels = nodule_labels(list(volume.source), chest.nodules)
    for n, nodule in enumerate(chest.nodules, start=1):
        if nodule.diameter_mm < 6.0:
            continue
        distances = [np.linalg.norm(c - np.array(nodule.center_mm)) for c in centers]
        best = int(np.argmin(distances))
        assert distances[best] <= 3.0, (nodule, centers)
        assert found[best]["long_axis"] == pytest.approx(nodule.diameter_mm, rel=0.2), (
            nodule,
            found[best],
        )
        truth = truth_labels == n
        segment = labels == found[best]["segment"]
        dice = 2 * np.sum(truth & segment) / (truth.sum() + segment.sum())
        assert dice > 0.5, (nodule, dice)
    assert len(found) <= len(chest.nodules) + 1  # at most one false positive


def test_no_nodule_is_reported_as_absent(shipped: LungNodulePipeline, tmp_path: Path) -> None:
    study = write_chest_ct_study(tmp_path / "ct", seed=12, nodules=(), n_slices=48)
    (result,) = run(shipped, study.paths, tmp_path / "out")
    assert result.sop_class_uid == SR_CLASS
    assert dciodvfy(result.path) == []
    assert absent(result.path, codes.SCT.Nodule)


def test_no_usable_ct_series_is_a_sentence(shipped: LungNodulePipeline, tmp_path: Path) -> None:
    context = JobContext(1, "1.2.3", [SeriesInput("1.2.3.4", "MR", "brain", {}, ())], tmp_path)
    with pytest.raises(PipelineError, match="no CT series with plane geometry"):
        shipped.run(context)


# -- a Model Zoo bundle through `bundle =` ----------------------------------------------


def test_model_zoo_bundle_runs_on_raw_dicom(tmp_path: Path) -> None:
    import torch

    bundle = tmp_path / "lung_nodule_ct_detection"
    shutil.copytree(MODEL_ZOO, bundle)
    network = Bundle(bundle).parsed("network_def")
    torch.manual_seed(0)
    state = network.state_dict()
    # Fresh RetinaNet heads score everything at the 0.01 prior, below the box selector's
    # 0.02: a zero bias makes the random network propose boxes, so every stage runs.
    state["classification_head.cls_logits.bias"].zero_()
    (bundle / "models").mkdir()
    torch.save({"model": state}, bundle / "models" / "model.pt")
    config = PipelineConfig(
        bundle=bundle,
        device="cpu",
        key_images=False,
        patch_size=[64, 64, 32],
        report_threshold=0.0,
        max_nodules=2,
    )
    pipeline = LungNodulePipeline("lung_nodule", config)
    assert pipeline.algorithm.name == "Lung nodule CT detection"
    assert pipeline.settings.pixdim == (0.703125, 0.703125, 1.25)
    study = write_chest_ct_study(
        tmp_path / "ct",
        n_slices=16,
        rows=40,
        columns=40,
        pixel_spacing=(1.5, 1.5),
        slice_thickness=2.0,
        nodules=[Nodule((-10.0, 0.0, 15.0), 10.0)],
    )
    # 85 x 85 x 25 voxels at the Zoo's spacing: four 64 x 64 x 32 windows.
    results = run(pipeline, study.paths, tmp_path / "out")
    assert {r.sop_class_uid for r in results} == {SEG_CLASS, SR_CLASS, PR_CLASS}
    for result in results:
        assert dciodvfy(result.path) == []
    # Random weights: two boxes with the top scores, each reported with a mask inside the CT.
    found = nodule_findings(next(r.path for r in results if r.sop_class_uid == SR_CLASS))
    assert len(found) == 2
    # A bundle without a calibration states the detector's score as a score.
    assert {f["score_concept"].value for f in found} == {SCORE.value}


# -- end to end: storescu → node → lung_nodule → Orthanc ------------------------------------


@pytest.mark.slow
def test_storescu_to_node_to_orthanc(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.conftest import NODE_AE
    from tests.test_flow import wait_for_jobs

    study = write_chest_ct_study(tmp_path / "ct", seed=21, n_slices=64)
    with Orthanc(tmp_path / "orthanc") as orthanc:
        study_id = [orthanc.upload(p)["ParentStudy"] for p in study.paths][0]  # the PACS has the CT
        settings = make_settings(
            destinations=[orthanc.destination()],
            routes=[{"pipeline": "lung_nodule", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
            pipelines={"lung_nodule": {"device": "cpu"}},
        )
        node = start_node(settings, workers=1)
        pushed = storescu(
            study.paths, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
        )
        assert pushed.returncode == 0, pushed.stderr
        (job,) = wait_for_jobs(node, timeout=240)
        assert job["status"] == "done", job
        assert [e["stage"] for e in job["events"] if e["stage"] in ("infer", "write")] == [
            "infer",
            "write",
        ]
        assert {o["status"] for o in job["outputs"]} == {"sent"}
        paths = {o["sop_class_uid"]: node.store.root / o["path"] for o in job["outputs"]}
        assert set(paths) == {SEG_CLASS, SR_CLASS, SC_CLASS, PR_CLASS}
        for path in paths.values():
            assert dciodvfy(path) == []
        modalities = sorted(
            s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(study_id)
        )
        assert modalities == ["CT", "OT", "PR", "SEG", "SR"]  # the results joined the source study
        found = nodule_findings(paths[SR_CLASS])
        for nodule in study.nodules:
            if nodule.diameter_mm >= 6.0:
                distance = min(
                    np.linalg.norm(f["center"] - np.array(nodule.center_mm)) for f in found
                )
                assert distance <= 3.0, (nodule, found)
