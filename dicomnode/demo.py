"""``dicomnode demo``: the whole node, end to end, on synthetic studies.

Starts an embedded node (SQLite and storage under the demo folder, a free
port, short quiet time), generates synthetic studies, pushes them by C-STORE
like a scanner would, waits for their jobs to finish, prints the job table
with each job's timeline and outputs, and stops cleanly.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

from dicomnode.config import Settings
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import FINAL_JOB_STATES
from dicomnode.scu import send
from dicomnode.service import Node

DEMO_AE = "DEMONODE"


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_settings(workdir: Path, port: int) -> Settings:
    """An embedded node's settings, everything under *workdir*."""
    return Settings.model_validate(
        {
            "node": {"ae_title": DEMO_AE, "host": "127.0.0.1", "port": port},
            "storage": {"path": str(workdir / "storage"), "min_free_bytes": 0},
            "database": {"url": f"sqlite:///{workdir / 'dicomnode.db'}"},
            "assembly": {"quiet_seconds": 2, "check_interval": 0.5},
            "workers": {"processes": 1, "poll_seconds": 0.5},
            "api": {"enabled": False},
            "routes": [
                {"name": "ct-geometry", "pipeline": "geometry_qa", "match": {"Modality": "CT"}}
            ],
        }
    )


def _generate(folder: Path) -> dict[str, list[Path]]:
    from dicomnode.synthetic import Nodule, ct_series, write_series

    ct = ct_series(
        n_slices=64,
        rows=256,
        columns=256,
        pixel_spacing=(1.4, 1.4),
        slice_thickness=2.5,
        seed=7,
        nodules=[Nodule(center_mm=(-60.0, -20.0, 40.0), diameter_mm=10.0)],
        patient_id="DEMO0001",
        patient_name="Demo^Chest",
    )
    return {"CT chest (64 slices)": write_series(ct, folder / "ct")}


def run_demo(workdir: Path, *, keep: bool = False, timeout: float = 300.0) -> int:
    """Run the demo; return the process exit status (0 when every job finished well)."""
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    port = free_port()
    settings = demo_settings(workdir, port)
    print(f"demo: starting an embedded node {DEMO_AE} on 127.0.0.1:{port} (data in {workdir})")
    node = Node(settings)
    node.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            studies = _generate(Path(tmp))
            for label, files in studies.items():
                started = time.perf_counter()
                report = send(files, DEMO_AE, "127.0.0.1", port, calling_aet="DEMOSCANNER")
                print(
                    f"demo: pushed {label}: {report.summary()} in {time.perf_counter() - started:.2f} s"
                )
                if report.failures:
                    print(f"demo: send failures: {list(report.failures.values())[:3]}")
                    return 1
        queue = JobQueue(node.sessions)
        jobs = _wait_for_jobs(queue, expected=len(studies), timeout=timeout)
    finally:
        node.stop()
    _print_jobs(queue, jobs)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = all(j["status"] == "done" for j in jobs) and len(jobs) == len(studies)
    print("demo: " + ("all jobs done" if ok else "some jobs did not finish well"))
    return 0 if ok else 1


def _wait_for_jobs(queue: JobQueue, *, expected: int, timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        jobs = [job_to_dict(j) for j in queue.list()]
        summary = ", ".join(f"job {j['id']} {j['status']}" for j in jobs)
        if summary != last:
            print(f"demo: {summary or 'waiting for the study to complete'}")
            last = summary
        if len(jobs) >= expected and all(j["status"] in FINAL_JOB_STATES for j in jobs):
            return jobs
        time.sleep(0.5)
    print("demo: timed out waiting for jobs")
    return [job_to_dict(j) for j in queue.list()]


def _print_jobs(queue: JobQueue, jobs: list[dict[str, object]]) -> None:
    print("\nJOB  STATUS   PIPELINE      STUDY")
    for job in jobs:
        print(
            f"{job['id']:<4} {job['status']:<8} {job['pipeline']:<13} {job['study_instance_uid']}"
        )
        detail = job_to_dict(queue.get(int(str(job["id"]))), events=True)
        for event in detail["events"]:
            took = f" ({event['duration_s']:.2f} s)" if event["duration_s"] is not None else ""
            print(f"       {event['stage']:<9} {event['message']}{took}")
        for output in detail["outputs"]:
            print(
                f"       output {output['sop_instance_uid']} -> {output['destination']}: {output['status']}"
            )
        if job["error"]:
            print(f"       error: {job['error']}")
