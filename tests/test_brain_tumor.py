"""Brain tumour pipeline: selection errors, Frame of Reference, Model Zoo bundle, end to end.

The study is a synthetic head MR (dicomnode.synthetic.mr) with a seed none of
the training or validation phantoms of train/brain uses.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.config import PipelineConfig
from dicomnode.pipelines.base import JobContext, PipelineError, SeriesInput
from dicomnode.pipelines.brain_tumor import BrainTumorPipeline
from dicomnode.pipelines.brain_tumor.findings import (
    ENHANCING,
    NECROSIS,
    OEDEMA,
    core_rim_to_oedema,
    drop_regions_without_core,
    exclusive_labels,
    labels_from_probabilities,
    region_targets,
)
from dicomnode.pipelines.brain_tumor.preprocessing import normalise_nonzero, normalise_robust
from dicomnode.pipelines.brain_tumor.selection import brain_route
from dicomnode.pipelines.volume import Volume
from dicomnode.store import parse_header_from_dataset
from dicomnode.synthetic.mr import (
    ROLES,
    Geometry,
    HeadPhantom,
    MRStudyTruth,
    mr_study_datasets,
    write_mr_study,
)
from dicomnode.testing.peers import dciodvfy
from tests.readers import absent, region_volumes

SEED = 21  # held out: train/brain uses seeds 1000+ (training) and 5000+ (validation)
MODEL_ZOO = Path(__file__).parent / "data" / "model_zoo" / "brats_mri_segmentation"
SHIPPED_BUNDLE = Path(__file__).parents[1] / "models" / "brain_tumor_mri"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> MRStudyTruth:
    return write_mr_study(tmp_path_factory.mktemp("mr"), seed=SEED)


@pytest.fixture(scope="module")
def pipeline() -> BrainTumorPipeline:
    return BrainTumorPipeline("brain_tumor", PipelineConfig(device="cpu"))


def series_input(paths: list[Path], **override: Any) -> SeriesInput:
    """What a worker hands the pipeline: the stored routing attributes of the series."""
    header = parse_header_from_dataset(pydicom.dcmread(paths[0], stop_before_pixels=True))
    attributes = {**header.series, **override}
    return SeriesInput(
        override.get("SeriesInstanceUID", header.series_instance_uid),
        "MR",
        attributes.get("SeriesDescription"),
        attributes,
        tuple(paths),
    )


def context(series: list[SeriesInput], work: Path, events: list[tuple[str, str]]) -> JobContext:
    work.mkdir(parents=True, exist_ok=True)
    return JobContext(
        job_id=1,
        study_instance_uid="1.2.3",
        series=series,
        work_dir=work,
        event_sink=lambda stage, message, _duration, _level: events.append((stage, message)),
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def seg_labels(path: Path, source: list[Path]) -> np.ndarray:
    """The SEG as an exclusive label map (1 ET, 2 necrosis, 3 oedema) on the T1c slices.

    *source* is the T1c series: its slices, or one enhanced multi-frame instance
    (whose frames are then read in slice order).
    """
    from dicomnode.pipelines.volume import load_series

    seg = hd.seg.segread(path)
    by_name = {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}
    volume = load_series(source)
    if volume.frame_numbers:
        stack = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=str(volume.source[0].SOPInstanceUID),
            source_frame_numbers=list(volume.frame_numbers),
            assert_missing_frames_are_empty=True,  # frames without tumour are left out
            ignore_spatial_locations=True,
            skip_overlap_checks=True,
        )
    else:
        stack = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in volume.source],
            ignore_spatial_locations=True,
            skip_overlap_checks=True,
        )
    labels = np.zeros(stack.shape[:3], np.uint8)
    for label, name in (
        (OEDEMA, "Oedema"),
        (NECROSIS, "Necrotic core"),
        (ENHANCING, "Enhancing tumour"),
    ):
        if name in by_name:
            labels[stack[..., by_name[name] - 1] > 0] = label
    return labels


def test_label_conversions_round_trip() -> None:
    labels = np.array([0, 1, 2, 3, 1], np.uint8)
    regions = region_targets(labels)
    assert regions.tolist() == [[0, 1, 1, 0, 1], [0, 1, 1, 1, 1], [0, 1, 0, 0, 1]]
    assert exclusive_labels(regions).tolist() == labels.tolist()


def test_oedema_only_regions_are_dropped() -> None:
    labels = np.zeros((1, 1, 9), np.uint8)
    labels[0, 0, :4] = [OEDEMA, ENHANCING, NECROSIS, OEDEMA]  # a tumour with its oedema
    labels[0, 0, 6:] = OEDEMA  # oedema alone, apart
    kept = drop_regions_without_core(labels)
    assert kept[0, 0].tolist() == [3, 1, 2, 3, 0, 0, 0, 0, 0]


def test_necrosis_wrapped_round_the_rim_becomes_oedema() -> None:
    """The TC-not-ET layer outside the rim goes; a core inside it and a lone necrosis stay."""
    z, y, x = np.mgrid[:40, :40, :60]
    r = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    labels = np.zeros(r.shape, np.uint8)
    labels[r <= 11] = OEDEMA
    labels[r <= 8] = NECROSIS  # the layer where TC reaches a voxel past ET
    labels[r <= 7] = ENHANCING
    labels[r <= 4] = NECROSIS  # the enclosed necrotic core
    lone = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 48) ** 2) <= 4
    labels[lone] = NECROSIS  # necrosis with no enhancing tumour near it
    layer = (r > 7) & (r <= 8)
    trimmed = core_rim_to_oedema(labels)
    assert np.all(trimmed[layer] == OEDEMA)
    assert np.all(trimmed[r <= 4] == NECROSIS)
    assert np.all(trimmed[lone] == NECROSIS)
    assert np.array_equal(trimmed > 0, labels > 0)  # the whole tumour is unchanged
    changed = trimmed != labels
    assert np.array_equal(changed, layer)
    # Through the label rule: TC reaching past ET gives the layer only without trimming.
    probabilities = np.stack([(r <= 8) | lone, labels > 0, (r <= 7) & (r > 4)]).astype(np.float32)
    for trim, expected in ((False, NECROSIS), (True, OEDEMA)):
        out = labels_from_probabilities(
            probabilities,
            (0.5, 0.5, 0.5),
            voxel_mm3=1.0,
            min_component_ml=0.0,
            require_core=True,
            trim_core_rim=trim,
        )
        assert np.all(out[layer] == expected)
        assert np.all(out[r <= 4] == NECROSIS)


def test_phantom_options_bound_the_tumour() -> None:
    """Training and evaluation ask for thin oedema; the defaults stay the test studies'."""
    fields = ("center_mm", "radius_mm", "core_fraction", "oedema_mm")
    default = HeadPhantom.random(SEED).tumour
    explicit = HeadPhantom.random(SEED, radius_mm=(8.0, 20.0), oedema_mm=(4.0, 14.0)).tumour
    assert default is not None and explicit is not None
    assert [getattr(default, f) for f in fields] == [getattr(explicit, f) for f in fields]
    for seed in range(8):
        thin = HeadPhantom.random(seed, radius_mm=(6.0, 14.0), oedema_mm=(4.0, 7.0)).tumour
        assert thin is not None
        assert 6.0 <= thin.radius_mm <= 14.0 and 4.0 <= thin.oedema_mm <= 7.0
    _, phantom, _, _ = mr_study_datasets(SEED, phantom_options={"oedema_mm": (30.0, 31.0)})
    assert phantom.tumour is not None and phantom.tumour.oedema_mm >= 30.0


