"""Persistent, transactional store of the coordinator's map: workers, partitions, symbols.

Everything lives in one SQLite file.  Every mutating operation runs in a single
``BEGIN IMMEDIATE`` transaction: it validates, writes, and bumps the global routing version
by exactly one, or raises :class:`~coordinator.errors.CoordinatorError` and changes nothing.
An operation that would not change anything (e.g. re-applying an equal topology) succeeds
without bumping the version.

Invariants kept by this module:

* a symbol is owned by at most one partition; its per-symbol ``epoch`` increases by one each
  time it gets a new owner (assign, move, topology change) and never goes backwards, also
  across unassign/re-assign;
* a partition that owns symbols has at least one member;
* only an ``active`` partition may gain symbols (a ``draining`` one keeps what it has);
* a member refers to an existing worker; member ids are 0..2 and unique per partition;
  an ingress endpoint is used by at most one member in the whole map;
* a worker that is a member of a partition cannot be deleted; a partition that owns
  symbols cannot be deleted.

The store is thread-safe (one connection guarded by a lock).  One coordinator process
should own a database file: listeners (used for long-polls) only see changes made through
this object.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from coordinator.errors import CoordinatorError
from coordinator.models import (
    MAX_MEMBERS,
    MemberIn,
    MoveIn,
    PartitionIn,
    PartitionState,
    PartitionUpdate,
    SymbolsIn,
    Topology,
    WorkerIn,
    WorkerUpdate,
)

log = logging.getLogger("coordinator.store")

DEFAULT_DB_PATH = "./var/coordinator.db"
SCHEMA_VERSION = 1
# the live states of migrations and transfers (coordinator/migrations.py LIVE and TRANSFER_LIVE,
# which imports this module): a partition that one of them comes from or goes to is not deleted
_LIVE_MIGRATION = ("new", "prepared", "frozen", "imported", "activating", "switched", "aborting")
_LIVE_TRANSFER = ("new", "debited", "refunding")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id      TEXT PRIMARY KEY,
    address TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    partition_id     TEXT NOT NULL REFERENCES partitions(id) ON DELETE CASCADE,
    member_id        INTEGER NOT NULL CHECK (member_id BETWEEN 0 AND 2),
    worker_id        TEXT NOT NULL REFERENCES workers(id),
    ingress_endpoint TEXT NOT NULL UNIQUE,
    PRIMARY KEY (partition_id, member_id)
);
CREATE INDEX IF NOT EXISTS members_worker ON members(worker_id);
CREATE TABLE IF NOT EXISTS symbols (
    symbol       TEXT PRIMARY KEY,
    partition_id TEXT REFERENCES partitions(id),  -- NULL: unassigned, epoch kept
    epoch        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS symbols_partition ON symbols(partition_id);
"""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _parse(model: type[M], data: Any) -> M:
    """Validate ``data`` with ``model``; failures become ``validation_error`` (422)."""
    if isinstance(data, model):
        data = data.model_dump()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CoordinatorError(
            "validation_error", "invalid input", errors=clean_validation_errors(exc.errors())
        ) from None


