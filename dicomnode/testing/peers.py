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

import asyncio
import functools
import glob
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free TCP port on loopback, never one this process handed out before.

    The OS may give the same ephemeral port to two binds in a row once the
    first socket is closed; a peer that needs two ports (Orthanc: DICOM and
    HTTP) would then get one twice and fail to start.

    Returns
    -------
    int
        A port the OS just handed out; free until someone else binds it.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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
        config: dict[str, Any] | None = None,
        tls: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.tls = tls
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = self.workdir / "orthanc.log"
        config = {**self._tls_config(tls), **(config or {})}
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
            **(config or {}),  # e.g. users and passwords, DicomAlwaysAllowFind
        }
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        import httpx

        users = (config or {}).get("RegisteredUsers") or {}
        auth = (
            next(iter(users.items()))
            if users and config and config.get("AuthenticationEnabled")
            else None
        )
        self.client: httpx.Client = httpx.Client(
            base_url=self.url,
            timeout=60,
            trust_env=False,
            auth=auth,
        )

    def _tls_config(self, tls: Path | None) -> dict[str, Any]:
        """DICOM TLS with *tls*'s ``server.pem``/``server.key`` (CA ``ca.pem``).

        Client certificates are not required, so a node without one can
        connect. HTTP stays plain: Debian's Orthanc 1.10.1 crashes (SIGSEGV) on
        its first HTTPS request with OpenSSL 3, so HTTPS is tested through a
        :class:`TLSTerminator` in front of it, as sites often run nginx.
        """
        if tls is None:
            return {}
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(tls / "server.pem"),
            "DicomTlsPrivateKey": str(tls / "server.key"),
            "DicomTlsTrustedCertificates": str(tls / "ca.pem"),
            "DicomTlsRemoteCertificateRequired": False,
        }

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

    def source(self, name: str = "pacs", **keys: Any) -> dict[str, Any]:
        """This Orthanc as a DIMSE ``[[sources]]`` entry (*keys*: e.g. ``retrieve="get"``).

        With TLS, the entry turns it on and trusts the test CA.
        """
        tls = {"tls": True, "ca_certificates": str(self.tls / "ca.pem")} if self.tls else {}
        return {**self.destination(name), "kind": "dimse", **tls, **keys}

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root of the plugin (``dicomweb=True``)."""
        return f"{self.url}/dicom-web"

    def kill(self) -> None:
        """SIGKILL: the process ends mid-whatever, as in a crash or power loss."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

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


class TLSTerminator:
    """HTTPS in front of a plain HTTP server on loopback, as nginx would be at a site.

    ``https://127.0.0.1:{port}`` forwards every byte, decrypted, to *target*;
    a client that does not trust *certificate* fails its handshake here.
    asyncio does the TLS (one event loop in a daemon thread), which is safe
    where reading and writing one ``ssl.SSLSocket`` from two threads is not.
    """

    def __init__(self, target: tuple[str, int], certificate: Path, private_key: Path) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(certificate), str(private_key))
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._quiet_handshake_failures)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @staticmethod
    def _quiet_handshake_failures(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A client refusing our certificate is what some tests want, not an error to print."""
        if not isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            loop.default_exception_handler(context)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, ssl=self._context
        )

    def __enter__(self) -> TLSTerminator:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class DcmQRSCP(_Process):
    """DCMTK's dcmqrscp: a second, independent Query/Retrieve SCP (image archive).

    Parameters
    ----------
    workdir
        Its configuration and database folder.
    aet
        Its AE title.
    peers
        Move destinations it knows: name -> (AE title, host, port). An AE title
        missing here is answered 0xA801 (move destination unknown).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        aet: str = "DCMQRSCP",
        peers: dict[str, tuple[str, str, int]] | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="dcmqrscp-"))
        self.aet = aet
        self.port = free_port()
        self.peers = dict(peers or {})
        self.database = self.workdir / "db"
        self.config_path = self.workdir / "dcmqrscp.cfg"

    def _write_config(self) -> None:
        self.database.mkdir(parents=True, exist_ok=True)
        hosts = "\n".join(f"{n} = ({a}, {h}, {p})" for n, (a, h, p) in self.peers.items())
        self.config_path.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n"
            "VendorTable BEGIN\nVendorTable END\n"
            f"AETable BEGIN\n{self.aet} {self.database} RW (1000, 1024mb) ANY\nAETable END\n"
        )

    def start(self) -> None:
        self._write_config()
        self.proc = subprocess.Popen(
            [dcmtk_tool("dcmqrscp"), "-c", str(self.config_path), "-dhl", str(self.port)],
            env=NODELAY_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(
            lambda: echoscu(host="127.0.0.1", port=self.port, called_aet=self.aet).returncode == 0,
            15,
            "dcmqrscp",
        )

    def load(self, paths: list[Path]) -> None:
        """Store files into the archive (C-STORE by DCMTK storescu)."""
        result = storescu(paths, host="127.0.0.1", port=self.port, called_aet=self.aet)
        if result.returncode != 0:
            raise RuntimeError(f"storescu into dcmqrscp failed: {result.stderr[-500:]!r}")

    def source(self, name: str = "archive", **keys: Any) -> dict[str, Any]:
        """This archive as a DIMSE ``[[sources]]`` entry."""
        return {"name": name, "ae_title": self.aet, "host": "127.0.0.1", "port": self.port, **keys}


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


def write_large_instance(
    path: Path,
    frames: int,
    *,
    rows: int = 512,
    columns: int = 512,
    study_instance_uid: str | None = None,
) -> Path:
    """A Multi-frame Grayscale Word Secondary Capture of *frames* 16-bit frames, written in chunks.

    The pixel data (``frames * rows * columns * 2`` bytes, e.g. 1 GiB for 2048
    frames of 512x512) is never in memory at once: the header is written with
    pydicom, the pixel data element appended frame by frame (a pattern that
    differs per frame, so a byte-identical copy can be checked).
    """
    import struct

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LARGE1", "Large^Object", "OT"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261201", "120000", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "", "1", 1, 1
    ds.ConversionType, ds.PatientSex, ds.PatientBirthDate = "WSD", "O", ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 33.0
    ds.save_as(path, enforce_file_format=True)
    frame = np.arange(rows * columns, dtype=np.uint16).reshape(rows, columns) % 4096
    with Path(path).open("ab") as out:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * rows * columns * 2))
        for n in range(frames):
            out.write(((frame + n) % 4096).astype("<u2").tobytes())
    return Path(path)