def test_training_grids_include_uninterpolated_t1c() -> None:
    """Some training T1c series are 1 mm isotropic: the network then sees them uninterpolated.

    The demo and test studies' T1c is 1 mm isotropic, so the pipeline's 1 mm grid
    is its own grid; before ``--native-share`` no training T1c was.
    """
    from dicomnode.pipelines.brain_tumor.preprocessing import reference_grid
    from dicomnode.pipelines.volume import Volume
    from dicomnode.synthetic.mr import random_geometries

    def grids(seed: int, share: float) -> dict[str, Geometry]:
        return random_geometries(np.random.default_rng(seed), share)

    # The default draws as before, the T1 spacing first (earlier phases stay reproducible) ...
    first_draw = float(np.random.default_rng(3).uniform(0.8, 1.3))
    assert grids(3, 0.0)["T1"].pixel_spacing == (first_draw, first_draw)
    assert grids(3, 0.5)["T1"].pixel_spacing != (first_draw, first_draw)
    assert all(grids(s, 0.0)["T1c"].pixel_spacing != (1.0, 1.0) for s in range(20))
    # ... and a share of 1 makes every T1c the pipeline's own 1 mm grid.
    shared = 0
    for seed in range(20):
        geometries = grids(seed, 1.0)
        t1c = geometries["T1c"]
        assert t1c.pixel_spacing == (1.0, 1.0) and t1c.slice_spacing == 1.0
        affine, shape = reference_grid(Volume(np.zeros(t1c.shape, np.float32), t1c.affine))
        assert np.allclose(affine, t1c.affine) and tuple(shape) == t1c.shape
        shared += sum(geometries[r] == t1c for r in ROLES if r != "T1c")
    assert 15 <= shared <= 45  # each other series co-registered to it half the time
    natives = sum(grids(seed, 0.5)["T1c"].pixel_spacing == (1.0, 1.0) for seed in range(40))
    assert 10 <= natives <= 30


