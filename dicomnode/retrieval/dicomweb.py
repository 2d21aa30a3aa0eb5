"""A DICOMweb source: QIDO-RS queries (dicomweb-client) and WADO-RS retrieves.

A study is retrieved with one streamed WADO-RS request (``multipart/related;
type="application/dicom"``, ``transfer-syntax=*``: each instance as the
server holds it), on the same authenticated session as the queries. The
response goes through :class:`~dicomnode.multipart.DicomParts` chunk by
chunk, each part straight into the store's durable path (validated,
fsynced, indexed before the next part is read), so memory holds one network
chunk, never an instance or the study. (dicomweb-client's own ``iter_study``
holds every instance whole, decoded and re-encoded: about six copies of the
largest one.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

import requests
from pydicom import Dataset

from dicomnode.config import NodeConfig, SourceConfig
from dicomnode.dicomweb import DICOMwebError, client, describe_failure, session
from dicomnode.multipart import DicomParts, MultipartError, media_type
from dicomnode.retrieval.base import RetrieveError, RetrieveReport
from dicomnode.retrieval.query import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    SeriesMatch,
    StudyMatch,
    StudyQuery,
)
from dicomnode.store import IncomingFile, InstanceStore, Provenance, StoreError

# Ask for every instance as stored; a server that cannot ("*" is PS3.18, not
# every server has it) is asked again for its default (Explicit VR Little Endian).
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT = 'multipart/related; type="application/dicom"'
CHUNK = 256 * 1024
_WEB_ERRORS = (requests.RequestException, DICOMwebError, ValueError)


class WebSource:
    """QIDO-RS / WADO-RS client of one ``[[sources]]`` entry with ``kind = "dicomweb"``."""

    def __init__(self, config: SourceConfig, node: NodeConfig) -> None:
        self.config = config
        self.node = node
        self.name = f"{config.name} ({config.url})"
        self.web = client(config)
        self.http = session(config)  # its own: dicomweb-client changes the headers of its session

    def _failed(self, what: str, exc: Exception) -> RetrieveError:
        return RetrieveError(f"{what}: {describe_failure(self.config, exc)}")

    def find_studies(self, query: StudyQuery) -> list[StudyMatch]:
        """Studies matching *query* (QIDO-RS ``/studies``)."""
        try:
            found = self.web.search_for_studies(
                search_filters=query.matching(),
                fields=list(STUDY_RETURN_KEYS),
                limit=self.config.max_query_results,
                get_remaining=True,
            )
        except _WEB_ERRORS as exc:
            raise self._failed("QIDO-RS", exc) from exc
        matches = [StudyMatch.from_dataset(Dataset.from_json(item)) for item in found]
        return [m for m in matches if m.study_instance_uid and query.accepts(m)]

    def find_series(self, study_instance_uid: str) -> list[SeriesMatch]:
        """The series of one study (QIDO-RS ``/studies/{uid}/series``)."""
        try:
            found = self.web.search_for_series(
                study_instance_uid=study_instance_uid, fields=list(SERIES_RETURN_KEYS)
            )
        except _WEB_ERRORS as exc:
            raise self._failed("QIDO-RS", exc) from exc
        return [SeriesMatch.from_dataset(Dataset.from_json(item)) for item in found]

    def count_instances(self, study_instance_uid: str) -> int | None:
        """The study's instances (QIDO-RS ``/studies/{uid}/instances``), when not counted."""
        try:
            found = self.web.search_for_instances(
                study_instance_uid=study_instance_uid,
                fields=["SOPInstanceUID"],
                get_remaining=True,
            )
        except _WEB_ERRORS as exc:
            raise self._failed("QIDO-RS", exc) from exc
        return len(found)

    def retrieve_study(
        self,
        study: StudyMatch,
        store: InstanceStore,
        cancelled: Callable[[], bool],
        deadline: float,
    ) -> RetrieveReport:
        """WADO-RS of the whole study, each part streamed into the store as it arrives."""
        report = RetrieveReport("WADO-RS", completed=0)
        provenance = Provenance(
            called_aet=self.node.ae_title, host=urlsplit(str(self.config.url)).hostname
        )

        def stored(number: int, part: IncomingFile | None, refusal: StoreError | None) -> None:
            if part is None:
                raise RetrieveError(
                    f"WADO-RS from {self.name}: {refusal.message if refusal else 'a part'} "
                    "(asked for application/dicom)"
                )
            part.finish()  # durable and indexed before the next part is read
            report.completed = number

        try:
            with self._get_study(study.study_instance_uid) as response:
                parts = DicomParts(store, _boundary(response, self.name), provenance, stored)
                try:
                    for chunk in response.iter_content(chunk_size=CHUNK):
                        self._check_time(cancelled, deadline)
                        parts.write(chunk)
                finally:
                    parts.discard()
        except StoreError as exc:
            raise RetrieveError(
                f"WADO-RS from {self.name}: an instance was refused by this node's store: "
                f"{exc.message}"
            ) from exc
        except (*_WEB_ERRORS, MultipartError) as exc:
            cause = (
                str(exc) if isinstance(exc, MultipartError) else describe_failure(self.config, exc)
            )
            raise RetrieveError(
                f"WADO-RS from {self.name} ended before it finished ({cause}); "
                f"{report.completed} instance(s) had arrived"
            ) from exc
        if not parts.ended:
            raise RetrieveError(
                f"WADO-RS from {self.name} ended before its last part (the connection closed); "
                f"{report.completed} instance(s) had arrived"
            )
        report.status = 0x0000
        return report

    def _check_time(self, cancelled: Callable[[], bool], deadline: float) -> None:
        if cancelled():
            raise RetrieveError(f"WADO-RS from {self.name} stopped: the job was cancelled")
        if time.monotonic() >= deadline:
            raise RetrieveError(
                f"WADO-RS from {self.name} stopped: still running at retrieve_timeout "
                f"({self.config.retrieve_timeout:g} s)"
            )

    def _get_study(self, uid: str) -> requests.Response:
        """The streamed response of ``GET {url}/studies/{uid}``, as stored where the server can."""
        url = f"{self.config.url}/studies/{uid}"
        timeout = (10.0, self.config.http_timeout)
        response = self.http.get(url, headers={"Accept": AS_STORED}, stream=True, timeout=timeout)
        if response.status_code in (400, 406):  # no "transfer-syntax=*" here: take its default
            response.close()
            response = self.http.get(url, headers={"Accept": DEFAULT}, stream=True, timeout=timeout)
        response.raise_for_status()
        return response


def _boundary(response: requests.Response, name: str) -> bytes:
    media, parameters = media_type(response.headers.get("Content-Type"))
    if media != "multipart/related" or not parameters.get("boundary"):
        raise RetrieveError(
            f"WADO-RS from {name} answered {media or 'no media type'}, not multipart/related "
            "with a boundary"
        )
    return parameters["boundary"].encode("latin-1")
