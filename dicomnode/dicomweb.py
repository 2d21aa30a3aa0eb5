"""The DICOMweb client side (PS3.18): sessions with authentication, STOW-RS sends.

Every request to a DICOMweb peer (a ``[[sources]]`` or ``[[destinations]]``
entry with ``kind = "dicomweb"``) goes through :func:`client`, a
``dicomweb_client.DICOMwebClient`` (the field's reference client) on a
``requests`` session that carries the peer's authentication and CA bundle:

- ``auth = "basic"``: HTTP basic with ``username`` and ``password``;
- ``"bearer"``: ``Authorization: Bearer <token>``;
- ``"oauth2"``: the client-credentials grant (RFC 6749 section 4.4): a token
  from ``token_url``, kept until shortly before it expires, fetched again on
  a 401.

The client's own retry loop is off: the node retries by its own rules (job
retries for retrieves, ``[delivery]`` backoff for sends), so one failed
request is reported at once, with the server's answer in the sentence.

:func:`store_files` is STOW-RS delivery: the result files of one job to one
destination, and per instance what the server said (the ``FailedSOPSequence``
with its failure reasons, a ``WarningReason``), in the same
:class:`~dicomnode.scu.SendReport` a C-STORE delivery returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicomnode.config import RemoteConfig
from dicomnode.scu import WARNING_STATUSES, SendReport

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

# STOW-RS failure reasons (PS3.18 10.5.3) and the C-STORE warnings it reuses.
FAILURE_REASONS = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP Class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0xC409: "Study Instance UID differs from the request's",
    0x0110: "processing failure",
    0x0122: "SOP Class not supported",
    0x0124: "not authorized",
}
WARNING_REASONS = WARNING_STATUSES
# Instances per STOW-RS request: one request per job and destination in practice
# (results are a handful of objects), bounded so a large job cannot build a huge body.
BATCH = 64
_TOKEN_MARGIN = 30.0  # seconds before expiry at which an OAuth2 token is renewed


class DICOMwebError(Exception):
    """A DICOMweb request that failed, as a sentence naming the peer and its answer."""


def reason_text(code: int, table: dict[int, str]) -> str:
    """``0xA700 (out of resources)``; the category for codes the table does not name."""
    meaning = table.get(code)
    if meaning is None:
        meaning = {0xA7: "out of resources", 0xA9: "data set does not match SOP Class"}.get(
            code >> 8, "cannot understand" if code >> 12 == 0xC else "refused"
        )
    return f"0x{code:04X} ({meaning})"


class ClientCredentials(requests.auth.AuthBase):
    """OAuth2 client-credentials grant: a bearer token from *token_url*, renewed before expiry.

    The client id and secret are sent in the form body (what Azure AD, Keycloak
    and Okta all accept). A 401 on a request with a token drops the token, so the
    next request asks for a new one (the server may have revoked it early).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        verify: bool | str,
        timeout: float,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.verify = verify
        self.timeout = timeout
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid access token, fetched when there is none or it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._token, lifetime = self._fetch()
                self._expires = time.monotonic() + max(0.0, lifetime - _TOKEN_MARGIN)
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.scope:
            form["scope"] = self.scope
        try:
            response = requests.post(
                self.token_url, data=form, verify=self.verify, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise DICOMwebError(f"OAuth2 token endpoint {self.token_url}: {exc}") from exc
        if response.status_code != 200:
            raise DICOMwebError(
                f"OAuth2 token endpoint {self.token_url} answered HTTP {response.status_code}: "
                f"{_snippet(response)}"
            )
        try:
            body = response.json()
            return str(body["access_token"]), float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise DICOMwebError(
                f"OAuth2 token endpoint {self.token_url} sent no access_token"
            ) from None

    def forget(self) -> None:
        """Drop the token (the server refused it): the next request fetches a new one."""
        with self._lock:
            self._token = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: requests.Response, **_: Any) -> requests.Response:
        if response.status_code == 401:
            self.forget()
        return response


class _Session(requests.Session):
    """A session whose own CA bundle wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    Plain requests lets those variables override ``Session.verify``
    (psf/requests#3829, open since 2017): on a host that sets one (many
    images do) a source's ``ca_certificates`` would be silently ignored and
    its site CA refused. Proxies and the rest of the environment still apply.
    """

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(
            url, proxies, stream, verify, cert
        )
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def session(remote: RemoteConfig) -> requests.Session:
    """A ``requests`` session for *remote*: its CA bundle and its authentication."""
    http = _Session()
    verify: bool | str = str(remote.ca_certificates) if remote.ca_certificates else True
    http.verify = verify
    if remote.auth == "basic":
        http.auth = (str(remote.username), str(remote.password))
    elif remote.auth == "bearer":
        http.headers["Authorization"] = f"Bearer {remote.token}"
    elif remote.auth == "oauth2":
        http.auth = ClientCredentials(
            str(remote.token_url),
            str(remote.client_id),
            str(remote.client_secret),
            remote.scope,
            verify,
            remote.http_timeout,
        )
    return http


