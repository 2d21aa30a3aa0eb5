"""Nothing acknowledged is lost: kill -9 mid-push, restart, recovery of orphans."""

from __future__ import annotations

import copy
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from dicomnode.models import Instance, Job
from dicomnode.testing.peers import echoscu, free_port
from tests.conftest import NODE_AE, sample_paths

pytestmark = pytest.mark.slow


def ct_study(n: int) -> list[pydicom.Dataset]:
    """*n* slices of one new study, cloned from pydicom's CT_small with a regular geometry."""
    template = pydicom.dcmread(sample_paths()[0])
    study, series = generate_uid(), generate_uid()
    slices = []
    for i in range(n):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-158.0, -179.0, -75.0 + 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        slices.append(ds)
    return slices


def write_config(root: Path, port: int) -> Path:
    config = root / "dicomnode.toml"
    config.write_text(
        f"""
[node]
ae_title = "{NODE_AE}"
host = "127.0.0.1"
port = {port}
[storage]
path = "{root / "storage"}"
min_free_bytes = 0
[database]
url = "sqlite:///{root / "db.sqlite"}"
[assembly]
quiet_seconds = 2
check_interval = 0.2
[workers]
processes = 1
poll_seconds = 0.2
[[routes]]
pipeline = "geometry_qa"
match = {{ Modality = "CT" }}
"""
    )
    return config


def start_serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,  # its own process group: kill -9 takes the workers too
    )
    deadline = time.monotonic() + 30
    while echoscu(host="127.0.0.1", port=port, called_aet=NODE_AE).returncode != 0:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "node did not start"
        time.sleep(0.2)
    return proc


def push(
    port: int,
    datasets: list[pydicom.Dataset],
    *,
    kill_after: int | None = None,
    proc: subprocess.Popen[bytes] | None = None,
) -> set[str]:
    """Send datasets one by one; return the SOP Instance UIDs that got Success."""
    ae = AE(ae_title="MODALITY")
    # A modality notices a dead node by its DIMSE timeout; pynetdicom's default
    # (30 s) would be most of this file's run time.
    ae.dimse_timeout = 5
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    acked: set[str] = set()
    for ds in datasets:
        if not assoc.is_established:
            break
        status = assoc.send_c_store(ds)
        if getattr(status, "Status", None) == 0:
            acked.add(str(ds.SOPInstanceUID))
            if kill_after is not None and len(acked) == kill_after and proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)  # power cut in the middle of the push
    if assoc.is_established:
        assoc.release()
    return acked


