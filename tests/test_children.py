"""The process pools of ``serve``: nothing is replaced once stopping has begun."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import pytest

from dicomnode.children import ProcessPool


def _stubborn(seconds: float, ready: Any) -> None:
    """A child that needs *seconds* to wind down after SIGTERM (a worker finishing a job)."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    ready.set()
    time.sleep(seconds)


class _Pool(ProcessPool):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.ready = [self.ctx.Event() for _ in range(count)]

    def _process(self, index: int) -> BaseProcess:
        # Slot 0 outlasts stop's first wait by seconds even on a busy machine.
        seconds = 4.0 if index == 0 else 60.0
        return self.ctx.Process(target=_stubborn, args=(seconds, self.ready[index]))

    def wait_ready(self) -> None:
        """Until every child has its SIGTERM handler (a spawned child takes a while to start)."""
        for event in self.ready:
            assert event.wait(60), "a child did not start"


@pytest.fixture
def pool() -> Iterator[_Pool]:
    """Two running children; whatever of them (or of replacements) is left is killed at the end."""
    before = {p.pid for p in multiprocessing.active_children()}
    started = _Pool(2)
    started.start()
    yield started
    ours = [p for p in multiprocessing.active_children() if p.pid not in before]
    for child in ours:
        child.kill()
    assert ours == [], "a child outlived its pool"


def _kill_slot(pool: _Pool, index: int) -> BaseProcess:
    """SIGKILL slot *index*'s process once every child has started; wait until it is gone."""
    victim = pool.processes[index]
    assert victim is not None and victim.pid is not None
    pool.wait_ready()
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    return victim


def test_check_during_stop_replaces_nothing(pool: _Pool) -> None:
    """The group SIGTERM killed slot 1 first; the scheduler's check runs while stop waits on slot 0.

    Without one lock for both, a check in the middle of stop could start a
    replacement that stop never signals, and ``serve`` would hang at exit joining it.
    """
    _kill_slot(pool, 1)
    stopper = threading.Thread(target=pool.stop, args=(10.0,))
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive()  # stop is waiting on slot 0 ...
    pool.check()  # ... when the scheduler's check comes
    stopper.join()
    assert pool.processes == [None, None]
    pool.check()  # after stop, too


def test_nothing_is_replaced_once_the_node_is_stopping(pool: _Pool) -> None:
    """``serve`` got the group SIGTERM: the worker exits at once, the parent is still stopping others."""
    victim = _kill_slot(pool, 1)
    pool.stopping()
    pool.check()
    assert pool.processes[1] is victim
    pool.stop(0.5)


def test_check_replaces_a_dead_process_while_running(pool: _Pool) -> None:
    victim = _kill_slot(pool, 1)
    pool.check()
    replacement = pool.processes[1]
    assert replacement is not None and replacement is not victim and replacement.is_alive()
    pool.stop(0.5)
