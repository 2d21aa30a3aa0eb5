"""Client side for admins: ``dicomnode echo`` and ``dicomnode send``."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode import _dul_tuning, _reactor_fix
from dicomnode._dul_tuning import set_nodelay

# Every association this module opens waits for its own responses (see _reactor_fix),
# and its DUL thread wakes as soon as a PDU arrives instead of polling (_dul_tuning).
_reactor_fix.install()
_dul_tuning.apply()

_NODELAY: list[Any] = [(evt.EVT_CONN_OPEN, set_nodelay)]
# C-STORE warning statuses (PS3.4 Table B.2-1): stored, but not quite as sent.
WARNING_STATUSES = {
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP Class",
}


def echo(
    aet: str, host: str, port: int, *, calling_aet: str = "DICOMNODE", timeout: float = 10
) -> tuple[bool, str]:
    """C-ECHO; returns (ok, a sentence for the admin)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=aet, evt_handlers=_NODELAY)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        return False, f"{aet}@{host}:{port} {why}"
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code == 0:
        return True, f"{aet}@{host}:{port}: C-ECHO Success"
    return False, f"{aet}@{host}:{port}: C-ECHO status {code}"


def tls_problem(host: str, port: int, tls: ssl.SSLContext, timeout: float = 10) -> str | None:
    """Why a TLS handshake with *host*:*port* fails, or None when it succeeds.

    pynetdicom reports a failed handshake as an association that "did not
    answer"; after such a failure this says what really happened (an
    untrusted certificate, a name mismatch, a peer that does not speak TLS),
    which is what an admin needs to fix it.
    """
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            tls.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        return f"its TLS certificate is not trusted ({exc.verify_message}); check ca_certificates"
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({exc.reason or exc}); does the peer speak TLS?"
    except OSError as exc:
        return f"cannot connect: {exc}"


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files under *paths* (folders recursively), in name order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            found.append(path)
    return found


@dataclass
class SendReport:
    """Outcome of a send (C-STORE here, STOW-RS in :mod:`dicomnode.dicomweb`).

    ``failures``: the files not stored, each with a sentence; ``warnings``: files
    stored with a warning from the peer (they count in ``sent``).
    """

    sent: int = 0
    failures: dict[Path, str] = field(default_factory=dict)
    warnings: dict[Path, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the admin."""
        return f"sent {self.sent} of {self.sent + len(self.failures)} file(s)"


def send(
    files: list[Path],
    aet: str,
    host: str,
    port: int,
    *,
    calling_aet: str = "DICOMNODE",
    timeout: float = 30,
    tls: ssl.SSLContext | None = None,
) -> SendReport:
    """C-STORE *files* over one association, each in its own transfer syntax (TLS optional)."""
    report = SendReport()
    datasets = []
    for path in files:
        try:
            datasets.append((path, dcmread(path)))
        except (InvalidDicomError, OSError, ValueError) as exc:
            report.failures[path] = f"not a DICOM file: {exc}"
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}
    if len(contexts) > 128:
        raise ValueError("more than 128 SOP class / transfer syntax pairs; send in smaller batches")
    for sop_class, ts in sorted(contexts):
        ae.add_requested_context(sop_class, ts)
    if not datasets:
        return report
    try:
        assoc = ae.associate(
            host,
            port,
            ae_title=aet,
            evt_handlers=_NODELAY,
            tls_args=(tls, host) if tls is not None else None,
        )
    except OSError as exc:  # e.g. the TLS handshake failed
        for path, _ in datasets:
            report.failures[path] = f"{aet}@{host}:{port}: {exc}"
        return report
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        if not assoc.is_rejected and tls is not None:
            why = tls_problem(host, port, tls, timeout) or why
        for path, _ in datasets:
            report.failures[path] = f"{aet}@{host}:{port} {why}"
        return report
    try:
        for path, ds in datasets:
            if not assoc.is_established:
                # The peer aborted or a timeout closed the association: the rest was not sent.
                report.failures[path] = f"{aet}@{host}:{port}: association closed before this file"
                continue
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:
                report.failures[path] = str(exc)
                continue
            code = getattr(status, "Status", None)
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                report.sent += 1
                if code:
                    meaning = WARNING_STATUSES[code]
                    comment = getattr(status, "ErrorComment", "")
                    report.warnings[path] = f"status 0x{code:04X} ({meaning}) {comment}".strip()
            else:
                comment = getattr(status, "ErrorComment", "") if code is not None else "no response"
                report.failures[path] = (
                    f"status {code if code is None else hex(code)} {comment}".strip()
                )
    finally:
        assoc.release()
    return report
