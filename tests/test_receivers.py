"""Several receiver processes on one port: node-wide limits, a process killed, concurrent pushes.

A node with ``receiver_processes = 2`` in this test process (its receivers
are real child processes sharing the port with SO_REUSEPORT); DCMTK tools
and pynetdicom associations as the modalities.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicomnode.models import Instance
from dicomnode.receivers import ACTIVE, COLUMNS, PID, ReceiverPool
from dicomnode.service import Node
from dicomnode.testing.peers import NODELAY_ENV, dcmtk_tool, echoscu
from tests.conftest import NODE_AE
from tests.test_receiver import ct_dataset

pytestmark = pytest.mark.slow


def pool(node: Node) -> ReceiverPool:
    assert isinstance(node.receiver, ReceiverPool)
    return node.receiver


def active_by_process(node: Node) -> dict[int, int]:
    """pid -> associations that receiver process holds now."""
    table = node.receivers
    rows = range(1, table.rows)
    return {
        int(table.cells[r * COLUMNS + PID]): int(table.cells[r * COLUMNS + ACTIVE])
        for r in rows
        if table.cells[r * COLUMNS + PID]
    }


def associate(port: int, calling: str = "MODALITY") -> object:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AE)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_max_associations_hold_across_receiver_processes(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(node={"receiver_processes": 2, "max_associations": 4}))
    port = node.receiver.port
    held = [associate(port) for _ in range(4)]
    assert all(a.is_established for a in held)  # type: ignore[attr-defined]
    # The limit must be node-wide: make both processes hold some (the kernel picks by hash).
    while min(active_by_process(node).values(), default=0) == 0:
        held.pop(0).release()  # type: ignore[attr-defined]
        wait_for(lambda: node.receiver.open_associations() == 3, 10, "slot not given back")
        held.append(associate(port))
        assert held[-1].is_established  # type: ignore[attr-defined]
    assert sorted(active_by_process(node).values()) in ([1, 3], [2, 2])
    refused = subprocess.run(
        [dcmtk_tool("echoscu"), "-v", "-aec", NODE_AE, "127.0.0.1", str(port)],
        env=NODELAY_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    # A-ASSOCIATE-RJ result 2 (transient), source 3 (presentation), reason 2 (local limit).
    assert "Rejected Transient" in output and "Local Limit Exceeded" in output, output
    for assoc in held:
        assoc.release()  # type: ignore[attr-defined]
    wait_for(lambda: node.receiver.open_associations() == 0, 10, "slots not given back")
    assert echoscu(host="127.0.0.1", port=port, called_aet=NODE_AE).returncode == 0


def test_a_killed_receiver_process_is_replaced_and_the_others_keep_serving(
    make_settings, start_node
) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(node={"receiver_processes": 2, "max_associations": 16}))
    port = node.receiver.port
    held: list[object] = []
    # Associations until both receiver processes serve at least one of them.
    while len([n for n in active_by_process(node).values() if n]) < 2:
        assoc = associate(port)
        assert assoc.is_established  # type: ignore[attr-defined]
        held.append(assoc)
        assert len(held) < 40, "the kernel put every association on one process"
    before = set(pool(node).pids())
    victim = next(pid for pid, n in active_by_process(node).items() if n)
    echoes: list[int] = []
    stop = threading.Event()

    def keep_echoing() -> None:
        while not stop.is_set():
            echoes.append(echoscu(host="127.0.0.1", port=port, called_aet=NODE_AE).returncode)
            time.sleep(0.1)

    echoing = threading.Thread(target=keep_echoing)
    echoing.start()
    os.kill(victim, signal.SIGKILL)  # mid-association
    try:
        wait_for(lambda: len(set(pool(node).pids()) - before) == 1, 15, "no replacement process")
        assert victim not in pool(node).pids()
        stored = 0
        for assoc in held:
            status = assoc.send_c_store(ct_dataset()) if assoc.is_established else None  # type: ignore[attr-defined]
            if status is not None and getattr(status, "Status", None) == 0:
                stored += 1
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.release()  # type: ignore[attr-defined]
        lost = len(held) - stored
        # The victim's associations failed with it; every other one still stores.
        assert 1 <= lost < len(held)
        with node.sessions() as session:
            assert session.execute(select(func.count(Instance.id))).scalar_one() == stored
    finally:
        stop.set()
        echoing.join()
    assert echoes and all(code == 0 for code in echoes), echoes  # C-ECHO answered throughout
    fresh = associate(port)
    assert fresh.is_established  # type: ignore[attr-defined]
    assert fresh.send_c_store(ct_dataset()).Status == 0  # type: ignore[attr-defined]
    fresh.release()  # type: ignore[attr-defined]


def test_sixteen_concurrent_associations_store_everything(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.synthetic import ct_series, write_series

    node = start_node(make_settings(node={"receiver_processes": 2, "max_associations": 16}))
    files = write_series(ct_series(n_slices=160, rows=64, columns=64, seed=3), tmp_path / "ct")
    pushes = [
        subprocess.Popen(
            [dcmtk_tool("storescu"), "-aec", NODE_AE, "127.0.0.1", str(node.receiver.port)]
            + [str(f) for f in files[i::16]],
            env=NODELAY_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(16)
    ]
    outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in pushes]
    assert [p.returncode for p in pushes] == [0] * 16, outputs
    with node.sessions() as session:
        assert session.execute(select(func.count(Instance.id))).scalar_one() == len(files)
    assert node.receiver.open_associations() == 0


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_a_large_instance_streams_to_disk_in_bounded_memory(tmp_path: Path) -> None:
    """256 MiB in one C-STORE: the receiver process grows by a few MiB and stores it byte for byte."""
    import hashlib

    from dicomnode.testing.node import NodeProcess, settings_data
    from dicomnode.testing.peers import write_large_instance
    from tests.test_receiver import dataset_bytes

    large = write_large_instance(tmp_path / "large.dcm", frames=512)  # 256 MiB of pixels
    data = settings_data(tmp_path / "node")
    data["node"]["receiver_processes"] = 1
    with NodeProcess(data, tmp_path / "node") as node:
        assert node.proc is not None
        (receiver,) = [  # the one spawned child (not multiprocessing's resource tracker)
            int(p.parent.name)
            for p in Path("/proc").glob("[0-9]*/stat")
            if p.read_text().rsplit(")", 1)[1].split()[1] == str(node.proc.pid)
            and b"spawn_main" in (p.parent / "cmdline").read_bytes()
        ]
        before = _kib(receiver, "VmRSS")
        pushed = subprocess.run(
            [dcmtk_tool("storescu"), "-aec", NODE_AE, "127.0.0.1", str(node.port), str(large)],
            env=NODELAY_ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        growth_mib = (_kib(receiver, "VmHWM") - before) / 1024
    stored = next((tmp_path / "node" / "storage" / "instances").rglob("*.dcm"))
    assert (
        hashlib.sha256(dataset_bytes(stored)).digest()
        == hashlib.sha256(dataset_bytes(large)).digest()
    )
    assert growth_mib < 64, f"the receiver grew by {growth_mib:.0f} MiB for a 256 MiB instance"
