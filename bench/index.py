"""Index benchmark: the database part of a C-STORE, alone (no network, no file).

Times :meth:`dicomnode.store.InstanceStore.index` on SQLite (WAL, as
``serve`` runs it) for new instances of one series, then for resends of the
same instances (the update path). Batches are timed separately; the minimum
is the figure to compare between two versions on a busy machine, the median
shows the noise.

Usage: ``python bench/index.py [--calls 2000] [--batch 200]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py must not shadow the standard library's queue module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from dicomnode.database import make_engine, session_factory, upgrade  # noqa: E402
from dicomnode.store import InstanceHeader, InstanceStore, Provenance  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def headers(n: int) -> list[InstanceHeader]:
    """*n* instances of one CT series, with the attributes a real header yields."""
    study, series = "1.2.826.0.1.1", "1.2.826.0.1.1.1"
    return [
        InstanceHeader(
            CT_IMAGE,
            f"{series}.{i}",
            study,
            series,
            i,
            study={"patient_id": "BENCH", "study_description": "index benchmark"},
            series={"Modality": "CT", "SeriesNumber": 2, "ImageType": ["ORIGINAL", "PRIMARY"]},
        )
        for i in range(1, n + 1)
    ]


def timed(store: InstanceStore, batch: list[InstanceHeader]) -> float:
    """Microseconds per index() call over *batch*."""
    prov = Provenance("BENCHSCU", "DICOMNODE", "127.0.0.1")
    started = time.perf_counter()
    for header in batch:
        relative = Path("instances") / header.series_instance_uid / f"{header.sop_instance_uid}.dcm"
        store.index(header, relative, 526_000, EXPLICIT_LE, prov)
    return (time.perf_counter() - started) / len(batch) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        url = f"sqlite:///{Path(tmp_name) / 'db.sqlite'}"
        upgrade(url)
        store = InstanceStore(Path(tmp_name) / "storage", session_factory(make_engine(url)))
        instances = headers(args.calls)
        batches = [instances[i : i + args.batch] for i in range(0, args.calls, args.batch)]
        for label in ("new instance", "resend"):  # the second pass sends the same again
            per_call = [timed(store, batch) for batch in batches]
            print(
                f"{label:<13} {min(per_call):6.0f} us min {statistics.median(per_call):6.0f} us "
                f"median per index() ({args.calls} calls)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