def test_whole_volume_training_samples_are_padded_as_the_pipeline_pads() -> None:
    """``train --crop 0`` feeds the network what infer() feeds it: the whole grid, end-padded."""
    from train.brain.data import Case, whole_volume

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 21, 30, 17)).astype(np.float16)
    target = (rng.random((3, 21, 30, 17)) > 0.5).astype(np.uint8)
    padded_image, padded_target = whole_volume(Case(image, target, seed=0))
    assert padded_image.shape == (4, 24, 32, 24) and padded_target.shape == (3, 24, 32, 24)
    assert np.array_equal(padded_image[:, :21, :30, :17], image.astype(np.float32))
    assert np.array_equal(padded_target[:, :21, :30, :17], target)
    assert not padded_image[:, 21:].any() and not padded_target[:, :, 30:].any()


def test_evaluation_volume_errors_skip_tiny_truths() -> None:
    from train.brain.evaluate import MEASUREMENTS, volume_errors

    def row(seed: int, necrotic: list[float], tumour: bool = True) -> dict[str, Any]:
        volumes = {key: [10.0, 10.0] for key in MEASUREMENTS}
        volumes["oedema"] = [11.0 + seed, 10.0]
        volumes["necrotic"] = necrotic
        return {"seed": seed, "tumour": tumour, "volume_ml": volumes}

    errors = volume_errors(
        [row(1, [0.3, 0.0]), row(2, [0.6, 0.4]), row(3, [1.2, 1.0]), row(4, [0, 0], False)]
    )
    assert errors["necrotic"]["studies"] == 1  # only the 1.0 mL truth counts
    assert errors["necrotic"]["max"] == pytest.approx(0.2)
    assert errors["oedema"]["max"] == pytest.approx(0.4) and errors["oedema"]["max_seed"] == 3
    assert errors["oedema"]["mean"] == pytest.approx(0.3)
    assert errors["whole tumour"]["max"] == 0.0


def test_thresholds_per_region() -> None:
    # One voxel: TC 0.4, WT 0.6, ET 0.3.
    probabilities = np.array([0.4, 0.6, 0.3], np.float32).reshape(3, 1, 1, 1)

    def label(thresholds: tuple[float, float, float]) -> int:
        return int(
            labels_from_probabilities(
                probabilities, thresholds, voxel_mm3=1.0, min_component_ml=0.0, require_core=False
            )[0, 0, 0]
        )

    assert label((0.5, 0.5, 0.5)) == OEDEMA
    assert label((0.35, 0.5, 0.5)) == NECROSIS
    assert label((0.35, 0.5, 0.25)) == ENHANCING
    assert label((0.5, 0.7, 0.5)) == 0


def test_robust_normalisation_hardly_moves_with_a_large_tumour() -> None:
    """The same brain voxel keeps its input value whether or not a bright oedema is present."""
    rng = np.random.default_rng(0)
    brain = rng.normal(100.0, 10.0, 20_000).astype(np.float32)
    with_tumour = brain.copy()
    with_tumour[:3_000] = rng.normal(180.0, 10.0, 3_000)  # 15 % of the brain: oedema
    mask = np.ones((1, 1, 20_000), dtype=bool)
    probe = 20_000 - 1  # a brain voxel in both
    for normalise, limit in ((normalise_nonzero, None), (normalise_robust, 0.25)):
        values = [
            float(normalise(channel[None, None, None], mask)[0, 0, 0, probe])
            for channel in (brain, with_tumour)
        ]
        shift = abs(values[0] - values[1])
        if limit is None:
            assert shift > 0.5  # mean/std: the tumour moves every other voxel
        else:
            assert shift < limit, values


def test_bundle_normalisation_is_checked(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_BUNDLE, bundle)
    config = bundle / "configs" / "inference.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "normalization": "zscore"}))
    with pytest.raises(PipelineError, match="normalization 'zscore' is not one of nonzero, robust"):
        BrainTumorPipeline("brain_tumor", PipelineConfig(bundle=bundle, device="cpu"))


