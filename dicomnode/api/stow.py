"""STOW-RS (PS3.18 10.5): instances pushed over HTTP, stored with the same promise as a C-STORE.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a
``multipart/related; type="application/dicom"`` body, one DICOM Part 10 file
per part; mounted only when ``api.stow = true``, and only a token with role
``store`` (or ``admin``) may call them. The body is streamed: each part goes
to disk as it arrives (:class:`~dicomnode.store.incoming.IncomingFile`; memory
per request is one read batch, whatever the objects' size), is checked as a
C-STORE's data set is (header scan, UIDs, SOP class, transfer syntax) and is
parked under ``tmp/``. Only when the whole body has parsed are the parked
parts committed (renamed, fsynced, indexed) and the response sent; a broken
or truncated body stores nothing.

Answers (PS3.18 10.5.3):

- 200: every instance stored; 202: some stored, some failed; 409: none
  stored, each part failed for its own reason. The body is
  ``application/dicom+json``: Referenced SOP Sequence (0008,1199) and Failed
  SOP Sequence (0008,1198) with a Failure Reason (0008,1197) per failed part
  (:attr:`StoreError.failure_reason <dicomnode.store.errors.StoreError>`) and
  the reason as a sentence in the private element (0009,1001), creator
  ``dicomnode`` (0009,0010). No Retrieve URL: the node serves no WADO-RS.
- 400: the request is malformed (an invalid study UID in the URL, no
  boundary, a broken, truncated or empty multipart body); 401: no or an
  unknown token; 403: a token without the store role; 415: any other media
  type (also ``application/dicom+json`` metadata requests). These carry
  ``{"detail": sentence}`` as the rest of the API does.

Instances arrive as from an association with no calling AE title:
``Provenance(calling_aet=None, called_aet=node.ae_title, host=client address)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomnode.api.auth import Principal
from dicomnode.api.context import context, storer
from dicomnode.multipart import DicomParts, MultipartError
from dicomnode.receiver import SUPPORTED_ABSTRACT_SYNTAXES, SUPPORTED_TRANSFER_SYNTAXES
from dicomnode.store import (
    FileMeta,
    IncomingFile,
    InstanceStore,
    ParkedInstance,
    ProcessingFailure,
    Provenance,
    SOPClassNotSupported,
    StoredInstance,
    StoreError,
    StudyMismatch,
    TransferSyntaxNotSupported,
    is_valid_uid,
)
from dicomnode.wakeups import ARRIVALS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
PRIVATE_CREATOR = "dicomnode"
# Body chunks handed to a worker thread at a time: few thread hops, bounded memory.
BATCH_BYTES = 1 << 20


class MalformedRequest(Exception):
    """A request PS3.18 answers as a whole (400, 415): nothing of it is stored."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request's Content-Type.

    Raises
    ------
    MalformedRequest
        415 for any media type but ``multipart/related; type="application/dicom"``,
        400 when the boundary is missing.
    """
    media, parameters = parse_options_header(content_type or "")
    if media != b"multipart/related":
        raise MalformedRequest(
            415,
            'this node\'s STOW-RS takes multipart/related; type="application/dicom" bodies, '
            f"not {media.decode('latin-1') or 'a body without Content-Type'}",
        )
    part_type = parameters.get(b"type", b"").strip().lower().decode("latin-1")
    if part_type != "application/dicom":
        raise MalformedRequest(
            415,
            "this node stores only parts of type application/dicom (DICOM Part 10 files), "
            f"not {part_type or 'parts of no declared type'}",
        )
    boundary = parameters.get(b"boundary", b"")
    if not boundary:
        raise MalformedRequest(400, "the multipart/related Content-Type has no boundary")
    return boundary


def admit(meta: FileMeta) -> None:
    """What a C-STORE association would negotiate: the node's SOP classes and transfer syntaxes."""
    if meta.sop_class_uid not in SUPPORTED_ABSTRACT_SYNTAXES:
        raise SOPClassNotSupported(f"SOP class {meta.sop_class_uid} is not one the node stores")
    if meta.transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        raise TransferSyntaxNotSupported(
            f"transfer syntax {meta.transfer_syntax} is not one the node takes"
        )


@dataclass
class PartOutcome:
    """One part of the body: its UIDs as far as known, then parked, stored or refused."""

    number: int
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    parked: ParkedInstance | None = None
    stored: StoredInstance | None = None
    refusal: StoreError | None = None


