"""Structured logs: JSON lines with job and study UIDs, and never a patient's name, ID or birth date.

``dicomnode serve`` runs as a subprocess at DEBUG level so that everything it
and its worker processes log lands in one file, which the test then scans.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from dicomnode.logs import JSONFormatter
from dicomnode.testing.peers import free_port, storescu
from tests.conftest import NODE_AE
from tests.test_durability import ct_study

ADMIN = "admin-token-0123456789abcdef"
# Two test patients; none of these strings may appear in any log line.
PATIENTS = [
    {"PatientName": "Phiname^Janet^Q", "PatientID": "PHI-ID-4711", "PatientBirthDate": "19470312"},
    {
        "PatientName": "Roeprivate^Richard",
        "PatientID": "PHI-ID-0815",
        "PatientBirthDate": "19800229",
    },
]


def forbidden() -> list[str]:
    """Every form a test patient's data could take in a log line (compared case-insensitively)."""
    out = []
    for patient in PATIENTS:
        name = patient["PatientName"]
        parts = [part for part in name.split("^") if len(part) > 2]  # not the initial
        out += [name, *parts, name.replace("^", " ")]
        out.append(patient["PatientID"])
        date = patient["PatientBirthDate"]
        out += [date, f"{date[:4]}-{date[4:6]}-{date[6:]}"]
    return [s.lower() for s in out]


def write_patient_study(folder: Path, patient: dict[str, str], n: int, drop: int | None) -> str:
    folder.mkdir(parents=True)
    slices = ct_study(n)
    for i, ds in enumerate(slices):
        for key, value in patient.items():
            setattr(ds, key, value)
        ds.AccessionNumber = f"ACC{patient['PatientID'][-4:]}"
        if i != drop:
            ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return str(slices[0].StudyInstanceUID)


def poll(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_json_formatter_keeps_extra_fields_on_one_line() -> None:
    record = logging.LogRecord("dicomnode.x", logging.INFO, __file__, 1, "job %s\ndone", (7,), None)
    record.job = 7
    record.study = "1.2.3"
    line = JSONFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["msg"], data["job"], data["study"], data["level"]) == (
        "job 7\ndone",
        7,
        "1.2.3",
        "info",
    )


@pytest.mark.slow
def test_serve_logs_json_lines_without_patient_data(tmp_path: Path) -> None:
    dicom_port, api_port = free_port(), free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
log_level = "DEBUG"
[node]
ae_title = "{NODE_AE}"
host = "127.0.0.1"
port = {dicom_port}
[storage]
path = "{tmp_path / "storage"}"
min_free_bytes = 0
[database]
url = "sqlite:///{tmp_path / "node.db"}"
[assembly]
quiet_seconds = 1
early_quiet_seconds = 0.2
check_interval = 0.2
[workers]
processes = 1
poll_seconds = 0.2
[api]
port = {api_port}
[[api.tokens]]
token = "{ADMIN}"
role = "admin"
[[routes]]
pipeline = "geometry_qa"
match = {{ Modality = "CT" }}
"""
    )
    good = write_patient_study(tmp_path / "good", PATIENTS[0], 6, drop=None)
    gappy = write_patient_study(tmp_path / "gappy", PATIENTS[1], 6, drop=3)
    log_path = tmp_path / "serve.log"
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=30,
        trust_env=False,
    )
    with log_path.open("wb") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")},
        )
        try:
            poll(lambda: api.get("/readyz").status_code == 200, 90, "the node to be ready")
            for folder in ("good", "gappy"):
                sent = storescu(
                    [tmp_path / folder], host="127.0.0.1", port=dicom_port, called_aet=NODE_AE
                )
                assert sent.returncode == 0, sent.stderr

            def finished() -> dict[str, dict[str, Any]] | None:
                items = api.get("/api/v1/jobs").json()["items"]
                final = {"done", "failed"}
                ok = len(items) == 2 and all(j["status"] in final for j in items)
                return {j["study_instance_uid"]: j for j in items} if ok else None

            jobs = poll(finished, 120, "both jobs to finish")
            assert jobs[good]["status"] == "done" and jobs[gappy]["status"] == "failed"
            retried = api.post(f"/api/v1/jobs/{jobs[gappy]['id']}/retry")
            assert retried.status_code == 200
            poll(
                lambda: api.get(f"/api/v1/jobs/{jobs[gappy]['id']}").json()["status"] == "failed",
                120,
                "the retried job",
            )
            accession = f"ACC{PATIENTS[0]['PatientID'][-4:]}"
            listed = api.get("/api/v1/jobs", params={"accession_number": accession}).json()
            assert [j["study_instance_uid"] for j in listed["items"]] == [good]
            assert api.get("/api/v1/studies").json()["total"] == 2
            assert "dicomnode_instances_received_total 11.0" in api.get("/metrics").text
        finally:
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(60)
    assert code == 0
    lines = log_path.read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line[:200]}")
    text = log_path.read_text(encoding="utf-8").lower()
    leaks = [s for s in forbidden() if s in text]
    assert not leaks, f"patient data in the logs: {leaks}"
    # One event per line, carrying the job and study it is about.
    finished_lines = [r for r in records if r["msg"] == "job finished"]
    assert {(r["job"], r["study"], r["status"]) for r in finished_lines} >= {
        (jobs[good]["id"], good, "done"),
        (jobs[gappy]["id"], gappy, "failed"),
    }
    assert any(r["msg"] == "study complete" and r["study"] == good for r in records)
    assert any(
        r["msg"] == "job retry requested"
        and r["job"] == jobs[gappy]["id"]
        and r["by"] == "admin-token-0"
        for r in records
    )
    assert ADMIN not in text  # tokens are secrets too
    # Read back the stored files: the patient data is there, in storage and database only.
    stored = next((tmp_path / "storage" / "instances" / good).rglob("*.dcm"))
    assert str(pydicom.dcmread(stored).PatientName) == PATIENTS[0]["PatientName"]
