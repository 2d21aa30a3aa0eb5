"""Real DICOM and database peers on free loopback ports, for tests and benchmarks.

DCMTK tools and Orthanc run with ``TCP_NODELAY=1`` in their environment:
without it they stall ~40 ms per object on loopback.

DCMTK's command-line tools are found with :func:`dcmtk_tool`, by what they say
they are rather than by PATH order: pynetdicom installs its own ``storescu``,
``storescp``, ``echoscu``, ``findscu``, ``movescu`` and ``getscu`` into the
virtual environment's ``bin``, with other options, and they come first whenever
the environment is on PATH.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # httpx is a dev dependency and this module ships in the package: Orthanc
    # imports it when one is made, so importing this module needs no httpx.
    import httpx

NODELAY_ENV = dict(os.environ, TCP_NODELAY="1")

# Where Debian's dcmtk package puts its tools: searched after PATH, so that a
# PATH holding only the virtual environment (or nothing useful) still finds them.
DCMTK_FALLBACK_DIRS: tuple[str, ...] = ("/usr/bin",)

# Every DCMTK tool starts its --version output with an RCS-style banner such as
# "$dcmtk: storescu v3.6.7 2022-04-22 $"; pynetdicom's apps print an argparse
# usage error for --version alone (they require their positional arguments).
_DCMTK_BANNER = re.compile(r"^\$dcmtk: \S+ v\S+", re.MULTILINE)


def _version_banner(path: str) -> tuple[bool, str]:
    """Whether the executable at *path* says it is DCMTK, and its first output line."""
    try:
        run = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    output = run.stdout + run.stderr
    first = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
    return bool(_DCMTK_BANNER.search(output)), first


@functools.cache
def dcmtk_tool(name: str) -> str:
    """Path of DCMTK's command-line tool *name*, found by identity, not by PATH order.

    Parameters
    ----------
    name
        Tool name, e.g. ``"storescu"``, ``"storescp"``, ``"echoscu"``, ``"dsrdump"``.

    Returns
    -------
    str
        Absolute path of the first executable named *name*, in PATH order then
        :data:`DCMTK_FALLBACK_DIRS`, whose ``--version`` output carries DCMTK's
        ``$dcmtk: <name> v<version>`` banner. Cached per name: the search runs
        each candidate once.

    Raises
    ------
    RuntimeError
        When no candidate is DCMTK's: the message names the tool, lists what was
        found instead (pynetdicom's apps, typically) and says that the Debian
        package ``dcmtk`` is needed.
    """
    seen: set[str] = set()
    others: list[str] = []
    for folder in [*os.get_exec_path(), *DCMTK_FALLBACK_DIRS]:
        if not folder:  # an empty PATH entry means the working directory: not a tool folder
            continue
        candidate = os.path.abspath(os.path.join(folder, name))
        real = os.path.realpath(candidate)
        # /bin is often a link to /usr/bin: run each actual file once.
        if real in seen or not os.path.isfile(real) or not os.access(real, os.X_OK):
            continue
        seen.add(real)
        is_dcmtk, first_line = _version_banner(candidate)
        if is_dcmtk:
            return candidate
        others.append(f"{candidate} (--version: {first_line!r})")
    where = "on PATH" + (f" or in {', '.join(DCMTK_FALLBACK_DIRS)}" if DCMTK_FALLBACK_DIRS else "")
    found = f"found instead: {', '.join(others)}" if others else "no executable of that name"
    raise RuntimeError(
        f"DCMTK's {name} not found {where}; {found}. "
        "Install the Debian package dcmtk (apt-get install dcmtk)."
    )


def free_port() -> int:
    """A free TCP port on loopback.

    Returns
    -------
    int
        A port the OS just handed out; free until someone else binds it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll *predicate* until true; raise with the tail of *log* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready in {timeout:g} s\n{tail}")


# storescu proposes one compressed transfer syntax per run, chosen by option.
_STORESCU_TS_OPTION = {
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}


def _transfer_syntax(path: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return ""


def storescu(
    paths: Sequence[str | os.PathLike[str]],
    *,
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK storescu so that every file goes in its own transfer syntax.

    Uncompressed files go in one run; each compressed transfer syntax gets its own
    run with the option that proposes it. Folders are scanned recursively.

    Parameters
    ----------
    paths
        Files and folders to send.
    host, port, called_aet
        The receiver.
    calling_aet
        Our AE title.
    extra_args
        More storescu options, placed before host and port.
    timeout
        Seconds per storescu run.

    Returns
    -------
    subprocess.CompletedProcess
        The runs combined: the first non-zero return code and all output.
    """
    tool = dcmtk_tool("storescu")
    files: list[Path] = []
    for raw in map(Path, paths):
        files.extend(sorted(p for p in raw.rglob("*") if p.is_file()) if raw.is_dir() else [raw])
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(_STORESCU_TS_OPTION.get(_transfer_syntax(path), ""), []).append(path)
    code, out, err = 0, "", ""
    for option, group in groups.items():
        args = [tool, "-aet", calling_aet, "-aec", called_aet, *([option] if option else [])]
        args += [*extra_args, host, str(port), *map(str, group)]
        run = subprocess.run(args, env=NODELAY_ENV, capture_output=True, text=True, timeout=timeout)
        code = code or run.returncode
        out, err = out + run.stdout, err + run.stderr
    return subprocess.CompletedProcess([tool], code, out, err)


def echoscu(
    *, host: str, port: int, called_aet: str, calling_aet: str = "ECHOSCU", timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK echoscu once (one C-ECHO, 5 s association timeout).

    Returns
    -------
    subprocess.CompletedProcess
        Return code 0 when the peer answered Success.
    """
    tool = dcmtk_tool("echoscu")
    args = [tool, "-aet", calling_aet, "-aec", called_aet, "-to", "5", host, str(port)]
    return subprocess.run(args, env=NODELAY_ENV, capture_output=True, text=True, timeout=timeout)


def _dciodvfy_lines(path: str | os.PathLike[str]) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).splitlines()


def dciodvfy(path: str | os.PathLike[str]) -> list[str]:
    """dicom3tools' verdict on a file: the lines that report errors (warnings ignored).

    dciodvfy is dicom3tools', not DCMTK's, and nothing else installs one: found on PATH.

    Returns
    -------
    list of str
        Error lines; empty when the file is valid for its IOD.
    """
    return [line for line in _dciodvfy_lines(path) if line.startswith("Error") or " Error " in line]


def dciodvfy_warnings(path: str | os.PathLike[str], *, declared_schemes: bool = True) -> list[str]:
    """dciodvfy's warnings on a file, except those about declared private coding schemes.

    dciodvfy knows a fixed list of Coding Scheme Designators and warns "Unrecognized
    defined term" for any other, even one the object declares in its Coding Scheme
    Identification Sequence (PS3.3 C.12.1). With *declared_schemes*, those warnings
    are dropped for designators the file declares, and only for them.
    """
    warnings = [line for line in _dciodvfy_lines(path) if line.startswith("Warning")]
    if not declared_schemes:
        return warnings
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    declared = {str(i.CodingSchemeDesignator) for i in ds.get("CodingSchemeIdentificationSequence", [])}
    unrecognised = re.compile(
        r"^Warning - Unrecognized defined term <(?P<term>[^>]+)> for value 1 of attribute "
        r"<Coding Scheme Designator>$"
    )
    return [
        line
        for line in warnings
        if not ((m := unrecognised.match(line)) and m.group("term") in declared)
    ]


class _Process:
    """A server process with a temp dir, started and stopped as a context manager."""

    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class StoreSCP(_Process):
    """DCMTK storescp writing received files into *output_dir* (``ignore``: discard them)."""

    def __init__(
        self, output_dir: Path | None = None, *, aet: str = "STORESCP", ignore: bool = False
    ) -> None:
        self.aet = aet
        self.port = free_port()
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="storescp-"))
        self.ignore = ignore

    def start(self) -> None:
        tool = dcmtk_tool("storescp")
        args = [tool, "-aet", self.aet, "--promiscuous", "-od", str(self.output_dir)]
        if self.ignore:
            args.append("--ignore")
        self.proc = subprocess.Popen(
            [*args, str(self.port)],
            env=NODELAY_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(
            lambda: echoscu(host="127.0.0.1", port=self.port, called_aet=self.aet).returncode == 0,
            15,
            "storescp",
        )


class Orthanc(_Process):
    """The Debian Orthanc server with its own storage, DICOM and HTTP ports."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, list[Any]] | None = None,
        dicomweb: bool = False,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = self.workdir / "orthanc.log"
        config = {
            "Name": "dicomnode-test",
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "StorageDirectory": str(self.workdir / "db"),
            "IndexDirectory": str(self.workdir / "db"),
            "DicomCheckCalledAet": False,
            "DicomModalities": modalities or {},
            "DicomScuTimeout": 10,
            "StableAge": 1,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "ConcurrentJobs": 2,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"] if dicomweb else [],
        }
        self.config_path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=1))
        import httpx

        self.client: httpx.Client = httpx.Client(base_url=self.url, timeout=60, trust_env=False)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["Orthanc", str(self.config_path)],
                env=NODELAY_ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait(self._alive, 30, "Orthanc", self.log)

    def _alive(self) -> bool:
        import httpx

        try:
            return self.client.get("/system").status_code == 200
        except httpx.HTTPError:
            return False

    def destination(self, name: str = "pacs") -> dict[str, Any]:
        """This Orthanc as a dicomnode ``[[destinations]]`` entry."""
        return {"name": name, "ae_title": self.aet, "host": "127.0.0.1", "port": self.dicom_port}

    def upload(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """POST one DICOM file to /instances."""
        response = self.client.post("/instances", content=Path(path).read_bytes())
        response.raise_for_status()
        return dict(response.json())

    def studies(self) -> list[str]:
        """Orthanc ids of all studies."""
        return list(self.client.get("/studies").json())

    def find_study(self, study_instance_uid: str) -> str | None:
        """Orthanc id of the study with this Study Instance UID, or None."""
        found = self.client.post("/tools/lookup", content=study_instance_uid).json()
        for item in found:
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def instances_of_study(self, orthanc_id: str) -> list[dict[str, Any]]:
        """Instances of a study with their MainDicomTags."""
        return list(self.client.get(f"/studies/{orthanc_id}/instances").json())

    def series_of_study(self, orthanc_id: str) -> list[dict[str, Any]]:
        """Series of a study with their MainDicomTags."""
        return list(self.client.get(f"/studies/{orthanc_id}/series").json())

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DICOM peer Orthanc may send to."""
        self.client.put(
            f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port}
        ).raise_for_status()

    def store_to(
        self, modality: str, resources: list[str], synchronous: bool = True
    ) -> dict[str, Any]:
        """C-STORE Orthanc resources (ids) to a declared modality."""
        response = self.client.post(
            f"/modalities/{modality}/store",
            json={"Resources": resources, "Synchronous": synchronous},
        )
        response.raise_for_status()
        return dict(response.json())

    def echo(self, modality: str) -> bool:
        """C-ECHO from Orthanc to a declared modality."""
        return self.client.post(f"/modalities/{modality}/echo", json={}).status_code == 200

    def delete_all(self) -> None:
        """Remove every patient (and so every instance)."""
        for patient in self.client.get("/patients").json():
            self.client.delete(f"/patients/{patient}")


def _pg_bin(name: str) -> str:
    """The newest installed PostgreSQL server binary *name* (Debian keeps them off PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: install the postgresql package")
    return path


class PostgresServer(_Process):
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
        self.port = free_port()
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o755)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres"
        self.url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/dicomnode"
        self.dsn = f"host=127.0.0.1 port={self.port} user={self.user} dbname=dicomnode"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync"
        )
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "pg.log"),
            "-w",
            "start",
        )
        self._running = True
        self.create_database("dicomnode")

    def create_database(self, name: str) -> str:
        """Create a database; return its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if getattr(self, "_running", False):
            subprocess.run(
                [
                    *self.as_user,
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)