def test_thresholds_come_from_the_bundle_unless_configured(pipeline: BrainTumorPipeline) -> None:
    bundle = pipeline.bundle.raw("thresholds")
    assert pipeline.thresholds == (bundle["TC"], bundle["WT"], bundle["ET"])
    assert all(0.0 < t < 1.0 for t in pipeline.thresholds)
    for option, expected in (
        (0.4, (0.4, 0.4, 0.4)),
        ([0.3, 0.6, 0.5], (0.3, 0.6, 0.5)),
        ({"TC": 0.3, "WT": 0.6, "ET": 0.5}, (0.3, 0.6, 0.5)),
    ):
        configured = BrainTumorPipeline(
            "brain_tumor", PipelineConfig(device="cpu", threshold=option)
        )
        assert configured.thresholds == expected
    with pytest.raises(PipelineError, match="threshold option"):
        BrainTumorPipeline("brain_tumor", PipelineConfig(device="cpu", threshold=[0.5, 0.5]))


def test_missing_flair_fails_with_a_sentence(
    study: MRStudyTruth, pipeline: BrainTumorPipeline, tmp_path: Path
) -> None:
    series = [series_input(study.series[r]) for r in ("T1", "T1c", "T2")]
    with pytest.raises(PipelineError, match="the study has no FLAIR series"):
        pipeline.run(context(series, tmp_path, []))


def test_two_post_contrast_series_fail_as_ambiguous(
    study: MRStudyTruth, pipeline: BrainTumorPipeline, tmp_path: Path
) -> None:
    series = [series_input(study.series[r]) for r in ("T1", "T1c", "T2", "FLAIR")]
    series.append(
        series_input(
            study.series["T1c"],
            SeriesInstanceUID="1.2.3.4.5",
            SeriesDescription="AX T1 POST GD",
            SeriesNumber=12,
        )
    )
    with pytest.raises(PipelineError) as error:
        pipeline.run(context(series, tmp_path, []))
    assert (
        "2 candidate T1c series ('T1 MPRAGE AX POST GD' (series 2) and 'AX T1 POST GD' (series 12))"
        in str(error.value)
    )


def test_other_frame_of_reference_is_an_error_unless_registered(
    study: MRStudyTruth, pipeline: BrainTumorPipeline, tmp_path: Path
) -> None:
    other = write_mr_study(
        tmp_path / "other", seed=SEED, roles=("FLAIR",), frames_of_reference={"FLAIR": "1.2.3.99"}
    )
    series = [series_input(study.series[r]) for r in ("T1", "T1c", "T2")]
    series.append(series_input(other.series["FLAIR"]))
    with pytest.raises(PipelineError, match="FLAIR series is in a different Frame of Reference"):
        pipeline.run(context(series, tmp_path / "work", []))
    # A configured registration step aligns it (here: trust the scanner coordinates).
    registered = BrainTumorPipeline(
        "brain_tumor",
        PipelineConfig(device="cpu", registration="tests.test_brain_tumor:same_scanner_space"),
    )
    selected = registered.select(context(series, tmp_path / "work", []))
    volumes = registered.load(selected, context(series, tmp_path / "work", []))
    assert {v.frame_of_reference_uid for v in volumes.values()} == {study.frame_of_reference_uid}


def same_scanner_space(moving: Volume, fixed: Volume) -> Volume:
    """A registration plug-in for the test: the series shared the scanner's coordinates."""
    return Volume(moving.array, moving.affine, moving.source, fixed.frame_of_reference_uid)


def test_model_zoo_bundle_with_random_weights_runs(tmp_path: Path) -> None:
    import torch

    from dicomnode.pipelines.bundle import Bundle

    bundle = tmp_path / "brats_mri_segmentation"
    shutil.copytree(MODEL_ZOO, bundle)
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = Bundle(bundle).parsed("network_def")
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    # A small study (64x64x48 mm at 2 mm: one 64x64x48 window) keeps the full-width network fast.
    grid = Geometry.covering((0.0, 0.0, 0.0), (64, 64, 48), (2.0, 2.0), 2.0)
    small = write_mr_study(tmp_path / "small", seed=SEED, geometries=dict.fromkeys(ROLES, grid))
    config = PipelineConfig(bundle=bundle, device="cpu", roi_size=[64, 64, 64], overlap=0.0)
    zoo = BrainTumorPipeline("brain_tumor", config)
    assert zoo.roi_size == [64, 64, 64]
    assert zoo.normalise is normalise_nonzero  # the Zoo's NormalizeIntensity (nonzero)
    assert sum(p.numel() for p in zoo.network.parameters()) > 4_000_000  # init_filters 16
    events: list[tuple[str, str]] = []
    series = [series_input(small.series[r]) for r in ROLES]
    results = zoo.run(context(series, tmp_path / "work", events))
    assert ("infer", "BraTS MRI segmentation 0.5.2 on cpu") in events
    assert "1.2.840.10008.5.1.4.1.1.88.34" in [r.sop_class_uid for r in results]
    for result in results:
        assert dciodvfy(result.path) == []


