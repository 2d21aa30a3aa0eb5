"""Node settings for tests and benchmarks: everything under one folder, fast timers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dicomnode.testing.peers import free_port

NODE_AE = "TESTNODE"


def settings_data(root: Path, port: int | None = None) -> dict[str, Any]:
    """A node config with everything under *root*, as a dict (TOML-shaped).

    Parameters
    ----------
    root
        Folder for storage and the SQLite database.
    port
        DICOM port of the node; a free loopback port when None.

    Returns
    -------
    dict
        Sections as in ``dicomnode.toml``, ready for ``Settings.model_validate``.
        Timers are short so that assembly, workers and delivery react within a
        test's patience; the API is off.
    """
    return {
        # The receiver in the test's own process, so a test can reach into it (monkeypatch).
        "node": {
            "ae_title": NODE_AE,
            "host": "127.0.0.1",
            "port": port or free_port(),
            "receiver_processes": 0,
        },
        "storage": {"path": str(root / "storage"), "min_free_bytes": 0},
        "database": {"url": f"sqlite:///{root / 'dicomnode.db'}"},
        "assembly": {"quiet_seconds": 1.0, "early_quiet_seconds": 0.2, "check_interval": 0.2},
        "workers": {
            "processes": 0,
            "poll_seconds": 0.2,
            "lease_seconds": 10,
            "heartbeat_seconds": 1,
        },
        "delivery": {"check_interval": 0.2, "backoff_seconds": 0.5, "backoff_max_seconds": 2},
        "api": {"enabled": False},
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_document(data: dict[str, Any]) -> str:
    """*data* (``settings_data`` shaped) as a ``dicomnode.toml`` text.

    Top-level tables become ``[section]`` (one level of sub-tables:
    ``[pipelines.NAME]``), lists of tables ``[[routes]]``; everything else is
    written inline.
    """
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                lines += [f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items())]
        else:
            lines.insert(0, f"{key} = {_toml_value(value)}")
    for name, table in tables:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines += [f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in plain.items())]
        for sub, subtable in table.items():
            if isinstance(subtable, dict):
                lines += [f"[{name}.{sub}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"


class NodeProcess:
    """``dicomnode serve`` as an admin runs it: its own process, a config file, its own log.

    Parameters
    ----------
    data
        The configuration (``settings_data`` shaped), written to ``root/dicomnode.toml``.
    root
        Folder for the config and the node's stderr log.
    env
        Extra environment (e.g. ``PYTHONPATH`` for an installed plugin).
    """

    def __init__(self, data: dict[str, Any], root: Path, env: dict[str, str] | None = None):
        self.data = data
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "dicomnode.toml"
        self.config.write_text(toml_document(data), encoding="utf-8")
        self.log = self.root / "serve.log"
        self.env = {**os.environ, **(env or {})}
        self.prefix: list[str] = []  # e.g. ["taskset", "-c", "0"] to pin serve and its children
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The node's DICOM port."""
        return int(self.data["node"]["port"])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run another ``dicomnode`` command against this node's config."""
        return subprocess.run(
            [sys.executable, "-m", "dicomnode.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def start(self, timeout: float = 60) -> NodeProcess:
        """Start ``serve`` and wait until it answers C-ECHO."""
        from dicomnode.testing.peers import echoscu

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "dicomnode.cli",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        ae = str(self.data["node"]["ae_title"])
        while echoscu(host="127.0.0.1", port=self.port, called_aet=ae).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"dicomnode serve did not start:\n{tail}")
            time.sleep(0.2)
        return self

    def jobs(self) -> list[dict[str, Any]]:
        """``jobs list --json``, each job with its timeline (``jobs show``)."""
        listed = self.cli("jobs", "list", "--json")
        if listed.returncode != 0:
            raise RuntimeError(listed.stderr)
        shown = []
        for job in json.loads(listed.stdout):
            detail = self.cli("jobs", "show", str(job["id"]), "--json")
            shown.append(json.loads(detail.stdout)[0] if detail.returncode == 0 else job)
        return shown

    def wait_for_jobs(
        self, count: int = 1, timeout: float = 300, done: tuple[str, ...] = ("done", "failed")
    ) -> list[dict[str, Any]]:
        """Wait until *count* jobs are in one of the *done* states; return them with timelines."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if len(jobs) >= count and all(j["status"] in done for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not finished in {timeout:g} s: {jobs}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as the OOM killer does: no clean-up runs."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM and wait (what systemd does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
