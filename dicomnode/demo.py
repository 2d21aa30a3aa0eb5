"""``dicomnode demo``: the whole node, end to end, on synthetic studies.

Starts an embedded node (SQLite and storage under the demo folder, a free
port, short quiet time) and a small stand-in PACS (a storage SCP writing into
``pacs/``), generates synthetic CT, MR and fundus studies, pushes them by
C-STORE like a scanner would, waits for their jobs to finish, prints the job
table with each job's timeline and where each SEG/SR/SC went, and stops
cleanly. Routes send CT to ``lung_nodule``, MR to ``brain_tumor`` and OP to
``fundus_dr``, with the shipped bundles from ``models/``.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import FINAL_JOB_STATES
from dicomnode.pipelines.brain_tumor.selection import complete_when
from dicomnode.scu import send
from dicomnode.service import Node

DEMO_AE = "DEMONODE"
PACS_AE = "DEMOPACS"
# (route name, pipeline, match): what the demo node routes where.
DEMO_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("chest-ct", "lung_nodule", {"Modality": "CT"}),
    ("brain-mr", "brain_tumor", {"Modality": "MR"}),
    ("fundus", "fundus_dr", {"Modality": "OP"}),
]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoPACS:
    """A storage SCP standing in for the hospital PACS: writes what it receives to *folder*."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.received: dict[str, Path] = {}  # SOP Instance UID -> file
        self._server: Any = None

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=PACS_AE)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        self.received[str(ds.SOPInstanceUID)] = path
        return 0x0000

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def demo_settings(workdir: Path, port: int, pacs_port: int | None = None) -> Settings:
    """An embedded node's settings, everything under *workdir*."""
    return Settings.model_validate(
        {
            "node": {"ae_title": DEMO_AE, "host": "127.0.0.1", "port": port},
            "storage": {"path": str(workdir / "storage"), "min_free_bytes": 0},
            "database": {"url": f"sqlite:///{workdir / 'dicomnode.db'}"},
            "assembly": {"quiet_seconds": 2, "check_interval": 0.5},
            "workers": {"processes": 1, "poll_seconds": 0.5},
            # The timeline printed at the end tells the story; per-event JSON logs would drown it.
            "log_level": "WARNING",
            "api": {"enabled": False},
            "destinations": [
                {"name": "pacs", "ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}
            ]
            if pacs_port
            else [],
            "routes": [
                {
                    "name": name,
                    "pipeline": pipeline,
                    "match": match,
                    "send_to": ["pacs"] if pacs_port else [],
                    # The MR study is complete once its four sequences are in.
                    "complete_when": complete_when() if pipeline == "brain_tumor" else [],
                }
                for name, pipeline, match in DEMO_ROUTES
            ],
            # The shipped bundles (models/...) are the defaults; the demo runs on the CPU.
            "pipelines": {pipeline: {"device": "auto"} for _, pipeline, _ in DEMO_ROUTES},
        }
    )


def demo_studies(folder: Path) -> dict[str, list[Path]]:
    """The demo's studies under *folder*: chest CT, four-sequence head MR, both-eye fundus.

    Seeded, so every run (and tests/test_viewers.py, which opens their results
    in OHIF) gets the same images. Returns label -> files.
    """
    from dicomnode.synthetic.ct import write_chest_ct_study
    from dicomnode.synthetic.fundus import write_fundus_study
    from dicomnode.synthetic.mr import write_mr_study

    ct = write_chest_ct_study(folder / "ct", seed=0, patient_id="DEMO0001")
    mr = write_mr_study(folder / "mr", seed=0)
    fundus = write_fundus_study(folder / "op", {"R": 2, "L": 0}, seed=0)
    mr_files = sorted(p for paths in mr.series.values() for p in paths)
    return {
        f"chest CT ({len(ct.paths)} slices, {len(ct.nodules)} nodules)": ct.paths,
        f"head MR (T1, T1c, T2, FLAIR: {len(mr_files)} images)": mr_files,
        "fundus photographs (right eye grade 2, left eye grade 0; JPEG)": [
            image.path for image in fundus.images
        ],
    }


def run_demo(workdir: Path, *, keep: bool = False, timeout: float = 300.0) -> int:
    """Run the demo; return the process exit status (0 when every job finished well)."""
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    port = free_port()
    pacs = DemoPACS(workdir / "pacs")
    pacs.start()
    settings = demo_settings(workdir, port, pacs.port)
    print(f"demo: starting an embedded node {DEMO_AE} on 127.0.0.1:{port} (data in {workdir})")
    print(f"demo: stand-in PACS {PACS_AE} on 127.0.0.1:{pacs.port} writes into {pacs.folder}")
    node = Node(settings)
    node.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            studies = demo_studies(Path(tmp))
            for label, files in studies.items():
                started = time.perf_counter()
                # Generous timeouts: the first worker is loading three models on the same CPU meanwhile.
                report = send(
                    files, DEMO_AE, "127.0.0.1", port, calling_aet="DEMOSCANNER", timeout=120
                )
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
        pacs.stop()
    _print_jobs(queue, jobs, pacs)
    if not keep:
        # The node's own storage and database go; the results the PACS received stay.
        for item in workdir.iterdir():
            if item != pacs.folder:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    print(f"demo: results kept in {pacs.folder}")
    ok = all(j["status"] == "done" for j in jobs) and len(jobs) == len(studies)
    print("demo: " + ("all jobs done" if ok else "some jobs did not finish well"))
    return 0 if ok else 1


def _kind(sop_class_uid: str) -> str:
    """SEG, SR, GSPS or SC for the job table."""
    from dicomnode.outputs import output_kind

    return (output_kind(sop_class_uid) or "?").upper()


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


def _print_jobs(queue: JobQueue, jobs: list[dict[str, object]], pacs: DemoPACS) -> None:
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
            where = pacs.received.get(str(output["sop_instance_uid"]))
            print(
                f"       {_kind(str(output['sop_class_uid'])):<4} {output['sop_instance_uid']} -> "
                f"{output['destination']} ({output['status']}){f': {where}' if where else ''}"
            )
        if job["error"]:
            print(f"       error: {job['error']}")
