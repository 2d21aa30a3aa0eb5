"""Late series and revised results (docs/revisions.md).

The node runs in the test's process: the store takes the synthetic CT as a
receiver would, :class:`~dicomnode.assembly.Assembler` ticks after the quiet
time, a :class:`~dicomnode.workers.Worker` runs the cheap
``tests.pipelines:HyperdenseSpheres`` detector (SEG + TID 1500 SR, reads the
largest CT series). The last test goes storescu -> node -> Orthanc.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.assembly import Assembler
from dicomnode.config import Settings
from dicomnode.database import upgrade
from dicomnode.jobs import JobQueue, job_to_dict
from dicomnode.models import Job, JobStatus, Study
from dicomnode.receivers import make_store
from dicomnode.store import InstanceStore, Provenance
from dicomnode.synthetic import Nodule, ct_series
from dicomnode.workers import Worker

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
STUDY = "1.2.826.0.1.3680043.10.1409.17"
QUIET = 0.2


def spheres_settings(
    make_settings: Callable[..., Settings],
    window: float = 3600.0,
    version: str = "0.1",
    **more: Any,
) -> Settings:
    return make_settings(
        assembly={
            "quiet_seconds": QUIET,
            "early_quiet_seconds": 0.1,
            "check_interval": 0.1,
            "reopen_window_seconds": window,
        },
        routes=[{"pipeline": "spheres", "match": {"Modality": "CT"}, **more.pop("route", {})}],
        pipelines={"spheres": {"type": "tests.pipelines:HyperdenseSpheres", "version": version}},
        **more,
    )


def first_ct(slices: int = 12) -> list[Dataset]:
    """A small CT with one hyperdense nodule (HyperdenseSpheres finds it)."""
    return ct_series(
        slices,
        48,
        48,
        pixel_spacing=(4.0, 4.0),
        slice_thickness=5.0,
        seed=3,
        nodules=[Nodule((0.0, 0.0, 25.0), 16.0, hu=300.0)],
        study_instance_uid=STUDY,
        series_instance_uid=STUDY + ".1",
        series_description="Chest 5 mm",
    )


def late_ct() -> list[Dataset]:
    """A thinner, larger reconstruction of the same study, with a second nodule."""
    return ct_series(
        20,
        48,
        48,
        pixel_spacing=(4.0, 4.0),
        slice_thickness=3.0,
        seed=4,
        nodules=[
            Nodule((0.0, 0.0, 25.0), 16.0, hu=300.0),
            Nodule((-50.0, 30.0, 30.0), 14.0, hu=300.0),
        ],
        study_instance_uid=STUDY,
        series_instance_uid=STUDY + ".2",
        series_number=2,
        series_description="Chest 3 mm",
    )


def dose_report() -> list[Dataset]:
    """One dose screen capture (a single CT-class image): nothing a detector reads."""
    ds = first_ct(2)[0]
    ds.SeriesInstanceUID = STUDY + ".999"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    return [ds]


def raw(ds: Dataset) -> bytes:
    """*ds* encoded as a C-STORE carries it (explicit VR little endian, no file meta)."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    read_preamble(buffer, False)
    _read_file_meta_info(buffer)
    return buffer.read()


def push(store: InstanceStore, datasets: Sequence[Dataset]) -> None:
    for ds in datasets:
        store.store(raw(ds), "1.2.840.10008.1.2.1", provenance=Provenance("SCANNER"))


def settle(assembler: Assembler) -> list[str]:
    """Tick once the study has been quiet long enough."""
    time.sleep(QUIET + 0.05)
    return assembler.tick()


