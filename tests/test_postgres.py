"""The PostgreSQL code paths against a real server started by the tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.database import make_engine, session_factory, upgrade
from dicomnode.jobs import JobQueue
from dicomnode.models import Instance, Job, JobStatus, Study, utcnow
from dicomnode.testing.peers import PostgresServer, storescu
from tests.conftest import NODE_AE, sample_paths
from tests.test_flow import wait_for_jobs, write_study

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def test_node_on_postgres_stores_routes_and_runs(
    make_settings, start_node, pg_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(
        database={"url": pg_url},
        routes=[{"pipeline": "geometry_qa", "match": {"Modality": "CT"}}],
    )
    node = start_node(settings, workers=1)
    files = write_study(tmp_path, 8)
    result = storescu(
        [*files, *sample_paths()[1:3]],
        host="127.0.0.1",
        port=node.receiver.port,
        called_aet=NODE_AE,
    )
    assert result.returncode == 0, result.stderr
    jobs = wait_for_jobs(node, 1)
    assert [j["status"] for j in jobs] == ["done"]
    with node.sessions() as session:
        assert (
            session.execute(select(Instance)).scalars().all().__len__() == 9
        )  # MR twins share a UID
        studies = session.execute(select(Study.status)).scalars().all()
    assert sorted(studies) == ["complete", "unmatched"]


def test_same_instance_twice_on_postgres(make_settings, start_node, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    node = start_node(make_settings(database={"url": pg_url}))
    for _ in range(2):
        assert (
            storescu(
                sample_paths()[:1], host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
            ).returncode
            == 0
        )
    with node.sessions() as session:
        (row,) = session.execute(select(Instance)).scalars().all()
    assert row.times_received == 2


def test_skip_locked_claims_each_job_once(pg_url: str) -> None:
    upgrade(pg_url)
    sessions = session_factory(make_engine(pg_url))
    now = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid="1.2.3", first_received_at=now, last_received_at=now)
        session.add(study)
        session.flush()
        for i in range(60):
            session.add(
                Job(
                    study_id=study.id,
                    study_instance_uid="1.2.3",
                    pipeline=f"p{i}",
                    status=JobStatus.QUEUED,
                    queued_at=now,
                    created_at=now,
                )
            )
    claimed: list[int] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        queue = JobQueue(sessions, lease_seconds=30)
        while (job := queue.claim(worker)) is not None:
            with lock:
                claimed.append(job.id)
            queue.complete(job.id, worker, [])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert time.monotonic() - start < 60
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60
    with sessions() as session:
        assert set(session.execute(select(Job.status)).scalars()) == {"done"}


def test_migrations_build_exactly_the_models_tables(pg_url: str, tmp_path: Path) -> None:
    """Every table, column, index and constraint of dicomnode.models comes from a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from dicomnode.database import upgrade
    from dicomnode.models import Base

    for url in (pg_url, f"sqlite:///{tmp_path / 'parity.db'}"):
        upgrade(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            assert compare_metadata(context, Base.metadata) == [], url
        engine.dispose()
