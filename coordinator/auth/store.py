"""SQLite persistence for the auth service.

One connection, serialised by a lock; every mutation runs in ``BEGIN IMMEDIATE`` and is
committed with ``synchronous=FULL`` in WAL mode, so an acknowledged request survives a crash or
restart. One service process per database file (enforced with a ``<db>.lock`` flock).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account     TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    uid           TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    account       TEXT NOT NULL REFERENCES accounts(account),
    perms         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key BLOB,
    public_key  BLOB NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'published', 'retired')),
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS signing_keys_one_active
    ON signing_keys(status) WHERE status = 'active';
CREATE TABLE IF NOT EXISTS families (
    family_id     TEXT PRIMARY KEY,
    uid           TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT
);
CREATE INDEX IF NOT EXISTS families_uid ON families(uid);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL REFERENCES families(family_id),
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family_id);
CREATE TABLE IF NOT EXISTS access_tokens (
    jti        TEXT PRIMARY KEY,
    family_id  TEXT,
    uid        TEXT NOT NULL,
    kid        TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    exp        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_tokens_family ON access_tokens(family_id);
CREATE TABLE IF NOT EXISTS revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    jti        TEXT NOT NULL UNIQUE,
    exp        INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL,
    reason     TEXT NOT NULL
);
"""


class Store:
    """Owns the SQLite connection. Use :meth:`tx` for writes and :meth:`read` for reads."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        if self.path != ":memory:":
            p = Path(self.path)
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.exists():  # private keys and password hashes live here: owner-only
                fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            # One service process per database (its key cache must not go stale).
            self._lock_fd = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._lock_fd)
                raise RuntimeError(f"{self.path} is in use by another auth service process") from None
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        except BaseException:
            self._release_lock()
            raise
        try:
            self._init_db()
        except BaseException:
            self._conn.close()
            self._release_lock()
            raise

    def _init_db(self) -> None:
        self._conn.row_factory = sqlite3.Row
        c = self._conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute("PRAGMA busy_timeout=10000")
        version = c.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: schema version {version} is newer than this code")
        with self.tx() as conn:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """Serialised write transaction; commits on success, rolls back on exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._release_lock()
