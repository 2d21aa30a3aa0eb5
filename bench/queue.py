"""Queue benchmark: 2,000 trivial jobs drained by 1, 2 and 4 worker processes on PostgreSQL.

Each worker is a real ``dicomnode worker`` process (claim with FOR UPDATE SKIP
LOCKED, lease, heartbeat thread, events, completion); the pipeline does
nothing, so the figure is the queue's own throughput. A PostgreSQL server is
started in a temp dir (as the tests do). Prints jobs/s per worker count.

Usage: ``python bench/queue.py [--jobs 2000] [--workers 1 2 4]``
"""

# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
from __future__ import annotations

import sys
from pathlib import Path

# This file is called queue.py: run as a script, its folder is sys.path[0] and it
# would stand in for the standard library's queue module, which psycopg imports
# (PostgresServer.create_database, the engine). Drop the folder before anything
# imports queue; dicomnode itself comes from the environment (installed editable).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import argparse
import signal
import subprocess
import tempfile
import time
import uuid

from sqlalchemy import func, select

from dicomnode.database import make_engine, session_factory
from dicomnode.models import Job, JobStatus
from dicomnode.testing.factories import queue_jobs
from dicomnode.testing.peers import PostgresServer


def done(url: str) -> int:
    with session_factory(make_engine(url))() as session:
        return int(
            session.execute(
                select(func.count()).select_from(Job).where(Job.status == JobStatus.DONE)
            ).scalar_one()
        )


def drain(server: PostgresServer, workdir: Path, jobs: int, workers: int) -> float:
    """Jobs per second once the workers are up."""
    url = server.create_database(f"q_{uuid.uuid4().hex[:10]}")
    queue_jobs(url, jobs, "noop")
    config = workdir / f"w{workers}.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[storage]\npath = "{workdir / "storage"}"\n'
        "[workers]\npoll_seconds = 0.05\n"
        '[pipelines.noop]\ntype = "dicomnode.testing.pipelines:Record"\n'
        f'log = "{workdir / "runs.log"}"\n'
    )
    procs = []
    for _ in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicomnode.cli",
                    "worker",
                    "--config",
                    str(config),
                    "--processes",
                    "1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        # Time the drain from the first finished job: process start-up (imports) is
        # not the queue's cost.
        while (first := done(url)) == 0:
            time.sleep(0.05)
        started = time.perf_counter()
        while done(url) < jobs:
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    return (jobs - first) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PostgresServer() as server:
        print(f"{args.jobs} trivial jobs on PostgreSQL (timed from the first finished job)")
        print(f"{'workers':>7} {'jobs/s':>8}")
        for workers in args.workers:
            print(f"{workers:>7} {drain(server, Path(tmp), args.jobs, workers):>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
