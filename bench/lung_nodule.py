"""Lung nodule pipeline benchmark: a 300-slice 512x512 chest CT, received to results sent.

An embedded node (SQLite, one worker process, shipped ``models/lung_nodule_ct``
bundle, device auto) receives a synthetic chest CT with four nodules from
DCMTK storescu and sends SEG + SR to Orthanc. Reported: the push, the
assembly wait (``quiet_seconds``), each pipeline stage from the job's
timeline, delivery, and the total from the last slice received to the last
result stored in Orthanc, against the 60 s target on a 2-core CPU. With a
GPU, ``--zoo`` also times the Model Zoo ResNet-50 RetinaNet (random weights,
AMP) on one 512x512x192 window against its published 996 ms (A100, AMP).

Usage: ``python bench/lung_nodule.py [--slices 300] [--quiet 1.0] [--zoo]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this folder is sys.path[0], and bench/queue.py would then stand
# in for the standard library's queue module wherever it is imported (multiprocessing,
# concurrent.futures, psycopg): drop the folder. dicomnode itself comes from the
# environment (installed editable), so nothing else goes on sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from dicomnode.config import Settings  # noqa: E402
from dicomnode.jobs import JobQueue, job_to_dict  # noqa: E402
from dicomnode.service import Node  # noqa: E402
from dicomnode.synthetic.ct import write_chest_ct_study  # noqa: E402
from dicomnode.testing.node import NODE_AE, settings_data  # noqa: E402
from dicomnode.testing.peers import Orthanc, storescu  # noqa: E402

TARGET_S = 60.0
ZOO_PUBLISHED_MS = 996.0
STAGES = ("select", "load", "preprocess", "infer", "postprocess", "write")


def wait_done(node: Node, timeout: float) -> tuple[dict[str, Any], float]:
    """The finished job and the time its last output was sent."""
    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [job_to_dict(queue.get(j.id), events=True) for j in queue.list()]
        if jobs and jobs[0]["status"] in ("done", "failed", "cancelled"):
            return jobs[0], time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError("the job did not finish in time")


def zoo_inference_ms(rounds: int = 5) -> float | None:
    """Median ms of the Model Zoo detector network on one 512x512x192 window (CUDA, AMP)."""
    import statistics

    import torch

    if not torch.cuda.is_available():
        return None
    from dicomnode.pipelines.bundle import Bundle

    network = Bundle(ROOT.parent / "shared" / "model-zoo" / "lung_nodule_ct_detection").parsed(
        "network_def"
    )
    network = network.cuda().eval()
    image = torch.rand(1, 1, 512, 512, 192, device="cuda")
    times = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(rounds + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            network(image)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--quiet", type=float, default=1.0, help="assembly quiet_seconds")
    parser.add_argument("--zoo", action="store_true", help="also time the Model Zoo network (GPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lung-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        study = write_chest_ct_study(
            root / "ct",
            n_slices=args.slices,
            rows=512,
            columns=512,
            pixel_spacing=(0.703125, 0.703125),
            slice_thickness=1.25,
            seed=7,
        )
        print(
            f"synthetic CT: {args.slices} x 512 x 512 written in {time.perf_counter() - started:.1f} s"
        )
        with Orthanc(root / "orthanc") as orthanc:
            data = settings_data(root)
            data["assembly"] = {
                "quiet_seconds": args.quiet,
                "early_quiet_seconds": 0.2,
                "check_interval": 0.1,
            }
            data["destinations"] = [orthanc.destination()]
            data["routes"] = [
                {"pipeline": "lung_nodule", "match": {"Modality": "CT"}, "send_to": ["pacs"]}
            ]
            data["pipelines"] = {"lung_nodule": {"device": "auto", "key_images": False}}
            node = Node(Settings.model_validate(data), workers=1)
            node.start()
            try:
                time.sleep(2.0)  # let the worker process start
                push_start = time.perf_counter()
                result = storescu(
                    study.paths,
                    host="127.0.0.1",
                    port=node.receiver.port,
                    called_aet=NODE_AE,
                    timeout=600,
                )
                received = time.perf_counter()
                if result.returncode != 0:
                    raise RuntimeError(result.stderr[-500:])
                job, sent = wait_done(node, timeout=900)
            finally:
                node.stop()
        report(job, push_start, received, sent, args)
    if args.zoo:
        ms = zoo_inference_ms()
        if ms is None:
            print("Model Zoo network: no CUDA GPU here, not timed")
        else:
            print(
                f"Model Zoo RetinaNet (ResNet-50 FPN) 512x512x192 window, AMP: {ms:.0f} ms "
                f"(published 996 ms on A100): ratio {ms / ZOO_PUBLISHED_MS:.2f}"
            )
    return 0


def report(job: dict[str, Any], push_start: float, received: float, sent: float, args: Any) -> None:
    if job["status"] != "done":
        raise RuntimeError(f"job {job['status']}: {job['error']}")
    stages = {
        e["stage"]: e["duration_s"]
        for e in job["events"]
        if e["stage"] in STAGES and e["duration_s"]
    }
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    total = sent - received
    print(f"push ({args.slices} slices, one association): {received - push_start:.1f} s")
    print("job timeline:")
    for event in job["events"]:
        took = f"{event['duration_s']:6.2f} s" if event["duration_s"] is not None else " " * 8
        print(f"  {event['stage']:<12} {took}  {event['message']}")
    for stage in STAGES:
        print(f"  {stage:<12} {stages.get(stage, 0.0):6.2f} s")
    print(
        f"  pipeline total {(finished - started).total_seconds():6.2f} s (job started → finished)"
    )
    print(f"outputs: {[(o['sop_class_uid'], o['status']) for o in job['outputs']]}")
    print(
        f"received → SEG+SR sent: {total:.1f} s, of which assembly wait {args.quiet:g} s "
        f"(target {TARGET_S:g} s on a 2-core CPU: {'met' if total <= TARGET_S else 'MISSED'}, "
        f"ratio {total / TARGET_S:.2f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
