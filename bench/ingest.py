"""Ingest benchmark: 300 CT slices 512x512 pushed by DCMTK storescu, and one 1 GiB object.

Receivers, all in this run, on loopback, TCP_NODELAY=1 for the DCMTK and
Orthanc processes:

- DCMTK ``storescp`` writing files (no fsync);
- Orthanc (Debian package), default storage (no fsync);
- dicomnode ``serve`` (SQLite WAL, every instance fsynced and indexed before
  Success; one receiver process per core), started fresh for each push as
  the others are emptied.

Each push runs over 1, 4, 8 and 16 concurrent storescu associations (the
slices split between them). Rounds alternate receivers to spread machine
noise; the median of ``--rounds`` is reported with instances/s, the ratio to
Orthanc and to storescp, and the peak resident memory of each receiver's
processes during the push (dicomnode: the largest receiver process).

Then one association again, to split dicomnode's time into the disk's and
its own: storescp, dicomnode, dicomnode with fsync off (not durable), and the
same files written and fsynced with no network (the floor for any receiver
that acknowledges only durable instances, since storescu waits for each
response). Then one association of 300 small (128x128) instances from
senders that leave Nagle on (DCMTK storescu without ``TCP_NODELAY`` in its
environment, pynetdicom with its default socket) to each receiver. Then dicomnode alone, four associations, with its receiver processes and
cores restricted by ``taskset``: 1 process on 1 core, 1 process on 2 cores,
2 processes on 2 cores. Then DICOMweb: the same slices by STOW-RS (one
request, streamed from the files) into dicomnode's endpoint and into
Orthanc's DICOMweb plugin; and the study fetched from Orthanc into a fresh
dicomnode by WADO-RS and by C-MOVE (both stored durably and indexed). Last,
one large multi-frame instance (``--large-mib``, default 1024) to each
receiver: time and memory growth, and whether dicomnode's stored copy is
byte-identical.

Usage: ``python bench/ingest.py [--slices 300] [--rounds 3] [--large-mib 1024]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/queue.py must not shadow the standard library's queue module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from dicomnode.retrieval import Source, StudyMatch  # noqa: E402
from dicomnode.synthetic import ct_series, write_series  # noqa: E402
from dicomnode.testing.node import NodeProcess, settings_data  # noqa: E402
from dicomnode.testing.peers import (  # noqa: E402
    NODELAY_ENV,
    Orthanc,
    StoreSCP,
    dcmtk_tool,
    write_large_instance,
)

STREAMS = (1, 4, 8, 16)
SECTIONS = ("cstore", "floor", "senders", "scaling", "dicomweb", "many", "large")
AE = "BENCHNODE"


@dataclass
class Push:
    """One push: seconds and the peak resident memory (MiB) of the receiver's processes."""

    seconds: float
    peak_mib: float


Sender = Callable[[list[Path], int, str, int], float]


