"""The ``dicomnode`` command line, run as an admin would (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NODE_AE, sample_paths


def dicomnode(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env or dict(os.environ),
    )


GOOD = """
[node]
ae_title = "DICOMNODE"
port = 11112
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
[[routes]]
pipeline = "lung_nodule"
match = { Modality = "CT", SliceThickness = { max = 2.5 }, SeriesDescription = { regex = "(?i)chest" } }
send_to = ["pacs", "sender"]
[pipelines.lung_nodule]
bundle = "models/lung_nodule_ct"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nport = 70000\n", "node.port: Input should be less than or equal to 65535"),
        ("[node]\nprot = 1\n", "node.prot: unknown key"),
        ('[node]\nae_title = "BAD\\\\AE"\n', "node.ae_title: must be 1-16 printable characters"),
        (
            '[[routes]]\npipeline = "x"\nsend_to = ["nowhere"]\n',
            "routes.0.send_to: unknown destination 'nowhere'",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { Modality = { regex = "(" } }\n',
            "routes.0.match: Modality: bad regex",
        ),
        (
            '[[routes]]\npipeline = "x"\nmatch = { Modallity = "CT" }\n',
            "'Modallity' is not a DICOM keyword",
        ),
        ("[node.tls]\nenabled = true\n", "node.tls: certificate and private_key are required"),
        (
            '[database]\nurl = "mysql://x"\n',
            "database.url: must be a sqlite:/// or postgresql+psycopg:// URL",
        ),
        ("node = [", "not valid TOML"),
    ],
)
def test_config_check_names_the_bad_key_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_config_check_accepts_the_spec_example(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK (1 route(s), 1 destination(s)" in result.stdout


def test_environment_overrides_config_and_default_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "dicomnode.toml").write_text(f'[database]\nurl = "sqlite:///{tmp_path}/a.db"\n')
    env = dict(os.environ, DICOMNODE_DATABASE__URL=f"sqlite:///{tmp_path}/b.db")
    result = dicomnode("db", "upgrade", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.db").exists() and not (tmp_path / "a.db").exists()
    bad = dict(os.environ, DICOMNODE_NODE__PORT="not-a-port")
    result = dicomnode("jobs", "list", cwd=tmp_path, env=bad)
    assert result.returncode == 2 and "node.port" in result.stderr


def test_echo_send_and_listings_against_a_running_node(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    node = start_node(settings)
    peer = f"{NODE_AE}@127.0.0.1:{node.receiver.port}"
    echo = dicomnode("echo", peer)
    assert echo.returncode == 0 and "C-ECHO Success" in echo.stdout
    folder = tmp_path / "study"
    folder.mkdir()
    for path in sample_paths()[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    sent = dicomnode("send", str(folder), "--to", peer)
    assert sent.returncode == 1  # one file was not DICOM: reported, the others went
    assert "sent 2 of 3 file(s)" in sent.stdout
    assert "notes.txt: not a DICOM file" in sent.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n')
    studies = dicomnode("studies", "list", "--json", "--config", str(config))
    assert studies.returncode == 0
    assert len(json.loads(studies.stdout)) == 2
    jobs = dicomnode("jobs", "list", "--json", "--config", str(config))
    assert json.loads(jobs.stdout) == []
    missing = dicomnode("jobs", "show", "99", "--config", str(config))
    assert missing.returncode == 2 and missing.stderr.strip() == "dicomnode: no job with id 99"


def test_echo_to_nobody_fails_cleanly() -> None:
    result = dicomnode("echo", "NOBODY@127.0.0.1:9")
    assert result.returncode == 1
    assert "did not answer" in result.stdout
    bad = dicomnode("echo", "nonsense")
    assert bad.returncode == 2 and "expected AET@HOST:PORT" in bad.stderr