def test_kill9_mid_push_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    log = tmp_path / "serve.log"
    study = ct_study(300)
    proc = start_serve(config, port, log)
    try:
        acked = push(port, study, kill_after=120, proc=proc)
        assert 120 <= len(acked) < 300, (len(acked), log.read_text()[-2000:])
        proc.wait(10)

        proc = start_serve(config, port, log)  # restart: recovery runs before the port opens
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        with engine.connect() as conn:
            stored = {row.sop_instance_uid: row.path for row in conn.execute(select(Instance))}
        missing = acked - stored.keys()
        assert not missing, f"{len(missing)} acknowledged instance(s) lost"
        for uid in acked:
            assert (tmp_path / "storage" / stored[uid]).is_file()
        assert list((tmp_path / "storage" / "tmp").iterdir()) == []

        # The modality resends what was not acknowledged; the study completes once.
        rest = [ds for ds in study if str(ds.SOPInstanceUID) not in acked]
        assert push(port, rest) == {str(ds.SOPInstanceUID) for ds in rest}
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                jobs = conn.execute(select(Job.status, Job.study_instance_uid)).all()
                count = conn.execute(text("SELECT count(*) FROM instances")).scalar_one()
            if jobs and jobs[0].status in ("done", "failed"):
                break
            assert time.monotonic() < deadline, f"job did not finish: {jobs}"
            time.sleep(0.3)
        assert count == 300
        assert len(jobs) == 1, jobs
        assert jobs[0].study_instance_uid == study[0].StudyInstanceUID
        assert jobs[0].status == "done", log.read_text()[-3000:]
        # systemctl stop: SIGTERM to the whole group. The worker exits at once; the
        # serving process must not start a replacement (it used to, and that one,
        # still starting on a busy machine, held `serve` past 30 s in CI).
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        after = log.read_text().split("received; stopping")[-1]
        assert "restarting" not in after and "starting a new one" not in after, after
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_kill9_mid_push_over_concurrent_associations_and_receiver_processes(
    tmp_path: Path,
) -> None:
    """Four modalities at once over two receiver processes; the node is killed midway."""
    port = free_port()
    config = write_config(tmp_path, port)
    config.write_text(config.read_text().replace("[storage]", "receiver_processes = 2\n[storage]"))
    log = tmp_path / "serve.log"
    study = ct_study(240)
    proc = start_serve(config, port, log)
    acked: set[str] = set()
    lock = threading.Lock()

    def modality(part: list[pydicom.Dataset]) -> None:
        for uid in push(port, part):
            with lock:
                acked.add(uid)

    def killer() -> None:  # kill -9 once a third of the study is in (by the index)
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        while True:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM instances")).scalar_one() >= 80:
                    break
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)

    threads = [threading.Thread(target=modality, args=(study[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=killer))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert 80 <= len(acked) < 240, len(acked)
        proc.wait(10)
        proc = start_serve(config, port, log)
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        with engine.connect() as conn:
            stored = {row.sop_instance_uid: row.path for row in conn.execute(select(Instance))}
        assert not acked - stored.keys(), "acknowledged instances lost"
        for uid in acked:
            assert pydicom.dcmread(tmp_path / "storage" / stored[uid]).SOPInstanceUID == uid
        rest = [ds for ds in study if str(ds.SOPInstanceUID) not in acked]
        assert push(port, rest) == {str(ds.SOPInstanceUID) for ds in rest}
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                jobs = conn.execute(select(Job.status)).all()
            if jobs and jobs[0].status in ("done", "failed"):
                break
            assert time.monotonic() < deadline, f"job did not finish: {jobs}"
            time.sleep(0.3)
        assert len(jobs) == 1 and jobs[0].status == "done", (jobs, log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_file_without_row_is_reindexed_at_start(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A crash between fsync+rename and the commit leaves a durable file with no row."""
    settings = make_settings()
    node = start_node(settings)
    ds = ct_study(1)[0]
    path = (
        node.store.root
        / "instances"
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    (node.store.root / "tmp" / "dead.part").write_bytes(b"partial")
    node.stop()
    restarted = start_node(settings)
    with restarted.sessions() as session:
        rows = session.execute(select(Instance.sop_instance_uid)).scalars().all()
    assert rows == [ds.SOPInstanceUID]
    assert list((restarted.store.root / "tmp").iterdir()) == []


def test_unreadable_leftover_is_quarantined_not_indexed(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    """A file cut short by a crash right after its rename was never acknowledged."""
    settings = make_settings()
    node = start_node(settings)
    folder = node.store.root / "instances" / "1.2.3" / "1.2.3.4"
    folder.mkdir(parents=True)
    (folder / "1.2.3.4.5.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    node.stop()
    restarted = start_node(settings)
    assert (restarted.store.root / "quarantine" / "1.2.3.4.5.dcm").exists()
    with restarted.sessions() as session:
        assert session.execute(select(Instance)).first() is None


@pytest.mark.parametrize("fsync_directory", [False, True])
def test_both_fsync_orders_store_and_replace(
    make_settings, start_node, fsync_directory: bool
) -> None:  # type: ignore[no-untyped-def]
    from tests.test_receiver import ct_dataset, pynetdicom_store

    node = start_node(make_settings(storage={"fsync_directory": fsync_directory}))
    ds = ct_dataset()
    for _ in range(2):  # new file, then a resend replacing it
        assert pynetdicom_store(node.receiver.port, ds).Status == 0
    with node.sessions() as session:
        (row,) = session.execute(select(Instance)).scalars().all()
    assert pydicom.dcmread(node.store.root / row.path).SOPInstanceUID == ds.SOPInstanceUID
    assert list((node.store.root / "tmp").iterdir()) == []


def save_at_its_path(root: Path, ds: pydicom.Dataset, study: str | None = None) -> Path:
    """Write *ds* where the store would, as a crash between rename and commit leaves it."""
    path = (
        root
        / "instances"
        / (study or ds.StudyInstanceUID)
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_database_refusing_a_row_at_start_stops_start_up(make_settings, start_node) -> None:  # type: ignore[no-untyped-def]
    """A good file is not quarantined because the database is at fault."""
    from dicomnode.store import RecoveryError

    settings = make_settings()
    node = start_node(settings)
    path = save_at_its_path(node.store.root, ct_study(1)[0])
    node.stop()
    database = sqlite3.connect(make_url(settings.database.url).database)
    database.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON instances "
        "BEGIN SELECT RAISE(ABORT, 'no new rows'); END"
    )
    database.commit()
    with pytest.raises(RecoveryError) as refused:
        start_node(settings)
    message = str(refused.value)
    assert str(path.relative_to(node.store.root)) in message
    assert "the database refused the index row" in message and "no new rows" in message
    assert path.is_file()
    assert not (node.store.root / "quarantine").exists()

    database.execute("DROP TRIGGER refuse")  # the admin fixes the database
    database.commit()
    database.close()
    restarted = start_node(settings)
    with restarted.sessions() as session:
        assert session.execute(select(Instance.path)).scalars().all() == [
            str(path.relative_to(node.store.root))
        ]


def test_uid_clash_at_start_is_left_in_place_not_quarantined(
    make_settings, start_node, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    from tests.test_receiver import ct_dataset, pynetdicom_store

    settings = make_settings()
    node = start_node(settings)
    stored = ct_dataset()
    assert pynetdicom_store(node.receiver.port, stored).Status == 0
    clashing = ct_dataset()  # its series is already in the stored one's study
    clashing.StudyInstanceUID = generate_uid()
    path = save_at_its_path(node.store.root, clashing)
    node.stop()
    caplog.set_level(logging.ERROR, logger="dicomnode.store")
    restarted = start_node(settings)
    assert path.is_file()
    assert not (restarted.store.root / "quarantine").exists()
    assert "UID clash" in caplog.text and path.name in caplog.text
    assert f"SeriesInstanceUID {clashing.SeriesInstanceUID} already belongs" in caplog.text
    assert "unreadable" not in caplog.text
    with restarted.sessions() as session:
        assert session.execute(select(Instance.sop_instance_uid)).scalars().all() == [
            stored.SOPInstanceUID
        ]


def test_quarantine_never_overwrites_a_file_of_the_same_name(
    make_settings, start_node, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings()
    node = start_node(settings)
    root = node.store.root
    cut_short = b"\0" * 128 + b"DICM" + b"\x02\x00"
    (root / "instances" / "1.2.3" / "1.2.3.4").mkdir(parents=True)
    (root / "instances" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm").write_bytes(cut_short)
    no_valid_uid = ct_study(1)[0]  # parses as DICOM, but has no valid UID to be stored by
    no_valid_uid.SOPInstanceUID = "1.2.3.4.5"
    del no_valid_uid.StudyInstanceUID
    save_at_its_path(root, no_valid_uid, study="1.2.3")
    node.stop()
    caplog.set_level(logging.ERROR, logger="dicomnode.store")
    node = start_node(settings)
    node.stop()
    quarantine = root / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == ["1.2.3.4.5-2.dcm", "1.2.3.4.5.dcm"]
    contents = [(quarantine / name).read_bytes() for name in ("1.2.3.4.5.dcm", "1.2.3.4.5-2.dcm")]
    assert cut_short in contents  # both copies kept, neither over the other
    assert "cannot be parsed as DICOM" in caplog.text
    assert "StudyInstanceUID None is not a valid DICOM UID" in caplog.text

    (root / "instances" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm").write_bytes(b"later")
    restarted = start_node(settings)  # a later start adds a third name
    assert (quarantine / "1.2.3.4.5-3.dcm").read_bytes() == b"later"
    assert len(list(quarantine.iterdir())) == 3
    with restarted.sessions() as session:
        assert session.execute(select(Instance)).first() is None