class Node:
    """Store, assembler and an in-process worker on one settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        upgrade(settings.database.url)  # what `serve` does at start-up
        self.store, self.engine = make_store(settings)
        self.sessions = self.store.sessions
        self.assembler = Assembler(self.sessions, settings.assembly, settings.routes)
        self.worker = Worker(settings, sessions=self.sessions)
        self.queue = JobQueue(self.sessions)

    def job(self) -> dict[str, Any]:
        with self.sessions() as session:
            job_id = session.execute(select(Job.id)).scalar_one()
        return job_to_dict(self.queue.get(job_id), events=True)

    def study(self) -> Study:
        with self.sessions() as session:
            return session.execute(select(Study)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def node_factory() -> Any:
    nodes: list[Node] = []

    def make(settings: Settings) -> Node:
        nodes.append(Node(settings))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


def run_first(node: Node) -> dict[str, Any]:
    push(node.store, first_ct())
    assert settle(node.assembler) == [STUDY]
    assert node.worker.run_once()
    job = node.job()
    assert job["status"] == "done" and job["revision"] == 1, job
    return job


def objects(job: dict[str, Any], number: int, sop_class: str) -> list[dict[str, str]]:
    revision = next(r for r in job["revisions"] if r["number"] == number)
    return [o for o in revision["objects"] if o["sop_class_uid"] == sop_class]


def result_file(node: Node, job: dict[str, Any], sop_uid: str) -> Path:
    return node.store.results_dir(job["id"]) / f"{sop_uid}.dcm"


def stages_after(job: dict[str, Any], stage: str) -> list[str]:
    stages = [e["stage"] for e in job["events"]]
    last = len(stages) - 1 - stages[::-1].index(stage)
    return stages[last:]


def test_late_series_within_the_window_revises_the_results(make_settings, node_factory) -> None:  # type: ignore[no-untyped-def]
    import highdicom as hd

    from dicomnode.testing.peers import dciodvfy

    node = node_factory(spheres_settings(make_settings))
    first = run_first(node)
    (sr1,) = objects(first, 1, SR_CLASS)
    push(node.store, late_ct())
    assert node.study().status == "receiving"  # its quiet timer runs again
    assert settle(node.assembler) == [STUDY]
    queued = node.job()
    assert queued["status"] == "queued"
    late = queued["events"][-1]
    assert late["stage"] == "late"
    assert (
        "late series 1.2.826.0.1.3680043.10.1409.17.2 (CT, 'Chest 3 mm', 20 instances)"
        in (late["message"])
    )
    assert "queued again: spheres re-runs if its inputs changed" in late["message"]
    assert "re-opened by late series" in (node.study().note or "")

    assert node.worker.run_once()
    job = node.job()
    assert job["status"] == "done" and job["revision"] == 2, job
    revision = next(e for e in job["events"] if e["stage"] == "revision")
    assert (
        "series 1.2.826.0.1.3680043.10.1409.17.2 (CT, 'Chest 3 mm', 20 instances) replaces"
        in (revision["message"])
    )
    assert "results are revision 2" in revision["message"]
    assert job["revisions"][1]["reason"].startswith("series 1.2.826.0.1.3680043.10.1409.17.2")
    (sr2,) = objects(job, 2, SR_CLASS)
    assert sr2["sop_instance_uid"] != sr1["sop_instance_uid"]
    assert sr2["series_instance_uid"] != sr1["series_instance_uid"]  # a series per revision

    path = result_file(node, job, sr2["sop_instance_uid"])
    ds = pydicom.dcmread(path)
    (study_item,) = ds.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == STUDY
    (series_item,) = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == sr1["series_instance_uid"]
    (cited,) = series_item.ReferencedSOPSequence
    assert cited.ReferencedSOPClassUID == SR_CLASS
    assert cited.ReferencedSOPInstanceUID == sr1["sop_instance_uid"]
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "UNVERIFIED"
    assert "rev 2" in ds.SeriesDescription
    content = hd.sr.srread(path).content
    assert len(content.get_volumetric_roi_measurement_groups()) == 2  # both nodules, once each
    (seg2,) = objects(job, 2, SEG_CLASS)
    assert dciodvfy(path) == []
    assert dciodvfy(result_file(node, job, seg2["sop_instance_uid"])) == []
    # The revision read the late series, not the first.
    assert list(job["revisions"][1]["inputs"]) == [STUDY + ".2"]


def test_late_series_the_pipeline_does_not_read_reruns_nothing(make_settings, node_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(spheres_settings(make_settings))
    first = run_first(node)
    push(node.store, dose_report())
    assert settle(node.assembler) == [STUDY]
    assert node.worker.run_once()
    job = node.job()
    assert job["status"] == "done" and job["revision"] == 1
    assert len(job["revisions"]) == 1
    assert job["outputs"] == first["outputs"]  # nothing re-made, nothing re-sent
    tail = stages_after(job, "late")
    assert "infer" not in tail and "write" not in tail
    done = job["events"][-1]
    assert done["stage"] == "done"
    assert "inputs unchanged" in done["message"]
    assert f"not {STUDY}.999 (CT, 1 instances)" in done["message"]
    assert "revision 1 stands, nothing re-sent" in done["message"]


@pytest.mark.parametrize("window", [0.0, 0.001])
def test_late_series_outside_the_window_does_not_reopen(
    make_settings, node_factory, window: float
) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(spheres_settings(make_settings, window=window))
    run_first(node)
    time.sleep(0.01)
    push(node.store, late_ct())
    assert settle(node.assembler) == [STUDY]
    study = node.study()
    assert study.status == "complete" and study.instance_count == 32  # stored, counted
    assert "outside the re-open window: stored; jobs that ran are not re-run" in (study.note or "")
    job = node.job()
    assert job["status"] == "done" and job["revision"] == 1
    event = job["events"][-1]
    assert event["stage"] == "late" and event["level"] == "warning"
    assert f"outside the re-open window ({window:g} s)" in event["message"]
    assert f"'jobs retry {job['id']}' runs spheres on the whole study" in event["message"]
    assert not node.worker.run_once()  # nothing queued


def test_reopened_study_survives_a_restart(make_settings, node_factory) -> None:  # type: ignore[no-untyped-def]
    settings = spheres_settings(make_settings)
    before = node_factory(settings)
    run_first(before)
    push(before.store, late_ct())
    before.close()  # the node stops while the study is receiving again
    after = node_factory(settings)
    assert after.study().status == "receiving"
    assert settle(after.assembler) == [STUDY]
    after.close()  # and again between the re-queue and the run
    again = node_factory(settings)
    assert again.worker.run_once()
    job = again.job()
    assert job["status"] == "done" and job["revision"] == 2
    assert [e["stage"] for e in job["events"]].count("late") == 1


def test_running_job_defers_the_decision_until_it_finishes(make_settings, node_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(spheres_settings(make_settings))
    first = run_first(node)
    with node.sessions.begin() as session:  # as if its results were still being delivered
        session.get_one(Job, first["id"]).status = JobStatus.SENDING
    push(node.store, late_ct())
    assert settle(node.assembler) == []
    assert node.study().status == "receiving" and node.job()["status"] == "sending"
    with node.sessions.begin() as session:
        session.get_one(Job, first["id"]).status = JobStatus.DONE
    assert node.assembler.tick() == [STUDY]
    assert node.job()["status"] == "queued"


def test_retry_after_a_model_update_is_a_revision_citing_the_previous(
    make_settings, node_factory, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from dicomnode.cli import main as cli

    node = node_factory(spheres_settings(make_settings))
    first = run_first(node)
    (sr1,) = objects(first, 1, SR_CLASS)
    config = tmp_path / "node.toml"
    config.write_text(f'[database]\nurl = "{node.settings.database.url}"\n')
    # The same model again: the same revision, the same UIDs (a resend duplicates nothing).
    assert cli(["jobs", "retry", str(first["id"]), "--config", str(config)]) == 0
    assert node.worker.run_once()
    same = node.job()
    assert same["revision"] == 1 and len(same["revisions"]) == 1
    assert objects(same, 1, SR_CLASS) == [sr1]
    # The bundle is updated: the retry makes revision 2, citing revision 1.
    updated = node_factory(spheres_settings(make_settings, version="0.2"))
    assert cli(["jobs", "retry", str(first["id"]), "--config", str(config)]) == 0
    assert updated.worker.run_once()
    job = updated.job()
    assert (
        job["status"] == "done" and job["revision"] == 2 and job["model"] == "hyperdense-test 0.2"
    )
    assert "model hyperdense-test 0.2 replaces hyperdense-test 0.1" in job["revisions"][1]["reason"]
    (sr2,) = objects(job, 2, SR_CLASS)
    ds = pydicom.dcmread(result_file(updated, job, sr2["sop_instance_uid"]))
    cited = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [c.ReferencedSOPInstanceUID for c in cited] == [sr1["sop_instance_uid"]]
    capsys.readouterr()
    assert cli(["jobs", "show", str(first["id"]), "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "revision: 2" in shown and "\nrevisions:\n" in shown
    assert "model hyperdense-test 0.2 replaces hyperdense-test 0.1" in shown


def _orthanc_reports(orthanc: Any, study_id: str) -> dict[str, Dataset]:
    """Every SR in the Orthanc study, by SOP Instance UID (downloaded whole)."""
    reports = {}
    for instance in orthanc.instances_of_study(study_id):
        data = orthanc.client.get(f"/instances/{instance['ID']}/file").content
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.SOPClassUID == SR_CLASS:
            reports[str(ds.SOPInstanceUID)] = ds
    return reports


@pytest.mark.slow
def test_late_series_in_orthanc_one_current_report_citing_the_first(
    make_settings, start_node, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """storescu -> node -> Orthanc; a dose report, then a late CT series; no duplicate findings.

    "No duplicate findings" (docs/revisions.md): of the SRs the job sent, exactly
    one is current (no other SR cites it) and it cites every other in Predecessor
    Documents Sequence, so a reader that honours it sees each finding once; each
    object went to Orthanc once (revision 1 objects + revision 2 objects, no
    more); and a late series the pipeline does not read adds nothing.
    """
    import highdicom as hd

    from dicomnode.synthetic import write_series
    from dicomnode.testing.peers import Orthanc, storescu
    from tests.conftest import NODE_AE
    from tests.test_flow import wait_for_jobs

    with Orthanc(tmp_path / "orthanc") as orthanc:
        settings = spheres_settings(
            make_settings,
            destinations=[orthanc.destination()],
            route={"send_to": ["pacs"]},
        )
        node = start_node(settings, workers=1)

        def send(datasets: Sequence[Dataset], folder: str) -> None:
            files = write_series(datasets, tmp_path / folder)
            result = storescu(files, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
            assert result.returncode == 0, result.stderr

        def settled(revisions: int, late_events: int) -> dict[str, Any]:
            deadline = time.monotonic() + 90
            while True:
                (job,) = wait_for_jobs(node, timeout=90)
                stages = [e["stage"] for e in job["events"]]
                if (
                    len(job["revisions"]) == revisions
                    and stages.count("late") == late_events
                    and job["status"] == "done"
                ):
                    return job
                assert time.monotonic() < deadline, job
                time.sleep(0.2)

        send(first_ct(), "ct1")
        first = settled(1, 0)
        study_id = orthanc.find_study(STUDY)
        assert study_id is not None
        # The scanner sent the images to the node; Orthanc (the PACS) holds the results.
        sent_first = len(orthanc.instances_of_study(study_id))
        assert sent_first == len(first["revisions"][0]["objects"])

        send(dose_report(), "dose")
        unchanged = settled(1, 1)
        assert "inputs unchanged" in unchanged["events"][-1]["message"]
        assert len(orthanc.instances_of_study(study_id)) == sent_first  # nothing new

        send(late_ct(), "ct2")
        job = settled(2, 2)
        assert all(o["status"] == "sent" for o in job["outputs"])
        instances = orthanc.instances_of_study(study_id)
        assert len(instances) == sent_first + len(job["revisions"][1]["objects"])
        reports = _orthanc_reports(orthanc, study_id)
        assert len(reports) == 2  # one per revision
        cited = {
            str(sop.ReferencedSOPInstanceUID)
            for ds in reports.values()
            for study_item in ds.get("PredecessorDocumentsSequence", [])
            for series_item in study_item.ReferencedSeriesSequence
            for sop in series_item.ReferencedSOPSequence
        }
        current = [uid for uid in reports if uid not in cited]
        (sr2,) = objects(job, 2, SR_CLASS)
        (sr1,) = objects(job, 1, SR_CLASS)
        assert current == [sr2["sop_instance_uid"]] and cited == {sr1["sop_instance_uid"]}
        # The current report's findings: each nodule once (distinct tracking UIDs).
        content = hd.sr.Comprehensive3DSR.from_dataset(reports[current[0]]).content
        groups = content.get_volumetric_roi_measurement_groups()
        uids = [str(g.tracking_uid) for g in groups]
        assert len(uids) == 2 and len(set(uids)) == 2
        segs = [
            s for s in orthanc.series_of_study(study_id) if s["MainDicomTags"]["Modality"] == "SEG"
        ]
        assert len(segs) == 2  # one SEG series per revision; the current SR names the new one
        descriptions = sorted(s["MainDicomTags"]["SeriesDescription"] for s in segs)
        assert "rev 2" in descriptions[1] and "rev" not in descriptions[0]
