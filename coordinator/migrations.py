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
import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

from coordinator.errors import CoordinatorError
from coordinator.migration_timing import StepClock, one_line
from coordinator.store import _LIVE_MIGRATION, _LIVE_TRANSFER, CoordinatorStore

log = logging.getLogger("coordinator.migrations")

STATES = ("new", "prepared", "frozen", "imported", "activating", "switched", "done", "aborting", "aborted")
LIVE = ("new", "prepared", "frozen", "imported", "activating", "switched", "aborting")
NO_RETURN = ("activating", "switched", "done")
CHUNK = 48 * 1024  # default raw bytes per export chunk: its base64 fits one message with room to spare
# the bounds of --migration-chunk-bytes: the source answers at most 64 KiB a chunk
# (pyengine/service/migration.py MAX_CHUNK); below 1 KiB the round trips would dominate
MIN_CHUNK, MAX_CHUNK = 1024, 64 * 1024
# orders per piece of the pre-copy (each piece one log message at the source and one at the
# destination, ~2-3 ms of engine work at 2,000 orders); 0: the whole pre-copy as one message
PIECE_ORDERS = 2000
MAX_PIECE_ORDERS = 100_000  # pyengine/service/migration.py MAX_PIECE_ORDERS
# after each piece of the pre-copy and of the cleanup, a wait of this share of the time the piece
# took (percent), so that the copy takes a bounded share of the cores it shares with the source's
# other symbols; 0: pieces back to back. Off by default: at 100 the other symbol's p99 during a
# 100,000-order migration fell only because the window grew (~2.4x as long, ~3.5x the samples),
# its slowest pair per migration did not (bench/reports/migration_lowprio_side_by_side.md)
COPY_PACE_PCT = 0
MAX_COPY_PACE_PCT = 1000
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
    """How the driver reaches the partitions. A transport may also have ``submit(partition,
    command) -> Future`` of ``admin``'s answer (commands submitted one after another enter the
    partition's log in that order) and ``connect(partitions)``; with ``submit`` the driver
    pipelines the export's copy and sends the activation while it flips the route."""

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        """Send one admin command; ("ok" | "error" | "moved", body). Raises PartitionUnavailable."""


class StepRefused(Exception):
    """A partition refused a step (an ERROR answer): deterministic, repeating it will not help."""


class _Sequential(Exception):
    """The pipelined copy met something it does not sort out itself (a partition unreachable, a
    chunk out of order after a failover): the copy goes on one step at a time from what the
    destination has staged."""


