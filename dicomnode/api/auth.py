"""Bearer tokens with three roles, and the browser-facing guards of the admin API.

``[[api.tokens]]`` lists tokens with role ``read`` (every GET), ``store``
(STOW-RS under ``/dicomweb`` and nothing else: what a modality or a PACS
pushing studies holds) or ``admin`` (everything: also retry, cancel and new
jobs). A request proves a token with
``Authorization: Bearer TOKEN``; the dashboard keeps it in an HttpOnly,
SameSite=Strict cookie set by its login form.

Without any token the API is open, and configuration only allows that on a
loopback address (see :class:`dicomnode.config.APIConfig`): the same trust as
the CLI on that host. Two guards keep browsers from turning that into an
attack surface: requests must name a loopback host (no DNS rebinding), and
state-changing requests that carry an ``Origin`` must come from this origin
(no cross-site form posts).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from dicomnode.config import APITokenConfig, is_loopback

Role = Literal["read", "store", "admin"]
COOKIE = "dicomnode_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name (never the token) and its role."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this principal holds *role* (admin holds every role; store does not read)."""
        return self.role == "admin" or role == self.role


class Unauthenticated(HTTPException):
    """401: no token, or one the node does not know."""

    def __init__(self, detail: str) -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


class TokenAuth:
    """Resolves a request to a :class:`Principal`.

    Parameters
    ----------
    tokens
        ``api.tokens``; empty means the open (loopback-only) mode.
    """

    def __init__(self, tokens: list[APITokenConfig]) -> None:
        self.tokens = [
            (t.token.encode(), Principal(t.name or f"{t.role}-token-{i}", t.role))
            for i, t in enumerate(tokens)
        ]

    @property
    def open(self) -> bool:
        """True when no tokens are configured (loopback-only, every request is admin)."""
        return not self.tokens

    def lookup(self, token: str) -> Principal | None:
        """The principal of *token*; compares every token in constant time."""
        found = None
        for known, principal in self.tokens:
            if hmac.compare_digest(known, token.encode()):
                found = principal
        return found

    def token_of(self, request: Request) -> str | None:
        """The bearer token of a request, from its header or the dashboard's cookie."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("Authorization header must be 'Bearer TOKEN'")
            return value.strip()
        return request.cookies.get(COOKIE)

    def identify(self, request: Request) -> Principal:
        """The caller, or :class:`Unauthenticated`."""
        if self.open:
            return Principal("local", "admin")
        token = self.token_of(request)
        if not token:
            raise Unauthenticated("a bearer token is required (Authorization: Bearer TOKEN)")
        principal = self.lookup(token)
        if principal is None:
            raise Unauthenticated("unknown token")
        return principal

    def require(self, request: Request, role: Role) -> Principal:
        """The caller if it holds *role*; 401 without a valid token, 403 without the role."""
        principal = self.identify(request)
        if not principal.may(role):
            raise HTTPException(
                403,
                f"this action needs {'an' if role == 'admin' else 'a'} {role} token; "
                f"yours is {principal.role}",
            )
        return principal


def host_allowed(request: Request, auth: TokenAuth) -> bool:
    """In open mode only loopback host names are served (defeats DNS rebinding)."""
    if not auth.open:
        return True
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    return is_loopback(host)


def origin_allowed(request: Request) -> bool:
    """A state-changing browser request must come from our own origin (no CSRF)."""
    if request.method in SAFE_METHODS:
        return True
    origin = request.headers.get("origin")
    if origin is None:  # not a browser (curl, scripts), or a same-origin post of an old one
        return True
    # "null" (sandboxed frames, some redirects) names no origin we could trust.
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")
