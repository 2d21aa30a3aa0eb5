"""Readers we did not write, for tests: OHIF v3 in headless Chromium, the Cornerstone3D adapters.

- :class:`ViewerServer` serves the prebuilt OHIF viewer (``@ohif/app``'s
  ``dist/``, put in ``tests/viewer/ohif-dist`` by ``make test``) on a loopback
  port, with an ``app-config.js`` whose data source is ``/dicom-web`` on the
  same origin, proxied to an Orthanc's DICOMweb plugin: the viewer talks to
  one origin, Orthanc keeps ``RemoteAccessAllowed`` off.
- :class:`Browser` is headless Chromium (selenium, Debian's chromedriver) that
  records every console warning and error, uncaught exception and unhandled
  promise rejection of the page, from before the viewer's first script.
- :func:`cornerstone_parse` reads SEG and SR files with
  ``@cornerstonejs/adapters`` in Node (``tests/viewer/parse.mjs``).
"""

from __future__ import annotations

import http.server
import json
import mimetypes
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from dicomnode.testing.peers import free_port

ROOT = Path(__file__).resolve().parents[2]
VIEWER_DIR = Path(os.environ.get("DICOMNODE_VIEWER_DIR", ROOT / "tests" / "viewer"))
OHIF_DIST = VIEWER_DIR / "ohif-dist"

# OHIF's data source: Orthanc's DICOMweb plugin under /dicom-web on the page's own origin.
APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showLoadingIndicator: false,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc DICOMweb',
      name: 'orthanc',
      wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: true,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: true,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""

# Recorded from the first script on: console warnings/errors, uncaught errors, rejections.
_CAPTURE = """
window.__problems = [];
for (const level of ['error', 'warn']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    window.__problems.push([level, args.map(a => (a && a.stack) || String(a)).join(' ')]);
    original(...args);
  };
}
window.addEventListener('error', e => window.__problems.push(['uncaught', `${e.message} ${e.error && e.error.stack}`]));
window.addEventListener('unhandledrejection', e => window.__problems.push(['rejection', String(e.reason && (e.reason.stack || e.reason))]));
"""

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No GPU: WebGL (Cornerstone3D renders with it) comes from SwiftShader.
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--window-size=1600,1000",
)


def missing_viewer() -> str | None:
    """Why the viewer tests cannot run here (what ``make test`` installs), or None."""
    if not (OHIF_DIST / "index.html").is_file():
        return f"no OHIF build in {OHIF_DIST} (make viewer-deps)"
    if not (VIEWER_DIR / "node_modules" / "@cornerstonejs" / "adapters").is_dir():
        return f"no Cornerstone3D adapters in {VIEWER_DIR / 'node_modules'} (make viewer-deps)"
    for tool in ("node", "chromium", "chromedriver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _handler(dist: Path, upstream: str, config: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
            return

        def _reply(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            request = urllib.request.Request(upstream + self.path, data=body, method=self.command)
            for name in ("Accept", "Content-Type"):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, headers, data = response.status, response.headers, response.read()
            except urllib.error.HTTPError as error:
                status, headers, data = error.code, error.headers, error.read()
            self._reply(status, headers.get("Content-Type", "application/octet-stream"), data)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.startswith("/dicom-web/"):
                return self._proxy()
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                return self._reply(200, "application/javascript", config.encode())
            file = (dist / path.lstrip("/")).resolve()
            if not file.is_file() or dist not in file.parents:
                file = dist / "index.html"  # the viewer's own routes (/viewer?...)
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self._reply(200, kind, file.read_bytes())

        def do_POST(self) -> None:  # noqa: N802
            if self.path.startswith("/dicom-web/"):
                return self._proxy()
            self._reply(405, "text/plain", b"")

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser drops connections it no longer needs (navigation, cancelled fetches).
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ViewerServer:
    """OHIF's build on a loopback port, ``/dicom-web`` proxied to *dicomweb_root*'s server.

    Parameters
    ----------
    dicomweb_root
        Base URL whose ``/dicom-web/...`` is the DICOMweb service (an Orthanc's URL).
    dist
        The OHIF build (default :data:`OHIF_DIST`).
    """

    def __init__(self, dicomweb_root: str, dist: Path | None = None) -> None:
        mimetypes.add_type("application/wasm", ".wasm")
        mimetypes.add_type("application/javascript", ".js")
        self.dist = (dist or OHIF_DIST).resolve()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = _QuietServer(
            ("127.0.0.1", self.port), _handler(self.dist, dicomweb_root.rstrip("/"), APP_CONFIG)
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ViewerServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def study_url(self, study_instance_uid: str) -> str:
        """The viewer page of one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_instance_uid}"


class Browser:
    """Headless Chromium under selenium, recording what the page logs as problems."""

    def __init__(self, profile: Path | None = None, failures: Path | None = None) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(profile or tempfile.mkdtemp(prefix="chromium-"))
        self.failures = failures  # where wait_for saves a screenshot when it times out
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _CAPTURE})

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.driver.quit()

    def problems(self) -> list[tuple[str, str]]:
        """(kind, message) logged since the last call: console warnings/errors, uncaught, rejections."""
        found = self.driver.execute_script(
            "const p = window.__problems || []; window.__problems = []; return p;"
        )
        return [(str(kind), str(message)) for kind, message in found or []]

    def script(self, source: str, *args: Any) -> Any:
        """Run JavaScript in the page; its ``return`` value comes back."""
        return self.driver.execute_script(source, *args)

    def text(self) -> str:
        """The page's visible text."""
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def screenshot(self, path: Path) -> Path:
        """Save the page as PNG at *path*."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll *condition* until it returns something true; AssertionError naming *what* after *timeout* s."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # the page is still changing under us
                last = exc
            time.sleep(0.25)
        shot = ""
        if self.failures is not None:
            name = "".join(c if c.isalnum() else "-" for c in what)[:80]
            shot = f"; screenshot {self.screenshot(self.failures / f'timeout-{name}.png')}"
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {what}; last error: {last}{shot}"
        )


def cornerstone_parse(jobs: Sequence[dict[str, Any]], timeout: float = 300) -> list[dict[str, Any]]:
    """Read SEG/SR files with the Cornerstone3D adapters in Node (``tests/viewer/parse.mjs``).

    Parameters
    ----------
    jobs
        ``{"file": path, "sources": [paths of its source images]}`` each.

    Returns
    -------
    list of dict
        Per job: ``segments`` (SEG) or ``tools`` (SR), and ``problems``: what the
        adapters logged as warnings or errors, or raised.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(
            [{"file": str(j["file"]), "sources": [str(s) for s in j["sources"]]} for j in jobs],
            handle,
        )
    try:
        run = subprocess.run(
            ["node", str(VIEWER_DIR / "parse.mjs"), handle.name],
            cwd=VIEWER_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        os.unlink(handle.name)
    if run.returncode != 0:
        raise RuntimeError(f"parse.mjs failed ({run.returncode}): {run.stderr[-3000:]}")
    results: list[dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
    return results
