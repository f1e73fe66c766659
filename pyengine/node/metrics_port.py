"""The metrics endpoint's listening socket, bound before the process starts its member: a port
that is taken stops the start (the process must not run unobservable), while the web stack that
serves it (``pyengine/node/metrics.py``: prometheus_client, http.server, ~45-65 ms of CPU to
import) comes later, once the member is in step (#17). A scrape in between waits in the listen
backlog instead of being refused."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("matchx.metrics")

# connections the kernel holds until the server accepts them (a Prometheus and a person at once)
BACKLOG = 16


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (0: a free port, ``getsockname`` says which); raises
    OSError when the port is taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # as http.server does: a member restarted at once finds its port in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class ServedLater:
    """Serves the metrics on ``sock`` from a thread of its own once ``ready`` is set (the bridge's
    member in step) or ``wait_s`` have passed, whichever comes first (a member that never gets in
    step is the one to look at). ``build`` makes the server (it imports the web stack);
    ``stop`` stops it, or closes the socket if it never started."""

    def __init__(self, sock: socket.socket, ready: threading.Event, wait_s: float,
                 build: Callable[[], Any]) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._ready = ready
        self._wait_s = wait_s
        self._build = build
        self._lock = threading.Lock()
        self._stopped = False
        self.server: Any = None
        self._thread = threading.Thread(target=self._serve, name="metrics-start", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        self._ready.wait(self._wait_s)
        with self._lock:
            if self._stopped:
                return
            try:
                server = self._build()
                server.start(self.sock)
            except Exception:  # noqa: BLE001 - the member goes on; its log says why it has no metrics
                log.exception("metrics server failed to start")
                self.sock.close()
                return
            self.server = server

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.server is not None:
                self.server.stop()
            else:
                self.sock.close()
