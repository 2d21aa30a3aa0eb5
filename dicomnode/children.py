"""Child processes of ``serve`` (receivers, workers): stopping a pool of them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess


def stop_processes(processes: Sequence[BaseProcess | None], timeout: float) -> None:
    """SIGTERM every live process, wait up to *timeout* in all, then SIGKILL stragglers.

    All are signalled before any is waited for, so they wind down in parallel
    (a worker finishing its job, a receiver closing its associations) and the
    whole pool takes *timeout* at most, not *timeout* per process.
    """
    for process in processes:
        if process is not None and process.is_alive():
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in processes:
        if process is not None:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
