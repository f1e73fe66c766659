"""From the auth service to the partitions: admin commands and a local mirror.

``AuthFeed`` mirrors the service's published keys and revocation list in a
:class:`pyengine.service.tokens.AuthState` (the same object a partition keeps) and, on every
:meth:`AuthFeed.poll`, returns the admin commands that bring a replica from the previous
state to the current one. ``commands_for`` computes the commands for a replica whose state is
known only by its key ids and revocation ``last_seq`` (e.g. read back from a partition).

Command order inside one poll: ``add_key`` first, then ``revoke``, then ``remove_key`` -- a
token signed with a new key is never refused because its key arrived late, and a key is only
dropped after everything else was applied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from pyengine.service.tokens import AuthState

from .client import AuthClient

MAX_REVOKE_BATCH = 1000


def commands_for(
    client: AuthClient,
    kids: Iterable[str],
    last_seq: int,
    *,
    batch: int = MAX_REVOKE_BATCH,
) -> list[dict]:
    """Commands that bring a replica holding ``kids`` at revocation ``last_seq`` up to date."""
    jwks = client.keys()
    have = set(kids)
    published = {k["kid"]: k["x"] for k in jwks}
    cmds: list[dict] = [{"type": "add_key", "kid": kid, "x": x} for kid, x in published.items() if kid not in have]
    seq = last_seq
    while True:
        rows = client.revocations(since=seq, limit=batch)
        if not rows:
            break
        seq = rows[-1]["seq"]
        cmds.append({"type": "revoke", "seq": seq, "jtis": [[r["jti"], r["exp"]] for r in rows]})
        if len(rows) < batch:
            break
    cmds += [{"type": "remove_key", "kid": kid} for kid in sorted(have - set(published))]
    return cmds


class AuthFeed:
    """Local mirror of the auth service's keys and revocations (thread-safe)."""

    def __init__(self, client: AuthClient, *, batch: int = MAX_REVOKE_BATCH, min_interval_s: float = 5.0) -> None:
        self.client = client
        self.batch = batch
        self.min_interval_s = min_interval_s
        self.state = AuthState()
        self._lock = threading.Lock()
        self._last_poll = float("-inf")  # last attempt
        self._last_success = float("-inf")

    def poll(self) -> list[dict]:
        """Fetch and apply changes; returns the admin commands that were applied. A failed poll
        (``AuthError``) also counts as an attempt for :meth:`maybe_poll`'s interval."""
        with self._lock:
            self._last_poll = time.monotonic()
            cmds = commands_for(
                self.client, self.state.verifier.kids(), self.state.revocations.last_seq, batch=self.batch
            )
            for cmd in cmds:
                self.state.apply(cmd)
            self._last_success = time.monotonic()
            return cmds

    def maybe_poll(self) -> list[dict]:
        """:meth:`poll` unless the last attempt is younger than ``min_interval_s``."""
        if time.monotonic() - self._last_poll < self.min_interval_s:
            return []
        return self.poll()

    def age_s(self) -> float:
        """Seconds since the mirror was last brought up to date (inf: never)."""
        return time.monotonic() - self._last_success
