"""A DIMSE source: C-FIND, C-MOVE and C-GET as a Study Root Query/Retrieve SCU.

Queries are C-FIND at study or series level. A study is retrieved by C-MOVE
to the node's own AE title (the PACS opens associations to the node's
receiver, which stores each instance as any C-STORE), or by C-GET, whose
C-STOREs come back on the same association and are stored here through the
same :class:`~dicomnode.store.InstanceStore` path (for PACS that cannot
connect back through a firewall).

Nothing here waits forever: every association has the source's
``response_timeout`` between messages, and a watchdog aborts a retrieve that
outlives ``retrieve_timeout`` or whose job was cancelled. Each way a retrieve
can end early (refused association, unknown move destination, failed
sub-operations, the association aborted mid-way) raises a
:class:`~dicomnode.retrieval.RetrieveError` with its own sentence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomnode.config import NodeConfig, SourceConfig
from dicomnode.retrieval.base import RetrieveError, RetrieveReport
from dicomnode.retrieval.query import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    SeriesMatch,
    StudyMatch,
    StudyQuery,
    identifier,
)
from dicomnode.scu import (  # also installs the pynetdicom fixes every SCU here needs
    _NODELAY,
    tls_problem,
)
from dicomnode.store import InstanceStore, Provenance, StoreError

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
# The transfer syntaxes offered for C-GET: the PACS sends each instance as it holds it.
GET_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
_MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255
_RETRIEVE_FAILURES = {
    0xA701: "is out of resources and cannot count the instances to send",
    0xA702: "is out of resources and cannot send the instances",
    0xA900: "says the request does not match its information model",
    0xAA00: "says none of the proposed storage SOP classes fits the study",
    0xFE00: "cancelled the retrieve",
}


class DimseSource:
    """Study Root Q/R SCU of one ``[[sources]]`` entry with ``kind = "dimse"``.

    Parameters
    ----------
    config
        The source.
    node
        The node's ``[node]`` section: its AE title calls the source and is the
        C-MOVE destination.
    """

    def __init__(self, config: SourceConfig, node: NodeConfig) -> None:
        self.config = config
        self.node = node
        self.name = f"{config.name} ({config.address})"

    # -- associations ----------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(ae_title=self.node.ae_title)
        timeout = self.config.response_timeout
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
        ae.connection_timeout = min(timeout, 30.0)
        return ae

    @contextmanager
    def _association(
        self,
        ae: AE,
        what: str,
        *,
        ext_neg: list[Any] | None = None,
        handlers: list[Any] | None = None,
    ) -> Iterator[Association]:
        config = self.config
        tls = config.ssl_context()
        try:
            assoc = ae.associate(
                str(config.host),
                int(config.port or 0),
                ae_title=str(config.ae_title),
                ext_neg=ext_neg,
                evt_handlers=[*_NODELAY, *(handlers or [])],
                tls_args=(tls, str(config.host)) if tls is not None else None,
            )
        except OSError as exc:
            raise RetrieveError(f"{what}: cannot reach {self.name}: {exc}") from exc
        if not assoc.is_established:
            if assoc.is_rejected:
                why = "rejected the association (is this node's AE title allowed there?)"
            else:
                why = "did not answer (is it running, and is the port right?)"
                if tls is not None:
                    problem = tls_problem(str(config.host), int(config.port or 0), tls)
                    why = f"refused TLS: {problem}" if problem else why
            raise RetrieveError(f"{what}: {self.name} {why}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _silence(self, since: float) -> str:
        """Why no response came: a timeout, or the peer aborting (told apart by the time)."""
        waited = time.monotonic() - since
        if waited >= self.config.response_timeout - 0.5:
            return f"no answer within {self.config.response_timeout:g} s (response_timeout)"
        return (
            f"it aborted the association after {waited:.1f} s (a PACS does so when it does "
            f"not know the calling AE title {self.node.ae_title} as one of its peers)"
        )

    # -- C-FIND ----------------------------------------------------------------------

    def _find(self, level: str, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found: list[Dataset] = []
        with self._association(ae, "C-FIND") as assoc:
            last = time.monotonic()
            for status, ident in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = getattr(status, "Status", None)
                if code is None:
                    raise RetrieveError(f"C-FIND at {self.name}: {self._silence(last)}")
                last = time.monotonic()
                if code in PENDING:
                    if ident is not None:
                        found.append(ident)
                    if len(found) > self.config.max_query_results:
                        assoc.send_c_cancel(
                            1, query_model=StudyRootQueryRetrieveInformationModelFind
                        )
                        raise RetrieveError(
                            f"C-FIND at {self.name}: more than {self.config.max_query_results} "
                            f"{level.lower()} matches; narrow the query"
                        )
                elif code != 0x0000:
                    comment = getattr(status, "ErrorComment", "")
                    raise RetrieveError(
                        f"C-FIND at {self.name} failed with status 0x{code:04X} {comment}".strip()
                    )
        return found

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Studies matching *query* (C-FIND, study level)."""
        request = identifier("STUDY", query.matching(), STUDY_RETURN_KEYS)
        matches = [StudyMatch.from_dataset(ds) for ds in self._find("STUDY", request)]
        return [m for m in matches if m.study_instance_uid and query.accepts(m)]

    def find_series(self, study_instance_uid: str) -> list[SeriesMatch]:
        """The series of one study (C-FIND, series level)."""
        request = identifier(
            "SERIES",
            {"StudyInstanceUID": study_instance_uid},
            ("StudyInstanceUID", *SERIES_RETURN_KEYS),
        )
        return [SeriesMatch.from_dataset(ds) for ds in self._find("SERIES", request)]

    def count_instances(self, study_instance_uid: str) -> int | None:
        """The study's instances, for a source that does not count them at study level.

        The series' counts when the source gives them, else image-level C-FINDs,
        one per series (hierarchical archives such as dcmqrscp need the series'
        unique key at image level, and refuse keys they do not keep).
        """
        try:
            series = self.find_series(study_instance_uid)
        except RetrieveError:
            series = self._series_uids(study_instance_uid)
        counts = [s.instance_count for s in series]
        if series and all(c is not None for c in counts):
            return sum(c for c in counts if c is not None)
        total = 0
        for item in series:
            keys = {
                "StudyInstanceUID": study_instance_uid,
                "SeriesInstanceUID": item.series_instance_uid,
            }
            total += len(self._find("IMAGE", identifier("IMAGE", keys, (*keys, "SOPInstanceUID"))))
        return total

    def _series_uids(self, study_instance_uid: str) -> list[SeriesMatch]:
        keys = {"StudyInstanceUID": study_instance_uid}
        found = self._find("SERIES", identifier("SERIES", keys, (*keys, "SeriesInstanceUID")))
        return [SeriesMatch(str(ds.SeriesInstanceUID)) for ds in found]

    # -- C-MOVE / C-GET --------------------------------------------------------------

    def retrieve_study(
        self,
        study: StudyMatch,
        store: InstanceStore,
        cancelled: Callable[[], bool],
        deadline: float,
    ) -> RetrieveReport:
        """Have the whole study sent to the node (C-MOVE) or fetch it (C-GET)."""
        request = Dataset()
        request.QueryRetrieveLevel = "STUDY"
        request.StudyInstanceUID = study.study_instance_uid
        if self.config.retrieve == "get":
            return self._get(request, study, store, cancelled, deadline)
        return self._move(request, cancelled, deadline)

    def _move(
        self, request: Dataset, cancelled: Callable[[], bool], deadline: float
    ) -> RetrieveReport:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        with self._association(ae, "C-MOVE") as assoc, _watchdog(assoc, cancelled, deadline) as why:
            responses = assoc.send_c_move(
                request, self.node.ae_title, StudyRootQueryRetrieveInformationModelMove
            )
            return self._outcome("C-MOVE", responses, why)

    def _get(
        self,
        request: Dataset,
        study: StudyMatch,
        store: InstanceStore,
        cancelled: Callable[[], bool],
        deadline: float,
    ) -> RetrieveReport:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        classes = _storage_classes(study.sop_classes)
        for sop_class, syntaxes in _get_contexts(classes, known=bool(study.sop_classes)):
            ae.add_requested_context(sop_class, syntaxes)
        # The PACS sends C-STOREs on our association: we must be their SCP.
        roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
        provenance = Provenance(
            calling_aet=self.config.ae_title, called_aet=self.node.ae_title, host=self.config.host
        )
        handler = (evt.EVT_C_STORE, _store_handler(store, provenance))
        with (
            self._association(ae, "C-GET", ext_neg=roles, handlers=[handler]) as assoc,
            _watchdog(assoc, cancelled, deadline) as why,
        ):
            responses = assoc.send_c_get(request, StudyRootQueryRetrieveInformationModelGet)
            return self._outcome("C-GET", responses, why)

    def _outcome(
        self, method: str, responses: Iterator[tuple[Dataset, Dataset | None]], why: list[str]
    ) -> RetrieveReport:
        """Follow the responses to the final one; a sentence for every way it can end badly."""
        report = RetrieveReport(method)
        for status, _ in responses:
            code = getattr(status, "Status", None)
            if code is None:
                break  # the association ended: no final response will come
            report.update(status)
            if code in PENDING:
                continue
            report.status = code
            break
        if report.status is None:
            reason = why[0] if why else "the association was aborted or timed out"
            raise RetrieveError(
                f"{method} from {self.name} ended before it finished ({reason}); "
                f"{report.completed or 0} instance(s) had been sent"
            )
        self._check_final(method, report)
        return report

    def _check_final(self, method: str, report: RetrieveReport) -> None:
        code = report.status or 0
        if code in (0x0000, 0xB000) and not report.failed:
            return
        if code == 0xA801:
            raise RetrieveError(
                f"{self.name} does not know the move destination {self.node.ae_title}: add "
                f"{self.node.ae_title} (this node's host, port {self.node.port}) to its DICOM "
                'peers, or retrieve with retrieve = "get"'
            )
        if code in (0x0000, 0xB000):
            raise RetrieveError(
                f"{method} from {self.name}: {report.failed} of {report.total} instance(s) could "
                f"not be sent (the source's sub-operations failed); {report.completed} were sent"
            )
        meaning = _RETRIEVE_FAILURES.get(code, f"refused it with status 0x{code:04X}")
        comment = f": {report.comment}" if report.comment else ""
        hint = ""
        if method == "C-MOVE" and not report.completed and code not in _RETRIEVE_FAILURES:
            # Orthanc, among others, answers an unknown destination with 0xC000, not 0xA801.
            hint = (
                f"; if it does not know the move destination {self.node.ae_title}, add "
                f"{self.node.ae_title} (this node's host, port {self.node.port}) to its DICOM peers"
            )
        raise RetrieveError(f"{method} from {self.name}: the source {meaning}{comment}{hint}")