class StowBody:
    """The parts of one STOW-RS body: parsed as they stream in, each parked, then all committed.

    :meth:`write` and :meth:`close` block (disk writes, header scans, fsync,
    index rows): the endpoint calls them from a worker thread, one at a time.

    Parameters
    ----------
    store
        Where the instances go.
    boundary
        The multipart boundary.
    provenance
        Who sends them.
    study
        The Study Instance UID of the request's URL; parts of another study are refused.
    """

    def __init__(
        self, store: InstanceStore, boundary: bytes, provenance: Provenance, study: str | None
    ) -> None:
        self.study = study
        self.outcomes: list[PartOutcome] = []
        try:
            self.parts = DicomParts(store, boundary, provenance, self._part_end, admit)
        except MultipartError as exc:
            raise MalformedRequest(400, str(exc)) from None

    def _part_end(self, number: int, part: IncomingFile | None, refusal: StoreError | None) -> None:
        outcome = PartOutcome(number)
        self.outcomes.append(outcome)
        if part is None:
            outcome.refusal = refusal
            return
        outcome.sop_class_uid, outcome.sop_instance_uid = part.sop_class_uid, part.sop_instance_uid
        try:
            outcome.parked = self._checked(part.park())
        except StoreError as exc:
            outcome.refusal = exc
        except Exception as exc:  # the node keeps serving whatever one part does
            log.exception("STOW-RS part failed unexpectedly")
            part.discard()
            outcome.refusal = ProcessingFailure(f"internal error: {type(exc).__name__}")

    def _checked(self, parked: ParkedInstance) -> ParkedInstance:
        """*parked*, unless the URL names another study."""
        found = parked.header.study_instance_uid
        if self.study is not None and found != self.study:
            parked.discard()
            raise StudyMismatch(
                f"the instance belongs to study {found}, not to {self.study} named in the URL"
            )
        return parked

    # -- the request ------------------------------------------------------------------

    def write(self, chunks: Iterable[bytes]) -> None:
        """Parse the next bytes of the body.

        Raises
        ------
        MalformedRequest
            400 when the bytes break the multipart syntax.
        """
        for chunk in chunks:
            try:
                self.parts.write(chunk)
            except MultipartError as exc:
                raise MalformedRequest(400, str(exc)) from None

    def close(self) -> list[PartOutcome]:
        """The body is complete: commit every parked part, in order; return every part's outcome.

        Raises
        ------
        MalformedRequest
            400 when the body ended before its closing boundary, or held no part.
        """
        if not self.parts.ended:
            raise MalformedRequest(
                400, "the multipart body ends before its closing boundary (truncated?)"
            )
        if not self.outcomes:
            raise MalformedRequest(400, "the multipart body holds no parts")
        for outcome in self.outcomes:
            if outcome.parked is not None:
                outcome.stored, outcome.refusal = _commit(outcome.parked)
                outcome.parked = None
        return self.outcomes

    def discard(self) -> None:
        """Remove every part not committed (the body was broken, or the client went away)."""
        self.parts.discard()
        for outcome in self.outcomes:
            if outcome.parked is not None:
                outcome.parked.discard()
                outcome.parked = None


def _commit(parked: ParkedInstance) -> tuple[StoredInstance | None, StoreError | None]:
    try:
        return parked.commit(), None
    except StoreError as exc:
        return None, exc
    except Exception as exc:  # the file is gone or durable; either way not acknowledged
        log.exception("STOW-RS commit failed unexpectedly")
        parked.discard()
        return None, ProcessingFailure(f"internal error: {type(exc).__name__}")


# -- the response -------------------------------------------------------------------------


def _uid(value: str) -> dict[str, Any]:
    # An unknown or invalid UID is sent empty (no Value), never as the raw bytes.
    return {"vr": "UI", "Value": [value]} if is_valid_uid(value) else {"vr": "UI"}


def _item(outcome: PartOutcome) -> dict[str, Any]:
    item = {
        "00081150": _uid(outcome.sop_class_uid),
        "00081155": _uid(outcome.sop_instance_uid),
    }
    if outcome.refusal is not None:
        item["00081197"] = {"vr": "US", "Value": [outcome.refusal.failure_reason]}
        item["00090010"] = {"vr": "LO", "Value": [PRIVATE_CREATOR]}
        item["00091001"] = {"vr": "LT", "Value": [outcome.refusal.message]}
    return item


