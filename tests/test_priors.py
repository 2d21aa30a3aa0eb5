"""Finding priors: the node's own studies first, then a source (real SQLite, storescu, Orthanc).

The studies are small CT studies (pydicom's CT_small cloned) with the
attributes a prior search keys on; the node stores them as it stores any
study (storescu to its receiver, no route: they end ``unmatched``), and
Orthanc is the source, asked by C-FIND and retrieved from by C-GET.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import delete, func, select

from dicomnode.config import PriorsOptions, Settings
from dicomnode.followup.priors import CurrentStudy, NodePriors, find_priors
from dicomnode.models import Job, JobStatus, Study, StudyStatus
from dicomnode.service import Node
from dicomnode.testing.peers import Orthanc, free_port, storescu
from tests.conftest import NODE_AE
from tests.test_durability import ct_study

CURRENT = {
    "PatientID": "P1",
    "IssuerOfPatientID": "HOSP_A",
    "StudyDate": "20260801",
    "BodyPartExamined": "CHEST",
    "AccessionNumber": "ACC-CUR",
}


def study(folder: Path, n: int = 1, **attributes: Any) -> tuple[str, list[Path]]:
    """A new CT study of *n* slices written under *folder*: its UID and files."""
    slices = ct_study(n)
    values = {**CURRENT, "AccessionNumber": None, **attributes}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in slices:
        for keyword, value in values.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(slices[0].StudyInstanceUID), paths


def push_and_settle(node: Node, paths: list[Path], uids: list[str], timeout: float = 30) -> None:
    """storescu *paths* to *node*; wait until assembly has finished each study (no route: unmatched)."""
    sent = storescu(paths, host="127.0.0.1", port=node.receiver.port, called_aet=NODE_AE)
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + timeout
    while True:
        with node.sessions() as session:
            states = dict(
                session.execute(
                    select(Study.study_instance_uid, Study.status).where(
                        Study.study_instance_uid.in_(uids)
                    )
                ).all()
            )
        if len(states) == len(uids) and set(states.values()) == {StudyStatus.UNMATCHED}:
            return
        assert time.monotonic() < deadline, states
        time.sleep(0.2)


def node_priors(
    node: Node,
    study_instance_uid: str,
    event: Callable[..., None],
    *,
    job_id: int = 1,
    pipeline: str = "lung_nodule",
) -> NodePriors:
    """The worker's priors service for job *job_id* of *pipeline*, on *node*'s store."""
    return NodePriors(
        node.settings,
        node.sessions,
        lambda: node.store,
        job_id=job_id,
        pipeline=pipeline,
        study_instance_uid=study_instance_uid,
        event=event,
    )


def current_study(uid: str = "1.2.826.0.1.3680043.8.498.1", **changes: Any) -> CurrentStudy:
    values: dict[str, Any] = {
        "study_instance_uid": uid,
        "patient_id": "P1",
        "issuer_of_patient_id": "HOSP_A",
        "study_date": date(2026, 8, 1),
        "modality": "CT",
        "body_part": "CHEST",
        "accession_number": "ACC-CUR",
    }
    values.update(changes)
    return CurrentStudy(**values)


def test_the_nodes_own_priors_same_patient_issuer_modality_body_part_newest_first(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    settings = make_settings()
    node = start_node(settings)
    made = {
        "old": study(tmp_path / "old", StudyDate="20260110"),
        "june": study(tmp_path / "june", StudyDate="20260601"),
        "june_done": study(tmp_path / "june_done", StudyDate="20260601"),
        "mr": study(
            tmp_path / "mr",
            StudyDate="20260701",
            Modality="MR",
            SOPClassUID=pydicom.uid.MRImageStorage,
        ),
        "head": study(tmp_path / "head", StudyDate="20260702", BodyPartExamined="HEAD"),
        "other_issuer": study(
            tmp_path / "other_issuer", StudyDate="20260703", IssuerOfPatientID="HOSP_B"
        ),
        # Another patient's study that shares the current accession number.
        "same_accession": study(
            tmp_path / "same_accession",
            StudyDate="20260704",
            PatientID="P2",
            AccessionNumber="ACC-CUR",
        ),
        "too_old": study(tmp_path / "too_old", StudyDate="20220101"),
        "later": study(tmp_path / "later", StudyDate="20260901"),
        "no_body_part": study(
            tmp_path / "no_body_part", StudyDate="20250301", BodyPartExamined=None
        ),
    }
    uids = {key: uid for key, (uid, _) in made.items()}
    push_and_settle(node, [p for _, paths in made.values() for p in paths], list(uids.values()))
    with node.sessions.begin() as session:
        row = session.execute(
            select(Study).where(Study.study_instance_uid == uids["june_done"])
        ).scalar_one()
        session.add(
            Job(
                study_id=row.id,
                study_instance_uid=row.study_instance_uid,
                pipeline="lung_nodule",
                status=JobStatus.DONE,
            )
        )

    def search(**options: Any) -> Any:
        return find_priors(
            current_study(),
            sessions=node.sessions,
            storage=Path(settings.storage.path),
            sources=[],
            node=settings.node,
            pipeline="lung_nodule",
            options=PriorsOptions(**options),
        )

    found = search(max_priors=4)
    # Newest first; of the two of 1 June, the one this pipeline processed first.
    assert [c.study_instance_uid for c in found.chosen] == [
        uids["june_done"],
        uids["june"],
        uids["old"],
        uids["no_body_part"],  # no body part said: not a different one
    ]
    assert found.chosen[0].job_id is not None and found.chosen[1].job_id is None
    assert {c.origin for c in found.chosen} == {"this node"}
    assert any("of another issuer" in n for n in found.notes)
    assert any(uids["head"] in n and "HEAD, not CHEST" in n for n in found.notes)
    (one,) = search().chosen  # default: one prior
    assert one.study_instance_uid == uids["june_done"]
    assert "prior study" in search().reason and "this node" in search().reason
    # Window: one year back leaves only the studies of 2026.
    assert len(search(max_priors=5, max_years=0.7).chosen) == 3
    # A patient the node never saw: no prior, said so.
    none = find_priors(
        current_study(patient_id="NOBODY"),
        sessions=node.sessions,
        storage=Path(settings.storage.path),
        sources=[],
        node=settings.node,
        pipeline="lung_nodule",
        options=PriorsOptions(),
    )
    assert none.chosen == () and none.reason.startswith("no prior found")
    # The other patient with the same accession is never a prior of P1.
    assert uids["same_accession"] not in {
        c.study_instance_uid for c in search(max_priors=10).chosen
    }
    # Without Patient ID or Study Date nothing is looked for.
    assert (
        "no Patient ID"
        in find_priors(
            current_study(patient_id=None),
            sessions=node.sessions,
            storage=Path(settings.storage.path),
            sources=[],
            node=settings.node,
            pipeline="lung_nodule",
            options=PriorsOptions(),
        ).reason
    )


@pytest.mark.slow
def test_priors_at_a_source_found_by_c_find_retrieved_by_c_get_and_a_source_down(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    with Orthanc(tmp_path / "orthanc") as orthanc:
        prior_uid, prior_paths = study(
            tmp_path / "prior", n=3, StudyDate="20260301", AccessionNumber="ACC-P"
        )
        older_uid, older_paths = study(tmp_path / "older", StudyDate="20250301")
        other_uid, other_paths = study(
            tmp_path / "other", StudyDate="20260401", PatientID="P2", AccessionNumber="ACC-CUR"
        )
        issuer_uid, issuer_paths = study(
            tmp_path / "issuer", StudyDate="20260402", IssuerOfPatientID="HOSP_B"
        )
        for path in [*prior_paths, *older_paths, *other_paths, *issuer_paths]:
            orthanc.upload(path)
        down = {
            "name": "down",
            "ae_title": "DOWN",
            "host": "127.0.0.1",
            "port": free_port(),
            "response_timeout": 1,
        }
        settings = make_settings(sources=[down, orthanc.source(retrieve="get")])
        node = start_node(settings)
        # Orthanc answers C-FIND and C-GET only from AEs it knows.
        orthanc.add_modality("dicomnode", NODE_AE, "127.0.0.1", settings.node.port)
        current_uid, current_paths = study(
            tmp_path / "current", StudyDate="20260801", AccessionNumber="ACC-CUR"
        )
        push_and_settle(node, current_paths, [current_uid])
        events: list[tuple[str, str, str]] = []
        service = node_priors(
            node,
            current_uid,
            lambda stage, message, seconds, level: events.append((stage, message, level)),
            job_id=1,
        )
        from dicomnode.pipelines import SeriesInput

        series = SeriesInput("1.2.3", "CT", None, {}, tuple(current_paths))
        found = service.search(series, PriorsOptions(max_priors=3))
        assert [c.study_instance_uid for c in found.chosen] == [prior_uid, older_uid]
        assert (
            found.chosen[0].origin == "source pacs" and found.chosen[0].accession_number == "ACC-P"
        )
        assert any(n.startswith("source down unreachable: C-FIND: down") for n in found.notes), (
            found.notes
        )
        # A prior that is arriving at the node right now is left to assembly, not fetched.
        with node.sessions.begin() as session:
            session.add(
                Study(
                    study_instance_uid=older_uid,
                    patient_id="P1",
                    status=StudyStatus.RECEIVING,
                    instance_count=1,
                )
            )
        busy = service.search(series, PriorsOptions(max_priors=3))
        assert [c.study_instance_uid for c in busy.chosen] == [prior_uid]
        assert f"prior study {older_uid} is receiving at this node: not compared this time" in (
            busy.notes
        )
        with node.sessions.begin() as session:
            session.execute(delete(Study).where(Study.study_instance_uid == older_uid))
        # The other patient sharing the accession and the other issuer's patient: never.
        assert other_uid not in {c.study_instance_uid for c in found.chosen}
        assert issuer_uid not in {c.study_instance_uid for c in found.chosen}

        result = service.fetch(series, PriorsOptions())
        (prior,) = result.priors
        assert (
            prior.study_instance_uid == prior_uid and prior.origin == "retrieved from source pacs"
        )
        assert prior.study_date == date(2026, 3, 1) and prior.results == ()
        (prior_series,) = prior.series
        assert len(prior_series.paths) == 3 and all(p.is_file() for p in prior_series.paths)
        with node.sessions() as session:
            row = session.execute(
                select(Study).where(Study.study_instance_uid == prior_uid)
            ).scalar_one()
            assert row.status == StudyStatus.COMPLETE and "as a prior for job 1" in (row.note or "")
            # Retrieved as a prior: no route ran on it, no job was made.
            assert session.execute(select(func.count(Job.id))).scalar_one() == 0
        stages = [(stage, message) for stage, message, _ in events]
        assert any(s == "retrieve" and "by C-GET; 3 instance(s) expected" in m for s, m in stages)
        assert any(
            s == "retrieve" and m.startswith("3 instance(s) of prior study") for s, m in stages
        )
        assert ("priors", "warning") in {(s, level) for s, m, level in events if "unreachable" in m}

        # Asked again: the node holds it now, no second retrieve.
        events.clear()
        again = service.fetch(series, PriorsOptions())
        assert again.priors[0].origin == "this node"
        assert not [e for e in events if e[0] == "retrieve"]

        # The only source down and nothing at the node: why, in one sentence.
        lonely = make_settings(sources=[down])
        service.settings = lonely
        service.study_instance_uid = "1.2.826.0.1.3680043.8.498.77"
        alone = study(tmp_path / "alone", StudyDate="20260801", PatientID="LONELY")[1]
        none = service.fetch(SeriesInput("1.2.4", "CT", None, {}, tuple(alone)), PriorsOptions())
        assert none.priors == ()
        assert none.reason.startswith(
            "the prior could not be fetched: source down unreachable: C-FIND: down"
        )


@pytest.mark.slow
def test_priors_at_a_dicomweb_source_found_by_qido_rs_retrieved_by_wado_rs(
    make_settings: Callable[..., Settings], start_node: Callable[..., Node], tmp_path: Path
) -> None:
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        prior_uid, prior_paths = study(tmp_path / "prior", n=2, StudyDate="20260301")
        other_uid, other_paths = study(
            tmp_path / "other", StudyDate="20260401", PatientID="P2", AccessionNumber="ACC-CUR"
        )
        for path in [*prior_paths, *other_paths]:
            orthanc.upload(path)
        settings = make_settings(
            sources=[{"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_url}]
        )
        node = start_node(settings)
        current_uid, current_paths = study(tmp_path / "current", AccessionNumber="ACC-CUR")
        events: list[tuple[str, str]] = []
        service = node_priors(
            node,
            current_uid,
            lambda stage, message, seconds, level: events.append((stage, message)),
            job_id=2,
        )
        from dicomnode.pipelines import SeriesInput

        result = service.fetch(
            SeriesInput("1.2.5", "CT", None, {}, tuple(current_paths)), PriorsOptions(max_priors=5)
        )
        (prior,) = result.priors  # never the other patient's study with the same accession
        assert prior.study_instance_uid == prior_uid and prior.origin == "retrieved from source web"
        assert len(prior.series[0].paths) == 2
        assert any(s == "retrieve" and "by WADO-RS" in m for s, m in events)
        assert other_uid not in result.reason
