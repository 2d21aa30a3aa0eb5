"""Serving the admin app with uvicorn in a background thread of the node.

The socket is bound here, before uvicorn starts, so ``api.port = 0`` gives a
free port that :attr:`APIServer.port` reports at once (tests read it).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class APIServer:
    """uvicorn serving *app* on ``host:port`` from a daemon thread.

    Parameters
    ----------
    app
        The ASGI app (see :func:`dicomnode.api.app.create_app`).
    host, port
        Where to listen; port 0 picks a free one.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.sock: socket.socket | None = None
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.sock is not None, "API server not started"
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        """Base URL of the API (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Bind, start uvicorn and wait until it serves."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((self.host, self.requested_port))
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            self.sock = None
            raise
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our JSON handlers on the root logger
            access_log=False,  # request lines may carry accession numbers in queries
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="api", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        log.info("API listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        """Finish open requests (briefly), then stop serving."""
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        if self.sock is not None:
            self.sock.close()
        self.server = self.thread = None
