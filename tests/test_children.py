"""The process pools of ``serve``: nothing is replaced once stopping has begun."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess

from dicomnode.children import ProcessPool


def _stubborn(seconds: float) -> None:
    """A child that needs *seconds* to wind down after SIGTERM (a worker finishing a job)."""
    signal.signal(signal.SIGTERM, lambda *_: None)
    time.sleep(seconds)


class _Pool(ProcessPool):
    def _process(self, index: int) -> BaseProcess:
        return self.ctx.Process(target=_stubborn, args=(1.5 if index == 0 else 60.0,))


def _ours(pool: _Pool, before: set[int]) -> list[BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.pid not in before]


def test_check_during_stop_replaces_nothing() -> None:
    """The group SIGTERM killed slot 1 first; the scheduler's check runs while stop waits on slot 0.

    Before the pool took one lock for both, the check started a replacement
    for slot 1 that stop never signalled, and ``serve`` hung at exit joining it.
    """
    before = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    pool = _Pool(2)
    pool.start()
    try:
        victim = pool.processes[1]
        assert victim is not None and victim.pid is not None
        time.sleep(0.5)  # both children have installed their SIGTERM handler
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        stopper = threading.Thread(target=pool.stop, args=(10.0,))
        stopper.start()
        time.sleep(0.2)
        assert stopper.is_alive()  # stop is waiting on slot 0 ...
        pool.check()  # ... when the scheduler's check comes
        stopper.join()
        assert pool.processes == [None, None]
        assert _ours(pool, before) == []
        pool.check()  # after stop, too
        assert _ours(pool, before) == []
    finally:
        for child in _ours(pool, before):
            child.kill()


def test_nothing_is_replaced_once_the_node_is_stopping() -> None:
    """``serve`` got the group SIGTERM: the worker exits at once, the parent is still stopping others."""
    before = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    pool = _Pool(2)
    pool.start()
    try:
        victim = pool.processes[1]
        assert victim is not None and victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        pool.stopping()
        pool.check()
        assert pool.processes[1] is victim
    finally:
        pool.stop(0.5)
        assert _ours(pool, before) == []


def test_check_replaces_a_dead_process_while_running() -> None:
    before = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    pool = _Pool(2)
    pool.start()
    try:
        victim = pool.processes[1]
        assert victim is not None and victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        pool.check()
        replacement = pool.processes[1]
        assert replacement is not None and replacement is not victim and replacement.is_alive()
    finally:
        pool.stop(0.5)
        assert _ours(pool, before) == []
