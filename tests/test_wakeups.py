"""Wake-ups: a ring reaches every listener of its topic at once, on this host and over PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicomnode.wakeups import ARRIVALS, JOBS, OUTPUTS, Wakeups


def test_a_ring_wakes_every_listener_of_its_topic_only(tmp_path: Path) -> None:
    wakeups = Wakeups("sqlite:///x.db", folder=tmp_path)
    jobs = [wakeups.listen(JOBS), wakeups.listen(JOBS)]
    outputs = wakeups.listen(OUTPUTS)
    try:
        assert not jobs[0].wait(0.05)  # nothing rung yet
        started = time.monotonic()
        wakeups.ring(JOBS)
        assert all(listener.wait(5) for listener in jobs)
        assert time.monotonic() - started < 1
        assert not outputs.wait(0.05)
        assert not jobs[0].wait(0.05)  # rings are taken by the wait that saw them
    finally:
        for listener in (*jobs, outputs):
            listener.close()
        wakeups.close()


def test_a_waiting_thread_wakes_as_soon_as_it_is_rung(tmp_path: Path) -> None:
    wakeups = Wakeups("sqlite:///x.db", folder=tmp_path)
    listener = wakeups.listen(ARRIVALS)
    woke: list[float] = []
    thread = threading.Thread(
        target=lambda: woke.append(time.monotonic()) if listener.wait(10) else None
    )
    thread.start()
    time.sleep(0.2)
    rung = time.monotonic()
    wakeups.ring(ARRIVALS)
    thread.join(5)
    listener.close()
    wakeups.close()
    assert woke and woke[0] - rung < 0.5


def test_listeners_of_dead_processes_are_forgotten(tmp_path: Path) -> None:
    wakeups = Wakeups("sqlite:///x.db", folder=tmp_path)
    stale = tmp_path / JOBS / "999999-0.sock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.touch()  # a socket file nobody listens on any more
    wakeups.ring(JOBS)
    assert not stale.exists()
    wakeups.close()


def test_interrupt_wakes_the_waiter(tmp_path: Path) -> None:
    listener = Wakeups("sqlite:///x.db", folder=tmp_path).listen(JOBS)
    listener.interrupt()
    assert listener.wait(5)
    listener.close()


@pytest.mark.postgres
def test_jobs_and_outputs_ring_across_hosts_over_postgresql(tmp_path: Path) -> None:
    from dicomnode.testing.peers import PostgresServer

    with PostgresServer() as pg:
        # Two hosts: their own socket folders, one database.
        here = Wakeups(pg.url, folder=tmp_path / "host-a")
        there = Wakeups(pg.url, folder=tmp_path / "host-b")
        jobs, arrivals = there.listen(JOBS), there.listen(ARRIVALS)
        try:
            here.ring(JOBS)
            assert jobs.wait(5)  # NOTIFY reached the other host
            here.ring(ARRIVALS)  # receivers and assembly share a host: no NOTIFY
            assert not arrivals.wait(0.5)
        finally:
            jobs.close()
            arrivals.close()
            here.close()
            there.close()
