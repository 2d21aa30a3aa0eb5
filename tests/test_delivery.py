"""Delivery: retries to exhaustion, admin retry, restart, 'sender', TLS, per-destination outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.jobs import JobQueue
from dicomnode.models import Instance
from dicomnode.testing.peers import Orthanc, free_port, storescu
from tests.conftest import NODE_AE
from tests.test_flow import wait_for_jobs, write_study
from tests.test_tls import pki  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

SUMMARY = {"summary": {"type": "tests.pipelines:SeriesSummary"}}


def test_exhausted_delivery_fails_the_job_and_retry_resends_once(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = make_settings(
        destinations=[orthanc.destination()],
        routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
        pipelines=SUMMARY,
        delivery={"max_attempts": 2, "backoff_seconds": 0.2, "check_interval": 0.2},
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 2), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    (job,) = wait_for_jobs(node)
    assert job["status"] == "failed"
    assert job["error"].startswith("delivery to pacs failed after 2 attempts: ")
    uid = job["outputs"][0]["sop_instance_uid"]
    with orthanc:
        JobQueue(node.sessions).retry(job["id"])
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done"
        assert job["outputs"][0]["sop_instance_uid"] == uid  # same UID on resend
        JobQueue(node.sessions).retry(job["id"])  # a done job re-runs: same UIDs again
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done"
        study = orthanc.find_study(job["study_instance_uid"])
        assert study is not None and len(orthanc.instances_of_study(study)) == 1


def test_pending_deliveries_survive_a_restart(make_settings, start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    orthanc = Orthanc(tmp_path / "orthanc")
    settings = make_settings(
        destinations=[orthanc.destination()],
        routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
        pipelines=SUMMARY,
        delivery={"max_attempts": 100, "backoff_seconds": 0.2, "backoff_max_seconds": 0.5},
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 2), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    deadline = time.monotonic() + 60
    while True:
        (job,) = wait_for_jobs(node, final=False)
        if job["status"] == "sending" and job["outputs"][0]["attempts"] >= 1:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    node.stop()
    with orthanc:
        restarted = start_node(settings, workers=0)
        (job,) = wait_for_jobs(restarted)
        assert job["status"] == "done"
        assert orthanc.find_study(job["study_instance_uid"]) is not None


def test_sender_destination_returns_results_to_the_caller(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = make_settings(
            senders=[{"ae_title": orthanc.aet, "port": orthanc.dicom_port}],
            routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["sender"]}],
            pipelines=SUMMARY,
        )
        node = start_node(settings, workers=1)
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", node.receiver.port)
        (tmp_path / "s").mkdir()
        ids = [orthanc.upload(p)["ParentStudy"] for p in write_study(tmp_path / "s", 2)]
        orthanc.store_to("dicomnode", [ids[0]])
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done", job
        assert len(orthanc.instances_of_study(ids[0])) == 3


def test_tls_destination(make_settings, start_node, tmp_path: Path, pki: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # A second node with TLS and client-certificate checks plays the PACS.
    pacs_root = tmp_path / "pacs"
    pacs_root.mkdir()
    pacs_settings = make_settings(
        node={
            "ae_title": "TLSPACS",
            "port": free_port(),
            "tls": {
                "enabled": True,
                "certificate": str(pki / "server.pem"),
                "private_key": str(pki / "server.key"),
                "ca_certificates": str(pki / "ca.pem"),
                "require_client_certificate": True,
            },
        },
        storage={"path": str(pacs_root / "storage")},
        database={"url": f"sqlite:///{pacs_root / 'db.sqlite'}"},
    )
    pacs = start_node(pacs_settings)
    settings = make_settings(
        destinations=[
            {
                "name": "pacs",
                "ae_title": "TLSPACS",
                "host": "127.0.0.1",
                "port": pacs.receiver.port,
                "tls": True,
                "ca_certificates": str(pki / "ca.pem"),
                "certificate": str(pki / "client.pem"),
                "private_key": str(pki / "client.key"),
            }
        ],
        routes=[{"pipeline": "summary", "match": {"Modality": "CT"}, "send_to": ["pacs"]}],
        pipelines=SUMMARY,
    )
    node = start_node(settings, workers=1)
    storescu(
        write_study(tmp_path, 2), host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE
    )
    (job,) = wait_for_jobs(node)
    assert job["status"] == "done", job
    with pacs.sessions() as session:
        uids = session.execute(select(Instance.sop_instance_uid)).scalars().all()
    assert uids == [job["outputs"][0]["sop_instance_uid"]]


def test_each_destination_gets_the_kinds_of_result_it_takes(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.outputs import output_kind
    from dicomnode.synthetic import Nodule, ct_series, write_series

    # A PACS that shows SEG and SR, and one of the kind that shows only GSPS and images.
    with (
        Orthanc(tmp_path / "modern", aet="MODERN") as modern,
        Orthanc(tmp_path / "legacy", aet="LEGACY") as legacy,
    ):
        settings = make_settings(
            destinations=[
                {**modern.destination("modern"), "outputs": ["seg", "sr"]},
                {**legacy.destination("legacy"), "outputs": ["gsps", "sc"]},
            ],
            routes=[
                {
                    "pipeline": "spheres",
                    "match": {"Modality": "CT"},
                    "send_to": ["modern", "legacy"],
                }
            ],
            pipelines={"spheres": {"type": "tests.pipelines:HyperdenseSpheres"}},
        )
        node = start_node(settings, workers=1)
        nodule = Nodule((0.0, 0.0, 15.0), 12.0, hu=300.0)
        series = ct_series(24, 64, 64, pixel_spacing=(4.0, 4.0), seed=4, nodules=[nodule])
        storescu(
            write_series(series, tmp_path / "ct"),
            host="127.0.0.1",
            port=node.receiver.port,
            called_aet=NODE_AE,
        )
        (job,) = wait_for_jobs(node)
        assert job["status"] == "done", job
        got: dict[str, set[str | None]] = {"modern": set(), "legacy": set()}
        for output in job["outputs"]:
            assert output["status"] in ("sent", "skipped"), output
            if output["status"] == "sent":
                got[output["destination"]].add(output_kind(output["sop_class_uid"]))
        assert got == {"modern": {"seg", "sr"}, "legacy": {"gsps", "sc"}}, job["outputs"]
        for orthanc, modalities in ((modern, ["SEG", "SR"]), (legacy, ["OT", "PR"])):
            (study,) = orthanc.studies()
            found = sorted(s["MainDicomTags"]["Modality"] for s in orthanc.series_of_study(study))
            assert found == modalities
        assert any("not for legacy (it takes gsps, sc)" in e["message"] for e in job["events"])
