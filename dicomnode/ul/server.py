"""The listening socket: one thread accepts, each association gets a thread of its own.

With ``reuse_port`` several processes listen on the same port
(``SO_REUSEPORT``, Linux): the kernel spreads new connections over them, so
the node's receiver processes share one DICOM port without a process in
between that would have to pass every byte along.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Serve = Callable[[socket.socket, tuple[str, int]], None]


def listening_socket(
    host: str, port: int, *, reuse_port: bool, listen: bool = True
) -> socket.socket:
    """A TCP socket bound to (*host*, *port*); listening unless *listen* is False.

    A bound socket that does not listen keeps the port reserved for the
    processes that will (a parent picking a free port for its receivers).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(128)
    return sock


class Server:
    """Accepts connections on *sock* and runs *serve* for each in a new thread.

    Parameters
    ----------
    sock
        A listening socket.
    serve
        Called in the connection's thread with the (TLS-wrapped) socket and
        the peer's address; it owns the socket from then on.
    ssl_context
        Server-side TLS, or None.
    handshake_timeout
        Seconds a TLS handshake may take.
    """

    def __init__(
        self,
        sock: socket.socket,
        serve: Serve,
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 30.0,
    ) -> None:
        self.sock = sock
        self.serve = serve
        self.ssl_context = ssl_context
        self.handshake_timeout = handshake_timeout
        self._threads: set[threading.Thread] = set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="ul-acceptor", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.sock.getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._threads)

    def start(self) -> None:
        """Start accepting in a background thread."""
        self._acceptor.start()

    def listening(self) -> bool:
        """Whether the socket is open and the acceptor runs."""
        return not self._stopped.is_set() and self.sock.fileno() >= 0 and self._acceptor.is_alive()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, address = self.sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            thread = threading.Thread(
                target=self._connection, args=(conn, address), name="ul-association", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _connection(self, conn: socket.socket, address: tuple[str, int]) -> None:
        with self._lock:
            self._open.add(conn)
        try:
            # Each PDU goes out at once: Nagle + delayed ACK would stall every response ~40 ms.
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            served: socket.socket | None = conn
            if self.ssl_context is not None:
                served = self._tls(conn, address)
            if served is not None:
                self.serve(served, (str(address[0]), int(address[1])))
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                self._open.discard(conn)

    def _tls(self, conn: socket.socket, address: tuple[str, int]) -> socket.socket | None:
        assert self.ssl_context is not None
        conn.settimeout(self.handshake_timeout)
        try:
            return self.ssl_context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.warning(
                "TLS handshake failed: %s", exc, extra={"peer": f"{address[0]}:{address[1]}"}
            )
            with contextlib.suppress(OSError):
                conn.close()
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close the socket, wait a moment for open associations."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self._acceptor.join(timeout)
        with self._lock:
            threads = list(self._threads)
            sockets = list(self._open)
        for conn in sockets:  # open associations end now, as on a node shutdown
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout / max(1, len(threads)))