def push(
    files: list[Path], port: int, aet: str, streams: int, env: dict[str, str] = NODELAY_ENV
) -> float:
    """Seconds to push *files* over *streams* concurrent storescu associations."""
    chunks = [files[i::streams] for i in range(streams)]
    # DCMTK's storescu, not pynetdicom's of the same name in the venv (other options).
    tool = dcmtk_tool("storescu")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [tool, "-aec", aet, "127.0.0.1", str(port), *map(str, chunk)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for chunk in chunks
        if chunk
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {out.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


def push_without_nodelay(files: list[Path], port: int, aet: str, streams: int) -> float:
    """:func:`push` by a storescu whose environment lacks ``TCP_NODELAY`` (DCMTK's default)."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return push(files, port, aet, streams, env)


def push_by_pynetdicom(files: list[Path], port: int, aet: str, streams: int) -> float:
    """Seconds for pynetdicom, default socket options, to send *files* over one association."""
    import pydicom
    from pynetdicom import AE as PynetdicomAE

    assert streams == 1
    datasets = [pydicom.dcmread(f) for f in files]
    ae = PynetdicomAE(ae_title="PYNETDICOM")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        raise RuntimeError("pynetdicom could not associate")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"pynetdicom C-STORE failed: {status}")
    finally:
        assoc.release()
    return time.perf_counter() - started


# -- memory of a process tree (from /proc) ----------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of *pid*."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return found


def receiver_pids(node: NodeProcess) -> list[int]:
    """dicomnode's receiver processes (spawned children of serve)."""
    assert node.proc is not None
    return [
        pid
        for pid in children(node.proc.pid)
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def reset_peak(pids: list[int]) -> None:
    """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak)."""
    for pid in pids:
        with suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mib(pids: list[int]) -> float:
    """The largest VmHWM (peak resident set) among *pids*, in MiB."""
    return max((_status_kib(p, "VmHWM") for p in pids), default=0) / 1024


# -- dicomnode -------------------------------------------------------------------------


@contextmanager
def dicomnode_server(
    workdir: Path, processes: int | None, cores: str | None, fsync: bool = True
) -> Iterator[NodeProcess]:
    """``dicomnode serve`` in a subprocess (optionally pinned to *cores* with taskset)."""
    data = settings_data(workdir)
    data["storage"]["fsync"] = fsync  # False only in the floor section: not durable
    data["node"]["ae_title"] = AE
    data["node"].pop("receiver_processes")
    if processes is not None:
        data["node"]["receiver_processes"] = processes
    data["assembly"] = {"quiet_seconds": 3600}
    data["node"]["max_associations"] = 64
    node = NodeProcess(data, workdir)
    if cores:
        node.prefix = ["taskset", "-c", cores]
    node.start()
    try:
        yield node
    finally:
        node.stop()


def count_rows(workdir: Path) -> int:
    import sqlite3

    with sqlite3.connect(workdir / "dicomnode.db") as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


class Dicomnode:
    """Fresh nodes, one per push (the same UIDs again would measure the resend path)."""

    def __init__(self, tmp: Path, files: list[Path]) -> None:
        self.tmp, self.files = tmp, files
        self.pushes = 0

    def __call__(
        self,
        streams: int,
        processes: int | None = None,
        cores: str | None = None,
        fsync: bool = True,
        sender: Sender = push,
    ) -> Push:
        workdir = self.tmp / f"node-{self.pushes}"
        self.pushes += 1
        with dicomnode_server(workdir, processes, cores, fsync) as node:
            pids = receiver_pids(node)
            reset_peak(pids)
            try:
                seconds = sender(self.files, node.port, AE, streams)
            except RuntimeError:
                print(node.log.read_text()[-3000:], file=sys.stderr)  # what the node saw
                raise
            peak = peak_mib(pids)
        indexed = count_rows(workdir)
        if indexed != len(self.files):
            raise RuntimeError(f"dicomnode indexed {indexed} of {len(self.files)} instances")
        shutil.rmtree(workdir, ignore_errors=True)
        return Push(seconds, peak)


# -- the large object -------------------------------------------------------------------


def _dataset_digest(path: Path) -> str:
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        digest = hashlib.sha256()
        while chunk := fp.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def large_object(tmp: Path, mib: int, scp: StoreSCP, orthanc: Orthanc) -> None:
    frames = max(1, mib * 2)  # 512 KiB per 512x512 16-bit frame
    path = write_large_instance(tmp / "large.dcm", frames)
    size_mib = path.stat().st_size / 2**20
    print(
        f"\nlarge object: one {size_mib:.0f} MiB multi-frame instance ({frames} frames), one association"
    )
    print(f"{'receiver':<10} {'seconds':>8} {'memory growth MiB':>18}  stored copy")
    for name, pids, port, aet in (
        ("storescp", [scp.proc.pid] if scp.proc else [], scp.port, scp.aet),
        ("orthanc", [orthanc.proc.pid] if orthanc.proc else [], orthanc.dicom_port, orthanc.aet),
    ):
        before = max((_status_kib(p, "VmRSS") for p in pids), default=0) / 1024
        reset_peak(pids)
        seconds = push([path], port, aet, 1)
        print(f"{name:<10} {seconds:>8.2f} {peak_mib(pids) - before:>18.0f}")
    orthanc.delete_all()
    workdir = tmp / "node-large"
    with dicomnode_server(workdir, 1, None) as node:
        pids = receiver_pids(node)
        before = max((_status_kib(p, "VmRSS") for p in pids), default=0) / 1024
        reset_peak(pids)
        seconds = push([path], node.port, AE, 1)
        growth = peak_mib(pids) - before
    stored = next((workdir / "storage" / "instances").rglob("*.dcm"))
    same = _dataset_digest(stored) == _dataset_digest(path)
    print(
        f"{'dicomnode':<10} {seconds:>8.2f} {growth:>18.0f}  {'byte-identical' if same else 'DIFFERENT'}"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    path.unlink()


# -- the run ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=1024, help="0: skip the large object")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    with tempfile.TemporaryDirectory(dir=ROOT if os.access(ROOT, os.W_OK) else None) as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        files = write_series(ct_series(n_slices=args.slices, seed=1), tmp / "ct")
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(
            f"data: {len(files)} CT slices 512x512, {size_mb:.0f} MB "
            f"(generated in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} cores"
        )
        results: dict[tuple[str, int], list[Push]] = {}
        scp_dir, orthanc_dir = tmp / "storescp", tmp / "orthanc"
        for d in (scp_dir, orthanc_dir):
            d.mkdir()
        dicomnode = Dicomnode(tmp, files)
        with StoreSCP(output_dir=scp_dir) as scp, Orthanc(workdir=orthanc_dir) as orthanc:
            receivers = receivers_of(files, scp, orthanc, dicomnode)
            if "cstore" in sections:
                for _ in range(args.rounds):
                    for streams in STREAMS:
                        for name, run in receivers.items():
                            results.setdefault((name, streams), []).append(run(streams))
                report(results, len(files))
            if "floor" in sections:
                floor(tmp, files, dicomnode, receivers["storescp"], args.rounds)
            if "senders" in sections:
                senders(tmp, scp, orthanc, args.rounds)
            if "scaling" in sections:
                scaling(dicomnode, args.rounds)
            if "dicomweb" in sections:
                dicomweb(tmp, files, args.rounds)
            if "many" in sections:
                many_associations(tmp)
            if args.large_mib and "large" in sections:
                large_object(tmp, args.large_mib, scp, orthanc)
    return 0


Receiver = Callable[..., Push]  # (streams, sender=push) -> Push


def receivers_of(
    files: list[Path], scp: StoreSCP, orthanc: Orthanc, dicomnode: Dicomnode
) -> dict[str, Receiver]:
    """Push *files* to storescp (emptied first), Orthanc (emptied first) or a fresh dicomnode."""

    def to_scp(streams: int, sender: Sender = push) -> Push:
        shutil.rmtree(scp.output_dir, ignore_errors=True)
        scp.output_dir.mkdir()
        pids = [scp.proc.pid] if scp.proc else []
        reset_peak(pids)
        return Push(sender(files, scp.port, scp.aet, streams), peak_mib(pids))

    def to_orthanc(streams: int, sender: Sender = push) -> Push:
        orthanc.delete_all()
        pids = [orthanc.proc.pid] if orthanc.proc else []
        reset_peak(pids)
        return Push(sender(files, orthanc.dicom_port, orthanc.aet, streams), peak_mib(pids))

    return {"storescp": to_scp, "orthanc": to_orthanc, "dicomnode": dicomnode}


def report(results: dict[tuple[str, int], list[Push]], count: int) -> None:
    print("dicomnode indexed every instance in every push (fsync and index before Success)")
    print(
        f"\n{'receiver':<10} {'assoc':>5} {'median s':>9} {'inst/s':>8} {'vs orthanc':>11} "
        f"{'vs storescp':>12} {'peak MiB':>9}"
    )
    for streams in STREAMS:
        ref_o = statistics.median(p.seconds for p in results[("orthanc", streams)])
        ref_s = statistics.median(p.seconds for p in results[("storescp", streams)])
        for name in ("storescp", "orthanc", "dicomnode"):
            pushes = results[(name, streams)]
            med = statistics.median(p.seconds for p in pushes)
            peak = max(p.peak_mib for p in pushes)
            print(
                f"{name:<10} {streams:>5} {med:>9.2f} {count / med:>8.0f} {med / ref_o:>10.2f}x "
                f"{med / ref_s:>11.2f}x {peak:>9.0f}"
            )
    print("(ratios are time ratios: below 1.00x is faster than the reference)")


# -- DICOMweb ---------------------------------------------------------------------------

STOW_TOKEN = "bench-store-token-0123456789"
BOUNDARY = "dicomnode-bench-boundary"


def stow(url: str, files: list[Path], headers: dict[str, str] | None = None) -> float:
    """Seconds to STOW-RS *files* in one request, the body streamed from the files."""
    import requests

    def body() -> Iterator[bytes]:
        for path in files:
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield path.read_bytes()
            yield b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    started = time.perf_counter()
    response = requests.post(
        url, data=body(), headers={"Content-Type": content_type, **(headers or {})}, timeout=900
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"STOW-RS to {url}: HTTP {response.status_code} {response.text[:300]}")
    return seconds


@contextmanager
def stow_node(workdir: Path) -> Iterator[tuple[NodeProcess, str]]:
    """dicomnode serve with STOW-RS on; yields it and its /dicomweb/studies URL."""
    from dicomnode.testing.peers import free_port

    data = settings_data(workdir)
    data["node"]["ae_title"] = AE
    data["node"].pop("receiver_processes")
    data["assembly"] = {"quiet_seconds": 3600}
    port = free_port()
    data["api"] = {
        "enabled": True,
        "port": port,
        "stow": True,
        "tokens": [{"token": STOW_TOKEN, "role": "store"}],
    }
    node = NodeProcess(data, workdir)
    node.start()
    _wait_http(f"http://127.0.0.1:{port}/healthz")
    try:
        yield node, f"http://127.0.0.1:{port}/dicomweb/studies"
    finally:
        node.stop()


def _wait_http(url: str, timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout:g} s")
        time.sleep(0.1)


def dicomweb(tmp: Path, files: list[Path], rounds: int) -> None:
    """STOW-RS into dicomnode and Orthanc; WADO-RS against C-MOVE from Orthanc into dicomnode."""
    bearer = {"Authorization": f"Bearer {STOW_TOKEN}"}
    stows: dict[str, list[float]] = {"orthanc": [], "dicomnode": []}
    pulls: dict[str, list[float]] = {"C-MOVE": [], "WADO-RS": []}
    with Orthanc(workdir=tmp / "orthanc-web", dicomweb=True) as orthanc:
        for i in range(rounds):
            orthanc.delete_all()
            stows["orthanc"].append(stow(f"{orthanc.dicomweb_url}/studies", files))
            stored = orthanc.client.get("/statistics").json()["CountInstances"]
            if stored != len(files):
                raise RuntimeError(f"Orthanc stored {stored} of {len(files)} by STOW-RS")
            workdir = tmp / f"stow-{i}"
            with stow_node(workdir) as (_, url):
                stows["dicomnode"].append(stow(url, files, bearer))
            if count_rows(workdir) != len(files):
                raise RuntimeError("dicomnode did not index every STOW-RS instance")
            shutil.rmtree(workdir, ignore_errors=True)
        # Orthanc now holds the study: fetch it into fresh nodes both ways.
        for i in range(rounds):
            pulls["C-MOVE"].append(_pull_by_move(tmp / f"move-{i}", orthanc, files))
            pulls["WADO-RS"].append(_pull_by_wado(tmp / f"wado-{i}", orthanc, files))
    n = len(files)
    ref = statistics.median(stows["orthanc"])
    print(f"\nSTOW-RS, {n} slices in one request (median of {rounds}):")
    for name, seconds in stows.items():
        med = statistics.median(seconds)
        print(f"  {name:<10} {med:6.2f} s {n / med:6.0f} inst/s {med / ref:5.2f}x Orthanc")
    ref = statistics.median(pulls["C-MOVE"])
    print(f"retrieve of the {n}-slice study from Orthanc into dicomnode (stored, indexed):")
    for name, seconds in pulls.items():
        med = statistics.median(seconds)
        print(f"  {name:<10} {med:6.2f} s {n / med:6.0f} inst/s {med / ref:5.2f}x C-MOVE")


def _study_match(source: Source, files: list[Path]) -> StudyMatch:
    import pydicom

    from dicomnode.retrieval import StudyQuery

    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    (match,) = source.find_studies(StudyQuery(study_instance_uid=uid))
    return match


def _pull_by_move(workdir: Path, orthanc: Orthanc, files: list[Path]) -> float:
    from dicomnode.config import NodeConfig, SourceConfig
    from dicomnode.retrieval import open_source

    with dicomnode_server(workdir, None, None) as node:
        orthanc.add_modality("bench", AE, "127.0.0.1", node.port)
        source = open_source(
            SourceConfig.model_validate(orthanc.source()), NodeConfig(ae_title=AE, port=node.port)
        )
        match = _study_match(source, files)
        started = time.perf_counter()
        # C-MOVE: the instances arrive at the node's receiver, no store is used here.
        source.retrieve_study(match, None, lambda: False, float("inf"))  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    if count_rows(workdir) != len(files):
        raise RuntimeError("C-MOVE: dicomnode did not index every instance")
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def _pull_by_wado(workdir: Path, orthanc: Orthanc, files: list[Path]) -> float:
    from dicomnode.config import Settings
    from dicomnode.database import upgrade
    from dicomnode.receivers import make_store
    from dicomnode.retrieval import open_source

    data = settings_data(workdir)
    data["sources"] = [{"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url}]
    settings = Settings.model_validate(data)
    upgrade(settings.database.url)
    store, engine = make_store(settings)
    source = open_source(settings.sources[0], settings.node)
    match = _study_match(source, files)
    started = time.perf_counter()
    source.retrieve_study(match, store, lambda: False, float("inf"))
    seconds = time.perf_counter() - started
    engine.dispose()
    if count_rows(workdir) != len(files):
        raise RuntimeError("WADO-RS: dicomnode did not index every instance")
    shutil.rmtree(workdir, ignore_errors=True)
    return seconds


def many_associations(tmp: Path, streams: int = 16, each: int = 100) -> None:
    """16 concurrent associations of 100 instances each: every one stored, memory bounded."""
    files = write_series(
        ct_series(n_slices=streams * each, rows=256, columns=256, seed=5), tmp / "many"
    )
    workdir = tmp / "node-many"
    with dicomnode_server(workdir, None, None) as node:
        pids = receiver_pids(node)
        reset_peak(pids)
        seconds = push(files, node.port, AE, streams)  # raises unless every storescu succeeded
        peak = peak_mib(pids)
    stored = count_rows(workdir)
    print(
        f"\ndicomnode, {streams} associations x {each} instances (256x256): {seconds:.2f} s, "
        f"{stored}/{len(files)} stored, every status Success, largest receiver peak {peak:.0f} MiB"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(tmp / "many", ignore_errors=True)


def durable_writes(tmp: Path, files: list[Path]) -> float:
    """Seconds to write *files*' bytes to new files, each fsynced, with no network: the disk's part."""
    folder = tmp / "durable"
    folder.mkdir()
    payloads = [f.read_bytes() for f in files]
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        fd = os.open(folder / f"{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return seconds


def floor(
    tmp: Path,
    files: list[Path],
    dicomnode: Dicomnode,
    storescp: Callable[[int], Push],
    rounds: int,
) -> None:
    """One association: how much of dicomnode's time is the fsync that storescp does not do.

    storescu waits for each C-STORE response before it sends the next
    instance, and dicomnode answers only after the instance is fsynced: over
    one association nothing can overlap the disk's flush. So dicomnode's
    time cannot go below storescp's plus the same files written and fsynced
    one by one. Shown with dicomnode's fsync off (``storage.fsync = false``:
    not durable, never for a real node) to separate its own work from the disk's.
    """
    cases: dict[str, Callable[[], float]] = {
        "storescp": lambda: storescp(1).seconds,
        "dicomnode": lambda: dicomnode(1).seconds,
        "dicomnode, fsync off (not durable)": lambda: dicomnode(1, fsync=False).seconds,
        "disk: the same files written+fsynced, no network": lambda: durable_writes(tmp, files),
    }
    seconds: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, run in cases.items():
            seconds.setdefault(name, []).append(run())
    med = {name: statistics.median(values) for name, values in seconds.items()}
    ref = med["storescp"]
    print(f"\none association, {len(files)} instances: where the time goes (median of {rounds})")
    for name, value in med.items():
        print(f"  {name:<50} {value:6.2f} s  {value / ref:5.2f}x storescp")
    bound = ref + med["disk: the same files written+fsynced, no network"]
    print(
        f"  lower bound for a receiver that fsyncs before Success: {bound:.2f} s "
        f"({bound / ref:.2f}x storescp)"
    )


def senders(tmp: Path, scp: StoreSCP, orthanc: Orthanc, rounds: int, count: int = 300) -> None:
    """One association from senders that leave Nagle on, as most do by default.

    Such a sender writes a C-STORE's command and data set as separate PDUs,
    and Nagle holds a segment shorter than the MSS until what went before is
    acknowledged; a receiver that delays that ACK (Linux: up to 40 ms) stalls
    the instance. The instances here are 128x128 (33 kB): on loopback the MSS
    is 64 KiB, so only small objects show what, with a network's 1460-byte
    MSS, happens at the end of objects of every size.
    """
    files = write_series(ct_series(n_slices=count, rows=128, columns=128, seed=7), tmp / "small")
    # Its own folder: node workdirs are numbered per Dicomnode.
    receivers = receivers_of(files, scp, orthanc, Dicomnode(tmp / "senders", files))
    cases: dict[str, Sender] = {
        "DCMTK storescu, no TCP_NODELAY": push_without_nodelay,
        "pynetdicom, default socket": push_by_pynetdicom,
        "DCMTK storescu, TCP_NODELAY=1": push,
    }
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for sender_name, sender in cases.items():
            for name, run in receivers.items():
                seconds.setdefault((sender_name, name), []).append(run(1, sender=sender).seconds)
    print(
        f"\none association, {count} instances of 128x128 (33 kB), by senders with Nagle on, "
        f"and storescu without it for reference (median of {rounds})"
    )
    for sender_name in cases:
        ref = statistics.median(seconds[(sender_name, "orthanc")])
        for name in receivers:
            med = statistics.median(seconds[(sender_name, name)])
            print(
                f"  {sender_name:<31} -> {name:<10} {med:6.2f} s "
                f"{count / med:6.0f} inst/s  {med / ref:5.2f}x orthanc"
            )


def scaling(dicomnode: Dicomnode, rounds: int) -> None:
    """dicomnode over four associations with its receivers and cores restricted."""
    print("\ndicomnode, 4 associations, receiver processes and cores (taskset):")
    cases = [(1, "0"), (1, "0,1"), (2, "0,1")]
    seconds: dict[tuple[int, str], list[float]] = {}
    for _ in range(rounds):
        for processes, cores in cases:
            seconds.setdefault((processes, cores), []).append(
                dicomnode(4, processes=processes, cores=cores).seconds
            )
    reference = statistics.median(seconds[cases[0]])
    for processes, cores in cases:
        med = statistics.median(seconds[(processes, cores)])
        print(
            f"  {processes} receiver process(es) on core(s) {cores:<4} {med:6.2f} s "
            f"({reference / med:4.2f}x the throughput of 1 process on 1 core)"
        )


if __name__ == "__main__":
    sys.exit(main())
