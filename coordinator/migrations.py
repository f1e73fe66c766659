"""The migration driver: moves a symbol's book between partitions, step by step, each step
persisted before it is sent (docs/migration.md).

    new -> prepared -> frozen -> imported -> activating (point of no return) -> switched -> done
              \\__________\\_________\\____ aborting -> aborted  (only before ``activating``)

Each step is an idempotent admin command in a partition's log (pyengine/service/migration.py),
so after a restart of the coordinator the driver repeats the step its record names and carries
on. Before ``activating`` a partition that refuses a step, or stays unreachable beyond
``step_timeout``, rolls the migration back (the source takes its own export back); from
``activating`` on, the driver only goes forward, retrying for as long as it takes: the source
never unfreezes by itself.

The driver talks to partitions through a ``Transport`` (the SDK's MatchClient in a running
system, see pyengine/ops/migrate.py; in-process services in unit tests), so this module needs no
JVM.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from coordinator.errors import CoordinatorError
from coordinator.store import CoordinatorStore

log = logging.getLogger("coordinator.migrations")

STATES = ("new", "prepared", "frozen", "imported", "activating", "switched", "done", "aborting", "aborted")
LIVE = ("new", "prepared", "frozen", "imported", "activating", "switched", "aborting")
NO_RETURN = ("activating", "switched", "done")
CHUNK = 48 * 1024  # default raw bytes per export chunk: its base64 fits one message with room to spare
# the bounds of --migration-chunk-bytes: the source answers at most 64 KiB a chunk
# (pyengine/service/migration.py MAX_CHUNK); below 1 KiB the round trips would dominate
MIN_CHUNK, MAX_CHUNK = 1024, 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS migrations (
    id        TEXT PRIMARY KEY,
    symbol    TEXT NOT NULL,
    source    TEXT NOT NULL,
    dest      TEXT NOT NULL,
    old_epoch INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    state     TEXT NOT NULL,
    abort     INTEGER NOT NULL DEFAULT 0,
    error     TEXT,
    info      TEXT NOT NULL DEFAULT '{}',
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_per_symbol ON migrations(symbol)
    WHERE state NOT IN ('done', 'aborted');
CREATE TABLE IF NOT EXISTS transfers (
    id      TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    asset   TEXT NOT NULL,
    amount  TEXT NOT NULL,
    source  TEXT NOT NULL,
    dest    TEXT NOT NULL,
    state   TEXT NOT NULL,
    error   TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""


class PartitionUnavailable(Exception):
    """The partition could not be reached (no leader, timeout): the step may be repeated."""


class Transport(Protocol):
    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        """Send one admin command; ("ok" | "error" | "moved", body). Raises PartitionUnavailable."""


class StepRefused(Exception):
    """A partition refused a step (an ERROR answer): deterministic, repeating it will not help."""


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["info"] = json.loads(d["info"])
    d["abort"] = bool(d["abort"])
    return d


class MigrationStore:
    """Migration and transfer records in the coordinator's database (same file, same lock)."""

    def __init__(self, store: CoordinatorStore) -> None:
        self.store = store
        with store._lock:
            store._conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def _tx(self, fn: Callable[[sqlite3.Connection], tuple[bool, Any]]) -> Any:
        return self.store._mutate(fn)

    def create(self, symbol: str, dest: str, mid: str | None = None) -> dict[str, Any]:
        """Record a new migration of ``symbol`` to ``dest``; refuses what cannot be done."""
        mid = mid or uuid.uuid4().hex[:16]
        if not _ID.match(mid):
            raise CoordinatorError("validation_error", "a migration id is 1..64 of [A-Za-z0-9_.:-]", id=mid)

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            prev = conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone()
            if prev is not None:
                if prev["symbol"] == symbol and prev["dest"] == dest:
                    return False, _row(prev)  # the same request again
                raise CoordinatorError("migration_id_conflict", f"migration {mid} exists for {prev['symbol']} -> "
                                       f"{prev['dest']}", id=mid)
            owner, epoch = self.store._owner(conn, symbol)
            if owner is None:
                raise CoordinatorError("symbol_not_found", f"symbol {symbol!r} is not assigned", symbol=symbol)
            target = self.store._require_partition(conn, dest)
            if owner == dest:
                raise CoordinatorError("migration_to_owner", f"{symbol} is already owned by {dest}",
                                       symbol=symbol, partition=dest)
            self.store._check_can_gain(dest, target["state"], self.store._member_count(conn, dest), [symbol])
            live = conn.execute("SELECT id FROM migrations WHERE symbol = ? AND state NOT IN ('done', 'aborted')",
                                (symbol,)).fetchone()
            if live is not None:
                raise CoordinatorError("migration_in_progress", f"{symbol} is already moving (migration {live[0]})",
                                       symbol=symbol, migration=live[0])
            now = time.time()
            conn.execute("INSERT INTO migrations(id, symbol, source, dest, old_epoch, epoch, state, created, "
                         "updated) VALUES (?, ?, ?, ?, ?, ?, 'new', ?, ?)",
                         (mid, symbol, owner, dest, epoch, epoch + 1, now, now))
            return False, _row(conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone())

        return self._tx(op)

    def get(self, mid: str) -> dict[str, Any]:
        with self.store._read() as conn:
            r = conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone()
        if r is None:
            raise CoordinatorError("migration_not_found", f"no migration {mid}", id=mid)
        return _row(r)

    def list(self) -> list[dict[str, Any]]:
        with self.store._read() as conn:
            return [_row(r) for r in conn.execute("SELECT * FROM migrations ORDER BY created, id").fetchall()]

    def live(self) -> list[dict[str, Any]]:
        return [m for m in self.list() if m["state"] in LIVE]

    def set(self, mid: str, state: str, *, error: str | None = None, **info: Any) -> dict[str, Any]:
        """Move ``mid`` to ``state``. The step to the point of no return checks, in the same
        transaction, that no abort was asked for meanwhile (then it goes to ``aborting``)."""
        assert state in STATES, state

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            nonlocal state
            r = conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone()
            if state == "activating" and r["abort"]:
                state = "aborting"
            merged = {**json.loads(r["info"]), **info}
            conn.execute("UPDATE migrations SET state = ?, error = COALESCE(?, error), info = ?, updated = ? "
                         "WHERE id = ?", (state, error, json.dumps(merged, sort_keys=True), time.time(), mid))
            return False, _row(conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone())

        return self._tx(op)

    def request_abort(self, mid: str) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            r = conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone()
            if r is None:
                raise CoordinatorError("migration_not_found", f"no migration {mid}", id=mid)
            if r["state"] in NO_RETURN:
                raise CoordinatorError("migration_past_no_return", f"migration {mid} is {r['state']}: past the "
                                       "point of no return (move the symbol back with a new migration)", id=mid)
            if r["state"] not in ("aborted",):
                conn.execute("UPDATE migrations SET abort = 1, updated = ? WHERE id = ?", (time.time(), mid))
            return False, _row(conn.execute("SELECT * FROM migrations WHERE id = ?", (mid,)).fetchone())

        return self._tx(op)

    def flip_route(self, symbol: str, partition: str, epoch: int) -> None:
        """The route names ``partition`` at ``epoch`` (idempotent; never lowers an epoch)."""

        def op(conn: sqlite3.Connection) -> tuple[bool, None]:
            owner, cur = self.store._owner(conn, symbol)
            if owner == partition and cur >= epoch:
                return False, None
            self.store._set_owner(conn, symbol, partition, max(epoch, cur))
            return True, None

        self._tx(op)


