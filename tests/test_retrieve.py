"""Query/retrieve against the real Orthanc: C-FIND, C-MOVE, C-GET, QIDO-RS and WADO-RS.

Orthanc (Debian package) is the PACS: studies are uploaded to it, the node
finds them, fetches them, runs the pipeline and sends the results back into
the same study. Faults are real ones: Orthanc killed mid-move, a move
destination it does not know, a port where nobody answers, a peer that
accepts TCP and then says nothing, wrong credentials.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.cli import main as cli
from dicomnode.config import Settings, SourceConfig
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import Instance, Job, Study
from dicomnode.ondemand import RequestError, request_study
from dicomnode.retrieval import RetrieveError, StudyQuery, open_source
from dicomnode.service import Node
from dicomnode.testing.node import NODE_AE, settings_data, toml_document
from dicomnode.testing.peers import DcmQRSCP, Orthanc, TLSTerminator, free_port
from dicomnode.workers import Worker
from tests.conftest import sample_paths
from tests.pki import make_pki
from tests.test_durability import ct_study

pytestmark = pytest.mark.slow

SUMMARY = {"summary": {"type": "tests.pipelines:SeriesSummary"}}
ROUTE = {"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["pacs"]}


# -- helpers ------------------------------------------------------------------------------


def write_datasets(folder: Path, datasets: list[pydicom.Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct(n: int, **attributes: Any) -> list[pydicom.Dataset]:
    """A new CT study of *n* slices with *attributes* (PatientID, AccessionNumber, ...)."""
    slices = ct_study(n)
    for ds in slices:
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return slices


def mixed_study() -> list[pydicom.Dataset]:
    """One study made of pydicom's samples: CT, MR, SC in every transfer syntax, a multi-frame.

    Each sample keeps its SOP class, transfer syntax and (compressed) pixel data;
    only the UIDs and the patient are made one study's.
    """
    study = generate_uid()
    datasets = []
    for path in sample_paths():
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian:
            continue  # retired; Orthanc converts it on import, so "as stored" means nothing
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName = "MIXED-1", "Mixed^Samples"
        datasets.append(ds)
    return datasets


def upload(orthanc: Orthanc, paths: list[Path]) -> str:
    """Upload files to Orthanc; the Orthanc id of their (one) study."""
    ids = {orthanc.upload(p)["ParentStudy"] for p in paths}
    assert len(ids) == 1
    return ids.pop()


def wait_job(node: Node, job_id: int, timeout: float = 90) -> dict[str, Any]:
    queue = JobQueue(node.sessions)
    deadline = time.monotonic() + timeout
    while True:
        job = job_to_dict(queue.get(job_id), events=True)
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def node_settings(tmp_path: Path, **sections: Any) -> Settings:
    data = settings_data(tmp_path)
    data.update(pipelines=SUMMARY, **sections)
    return Settings.model_validate(data)


def config_file(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "dicomnode.toml"
    path.write_text(toml_document(settings.model_dump(mode="json", exclude_unset=True)))
    return path


def stored_count(node: Node, study_uid: str) -> int:
    with node.sessions() as session:
        return int(
            session.execute(
                select(func.count(Instance.id))
                .join(Study, Instance.study_id == Study.id)
                .where(Study.study_instance_uid == study_uid)
            ).scalar_one()
        )


def study_row(node: Node, uid: str) -> Study:
    with node.sessions() as session:
        return session.execute(select(Study).where(Study.study_instance_uid == uid)).scalar_one()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as peer:
        yield peer


# -- C-FIND --------------------------------------------------------------------------------


def test_c_find_matches_patient_issuer_accession_dates_and_modality(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    studies = {
        "a": ct(
            1,
            PatientID="P1",
            IssuerOfPatientID="HOSP_A",
            AccessionNumber="ACC1",
            StudyDate="20261101",
        ),
        "b": ct(
            1,
            PatientID="P1",
            IssuerOfPatientID="HOSP_B",
            AccessionNumber="ACC2",
            StudyDate="20261115",
            Modality="MR",
            SOPClassUID=pydicom.uid.MRImageStorage,
        ),
        "c": ct(1, PatientID="P2", AccessionNumber="ACC3", StudyDate="20261120"),
    }
    uids = {}
    for key, datasets in studies.items():
        upload(orthanc, write_datasets(tmp_path / key, datasets))
        uids[key] = str(datasets[0].StudyInstanceUID)
    settings = node_settings(tmp_path, sources=[orthanc.source()])
    orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
    source = open_source(settings.sources[0], settings.node)

    def found(**query: Any) -> set[str]:
        return {m.study_instance_uid for m in source.find_studies(StudyQuery(**query))}

    assert found(patient_id="P1") == {uids["a"], uids["b"]}
    assert found(patient_id="P1", issuer_of_patient_id="HOSP_B") == {uids["b"]}
    assert found(accession_number="ACC3") == {uids["c"]}
    assert found(study_instance_uid=uids["a"]) == {uids["a"]}
    assert found(since=date(2026, 11, 10), until=date(2026, 11, 30)) == {uids["b"], uids["c"]}
    assert found(since=date(2026, 11, 15), until=date(2026, 11, 15)) == {uids["b"]}
    assert found(modality="CT") == {uids["a"], uids["c"]}
    assert found(modality="CT", since=date(2026, 11, 2)) == {uids["c"]}
    assert found(patient_id="NOBODY") == set()
    (match,) = source.find_studies(StudyQuery(accession_number="ACC2"))
    assert match.instance_count == 1 and match.modalities == ("MR",)
    (series,) = source.find_series(uids["b"])
    assert series.modality == "MR" and series.instance_count == 1


def test_query_command_prints_the_matches(
    orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = ct(2, PatientID="Q1", AccessionNumber="QACC", StudyDate="20261102")
    upload(orthanc, write_datasets(tmp_path / "s", datasets))
    settings = node_settings(tmp_path, sources=[orthanc.source()])
    orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
    path = config_file(tmp_path, settings)
    assert (
        cli(["query", "--config", str(path), "--from", "pacs", "--accession", "QACC", "--json"])
        == 0
    )
    (row,) = json.loads(capsys.readouterr().out)
    assert row["study_instance_uid"] == datasets[0].StudyInstanceUID
    assert row["instances"] == 2 and row["modalities"] == ["CT"]
    assert cli(["query", "--config", str(path), "--from", "nowhere"]) == 2
    assert "no source named 'nowhere' (sources: pacs)" in capsys.readouterr().err
    assert cli(["query", "--config", str(path), "--from", "pacs", "--modality", "ct*"]) == 2
    assert "modality: 'ct*' is not a DICOM modality" in capsys.readouterr().err


# -- C-MOVE --------------------------------------------------------------------------------


def test_run_from_a_pacs_by_c_move_sends_results_into_the_same_study(
    orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = ct(8, PatientID="MOVE-1", AccessionNumber="MV1")
    orthanc_id = upload(orthanc, write_datasets(tmp_path / "s", datasets))
    uid = str(datasets[0].StudyInstanceUID)
    settings = node_settings(
        tmp_path, sources=[orthanc.source()], destinations=[orthanc.destination()], routes=[ROUTE]
    )
    node = Node(settings, workers=1)
    node.start()
    try:
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        path = config_file(tmp_path, settings)
        assert cli(["run", "summary", "--config", str(path), "--study", uid, "--from", "pacs"]) == 0
        assert "queued summary on study" in capsys.readouterr().out
        (job_row,) = JobQueue(node.sessions).list()
        job = wait_job(node, job_row.id)
        assert job["status"] == "done", job
        assert job["source"] == "pacs" and job["requested_by"].startswith("cli:")
        assert job["retrieve"]["received"] == 8 and job["retrieve"]["expected"] == 8
        stages = [e["stage"] for e in job["events"]]
        assert stages[:4] == ["queued", "claim", "retrieve", "retrieve"], stages
        assert stages[-1] == "done" and "delivery" in stages
        begun, finished = [e for e in job["events"] if e["stage"] == "retrieve"]
        assert "by C-MOVE to TESTNODE; 8 instance(s) expected" in begun["message"]
        assert finished["message"].startswith("8 of 8 instance(s) retrieved from pacs")
        assert finished["duration_s"] is not None
        assert cli(["jobs", "show", str(job_row.id), "--config", str(path)]) == 0
        shown = capsys.readouterr().out
        assert "retrieve: from pacs: 8 of 8 instance(s), done " in shown
        assert "requested_by: cli:" in shown
        # Fetched, not pushed: no route made a second job; the study is complete.
        assert len(JobQueue(node.sessions).list()) == 1
        row = study_row(node, uid)
        assert row.status == "complete" and row.patient_id == "MOVE-1"
        assert row.calling_aet == orthanc.aet and stored_count(node, uid) == 8
        # The result is in the same study in the PACS.
        (output,) = job["outputs"]
        instances = orthanc.instances_of_study(orthanc_id)
        assert len(instances) == 9
        assert output["sop_instance_uid"] in {
            i["MainDicomTags"]["SOPInstanceUID"] for i in instances
        }
        # Asked again while done: queued again and fetched again (a re-run). The study
        # at the PACS now holds our result too: it comes back, and is no pipeline input.
        assert cli(["run", "summary", "--config", str(path), "--study", uid, "--from", "pacs"]) == 0
        again = wait_job(node, job_row.id)
        assert again["status"] == "done" and again["retrieve"]["received"] == 9
        (rerun,) = again["outputs"]
        assert rerun["sop_instance_uid"] == output["sop_instance_uid"]  # same model, same UID
        result = pydicom.dcmread(node.store.root / rerun["path"])
        assert result.SeriesDescription == "summary of 8 instances"
    finally:
        node.stop()


def test_unknown_move_destination_and_refusals_are_sentences(tmp_path: Path) -> None:
    # Orthanc answers C-FIND to anyone but does not know where TESTNODE is.
    config = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True}
    with Orthanc(tmp_path / "orthanc", config=config) as orthanc:
        datasets = ct(2)
        upload(orthanc, write_datasets(tmp_path / "s", datasets))
        uid = str(datasets[0].StudyInstanceUID)
        settings = node_settings(tmp_path, sources=[orthanc.source()])
        node = Node(settings, workers=0)
        node.start()
        try:
            queue = JobQueue(node.sessions)
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid=uid,
                source="pacs",
                requested_by="test",
            )
            assert Worker(settings, sessions=node.sessions).run_once()
            failed = job_to_dict(queue.get(job.id), events=True)
            assert failed["status"] == "failed"
            # Orthanc 1.10 answers 0xC000 (dcmqrscp: 0xA801, see the dcmqrscp test).
            assert failed["error"] == (
                f"C-MOVE from pacs (ORTHANC@127.0.0.1:{orthanc.dicom_port}): the source refused "
                "it with status 0xC000; if it does not know the move destination TESTNODE, add "
                f"TESTNODE (this node's host, port {settings.node.port}) to its DICOM peers"
            )
            assert study_row(node, uid).status == "incomplete"
            assert "pipeline" not in [e["stage"] for e in failed["events"]]
            # Not at the source: refused at once, no job.
            with pytest.raises(RequestError, match=r"study 1\.2\.3 is not at source pacs"):
                request_study(
                    settings,
                    queue,
                    pipeline="summary",
                    study_instance_uid="1.2.3",
                    source="pacs",
                    requested_by="test",
                )
            with pytest.raises(RequestError, match=r"no pipeline named 'nope' is installed"):
                request_study(
                    settings,
                    queue,
                    pipeline="nope",
                    study_instance_uid=uid,
                    source="pacs",
                    requested_by="test",
                )
        finally:
            node.stop()


def test_orthanc_killed_mid_move_fails_with_a_sentence_and_retry_completes(
    tmp_path: Path,
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    try:
        datasets = ct(120, PatientID="KILL-1")
        upload(orthanc, write_datasets(tmp_path / "s", datasets))
        uid = str(datasets[0].StudyInstanceUID)
        settings = node_settings(
            tmp_path,
            sources=[orthanc.source(response_timeout=5)],
            destinations=[orthanc.destination()],
            routes=[ROUTE],
        )
        node = Node(settings, workers=0)
        node.start()
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        queue = JobQueue(node.sessions)
        job = request_study(
            settings,
            queue,
            pipeline="summary",
            study_instance_uid=uid,
            source="pacs",
            requested_by="test",
        )
        worker = Worker(settings, sessions=node.sessions)
        killer = threading.Thread(target=_kill_when_arriving, args=(node, uid, orthanc))
        killer.start()
        worker.run_once()
        killer.join(30)
        failed = job_to_dict(queue.get(job.id), events=True)
        arrived = stored_count(node, uid)
        assert failed["status"] == "failed", failed
        assert 0 < arrived < 120
        assert failed["error"].startswith(
            f"C-MOVE from pacs (ORTHANC@127.0.0.1:{orthanc.dicom_port}) ended before it finished"
        ) or failed["error"].startswith("partial retrieve from pacs"), failed["error"]
        stages = [e["stage"] for e in failed["events"]]
        assert "pipeline" not in stages and not failed["outputs"]  # nothing half-retrieved ran
        row = study_row(node, uid)
        assert row.status == "incomplete" and "jobs retry" in (row.note or "")
        # Orthanc comes back (same storage; peers added by REST live in its memory only).
        orthanc.start()
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        queue.retry(job.id)
        assert study_row(node, uid).status == "retrieving"
        worker.run_once()
        deadline = time.monotonic() + 60
        while queue.get(job.id).status not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = job_to_dict(queue.get(job.id), events=True)
        assert done["status"] == "done", done["error"]
        assert done["retrieve"]["received"] == 120 and stored_count(node, uid) == 120
        assert study_row(node, uid).status == "complete"
        node.stop()
    finally:
        orthanc.stop()


def _kill_when_arriving(node: Node, uid: str, orthanc: Orthanc) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if stored_count(node, uid) >= 10:
                orthanc.kill()
                return
        except Exception:
            pass
        time.sleep(0.01)


def test_nobody_listening_and_a_silent_peer_end_in_sentences_not_hangs(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts TCP, never speaks DICOM
    closed = free_port()
    settings = node_settings(
        tmp_path,
        sources=[
            {
                "name": "silent",
                "ae_title": "SILENT",
                "host": "127.0.0.1",
                "port": silent.getsockname()[1],
                "response_timeout": 1,
            },
            {
                "name": "down",
                "ae_title": "DOWN",
                "host": "127.0.0.1",
                "port": closed,
                "response_timeout": 1,
            },
        ],
    )
    try:
        started = time.monotonic()
        with pytest.raises(
            RetrieveError, match=r"C-FIND: silent \(SILENT@127\.0\.0\.1:\d+\) did not answer"
        ):
            open_source(settings.source("silent"), settings.node).find_studies(StudyQuery())
        with pytest.raises(
            RetrieveError, match=r"C-FIND: down \(DOWN@127\.0\.0\.1:\d+\) did not answer"
        ):
            open_source(settings.source("down"), settings.node).find_studies(StudyQuery())
        assert time.monotonic() - started < 15
    finally:
        silent.close()


def test_dcmqrscp_as_a_second_pacs_move_destination_unknown_then_move_and_get(
    tmp_path: Path,
) -> None:
    datasets = ct(6, PatientID="QR-1")
    paths = write_datasets(tmp_path / "s", datasets)
    uid = str(datasets[0].StudyInstanceUID)
    archive = DcmQRSCP(tmp_path / "qr")  # knows no move destination yet
    settings = node_settings(
        tmp_path, sources=[archive.source(), archive.source("archive-get", retrieve="get")]
    )
    with archive:
        archive.load(paths)
        node = Node(settings, workers=0)
        node.start()
        try:
            queue = JobQueue(node.sessions)
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid=uid,
                source="archive",
                requested_by="test",
            )
            Worker(settings, sessions=node.sessions).run_once()
            failed = job_to_dict(queue.get(job.id))
            assert failed["error"] == (
                f"archive (DCMQRSCP@127.0.0.1:{archive.port}) does not know the move destination "
                f"TESTNODE: add TESTNODE (this node's host, port {settings.node.port}) to its "
                'DICOM peers, or retrieve with retrieve = "get"'
            )
            # C-GET needs no move destination.
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid=uid,
                source="archive-get",
                requested_by="test",
            )
            Worker(settings, sessions=node.sessions).run_once()
            got = job_to_dict(queue.get(job.id))
            assert got["status"] == "done", got["error"]
            assert got["retrieve"]["received"] == 6
        finally:
            node.stop()
    # Told where TESTNODE listens, the archive moves the study there.
    archive.peers = {"node": (NODE_AE, "127.0.0.1", settings.node.port)}
    with archive:
        node = Node(settings, workers=0)
        node.start()
        try:
            queue = JobQueue(node.sessions)
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid=uid,
                source="archive",
                requested_by="test",
            )
            Worker(settings, sessions=node.sessions).run_once()
            moved = job_to_dict(queue.get(job.id), events=True)
            assert moved["status"] == "done", moved["error"]
            # dcmqrscp does not count a study's instances: they are counted one by one.
            assert moved["retrieve"]["received"] == 6 and moved["retrieve"]["expected"] == 6
            assert "6 instance(s) expected" in moved["events"][2]["message"]
        finally:
            node.stop()


# -- C-GET ---------------------------------------------------------------------------------


def test_c_get_brings_every_sop_class_and_transfer_syntax_as_stored(tmp_path: Path) -> None:
    # TESTNODE is declared with a port nobody listens on: a C-MOVE could not reach it
    # (the firewalled case), a C-GET needs no connection back.
    with Orthanc(tmp_path / "orthanc") as orthanc:
        datasets = mixed_study()
        paths = write_datasets(tmp_path / "s", datasets)
        upload(orthanc, paths)
        uid = str(datasets[0].StudyInstanceUID)
        settings = node_settings(
            tmp_path, sources=[orthanc.source(retrieve="get")], destinations=[orthanc.destination()]
        )
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", free_port())
        node = Node(settings, workers=0)
        node.start()
        try:
            queue = JobQueue(node.sessions)
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid=uid,
                source="pacs",
                requested_by="test",
                send_to=["pacs"],
            )
            Worker(settings, sessions=node.sessions).run_once()
            done = wait_job(node, job.id)
            assert done["status"] == "done", done["error"]
            assert done["retrieve"]["received"] == len(datasets)
            assert "by C-GET" in done["events"][2]["message"]
            _assert_stored_as_sent(node, datasets)
        finally:
            node.stop()


def _assert_stored_as_sent(node: Node, datasets: list[pydicom.Dataset]) -> None:
    """Each instance stored in its own transfer syntax, pixel data byte for byte."""
    with node.sessions() as session:
        rows = {r.sop_instance_uid: r for r in session.execute(select(Instance)).scalars()}
    for ds in datasets:
        row = rows[str(ds.SOPInstanceUID)]
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID, ds.SOPClassUID
        stored = pydicom.dcmread(node.store.root / row.path)
        assert stored.PixelData == ds.PixelData


# -- DICOMweb ------------------------------------------------------------------------------


def test_wado_rs_pull_and_stow_rs_delivery_through_orthanc_dicomweb(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    datasets = mixed_study()
    orthanc_id = upload(orthanc, write_datasets(tmp_path / "s", datasets))
    uid = str(datasets[0].StudyInstanceUID)
    web = {"kind": "dicomweb", "url": orthanc.dicomweb_url}
    settings = node_settings(
        tmp_path,
        sources=[{"name": "pacsweb", **web}],
        destinations=[{"name": "pacs", **web}],
        routes=[ROUTE],
    )
    node = Node(settings, workers=1)
    node.start()
    try:
        (match,) = open_source(settings.sources[0], settings.node).find_studies(
            StudyQuery(patient_id="MIXED-1")
        )
        assert match.study_instance_uid == uid and match.instance_count == len(datasets)
        job = request_study(
            settings,
            JobQueue(node.sessions),
            pipeline="summary",
            study_instance_uid=uid,
            source="pacsweb",
            requested_by="test",
        )
        done = wait_job(node, job.id)
        assert done["status"] == "done", done
        assert "by WADO-RS" in done["events"][2]["message"]
        assert done["retrieve"]["received"] == len(datasets)
        _assert_stored_as_sent(node, datasets)
        # STOW-RS into the same study, and the same timeline words as C-STORE delivery.
        (output,) = done["outputs"]
        assert output["status"] == "sent" and output["destination"] == "pacs"
        assert any(
            e["stage"] == "delivery" and e["message"] == "1 object(s) stored at pacs"
            for e in done["events"]
        )
        instances = orthanc.instances_of_study(orthanc_id)
        assert output["sop_instance_uid"] in {
            i["MainDicomTags"]["SOPInstanceUID"] for i in instances
        }
    finally:
        node.stop()


def test_dicomweb_basic_auth_and_wrong_credentials(tmp_path: Path) -> None:
    config = {"AuthenticationEnabled": True, "RegisteredUsers": {"node": "s3cret-pass"}}
    with Orthanc(tmp_path / "orthanc", dicomweb=True, config=config) as orthanc:
        datasets = ct(2, PatientID="AUTH-1")
        upload(orthanc, write_datasets(tmp_path / "s", datasets))
        base = {
            "kind": "dicomweb",
            "url": orthanc.dicomweb_url,
            "auth": "basic",
            "username": "node",
        }
        settings = node_settings(
            tmp_path,
            sources=[
                {"name": "good", **base, "password": "s3cret-pass"},
                {"name": "bad", **base, "password": "wrong"},
            ],
        )
        good = open_source(settings.source("good"), settings.node)
        assert len(good.find_studies(StudyQuery(patient_id="AUTH-1"))) == 1
        bad = open_source(settings.source("bad"), settings.node)
        with pytest.raises(RetrieveError) as refused:
            bad.find_studies(StudyQuery(patient_id="AUTH-1"))
        assert str(refused.value).startswith(
            f"QIDO-RS: bad ({orthanc.dicomweb_url}) answered HTTP 401"
        )
        assert str(refused.value).endswith("check the credentials of this peer")
        # Without the plugin's root in the URL: a 404 says where to look.
        wrong = settings.source("good").model_copy(update={"url": orthanc.url + "/nothing"})
        with pytest.raises(RetrieveError, match=r"answered HTTP 404.*check the peer's url"):
            open_source(wrong, settings.node).find_studies(StudyQuery())


# -- REST API ------------------------------------------------------------------------------


def test_post_jobs_needs_admin_and_answers_each_problem(orthanc: Orthanc, tmp_path: Path) -> None:
    datasets = ct(3, PatientID="API-1")
    upload(orthanc, write_datasets(tmp_path / "s", datasets))
    uid = str(datasets[0].StudyInstanceUID)
    admin, reader = "admin-token-0123456789", "read-token-0123456789"
    settings = node_settings(
        tmp_path,
        sources=[
            orthanc.source(),
            {
                "name": "down",
                "ae_title": "DOWN",
                "host": "127.0.0.1",
                "port": free_port(),
                "response_timeout": 1,
            },
        ],
        destinations=[orthanc.destination()],
        routes=[ROUTE],
        api={
            "enabled": True,
            "port": 0,
            "tokens": [
                {"token": admin, "role": "admin", "name": "ops"},
                {"token": reader, "role": "read"},
            ],
        },
    )
    node = Node(settings, workers=1)
    node.start()
    try:
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        assert node.api is not None
        api = httpx.Client(base_url=f"http://127.0.0.1:{node.api.port}", trust_env=False)
        body = {"pipeline": "summary", "study_instance_uid": uid, "source": "pacs"}
        as_admin = {"Authorization": f"Bearer {admin}"}
        refused = api.post("/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {reader}"})
        assert refused.status_code == 403
        assert api.post("/api/v1/jobs", json=body).status_code == 401
        for change, status, detail in (
            ({"pipeline": "nope"}, 422, "no pipeline named 'nope' is installed"),
            ({"source": "elsewhere"}, 422, "no source named 'elsewhere' (sources: pacs, down)"),
            ({"source": "down"}, 502, "C-FIND: down (DOWN@127.0.0.1:"),
            ({"send_to": ["mars"]}, 422, "send_to: unknown destination 'mars'"),
            ({"study_instance_uid": "1.2.3"}, 422, "study 1.2.3 is not at source pacs"),
            ({"colour": "red"}, 422, "colour: Extra inputs are not permitted"),
        ):
            answer = api.post("/api/v1/jobs", json={**body, **change}, headers=as_admin)
            assert answer.status_code == status, (change, answer.text)
            assert detail in answer.json()["detail"], (change, answer.text)
        created = api.post("/api/v1/jobs", json=body, headers=as_admin)
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["status"] == "queued" and job["requested_by"] == "api:ops"
        assert job["source"] == "pacs" and job["retrieve"]["finished_at"] is None
        busy = api.post("/api/v1/jobs", json=body, headers=as_admin)
        if busy.status_code == 409:  # the worker may already have finished it
            assert f"job {job['id']} already runs summary" in busy.json()["detail"]
        done = wait_job(node, job["id"])
        assert done["status"] == "done" and done["retrieve"]["received"] == 3
        shown = api.get(f"/api/v1/jobs/{job['id']}", headers=as_admin).json()
        assert shown["retrieve"] == done["retrieve"]
        page = " ".join(api.get(f"/dashboard/jobs/{job['id']}", headers=as_admin).text.split())
        assert '<th>Retrieve</th><td id="retrieve">from pacs: 3 of 3 instance(s)' in page
        assert "<th>Requested by</th><td>api:ops</td>" in page
    finally:
        node.stop()


# -- backfill ------------------------------------------------------------------------------


def test_backfill_over_50_studies_processes_each_once(
    orthanc: Orthanc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uids = []
    for i in range(50):
        datasets = ct(1, PatientID=f"BF{i:02d}", StudyDate=f"202611{1 + i % 28:02d}")
        upload(orthanc, write_datasets(tmp_path / f"s{i}", datasets))
        uids.append(str(datasets[0].StudyInstanceUID))
    mr = ct(1, PatientID="BF-MR", Modality="MR", SOPClassUID=pydicom.uid.MRImageStorage)
    upload(orthanc, write_datasets(tmp_path / "mr", mr))
    settings = node_settings(
        tmp_path, sources=[orthanc.source()], destinations=[orthanc.destination()], routes=[ROUTE]
    )
    node = Node(settings, workers=1)
    node.start()
    try:
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        path = config_file(tmp_path, settings)
        args = [
            "backfill",
            "--config",
            str(path),
            "--from",
            "pacs",
            "--pipeline",
            "summary",
            "--modality",
            "CT",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-30",
        ]
        assert cli([*args, "--dry-run"]) == 0
        assert "dry run: 50 matching studies at pacs; 50 queued" in capsys.readouterr().out
        assert not JobQueue(node.sessions).list()
        assert cli(args) == 0
        assert "50 matching studies at pacs; 50 queued for summary, 0 skipped" in (
            capsys.readouterr().out
        )
        deadline = time.monotonic() + 240
        queue = JobQueue(node.sessions)
        while True:
            jobs = queue.list(limit=1000)
            if len(jobs) == 50 and all(j.status in ("done", "failed") for j in jobs):
                break
            assert time.monotonic() < deadline, [j.status for j in jobs]
            time.sleep(0.5)
        assert {j.status for j in jobs} == {"done"}
        assert {j.study_instance_uid for j in jobs} == set(uids)  # each once, no MR
        for uid in uids[:5]:
            orthanc_id = orthanc.find_study(uid)
            assert orthanc_id is not None and len(orthanc.instances_of_study(orthanc_id)) == 2
        assert cli(args) == 0
        out = capsys.readouterr().out
        assert "50 matching studies at pacs; 0 queued for summary, 50 skipped" in out
        assert "already processed by this pipeline (job" in out
        assert len(queue.list(limit=1000)) == 50
    finally:
        node.stop()


def test_backfill_rate_and_limit_space_and_cap_the_queue(orthanc: Orthanc, tmp_path: Path) -> None:
    for i in range(4):
        upload(orthanc, write_datasets(tmp_path / f"s{i}", ct(1, PatientID=f"R{i}")))
    settings = node_settings(tmp_path, sources=[orthanc.source()])
    node = Node(settings, workers=0)
    node.start()
    try:
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        from dicomnode.ondemand import backfill

        queue = JobQueue(node.sessions)
        result = backfill(
            settings,
            queue,
            source="pacs",
            pipeline="summary",
            requested_by="test",
            limit=3,
            rate_per_hour=60,
        )
        assert len(result.queued) == 3 and result.skipped[-1][1] == "over the limit of 3"
        times = sorted(when for _, _, when in result.queued)
        assert [round((t - times[0]).total_seconds()) for t in times] == [0, 60, 120]
        # Only the first is due now: a worker claims it and leaves the others queued.
        claimed = queue.claim("w1")
        assert claimed is not None and queue.claim("w2") is None
        with node.sessions() as session:
            later = session.execute(select(Job).where(Job.id != claimed.id)).scalars().all()
        assert {j.status for j in later} == {"queued"}
    finally:
        node.stop()


def test_study_query_checks_values_and_builds_dicom_ranges() -> None:
    from dicomnode.retrieval import QueryError, StudyMatch

    query = StudyQuery(since=date(2026, 11, 1), until=date(2026, 11, 30), modality="CT")
    assert query.matching() == {"ModalitiesInStudy": "CT", "StudyDate": "20261101-20261130"}
    assert StudyQuery(since=date(2026, 11, 1)).matching() == {"StudyDate": "20261101-"}
    assert StudyQuery(until=date(2026, 11, 1)).matching() == {"StudyDate": "-20261101"}
    for bad, message in (
        ({"study_instance_uid": "1.2/../3"}, "is not a valid UID"),
        ({"patient_id": "P*"}, "must be 1-64 characters without"),
        ({"modality": "ct"}, "is not a DICOM modality"),
        ({"since": date(2026, 2, 1), "until": date(2026, 1, 1)}, "since: later than until"),
    ):
        with pytest.raises(QueryError, match=message):
            StudyQuery(**bad)
    # What a source returns beyond the query is dropped on our side.
    match = StudyMatch("1.2.3", study_date="20261215", modalities=("MR",))
    assert not query.accepts(match)
    assert not StudyQuery(modality="MR", until=date(2026, 12, 1)).accepts(match)
    assert StudyQuery(modality="MR").accepts(match)


_RETRIEVE_IN_A_PROCESS = """
import json, sys
from dicomnode.config import Settings, SourceConfig
from dicomnode.receivers import make_store
from dicomnode.retrieval import StudyQuery, open_source

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