PIPELINE = 8  # export chunks asked for at once (small commands; their answers come from the leader only)
PREFETCH = 8  # export chunks asked for right behind the freeze (its size not known yet: an offset past
# a small export is answered with an error, a read-only command that is ignored); after a pre-copy
# the freeze's export is what changed since, mostly one chunk: one is asked for


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
                 chunk_bytes: int = CHUNK, compress: bool = True, stage_delay_s: float = 0.0,
                 step_hold_s: float = 0.0, precopy: bool = True, piece_orders: int = PIECE_ORDERS,
                 piece_pause_s: float = 0.0, copy_pace_pct: int = COPY_PACE_PCT,
                 on_change: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        if not MIN_CHUNK <= chunk_bytes <= MAX_CHUNK:
            raise ValueError(f"chunk_bytes must be in [{MIN_CHUNK}, {MAX_CHUNK}], got {chunk_bytes}")
        self.migs = MigrationStore(store)
        self.transport = transport
        self.step_timeout = step_timeout
        self.chunk_bytes = chunk_bytes
        # a wait between the fetched export and its staging at the destination, for fault tests
        # that must act in that window (as Redis's key-load-delay does); 0 outside them
        if stage_delay_s < 0:
            raise ValueError(f"stage_delay_s must be >= 0, got {stage_delay_s}")
        self.stage_delay_s = stage_delay_s
        # a wait after every step, before the state it reached is recorded: for fault tests that
        # must act while a migration is in a given state with that state's step already applied
        # (a coordinator killed in ``imported``, which otherwise lasts one database write)
        if step_hold_s < 0:
            raise ValueError(f"step_hold_s must be >= 0, got {step_hold_s}")
        self.step_hold_s = step_hold_s
        # the export goes to the destination compressed (zlib, by this driver; the destination
        # checks the size and SHA-256 of what it decompresses against the source's)
        self.compress = compress
        # a pre-copy before the freeze (mig_precopy, mig_preimport): the freeze then exports only
        # what changed since, and the pause carries that instead of the whole book
        self.precopy = precopy
        # the pre-copy in pieces of about this many orders, each its own log message, so the
        # source's other symbols never wait behind a walk of the whole book; 0: one message
        if not 0 <= piece_orders <= MAX_PIECE_ORDERS:
            raise ValueError(f"piece_orders must be in [0, {MAX_PIECE_ORDERS}], got {piece_orders}")
        self.piece_orders = piece_orders
        # a wait between two pieces of the pre-copy (0: none, the next piece is asked for while
        # the last goes in): on a machine whose cores the partitions share, the copy's CPU is
        # then spread out instead of taken from the other symbols all at once
        if not 0 <= piece_pause_s <= 10:
            raise ValueError(f"piece_pause_s must be in [0, 10], got {piece_pause_s}")
        self.piece_pause_s = piece_pause_s
        if not 0 <= copy_pace_pct <= MAX_COPY_PACE_PCT:
            raise ValueError(f"copy_pace_pct must be in [0, {MAX_COPY_PACE_PCT}], got {copy_pace_pct}")
        self.copy_pace = copy_pace_pct / 100
        # the copy's progress per live migration, in memory only (a durable write per chunk would
        # lengthen the pause): what GET /v1/migrations/{id} shows as "progress"
        self._progress: dict[str, dict[str, Any]] = {}
        # each live migration's step timing in this run (migration_timing.py), and the export
        # chunks asked for behind its freeze
        self._clocks: dict[str, StepClock] = {}
        self._prefetched: dict[str, dict[int, Future]] = {}
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
        (bytes), ``fetched`` (from the source), ``staged`` (at the destination: of the compressed
        export, ``encoded`` bytes, when the driver compresses), ``chunks`` (fetched so far),
        ``chunk_bytes``, ``imported``; None before the copy began (or after a restart until it
        goes on)."""
        p = self._progress.get(mid)
        return dict(p) if p is not None else None

    def describe(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A migration record with its copy progress (the REST API's answer)."""
        return {**rec, "progress": self.progress(rec["id"])}

    def ask(self, partition: str, cmd: dict, timeout: float) -> dict:
        """One admin command at ``partition`` outside any migration (a question such as
        ``funds``), repeated while the partition is unreachable for at most ``timeout`` seconds:
        raises PartitionUnavailable after that, StepRefused on an ERROR answer."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        submit = getattr(self.transport, "submit", None)
        while True:
            try:
                if submit is None:
                    status, body = self.transport.admin(partition, cmd)
                else:  # waits no longer than the deadline (admin waits the transport's own timeout)
                    try:
                        status, body = submit(partition, cmd).result(max(0.0, deadline - time.monotonic()))
                    except FutureTimeout:
                        raise PartitionUnavailable(f"{partition}: no answer within {timeout:.0f} s") from None
            except PartitionUnavailable as exc:
                # a client to a partition just asked for the first time is not connected yet,
                # a partition between leaders answers nothing: both pass within the deadline
                if time.monotonic() + delay > deadline:
                    raise
                log.info("%s: %s unreachable (%s); asking again", cmd.get("op"), partition, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if status != "ok":
                raise StepRefused(f"{partition}: {body.get('error', body)}")
            return body

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
        self._clocks[mid] = StepClock()  # this run's step timing (migration_timing.py)
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
        self._prefetched.pop(mid, None)
        return rec

    def _set(self, mid: str, state: str, **kw: Any) -> dict[str, Any]:
        if self.step_hold_s:
            log.warning("migration %s: holding %.1f s before recording %s (--migration-step-hold-ms: for fault "
                        "tests only)", mid, self.step_hold_s, state)
            self._stop.wait(self.step_hold_s)
        clock = self._clocks.get(mid)
        if clock is not None and clock.steps:
            kw["timing"] = clock.to_json()  # the steps so far, in the write the state change makes anyway
        t = time.monotonic()
        rec = self.migs.set(mid, state, **kw)
        log.info("migration %s: %s %s -> %s: %s", mid, rec["symbol"], rec["source"], rec["dest"], state)
        if self.on_change is not None:
            try:
                self.on_change(self.migs.list())
            except Exception:  # noqa: BLE001 - reporting must never stop a migration
                log.exception("migration state report failed")
        if clock is not None:
            clock.add(f"record {state}", t, time.monotonic())
        return rec

    def _timed(self, rec: dict[str, Any], name: str) -> Any:
        clock = self._clocks.get(rec["id"])
        return clock.step(name) if clock is not None else contextlib.nullcontext()

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

    def _submit(self, rec: dict[str, Any], partition: str, cmd: dict, name: str | None) -> Future | None:
        """Send ``cmd`` without waiting when the transport can (None otherwise); its answer's
        arrival is timed as step ``name`` (if given)."""
        submit = getattr(self.transport, "submit", None)
        if submit is None:
            return None
        t = time.monotonic()
        fut: Future = submit(partition, cmd)
        clock = self._clocks.get(rec["id"])
        if clock is not None and name is not None:
            fut.add_done_callback(lambda _f: clock.add(name, t, time.monotonic()))
        return fut

    def _answer(self, fut: Future, partition: str) -> dict:
        """The body of a submitted command's OK answer; raises _Sequential otherwise."""
        try:
            status, body = fut.result(self.step_timeout)
        except Exception as exc:  # noqa: BLE001 - unreachable, timed out: the careful path sorts it out
            raise _Sequential(f"{partition}: {exc}") from exc
        if status != "ok":
            raise _Sequential(f"{partition}: {body.get('error', body)}")
        return body

    def _step(self, rec: dict[str, Any], resumed: bool = True) -> dict[str, Any]:
        mid, st, sym = rec["id"], rec["state"], rec["symbol"]
        src, dst, epoch = rec["source"], rec["dest"], rec["epoch"]
        if st == "new":
            connect = getattr(self.transport, "connect", None)
            if connect is not None:  # both sessions up before the freeze: none is set up in the pause
                with self._timed(rec, "connect"):
                    connect([dst, src])
            with self._timed(rec, "prepare"):
                self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": sym, "source": src, "epoch": epoch})
            return self._set(mid, "prepared")
        if st == "prepared":
            precopied = self.precopy and self._precopy(rec)
            if precopied and self.migs.get(mid)["abort"]:
                # aborted during the pre-copy: no freeze (the source gives the pre-copy up)
                return self._set(mid, "aborting")
            freeze = {"op": "mig_freeze", "id": mid, "symbol": sym, "dest": dst, "epoch": epoch}
            with self._timed(rec, "freeze"):
                fut = self._submit(rec, src, freeze, None)
                if fut is not None:
                    # the first chunks right behind the freeze in the source's log (read only; an
                    # offset past a small export is answered with an error, and ignored)
                    self._prefetched[mid] = {
                        off: self._submit(rec, src, {"op": "mig_export_chunk", "id": mid, "offset": off,
                                                     "length": self.chunk_bytes}, f"export@{off}")
                        for off in range(0, (1 if precopied else PREFETCH) * self.chunk_bytes, self.chunk_bytes)}
                try:
                    if fut is None:
                        raise _Sequential("no pipelining")
                    body = self._answer(fut, src)
                except _Sequential:
                    body = self._call(rec, src, freeze)
            meta = body["meta"]
            return self._set(mid, "frozen", size=body["size"], sha256=body["sha256"], orders=meta["orders"],
                             accounts=meta["accounts"], finished=meta["finished"], holds=meta["holds"],
                             frozen_at=time.time(), encoding="zlib" if self.compress else None)
        if st == "frozen":
            self._copy(rec, resumed)
            return self._set(mid, "imported")
        if st == "imported":
            # the point of no return, recorded before the destination is asked to take over
            return self._set(mid, "activating")
        if st == "activating":
            activate = {"op": "mig_activate", "id": mid}
            fut = self._submit(rec, dst, activate, "activate")
            # the route flips while the activation is on its way (the point of no return is
            # recorded): a client sent to the destination before it applied the activation is
            # answered "not yet" and tries again moments later (RoutedClient)
            with self._timed(rec, "route flip"):
                self.migs.flip_route(sym, dst, epoch)
            try:
                if fut is None:
                    raise _Sequential("no pipelining")
                self._answer(fut, dst)
            except _Sequential:
                with self._timed(rec, "activate"):
                    self._call(rec, dst, activate, forever=True)
            frozen_at = rec["info"].get("frozen_at")
            pause = round((time.time() - frozen_at) * 1000, 1) if frozen_at else None
            rec = self._set(mid, "switched", pause_ms=pause)
            timing = rec["info"].get("timing") or {}
            log.info("migration %s: %s %s -> %s switched: %s orders, steps (ms from the freeze sent): %s", mid,
                     sym, src, dst, rec["info"].get("orders"), one_line(timing))
            return rec
        if st == "switched":
            with self._timed(rec, "drop"):
                body = self._call(rec, src, {"op": "mig_drop", "id": mid}, forever=True)
            self._cleanup(rec, body)
            return self._set(mid, "done")
        if st == "aborting":
            return self._abort(rec)
        raise AssertionError(st)

    def _cleanup(self, rec: dict[str, Any], body: dict) -> None:
        """After the drop: the book the source's freeze took out whole leaves its indexes in
        pieces of ``piece_orders`` (``mig_cleanup``, each its own log message, paced like the
        pre-copy's pieces), so no message of the source walks the whole book. Idempotent by
        ``upto``: after a restart the drop's answer says how far it is. Not needed for
        correctness (every reader skips those orders): refused (an older member) or stopped,
        the migration ends as before."""
        cl = body.get("cleanup")
        if not cl:
            return
        mid, src = rec["id"], rec["source"]
        step = self.piece_orders or PIECE_ORDERS
        done = cl["done"]
        gap = self.piece_pause_s
        with self._timed(rec, "cleanup"):
            while done < cl["orders"] and not self._stop.is_set():
                if gap:
                    self._stop.wait(gap)
                t = time.monotonic()
                try:
                    ans = self._call(rec, src, {"op": "mig_cleanup", "id": mid, "upto": done + step}, forever=True)
                except StepRefused as exc:
                    log.warning("migration %s: no cleanup at %s (%s): its readers skip the moved orders", mid,
                                src, exc)
                    return
                done = ans["cleanup"]["done"]
                gap = self._gap(time.monotonic() - t)

    def _gap(self, took: float) -> float:
        """The wait before the next piece of a copy or cleanup whose last piece took ``took`` s."""
        return max(self.piece_pause_s, self.copy_pace * took)

    @property
    def _paced(self) -> bool:
        return bool(self.piece_pause_s or self.copy_pace)

    def _precopy(self, rec: dict[str, Any]) -> bool:
        """Before the freeze, while the symbol still trades at the source: the source's pre-copy
        (``mig_precopy``, an export that changes nothing) copied to the destination as the export
        is after a freeze (fetched, compressed, staged) and built there beside its engine
        (``mig_preimport``). Each command is idempotent: after a restart the source answers the
        same pre-copy and the destination says whether it has it. True when the freeze will
        export only what changed since; False (a source that refuses a pre-copy) makes the freeze
        export the whole book as without one."""
        if self.piece_orders:
            return self._precopy_pieces(rec)
        mid, src, dst = rec["id"], rec["source"], rec["dest"]
        try:
            with self._timed(rec, "precopy"):
                pre = self._call(rec, src, {"op": "mig_precopy", "id": mid, "symbol": rec["symbol"], "dest": dst,
                                            "epoch": rec["epoch"]})
        except StepRefused as exc:
            log.warning("migration %s: no pre-copy (%s): the freeze exports the whole book", mid, exc)
            return False
        if pre["state"] != "precopied":
            return pre["state"] == "frozen"  # frozen by an earlier run: the freeze answers again
        have = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"], "source": src,
                                     "epoch": rec["epoch"]})
        if have["state"] != "prepared" or (have.get("precopy") or {}).get("sha256") == pre["sha256"]:
            return True
        imp = {"op": "mig_preimport", "id": mid, "size": pre["size"], "sha256": pre["sha256"]}
        self._transfer(rec, have["staged"], pre["size"], "zlib" if self.compress else None, imp, "precopy")
        self._progress.pop(mid, None)  # the progress shown from here is the freeze's export's
        return True

    def _precopy_pieces(self, rec: dict[str, Any]) -> bool:
        """The pre-copy in pieces: piece after piece from the source (``mig_precopy`` with
        ``piece``), each added at the destination (``mig_preimport`` with ``piece``, its bytes
        compressed inline, or staged in chunks when larger), the next piece asked for while the
        destination takes the last. Every command is idempotent by migration id and piece: after
        a restart the source answers the pieces it took and the destination says how many it
        has. Returns as ``_precopy`` does; an abort asked for stops it between two pieces."""
        mid, src, dst = rec["id"], rec["source"], rec["dest"]
        ask = {"op": "mig_precopy", "id": mid, "symbol": rec["symbol"], "dest": dst, "epoch": rec["epoch"],
               "max_orders": self.piece_orders}
        began = time.monotonic()  # piece k asked for: its time, taken and built, sets the wait after it
        try:
            with self._timed(rec, "precopy piece@0"):
                pre = self._call(rec, src, {**ask, "piece": 0})
        except StepRefused as exc:
            log.warning("migration %s: no pre-copy in pieces (%s): the freeze exports the whole book", mid, exc)
            return False
        if pre["state"] != "precopied":
            return pre["state"] == "frozen"
        have = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"], "source": src,
                                     "epoch": rec["epoch"]})
        if have["state"] != "prepared":
            return True
        got = len((have.get("precopy") or {}).get("pieces", []))
        # ``size``: the whole pre-copy's bytes, known once its last piece is fetched (None before);
        # ``chunks``: the pieces fetched so far, ``last``: the last one among them
        prog = self._progress[mid] = {"size": None, "fetched": 0, "staged": 0, "chunks": 0, "pieces": 0,
                                      "last": False, "chunk_bytes": self.chunk_bytes, "imported": False,
                                      "part": "precopy"}
        k = 0
        while True:
            nxt = None
            if not pre["last"] and not self._paced:  # the next piece taken while this one goes in
                nxt = self._submit(rec, src, {**ask, "piece": k + 1}, f"precopy piece@{k + 1}")
            if k >= got:
                self._piece_in(rec, pre, k, prog)
            prog["pieces"] = k + 1
            if pre["last"] or self.migs.get(mid)["abort"]:
                if nxt is not None:
                    with contextlib.suppress(Exception):  # its answer is of no use now
                        nxt.result(self.step_timeout)
                prog["imported"] = pre["last"]
                return True
            k += 1
            try:
                if nxt is None:
                    raise _Sequential("no pipelining")
                pre = self._answer(nxt, src)
            except _Sequential:
                # paced: the wait goes before the source takes the next piece, so that its
                # take and its build both come after it
                gap = self._gap(time.monotonic() - began)
                if gap:
                    self._stop.wait(gap)
                began = time.monotonic()
                with self._timed(rec, f"precopy piece@{k}"):
                    pre = self._call(rec, src, {**ask, "piece": k})
            if pre["state"] != "precopied" or pre.get("piece") != k:
                raise StepRefused(f"{src}: pre-copy piece {k} answered {pre.get('state')} piece {pre.get('piece')}")

    def _piece_in(self, rec: dict[str, Any], pre: dict, k: int, prog: dict[str, Any]) -> None:
        """Piece ``k`` (the source's answer ``pre``) to the destination."""
        mid, dst = rec["id"], rec["dest"]
        size = pre["size"]
        if "data" in pre:
            raw = base64.b64decode(pre["data"])
        else:  # larger than one answer: fetched in chunks
            raw = self._fetch_piece(rec, size, k)
        prog["fetched"] += size
        prog["chunks"] += 1
        if pre["last"]:
            prog["last"] = True
            prog["size"] = prog["fetched"]
        if self.stage_delay_s:
            log.warning("migration %s: pre-copy piece %d fetched; staging it in %.1f s "
                        "(--migration-stage-delay-ms: for fault tests only)", mid, k, self.stage_delay_s)
            self._stop.wait(self.stage_delay_s)
        imp = {"op": "mig_preimport", "id": mid, "piece": k, "size": size, "sha256": pre["sha256"]}
        stream = raw
        if self.compress:
            stream = zlib.compress(raw, 1)
            imp["encoding"] = "zlib"
        if len(stream) <= self.chunk_bytes:
            with self._timed(rec, f"preimport@{k}"):
                self._call(rec, dst, {**imp, "data": base64.b64encode(stream).decode()})
        else:
            for o in range(0, len(stream), self.chunk_bytes):
                with self._timed(rec, f"precopy import@{o}"):
                    self._call(rec, dst, {"op": "mig_import_chunk", "id": mid, "offset": o,
                                          "data": base64.b64encode(stream[o:o + self.chunk_bytes]).decode()})
            with self._timed(rec, f"preimport@{k}"):
                self._call(rec, dst, imp)
        prog["staged"] += len(stream)

    def _fetch_piece(self, rec: dict[str, Any], size: int, k: int) -> bytes:
        mid, src = rec["id"], rec["source"]
        parts: list[bytes] = []
        for o in range(0, size, self.chunk_bytes):
            with self._timed(rec, f"precopy export@{o}"):
                body = self._call(rec, src, {"op": "mig_export_chunk", "id": mid, "offset": o,
                                             "length": self.chunk_bytes, "part": "precopy", "piece": k})
            parts.append(base64.b64decode(body["data"]))
        raw = b"".join(parts)
        if len(raw) != size:
            raise StepRefused(f"{src}: pre-copy piece {k} came as {len(raw)} bytes, not {size}")
        return raw

    def _copy(self, rec: dict[str, Any], resumed: bool) -> None:
        """Fetch the export from the source, compress it (when the record says ``encoding``
        zlib), stage it at the destination, then import. After a restart it resumes staging
        from what the destination has staged (its prepare answer says how much; the same export
        compresses to the same bytes); straight after the freeze nothing is staged (one round
        trip less in the pause).

        With a transport that can ``submit``, each part is pipelined: up to ``PIPELINE`` export
        chunks are asked for at once, the staged chunks go one behind the other and the import
        right behind the last, without waiting for their answers. Every chunk is still a
        command in a partition's log, applied in order (one session), idempotent by offset.
        Anything out of the ordinary (a partition away, a failover reordering resends, staged
        bytes that do not add up) makes it go on one step at a time from what the destination
        has staged."""
        mid, src, dst = rec["id"], rec["source"], rec["dest"]
        info = rec["info"]
        size, sha, encoding = info["size"], info["sha256"], info.get("encoding")
        state = {"state": "prepared", "staged": 0}
        if resumed:
            state = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"], "source": src,
                                          "epoch": rec["epoch"]})
        if state["state"] != "prepared":
            return
        self._transfer(rec, state["staged"], size, encoding, {"op": "mig_import", "id": mid, "size": size,
                                                              "sha256": sha}, None)

    def _transfer(self, rec: dict[str, Any], staged: int, size: int, encoding: str | None, imp: dict,
                  part: str | None) -> None:
        """The source's export (``part`` "precopy": its pre-copy) of ``size`` bytes fetched,
        compressed (``encoding`` zlib), staged at the destination from ``staged`` on, and
        ``imp`` (mig_import, mig_preimport) sent right behind."""
        mid, src, dst = rec["id"], rec["source"], rec["dest"]
        prog = self._progress[mid] = {"size": size, "fetched": 0, "staged": staged, "chunks": 0,
                                      "chunk_bytes": self.chunk_bytes, "imported": False, "part": part or "export"}
        raw = self._fetch(rec, size, prog, part)
        if self.stage_delay_s:
            log.warning("migration %s: %s fetched; staging it in %.1f s (--migration-stage-delay-ms: "
                        "for fault tests only, it lengthens the pause)", mid, part or "export", self.stage_delay_s)
            self._stop.wait(self.stage_delay_s)
        if encoding == "zlib":
            with self._timed(rec, "compress" if part is None else f"{part} compress"):
                # zlib level 1: a few ms for a 10,000-order export, 5-10x fewer bytes through the
                # destination's log (base64 in JSON, replicated to every member)
                stream = zlib.compress(raw, 1)
            prog["encoded"] = len(stream)
        else:
            stream = raw  # a record from before the encoding existed
        if encoding:
            imp = {**imp, "encoding": encoding}
        off = staged
        if getattr(self.transport, "submit", None) is not None:
            try:
                self._stage_pipelined(rec, stream, off, imp, prog, part)
                prog["imported"] = True
                return
            except _Sequential as exc:
                log.warning("migration %s: pipelined staging stopped (%s): going on one step at a time", mid, exc)
                off = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"],
                                            "source": src, "epoch": rec["epoch"]})["staged"]
        for attempt in range(3):
            try:
                while off < len(stream):
                    piece = stream[off:off + self.chunk_bytes]
                    with self._timed(rec, f"{_prefix(part)}import@{off}"):
                        self._call(rec, dst, {"op": "mig_import_chunk", "id": mid, "offset": off,
                                              "data": base64.b64encode(piece).decode()})
                    off += len(piece)
                    prog["staged"] = off
                with self._timed(rec, imp["op"][4:]):
                    self._call(rec, dst, imp)
                break
            except StepRefused as exc:
                # the staging moved under this copy (e.g. a late command of a pipelined staging
                # after a failover: an import that reset it, a chunk ahead): go on from what is
                # staged now; anything else (an import refused) rolls back
                if not any(s in str(exc) for s in ("send it again", "expected at most")) or attempt == 2:
                    raise
                off = self._call(rec, dst, {"op": "mig_prepare", "id": mid, "symbol": rec["symbol"],
                                            "source": src, "epoch": rec["epoch"]})["staged"]
        prog["imported"] = True

    def _fetch(self, rec: dict[str, Any], size: int, prog: dict[str, Any], part: str | None = None) -> bytes:
        """The source's whole export (the chunks asked for behind the freeze used if they fit),
        or its pre-copy (``part`` "precopy")."""
        mid, src = rec["id"], rec["source"]
        prefetched = self._prefetched.pop(mid, {}) if part is None else {}
        offsets = list(range(0, size, self.chunk_bytes))
        parts: list[bytes] = []
        pre = _prefix(part)

        def export(o: int) -> dict:
            cmd = {"op": "mig_export_chunk", "id": mid, "offset": o, "length": self.chunk_bytes}
            if part is not None:
                cmd["part"] = part
            return cmd

        asked: dict[int, Future | None] = {}

        def ask(i: int) -> None:
            if i < len(offsets):
                o = offsets[i]
                asked[o] = prefetched.pop(o, None) or self._submit(rec, src, export(o), f"{pre}export@{o}")

        for i in range(PIPELINE):
            ask(i)
        for i, o in enumerate(offsets):
            fut = asked.pop(o, None)
            body = None
            if fut is not None:
                try:
                    body = self._answer(fut, src)
                except _Sequential as exc:
                    # asked for behind a freeze that was lost and sent again, or the source away:
                    # this chunk one step at a time
                    log.info("migration %s: export chunk at %d asked again (%s)", mid, o, exc)
            ask(i + PIPELINE)
            if body is None:
                with self._timed(rec, f"{pre}export@{o}"):
                    body = self._call(rec, src, export(o))
            data = base64.b64decode(body["data"])
            if body.get("offset") != o or len(data) != min(self.chunk_bytes, size - o):
                raise StepRefused(f"{src}: export chunk at {o} came as {len(data)} bytes at {body.get('offset')}")
            parts.append(data)
            prog["fetched"], prog["chunks"] = o + len(data), prog["chunks"] + 1
        return b"".join(parts)

    def _stage_pipelined(self, rec: dict[str, Any], stream: bytes, off: int, imp: dict,
                         prog: dict[str, Any], part: str | None = None) -> None:
        """Every chunk of ``stream`` from ``off`` to the destination, the import right behind
        the last, then their answers."""
        mid, dst = rec["id"], rec["dest"]
        sent: list[tuple[int, Future | None]] = []
        for o in range(off, len(stream), self.chunk_bytes):
            cmd = {"op": "mig_import_chunk", "id": mid, "offset": o,
                   "data": base64.b64encode(stream[o:o + self.chunk_bytes]).decode()}
            sent.append((min(o + self.chunk_bytes, len(stream)),
                         self._submit(rec, dst, cmd, f"{_prefix(part)}import@{o}")))
        done = self._submit(rec, dst, imp, imp["op"][4:])
        for end, fut in sent:
            assert fut is not None
            self._answer(fut, dst)
            prog["staged"] = max(prog["staged"], end)
        assert done is not None
        try:
            status, body = done.result(self.step_timeout)
        except Exception as exc:  # noqa: BLE001 - unreachable: the careful path repeats it
            raise _Sequential(f"{dst}: {exc}") from exc
        if status != "ok":
            if "send it again" in str(body.get("error")):
                raise _Sequential(f"{dst}: {body.get('error')}")
            raise StepRefused(f"{dst}: {body.get('error', body)}")  # e.g. an id collision: roll back

    def _abort(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Roll back: the source takes its export back (trading resumes there at once), the route
        stays at the source with the new epoch, the destination's inert copy goes."""
        mid, sym, src, dst = rec["id"], rec["symbol"], rec["source"], rec["dest"]
        # the source first: a freeze never outlives the decision to abort. Whether the freeze was
        # applied or not, mig_restore answers (unknown migration: it never froze)
        try:
            # "released": a pre-copy given up before any freeze (the symbol never stopped)
            restored = self._call(rec, src, {"op": "mig_restore", "id": mid}, forever=True)["state"] == "restored"
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


def _prefix(part: str | None) -> str:
    """The step timing's name prefix of a copy's commands ("precopy " for the pre-copy's)."""
    return "" if part is None else f"{part} "


TRANSFER_LIVE = ("new", "debited", "refunding")
# the store refuses to delete a partition in a live migration or transfer by these states
assert LIVE == _LIVE_MIGRATION and TRANSFER_LIVE == _LIVE_TRANSFER


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
