"""What the API's handlers share: settings, database, job queue, auth, metrics, readiness, store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.api.auth import Principal, TokenAuth
from dicomnode.config import Settings
from dicomnode.jobs import JobQueue
from dicomnode.metrics import NodeMetrics
from dicomnode.store import InstanceStore
from dicomnode.wakeups import Wakeups

# name -> () -> (ok, sentence); run by /readyz.
ReadinessCheck = Callable[[], tuple[bool, str]]


@dataclass
class APIContext:
    """State of one API app (``app.state.ctx``)."""

    settings: Settings
    sessions: sessionmaker[Session]
    auth: TokenAuth
    metrics: NodeMetrics
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    # STOW-RS: where pushed instances go, and who to wake once they are stored.
    store: InstanceStore | None = None
    wakeups: Wakeups | None = None

    @property
    def queue(self) -> JobQueue:
        """The job queue (admin actions and listings)."""
        return JobQueue(
            self.sessions,
            lease_seconds=self.settings.workers.lease_seconds,
            max_attempts=self.settings.workers.max_attempts,
        )


def context(request: Request) -> APIContext:
    """The :class:`APIContext` of the app serving *request*."""
    return cast(APIContext, request.app.state.ctx)


def reader(request: Request) -> Principal:
    """Dependency: any valid token (401 otherwise)."""
    return context(request).auth.require(request, "read")


def storer(request: Request) -> Principal:
    """Dependency: a store (or admin) token (401 without a valid token, 403 with a read token)."""
    return context(request).auth.require(request, "store")


def admin(request: Request) -> Principal:
    """Dependency: an admin token (401 without a valid token, 403 with a read token)."""
    return context(request).auth.require(request, "admin")
