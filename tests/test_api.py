"""The admin REST API over HTTP against a running node, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomnode.cli import main as cli
from dicomnode.config import ConfigError, load_settings
from dicomnode.metrics import gpu_memory_metrics
from dicomnode.models import Job, JobEvent, JobStatus, Output, Series, Study, utcnow
from dicomnode.service import Node
from dicomnode.testing.peers import PostgresServer, echoscu, storescu
from tests.conftest import NODE_AE
from tests.test_flow import write_study

ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
TOKENS = [
    {"token": ADMIN, "role": "admin", "name": "ops"},
    {"token": READ, "role": "read", "name": "monitor"},
]
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)  # seeded jobs are created from here on
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.slow])]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@dataclass
class Api:
    """A running node with its API, and clients for each role."""

    node: Node
    url: str
    admin: httpx.Client
    read: httpx.Client
    anonymous: httpx.Client
    ids: dict[str, int]


def _client(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30, trust_env=False)


@pytest.fixture
def api(make_settings, start_node, db_url: str) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    settings = make_settings(
        database={"url": db_url},
        api={"enabled": True, "port": 0, "tokens": TOKENS},
        routes=[{"pipeline": "lung", "match": {"Modality": "CT"}}],
    )
    node = start_node(settings)
    assert node.api is not None
    url = node.api.url
    clients = [_client(url, ADMIN), _client(url, READ), _client(url)]
    yield Api(node, url, *clients, ids=seed(node))
    for client in clients:
        client.close()


def seed(node: Node) -> dict[str, int]:
    """Two studies, four jobs in different states with timelines and outputs."""
    ids: dict[str, int] = {}
    with node.sessions.begin() as session:
        a = Study(
            study_instance_uid="1.2.826.0.1.3680043.10.999.1",
            accession_number="ACC001",
            calling_aet="CT_SCANNER",
            status="complete",
            instance_count=5,
            first_received_at=T0,
            last_received_at=T0,
        )
        b = Study(
            study_instance_uid="1.2.826.0.1.3680043.10.999.2",
            accession_number="ACC002",
            calling_aet="MR_SCANNER",
            status="receiving",
            instance_count=2,
            first_received_at=T0 + timedelta(hours=2),
            last_received_at=T0 + timedelta(hours=2),
        )
        session.add_all([a, b])
        session.flush()
        for study, number, modality, count in ((a, 1, "CT", 3), (a, 2, "CT", 2), (b, 1, "MR", 2)):
            session.add(
                Series(
                    study_id=study.id,
                    series_instance_uid=f"{study.study_instance_uid}.{number}",
                    modality=modality,
                    series_number=number,
                    instance_count=count,
                )
            )

        def job(name: str, study: Study, pipeline: str, status: str, hours: float) -> Job:
            at = T0 + timedelta(hours=hours)
            row = Job(
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                pipeline=pipeline,
                status=status,
                created_at=at,
                queued_at=at,
                send_to=["pacs"],
            )
            session.add(row)
            session.flush()
            ids[name] = row.id
            return row

        done = job("done", a, "lung", JobStatus.DONE, 0)
        done.started_at = T0 + timedelta(seconds=2)
        done.finished_at = T0 + timedelta(seconds=12)
        failed = job("failed", a, "geometry_qa", JobStatus.FAILED, 1)
        failed.error = "3 gap(s) suggest missing slices"
        failed.finished_at = T0 + timedelta(hours=1, seconds=5)
        job("queued", b, "lung", JobStatus.QUEUED, 2)
        job("running", b, "brain", JobStatus.RUNNING, 3)
        for stage, seconds, offset in (("claim", None, 2), ("infer", 6.0, 8), ("write", 2.0, 10)):
            session.add(
                JobEvent(
                    job_id=done.id,
                    stage=stage,
                    duration_s=seconds,
                    message=f"{stage} stage",
                    at=T0 + timedelta(seconds=offset),
                )
            )
        session.add(
            Output(
                job_id=done.id,
                sop_instance_uid="1.2.3.4.5",
                sop_class_uid=SEG,
                path="results/1/seg.dcm",
                destination="pacs",
                status="sent",
                attempts=1,
            )
        )
        session.add(
            Output(
                job_id=failed.id,
                sop_instance_uid="1.2.3.4.6",
                sop_class_uid=SEG,
                path="results/2/seg.dcm",
                destination="pacs",
                status="failed",
                attempts=5,
                last_error="cannot connect to ORTHANC",
            )
        )
    return ids


def ids_of(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


# -- auth ---------------------------------------------------------------------------------


def test_tokens_and_roles(api: Api) -> None:
    missing = api.anonymous.get("/api/v1/jobs")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token is required" in missing.json()["detail"]
    wrong = _client(api.url, "not-a-token-of-this-node").get("/api/v1/jobs")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown token"
    basic = api.anonymous.get("/api/v1/jobs", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401
    assert api.read.get("/api/v1/jobs").status_code == 200
    job = api.ids["failed"]
    for action in ("retry", "cancel"):
        assert api.anonymous.post(f"/api/v1/jobs/{job}/{action}").status_code == 401
        refused = api.read.post(f"/api/v1/jobs/{job}/{action}")
        assert refused.status_code == 403
        assert refused.json()["detail"] == "this action needs an admin token; yours is read"
    assert api.read.get(f"/api/v1/jobs/{job}").json()["status"] == "failed"  # untouched
    retried = api.admin.post(f"/api/v1/jobs/{job}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "sending"  # delivery failed: resend, do not recompute
    assert retried.json()["events"][-1]["stage"] == "retry"


def test_probes_need_no_token(api: Api) -> None:
    assert api.anonymous.get("/healthz").json() == {"status": "ok"}
    ready = api.anonymous.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"database", "storage", "receiver"}
    assert api.anonymous.get("/metrics").status_code == 200
    assert api.anonymous.get("/openapi.json").json()["paths"]["/api/v1/jobs"]
    docs = api.anonymous.get("/docs")
    assert docs.status_code == 200
    # Everything the docs page loads comes from the node itself (offline networks).
    assert "cdn" not in docs.text.lower()
    assert "/docs-static/swagger-ui-bundle.js" in docs.text
    script = api.anonymous.get("/docs-static/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text


def test_readyz_reports_a_closed_receiver_and_unwritable_storage(api: Api) -> None:
    api.node.receiver.stop()
    tmp = api.node.store.root / "tmp"
    tmp.rename(api.node.store.root / "tmp-away")
    tmp.write_text("a file where the folder should be")
    ready = api.anonymous.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] is True
    assert checks["receiver"] == {"ok": False, "message": "the DICOM receiver is not listening"}
    assert checks["storage"]["ok"] is False and "not writable" in checks["storage"]["message"]


def test_database_outage_shows_in_readiness_and_metrics() -> None:
    from dicomnode.api.health import database_check
    from dicomnode.database import make_engine, session_factory
    from dicomnode.testing.peers import free_port

    engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    ok, message = database_check(session_factory(engine))()
    assert not ok and message.startswith("the job database does not answer: OperationalError")
    from dicomnode.metrics import NodeMetrics

    scraped = NodeMetrics(session_factory(engine)).render()[0].decode()
    assert sample(scraped, "dicomnode_database_up") == 0  # the scrape still answers
    assert sample(scraped, "dicomnode_instances_received_total") == 0
    engine.dispose()


# -- listings and filters -----------------------------------------------------------------


def test_job_filters_and_paging(api: Api) -> None:
    ids = api.ids
    newest_first = [ids["running"], ids["queued"], ids["failed"], ids["done"]]
    page = api.read.get("/api/v1/jobs").json()
    assert page["total"] == 4 and [j["id"] for j in page["items"]] == newest_first
    get = api.read.get
    assert ids_of(get("/api/v1/jobs", params={"status": "failed"})) == [ids["failed"]]
    assert ids_of(get("/api/v1/jobs", params={"pipeline": "lung"})) == [ids["queued"], ids["done"]]
    assert ids_of(get("/api/v1/jobs", params={"accession_number": "ACC001"})) == [
        ids["failed"],
        ids["done"],
    ]
    assert ids_of(get("/api/v1/jobs", params={"calling_aet": "MR_SCANNER"})) == [
        ids["running"],
        ids["queued"],
    ]
    uid = "1.2.826.0.1.3680043.10.999.2"
    assert ids_of(get("/api/v1/jobs", params={"study_instance_uid": uid, "pipeline": "brain"})) == [
        ids["running"]
    ]
    window = {"since": "2024-05-01T09:00:00Z", "until": "2024-05-01T11:00:00+00:00"}
    assert ids_of(get("/api/v1/jobs", params=window)) == [ids["queued"], ids["failed"]]
    naive = {"since": "2024-05-01T09:00:00"}  # naive: UTC
    assert ids_of(get("/api/v1/jobs", params=naive)) == [
        ids["running"],
        ids["queued"],
        ids["failed"],
    ]
    paged = get("/api/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert paged["total"] == 4 and [j["id"] for j in paged["items"]] == newest_first[1:3]
    assert get("/api/v1/jobs", params={"status": "done", "pipeline": "brain"}).json() == {
        "total": 0,
        "limit": 100,
        "offset": 0,
        "items": [],
    }


def test_job_detail_has_timeline_and_outputs(api: Api) -> None:
    job = api.read.get(f"/api/v1/jobs/{api.ids['done']}").json()
    assert job["accession_number"] == "ACC001" and job["calling_aet"] == "CT_SCANNER"
    infer = next(e for e in job["events"] if e["stage"] == "infer")
    assert infer["duration_s"] == 6.0 and infer["message"] == "infer stage"
    assert datetime.fromisoformat(infer["at"]) - datetime.fromisoformat(
        infer["started_at"]
    ) == timedelta(seconds=6)
    (output,) = job["outputs"]
    assert (output["destination"], output["status"], output["sop_class_uid"]) == (
        "pacs",
        "sent",
        SEG,
    )
    failed = api.read.get(f"/api/v1/jobs/{api.ids['failed']}").json()
    assert failed["outputs"][0]["error"] == "cannot connect to ORTHANC"


def test_unknown_jobs_and_impossible_actions(api: Api) -> None:
    assert api.read.get("/api/v1/jobs/999999").status_code == 404
    assert api.read.get("/api/v1/jobs/999999").json()["detail"] == "no job with id 999999"
    assert api.admin.post("/api/v1/jobs/999999/retry").status_code == 404
    running = api.admin.post(f"/api/v1/jobs/{api.ids['running']}/retry")
    assert running.status_code == 409
    assert "only done, failed or cancelled jobs can be retried" in running.json()["detail"]
    done = api.admin.post(f"/api/v1/jobs/{api.ids['done']}/cancel")
    assert done.status_code == 409 and done.json()["detail"].endswith("is already done")
    cancelled = api.admin.post(f"/api/v1/jobs/{api.ids['queued']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.read.get("/api/v1/nothing-here").status_code == 404


BAD_QUERIES = [
    ("/api/v1/jobs?status=finished", "status: Input should be"),
    ("/api/v1/jobs?limit=0", "limit: Input should be greater than or equal to 1"),
    ("/api/v1/jobs?limit=100000", "limit: Input should be less than or equal to 1000"),
    ("/api/v1/jobs?limit=ten", "limit: Input should be a valid integer"),
    ("/api/v1/jobs?offset=-1", "offset: Input should be greater than or equal to 0"),
    ("/api/v1/jobs?offset=99999999999999999999", "offset: Input should be less than"),
    ("/api/v1/jobs?since=yesterday", "since: 'yesterday' is not a time"),
    ("/api/v1/jobs?since=2024-13-45", "since: '2024-13-45' is not a time"),
    ("/api/v1/jobs?since=0001-01-01T00:00:00%2B01:00", "since: '0001-01-01T00:00:00+01:00'"),
    ("/api/v1/jobs?since=2024-06-01&until=2024-05-01", "since: later than until"),
    ("/api/v1/jobs?stauts=failed", "stauts: unknown query parameter"),
    ("/api/v1/jobs?pipeline=lu%00ng", "pipeline: String should match pattern"),
    (
        "/api/v1/jobs?accession_number=" + "9" * 65,
        "accession_number: String should have at most 64",
    ),
    ("/api/v1/jobs/0", "job_id: Input should be greater than or equal to 1"),
    ("/api/v1/jobs/abc", "job_id: Input should be a valid integer"),
    ("/api/v1/jobs/99999999999", "job_id: Input should be less than or equal to 2147483647"),
    (
        "/api/v1/studies?status=done",
        "status: Input should be 'receiving', 'complete', 'unmatched', 'retrieving' or 'incomplete'",
    ),
    ("/api/v1/studies/" + "1" * 65, "study_instance_uid: String should have at most 64"),
    ("/api/v1/stats?since=2020-01-01&until=2024-01-01", "since: the window may span at most"),
    ("/api/v1/stats?pipline=lung", "pipline: unknown query parameter"),
]


def test_bad_parameters_get_a_clear_422(api: Api) -> None:
    wrong = []
    for path, message in BAD_QUERIES:  # one node for all: each request is independent
        response = api.read.get(path)
        if response.status_code != 422 or message not in response.json()["detail"]:
            wrong.append((path, response.status_code, response.text))
    assert not wrong


def test_bad_parameters_are_refused_before_anything_else_for_actions(api: Api) -> None:
    # Unauthenticated requests learn nothing, not even whether their parameters were valid.
    assert api.anonymous.get("/api/v1/jobs?limit=0").status_code == 401
    assert api.admin.post("/api/v1/jobs/0/retry").status_code == 422
    assert api.admin.post("/api/v1/jobs/1/explode").status_code in (404, 405)


# -- studies and statistics ----------------------------------------------------------------


def test_studies_with_series_and_instance_counts(api: Api) -> None:
    page = api.read.get("/api/v1/studies").json()
    assert page["total"] == 2
    newest, oldest = page["items"]
    assert newest["accession_number"] == "ACC002" and oldest["accession_number"] == "ACC001"
    assert oldest["instances"] == 5 and oldest["modalities"] == ["CT"]
    assert [(s["series_number"], s["instances"]) for s in oldest["series"]] == [(1, 3), (2, 2)]
    assert {j["pipeline"] for j in oldest["jobs"]} == {"lung", "geometry_qa"}
    assert "patient_name" not in json.dumps(page) and "patient_id" not in json.dumps(page)
    one = api.read.get("/api/v1/studies/1.2.826.0.1.3680043.10.999.2").json()
    assert one["calling_aet"] == "MR_SCANNER" and one["series"][0]["modality"] == "MR"
    assert api.read.get("/api/v1/studies/1.2.3").status_code == 404
    # The node's assembler may settle the receiving MR study meanwhile; the CT one stays.
    filtered = api.read.get("/api/v1/studies", params={"status": "complete"}).json()
    assert [s["accession_number"] for s in filtered["items"]] == ["ACC001"]


def test_statistics(api: Api) -> None:
    stats = api.read.get(
        "/api/v1/stats", params={"since": "2024-05-01T07:00:00Z", "until": "2024-05-01T12:00:00Z"}
    ).json()
    assert stats["jobs_by_status"] == {
        "waiting": 0,
        "queued": 1,
        "running": 1,
        "sending": 0,
        "done": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert stats["throughput"] == [
        {"hour": "2024-05-01T08:00:00+00:00", "pipeline": "lung", "done": 1, "failed": 0},
        {"hour": "2024-05-01T09:00:00+00:00", "pipeline": "geometry_qa", "done": 0, "failed": 1},
    ]
    stages = {(s["pipeline"], s["stage"]): s for s in stats["stages"]}
    assert stages[("lung", "infer")] == {
        "pipeline": "lung",
        "stage": "infer",
        "count": 1,
        "p50_s": 6.0,
        "p95_s": 6.0,
    }
    lung = next(p for p in stats["pipelines"] if p["pipeline"] == "lung")
    assert lung["queued_to_done"] == {"count": 1, "p50_s": 12.0, "p95_s": 12.0}
    only = api.read.get("/api/v1/stats", params={"pipeline": "brain"}).json()
    assert sum(only["jobs_by_status"].values()) == 1


def test_percentiles() -> None:
    from dicomnode.stats import percentile

    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([], 50) is None and percentile([3.0], 95) == 3.0


# -- CLI and API agree --------------------------------------------------------------------


AGREEMENT_FILTERS: list[dict[str, str]] = [
    {},
    {"status": "failed"},
    {"pipeline": "lung", "limit": "1", "offset": "1"},
    {"accession_number": "ACC001"},
    {"calling_aet": "MR_SCANNER"},
    {"study_instance_uid": "1.2.826.0.1.3680043.10.999.2"},
    {"since": "2024-05-01T09:00:00Z", "until": "2024-05-01T11:00:00Z"},
]
CLI_FLAGS = {
    "study_instance_uid": "--study-instance-uid",
    "accession_number": "--accession-number",
    "calling_aet": "--calling-aet",
}


def test_cli_json_and_api_list_the_same_jobs(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{api.node.settings.database.url}"\n')
    for filters in AGREEMENT_FILTERS:
        args = ["jobs", "list", "--json", "--config", str(config)]
        for key, value in filters.items():
            args += [CLI_FLAGS.get(key, f"--{key}"), value]
        assert cli(args) == 0
        from_cli = json.loads(capsys.readouterr().out)
        from_api = api.read.get("/api/v1/jobs", params=filters).json()["items"]
        assert from_cli == from_api, filters
        assert from_cli, f"{filters} selects no job: a weak comparison"


def test_cli_refuses_bad_filters_in_one_line(api: Api, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{api.node.settings.database.url}"\n')
    for flags, message in (
        (["--since", "yesterday"], "dicomnode: since: 'yesterday' is not a time"),
        (["--limit", "0"], "dicomnode: limit: must be between 1 and 1000"),
    ):
        assert cli(["jobs", "list", "--config", str(config), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.strip().splitlines()) == 1


# -- metrics --------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if found == wanted:
            return float(match.group(3))
    return None


def test_metrics_from_the_database(api: Api) -> None:
    metrics = api.anonymous.get("/metrics").text
    assert sample(metrics, "dicomnode_database_up") == 1
    assert sample(metrics, "dicomnode_jobs", pipeline="lung", status="queued") == 1
    assert sample(metrics, "dicomnode_jobs", pipeline="geometry_qa", status="failed") == 1
    assert sample(metrics, "dicomnode_queue_depth", pipeline="lung") == 1
    assert sample(metrics, "dicomnode_queue_depth", pipeline="brain") == 0
    assert sample(metrics, "dicomnode_outputs", destination="pacs", status="failed") == 1
    assert (sample(metrics, "dicomnode_storage_free_bytes") or 0) > 0
    # Stage histograms count events written since the node started, once 2 s old.
    with api.node.sessions.begin() as session:
        session.add(
            JobEvent(
                job_id=api.ids["running"],
                stage="infer",
                duration_s=0.7,
                at=utcnow() - timedelta(seconds=3),
            )
        )
    metrics = api.anonymous.get("/metrics").text
    labels = {"pipeline": "brain", "stage": "infer"}
    assert sample(metrics, "dicomnode_stage_duration_seconds_count", **labels) == 1
    assert sample(metrics, "dicomnode_stage_duration_seconds_sum", **labels) == pytest.approx(0.7)
    assert sample(metrics, "dicomnode_stage_duration_seconds_bucket", le="0.5", **labels) == 0
    assert sample(metrics, "dicomnode_stage_duration_seconds_bucket", le="1.0", **labels) == 1
    # The seeded timeline was written after start-up too, however old its times.
    lung = {"pipeline": "lung", "stage": "infer"}
    assert sample(metrics, "dicomnode_stage_duration_seconds_count", **lung) == 1
    assert (
        sample(metrics, "dicomnode_stage_duration_seconds_count", pipeline="lung", stage="claim")
        is None
    )


def test_gpu_memory_from_nvidia_smi(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, NVIDIA H100, 1024, 81559'\n")
    fake.chmod(0o755)
    used, total = gpu_memory_metrics(str(fake))
    assert used.samples[0].labels == {"gpu": "0", "name": "NVIDIA H100"}
    assert used.samples[0].value == 1024 * 1_048_576
    assert total.samples[0].value == 81559 * 1_048_576
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 9\n")
    broken.chmod(0o755)
    assert gpu_memory_metrics(str(broken)) == []


# -- open mode (no tokens) --------------------------------------------------------------------


def test_without_tokens_only_loopback_and_same_origin(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(api={"enabled": True, "port": 0}))
    client = _client(node.api.url)
    assert client.get("/api/v1/jobs").status_code == 200  # open: the CLI's trust, on loopback
    rebound = client.get("/api/v1/jobs", headers={"Host": f"evil.example:{node.api.port}"})
    assert rebound.status_code == 403  # DNS rebinding: a foreign host name
    forged = client.post("/api/v1/jobs/1/retry", headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403 and forged.json()["detail"] == "cross-origin request refused"
    assert client.post("/api/v1/jobs/1/retry").status_code == 404  # no Origin: curl, scripts


def test_config_needs_tokens_off_loopback(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nhost = "0.0.0.0"\n')
    with pytest.raises(
        ConfigError, match=r"^api\.tokens: required when the API listens on 0\.0\.0\.0"
    ):
        load_settings(path)
    path.write_text('[api]\nhost = "0.0.0.0"\n[[api.tokens]]\ntoken = "short"\n')
    with pytest.raises(
        ConfigError, match=r"^api\.tokens\.0\.token: String should have at least 16"
    ):
        load_settings(path)
    path.write_text(f'[api]\nhost = "0.0.0.0"\n[[api.tokens]]\ntoken = "{ADMIN}"\nrole = "root"\n')
    with pytest.raises(
        ConfigError, match=r"^api\.tokens\.0\.role: Input should be 'read', 'store' or 'admin'"
    ):
        load_settings(path)
    path.write_text(f'[api]\nhost = "0.0.0.0"\n[[api.tokens]]\ntoken = "{ADMIN}"\nrole = "admin"\n')
    assert load_settings(path).api.tokens[0].role == "admin"


def test_deploy_files_give_the_api_its_tokens_from_the_environment() -> None:
    import yaml

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    docs = yaml.safe_load_all((deploy / "kubernetes" / "receiver.yaml").read_text())
    receiver = next(d for d in docs if d and d["kind"] == "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in receiver["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    tokens = env["DICOMNODE_API__TOKENS"].replace("$(API_ADMIN_TOKEN)", ADMIN)
    environ = {
        "DICOMNODE_API__HOST": env["DICOMNODE_API__HOST"],
        "DICOMNODE_API__TOKENS": tokens.replace("$(API_READ_TOKEN)", READ),
    }
    settings = load_settings(deploy / "dicomnode.example.toml", resolve=False, environ=environ)
    assert [(t.role, t.name) for t in settings.api.tokens] == [
        ("admin", "admin"),
        ("read", "monitoring"),
    ]
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]["receiver"]
    unset = compose["environment"]["DICOMNODE_API__TOKENS"].replace(
        "${DICOMNODE_ADMIN_TOKEN:-}", ""
    )
    with pytest.raises(
        ConfigError, match=r"^api\.tokens\.0\.token: String should have at least 16"
    ):
        load_settings(
            deploy / "dicomnode.example.toml",
            resolve=False,
            environ={"DICOMNODE_API__HOST": "0.0.0.0", "DICOMNODE_API__TOKENS": unset},
        )


def test_a_busy_api_port_does_not_stop_the_receiver(
    make_settings, start_node, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = start_node(make_settings(api={"enabled": True, "port": busy.getsockname()[1]}))
        assert node.api is None and "API not started" in caplog.text
        echo = echoscu(host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
        assert echo.returncode == 0, echo.stderr


# -- a real study ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 90, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_pushed_study_shows_in_api_and_metrics(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        api={"enabled": True, "port": 0, "tokens": TOKENS},
        routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
    )
    node = start_node(settings, workers=1)
    client = _client(node.api.url, READ)
    files = write_study(tmp_path, 6)
    sent = storescu(files, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    assert sent.returncode == 0, sent.stderr
    (study,) = wait_until(lambda: client.get("/api/v1/studies").json()["items"], what="the study")
    assert study["instances"] == 6 and study["series"][0]["instances"] == 6
    assert study["calling_aet"] == "STORESCU"

    def finished() -> list[dict[str, Any]]:
        items = client.get("/api/v1/jobs", params={"calling_aet": "STORESCU"}).json()["items"]
        return [j for j in items if j["status"] == "done"]

    (job,) = wait_until(finished, what="the job")
    assert job["study_instance_uid"] == study["study_instance_uid"]
    stages = [e["stage"] for e in client.get(f"/api/v1/jobs/{job['id']}").json()["events"]]
    assert stages[0] in ("waiting", "queued") and stages[-1] == "done"
    metrics = client.get("/metrics").text
    assert sample(metrics, "dicomnode_instances_received_total") == 6
    size = sum(p.stat().st_size for p in files)
    assert 0.9 * size < (sample(metrics, "dicomnode_received_bytes_total") or 0) <= size
    assert sample(metrics, "dicomnode_associations_total", outcome="accepted") == 1
    assert sample(metrics, "dicomnode_associations_active") == 0
    assert sample(metrics, "dicomnode_jobs", pipeline="geometry_qa", status="done") == 1
    # Timeline durations reach the histogram once they are a couple of seconds old.
    wait_until(
        lambda: sample(
            client.get("/metrics").text,
            "dicomnode_stage_duration_seconds_count",
            pipeline="geometry_qa",
            stage="pipeline",
        ),
        timeout=30,
        what="the stage histogram",
    )
