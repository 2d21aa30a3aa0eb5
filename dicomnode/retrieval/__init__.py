"""Query/retrieve: finding studies at a source and bringing them into the node.

- :mod:`~dicomnode.retrieval.query`: what is asked (:class:`StudyQuery`) and
  what is found (:class:`StudyMatch`, :class:`SeriesMatch`), in DICOM keywords;
- :mod:`~dicomnode.retrieval.dimse`: C-FIND, C-MOVE, C-GET (pynetdicom);
- :mod:`~dicomnode.retrieval.dicomweb`: QIDO-RS, WADO-RS (dicomweb-client);
- :mod:`~dicomnode.retrieval.fetch`: a job's ``retrieve`` stage (the study's
  state, progress, the check of what arrived against what was announced).

Retrieved instances take the path of every other instance: a C-MOVE's
C-STOREs arrive at the receiver; C-GET and WADO-RS instances are written
through the same :class:`~dicomnode.store.InstanceStore` (validated,
fsynced, indexed). No model code here, and no pipeline knows about sources.
"""

from __future__ import annotations

from dicomnode.config import NodeConfig, SourceConfig
from dicomnode.retrieval.base import RetrieveError, RetrieveReport, Source
from dicomnode.retrieval.query import QueryError, SeriesMatch, StudyMatch, StudyQuery

__all__ = [
    "QueryError",
    "RetrieveError",
    "RetrieveReport",
    "SeriesMatch",
    "Source",
    "StudyMatch",
    "StudyQuery",
    "open_source",
]


def open_source(config: SourceConfig, node: NodeConfig) -> Source:
    """The client of one ``[[sources]]`` entry (no connection is made yet)."""
    if config.kind == "dicomweb":
        from dicomnode.retrieval.dicomweb import WebSource

        return WebSource(config, node)
    from dicomnode.retrieval.dimse import DimseSource

    return DimseSource(config, node)
