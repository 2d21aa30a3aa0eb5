"""Ingest benchmark: 300 CT slices 512x512 pushed by DCMTK storescu.

Receivers, all in this run, on loopback, TCP_NODELAY=1 for the DCMTK and
Orthanc processes:

- DCMTK ``storescp`` writing files (no fsync);
- Orthanc (Debian package), default storage (no fsync);
- dicomnode ``serve`` (SQLite WAL, every instance fsynced and indexed before
  Success), started fresh for each push as the others are emptied.

Each push runs over one association, then as four concurrent storescu
processes of 75 slices each. Rounds alternate receivers to spread machine
noise; the median of ``--rounds`` is reported with instances/s and the ratio
to Orthanc and storescp.

Usage: ``python bench/ingest.py [--slices 300] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Run as a script, this folder is sys.path[0], and bench/queue.py would then stand
# in for the standard library's queue module wherever it is imported (multiprocessing,
# concurrent.futures, psycopg): drop the folder. dicomnode itself comes from the
# environment (installed editable), so nothing else goes on sys.path.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]

from dicomnode.synthetic import ct_series, write_series  # noqa: E402
from dicomnode.testing.peers import (  # noqa: E402
    NODELAY_ENV,
    Orthanc,
    StoreSCP,
    dcmtk_tool,
    echoscu,
    free_port,
)


def push(files: list[Path], port: int, aet: str, streams: int) -> float:
    """Seconds to push *files* over *streams* concurrent storescu associations."""
    chunks = [files[i::streams] for i in range(streams)]
    # DCMTK's storescu, not pynetdicom's of the same name in the venv (other options).
    tool = dcmtk_tool("storescu")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [tool, "-aec", aet, "127.0.0.1", str(port), *map(str, chunk)],
            env=NODELAY_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for chunk in chunks
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {out.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


@contextmanager
def dicomnode_server(workdir: Path) -> Iterator[tuple[int, str]]:
    """``dicomnode serve`` in a subprocess; yields (port, AE title)."""
    port = free_port()
    config = workdir / "dicomnode.toml"
    config.write_text(
        f"""
[node]
ae_title = "BENCHNODE"
host = "127.0.0.1"
port = {port}
[storage]
path = "{workdir / "storage"}"
min_free_bytes = 0
[database]
url = "sqlite:///{workdir / "db.sqlite"}"
[assembly]
quiet_seconds = 3600
[workers]
processes = 0
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while echoscu(host="127.0.0.1", port=port, called_aet="BENCHNODE").returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("dicomnode did not start")
            time.sleep(0.2)
        yield port, "BENCHNODE"
    finally:
        proc.terminate()
        proc.wait(30)


def count_rows(workdir: Path) -> int:
    import sqlite3

    with sqlite3.connect(workdir / "db.sqlite") as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        files = write_series(ct_series(n_slices=args.slices, seed=1), tmp / "ct")
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"data: {len(files)} CT slices 512x512, {size_mb:.0f} MB (generated in {time.perf_counter() - t0:.1f} s)"
        )

        results: dict[tuple[str, int], list[float]] = {}
        scp_dir, orthanc_dir = tmp / "storescp", tmp / "orthanc"
        for d in (scp_dir, orthanc_dir):
            d.mkdir()
        indexed: list[int] = []

        def push_to_dicomnode(streams: int) -> float:
            # A fresh node each push, like the other receivers after their reset:
            # the same UIDs again would measure the resend path, not first receipt.
            node_dir = tmp / f"node-{len(indexed)}"
            node_dir.mkdir()
            with dicomnode_server(node_dir) as (port, aet):
                seconds = push(files, port, aet, streams)
            indexed.append(count_rows(node_dir))
            shutil.rmtree(node_dir, ignore_errors=True)
            return seconds

        with StoreSCP(output_dir=scp_dir) as scp, Orthanc(workdir=orthanc_dir) as orthanc:

            def reset_scp() -> None:
                shutil.rmtree(scp_dir, ignore_errors=True)
                scp_dir.mkdir()

            def push_to_scp(streams: int) -> float:
                reset_scp()
                return push(files, scp.port, scp.aet, streams)

            def push_to_orthanc(streams: int) -> float:
                orthanc.delete_all()
                return push(files, orthanc.dicom_port, orthanc.aet, streams)

            receivers: dict[str, Callable[[int], float]] = {
                "storescp": push_to_scp,
                "orthanc": push_to_orthanc,
                "dicomnode": push_to_dicomnode,
            }
            for _ in range(args.rounds):
                for streams in (1, 4):
                    for name, run in receivers.items():
                        results.setdefault((name, streams), []).append(run(streams))
        assert set(indexed) == {len(files)}, indexed
        print(f"dicomnode indexed all {len(files)} instances in every push (fsync before Success)")
        print(
            f"\n{'receiver':<10} {'assoc':>5} {'median s':>9} {'inst/s':>8} {'vs orthanc':>11} {'vs storescp':>12}"
        )
        for streams in (1, 4):
            ref_o = statistics.median(results[("orthanc", streams)])
            ref_s = statistics.median(results[("storescp", streams)])
            for name in ("storescp", "orthanc", "dicomnode"):
                med = statistics.median(results[(name, streams)])
                print(
                    f"{name:<10} {streams:>5} {med:>9.2f} {len(files) / med:>8.0f} {med / ref_o:>10.2f}x {med / ref_s:>11.2f}x"
                )
        print("\n(ratios are time ratios: below 1.00x is faster than the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
