"""What the coordinator and the auth service share about serving HTTP with uvicorn."""

from __future__ import annotations

import socket

# How long an idle keep-alive connection stays open on the server. It must be longer than any
# client keeps an idle connection in its pool (httpx: 5 s), otherwise a client can send its
# next request on a connection the server is closing at that moment and get "Server
# disconnected without sending a response" (uvicorn's own default is also 5 s: a race seen in CI).
KEEP_ALIVE_S = 30


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket for uvicorn (``port`` 0 picks a free one)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on sockets that say they are
    # TCP; without it keep-alive responses stall ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