class Driver:
    """Runs migrations against the partitions; one thread per live migration."""

    def __init__(self, store: CoordinatorStore, transport: Transport, *, step_timeout: float = 30.0,
                 chunk_bytes: int = CHUNK,
                 on_change: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        if not MIN_CHUNK <= chunk_bytes <= MAX_CHUNK:
            raise ValueError(f"chunk_bytes must be in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_bytes}")
        self.migs = MigrationStore(store)
        self.transport = transport
        self.step_timeout = step_timeout
        self.chunk_bytes = chunk_bytes
        # the copy's progress per live migration, in memory only (a durable write per chunk would
        # lengthen the pause): what GET /v1/migrations/{id} shows as "progress"
        self._progress: dict[str, dict[str, Any]] = {}
        self.on_change = on_change
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.transfers = Transfers(self)

    # ---- public ----------------------------------------------------------------------------

    def start(self, symbol: str, dest: str, mid: str | None = None, *, wait: bool = False) -> dict[str, Any]:
        rec = self.migs.create(symbol, dest, mid)
        self._spawn(rec["id"])
        if wait:
            return self.wait(rec["id"])
        return rec

    def abort(self, mid: str) -> dict[str, Any]:
        rec = self.migs.request_abort(mid)
        self._spawn(mid)
        return rec

    def resume(self) -> list[str]:
        """After a restart: carry on with every live migration, and send the discards that an
        unreachable destination missed during an abort."""
        ids = [m["id"] for m in self.migs.live()]
        for mid in ids:
            self._spawn(mid)
        self.transfers.resume()
        for m in self.migs.list():
            if m["state"] == "aborted" and m["info"].get("discard_pending"):
                t = threading.Thread(target=self.retry_discard, args=(m["id"],), daemon=True,
                                     name=f"migration-discard-{m['id']}")
                t.start()
        return ids

    def retry_discard(self, mid: str) -> bool:
        """Discard an aborted migration's inert copy at its destination; True once done."""
        rec = self.migs.get(mid)
        try:
            self._call(rec, rec["dest"], {"op": "mig_discard", "id": mid})
        except StepRefused as exc:
            if "unknown migration" not in str(exc):
                log.warning("migration %s: destination discard still pending: %s", mid, exc)
                return False
        self.migs.set(mid, "aborted", discard_pending=False)
        return True

    def progress(self, mid: str) -> dict[str, Any] | None:
        """Where the copy of ``mid``'s export stands (this coordinator process's view): ``size``
        (bytes), ``fetched`` (from the source), ``staged`` (at the destination), ``chunks``
        (fetched so far), ``chunk_bytes``, ``imported``; None before the copy began (or after a
        restart until it goes on)."""
        p = self._progress.get(mid)
        return dict(p) if p is not None else None

    def describe(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A migration record with its copy progress (the REST API's answer)."""
        return {**rec, "progress": self.progress(rec["id"])}

    def wait(self, mid: str, timeout: float | None = None) -> dict[str, Any]:
        t = self._threads.get(mid)
        if t is not None:
            t.join(timeout)
        return self.migs.get(mid)

    def stop(self) -> None:
        self._stop.set()
        for t in list(self._threads.values()):
            t.join(5.0)

    def _spawn(self, mid: str) -> None:
        with self._lock:
            t = self._threads.get(mid)
            if t is not None and t.is_alive():
                return
            t = threading.Thread(target=self.run, args=(mid,), name=f"migration-{mid}", daemon=True)
            self._threads[mid] = t
            t.start()

    # ---- the steps -------------------------------------------------------------------------

    def run(self, mid: str) -> dict[str, Any]:
        """Drive ``mid`` until it is done or aborted (or the driver stops)."""
        rec = self.migs.get(mid)
        first = True  # the first step of this run may repeat one an earlier run sent
        while rec["state"] not in ("done", "aborted") and not self._stop.is_set():
            try:
                if rec["abort"] and rec["state"] not in NO_RETURN and rec["state"] != "aborting":
                    rec = self._set(mid, "aborting")
                    continue
                rec = self._step(rec, resumed=first)
                first = False
            except StepRefused as exc:
                if rec["state"] in NO_RETURN or rec["state"] == "aborting":
                    # forward only: a refusal here is a defect to look at, not a reason to undo
                    log.error("migration %s: %s refused in state %s: %s (retrying)", mid, rec["symbol"],
                              rec["state"], exc)
                    self._stop.wait(1.0)
                    rec = self.migs.get(mid)
                else:
                    log.warning("migration %s: refused (%s): rolling back", mid, exc)
                    rec = self._set(mid, "aborting", error=str(exc))
        return rec

    def _set(self, mid: str, state: str, **kw: Any) -> dict[str, Any]:
        rec = self.migs.set(mid, state, **kw)
        log.info("migration %s: %s %s -> %s: %s", mid, rec["symbol"], rec["source"], rec["dest"], state)
        if self.on_change is not None:
            try:
                self.on_change(self.migs.list())
            except Exception:  # noqa: BLE001 - reporting must never stop a migration
                log.exception("migration state report failed")
        return rec

    def _call(self, rec: dict[str, Any], partition: str, cmd: dict, *, forever: bool = False) -> dict:
        """One step at one partition, repeated while the partition is unreachable (it is
        idempotent); raises StepRefused on an ERROR answer, or after ``step_timeout`` when the
        migration may still roll back."""
        deadline = time.monotonic() + self.step_timeout
        delay = 0.05
        while True:
            try:
                status, body = self.transport.admin(partition, cmd)
            except PartitionUnavailable as exc:
                if self._stop.is_set():
                    raise
                if not forever and time.monotonic() > deadline:
                    raise StepRefused(f"{partition} unreachable for {self.step_timeout:.0f} s ({exc})") from exc
                log.warning("migration %s: %s unreachable (%s); retrying", rec["id"], partition, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            if status != "ok":
                raise StepRefused(f"{partition}: {body.get('error', body)}")
            return body

    def _step(self, rec: dict[str, Any], resumed: bool = True) -> dict[str, Any]:
        mid, st, sym = rec["id"], rec["state"], rec["symbol"]
        src, dst, epoch = rec["source"], rec["dest"], rec["epoch"]
        if st == "new":
            self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": sym, "source": src, "epoch": epoch})
            return self._set(mid, "prepared")
        if st == "prepared":
            body = self._call(rec, src, {"op": "mig_freeze", "id": mid, "symbol": sym, "dest": dst, "epoch": epoch})
            meta = body["meta"]
            return self._set(mid, "frozen", size=body["size"], sha256=body["sha256"], orders=meta["orders"],
                             accounts=meta["accounts"], finished=meta["finished"], holds=meta["holds"],
                             frozen_at=time.time())
        if st == "frozen":
            self._copy(rec, resumed)
            return self._set(mid, "imported")
        if st == "imported":
            # the point of no return, recorded before the destination is asked to take over
            return self._set(mid, "activating")
        if st == "activating":
            self._call(rec, dst, {"op": "mig_activate", "id": mid}, forever=True)
            self.migs.flip_route(sym, dst, epoch)
            frozen_at = rec["info"].get("frozen_at")
            pause = round((time.time() - frozen_at) * 1000, 1) if frozen_at else None
            return self._set(mid, "switched", pause_ms=pause)
        if st == "switched":
            self._call(rec, src, {"op": "mig_drop", "id": mid}, forever=True)
            return self._set(mid, "done")
        if st == "aborting":
            return self._abort(rec)
        raise AssertionError(st)

    def _copy(self, rec: dict[str, Any], resumed: bool) -> None:
        """Export chunks from the source into the destination's staging, then import. After a
        restart it resumes from what the destination has staged (its prepare answer says how
        much); straight after the freeze nothing is staged (one round trip less in the pause)."""
        mid, src, dst = rec["id"], rec["source"], rec["dest"]
        info = rec["info"]
        size, sha = info["size"], info["sha256"]
        state = {"state": "prepared", "staged": 0}
        if resumed:
            state = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"], "source": src,
                                          "epoch": rec["epoch"]})
        if state["state"] == "prepared":
            off = state["staged"]
            prog = self._progress[mid] = {"size": size, "fetched": off, "staged": off, "chunks": 0,
                                          "chunk_bytes": self.chunk_bytes, "imported": False}
            while off < size:
                body = self._call(rec, src, {"op": "mig_export_chunk", "id": mid, "offset": off,
                                             "length": self.chunk_bytes})
                data = body["data"]
                n = len(base64.b64decode(data))
                prog["fetched"], prog["chunks"] = off + n, prog["chunks"] + 1
                self._call(rec, dst, {"op": "mig_import_chunk", "id": mid, "offset": off, "data": data})
                off += n
                prog["staged"] = off
            self._call(rec, dst, {"op": "mig_import", "id": mid, "size": size, "sha256": sha})
            prog["imported"] = True

    def _abort(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Roll back: the source takes its export back (trading resumes there at once), the route
        stays at the source with the new epoch, the destination's inert copy goes."""
        mid, sym, src, dst = rec["id"], rec["symbol"], rec["source"], rec["dest"]
        # the source first: a freeze never outlives the decision to abort. Whether the freeze was
        # applied or not, mig_restore answers (unknown migration: it never froze)
        try:
            self._call(rec, src, {"op": "mig_restore", "id": mid}, forever=True)
            restored = True
        except StepRefused as exc:
            if "unknown migration" not in str(exc):
                raise
            restored = False  # never frozen: nothing to give back
        if restored:
            self.migs.flip_route(sym, src, rec["epoch"])
        pending = False
        try:
            self._call(rec, dst, {"op": "mig_discard", "id": mid})
        except StepRefused as exc:
            if "unknown migration" not in str(exc):
                # the destination is away: its copy stays inert (only this driver could activate
                # it, and it never will); ``resume`` tries the discard again
                pending = True
                log.warning("migration %s: destination discard pending: %s", mid, exc)
        return self._set(mid, "aborted", discard_pending=pending)


TRANSFER_LIVE = ("new", "debited", "refunding")


class Transfers:
    """Moves free funds of one account between partitions, exactly once by transfer id and
    resumable after any crash: the debit (``xfer_out``) and the credit (``xfer_in``) are each
    idempotent by the id at their partition, and the record here, written before each, says
    which one to send (again). Between them the funds are in transit (state ``debited``). A
    credit the destination refuses (e.g. it does not know the asset) is paid back at the source
    (``refunded``)."""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self.store = driver.migs.store

    def _get(self, conn: sqlite3.Connection, tid: str) -> dict[str, Any] | None:
        r = conn.execute("SELECT * FROM transfers WHERE id = ?", (tid,)).fetchone()
        return None if r is None else dict(r)

    def get(self, tid: str) -> dict[str, Any]:
        with self.store._read() as conn:
            r = self._get(conn, tid)
        if r is None:
            raise CoordinatorError("transfer_not_found", f"no transfer {tid}", id=tid)
        return r

    def list(self) -> list[dict[str, Any]]:
        with self.store._read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY created, id").fetchall()]

    def create(self, tid: str, account: str, asset: str, amount: str, source: str, dest: str) -> dict[str, Any]:
        if not _ID.match(tid) or len(tid) > 40:
            raise CoordinatorError("validation_error", "a transfer id is 1..40 of [A-Za-z0-9_.:-]", id=tid)
        if source == dest:
            raise CoordinatorError("validation_error", "a transfer needs two different partitions")
        req = {"account": account, "asset": asset, "amount": amount, "source": source, "dest": dest}

        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            prev = self._get(conn, tid)
            if prev is not None:
                if {k: prev[k] for k in req} != req:
                    raise CoordinatorError("transfer_id_conflict", f"transfer {tid} exists with other values", id=tid)
                return False, prev
            for p in (source, dest):
                self.store._require_partition(conn, p)
                if self.store._member_count(conn, p) == 0:
                    raise CoordinatorError("partition_has_no_members", f"partition {p!r} has no members", partition=p)
            now = time.time()
            conn.execute("INSERT INTO transfers(id, account, asset, amount, source, dest, state, created, "
                         "updated) VALUES (?, ?, ?, ?, ?, ?, 'new', ?, ?)",
                         (tid, account, asset, amount, source, dest, now, now))
            return False, self._get(conn, tid)

        return self.store._mutate(op)

    def _set(self, tid: str, state: str, error: str | None = None) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> tuple[bool, dict[str, Any]]:
            conn.execute("UPDATE transfers SET state = ?, error = COALESCE(?, error), updated = ? WHERE id = ?",
                         (state, error, time.time(), tid))
            return False, self._get(conn, tid)

        return self.store._mutate(op)

    def run(self, tid: str) -> dict[str, Any]:
        t = self.get(tid)
        leg = {"account": t["account"], "asset": t["asset"], "amount": t["amount"]}
        while t["state"] in TRANSFER_LIVE:
            try:
                if t["state"] == "new":
                    self.d._call(t, t["source"], {"op": "xfer_out", "id": tid, **leg})
                    t = self._set(tid, "debited")
                elif t["state"] == "debited":
                    try:
                        self.d._call(t, t["dest"], {"op": "xfer_in", "id": tid, **leg}, forever=True)
                        t = self._set(tid, "done")
                    except StepRefused as exc:
                        t = self._set(tid, "refunding", error=str(exc))
                else:  # refunding: the credit back at the source, exactly once by its own id
                    self.d._call(t, t["source"], {"op": "xfer_in", "id": tid + ".refund", **leg}, forever=True)
                    t = self._set(tid, "refunded")
            except StepRefused as exc:
                if t["state"] != "new":
                    raise
                t = self._set(tid, "refused", error=str(exc))  # nothing was debited
        return t

    def resume(self) -> None:
        for t in self.list():
            if t["state"] in TRANSFER_LIVE:
                threading.Thread(target=self.run, args=(t["id"],), daemon=True, name=f"transfer-{t['id']}").start()


def states_summary(migs: list[dict[str, Any]]) -> dict[str, tuple[int, float | None]]:
    """Count and oldest start per state, every state present (for the metrics gauge)."""
    out: dict[str, tuple[int, float | None]] = {s: (0, None) for s in STATES}
    for m in migs:
        n, oldest = out[m["state"]]
        out[m["state"]] = (n + 1, m["created"] if oldest is None else min(oldest, m["created"]))
    return out
