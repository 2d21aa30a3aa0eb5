"""Delivery: result objects to each destination, by C-STORE or STOW-RS, with retries.

Each (result object, destination) is one row in ``outputs``, whatever the
destination speaks: a DIMSE destination gets the objects by C-STORE
(:func:`dicomnode.scu.send`), a DICOMweb one (``kind = "dicomweb"``) by
STOW-RS (:func:`dicomnode.dicomweb.store_files`). Both answer per object
(stored, stored with a warning, or refused with a reason), and both share
everything below: the row's status, the retry policy, the timeline events. :meth:`Deliverer.tick`
(an APScheduler job in ``serve``) sends the rows that are due, one association
per (job, destination). A failure schedules the next attempt with exponential
backoff (``delivery.backoff_seconds`` doubling up to ``backoff_max_seconds``);
after ``delivery.max_attempts`` the row is ``failed`` and so is the job, with
the peer's answer in the error. ``jobs retry`` resends the same files, so the
SOP Instance UIDs never change and a PACS sees at most a duplicate it ignores.

Destination ``sender`` is the calling AE of the study: its address comes from
``[[senders]]`` in config, else from the association's peer address on the
node's port configured for that AE title.

A destination gets only the kinds of object its ``outputs`` lists (SEG, SR,
GSPS, SC: :mod:`dicomnode.outputs`); the others are marked ``skipped`` for it,
never sent. ``sender`` gets every kind.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.database import write_transaction
from dicomnode.jobs import add_event
from dicomnode.metrics import NodeMetrics
from dicomnode.models import Job, JobStatus, Output, OutputStatus, Study, utcnow
from dicomnode.outputs import output_kind
from dicomnode.scu import SendReport, send

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """Where to send."""

    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None


class DeliveryError(Exception):
    """Why a send failed, as a sentence."""


class Deliverer:
    """Sends due outputs and moves jobs from ``sending`` to ``done`` or ``failed``."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.metrics = metrics
        self.config = settings.delivery
        self.storage = Path(settings.storage.path)

    def backoff(self, attempts: int) -> timedelta:
        """Wait before attempt ``attempts + 1``."""
        seconds = min(
            self.config.backoff_seconds * 2 ** max(0, attempts - 1), self.config.backoff_max_seconds
        )
        return timedelta(seconds=seconds)

    def peer_for(self, destination: str, study: Study) -> Peer:
        """Resolve a destination name (or ``sender``) to an address."""
        if destination != "sender":
            dest = self.settings.destination(destination)
            return Peer(*dest.dimse_peer(), dest.ssl_context())
        # The association told us the caller's AE title and host, not where it listens.
        for sender in self.settings.senders:
            if sender.ae_title == study.calling_aet:
                return Peer(sender.ae_title, sender.host or study.sender_host or "", sender.port)
        for dest in self.settings.destinations:
            if dest.kind == "dimse" and dest.ae_title == study.calling_aet:
                return Peer(*dest.dimse_peer(), dest.ssl_context())
        raise DeliveryError(
            f"destination 'sender': calling AE {study.calling_aet!r} is neither in [[senders]] "
            "nor in [[destinations]], so its port is unknown"
        )

    def tick(self, now: datetime | None = None) -> int:
        """Send every due output; return how many were sent."""
        now = now or utcnow()
        with self.sessions() as session:
            due = session.execute(
                select(Output, Job.study_id)
                .join(Job, Output.job_id == Job.id)
                .where(
                    Output.status == OutputStatus.PENDING,
                    Output.next_attempt_at <= now,
                    Job.status == JobStatus.SENDING,
                )
                .order_by(Output.id)
            ).all()
            groups: dict[tuple[int, str], list[Output]] = defaultdict(list)
            studies: dict[int, Study] = {}
            for output, study_id in due:
                groups[(output.job_id, output.destination)].append(output)
                studies[output.job_id] = session.get_one(Study, study_id)
        sent = 0
        for (job_id, destination), outputs in groups.items():
            sent += self._deliver(job_id, destination, outputs, studies[job_id])
        return sent

    def transmit(self, destination: str, study: Study, files: list[Path]) -> SendReport:
        """Send *files* to *destination* by what it speaks: STOW-RS or C-STORE."""
        if destination != "sender":
            dest = self.settings.destination(destination)
            if dest.kind == "dicomweb":
                from dicomnode.dicomweb import store_files  # requests: only where used

                return store_files(files, dest)
        peer = self.peer_for(destination, study)
        return send(
            files,
            peer.ae_title,
            peer.host,
            peer.port,
            calling_aet=self.settings.node.ae_title,
            tls=peer.tls,
        )

    def _taken(self, destination: str, outputs: list[Output]) -> list[Output]:
        """The outputs *destination* takes by its ``outputs`` kinds (``sender``: all)."""
        try:
            dest = self.settings.destination(destination)
        except KeyError:
            return outputs
        return [o for o in outputs if dest.takes(output_kind(o.sop_class_uid))]

    def _deliver(self, job_id: int, destination: str, outputs: list[Output], study: Study) -> int:
        taken = self._taken(destination, outputs)
        skipped = [o.id for o in outputs if o not in taken]
        if not taken:
            return self._record(job_id, destination, {}, 0.0, skipped=skipped)
        paths = {o.id: self.storage / o.path for o in taken}
        started = time.perf_counter()
        warnings: dict[int, str] = {}
        try:
            report = self.transmit(destination, study, list(paths.values()))
            errors = {oid: report.failures.get(path) for oid, path in paths.items()}
            warnings = {oid: report.warnings[p] for oid, p in paths.items() if p in report.warnings}
        except (DeliveryError, KeyError, OSError) as exc:
            errors = {o.id: str(exc) for o in taken}
        return self._record(
            job_id,
            destination,
            errors,
            time.perf_counter() - started,
            warnings=warnings,
            skipped=skipped,
        )

    def _record(
        self,
        job_id: int,
        destination: str,
        errors: dict[int, str | None],
        seconds: float,
        *,
        warnings: dict[int, str] | None = None,
        skipped: list[int] | None = None,
    ) -> int:
        warnings = warnings or {}
        now = utcnow()
        sent = 0
        with write_transaction(self.sessions) as session:
            job = session.get_one(Job, job_id)
            if skipped:
                for output in session.execute(
                    select(Output).where(Output.id.in_(skipped))
                ).scalars():
                    output.status = OutputStatus.SKIPPED
                kinds = ", ".join(self.settings.destination(destination).outputs)
                add_event(
                    session,
                    job_id,
                    "delivery",
                    f"{len(skipped)} object(s) not for {destination} (it takes {kinds})",
                )
            for output in session.execute(
                select(Output).where(Output.id.in_(list(errors)))
            ).scalars():
                error = errors[output.id]
                output.attempts += 1
                if error is None:
                    output.status = OutputStatus.SENT
                    output.sent_at = now
                    output.last_error = None
                    output.warning = warnings.get(output.id)
                    sent += 1
                elif output.attempts >= self.config.max_attempts:
                    output.status = OutputStatus.FAILED
                    output.last_error = error
                else:
                    output.last_error = error
                    output.next_attempt_at = now + self.backoff(output.attempts)
            failed = [e for e in errors.values() if e is not None]
            if sent:
                add_event(
                    session,
                    job_id,
                    "delivery",
                    f"{sent} object(s) stored at {destination}",
                    duration_s=seconds,
                )
            if warnings:
                add_event(
                    session,
                    job_id,
                    "delivery",
                    f"{destination}: {len(warnings)} object(s) stored with a warning: "
                    f"{next(iter(warnings.values()))}",
                    level="warning",
                )
            if failed:
                add_event(
                    session, job_id, "delivery", f"{destination}: {failed[0]}", level="warning"
                )
            session.flush()
            self._settle(session, job, now)
        if errors:
            self._count(job_id, job.study_instance_uid, destination, sent, len(failed))
        return sent

    def _count(self, job_id: int, study: str, destination: str, sent: int, failed: int) -> None:
        """Metrics and one log line per (job, destination) attempt."""
        if self.metrics is not None:
            self.metrics.deliveries.labels(destination=destination).inc(sent)
            self.metrics.delivery_failures.labels(destination=destination).inc(failed)
        log.log(
            logging.WARNING if failed else logging.INFO,
            "delivery attempt",
            extra={
                "job": job_id,
                "study": study,
                "destination": destination,
                "sent": sent,
                "failed": failed,
            },
        )

    def _settle(self, session: Session, job: Job, now: datetime) -> None:
        states = [
            o.status
            for o in session.execute(select(Output).where(Output.job_id == job.id)).scalars()
        ]
        if job.status != JobStatus.SENDING or OutputStatus.PENDING in states:
            return
        job.finished_at = now
        if OutputStatus.FAILED in states:
            last = session.execute(
                select(Output.last_error, Output.destination)
                .where(Output.job_id == job.id, Output.status == OutputStatus.FAILED)
                .limit(1)
            ).one()
            job.status = JobStatus.FAILED
            job.error = (
                f"delivery to {last.destination} failed after {self.config.max_attempts} attempts: "
                f"{last.last_error}"
            )
            add_event(session, job.id, "failed", job.error, level="error")
        else:
            job.status = JobStatus.DONE
            add_event(session, job.id, "done", "all results delivered")
