"""Several `dicomnode worker` processes sharing one PostgreSQL job table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomnode.database import make_engine, session_factory
from dicomnode.models import Job, JobStatus
from dicomnode.testing.factories import queue_jobs
from dicomnode.testing.peers import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def write_config(tmp_path: Path, url: str, pipeline_extra: str) -> Path:
    config = tmp_path / "worker.toml"
    config.write_text(
        f"""
[database]
url = "{url}"
[storage]
path = "{tmp_path / "storage"}"
[workers]
poll_seconds = 0.1
lease_seconds = 3
heartbeat_seconds = 0.5
shutdown_grace_seconds = 2
[pipelines.record]
type = "dicomnode.testing.pipelines:Record"
log = "{tmp_path / "runs.log"}"
{pipeline_extra}
"""
    )
    return config


def start_worker(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
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
        start_new_session=True,
    )


def statuses(url: str) -> Counter[str]:
    sessions = session_factory(make_engine(url))
    with sessions() as session:
        return Counter(
            dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        )


def test_three_workers_drain_200_jobs_once_and_survive_a_sigkill(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database(f"s_{uuid.uuid4().hex[:10]}")
    queue_jobs(url, 200, "record")
    config = write_config(tmp_path, url, "seconds = 0.05")
    workers = [start_worker(config) for _ in range(3)]
    try:
        sessions = session_factory(make_engine(url))
        victim_pid = None
        deadline = time.monotonic() + 30
        while victim_pid is None:  # a worker child that holds a job right now
            assert time.monotonic() < deadline
            with sessions() as session:
                owner = session.execute(
                    select(Job.lease_owner).where(Job.status == JobStatus.RUNNING).limit(1)
                ).scalar()
            if owner:
                victim_pid = int(owner.split(":")[1])
        os.kill(victim_pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while statuses(url).get("done", 0) < 200:
            assert time.monotonic() < deadline, statuses(url)
            time.sleep(0.3)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(30) == 0
    runs = Counter(line.split()[0] for line in (tmp_path / "runs.log").read_text().splitlines())
    assert len(runs) == 200 and set(runs.values()) == {1}  # every job finished exactly once
    pids = {line.split()[1] for line in (tmp_path / "runs.log").read_text().splitlines()}
    assert len(pids) >= 3  # the work was shared (the killed worker's replacement counts too)
    with sessions() as session:
        reclaimed = session.execute(
            select(func.count()).select_from(Job).where(Job.attempts == 2)
        ).scalar_one()
    assert reclaimed >= 1  # the killed worker's job ran again on another worker


def test_sigterm_hands_a_long_job_back_after_the_grace_period(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database(f"g_{uuid.uuid4().hex[:10]}")
    queue_jobs(url, 1, "record")
    config = write_config(tmp_path, url, "seconds = 60")
    worker = start_worker(config)
    deadline = time.monotonic() + 30
    while statuses(url).get("running", 0) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - started < 15
    assert statuses(url) == Counter({"queued": 1})  # back in the queue, not lost, not failed