def _get_contexts(classes: list[str], *, known: bool) -> list[tuple[str, list[str]]]:
    """The presentation contexts of a C-GET's storage SOP classes.

    The PACS must send each instance in a transfer syntax accepted for its SOP
    class, and an acceptor accepts one per context: with one context listing
    every syntax, it picks one (Orthanc: Explicit VR Little Endian) and must
    transcode everything else, which it may not be able to (Orthanc 1.10 cannot
    decompress JPEG 2000). So when the study's SOP classes are known, each
    (class, syntax) gets its own context and every instance travels as stored;
    otherwise (too many classes) each class gets one context listing them all.
    """
    if known and len(classes) * len(GET_TRANSFER_SYNTAXES) < _MAX_CONTEXTS:
        return [(c, [str(ts)]) for c in classes for ts in GET_TRANSFER_SYNTAXES]
    return [(c, [str(ts) for ts in GET_TRANSFER_SYNTAXES]) for c in classes]


def _storage_classes(in_study: tuple[str, ...]) -> list[str]:
    """The storage SOP classes proposed for C-GET: the study's own when known, else the common ones."""
    if in_study:
        return list(dict.fromkeys(in_study))[: _MAX_CONTEXTS - 1]
    common = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    return common[: _MAX_CONTEXTS - 1]  # one context is the C-GET's own


