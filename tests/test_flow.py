"""A study from C-STORE to job outcome, with worker processes, Orthanc and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomnode.cli import main as cli
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import FINAL_JOB_STATES, Study
from dicomnode.testing.peers import Orthanc, storescu
from tests.conftest import NODE_AE, sample_paths
from tests.test_durability import ct_study

pytestmark = pytest.mark.slow


def wait_for_jobs(
    node: Any, n: int = 1, timeout: float = 60, final: bool = True
) -> list[dict[str, Any]]:
    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while True:
        jobs = [job_to_dict(queue.get(j.id), events=True) for j in queue.list()]
        if len(jobs) >= n and (not final or all(j["status"] in FINAL_JOB_STATES for j in jobs)):
            return jobs
        assert time.monotonic() < deadline, f"jobs did not finish: {jobs}"
        time.sleep(0.2)


def write_study(tmp_path: Path, n: int = 12) -> list[Path]:
    paths = []
    for ds in ct_study(n):
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_study_goes_waiting_queued_done_with_a_timeline(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[{"name": "ct", "pipeline": "geometry_qa", "match": {"Modality": "CT"}}]
    )
    node = start_node(settings, workers=1)
    result = storescu(
        write_study(tmp_path), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    assert result.returncode == 0
    (job,) = wait_for_jobs(node)
    assert job["status"] == "done", job
    stages = [e["stage"] for e in job["events"]]
    assert stages[:3] == ["waiting", "queued", "claim"]
    assert "geometry" in stages and stages[-1] == "done"
    geometry = next(e for e in job["events"] if e["stage"] == "geometry")
    assert "12 slices" in geometry["message"] and "slice spacing 5.000 mm" in geometry["message"]


def test_missing_slice_fails_with_a_sentence_and_retry_requeues(
    make_settings, start_node, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}])
    node = start_node(settings, workers=1)
    files = write_study(tmp_path)
    del files[5]  # a slice lost on the way
    storescu(files, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    (job,) = wait_for_jobs(node)
    assert job["status"] == "failed"
    assert "gap(s) suggest missing slices" in job["error"]
    config = tmp_path / "node.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n')
    assert cli(["jobs", "list", "--status", "failed", "--json", "--config", str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in listed] == [job["id"]]
    for key in (
        "id",
        "study_instance_uid",
        "pipeline",
        "status",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "outputs",
    ):
        assert key in listed[0]
    assert cli(["jobs", "retry", str(job["id"]), "--config", str(config)]) == 0
    (again,) = wait_for_jobs(node)
    assert again["status"] == "failed" and any(e["stage"] == "retry" for e in again["events"])


def test_unmatched_study_is_recorded_not_processed(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(
        make_settings(routes=[{"pipeline": "geometry_qa", "match": {"Modality": "MR"}}])
    )
    storescu(sample_paths()[:1], host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    deadline = time.monotonic() + 20
    while True:
        with node.sessions() as session:
            study = session.execute(select(Study)).scalar_one()
        if study.status != "receiving":
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert study.status == "unmatched"
    assert "no route matched" in (study.note or "")
    assert JobQueue(node.sessions).list() == []


def test_pipeline_errors_become_job_errors(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[
            {"pipeline": "broken", "match": {"Modality": "CT"}, "continue_matching": True},
            {"pipeline": "crashing", "match": {"Modality": "CT"}},
        ],
        pipelines={
            "broken": {"type": "tests.pipelines:Broken"},
            "crashing": {"type": "tests.pipelines:Crashing"},
        },
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 3), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    jobs = {j["pipeline"]: j for j in wait_for_jobs(node, 2)}
    assert jobs["broken"]["error"] == "the model found no lungs in this series"
    assert jobs["crashing"]["error"].startswith("crashing failed: KeyError")


def test_job_timeout_fails_the_job_and_the_worker_comes_back(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        routes=[{"pipeline": "sleepy", "match": {"Modality": "CT"}}],
        pipelines={
            "sleepy": {"type": "tests.pipelines:Sleepy", "seconds": 60, "timeout_seconds": 1.5}
        },
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 2), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    (job,) = wait_for_jobs(node, timeout=60)
    assert job["status"] == "failed"
    assert job["error"] == "sleepy timed out after 1.5 s"
    time.sleep(3)  # the pool restarts the worker process that exited
    assert all(p is not None and p.is_alive() for p in node.pool.processes)


def test_orthanc_pushes_a_study_and_gets_the_result_back(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            destinations=[orthanc.destination()],
            routes=[
                {
                    "pipeline": "summary",
                    "match": {"Modality": "CT", "CallingAETitle": orthanc.aet},
                    "send_to": ["pacs"],
                }
            ],
            pipelines={"summary": {"type": "tests.pipelines:SeriesSummary"}},
        )
        node = start_node(settings, workers=1)
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.receiver.port)
        (tmp_path / "study").mkdir()
        files = write_study(tmp_path / "study", 5)
        ids = [orthanc.upload(p)["ParentStudy"] for p in files]
        orthanc.store_to("dicomnode", [ids[0]])
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done", job
        (output,) = job["outputs"]
        assert output["destination"] == "pacs" and output["status"] == "sent"
        instances = orthanc.instances_of_study(ids[0])
        assert len(instances) == 6  # 5 CT slices + the result, in the same study
        assert output["sop_instance_uid"] in {
            i["MainDicomTags"]["SOPInstanceUID"] for i in instances
        }


def test_results_wait_for_a_stopped_pacs_and_arrive_once(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = make_settings(
        destinations=[orthanc.destination()],
        routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
        pipelines={"summary": {"type": "tests.pipelines:SeriesSummary"}},
        delivery={
            "max_attempts": 50,
            "backoff_seconds": 0.3,
            "backoff_max_seconds": 0.6,
            "check_interval": 0.2,
        },
    )
    node = start_node(settings, workers=1)
    files = write_study(tmp_path, 3)
    storescu(files, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    (job,) = wait_for_jobs(node, final=False)
    deadline = time.monotonic() + 30
    while job["status"] != "sending" or not job["outputs"] or job["outputs"][0]["attempts"] < 2:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        (job,) = wait_for_jobs(node, final=False)
    assert (
        "cannot connect" in job["outputs"][0]["error"]
        or "did not answer" in job["outputs"][0]["error"]
    )
    with orthanc:
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done"
        study_id = orthanc.find_study(job["study_instance_uid"])
        assert study_id is not None
        instances = orthanc.instances_of_study(study_id)
        assert len(instances) == 1  # only the result: the CT went to the node, not the PACS
        assert (
            instances[0]["MainDicomTags"]["SOPInstanceUID"] == job["outputs"][0]["sop_instance_uid"]
        )


def test_worker_killed_mid_job_is_reclaimed_after_its_lease(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    settings = make_settings(
        routes=[{"pipeline": "sleepy", "match": {"Modality": "CT"}}],
        pipelines={"sleepy": {"type": "tests.pipelines:Sleepy", "seconds": 2}},
        workers={"lease_seconds": 2, "heartbeat_seconds": 0.5, "poll_seconds": 0.2},
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 2), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    (job,) = wait_for_jobs(node, final=False)
    deadline = time.monotonic() + 30
    while job["status"] != "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        (job,) = wait_for_jobs(node, final=False)
    victim = node.pool.processes[0]
    assert victim is not None and victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    (job,) = wait_for_jobs(node, timeout=60)
    assert job["status"] == "done", job
    assert job["attempts"] == 2
    assert any("lease of worker" in e["message"] for e in job["events"])


def test_dicomnode_worker_command_runs_queued_jobs(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from dicomnode.service import Node

    settings = make_settings(routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}])
    node = Node(settings, workers=0)  # receiver and assembly only: the job waits in the queue
    node.start()
    try:
        storescu(
            write_study(tmp_path, 4), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
        )
        (job,) = wait_for_jobs(node, final=False)
        while job["status"] != "queued":
            time.sleep(0.1)
            (job,) = wait_for_jobs(node, final=False)
        config = tmp_path / "worker.toml"
        config.write_text(
            f'[database]\nurl = "{settings.database.url}"\n[storage]\npath = "{settings.storage.path}"\n'
            "[workers]\npoll_seconds = 0.2\n"
        )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomnode.cli",
                "worker",
                "--config",
                str(config),
                "--pipelines",
                "geometry_qa",
                "--processes",
                "1",
            ],
            stderr=subprocess.PIPE,
        )
        try:
            (job,) = wait_for_jobs(node, timeout=60)
            assert job["status"] == "done", job
        finally:
            worker.terminate()
            assert worker.wait(30) == 0
    finally:
        node.stop()


def test_seg_sr_and_key_image_reach_orthanc_in_the_same_study(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.synthetic import Nodule, ct_series, write_series
    from dicomnode.testing.peers import dciodvfy

    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            destinations=[orthanc.destination()],
            routes=[{"pipeline": "spheres", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
            pipelines={"spheres": {"type": "tests.pipelines:HyperdenseSpheres"}},
        )
        node = start_node(settings, workers=1)
        nodules = [
            Nodule((-40.0, -20.0, 20.0), 12.0, hu=300.0),
            Nodule((50.0, 10.0, 40.0), 9.0, hu=300.0),
        ]
        files = write_series(
            ct_series(
                48,
                128,
                128,
                pixel_spacing=(2.0, 2.0),
                slice_thickness=1.25,
                seed=9,
                nodules=nodules,
            ),
            tmp_path / "ct",
        )
        # The PACS pushes the study to the node, as a routing rule in Orthanc would.
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.receiver.port)
        study_id = [orthanc.upload(p)["ParentStudy"] for p in files][0]
        orthanc.store_to("dicomnode", [study_id])
        (job,) = wait_for_jobs(node, timeout=90)
        assert job["status"] == "done", job
        assert [o["status"] for o in job["outputs"]] == ["sent"] * 4
        for output in job["outputs"]:
            assert dciodvfy(node.store.root / output["path"]) == []
        assert orthanc.find_study(job["study_instance_uid"]) == study_id
        series = {
            s["MainDicomTags"]["Modality"]: s["MainDicomTags"]
            for s in orthanc.series_of_study(study_id)
        }
        assert sorted(series) == ["CT", "OT", "PR", "SEG", "SR"]  # results in the source study
        assert series["SEG"]["SeriesNumber"] == "9901"
        assert series["SEG"]["SeriesDescription"] == "spheres segmentation (Not for diagnostic use)"
        sr_path = next(
            node.store.root / o["path"]
            for o in job["outputs"]
            if o["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.34"
        )
        import highdicom as hd

        content = hd.sr.srread(sr_path).content
        # Per sphere: centre, long-axis ellipse and outline with the volume on its key slice,
        # and its 3D ellipsoid.
        assert len(content.get_planar_roi_measurement_groups()) == 6
        assert len(content.get_volumetric_roi_measurement_groups()) == 2
