"""Finding a study's priors: earlier studies of the same patient, in the node, then at the sources.

A pipeline that declares ``wants_priors`` compares its study with the
patient's earlier ones. :func:`find_priors` says which: studies of the same
patient — the same Patient ID, and the same Issuer of Patient ID when both
studies carry one (a Patient ID is unique only within its issuer) — with an
earlier Study Date, at most ``priors.max_years`` before, of the same modality,
and of the same body part when both say one. The accession number is never a
key: two patients' studies may share one (different sites, a reused number),
and a prior of another patient must never be compared with.

Where it looks, in order:

1. the node's own database: studies it holds (files not removed by
   retention), newest first, a study a done job of the same pipeline
   processed first among those of one day (its findings are at hand);
2. when those are fewer than ``priors.max_priors``, every configured
   ``[[sources]]`` entry by C-FIND or QIDO-RS (:mod:`dicomnode.retrieval`);
   a source that cannot be reached is a note, never an error.

:class:`NodePriors` is the worker's :class:`~dicomnode.pipelines.PriorsService`:
it runs the search, retrieves a prior the node does not hold into the store
(C-MOVE, C-GET or WADO-RS; the study is held as ``retrieving`` meanwhile, so
assembly never routes it as a new study) and hands the pipeline the prior's
series. Nothing here raises for a prior that cannot be had: the result says
why, and the pipeline writes a baseline report that says so too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import NodeConfig, PriorsOptions, Settings, SourceConfig
from dicomnode.database import write_transaction
from dicomnode.models import (
    Instance,
    Job,
    JobRevision,
    JobStatus,
    ProducedInstance,
    Series,
    Study,
    StudyStatus,
    utcnow,
)
from dicomnode.pipelines.base import PriorsResult, PriorStudy, SeriesInput
from dicomnode.retrieval import QueryError, RetrieveError, StudyMatch, StudyQuery, open_source
from dicomnode.retrieval.base import Source
from dicomnode.retrieval.query import parse_date
from dicomnode.store import InstanceStore
from dicomnode.store.files import results_dir

log = logging.getLogger(__name__)

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# Studies whose files are all here: what a prior may be taken from without a retrieve.
_HELD_STATES = (StudyStatus.COMPLETE, StudyStatus.UNMATCHED)

Event = Callable[[str, str, float | None, str], None]


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


@dataclass(frozen=True)
class CurrentStudy:
    """What the search keys on, read from the current study's own images."""

    study_instance_uid: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    study_date: date | None
    modality: str | None
    body_part: str | None
    accession_number: str | None = None

    @classmethod
    def of_series(cls, study_instance_uid: str, series: SeriesInput) -> CurrentStudy:
        """From the header of the first instance of *series* (one of the study's)."""
        import pydicom

        header = pydicom.dcmread(
            series.paths[0],
            stop_before_pixels=True,
            specific_tags=[
                "PatientID",
                "IssuerOfPatientID",
                "StudyDate",
                "Modality",
                "BodyPartExamined",
                "AccessionNumber",
            ],
        )
        return cls(
            study_instance_uid=study_instance_uid,
            patient_id=_text(header.get("PatientID")),
            issuer_of_patient_id=_text(header.get("IssuerOfPatientID")),
            study_date=parse_date(header.get("StudyDate")),
            modality=_text(header.get("Modality")) or series.modality,
            body_part=_text(header.get("BodyPartExamined")),
            accession_number=_text(header.get("AccessionNumber")),
        )


@dataclass(frozen=True)
class PriorCandidate:
    """A study the search accepted as a prior, and where it is.

    ``origin`` is ``"this node"`` or ``"source NAME"``; ``study_id`` the node's
    row when it holds the study; ``job_id`` a done job of the same pipeline on
    it (its results are the prior's findings); ``match`` the source's answer
    when it has to be retrieved.
    """

    study_instance_uid: str
    study_date: date
    accession_number: str | None
    origin: str
    study_id: int | None = None
    job_id: int | None = None
    source: str | None = None
    match: StudyMatch | None = None


