"""A DICOMweb source: QIDO-RS queries and WADO-RS retrieves (dicomweb-client).

A study is retrieved with one streamed WADO-RS request (``multipart/related;
type="application/dicom"``, ``transfer-syntax=*``: each instance as the
server holds it). dicomweb-client hands over one instance at a time as the
response streams in; each is written through the store's durable path
(validated, fsynced, indexed) before the next is read, so memory holds one
instance, never the study.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from pydicom import Dataset

from dicomnode.config import NodeConfig, SourceConfig
from dicomnode.dicomweb import DICOMwebError, client, describe_failure
from dicomnode.retrieval.base import RetrieveError, RetrieveReport
from dicomnode.retrieval.query import (
    SERIES_RETURN_KEYS,
    STUDY_RETURN_KEYS,
    SeriesMatch,
    StudyMatch,
    StudyQuery,
)
from dicomnode.store import InstanceStore, Provenance, StoreError

# Ask for every instance as stored; a server that cannot ("*" is PS3.18, not
# every server has it) is asked again for its default (Explicit VR Little Endian).
AS_STORED = (("application/dicom", "*"),)
_WEB_ERRORS = (requests.RequestException, DICOMwebError, ValueError)


class WebSource:
    """QIDO-RS / WADO-RS client of one ``[[sources]]`` entry with ``kind = "dicomweb"``."""

    def __init__(self, config: SourceConfig, node: NodeConfig) -> None:
        self.config = config
        self.node = node
        self.name = f"{config.name} ({config.url})"
        self.web = client(config)

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
        """WADO-RS of the whole study, each instance stored as it arrives."""
        report = RetrieveReport("WADO-RS", completed=0)
        provenance = Provenance(
            called_aet=self.node.ae_title, host=urlsplit(str(self.config.url)).hostname
        )
        uid = study.study_instance_uid
        try:
            instances = self._iter_study(uid)
            for dataset in instances:
                if cancelled():
                    raise RetrieveError(f"WADO-RS from {self.name} stopped: the job was cancelled")
                if time.monotonic() >= deadline:
                    raise RetrieveError(
                        f"WADO-RS from {self.name} stopped: still running at retrieve_timeout "
                        f"({self.config.retrieve_timeout:g} s)"
                    )
                _store_dataset(store, dataset, provenance)
                report.completed = (report.completed or 0) + 1
        except StoreError as exc:
            raise RetrieveError(
                f"WADO-RS from {self.name}: an instance was refused by this node's store: "
                f"{exc.message}"
            ) from exc
        except _WEB_ERRORS as exc:
            raise RetrieveError(
                f"WADO-RS from {self.name} ended before it finished "
                f"({describe_failure(self.config, exc)}); {report.completed} instance(s) "
                "had arrived"
            ) from exc
        report.status = 0x0000
        return report

    def _iter_study(self, uid: str) -> Any:
        """The study's instances as they stream in, as stored where the server can."""
        try:
            return self.web.iter_study(uid, media_types=AS_STORED)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (400, 406):  # no "transfer-syntax=*" here: take its default
                return self.web.iter_study(uid)
            raise


def _store_dataset(store: InstanceStore, dataset: Dataset, provenance: Provenance) -> None:
    """Write one WADO-RS instance through the store (its own transfer syntax, its UIDs).

    Encoded once into a buffer, whose data set part is streamed into the store
    without another copy: memory holds this instance about twice, never more.
    """
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    part10 = buffer.getbuffer()
    # Part 10: preamble, "DICM", then (0002,0000) UL: the length of the rest of the meta.
    (meta_rest,) = struct.unpack_from("<I", part10, 132 + 8)
    incoming = store.receive(
        str(dataset.SOPClassUID),
        str(dataset.SOPInstanceUID),
        str(dataset.file_meta.TransferSyntaxUID),
        provenance,
    )
    incoming.write(part10[132 + 12 + meta_rest :])
    incoming.finish()  # raises StoreError (the temporary file gone) when refused
