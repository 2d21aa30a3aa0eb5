"""The ``dicomnode`` command line, run as an admin would (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


# -- the schema belongs to `db upgrade` and `serve` ------------------------------------------


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nurl = "{url}"\n')
    return path


@pytest.mark.parametrize(
    "command",
    [("jobs", "list"), ("jobs", "show", "1"), ("studies", "list"), ("jobs", "retry", "1")],
)
def test_read_only_commands_do_not_create_a_database(tmp_path: Path, command: tuple[str]) -> None:
    database = tmp_path / "never.db"
    result = dicomnode(*command, "--config", str(_config(tmp_path, f"sqlite:///{database}")))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dicomnode: no database at sqlite:///{database}: start `dicomnode serve` or run "
        "`dicomnode db upgrade` first"
    ]
    assert not database.exists()


def test_commands_against_an_old_schema_say_so_and_change_nothing(tmp_path: Path) -> None:
    from dicomnode.database import current_revision, head_revision, make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    config = str(_config(tmp_path, url))
    for command in (("jobs", "list"), ("studies", "list", "--json"), ("worker",)):
        result = dicomnode(*command, "--config", config)
        assert result.returncode == 2, command
        assert (
            f"has schema revision 0001, this dicomnode needs {head_revision()}: run "
            "`dicomnode db upgrade`" in result.stderr
        )
        assert len(result.stderr.strip().splitlines()) == 1
    engine = make_engine(url)
    assert current_revision(engine) == "0001"  # nothing migrated it
    engine.dispose()
    assert dicomnode("db", "upgrade", "--config", config).returncode == 0
    listed = dicomnode("jobs", "list", "--json", "--config", config)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_worker_device_applies_to_pipelines_without_a_section(tmp_path: Path) -> None:
    """``dicomnode worker --device`` reaches a built-in pipeline that has no [pipelines.NAME]."""
    import torch

    from dicomnode.database import upgrade
    from dicomnode.testing.factories import queue_jobs

    if torch.cuda.device_count() > 7:
        pytest.skip("cuda:7 exists on this machine")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = tmp_path / "worker.toml"
    config.write_text(
        f'[database]\nurl = "{url}"\n[storage]\npath = "{tmp_path / "storage"}"\n'
        "[workers]\npoll_seconds = 0.2\n"
    )
    upgrade(url)
    queue_jobs(url, 1, "lung_nodule")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "worker", "--config", str(config)]
        + ["--pipelines", "lung_nodule", "--device", "cuda:7"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            (job,) = json.loads(dicomnode("jobs", "list", "--json", "--config", str(config)).stdout)
            if job["status"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(60)
    # The job fails because the device it was given does not exist: the option reached it.
    assert job["status"] == "failed", job
    assert "device 'cuda:7' asked for, but no CUDA GPU is available" in job["error"]


# -- pipelines in the config: resolved, their options checked --------------------------------

THREE_PROBLEMS = """
[[routes]]
pipeline = "lung_nodule"
match = { Modality = "CT" }
[[routes]]
pipeline = "lung_nodle"
match = { Modality = "CR" }
[[routes]]
pipeline = "brain_tumor"
match = { Modality = "MR" }
[pipelines.lung_nodule]
report_treshold = 0.9
[pipelines.brain_tumor]
bundle = "models/no_such_bundle"
"""


def test_config_check_reports_each_pipeline_problem_on_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "three.toml"
    path.write_text(THREE_PROBLEMS)
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    misspelt, unknown, bundle = lines
    assert misspelt == (
        "dicomnode: pipelines.lung_nodule.report_treshold: unknown key for pipeline "
        "lung_nodule; did you mean 'report_threshold'?"
    )
    assert unknown.startswith(
        "dicomnode: routes.1.pipeline: no pipeline named 'lung_nodle' is installed (installed: "
    )
    assert unknown.endswith("did you mean 'lung_nodule'?")
    assert bundle.startswith(
        "dicomnode: pipelines.brain_tumor.bundle: model bundle models/no_such_bundle not found"
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[pipelines.lung_nodule]\nmax_nodules = 0\n", "pipelines.lung_nodule.max_nodules: Input"),
        ('[pipelines.fundus_dr]\ntta = ["rotate"]\n', "pipelines.fundus_dr.tta: tta must list"),
        ("[pipelines.brain_tumor]\nthreshold = [0.5, 0.5]\n", "threshold option [0.5, 0.5]"),
        ('[pipelines.brain_tumor]\nbrain_mask = "otsu"\n', "brain_mask 'otsu' is not intensity"),
        ("[pipelines.geometry_qa]\ndevice = 'cpu'\n", "geometry_qa.device: unknown key"),
        ('[pipelines.lung_nodle]\ndevice = "cpu"\n', "pipelines.lung_nodle: no pipeline named"),
    ],
)
def test_config_check_refuses_bad_option_values(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(section)
    result = dicomnode("config", "check", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_serve_refuses_to_start_with_a_misspelt_option(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "db.sqlite"}"\n'
        f'[storage]\npath = "{tmp_path / "storage"}"\n'
        '[[routes]]\npipeline = "lung_nodule"\nmatch = { Modality = "CT" }\n'
        "[pipelines.lung_nodule]\nmax_nodule = 3\n"
    )
    result = dicomnode("serve", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "dicomnode: pipelines.lung_nodule.max_nodule: unknown key for pipeline lung_nodule; "
        "did you mean 'max_nodules'?"
    )
    assert not (tmp_path / "db.sqlite").exists()  # refused before anything was created