@dataclass(frozen=True)
class PriorSearch:
    """Which priors were chosen (newest first) and what the search met on the way."""

    current: CurrentStudy
    chosen: tuple[PriorCandidate, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def reason(self) -> str:
        """One sentence: the prior(s) chosen, or why there is none."""
        if self.chosen:
            return "; ".join(
                f"prior study {c.study_instance_uid} of {c.study_date.isoformat()} ({c.origin})"
                for c in self.chosen
            )
        problems = [n for n in self.notes if "unreachable" in n]
        if problems:
            # A prior may be there: the report must not read as "the patient has none".
            return "the prior could not be fetched: " + "; ".join(problems)
        return self.notes[0] if self.notes else "no prior found"


def _since(current: date, options: PriorsOptions) -> date:
    return current - timedelta(days=round(365.25 * options.max_years))


def _header_issuer(storage: Path, session: Session, study_id: int) -> str | None:
    """Issuer of Patient ID of a stored study, from one of its instances (not a database column)."""
    import pydicom

    path = session.execute(
        select(Instance.path).where(Instance.study_id == study_id).limit(1)
    ).scalar_one_or_none()
    if path is None:
        return None
    try:
        header = pydicom.dcmread(
            storage / path, stop_before_pixels=True, specific_tags=["IssuerOfPatientID"]
        )
    except Exception:  # a file retention or a disk took: the study is no prior then
        return "?unreadable"
    return _text(header.get("IssuerOfPatientID"))


def _same_issuer(wanted: str | None, found: str | None) -> bool:
    # Only two issuers that are both known can disagree (module docstring).
    return wanted is None or found is None or wanted == found


def local_candidates(
    session: Session,
    storage: Path,
    current: CurrentStudy,
    pipeline: str,
    options: PriorsOptions,
    notes: list[str],
) -> list[PriorCandidate]:
    """Priors among the studies the node holds, newest first (the module docstring's rules)."""
    assert current.patient_id is not None and current.study_date is not None
    since = _since(current.study_date, options)
    rows = session.execute(
        select(Study)
        .where(
            Study.patient_id == current.patient_id,
            Study.study_instance_uid != current.study_instance_uid,
            Study.status.in_([s.value for s in _HELD_STATES]),
            Study.files_removed_at.is_(None),
        )
        .order_by(Study.study_date.desc(), Study.id.desc())
    ).scalars()
    found: list[PriorCandidate] = []
    for study in rows:
        day = parse_date(study.study_date)
        if day is None or not since <= day < current.study_date:
            continue
        if not _same_issuer(
            current.issuer_of_patient_id, _header_issuer(storage, session, study.id)
        ):
            notes.append(
                f"study {study.study_instance_uid} here has Patient ID {current.patient_id} "
                "of another issuer: not this patient"
            )
            continue
        series = session.execute(select(Series).where(Series.study_id == study.id)).scalars().all()
        same_modality = [s for s in series if s.modality == current.modality]
        if not same_modality:
            continue
        parts = {
            str(s.attributes.get("BodyPartExamined")).strip().upper()
            for s in same_modality
            if (s.attributes or {}).get("BodyPartExamined")
        }
        if current.body_part and parts and current.body_part.upper() not in parts:
            notes.append(
                f"study {study.study_instance_uid} here is of {', '.join(sorted(parts))}, "
                f"not {current.body_part}"
            )
            continue
        job_id = session.execute(
            select(Job.id)
            .where(Job.study_id == study.id, Job.pipeline == pipeline, Job.status == JobStatus.DONE)
            .order_by(Job.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        found.append(
            PriorCandidate(
                study.study_instance_uid,
                day,
                study.accession_number,
                "this node",
                study_id=study.id,
                job_id=job_id,
            )
        )
    # Newest first; on one day, a study this pipeline already processed first.
    found.sort(key=lambda c: (c.study_date, c.job_id is not None), reverse=True)
    return found


def source_candidates(
    source: Source, name: str, current: CurrentStudy, options: PriorsOptions
) -> list[PriorCandidate]:
    """Priors at the source ``[[sources]]`` calls *name*, newest first; RetrieveError when it cannot be asked."""
    assert current.patient_id is not None and current.study_date is not None
    query = StudyQuery(
        patient_id=current.patient_id,
        issuer_of_patient_id=current.issuer_of_patient_id,
        since=_since(current.study_date, options),
        until=current.study_date - timedelta(days=1),
        modality=current.modality,
    )
    found = []
    for match in source.find_studies(query):
        day = match.study_day
        # accepts() checks again what a source may ignore (Patient ID, issuer, dates, modality).
        if (
            not query.accepts(match)
            or match.study_instance_uid == current.study_instance_uid
            or day is None
            or day >= current.study_date
        ):
            continue
        found.append(
            PriorCandidate(
                match.study_instance_uid,
                day,
                match.accession_number,
                f"source {name}",
                source=name,
                match=match,
            )
        )
    found.sort(key=lambda c: c.study_date, reverse=True)
    return found


def find_priors(
    current: CurrentStudy,
    *,
    sessions: sessionmaker[Session],
    storage: Path,
    sources: Sequence[SourceConfig],
    node: NodeConfig,
    pipeline: str,
    options: PriorsOptions,
    opener: Callable[[SourceConfig, NodeConfig], Source] = open_source,
) -> PriorSearch:
    """The priors of *current*: the node's own first, then the sources' (module docstring)."""
    notes: list[str] = []
    if current.patient_id is None:
        return PriorSearch(current, (), ("no prior looked for: the study has no Patient ID",))
    if current.study_date is None:
        return PriorSearch(current, (), ("no prior looked for: the study has no Study Date",))
    with sessions() as session:
        local = local_candidates(session, storage, current, pipeline, options, notes)
        # A study the node has rows for but not all files of (being retrieved, stopped part
        # way, removed by retention) is fetched again from a source, not used as it is.
        known = {
            uid
            for uid in session.execute(
                select(Study.study_instance_uid).where(
                    Study.patient_id == current.patient_id,
                    Study.status.in_([s.value for s in _HELD_STATES]),
                    Study.files_removed_at.is_(None),
                )
            ).scalars()
        }
    chosen = local[: options.max_priors]
    if local:
        notes.append(f"{len(local)} prior(s) of the patient at this node")
    if len(chosen) < options.max_priors:
        remote: dict[str, PriorCandidate] = {}
        for config in sources:
            try:
                for candidate in source_candidates(
                    opener(config, node), config.name, current, options
                ):
                    if candidate.study_instance_uid not in known:
                        remote.setdefault(candidate.study_instance_uid, candidate)
            except (RetrieveError, QueryError, OSError) as exc:
                notes.append(f"source {config.name} unreachable: {exc}")
        if remote:
            with sessions() as session:
                busy = dict(
                    session.execute(
                        select(Study.study_instance_uid, Study.status).where(
                            Study.study_instance_uid.in_(list(remote)),
                            Study.status.in_(
                                [StudyStatus.RECEIVING.value, StudyStatus.RETRIEVING.value]
                            ),
                        )
                    ).all()
                )
            # Arriving at this node right now (pushed with the follow-up, or fetched for
            # another job): a retrieve here would take it from assembly (its own route
            # would never run) or race the other fetch. Not compared this time.
            for uid, status in busy.items():
                del remote[uid]
                notes.append(f"prior study {uid} is {status} at this node: not compared this time")
        if remote:
            notes.append(f"{len(remote)} prior(s) of the patient at the sources")
        merged = sorted(
            [*chosen, *remote.values()],
            key=lambda c: (c.study_date, c.study_id is not None),
            reverse=True,
        )
        chosen = merged[: options.max_priors]
    if not chosen and not any("unreachable" in n for n in notes):
        where = "this node" + (" or its sources" if sources else "")
        notes.insert(
            0,
            f"no prior found: no earlier {current.modality or ''} study of Patient ID "
            f"{current.patient_id} within {options.max_years:g} years at {where}".replace(
                "  ", " "
            ),
        )
    return PriorSearch(current, tuple(chosen), tuple(notes))


# -- the prior's images ---------------------------------------------------------------------


def stored_series(session: Session, study_id: int, storage: Path) -> list[SeriesInput]:
    """The series of a stored study as pipeline inputs (never the node's own results)."""
    rows = (
        session.execute(
            select(Series)
            .where(Series.study_id == study_id)
            .order_by(Series.series_number, Series.id)
        )
        .scalars()
        .all()
    )
    # A PACS may send the node's own results back with the study: never an input.
    ours = exists().where(ProducedInstance.sop_instance_uid == Instance.sop_instance_uid)
    inputs = []
    for s in rows:
        paths = list(
            session.execute(
                select(Instance.path)
                .where(Instance.series_id == s.id, ~ours)
                .order_by(Instance.instance_number, Instance.id)
            ).scalars()
        )
        if paths:
            inputs.append(
                SeriesInput(
                    series_instance_uid=s.series_instance_uid,
                    modality=s.modality,
                    series_description=s.series_description,
                    attributes=dict(s.attributes or {}),
                    paths=tuple(storage / p for p in paths),
                )
            )
    return inputs


def job_reports(session: Session, job_id: int, storage: Path) -> tuple[Path, ...]:
    """The SR files of a done job's latest revision that are still in its results folder."""
    revision = (
        session.execute(
            select(JobRevision)
            .where(JobRevision.job_id == job_id)
            .order_by(JobRevision.number.desc())
        )
        .scalars()
        .first()
    )
    if revision is None:
        return ()
    folder = results_dir(storage, job_id)
    paths = [
        folder / f"{o['sop_instance_uid']}.dcm"
        for o in revision.objects or ()
        if str(o.get("sop_class_uid", "")).startswith(SR_CLASS_PREFIX)
    ]
    return tuple(p for p in paths if p.is_file())


class NodePriors:
    """The worker's priors service for one job: search, retrieve when needed, hand over series.

    Parameters
    ----------
    settings
        Node settings (``[[sources]]``, storage).
    sessions
        Job database.
    store
        Callable giving the store C-GET and WADO-RS write into (made on first use).
    job_id, pipeline
        The job the priors are for (timeline, study notes) and its pipeline.
    event
        The job's timeline: ``event(stage, message, seconds, level)``.
    cancelled
        True once the job was cancelled or taken away: a retrieve stops.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: Callable[[], InstanceStore],
        *,
        job_id: int,
        pipeline: str,
        study_instance_uid: str,
        event: Event,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.job_id = job_id
        self.pipeline = pipeline
        self.study_instance_uid = study_instance_uid
        self.event = event
        self.cancelled = cancelled
        self.storage = Path(settings.storage.path)

    def search(self, series: SeriesInput, options: PriorsOptions) -> PriorSearch:
        """:func:`find_priors` for the job's study."""
        current = CurrentStudy.of_series(self.study_instance_uid, series)
        return find_priors(
            current,
            sessions=self.sessions,
            storage=self.storage,
            sources=self.settings.sources,
            node=self.settings.node,
            pipeline=self.pipeline,
            options=options,
        )

    def fetch(self, series: SeriesInput, options: PriorsOptions) -> PriorsResult:
        """The chosen priors with their series in the store; a reason when there is none."""
        started = time.perf_counter()
        found = self.search(series, options)
        for note in found.notes:
            level = "warning" if "unreachable" in note else "info"
            self.event("priors", note, None, level)
        # Inside the pipeline's timed ``priors`` stage: the seconds go in the text, not
        # as a second duration of the same stage.
        self.event(
            "priors",
            f"prior search ({time.perf_counter() - started:.2f} s): {found.reason}",
            None,
            "info",
        )
        priors: list[PriorStudy] = []
        problems: list[str] = []
        for candidate in found.chosen:
            try:
                priors.append(self._prior(candidate))
            except (RetrieveError, OSError) as exc:
                problems.append(
                    f"prior study {candidate.study_instance_uid} could not be fetched from "
                    f"{candidate.source}: {exc}"
                )
                self.event("retrieve", problems[-1], None, "warning")
        if priors:
            reason = "; ".join(
                f"prior study {p.study_instance_uid} of {p.study_date.isoformat()} ({p.origin})"
                for p in priors
            )
        else:
            reason = "; ".join(problems) if problems else found.reason
        return PriorsResult(
            tuple(priors), reason, (*found.notes, *problems), found.current.study_date
        )

    # -- one prior -----------------------------------------------------------------------

    def _prior(self, candidate: PriorCandidate) -> PriorStudy:
        study_id = candidate.study_id
        origin = candidate.origin
        if study_id is None:
            study_id = self._retrieve(candidate)
            origin = f"retrieved from {candidate.origin}"
        with self.sessions() as session:
            series = stored_series(session, study_id, self.storage)
            reports = (
                job_reports(session, candidate.job_id, self.storage)
                if candidate.job_id is not None
                else ()
            )
        return PriorStudy(
            study_instance_uid=candidate.study_instance_uid,
            study_date=candidate.study_date,
            accession_number=candidate.accession_number,
            series=tuple(series),
            origin=origin,
            results=reports,
        )

    def _retrieve(self, candidate: PriorCandidate) -> int:
        """Bring a prior from its source into the store; its study row's id."""
        assert candidate.match is not None and candidate.source is not None
        config = self.settings.source(candidate.source)
        source = open_source(config, self.settings.node)
        match = candidate.match
        now = utcnow()
        with write_transaction(self.sessions) as session:
            study = session.execute(
                select(Study).where(Study.study_instance_uid == candidate.study_instance_uid)
            ).scalar_one_or_none()
            if study is None:
                values = {k: v for k, v in match.study_fields().items() if v is not None}
                study = Study(
                    study_instance_uid=candidate.study_instance_uid,
                    instance_count=0,
                    first_received_at=now,
                    last_received_at=now,
                    **values,
                )
                session.add(study)
            # Held while it arrives: assembly never routes a prior as a study of its own.
            study.status = StudyStatus.RETRIEVING
            study.note = f"being retrieved from {source.name} as a prior for job {self.job_id}"
            session.flush()
            study_id = study.id
        method = (
            "WADO-RS"
            if config.kind == "dicomweb"
            else (
                "C-GET" if config.retrieve == "get" else f"C-MOVE to {self.settings.node.ae_title}"
            )
        )
        expected = match.instance_count
        self.event(
            "retrieve",
            f"fetching prior study {candidate.study_instance_uid} from {source.name} by {method}"
            + (f"; {expected} instance(s) expected" if expected is not None else ""),
            None,
            "info",
        )
        started = time.perf_counter()
        complete = False
        try:
            source.retrieve_study(
                match, self.store(), self.cancelled, time.monotonic() + config.retrieve_timeout
            )
            with self.sessions() as session:
                received = int(
                    session.execute(
                        select(func.count(Instance.id)).where(Instance.study_id == study_id)
                    ).scalar_one()
                )
            if received == 0:
                raise RetrieveError(f"{method} from {source.name} brought no instance of it")
            if expected is not None and received < expected:
                raise RetrieveError(
                    f"partial retrieve from {source.name}: {received} of {expected} instance(s)"
                )
            complete = True
        finally:
            with write_transaction(self.sessions) as session:
                study = session.get_one(Study, study_id)
                study.completed_at = utcnow()
                if complete:
                    study.status = StudyStatus.COMPLETE
                    study.note = f"retrieved from {source.name} as a prior for job {self.job_id}"
                else:
                    study.status = StudyStatus.INCOMPLETE
                    study.note = (
                        f"the retrieve from {source.name} as a prior for job {self.job_id} "
                        "stopped; a later follow-up fetches it again"
                    )
        self.event(
            "retrieve",
            f"{received} instance(s) of prior study {candidate.study_instance_uid} retrieved "
            f"from {source.name} by {method}",
            time.perf_counter() - started,
            "info",
        )
        return study_id
