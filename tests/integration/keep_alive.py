"""Whether a server keeps an idle keep-alive connection longer than httpx's pool does (5 s)."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

HTTPX_POOL_KEEPALIVE_S = 5.0  # httpx.Limits().keepalive_expiry, the clients' default


def second_answer_after_idle(url: str, path: str, idle_s: float = HTTPX_POOL_KEEPALIVE_S + 1) -> int:
    """GET ``path`` twice on one connection, ``idle_s`` apart; the second answer's status.

    A server that closes idle connections sooner than a client's pool forgets them races that
    client: its next request goes out on a connection being closed and fails with "Server
    disconnected without sending a response" (here: ``http.client.RemoteDisconnected``).
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        first = conn.getresponse()
        first.read()
        assert first.status == 200, first.status
        sock = conn.sock
        time.sleep(idle_s)
        conn.request("GET", path)
        assert conn.sock is sock, "http.client opened a new connection"
        second = conn.getresponse()
        second.read()
        return second.status
    finally:
        conn.close()
