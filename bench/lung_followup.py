"""Lung follow-up benchmark: what comparing with the prior adds to a lung job.

An embedded node (SQLite, one worker process, shipped ``models/lung_nodule_ct``
bundle, device auto) has Orthanc as its source and destination. Orthanc holds
the baseline of a synthetic chest CT pair (``chest_pair``, seed 3000007; by
default 300 slices of 1 mm, 128 x 128 of 3 mm); DCMTK storescu pushes the
follow-up. The job finds the prior at Orthanc (C-FIND), retrieves it (C-MOVE),
runs the model on it, registers it (SimpleITK) and matches the nodules: its
``priors`` stage. Reported from the job's timeline: each stage, the parts of
the ``priors`` stage (query, retrieve, the prior's inference, registration),
and what the stage adds against the job's other stages (the baseline job of
the same study in the same run). Then the same follow-up pushed to a second
node that holds the prior with its own report (no retrieve, no inference on
the prior): what a follow-up costs when the node saw the prior.

Usage: ``python bench/lung_followup.py [--slices 300] [--size 128]``
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# As bench/lung_nodule.py: bench/queue.py must not stand in for the standard library's queue.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from dicomnode.config import Settings  # noqa: E402
from dicomnode.jobs import JobQueue, job_to_dict  # noqa: E402
from dicomnode.service import Node  # noqa: E402
from dicomnode.synthetic.followup import chest_pair, write_chest_pair  # noqa: E402
from dicomnode.testing.node import NODE_AE, settings_data  # noqa: E402
from dicomnode.testing.peers import Orthanc, storescu  # noqa: E402

SEED = 3000007
STAGES = ("select", "load", "preprocess", "infer", "postprocess", "write")


def wait_job(node: Node, study_instance_uid: str, timeout: float) -> dict[str, Any]:
    """The finished job of *study_instance_uid*."""
    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in queue.list():
            job = job_to_dict(queue.get(row.id), events=True)
            final = job["status"] in ("done", "failed", "cancelled")
            if job["study_instance_uid"] == study_instance_uid and final:
                return job
        time.sleep(0.1)
    raise RuntimeError(f"the job of {study_instance_uid} did not finish in time")


def node_settings(root: Path, orthanc: Orthanc, *, source: bool) -> Settings:
    data = settings_data(root)
    data["destinations"] = [orthanc.destination()]
    data["sources"] = [orthanc.source()] if source else []
    data["routes"] = [{"pipeline": "lung_nodule", "match": {"Modality": "CT"}, "send_to": ["pacs"]}]
    data["pipelines"] = {"lung_nodule": {"device": "auto", "key_images": False}}
    return Settings.model_validate(data)


def seconds_in(message: str) -> float | None:
    """The ``(12.3 s)`` of a timeline line, if it has one."""
    found = re.search(r"\((\d+(?:\.\d+)?) s\)", message)
    return float(found.group(1)) if found else None


def report(title: str, job: dict[str, Any]) -> None:
    if job["status"] != "done":
        raise RuntimeError(f"job {job['status']}: {job['error']}")
    events = job["events"]
    print(f"{title}:")
    for event in events:
        if event["stage"] in (*STAGES, "priors", "retrieve"):
            took = f"{event['duration_s']:6.2f} s" if event["duration_s"] is not None else " " * 8
            print(f"  {event['stage']:<12} {took}  {event['message'][:150]}")
    stages = sum(e["duration_s"] for e in events if e["stage"] in STAGES and e["duration_s"])
    priors = sum(e["duration_s"] for e in events if e["stage"] == "priors" and e["duration_s"])
    parts = {
        "query (prior search)": next(
            (seconds_in(e["message"]) for e in events if e["message"].startswith("prior search")),
            None,
        ),
        "retrieve": next(
            (e["duration_s"] for e in events if e["stage"] == "retrieve" and e["duration_s"]),
            None,
        ),
        "the prior's inference": next(
            (seconds_in(e["message"]) for e in events if e["message"].startswith("prior infer")),
            None,
        ),
        "registration": next(
            (seconds_in(e["message"]) for e in events if e["message"].startswith("registration")),
            None,
        ),
    }
    for what, value in parts.items():
        print(f"  {what:<28} {'-' if value is None else f'{value:6.2f} s'}")
    print(
        f"  baseline job (its other stages) {stages:6.2f} s; the priors stage adds {priors:6.2f} s "
        f"(ratio {(stages + priors) / stages:.2f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=128, help="rows and columns (3 mm pixels)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-followup-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        # 300 mm along the table whatever the number of slices; 3 mm pixels of the pair's default.
        pixel = 384.0 / args.size
        pair = chest_pair(
            SEED,
            shape=(args.slices, args.size, args.size),
            spacing=(300.0 / args.slices, pixel, pixel),
        )
        paths = write_chest_pair(pair, root / "pair")
        print(
            f"pair of {args.slices} x {args.size} x {args.size} written in {time.perf_counter() - started:.1f} s"
        )
        current = pair.followup.study.study_instance_uid
        with Orthanc(root / "orthanc") as orthanc:
            for path in paths["baseline"]:
                orthanc.upload(path)
            settings = node_settings(root / "a", orthanc, source=True)
            orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
            node = Node(settings, workers=1)
            node.start()
            try:
                storescu(
                    paths["followup"], host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
                )
                report(
                    "prior at the source: query, retrieve, inference on it",
                    wait_job(node, current, 1800),
                )
            finally:
                node.stop()
            # A node that processed the prior itself: its report has the prior's findings.
            node = Node(node_settings(root / "b", orthanc, source=False), workers=1)
            node.start()
            try:
                port = node.receiver.port
                storescu(paths["baseline"], host="127.0.0.1", port=port, called_aet=NODE_AE)
                report(
                    "the prior as a job of its own (a baseline report)",
                    wait_job(node, pair.baseline.study.study_instance_uid, 1800),
                )
                storescu(paths["followup"], host="127.0.0.1", port=port, called_aet=NODE_AE)
                report(
                    "prior processed by the node: its report, no retrieve",
                    wait_job(node, current, 1800),
                )
            finally:
                node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