settings = Settings.model_validate(json.loads(sys.argv[1]))
store, _ = make_store(settings)
source = open_source(settings.sources[0], settings.node)
(match,) = source.find_studies(StudyQuery(study_instance_uid=sys.argv[2]))
before = kib("VmRSS")
report = source.retrieve_study(match, store, lambda: False, float("inf"))
print(json.dumps({"before": before, "peak": kib("VmHWM"), "received": report.completed}))

"""


def test_wado_rs_streams_a_study_in_bounded_memory(orthanc: Orthanc, tmp_path: Path) -> None:
    import subprocess
    import sys

    from dicomnode.database import upgrade
    from dicomnode.testing.peers import write_large_instance

    uid = str(generate_uid())
    paths = [
        write_large_instance(tmp_path / f"large{i}.dcm", 64, study_instance_uid=uid)
        for i in range(8)
    ]  # 8 instances of 32 MiB: a 256 MiB study; streamed, memory grows by far less than one
    for path in paths:
        orthanc.upload(path)
    settings = node_settings(
        tmp_path, sources=[{"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url}]
    )
    upgrade(settings.database.url)
    run = subprocess.run(
        [sys.executable, "-c", _RETRIEVE_IN_A_PROCESS, settings.model_dump_json(), uid],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["received"] == 8
    growth_mib = (figures["peak"] - figures["before"]) / 1024
    print(f"WADO-RS of a 256 MiB study: memory grew by {growth_mib:.1f} MiB")
    assert growth_mib < 40, f"memory grew by {growth_mib:.0f} MiB for a 256 MiB study"
    stored = next((Path(settings.storage.path) / "instances").rglob("*.dcm"))
    original = next(
        p
        for p in paths
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == stored.stem
    )
    assert pydicom.dcmread(stored).PixelData == pydicom.dcmread(original).PixelData


def _scripted_pacs(move: str, node_port: int) -> Any:
    """A pynetdicom Q/R SCP whose C-MOVE hangs or refuses: faults a real PACS rarely shows on cue.

    C-FIND answers one study of 300 instances; C-MOVE either never answers
    (``"hang"``) or refuses with 0xA702 (``"refuse"``).
    """
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    )

    release = threading.Event()

    def on_find(event: Any) -> Iterator[tuple[int, pydicom.Dataset | None]]:
        ds = pydicom.Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = "1.2.3.4"
        ds.NumberOfStudyRelatedInstances = 300
        yield 0xFF00, ds

    def on_move(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", node_port  # the sub-operations' association goes to the node
        yield 300
        if move == "hang":
            release.wait(30)
        yield 0xA702, None

    ae = AE(ae_title="SCRIPTED")
    ae.add_requested_context(pydicom.uid.CTImageStorage)  # for the sub-operations' association
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)],
    )
    server.release = release  # type: ignore[attr-defined]
    return server


@pytest.mark.parametrize("move", ["hang", "refuse"])
def test_a_hung_or_refusing_move_ends_in_a_sentence(tmp_path: Path, move: str) -> None:
    settings = node_settings(tmp_path)
    server = _scripted_pacs(move, settings.node.port)
    try:
        port = server.server_address[1]
        source = {"name": "pacs", "ae_title": "SCRIPTED", "host": "127.0.0.1", "port": port}
        settings = settings.model_copy(
            update={"sources": [SourceConfig.model_validate({**source, "retrieve_timeout": 1})]}
        )
        node = Node(settings, workers=0)
        node.start()
        try:
            queue = JobQueue(node.sessions)
            job = request_study(
                settings,
                queue,
                pipeline="summary",
                study_instance_uid="1.2.3.4",
                source="pacs",
                requested_by="test",
            )
            started = time.monotonic()
            Worker(settings, sessions=node.sessions).run_once()
            failed = job_to_dict(queue.get(job.id))
            where = f"pacs (SCRIPTED@127.0.0.1:{port})"
            if move == "hang":
                assert time.monotonic() - started < 10
                assert failed["error"] == (
                    f"C-MOVE from {where} ended before it finished (still running after 1 s "
                    "(retrieve_timeout)); 0 instance(s) had been sent"
                )
            else:
                assert failed["error"] == (
                    f"C-MOVE from {where}: the source is out of resources and cannot send the "
                    "instances"
                )
            assert study_row(node, "1.2.3.4").status == "incomplete"
        finally:
            node.stop()
    finally:
        server.release.set()
        server.shutdown()


# -- TLS ----------------------------------------------------------------------------------


def test_tls_to_the_pacs_with_the_sites_ca_and_an_untrusted_certificate_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DICOM TLS (C-FIND, C-GET) and HTTPS (QIDO-RS, WADO-RS) to the PACS, trusting a site CA.

    Orthanc speaks DICOM TLS itself; its DICOMweb is behind a TLS terminator
    (see :class:`TLSTerminator` for why). Without the CA, each kind of source
    fails with a sentence that says the certificate is not trusted, not that
    the peer "did not answer".
    """
    # Many hosts set this; it must not override a source's own CA (psf/requests#3829).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ssl.get_default_verify_paths().openssl_cafile)
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    with (
        Orthanc(tmp_path / "orthanc", dicomweb=True, tls=pki) as orthanc,
        TLSTerminator(("127.0.0.1", orthanc.http_port), pki / "server.pem", pki / "server.key")
        as https,
    ):
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", free_port())
        studies = [ct(3, PatientID="TLS-1"), ct(2, PatientID="TLS-2")]
        for n, datasets in enumerate(studies):
            upload(orthanc, write_datasets(tmp_path / f"s{n}", datasets))
        web = {"kind": "dicomweb", "url": f"{https.url}/dicom-web"}
        settings = node_settings(
            tmp_path,
            sources=[
                orthanc.source("pacs", retrieve="get"),
                {"name": "pacsweb", **web, "ca_certificates": str(pki / "ca.pem")},
                {**orthanc.source("untrusted"), "ca_certificates": None},
                {"name": "webuntrusted", **web},
            ],
            # Results go back by STOW-RS over HTTPS, and by C-STORE over DICOM TLS.
            destinations=[
                {"name": "pacs", **web, "ca_certificates": str(pki / "ca.pem")},
                {**orthanc.source("pacstls"), "kind": "dimse"},
            ],
            routes=[{**ROUTE, "send_to": ["pacs", "pacstls"]}],
        )
        for name, datasets in zip(("pacs", "pacsweb"), studies, strict=True):
            (match,) = open_source(settings.source(name), settings.node).find_studies(
                StudyQuery(patient_id=str(datasets[0].PatientID))
            )
            assert match.study_instance_uid == datasets[0].StudyInstanceUID
        with pytest.raises(RetrieveError, match="its TLS certificate is not trusted"):
            open_source(settings.source("untrusted"), settings.node).find_studies(StudyQuery())
        with pytest.raises(RetrieveError, match="CERTIFICATE_VERIFY_FAILED.*check ca_certificates"):
            open_source(settings.source("webuntrusted"), settings.node).find_studies(StudyQuery())
        node = Node(settings, workers=1)
        node.start()
        try:
            for source, datasets in zip(("pacs", "pacsweb"), studies, strict=True):
                job = request_study(
                    settings,
                    JobQueue(node.sessions),
                    pipeline="summary",
                    study_instance_uid=str(datasets[0].StudyInstanceUID),
                    source=source,
                    requested_by="test",
                )
                done = wait_job(node, job.id)
                assert done["status"] == "done", done
                assert done["retrieve"]["received"] == len(datasets)
                _assert_stored_as_sent(node, datasets)
                assert [o["status"] for o in done["outputs"]] == ["sent", "sent"], done
        finally:
            node.stop()
