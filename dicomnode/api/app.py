"""The admin web app: REST API, dashboard, health and Prometheus metrics.

``create_app`` builds it from the node's settings and database; the node
serves it with :class:`dicomnode.api.server.APIServer`. Routes:

- ``/api/v1/...`` REST (see :mod:`dicomnode.api.rest`), OpenAPI at ``/docs``
  (Swagger UI served from the package, no CDN) and ``/openapi.json``;
- ``/dashboard`` the web page (see :mod:`dicomnode.api.dashboard`);
- ``/dicomweb/studies`` STOW-RS, only with ``api.stow = true`` (see
  :mod:`dicomnode.api.stow`);
- ``/healthz`` (the process answers), ``/readyz`` (database reachable,
  storage writable, receiver listening), ``/metrics`` — these three need no
  token, as probes and Prometheus scrapers expect; they carry no patient data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.api import dashboard, rest
from dicomnode.api.auth import TokenAuth, host_allowed, origin_allowed
from dicomnode.api.context import APIContext, ReadinessCheck, context
from dicomnode.api.health import database_check
from dicomnode.api.schemas import Readiness
from dicomnode.config import Settings
from dicomnode.jobs import FilterError, JobError, UnknownJob
from dicomnode.metrics import NodeMetrics
from dicomnode.ondemand import RequestError
from dicomnode.retrieval import QueryError, RetrieveError
from dicomnode.store import InstanceStore
from dicomnode.wakeups import Wakeups

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    metrics: NodeMetrics | None = None,
    checks: dict[str, ReadinessCheck] | None = None,
    store: InstanceStore | None = None,
    wakeups: Wakeups | None = None,
) -> FastAPI:
    """The admin app.

    Parameters
    ----------
    settings
        Node settings (``api.tokens`` decide who may do what).
    sessions
        Job database.
    metrics
        The node's metrics (default: a registry with only the database collector).
    checks
        Readiness checks beside the database one (storage, receiver).
    store
        The node's instance store; required with ``api.stow``.
    wakeups
        Rung when STOW-RS stored instances (assembly sees them at once).

    Raises
    ------
    ValueError
        When ``api.stow`` is on without a *store*.
    """
    app = FastAPI(
        docs_url=None,  # served by _install_docs from files in the package, not a CDN
        title="dicomnode admin API",
        version=__version__,
        description=(
            "Jobs, studies, statistics and actions of a dicomnode. Send "
            "`Authorization: Bearer TOKEN` (tokens and roles: `[[api.tokens]]`)."
        ),
    )
    app.state.ctx = APIContext(
        settings=settings,
        sessions=sessions,
        auth=TokenAuth(settings.api.tokens),
        metrics=metrics or NodeMetrics(sessions, settings.storage.path),
        checks={"database": database_check(sessions), **(checks or {})},
        store=store,
        wakeups=wakeups,
    )
    _install_guards(app)
    _install_error_handlers(app)
    app.include_router(rest.router)
    app.include_router(dashboard.router)
    if settings.api.stow:
        if store is None:
            raise ValueError("api.stow needs the node's instance store (create_app(store=...))")
        from dicomnode.api import stow  # pynetdicom's SOP class lists: only when it is on

        app.include_router(stow.router)
    _install_probes(app)
    _install_docs(app)
    return app


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the swagger-ui-bundle package: hospital networks are often offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/docs-static/favicon-32x32.png",
        )


def _install_guards(app: FastAPI) -> None:
    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not host_allowed(request, context(request).auth):
            return JSONResponse(
                {"detail": "without api.tokens this API answers only to loopback host names"},
                status_code=403,
            )
        if not origin_allowed(request):
            return JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        started = time.perf_counter()
        response = await call_next(request)
        # Path only: query strings may carry accession numbers.
        log.debug(
            "http request",
            extra={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        return response


def _problem(status: int, detail: str, errors: list[Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = jsonable_encoder(errors)
    return JSONResponse(body, status_code=status)


def _validation_sentence(errors: list[Any]) -> str:
    """``limit: Input should be less than or equal to 1000`` (first error, then a count)."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    text = f"{'.'.join(loc)}: {first.get('msg', 'invalid')}" if loc else str(first.get("msg"))
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _install_error_handlers(app: FastAPI) -> None:
    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        for error in errors:
            error.pop("ctx", None)  # may hold exception objects; the sentence says it
        return _problem(422, _validation_sentence(errors), errors)

    async def bad_filter(request: Request, exc: Exception) -> Response:
        return _problem(422, str(exc))

    async def unknown_job(request: Request, exc: Exception) -> Response:
        return _problem(404, str(exc))

    async def conflict(request: Request, exc: Exception) -> Response:
        return _problem(409, str(exc))

    async def unusable_request(request: Request, exc: Exception) -> Response:
        return _problem(422, str(exc))

    async def source_failed(request: Request, exc: Exception) -> Response:
        return _problem(502, str(exc))

    async def database_down(request: Request, exc: Exception) -> Response:
        log.error("database error in API request: %s", type(exc).__name__)
        return _problem(503, "the job database is unavailable; try again shortly")

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(FilterError, bad_filter)
    app.add_exception_handler(rest.UnknownParameter, bad_filter)
    app.add_exception_handler(UnknownJob, unknown_job)
    app.add_exception_handler(JobError, conflict)
    app.add_exception_handler(RequestError, unusable_request)
    app.add_exception_handler(RetrieveError, source_failed)
    app.add_exception_handler(QueryError, unusable_request)
    app.add_exception_handler(SQLAlchemyError, database_down)


def _install_probes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=307)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers HTTP."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A check failed."}},
    )
    def readyz(request: Request) -> JSONResponse:
        """Readiness: database reachable, storage writable, receiver listening."""
        results = {}
        for name, check in context(request).checks.items():
            ok, message = check()
            results[name] = {"ok": ok, "message": message}
        ready = all(r["ok"] for r in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format)."""
        body, content_type = context(request).metrics.render()
        return Response(body, media_type=content_type)