def client(remote: RemoteConfig) -> DICOMwebClient:
    """A DICOMweb client of *remote* (QIDO-RS, WADO-RS, STOW-RS under its ``url``)."""
    from dicomweb_client import DICOMwebClient

    web = DICOMwebClient(
        url=str(remote.url), session=session(remote), timeout=(10.0, remote.http_timeout)
    )
    web.set_http_retry_params(retry=False)  # the node's own retries decide (see above)
    return web


def _snippet(response: requests.Response, limit: int = 200) -> str:
    text = " ".join(response.text.split())
    return text[:limit] or response.reason or "no body"


def describe_failure(remote: RemoteConfig, exc: Exception) -> str:
    """A sentence for a failed request to *remote*: HTTP status and body, or the network error."""
    where = f"{remote.name} ({remote.url})"
    if isinstance(exc, DICOMwebError):
        return f"{where}: {exc}"
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        status = response.status_code
        hint = {
            401: "; check the credentials of this peer",
            403: "; these credentials may not do this",
            404: "; check the peer's url (the DICOMweb root, e.g. .../dicom-web)",
        }.get(status, "")
        return f"{where} answered HTTP {status}: {_snippet(response)}{hint}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"cannot connect to {where}: {_root_cause(exc)}; check ca_certificates"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {where}: {_root_cause(exc)}"
    if isinstance(exc, requests.Timeout):
        return f"{where} did not answer within {remote.http_timeout:g} s"
    return f"{where}: {type(exc).__name__}: {exc}"


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


# -- STOW-RS delivery -------------------------------------------------------------------


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def store_files(files: Sequence[Path], remote: RemoteConfig) -> SendReport:
    """STOW-RS *files* to *remote*; per file, what the server said.

    A file the server lists in ``FailedSOPSequence`` (or that a refused request
    carried) is a failure with its reason; one in ``ReferencedSOPSequence`` with
    a ``WarningReason`` is sent, with the warning; a file the response does not
    mention is sent when the request succeeded outright (200), else a failure.
    """
    report = SendReport()
    web = client(remote)
    loaded: list[tuple[Path, Dataset]] = []
    for path in files:
        try:
            loaded.append((path, dcmread(path)))
        except (InvalidDicomError, OSError, ValueError) as exc:
            report.failures[path] = f"not a DICOM file: {exc}"
    for batch in _batches(loaded, BATCH):
        _store_batch(web, remote, batch, report)
    return report


def _store_batch(
    web: DICOMwebClient,
    remote: RemoteConfig,
    batch: Sequence[tuple[Path, Dataset]],
    report: SendReport,
) -> None:
    answer: Dataset | None
    try:
        answer = web.store_instances([ds for _, ds in batch])
        complete = True
    except requests.HTTPError as exc:
        # 409 (nothing stored) and 400 carry a FailedSOPSequence worth reading.
        answer = _response_dataset(exc.response)
        complete = False
        if answer is None:
            for path, _ in batch:
                report.failures[path] = describe_failure(remote, exc)
            return
    except (requests.RequestException, DICOMwebError, ValueError) as exc:
        for path, _ in batch:
            report.failures[path] = describe_failure(remote, exc)
        return
    failed = {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0x0110))
        for item in answer.get("FailedSOPSequence", [])
    }
    warned: dict[str, int | None] = {
        str(item.get("ReferencedSOPInstanceUID", "")): (
            int(item.WarningReason) if "WarningReason" in item else None
        )
        for item in answer.get("ReferencedSOPSequence", [])
    }
    complete = complete and not failed
    for path, ds in batch:
        uid = str(ds.SOPInstanceUID)
        if uid in failed:
            report.failures[path] = (
                f"{remote.name} refused it: failure reason {reason_text(failed[uid], FAILURE_REASONS)}"
            )
        elif uid in warned or complete:
            report.sent += 1
            code = warned.get(uid)
            if code is not None:
                report.warnings[path] = (
                    f"{remote.name} stored it with warning {reason_text(code, WARNING_REASONS)}"
                )
        else:
            report.failures[path] = f"{remote.name} did not list it as stored"


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The PS3.18 JSON body of a refused STOW-RS request, or None when it has none."""
    if response is None or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        body = response.json()
        return Dataset.from_json(body[0] if isinstance(body, list) else body)
    except (ValueError, TypeError, KeyError):
        return None