def clean_validation_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to JSON-safe ``loc``/``msg``/``type``."""
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": e.get("type")} for e in errors
    ]


def _member_dicts(members: Iterable[Any]) -> list[dict[str, Any]]:
    return [m.model_dump() if isinstance(m, BaseModel) else dict(m) for m in members]


def aeron_endpoints(members: Iterable[Mapping[str, Any]]) -> str:
    """Aeron ``ingressEndpoints`` form: ``0=host:port,1=host:port,2=host:port``."""
    ordered = sorted(members, key=lambda m: m["member_id"])
    return ",".join(f"{m['member_id']}={m['ingress_endpoint']}" for m in ordered)


class CoordinatorStore:
    """The coordinator's versioned map, persisted in SQLite at ``path``."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_DB_PATH, *, synchronous: str = "FULL") -> None:
        """Open (creating if needed) the database at ``path``.

        ``synchronous``: SQLite ``PRAGMA synchronous``.  ``FULL`` (default) makes every
        committed change durable even across power loss; ``NORMAL`` (WAL) still survives
        process crashes/restarts and is faster (tests).
        """
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.path = os.fspath(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._listeners: list[Callable[[int], None]] = []
        self._routes_cache: dict[str, Any] | None = None
        self._closed = False
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    def _init_schema(self) -> None:
        conn = self._conn
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + _SCHEMA
            + "INSERT OR IGNORE INTO meta(key, value) VALUES ('version', 0);"
            + f"INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', {SCHEMA_VERSION});"
            + "COMMIT;"
        )
        conn.execute("BEGIN")
        try:
            schema = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
            if schema > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {schema} is newer than supported ({SCHEMA_VERSION})")
            self._version = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ lifecycle

    @property
    def version(self) -> int:
        """Global routing version: +1 on every committed change, persisted."""
        return self._version

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> CoordinatorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(new_version)`` after every committed change (from the writer's thread)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[int], None]) -> None:
        self._listeners.remove(callback)

    def health(self) -> dict[str, Any]:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()
        return {"status": "ok", "version": self._version}

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _mutate(self, fn: Callable[[sqlite3.Connection], tuple[bool, T]]) -> T:
        """Run ``fn`` in one write transaction; ``fn`` returns ``(changed, result)``.

        On ``changed`` the version is bumped by one inside the same transaction.  Any
        exception rolls everything back.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                changed, result = fn(conn)
                if changed:
                    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                    version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if changed:
                self._version = version
                self._routes_cache = None
        if changed:
            for listener in list(self._listeners):
                try:
                    listener(version)
                except Exception:  # a broken listener must not fail the write
                    log.exception("version listener failed")
        return result

    # ------------------------------------------------------------------ read helpers

    @staticmethod
    def _members(conn: sqlite3.Connection, partition_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT worker_id, member_id, ingress_endpoint FROM members WHERE partition_id = ? ORDER BY member_id",
            (partition_id,),
        ).fetchall()
        return [dict(r) for r in rows]

    @staticmethod
    def _partition_symbols(conn: sqlite3.Connection, partition_id: str) -> list[str]:
        rows = conn.execute(
            "SELECT symbol FROM symbols WHERE partition_id = ? ORDER BY symbol", (partition_id,)
        ).fetchall()
        return [r[0] for r in rows]

    def _partition_dict(self, conn: sqlite3.Connection, partition_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT id, state FROM partitions WHERE id = ?", (partition_id,))
        row = row.fetchone()
        if row is None:
            raise CoordinatorError(
                "partition_not_found",
                f"partition {partition_id!r} does not exist",
                partition=partition_id,
            )
        members = self._members(conn, partition_id)
        return {
            "id": row["id"],
            "state": row["state"],
            "members": members,
            "symbols": self._partition_symbols(conn, partition_id),
            "ingress_endpoints": aeron_endpoints(members),
        }

    @staticmethod
    def _worker_dict(conn: sqlite3.Connection, worker_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT id, address FROM workers WHERE id = ?", (worker_id,)).fetchone()
        if row is None:
            raise CoordinatorError("worker_not_found", f"worker {worker_id!r} does not exist", worker=worker_id)
        parts = conn.execute(
            "SELECT DISTINCT partition_id FROM members WHERE worker_id = ? ORDER BY partition_id",
            (worker_id,),
        ).fetchall()
        return {"id": row["id"], "address": row["address"], "partitions": [p[0] for p in parts]}

    @staticmethod
    def _owner(conn: sqlite3.Connection, symbol: str) -> tuple[str | None, int]:
        """(owning partition or None, last epoch; 0 if never assigned)."""
        row = conn.execute("SELECT partition_id, epoch FROM symbols WHERE symbol = ?", (symbol,)).fetchone()
        return (None, 0) if row is None else (row[0], row[1])

    @staticmethod
    def _require_partition(conn: sqlite3.Connection, partition_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT id, state FROM partitions WHERE id = ?", (partition_id,)).fetchone()
        if row is None:
            raise CoordinatorError(
                "partition_not_found",
                f"partition {partition_id!r} does not exist",
                partition=partition_id,
            )
        return row

    @staticmethod
    def _member_count(conn: sqlite3.Connection, partition_id: str) -> int:
        return conn.execute("SELECT COUNT(*) FROM members WHERE partition_id = ?", (partition_id,)).fetchone()[0]

    @staticmethod
    def _check_members(conn: sqlite3.Connection, partition_id: str, members: list[MemberIn]) -> None:
        for m in members:
            known = conn.execute("SELECT 1 FROM workers WHERE id = ?", (m.worker_id,)).fetchone()
            if known is None:
                raise CoordinatorError(
                    "worker_not_found",
                    f"member {m.member_id} of partition {partition_id!r} refers to unknown worker {m.worker_id!r}",
                    worker=m.worker_id,
                    partition=partition_id,
                    member_id=m.member_id,
                )
            other = conn.execute(
                "SELECT partition_id, member_id FROM members WHERE ingress_endpoint = ? AND partition_id != ?",
                (m.ingress_endpoint, partition_id),
            ).fetchone()
            if other is not None:
                raise CoordinatorError(
                    "endpoint_in_use",
                    f"ingress endpoint {m.ingress_endpoint} is already used by member "
                    f"{other[1]} of partition {other[0]!r}",
                    endpoint=m.ingress_endpoint,
                    partition=other[0],
                    member_id=other[1],
                )

    @staticmethod
    def _check_can_gain(partition_id: str, state: str, member_count: int, symbols: list[str]) -> None:
        if member_count == 0:
            raise CoordinatorError(
                "partition_has_no_members",
                f"partition {partition_id!r} has no members and cannot own symbols",
                partition=partition_id,
                symbols=symbols,
            )
        if state != PartitionState.ACTIVE:
            raise CoordinatorError(
                "partition_not_active",
                f"partition {partition_id!r} is {state}; only active partitions gain symbols",
                partition=partition_id,
                state=state,
                symbols=symbols,
            )

    @staticmethod
    def _set_owner(conn: sqlite3.Connection, symbol: str, partition_id: str, epoch: int) -> None:
        conn.execute(
            "INSERT INTO symbols(symbol, partition_id, epoch) VALUES (?, ?, ?) "
            "ON CONFLICT(symbol) DO UPDATE SET partition_id = excluded.partition_id, "
            "epoch = excluded.epoch",
            (symbol, partition_id, epoch),
        )

    @staticmethod
    def _insert_members(conn: sqlite3.Connection, partition_id: str, members: list[MemberIn]) -> None:
        conn.executemany(
            "INSERT INTO members(partition_id, member_id, worker_id, ingress_endpoint) VALUES (?, ?, ?, ?)",
            [(partition_id, m.member_id, m.worker_id, m.ingress_endpoint) for m in members],
        )

    # ------------------------------------------------------------------ workers

    def list_workers(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM workers ORDER BY id")]
            return [self._worker_dict(conn, i) for i in ids]

    def get_worker(self, worker_id: str) -> dict[str, Any]:
        with self._read() as conn:
            return self._worker_dict(conn, worker_id)

    def create_worker(self, worker_id: str, address: str) -> dict[str, Any]:
        w = _parse(WorkerIn, {"id": worker_id, "address": address})

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            if conn.execute("SELECT 1 FROM workers WHERE id = ?", (w.id,)).fetchone():
                raise CoordinatorError("duplicate_id", f"worker {w.id!r} already exists", kind="worker", id=w.id)
            conn.execute("INSERT INTO workers(id, address) VALUES (?, ?)", (w.id, w.address))
            return True, self._worker_dict(conn, w.id)

        return self._mutate(op)

    def update_worker(self, worker_id: str, address: str) -> dict[str, Any]:
        u = _parse(WorkerUpdate, {"address": address})

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            current = self._worker_dict(conn, worker_id)
            if current["address"] == u.address:
                return False, current
            conn.execute("UPDATE workers SET address = ? WHERE id = ?", (u.address, worker_id))
            return True, self._worker_dict(conn, worker_id)

        return self._mutate(op)

    def delete_worker(self, worker_id: str) -> None:
        def op(conn: sqlite3.Connection) -> tuple[bool, None]:
            current = self._worker_dict(conn, worker_id)
            if current["partitions"]:
                raise CoordinatorError(
                    "worker_in_use",
                    f"worker {worker_id!r} is still a member of partitions {', '.join(current['partitions'])}",
                    worker=worker_id,
                    partitions=current["partitions"],
                )
            conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
            return True, None

        self._mutate(op)

    # ------------------------------------------------------------------ partitions

    def list_partitions(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM partitions ORDER BY id")]
            return [self._partition_dict(conn, i) for i in ids]

    def get_partition(self, partition_id: str) -> dict[str, Any]:
        with self._read() as conn:
            return self._partition_dict(conn, partition_id)

    def create_partition(
        self,
        partition_id: str,
        *,
        members: Iterable[Mapping[str, Any] | MemberIn] = (),
        state: str = PartitionState.ACTIVE,
        symbols: Iterable[str] = (),
    ) -> dict[str, Any]:
        p = _parse(
            PartitionIn,
            {
                "id": partition_id,
                "state": state,
                "members": _member_dicts(members),
                "symbols": list(symbols),
            },
        )

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            if conn.execute("SELECT 1 FROM partitions WHERE id = ?", (p.id,)).fetchone():
                raise CoordinatorError(
                    "duplicate_id",
                    f"partition {p.id!r} already exists",
                    kind="partition",
                    id=p.id,
                )
            self._check_members(conn, p.id, p.members)
            owners = {s: self._owner(conn, s) for s in p.symbols}
            for s, (owner, _) in owners.items():
                if owner is not None:
                    raise CoordinatorError(
                        "symbol_already_assigned",
                        f"symbol {s!r} is already assigned to partition {owner!r}",
                        symbol=s,
                        partition=owner,
                    )
            if p.symbols:
                self._check_can_gain(p.id, p.state, len(p.members), p.symbols)
            conn.execute("INSERT INTO partitions(id, state) VALUES (?, ?)", (p.id, p.state.value))
            self._insert_members(conn, p.id, p.members)
            for s, (_, epoch) in owners.items():
                self._set_owner(conn, s, p.id, epoch + 1)
            return True, self._partition_dict(conn, p.id)

        return self._mutate(op)

    def update_partition(
        self,
        partition_id: str,
        *,
        state: str | None = None,
        members: Iterable[Mapping[str, Any] | MemberIn] | None = None,
    ) -> dict[str, Any]:
        """Change state and/or replace the member list (``None`` leaves a field unchanged)."""
        u = _parse(
            PartitionUpdate,
            {"state": state, "members": None if members is None else _member_dicts(members)},
        )

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            current = self._partition_dict(conn, partition_id)
            changed = False
            if u.members is not None:
                new = [m.model_dump() for m in sorted(u.members, key=lambda m: m.member_id)]
                if new != current["members"]:
                    self._check_members(conn, partition_id, u.members)
                    if not u.members and current["symbols"]:
                        raise CoordinatorError(
                            "partition_has_no_members",
                            f"partition {partition_id!r} owns symbols and must keep at least one member",
                            partition=partition_id,
                            symbols=current["symbols"],
                        )
                    conn.execute("DELETE FROM members WHERE partition_id = ?", (partition_id,))
                    self._insert_members(conn, partition_id, u.members)
                    changed = True
            if u.state is not None and u.state != current["state"]:
                conn.execute("UPDATE partitions SET state = ? WHERE id = ?", (u.state.value, partition_id))
                changed = True
            return changed, self._partition_dict(conn, partition_id) if changed else current

        return self._mutate(op)

    def delete_partition(self, partition_id: str) -> None:
        """Take the partition out of the map. Refused while it owns symbols or is the source or
        destination of a live migration or transfer. Whether it still holds funds is not the
        store's to know: the REST API asks the partition first when the coordinator runs a
        migration driver (coordinator/api.py; ``matchctl partition remove`` asks too)."""

        def op(conn: sqlite3.Connection) -> tuple[bool, None]:
            self._check_deletable(conn, partition_id)
            conn.execute("DELETE FROM partitions WHERE id = ?", (partition_id,))
            return True, None

        self._mutate(op)

    def check_deletable(self, partition_id: str) -> int:
        """What :meth:`delete_partition` refuses, checked without changing anything (raises the
        same errors); the partition's member count (0: nothing runs it, nothing to ask)."""
        with self._read() as conn:
            self._check_deletable(conn, partition_id)
            return self._member_count(conn, partition_id)

    def _check_deletable(self, conn: sqlite3.Connection, partition_id: str) -> None:
        self._require_partition(conn, partition_id)
        for code, key, ids, why in (
            ("partition_has_symbols", "symbols", self._partition_symbols(conn, partition_id),
             "still owns {n} symbol(s); move or unassign them first"),
            ("migration_in_progress", "migrations", self._live(conn, "migrations", _LIVE_MIGRATION, partition_id),
             "is the source or destination of live migration(s) {ids}; let them finish or abort them first"),
            # funds on their way out of it (a refund would come back to it) or into it
            ("transfer_in_progress", "transfers", self._live(conn, "transfers", _LIVE_TRANSFER, partition_id),
             "is the source or destination of unfinished transfer(s) {ids}; let them finish first "
             "(GET /v1/transfers/{{id}})"),
        ):
            if ids:
                message = f"partition {partition_id!r} " + why.format(n=len(ids), ids=", ".join(ids))
                raise CoordinatorError(code, message, partition=partition_id, **{key: ids})

    @staticmethod
    def _live(conn: sqlite3.Connection, table: str, states: tuple[str, ...], partition_id: str) -> list[str]:
        """Ids of the ``table`` rows (migrations, transfers) from or to the partition whose state
        is one of ``states`` (none where this database has no migration driver's tables)."""
        marks = ", ".join("?" * len(states))
        try:
            rows = conn.execute(f"SELECT id FROM {table} WHERE (source = ? OR dest = ?) AND state IN ({marks}) "
                                "ORDER BY id", (partition_id, partition_id, *states)).fetchall()
        except sqlite3.OperationalError:
            return []
        return [r[0] for r in rows]

    def placement(self, members: int = 3) -> dict[str, Any]:
        """Where a new partition's ``members`` go: the least-loaded workers (fewest members of
        any partition; ties by worker id), one member per worker."""
        if members < 1 or members > MAX_MEMBERS:
            raise CoordinatorError("validation_error", f"members must be 1..{MAX_MEMBERS}, not {members}",
                                   members=members)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT w.id, COUNT(m.worker_id) AS n FROM workers w LEFT JOIN members m ON m.worker_id = w.id "
                "GROUP BY w.id ORDER BY n, w.id").fetchall()
        if len(rows) < members:
            raise CoordinatorError(
                "not_enough_workers",
                f"{members} members need {members} workers (one member per worker); there are {len(rows)}",
                members=members, workers=len(rows))
        return {"workers": [r[0] for r in rows[:members]], "load": {r[0]: r[1] for r in rows}}

    # ------------------------------------------------------------------ symbols

    def assign_symbols(self, partition_id: str, symbols: Iterable[str]) -> dict[str, Any]:
        """Give unassigned ``symbols`` to ``partition_id`` (all or nothing).

        Symbols already owned by this partition are left alone (idempotent); a symbol owned
        by another partition is a ``symbol_already_assigned`` conflict: use
        :meth:`move_symbol`.
        """
        req = _parse(SymbolsIn, {"symbols": list(symbols)})

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            part = self._require_partition(conn, partition_id)
            new: list[tuple[str, int]] = []
            for s in req.symbols:
                owner, epoch = self._owner(conn, s)
                if owner == partition_id:
                    continue
                if owner is not None:
                    raise CoordinatorError(
                        "symbol_already_assigned",
                        f"symbol {s!r} is already assigned to partition {owner!r}; use a move to change its owner",
                        symbol=s,
                        partition=owner,
                    )
                new.append((s, epoch))
            if new:
                self._check_can_gain(
                    partition_id,
                    part["state"],
                    self._member_count(conn, partition_id),
                    [s for s, _ in new],
                )
                for s, epoch in new:
                    self._set_owner(conn, s, partition_id, epoch + 1)
            return bool(new), self._partition_dict(conn, partition_id)

        return self._mutate(op)

    def unassign_symbol(self, symbol: str, partition_id: str | None = None) -> None:
        """Remove ``symbol`` from the map (its epoch is remembered for a later re-assign).

        With ``partition_id`` the symbol must currently be owned by that partition.
        """

        def op(conn: sqlite3.Connection) -> tuple[bool, None]:
            if partition_id is not None:
                self._require_partition(conn, partition_id)
            owner, _ = self._owner(conn, symbol)
            if owner is None:
                raise CoordinatorError("symbol_not_found", f"symbol {symbol!r} is not assigned", symbol=symbol)
            if partition_id is not None and owner != partition_id:
                raise CoordinatorError(
                    "symbol_not_in_partition",
                    f"symbol {symbol!r} is owned by partition {owner!r}, not {partition_id!r}",
                    symbol=symbol,
                    partition=owner,
                )
            conn.execute("UPDATE symbols SET partition_id = NULL WHERE symbol = ?", (symbol,))
            return True, None

        self._mutate(op)

    def move_symbol(self, symbol: str, partition_id: str, *, expected_epoch: int | None = None) -> dict[str, Any]:
        """Change the owner of an assigned ``symbol``; bumps its epoch.

        Moving to the current owner is a no-op.  ``expected_epoch`` (optional) makes the
        move conditional on the symbol's current epoch (``epoch_mismatch`` otherwise).
        """
        req = _parse(MoveIn, {"partition": partition_id, "expected_epoch": expected_epoch})

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            owner, epoch = self._owner(conn, symbol)
            if owner is None:
                raise CoordinatorError("symbol_not_found", f"symbol {symbol!r} is not assigned", symbol=symbol)
            target = self._require_partition(conn, req.partition)
            if req.expected_epoch is not None and req.expected_epoch != epoch:
                raise CoordinatorError(
                    "epoch_mismatch",
                    f"symbol {symbol!r} is at epoch {epoch}, expected {req.expected_epoch}",
                    symbol=symbol,
                    epoch=epoch,
                    expected_epoch=req.expected_epoch,
                )
            if owner == req.partition:
                return False, {"symbol": symbol, "partition": owner, "epoch": epoch}
            self._check_can_gain(req.partition, target["state"], self._member_count(conn, req.partition), [symbol])
            self._set_owner(conn, symbol, req.partition, epoch + 1)
            return True, {
                "symbol": symbol,
                "partition": req.partition,
                "epoch": epoch + 1,
                "previous_partition": owner,
            }

        return self._mutate(op)

    def get_symbol(self, symbol: str) -> dict[str, Any]:
        with self._read() as conn:
            owner, epoch = self._owner(conn, symbol)
        if owner is None:
            raise CoordinatorError("symbol_not_found", f"symbol {symbol!r} is not assigned", symbol=symbol)
        return {"symbol": symbol, "partition": owner, "epoch": epoch}

    def list_symbols(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT symbol, partition_id, epoch FROM symbols WHERE partition_id IS NOT NULL ORDER BY symbol"
            ).fetchall()
        return [{"symbol": r[0], "partition": r[1], "epoch": r[2]} for r in rows]

    # ------------------------------------------------------------------ routes

    def routes(self) -> dict[str, Any]:
        """The routing table (cached per version; treat the result as read-only)::

        {"version": 7,
         "symbols": {"BTC-USD": {"partition": "p1", "epoch": 2,
                                 "ingress_endpoints": "0=h:9010,1=h:9011,2=h:9012"}},
         "partitions": {"p1": {"state": "active", "ingress_endpoints": "0=...",
                               "members": [...]}}}
        """
        with self._lock:
            cached = self._routes_cache
            if cached is not None:
                return cached
            with self._read() as conn:
                partitions: dict[str, Any] = {}
                for row in conn.execute("SELECT id, state FROM partitions ORDER BY id").fetchall():
                    members = self._members(conn, row["id"])
                    partitions[row["id"]] = {
                        "state": row["state"],
                        "ingress_endpoints": aeron_endpoints(members),
                        "members": members,
                    }
                symbols = {
                    r[0]: {
                        "partition": r[1],
                        "epoch": r[2],
                        "ingress_endpoints": partitions[r[1]]["ingress_endpoints"],
                    }
                    for r in conn.execute(
                        "SELECT symbol, partition_id, epoch FROM symbols WHERE partition_id IS NOT NULL ORDER BY symbol"
                    ).fetchall()
                }
                version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
            table = {"version": version, "symbols": symbols, "partitions": partitions}
            self._routes_cache = table
            return table

    def route(self, symbol: str) -> dict[str, Any]:
        """One symbol's route: ``{symbol, partition, epoch, ingress_endpoints, version}``."""
        table = self.routes()
        entry = table["symbols"].get(symbol)
        if entry is None:
            raise CoordinatorError("symbol_not_found", f"symbol {symbol!r} is not assigned", symbol=symbol)
        return {"symbol": symbol, **entry, "version": table["version"]}

    # ------------------------------------------------------------------ topology

    def export_topology(self) -> dict[str, Any]:
        """The whole map as a topology document (input of :meth:`load_topology`)."""
        with self._read() as conn:
            return self._export(conn)

    def _export(self, conn: sqlite3.Connection) -> dict[str, Any]:
        workers = [{"id": r[0], "address": r[1]} for r in conn.execute("SELECT id, address FROM workers ORDER BY id")]
        partitions = []
        for r in conn.execute("SELECT id, state FROM partitions ORDER BY id").fetchall():
            partitions.append(
                {
                    "id": r[0],
                    "state": r[1],
                    "members": self._members(conn, r[0]),
                    "symbols": self._partition_symbols(conn, r[0]),
                }
            )
        return {"workers": workers, "partitions": partitions}

    @staticmethod
    def _normalize(topo: Topology) -> dict[str, Any]:
        return {
            "workers": sorted(({"id": w.id, "address": w.address} for w in topo.workers), key=lambda w: w["id"]),
            "partitions": sorted(
                (
                    {
                        "id": p.id,
                        "state": p.state.value,
                        "members": [m.model_dump() for m in sorted(p.members, key=lambda m: m.member_id)],
                        "symbols": sorted(p.symbols),
                    }
                    for p in topo.partitions
                ),
                key=lambda p: p["id"],
            ),
        }

    def load_topology(self, topology: Mapping[str, Any] | Topology, *, keep_state: bool = False) -> dict[str, Any]:
        """Replace the whole map with ``topology`` atomically.

        ``topology`` is ``{"workers": [{id, address}], "partitions": [{id, state, members,
        symbols}]}``; it is the complete desired state: workers/partitions missing from it
        are deleted, symbols missing from it are unassigned, symbols whose partition differs
        from the current one get a new epoch.  The document is validated as a whole (same
        rules and error codes as the individual operations); applying a topology equal to
        the current one changes nothing and keeps the version.

        ``keep_state``: refuse (``topology_needs_migration``) a document that drops a partition
        with members or moves an assigned symbol to another partition: the map would change
        without the partitions, leaving resting orders and funds behind in the old partition
        (what ``POST /v1/topology`` does on a coordinator with a migration driver, unless
        forced). Bootstrap and ``--topology-mode replace`` apply the document as it is.

        Returns ``{"changed": bool, "version": int}``.
        """
        topo = _parse(Topology, topology)
        desired = self._normalize(topo)
        self._validate_topology(desired)

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            current = self._export(conn)
            if current == desired:
                return False, {"changed": False, "version": self._version}
            # Ownership changes: only an active partition may gain a symbol.
            owners = {s: p["id"] for p in current["partitions"] for s in p["symbols"]}
            moves: list[tuple[str, str]] = []
            for p in desired["partitions"]:
                gained = [s for s in p["symbols"] if owners.get(s) != p["id"]]
                if gained:
                    if p["state"] != PartitionState.ACTIVE:
                        raise CoordinatorError(
                            "partition_not_active",
                            f"partition {p['id']!r} is {p['state']}; only active partitions gain symbols",
                            partition=p["id"],
                            state=p["state"],
                            symbols=gained,
                        )
                    moves.extend((s, p["id"]) for s in gained)
            if keep_state:
                self._check_keeps_state(current, desired, owners, moves)
            # Workers first (members refer to them), then partitions, members, symbols,
            # then drop what is gone.
            want_workers = {w["id"] for w in desired["workers"]}
            want_parts = {p["id"] for p in desired["partitions"]}
            conn.executemany(
                "INSERT INTO workers(id, address) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET address = excluded.address",
                [(w["id"], w["address"]) for w in desired["workers"]],
            )
            conn.executemany(
                "INSERT INTO partitions(id, state) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET state = excluded.state",
                [(p["id"], p["state"]) for p in desired["partitions"]],
            )
            conn.execute("DELETE FROM members")
            conn.executemany(
                "INSERT INTO members(partition_id, member_id, worker_id, ingress_endpoint) VALUES (?, ?, ?, ?)",
                [
                    (p["id"], m["member_id"], m["worker_id"], m["ingress_endpoint"])
                    for p in desired["partitions"]
                    for m in p["members"]
                ],
            )
            wanted_symbols = {s for p in desired["partitions"] for s in p["symbols"]}
            for s in owners:
                if s not in wanted_symbols:
                    conn.execute("UPDATE symbols SET partition_id = NULL WHERE symbol = ?", (s,))
            for s, pid in moves:
                _, epoch = self._owner(conn, s)
                self._set_owner(conn, s, pid, epoch + 1)
            for p in current["partitions"]:
                if p["id"] not in want_parts:
                    conn.execute("DELETE FROM partitions WHERE id = ?", (p["id"],))
            for w in current["workers"]:
                if w["id"] not in want_workers:
                    conn.execute("DELETE FROM workers WHERE id = ?", (w["id"],))
            return True, {"changed": True}

        result = self._mutate(op)
        if result["changed"]:
            result["version"] = self._version
        return result

    @staticmethod
    def _check_keeps_state(current: dict[str, Any], desired: dict[str, Any], owners: dict[str, str],
                           moves: list[tuple[str, str]]) -> None:
        """Refuse a document that would leave orders and funds behind (``load_topology``'s
        ``keep_state``). Assigning new symbols and adding partitions and workers stay allowed,
        and so does dropping a partition without members (nothing runs it, it holds nothing)."""
        want = {p["id"] for p in desired["partitions"]}
        dropped = [p["id"] for p in current["partitions"] if p["id"] not in want and p["members"]]
        moved = {s: {"from": owners[s], "to": pid} for s, pid in moves if s in owners}
        if not dropped and not moved:
            return
        parts = []
        if dropped:
            parts.append(f"drops partition(s) {', '.join(dropped)} still in the map (retire one with "
                         "DELETE /v1/partitions/{id}, which refuses while it holds funds)")
        if moved:
            shown = ", ".join(f"{s} ({m['from']} -> {m['to']})" for s, m in sorted(moved.items()))
            parts.append(f"moves symbol(s) {shown} without their books and funds (move a symbol "
                         "with POST /v1/migrations)")
        raise CoordinatorError(
            "topology_needs_migration",
            f"the topology {' and '.join(parts)}; nothing was changed. ?force=true applies it as it is "
            "(bootstrap and disaster recovery only: what the old partitions hold stays there)",
            partitions=dropped, symbols=moved)

    @staticmethod
    def _validate_topology(t: dict[str, Any]) -> None:
        seen: set[str] = set()
        for w in t["workers"]:
            if w["id"] in seen:
                raise CoordinatorError(
                    "duplicate_id",
                    f"worker {w['id']!r} appears twice in the topology",
                    kind="worker",
                    id=w["id"],
                )
            seen.add(w["id"])
        workers = seen
        seen = set()
        endpoints: dict[str, tuple[str, int]] = {}
        owners: dict[str, str] = {}
        for p in t["partitions"]:
            if p["id"] in seen:
                raise CoordinatorError(
                    "duplicate_id",
                    f"partition {p['id']!r} appears twice in the topology",
                    kind="partition",
                    id=p["id"],
                )
            seen.add(p["id"])
            for m in p["members"]:
                if m["worker_id"] not in workers:
                    raise CoordinatorError(
                        "worker_not_found",
                        f"member {m['member_id']} of partition {p['id']!r} refers to unknown worker {m['worker_id']!r}",
                        worker=m["worker_id"],
                        partition=p["id"],
                        member_id=m["member_id"],
                    )
                other = endpoints.get(m["ingress_endpoint"])
                if other is not None:
                    raise CoordinatorError(
                        "endpoint_in_use",
                        f"ingress endpoint {m['ingress_endpoint']} is used by member "
                        f"{other[1]} of partition {other[0]!r} and member {m['member_id']} "
                        f"of partition {p['id']!r}",
                        endpoint=m["ingress_endpoint"],
                        partition=other[0],
                        member_id=other[1],
                    )
                endpoints[m["ingress_endpoint"]] = (p["id"], m["member_id"])
            for s in p["symbols"]:
                if s in owners:
                    raise CoordinatorError(
                        "symbol_already_assigned",
                        f"symbol {s!r} is assigned to both {owners[s]!r} and {p['id']!r}",
                        symbol=s,
                        partition=owners[s],
                        other_partition=p["id"],
                    )
                owners[s] = p["id"]
            if p["symbols"] and not p["members"]:
                raise CoordinatorError(
                    "partition_has_no_members",
                    f"partition {p['id']!r} has no members and cannot own symbols",
                    partition=p["id"],
                    symbols=p["symbols"],
                )


def load_topology(topology: Mapping[str, Any], db_path: str | os.PathLike[str] = DEFAULT_DB_PATH) -> dict[str, Any]:
    """Apply ``topology`` to the database at ``db_path`` (see
    :meth:`CoordinatorStore.load_topology`); for bootstrapping without a running server."""
    with CoordinatorStore(db_path) as store:
        return store.load_topology(topology)
