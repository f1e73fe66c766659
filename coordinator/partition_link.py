"""The coordinator's link to the partitions: admin commands over the SDK's ``MatchClient``.

The migration driver (coordinator/migrations.py) is a client of the partitions: it sends each
step as an admin command into the log of the partition it changes. This module is the only part
of the coordinator that imports the client SDK, and it does so lazily: a coordinator that never
migrates never starts a JVM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

from coordinator.migrations import PartitionUnavailable
from coordinator.store import CoordinatorStore

log = logging.getLogger("coordinator.partition_link")


def token_file_provider(path: Path) -> Callable[[bool], str]:
    """A MatchClient token provider that reads an access token from ``path`` (read again when
    the cluster says it expired: whoever renews the file renews the coordinator's token)."""

    def provide(_refresh: bool) -> str:
        token = path.read_text().strip()
        if not token:
            raise PartitionUnavailable(f"control token file {path} is empty")
        return token

    return provide


class ClientTransport:
    """``Transport`` over one MatchClient per partition (endpoints from the coordinator's map)."""

    def __init__(self, store: CoordinatorStore, *, timeout: float = 10.0,
                 client_kwargs: dict[str, Any] | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.client_kwargs = dict(client_kwargs or {})
        self._clients: dict[str, Any] = {}
        self._endpoints: dict[str, str] = {}
        self._lock = threading.Lock()

    def _client(self, partition: str) -> Any:
        endpoints = self.store.get_partition(partition)["ingress_endpoints"]
        with self._lock:
            client = self._clients.get(partition)
            if client is not None and self._endpoints.get(partition) == endpoints:
                return client
            if client is not None:
                client.close()  # the partition's members moved
            from pyengine import jvm
            from pyengine.client import MatchClient

            # -Xrs: the JVM leaves SIGTERM/SIGINT to the coordinator, which then shuts down
            # cleanly (closing these clients and their /dev/shm dirs); without it the JVM's own
            # handler ends the process at once
            jvm.start(("-Xrs",))
            if not endpoints:
                raise PartitionUnavailable(f"partition {partition} has no members")
            client = MatchClient(endpoints, **self.client_kwargs)
            self._clients[partition] = client
            self._endpoints[partition] = endpoints
            return client

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        return self.submit(partition, command).result()

    def submit(self, partition: str, command: dict) -> Future:
        """Send one admin command without waiting: a future of ``admin``'s answer (it raises
        ``PartitionUnavailable`` the same way). Commands submitted one after another from one
        thread enter the partition's log in that order (one session), unless a failover makes
        the client resend; the driver pipelines the export's copy with it."""
        from pyengine.client.match_client import ClientError, MovedError

        out: Future = Future()
        try:
            client = self._client(partition)
            inner = client.submit_admin(command)
        except PartitionUnavailable as exc:
            out.set_exception(exc)
            return out
        except ClientError as exc:
            out.set_exception(PartitionUnavailable(f"{partition}: {exc}"))
            return out
        timer = threading.Timer(self.timeout, self._expire, (out, partition))
        timer.daemon = True
        timer.start()

        def done(f: Future) -> None:
            timer.cancel()
            if out.done():
                return
            exc = f.exception()
            try:
                if exc is None:
                    body = f.result().events
                    out.set_result(("ok", body if isinstance(body, dict) else {"events": body}))
                elif isinstance(exc, MovedError):
                    out.set_result(("moved", {"symbol": exc.symbol, "epoch": exc.epoch}))
                elif type(exc) is ClientError and client.connected:
                    out.set_result(("error", {"error": str(exc)}))  # the partition's own answer
                else:
                    out.set_exception(PartitionUnavailable(f"{partition}: {exc}"))
            except InvalidStateError:
                pass  # expired meanwhile

        inner.add_done_callback(done)
        return out

    def _expire(self, out: Future, partition: str) -> None:
        try:
            out.set_exception(PartitionUnavailable(f"{partition}: no answer within {self.timeout:.0f} s"))
        except InvalidStateError:
            pass  # answered meanwhile

    def connect(self, partitions: list[str], timeout: float = 10.0) -> None:
        """Make and connect the partitions' clients now (before a migration's freeze), so that no
        session is set up inside the pause; unreachable ones are left to the steps' retries."""
        for p in partitions:
            try:
                self._client(p).wait_connected(timeout)
            except Exception as exc:  # noqa: BLE001 - only a head start: the steps retry
                log.info("partition %s: not connected ahead of the migration (%s)", p, exc)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
