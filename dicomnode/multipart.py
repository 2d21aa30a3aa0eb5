"""``multipart/related`` bodies of DICOM Part 10 files, parsed as they stream into the store.

Both directions of DICOMweb carry studies this way: a STOW-RS request the
node receives (:mod:`dicomnode.api.stow`) and a WADO-RS response it reads
(:mod:`dicomnode.retrieval.dicomweb`). :class:`DicomParts` feeds the bytes to
python-multipart's streaming parser and each ``application/dicom`` part to
its own :class:`~dicomnode.store.incoming.IncomingFile`, so memory holds one
network chunk, never a whole instance; what happens to a finished part
(parked until the request is complete, or stored at once) is the caller's
*on_part*.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicomnode.store import FileMeta, IncomingFile, InstanceStore, Provenance, StoreError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# number (from 1), the part's incoming file (None when it is not DICOM), why it was refused
PartHandler = Callable[[int, IncomingFile | None, StoreError | None], None]


class MultipartError(ValueError):
    """Bytes that break the multipart syntax, or a boundary that cannot be used."""


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """The media type of a Content-Type header and its parameters (names lower case)."""
    media, parameters = parse_options_header(content_type or "")
    return media.decode("latin-1"), {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in parameters.items()
    }


class DicomParts:
    """The parts of one ``multipart/related`` body, each streamed into the store.

    Parameters
    ----------
    store
        Where the instances go.
    boundary
        The multipart boundary.
    provenance
        Who sends them.
    on_part
        Called at the end of each part with its number, its
        :class:`IncomingFile` (None for a part that is not ``application/dicom``)
        and the refusal of a part that could not be taken.
    admit
        Passed to each :class:`IncomingFile`: refuses a file by its meta.

    Raises
    ------
    MultipartError
        When *boundary* cannot be used.
    """

    def __init__(
        self,
        store: InstanceStore,
        boundary: bytes,
        provenance: Provenance,
        on_part: PartHandler,
        admit: Callable[[FileMeta], None] | None = None,
    ) -> None:
        self.store = store
        self.provenance = provenance
        self.on_part = on_part
        self.admit = admit
        self.count = 0  # parts ended so far
        self.ended = False  # the closing boundary was read
        self._part: IncomingFile | None = None
        self._refusal: StoreError | None = None
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        try:
            self.parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise MultipartError(f"the multipart boundary is unusable: {exc}") from None

    def write(self, chunk: bytes) -> None:
        """Parse the next bytes of the body (MultipartError when they break its syntax)."""
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise MultipartError(f"the multipart body is malformed: {exc}") from None

    def discard(self) -> None:
        """Drop the part being received (the body broke off in its middle)."""
        if self._part is not None:
            self._part.discard()
            self._part = None

    # -- parser callbacks -------------------------------------------------------------

    def _part_begin(self) -> None:
        self._headers = {}
        self._part, self._refusal = None, None

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        media = media_type(self._headers.get("content-type", "application/dicom"))[0]
        if media == "application/dicom":
            self._part = self.store.receive_file(self.provenance, self.admit)
        else:
            self._refusal = StoreError(
                f"part {self.count + 1} is {media or 'untyped'}, not application/dicom"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part is not None:
            self._part.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        self.count += 1
        part, self._part = self._part, None
        refusal = self._refusal or (
            None if part is not None else StoreError("the part has no headers")
        )
        self.on_part(self.count, part, refusal)

    def _end(self) -> None:
        self.ended = True
