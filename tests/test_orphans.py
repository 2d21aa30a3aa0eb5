"""A node killed with SIGKILL (the OOM killer, kill -9) leaves no worker process behind.

Worker processes exit when the process that started them is gone; a job one
of them was running is claimed again by the restarted node once its lease
expires. Real processes: ``dicomnode serve`` in a subprocess, found and killed
the way an admin or the kernel would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dicomnode.testing.node import NODE_AE, NodeProcess, settings_data
from dicomnode.testing.peers import storescu
from tests.conftest import sample_paths

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Every live descendant of *pid* (zombies count as gone), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if state != "Z":
            parents[int(stat.parent.name)] = int(ppid)
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":
            alive.append(pid)
    return alive


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The *pids* still alive after *seconds*; those are killed, so no test leaves orphans."""
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(pids)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _workers_of(node: NodeProcess, count: int, timeout: float = 60) -> list[int]:
    assert node.proc is not None
    deadline = time.monotonic() + timeout
    while len(found := _children(node.proc.pid)) < count:
        assert time.monotonic() < deadline, f"worker processes did not start: {found}"
        time.sleep(0.2)
    return found


def _config(root: Path) -> dict[str, Any]:
    data = settings_data(root)
    data["workers"].update(processes=2, lease_seconds=3, heartbeat_seconds=0.5)
    data["routes"] = [{"pipeline": "sleepy", "match": {"Modality": "CT"}}]
    # Long enough that a poll sees it running (each poll is two CLI processes, seconds
    # on a busy 2-core machine), short enough for the restarted node to finish it.
    data["pipelines"] = {"sleepy": {"type": "tests.pipelines:Sleepy", "seconds": 12}}
    return data


def test_kill_9_while_idle_leaves_no_process(tmp_path: Path) -> None:
    node = NodeProcess(_config(tmp_path), tmp_path).start()
    workers = _workers_of(node, 2)
    node.kill()
    assert _wait_gone(workers, 10) == [], "worker processes outlived their node"


def test_kill_9_while_a_job_runs_and_the_restarted_node_claims_it_again(tmp_path: Path) -> None:
    data = _config(tmp_path)
    node = NodeProcess(data, tmp_path).start()
    try:
        pushed = storescu(sample_paths()[:1], host="127.0.0.1", port=node.port, called_aet=NODE_AE)
        assert pushed.returncode == 0, pushed.stderr
        node.wait_for_jobs(timeout=60, done=("running",))
        workers = _workers_of(node, 2)
    finally:
        node.kill()  # also when the test fails before: no node left behind
    killed_at = time.monotonic()
    assert _wait_gone(workers, 10) == [], "worker processes outlived their node"
    # Nothing may have finished the job meanwhile: it is still the dead worker's.
    (job,) = node.jobs()
    assert job["status"] == "running"

    restarted = NodeProcess(data, tmp_path / "again").start()
    try:
        (job,) = restarted.wait_for_jobs(timeout=60)
    finally:
        restarted.stop()
    assert job["status"] == "done", job
    claims = [e for e in job["events"] if e["stage"] == "claim"]
    assert "lease of worker" in claims[-2]["message"] and "expired" in claims[-2]["message"]
    assert job["attempts"] == 2
    assert time.monotonic() - killed_at >= data["workers"]["lease_seconds"]