def check_results(
    paths: dict[str, Path], study: MRStudyTruth, t1c: Path | None = None
) -> dict[str, float]:
    """Dice of the SEG against the truth, SR volumes relative to the truth volumes (-1: none).

    *t1c*: the enhanced multi-frame T1c instance the results are on, if not the study's slices.
    """
    labels = seg_labels(paths["seg"], [t1c] if t1c else study.series["T1c"])
    truth = study.labels
    volumes = {label: found["volume"] for label, found in region_volumes(paths["sr"]).items()}
    # The whole-tumour group is the sum of the segment groups.
    assert sum(v for k, v in volumes.items() if k != "Whole tumour") == pytest.approx(
        volumes["Whole tumour"], abs=0.01
    )
    return {
        "WT": dice(labels > 0, truth > 0),
        "TC": dice(np.isin(labels, (1, 2)), np.isin(truth, (1, 2))),
        "ET": dice(labels == 1, truth == 1),
        "WT volume": volumes["Whole tumour"] / study.volume_ml(1, 2, 3) - 1,
        "TC volume": (volumes["Enhancing tumour"] + volumes.get("Necrotic core", 0.0))
        / study.volume_ml(1, 2)
        - 1,
        "ET volume": volumes["Enhancing tumour"] / study.volume_ml(1) - 1,
        "oedema volume": volumes["Oedema"] / study.volume_ml(3) - 1,
    }


@pytest.mark.slow
def test_storescu_to_node_to_orthanc(
    study: MRStudyTruth,
    make_settings: Callable[..., Any],
    start_node: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.test_flow import wait_for_jobs

    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            # Only the four-series rule can complete the study within the test's time.
            assembly={"quiet_seconds": 600, "early_quiet_seconds": 2.0},
            destinations=[orthanc.destination()],
            routes=[brain_route(["pacs"])],
            pipelines={"brain_tumor": {"device": "cpu"}},
        )
        node = start_node(settings, workers=1)
        start = time.monotonic()
        folders = [study.series[r][0].parent for r in ("T1", "T1c", "T2", "FLAIR")]
        result = storescu(folders, host="127.0.0.1", port=node.receiver.port, called_aet="TESTNODE")
        assert result.returncode == 0, result.stderr
        (job,) = wait_for_jobs(node, timeout=240)
        assert job["status"] == "done", job["error"]
        assert time.monotonic() - start < 240
        queued = next(e for e in job["events"] if e["stage"] == "queued")
        assert "required series present" in queued["message"]
        assert [o["status"] for o in job["outputs"]] == ["sent"] * 3  # SEG, GSPS, SR
        paths = {}
        kinds = {SEG_CLASS: "seg", SR_CLASS: "sr", PR_CLASS: "pr"}
        for output in job["outputs"]:
            path = node.store.root / output["path"]
            assert dciodvfy(path) == []
            paths[kinds[output["sop_class_uid"]]] = path
        orthanc_study = orthanc.find_study(study.study_instance_uid)
        assert orthanc_study is not None
        modalities = sorted(
            s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(orthanc_study)
        )
        assert modalities == ["PR", "SEG", "SR"]  # results in the source study (sources not pushed)
        scores = check_results(paths, study)
        print(scores)
        assert scores["WT"] >= 0.9 and scores["TC"] >= 0.85 and scores["ET"] >= 0.8, scores
        # The BraTS regions (whole tumour, tumour core, enhancing) within 10 % of the truth.
        for region in ("WT volume", "TC volume", "ET volume"):
            assert abs(scores[region]) <= 0.10, scores
        # The oedema alone is a thin shell (8 mL, ~4 mm) round this small tumour, and
        # one voxel all round is ~25 % of it: the tightest of the five (model card).
        assert abs(scores["oedema volume"]) <= 0.10, scores


@pytest.mark.slow
def test_no_tumour_gives_an_empty_report_and_no_seg(
    pipeline: BrainTumorPipeline, tmp_path: Path
) -> None:
    normal = write_mr_study(tmp_path / "normal", seed=SEED + 1, tumour=False)
    events: list[tuple[str, str]] = []
    series = [series_input(normal.series[r]) for r in ROLES]
    (report,) = pipeline.run(context(series, tmp_path / "work", events))
    assert report.sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34"
    assert dciodvfy(report.path) == []
    assert absent(report.path, codes.SCT.Neoplasm)
