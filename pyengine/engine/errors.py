"""Exceptions of the matching engine package."""

from __future__ import annotations


class SnapshotError(Exception):
    """Raised by :meth:`Engine.restore` for corrupt, truncated or incompatible snapshots."""


class MigrationError(Exception):
    """An export or import that cannot be done (pyengine/engine/migration.py); the engine is
    unchanged."""


class Reject(Exception):
    """Internal: a command is refused. Carries a stable reason code and a human detail."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail
