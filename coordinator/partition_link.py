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
from concurrent.futures import TimeoutError as FutureTimeout
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
        from pyengine.client.match_client import ClientError, MovedError

        try:
            client = self._client(partition)
            reply = client.admin(command, self.timeout)
        except (FutureTimeout, TimeoutError) as exc:
            raise PartitionUnavailable(f"{partition}: no answer within {self.timeout:.0f} s") from exc
        except MovedError as exc:
            return "moved", {"symbol": exc.symbol, "epoch": exc.epoch}
        except ClientError as exc:
            if type(exc) is ClientError and client.connected():
                return "error", {"error": str(exc)}  # the partition's own answer
            raise PartitionUnavailable(f"{partition}: {exc}") from exc
        body = reply.events
        return "ok", body if isinstance(body, dict) else {"events": body}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()