def _store_handler(store: InstanceStore, provenance: Provenance) -> Callable[[Any], int]:
    """The C-STORE handler of a C-GET: the same durable store as the receiver's."""

    def handle(event: Any) -> int:
        request = event.request
        try:
            store.store(
                request.DataSet.getvalue(),
                str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                provenance=provenance,
            )
        except StoreError as exc:
            log.warning("C-GET instance refused: %s", exc.message)
            return exc.status
        return 0x0000

    return handle


@contextmanager
def _watchdog(
    assoc: Association, cancelled: Callable[[], bool], deadline: float
) -> Iterator[list[str]]:
    """Abort *assoc* when the job is cancelled or the deadline passes; yields why (once set)."""
    why: list[str] = []
    done = threading.Event()
    started = time.monotonic()

    def watch() -> None:
        while not done.wait(0.5):
            if cancelled():
                why.append("the job was cancelled")
            elif time.monotonic() >= deadline:
                why.append(
                    f"still running after {time.monotonic() - started:.0f} s (retrieve_timeout)"
                )
            else:
                continue
            assoc.abort()
            # pynetdicom's DIMSE wait does not see the abort until its dimse_timeout:
            # hand it the "no message" it would get then (the queue _reactor_fix checks).
            waiting = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
            if waiting is not None:
                waiting.put((None, None))
            return

    thread = threading.Thread(target=watch, name="retrieve-watchdog", daemon=True)
    thread.start()
    try:
        yield why
    finally:
        done.set()
        thread.join(2)