def stow_response(outcomes: list[PartOutcome]) -> Response:
    """200, 202 or 409 with the Store Instances Response as DICOM JSON (PS3.18 10.5.3)."""
    stored = [o for o in outcomes if o.stored is not None]
    failed = [o for o in outcomes if o.refusal is not None]
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_item(o) for o in failed]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    status = 200 if not failed else 202 if stored else 409
    return Response(json.dumps(body).encode(), status_code=status, media_type=DICOM_JSON)


# -- the endpoints ------------------------------------------------------------------------

Storer = Annotated[Principal, Depends(storer)]

_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    },
    "responses": {
        "200": {"description": "Every instance stored.", "content": {DICOM_JSON: {}}},
        "202": {"description": "Some stored, some failed.", "content": {DICOM_JSON: {}}},
        "409": {"description": "None stored: each part failed.", "content": {DICOM_JSON: {}}},
        "400": {"description": "Malformed request: nothing stored."},
        "415": {"description": "Not multipart/related of application/dicom."},
    },
}


@router.post("/studies", openapi_extra=_OPENAPI, response_class=Response)
async def store_instances(request: Request, principal: Storer) -> Response:
    """Store the instances of the body (STOW-RS), of any study."""
    return await _store(request, principal, None)


@router.post("/studies/{study:path}", openapi_extra=_OPENAPI, response_class=Response)
async def store_study_instances(request: Request, study: str, principal: Storer) -> Response:
    """Store the instances of the body (STOW-RS); each must belong to study *study*."""
    return await _store(request, principal, study)


async def _store(request: Request, principal: Principal, study: str | None) -> Response:
    try:
        if study is not None and not is_valid_uid(study):
            raise MalformedRequest(
                400, f"the study in the URL, {study[:80]!r}, is not a valid DICOM UID"
            )
        body = _new_body(request, study)
    except MalformedRequest as exc:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    try:
        await _feed(request, body)
        outcomes = await run_in_threadpool(body.close)
    except MalformedRequest as exc:
        await run_in_threadpool(body.discard)
        log.warning("STOW-RS request refused: %s", exc.detail, extra=_who(request, principal))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)
    except ClientDisconnect:
        await run_in_threadpool(body.discard)
        log.warning(
            "STOW-RS client left before the body was complete; nothing stored",
            extra=_who(request, principal),
        )
        return Response(status_code=400)  # nobody reads it
    except BaseException:
        body.discard()  # cancelled (the server stops): nothing was acknowledged
        raise
    _report(request, principal, outcomes)
    return stow_response(outcomes)


def _new_body(request: Request, study: str | None) -> StowBody:
    ctx = context(request)
    assert ctx.store is not None, "create_app mounts STOW-RS only with the node's store"
    provenance = Provenance(
        calling_aet=None,
        called_aet=ctx.settings.node.ae_title,
        host=request.client.host if request.client else None,
    )
    boundary = boundary_of(request.headers.get("content-type"))
    return StowBody(ctx.store, boundary, provenance, study)


async def _feed(request: Request, body: StowBody) -> None:
    """Stream the request body into *body*, a batch of chunks per worker-thread call."""
    batch: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if chunk:
            batch.append(chunk)
            size += len(chunk)
        if size >= BATCH_BYTES:
            await run_in_threadpool(body.write, batch)
            batch, size = [], 0
    if batch:
        await run_in_threadpool(body.write, batch)


def _who(request: Request, principal: Principal) -> dict[str, Any]:
    return {"token": principal.name, "host": request.client.host if request.client else None}


def _report(request: Request, principal: Principal, outcomes: list[PartOutcome]) -> None:
    """Log the refusals and the counts; ring assembly when something was stored."""
    who = _who(request, principal)
    for outcome in outcomes:
        if outcome.refusal is not None:
            log.warning(
                "STOW-RS part %d refused: %s",
                outcome.number,
                outcome.refusal.message,
                extra={**who, "status": f"0x{outcome.refusal.failure_reason:04X}"},
            )
    stored = sum(1 for o in outcomes if o.stored is not None)
    counter = context(request).metrics.stow_instances
    counter.labels(outcome="stored").inc(stored)
    counter.labels(outcome="refused").inc(sum(1 for o in outcomes if o.refusal is not None))
    log.info(
        "STOW-RS stored %d of %d instance(s)",
        stored,
        len(outcomes),
        extra=who,
    )
    wakeups = context(request).wakeups
    if stored and wakeups is not None:
        wakeups.ring(ARRIVALS)  # assembly: the studies' quiet time starts again
