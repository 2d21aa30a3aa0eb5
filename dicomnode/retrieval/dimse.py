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
from dicomnode.scu import _NODELAY  # also installs the pynetdicom fixes every SCU here needs
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
            raise RetrieveError(f"{what}: {self.name} {why}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    # -- C-FIND ----------------------------------------------------------------------

    def _find(self, level: str, query: Dataset) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        found: list[Dataset] = []
        with self._association(ae, "C-FIND") as assoc:
            for status, ident in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind
            ):
                code = getattr(status, "Status", None)
                if code is None:
                    raise RetrieveError(
                        f"C-FIND at {self.name}: no answer within "
                        f"{self.config.response_timeout:g} s, or the association was aborted"
                    )
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
        for sop_class in classes:
            ae.add_requested_context(sop_class, GET_TRANSFER_SYNTAXES)
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
        raise RetrieveError(f"{method} from {self.name}: the source {meaning}{comment}")


def _storage_classes(in_study: tuple[str, ...]) -> list[str]:
    """The storage SOP classes proposed for C-GET: the study's own first, then the common ones."""
    common = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    ordered = list(dict.fromkeys([*in_study, *common]))
    return ordered[: _MAX_CONTEXTS - 1]  # one context is the C-GET's own


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
            return

    thread = threading.Thread(target=watch, name="retrieve-watchdog", daemon=True)
    thread.start()
    try:
        yield why
    finally:
        done.set()
        thread.join(2)
