"""Symbol migration and cross-partition transfers as log commands (docs/migration.md).

Every step is an admin command in the log of the partition it changes, so every member applies
it at the same position and a new leader carries on where the old one stopped. Every step is
idempotent by migration id: a repeat answers what the first one did and changes nothing.

Source:       [mig_precopy (an export while the symbol trades on) -> mig_export_chunk*]
              -> mig_freeze (export at this position, after a pre-copy only what changed since;
              the symbol's commands answer MOVED with ``moving``: no effect, retry)
              -> mig_export_chunk* -> mig_drop, or mig_restore (abort: the source takes the
              symbol back from its own export; after a pre-copy only, it forgets the pre-copy).
              After a freeze that followed a pre-copy in pieces: mig_cleanup* (the detached
              book's orders out of the indexes, a bounded number per message), from the freeze
              on, paced by the coordinator after mig_drop.
Destination:  mig_prepare (inert: MOVED "not yet") -> [mig_import_chunk* -> mig_preimport (the
              pre-copy built beside the engine)] -> mig_import_chunk* -> mig_import (the book is
              in the engine, still inert) -> mig_activate (the new owner, new epoch), or
              mig_discard (abort before activation: the inert copy goes).
Transfers:    xfer_out (debit, exactly once by transfer id) at one partition, xfer_in (credit)
              at the other; the coordinator records the transfer in between (in transit).

The fence is applied when a command is applied, not when it arrives: after a failover the new
leader answers exactly as the old one would have.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import logging
import time
import zlib
from collections.abc import Container
from typing import Any

import orjson

from pyengine.engine.migration import (
    DELTA_VERSION,
    Baseline,
    MigrationError,
    baseline_of,
    build_shadow,
    drop_symbol,
    export_delta,
    export_symbol,
    export_version,
    funds_problems,
    import_delta,
    import_symbol,
    precopy_symbol,
)
from pyengine.engine.migration_pieces import (
    Detached,
    Pieces,
    cleanup,
    export_delta_pieces,
    pieces_of,
    pieces_sha,
    take_piece,
)
from pyengine.engine.migration_shadow import Shadow, extend_shadow, import_pieces, release_shadow
from pyengine.engine.model import EngineState
from pyengine.service import retire
from pyengine.wire.protocol import Status

log = logging.getLogger("matchx.migration")

MIG_OPS = frozenset({"mig_precopy", "mig_freeze", "mig_export_chunk", "mig_drop", "mig_cleanup", "mig_restore",
                     "mig_prepare", "mig_import_chunk", "mig_preimport", "mig_import", "mig_activate",
                     "mig_discard", "mig_state", "xfer_out", "xfer_in", "funds_check", "id_base"})
ID_SPACE = 1 << 40  # order and trade ids per partition: cluster_id * ID_SPACE onwards
XFER_PREFIX = "xfer:"  # the engine tx ids of transfer legs; refused in user deposits/withdrawals
MAX_CHUNK = 64 * 1024  # raw bytes per export chunk (its base64 must fit one reply message)
MAX_PIECE_ORDERS = 100_000  # a pre-copy piece's ``max_orders``: 1 .. this

# states
PRECOPIED, RELEASED = "precopied", "released"  # source: a pre-copy taken / given up before a freeze
FROZEN, DROPPED, RESTORED = "frozen", "dropped", "restored"
PREPARED, IMPORTED, ACTIVE, DISCARDED = "prepared", "imported", "active", "discarded"
_OPEN_SOURCE = (FROZEN,)
_OPEN_DEST = (PREPARED, IMPORTED)

Answer = tuple[int, bytes]


def _ok(body: dict) -> Answer:
    return Status.OK, orjson.dumps(body)


def _err(text: str) -> Answer:
    return Status.ERROR, orjson.dumps({"error": text})


def _decompress(staged: bytes | bytearray, size: int) -> bytes | None:
    """The export the coordinator compressed (zlib), never more than ``size`` + 1 bytes of it
    (a stream that would give more is refused without being expanded); None if it is no whole
    zlib stream."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(bytes(staged), size + 1)
    except zlib.error:
        return None
    return out if d.eof and not d.unconsumed_tail and not d.unused_data else None


def _staged_export(staged: bytes | bytearray, cmd: dict) -> tuple[bytes | None, str | None]:
    """The export staged at the destination, decompressed and checked against the source's size
    and SHA-256 (``cmd``: size, sha256, encoding): (bytes, None), or (None, what is wrong)."""
    size, encoding = cmd.get("size"), cmd.get("encoding")
    if type(size) is not int or size < 0 or not isinstance(cmd.get("sha256"), str):
        return None, f"{cmd.get('op')} needs size and sha256 (the source's export)"
    if encoding not in (None, "zlib"):
        return None, f"unknown encoding {encoding!r} (known: zlib)"
    blob = _decompress(staged, size) if encoding == "zlib" else bytes(staged)
    if blob is None or len(blob) != size or hashlib.sha256(blob).hexdigest() != cmd.get("sha256"):
        return None, (f"staged export is {len(staged)} bytes{' (zlib)' if encoding else ''} that do not give "
                      f"the source's {size} bytes and digest: send it again")
    return blob, None


def let_others_run() -> None:
    """The engine's imports call this every few thousand orders (``migration.PAUSE_EVERY``): a
    worker's members of other partitions share this interpreter and would otherwise wait for
    the whole import (~50 ms at 100,000 orders: bench/reports/migration_holds.md). A zero
    sleep releases the interpreter, and a thread that has waited for it takes it then."""
    time.sleep(0)


def _holds(meta: dict) -> dict[str, int]:
    return {a: int(v) for a, v in meta.get("holds", {}).items()}


class Migrations:
    """A partition's migration and transfer state; owned by ``MatchingService``, snapshotted
    with it (``to_json``/``from_json``)."""

    def __init__(self) -> None:
        # migration id -> record; a record is a plain dict (JSON in the snapshot)
        self.recs: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}       # id -> export (source) or staged import (dest)
        # id -> the pre-copy's export (source: what the freeze's delta is against; destination:
        # what the delta is applied to), until the migration ends
        self.bases: dict[str, bytes] = {}
        # derived from ``bases`` or ``pieces`` on first use after a restart, so not snapshotted:
        # the source's baseline of each pre-copy, the destination's pre-copy built (a whole one
        # as a small engine, one in pieces in the engine's own form: migration_shadow.py)
        self._baselines: dict[str, Baseline] = {}
        self._shadows: dict[str, EngineState | Shadow] = {}
        # a pre-copy in pieces (migration_pieces.py): id -> the pieces' exports in order (source:
        # what it took; destination: what it built), until the migration ends; and, derived
        # (not snapshotted), the source's records of them
        self.pieces: dict[str, list[bytes]] = {}
        self._tracks: dict[str, Pieces] = {}
        # id -> the book a freeze after pieces took out whole, its orders still in the indexes
        # until mig_cleanup takes them out (not snapshotted: a snapshot holds the books only, so
        # a restored member's indexes never had them; the record's "cleanup" says how far it is)
        self._detached: dict[str, Detached] = {}
        self.frozen: dict[str, str] = {}        # symbol -> migration id (source, not yet dropped)
        self.inert: dict[str, str] = {}         # symbol -> migration id (destination, not active)
        self.net_in: dict[str, int] = {}        # asset -> holds imported minus holds exported
        self.xfers: dict[str, dict[str, Any]] = {}  # "out:ID" / "in:ID" -> the leg's request
        # the partition is retired (pyengine/service/retire.py): kept here to be snapshotted
        # with the rest of the partition's routing state
        self.retired = False

    # ---- the fence -------------------------------------------------------------------------

    def fence(self, cmd: dict, owned: dict[str, int] | None) -> Answer | None:
        """The answer for a command the migrations (or the retirement) hold back, else None."""
        if self.retired:
            # every engine command passes here first (the service's ownership check), so a
            # retired partition refuses deposits, orders and bulks in one place
            refused = retire.engine_gate(cmd, owned)
            if refused is not None:
                return refused
        symbol = cmd.get("symbol")
        if isinstance(symbol, str):
            mid = self.frozen.get(symbol)
            if mid is not None:
                rec = self.recs[mid]
                # "dest": a client can open its session to the new owner while it waits for the map
                return Status.MOVED, orjson.dumps({"type": "moved", "symbol": symbol, "epoch": rec["epoch"],
                                                   "moving": True, "migration": mid, "dest": rec["dest"]})
            mid = self.inert.get(symbol)
            if mid is not None:
                rec = self.recs[mid]
                return Status.MOVED, orjson.dumps({"type": "moved", "symbol": symbol, "epoch": rec["epoch"],
                                                   "not_yet": True, "migration": mid})
        op = cmd.get("op")
        if op == "cancel_all" and symbol is None and self.inert:
            # it would cancel the inert imported orders too: retry once the import is active
            first = next(iter(self.inert))
            return Status.MOVED, orjson.dumps({"type": "moved", "symbol": first,
                                               "epoch": self.recs[self.inert[first]]["epoch"],
                                               "moving": True, "migration": self.inert[first]})
        if op in ("deposit", "withdraw"):
            tx = cmd.get("tx_id")
            if isinstance(tx, str) and tx.startswith(XFER_PREFIX):
                return _err(f"tx_id prefix {XFER_PREFIX!r} is reserved for transfers")
        return None

    # ---- dispatch --------------------------------------------------------------------------

    def apply(self, svc: Any, cmd: dict) -> Answer:
        """One admin command; ``svc`` is the MatchingService (engine, owned, moved)."""
        op = cmd["op"]
        if op == "mig_state":
            return _ok(self.describe())
        if op == "funds_check":
            problems = funds_problems(svc.engine, self.net_in)
            return _ok({"type": "funds_check", "ok": not problems, "problems": problems[:20],
                        "net_in": {a: str(v) for a, v in sorted(self.net_in.items())}})
        if op in ("xfer_out", "xfer_in"):
            return self._xfer(svc, cmd, op)
        if op == "id_base":
            return self._id_base(svc, cmd)
        mid = cmd.get("id")
        if not isinstance(mid, str) or not mid or len(mid) > 64:
            return _err(f"{op} needs id: a migration id of 1..64 chars")
        if svc.owned is None:
            return _err("migration needs a partitioned system (this partition owns every symbol)")
        return getattr(self, "_" + op[4:])(svc, mid, cmd)

    # ---- source ----------------------------------------------------------------------------

    def _same(self, rec: dict, cmd: dict, keys: tuple[str, ...]) -> str | None:
        for k in keys:
            if rec.get(k) != cmd.get(k):
                return f"migration {rec['id']} exists with {k}={rec.get(k)!r}, not {cmd.get(k)!r}"
        return None

    def _source_rec(self, svc: Any, mid: str, cmd: dict) -> tuple[dict | None, Answer | None]:
        """For mig_precopy and mig_freeze: (the source record ``mid`` has, or None when the
        symbol can start moving here, None) or (None, the refusal)."""
        symbol, dest, epoch = cmd.get("symbol"), cmd.get("dest"), cmd.get("epoch")
        if not isinstance(symbol, str) or not isinstance(dest, str) or type(epoch) is not int:
            return None, _err(f"{cmd['op']} needs symbol, dest and epoch (the new owner's epoch)")
        rec = self.recs.get(mid)
        if rec is not None:
            if rec["role"] != "source":
                return None, _err(f"migration {mid} is a destination here")
            bad = self._same(rec, cmd, ("symbol", "dest", "epoch"))
            if bad:
                return None, _err(bad)
            if rec["state"] != PRECOPIED:
                return rec, None
        if symbol in self.frozen:
            return None, _err(f"{symbol} is already moving (migration {self.frozen[symbol]})")
        if symbol not in svc.owned:
            return None, _err(f"{symbol} is not owned here")
        if epoch <= svc.owned[symbol]:
            return None, _err(f"epoch {epoch} is not newer than {svc.owned[symbol]}")
        if symbol not in svc.engine.symbols:
            return None, _err(f"{symbol} is owned here but unknown to the engine (add_symbol first)")
        return rec, None

    def _precopy(self, svc: Any, mid: str, cmd: dict) -> Answer:
        """The pre-copy: an export of the symbol at this position that changes nothing (it keeps
        trading here); the freeze then exports only what changed since. With ``piece`` (and
        ``max_orders``): one piece of a pre-copy in pieces, each its own log message."""
        rec, refused = self._source_rec(svc, mid, cmd)
        if refused is not None:
            return refused
        if "piece" in cmd:
            return self._precopy_piece(svc, mid, cmd, rec)
        if rec is None:
            try:
                blob, meta, base = precopy_symbol(svc.engine, cmd["symbol"])
            except MigrationError as exc:
                return _err(str(exc))
            rec = {"id": mid, "role": "source", "symbol": cmd["symbol"], "dest": cmd["dest"],
                   "epoch": cmd["epoch"], "old_epoch": svc.owned[cmd["symbol"]], "state": PRECOPIED,
                   "meta": None, "precopy": {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                                             "orders": meta["orders"]}}
            self.recs[mid] = rec
            self.bases[mid] = blob
            self._baselines[mid] = base
            log.info("migration %s: %s pre-copied (%d orders, %d bytes)", mid, cmd["symbol"], meta["orders"],
                     len(blob))
        if "precopy" not in rec:
            return _err(f"migration {mid} was frozen without a pre-copy")
        if "pieces" in rec["precopy"]:
            return _err(f"migration {mid} has a pre-copy in pieces: ask for them by piece")
        return _ok({"type": "mig_precopy", "id": mid, "symbol": rec["symbol"], "state": rec["state"],
                    **rec["precopy"]})

    def _precopy_piece(self, svc: Any, mid: str, cmd: dict, rec: dict | None) -> Answer:
        """Piece ``piece`` of the pre-copy: a repeat answers the piece taken (its bytes inline
        when they fit one answer, else through ``mig_export_chunk`` with ``part`` "precopy"
        and ``piece``); the next one is taken at this log position; any other is refused."""
        k, n = cmd.get("piece"), cmd.get("max_orders")
        if type(k) is not int or k < 0 or type(n) is not int or not 0 < n <= MAX_PIECE_ORDERS:
            return _err(f"mig_precopy piece needs piece >= 0 and max_orders in [1, {MAX_PIECE_ORDERS}]")
        if rec is None:
            if k != 0:
                return _err(f"migration {mid} has no pre-copy: piece 0 first")
            rec = {"id": mid, "role": "source", "symbol": cmd["symbol"], "dest": cmd["dest"],
                   "epoch": cmd["epoch"], "old_epoch": svc.owned[cmd["symbol"]], "state": PRECOPIED,
                   "meta": None, "precopy": {"pieces": [], "done": False, "orders": 0, "size": 0,
                                             "sha256": pieces_sha([])}}
            self.recs[mid] = rec
            self.pieces[mid] = []
            self._tracks[mid] = Pieces()
        pre = rec.get("precopy")
        if pre is None or "pieces" not in pre:
            return _err(f"migration {mid} has {'no' if pre is None else 'a whole'} pre-copy, not one in pieces")
        if rec["state"] != PRECOPIED:
            return _ok({"type": "mig_precopy", "id": mid, "symbol": rec["symbol"], "state": rec["state"]})
        have = pre["pieces"]
        if k == len(have) and not pre["done"]:
            try:
                blob, meta = take_piece(svc.engine, rec["symbol"], self._track(svc, mid, rec), n)
            except MigrationError as exc:
                return _err(str(exc))
            have.append({"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "orders": meta["orders"],
                         "last": meta["last"]})
            self.pieces[mid].append(blob)
            pre["done"] = meta["last"]
            pre["orders"] += meta["orders"]
            pre["size"] += len(blob)
            pre["sha256"] = pieces_sha([p["sha256"] for p in have])
        elif k >= len(have):
            return _err(f"migration {mid}: pre-copy piece {k} asked, {len(have)} taken"
                        f"{' (complete)' if pre['done'] else ''}")
        blob = self.pieces[mid][k]
        body = {"type": "mig_precopy", "id": mid, "symbol": rec["symbol"], "state": rec["state"], "piece": k,
                **have[k]}
        if len(blob) <= MAX_CHUNK:
            body["data"] = base64.b64encode(blob).decode()
        return _ok(body)

    def _track(self, svc: Any, mid: str, rec: dict) -> Pieces:
        """The source's records of ``mid``'s pieces (read back from their bytes after a restart)."""
        pc = self._tracks.get(mid)
        if pc is None:
            pc = self._tracks[mid] = pieces_of(self.pieces[mid], svc.engine.symbols[rec["symbol"]])
        return pc

    def _freeze(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec, refused = self._source_rec(svc, mid, cmd)
        if refused is not None:
            return refused
        if rec is not None and rec["state"] != PRECOPIED:
            return _ok(self._source_answer(rec))
        symbol, dest, epoch = cmd["symbol"], cmd["dest"], cmd["epoch"]
        cleanup_rec: dict[str, int] | None = None
        try:
            if rec is None:
                blob, meta = export_symbol(svc.engine, symbol)
            elif "pieces" in rec["precopy"]:  # after a pre-copy in pieces: the changed queues only
                pc = self._track(svc, mid, rec)
                blob, meta = export_delta_pieces(svc.engine, symbol, pc, rec["precopy"]["sha256"])
                det = pc.detached
                if det is not None and det.total:
                    self._detached[mid] = det
                    # the orders to take out of the indexes after the freeze (mig_cleanup)
                    cleanup_rec = {"orders": det.total, "done": 0}
            else:  # after a pre-copy: only what changed since
                base = self._baselines.get(mid)
                if base is None:
                    base = self._baselines[mid] = baseline_of(self.bases[mid])
                blob, meta = export_delta(svc.engine, symbol, base, rec["precopy"]["sha256"])
        except MigrationError as exc:
            return _err(str(exc))
        self._baselines.pop(mid, None)
        self._tracks.pop(mid, None)
        rec = {**(rec or {}), "id": mid, "role": "source", "symbol": symbol, "dest": dest, "epoch": epoch,
               "old_epoch": svc.owned[symbol], "state": FROZEN, "meta": meta, "size": len(blob),
               "sha256": hashlib.sha256(blob).hexdigest()}
        if cleanup_rec is not None:
            rec["cleanup"] = cleanup_rec
        self.recs[mid] = rec
        self.blobs[mid] = blob
        self.frozen[symbol] = mid
        owned = dict(svc.owned)
        del owned[symbol]
        svc.owned = owned
        svc.moved[symbol] = epoch
        for asset, v in _holds(meta).items():
            self.net_in[asset] = self.net_in.get(asset, 0) - v
        log.info("migration %s: %s frozen and exported (%d orders, %d bytes%s)", mid, symbol,
                 meta["orders"], len(blob), "" if "precopy" not in meta else
                 f"; since the pre-copy {meta['appended']} added, {meta['removed']} gone, {meta['changed']} changed")
        return _ok(self._source_answer(rec))

    def _source_answer(self, rec: dict) -> dict:
        body = {"type": "mig_source", "id": rec["id"], "symbol": rec["symbol"], "state": rec["state"],
                "epoch": rec["epoch"], "size": rec.get("size"), "sha256": rec.get("sha256"), "meta": rec["meta"]}
        if "cleanup" in rec:  # only then: a freeze without one answers as before
            body["cleanup"] = rec["cleanup"]
        return body

    def _cleanup(self, svc: Any, mid: str, cmd: dict) -> Answer:
        """The detached book's orders out of the engine's indexes until ``upto`` of them are out
        (in the book's priority order), at most ``MAX_PIECE_ORDERS`` more per command: each
        command a bounded piece of the work the freeze no longer does. Idempotent: a repeat, or
        an ``upto`` already reached, changes nothing. Answers how far it is."""
        rec = self.recs.get(mid)
        if rec is None or rec["role"] != "source":
            return _err(f"unknown migration {mid}")
        upto = cmd.get("upto")
        if type(upto) is not int or upto < 0:
            return _err("mig_cleanup needs upto: the orders out of the indexes when it is done (an int >= 0)")
        cl = rec.get("cleanup")
        if cl is None:
            return _err(f"migration {mid} is {rec['state']}: it has no detached book to clean up")
        if upto > cl["done"] + MAX_PIECE_ORDERS:
            return _err(f"mig_cleanup takes at most {MAX_PIECE_ORDERS} orders out at once "
                        f"({cl['done']} out, upto {upto} asked)")
        if upto > cl["done"]:
            self._clean(svc, mid, min(upto, cl["orders"]))
        return _ok({"type": "mig_cleanup", "id": mid, "symbol": rec["symbol"], "state": rec["state"],
                    "cleanup": cl})

    def _clean(self, svc: Any, mid: str, upto: int) -> None:
        """The cleanup of ``mid`` up to ``upto`` orders (the record says so on every member; a
        member restored from a snapshot has nothing left in its indexes to take out)."""
        cl = self.recs[mid]["cleanup"]
        det = self._detached.get(mid)
        if det is not None:
            cleanup(svc.engine, det, upto)
            if det.done >= det.total:
                del self._detached[mid]
        cl["done"] = max(cl["done"], upto)

    def finish_cleanups(self, svc: Any, symbols: Container[str]) -> None:
        """Every cleanup still open of these symbols done now: the symbol is about to be owned
        or imported here again (its new orders must not share it with detached ones)."""
        for mid, rec in self.recs.items():
            cl = rec.get("cleanup")
            if cl is not None and cl["done"] < cl["orders"] and rec["symbol"] in symbols:
                self._clean(svc, mid, cl["orders"])

    def _export_chunk(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec = self.recs.get(mid)
        blob = self.blobs.get(mid)
        if rec is None or rec["role"] != "source":
            return _err(f"unknown migration {mid}")
        if cmd.get("part") == "precopy":
            k = cmd.get("piece")
            if k is None:
                blob = self.bases.get(mid)
            else:
                got = self.pieces.get(mid, [])
                blob = got[k] if type(k) is int and 0 <= k < len(got) else None
            if blob is None:
                return _err(f"migration {mid} is {rec['state']}: it has no pre-copy"
                            f"{'' if k is None else f' piece {k}'}")
        if blob is None:
            return _err(f"migration {mid} is {rec['state']}: its export is gone")
        off, n = cmd.get("offset"), cmd.get("length", MAX_CHUNK)
        if type(off) is not int or type(n) is not int or not 0 <= off <= len(blob) or not 0 < n <= MAX_CHUNK:
            return _err(f"offset in [0, {len(blob)}] and length in [1, {MAX_CHUNK}] needed")
        data = blob[off:off + n]
        return _ok({"type": "mig_chunk", "id": mid, "offset": off, "total": len(blob),
                    "data": base64.b64encode(data).decode()})

    def _drop(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec = self.recs.get(mid)
        if rec is None or rec["role"] != "source":
            return _err(f"unknown migration {mid}")
        if rec["state"] == FROZEN:
            drop_symbol(svc.engine, rec["symbol"])
            rec["state"] = DROPPED
            self.blobs.pop(mid, None)
            self.bases.pop(mid, None)
            self.pieces.pop(mid, None)
            del self.frozen[rec["symbol"]]
        elif rec["state"] != DROPPED:
            return _err(f"migration {mid} is {rec['state']}: nothing to drop")
        return _ok(self._source_answer(rec))

    def _restore(self, svc: Any, mid: str, cmd: dict) -> Answer:
        """Abort at the source: take the symbol back from the own export, exactly."""
        rec = self.recs.get(mid)
        if rec is None or rec["role"] != "source":
            return _err(f"unknown migration {mid}")
        if rec["state"] == PRECOPIED:  # never frozen: nothing to take back
            self.bases.pop(mid, None)
            self._baselines.pop(mid, None)
            if self.pieces.pop(mid, None) is not None:
                self._tracks.pop(mid, None)
                sym = svc.engine.symbols.get(rec["symbol"])
                if sym is not None:
                    sym.dirty = None  # no freeze will read the marks
            rec["state"] = RELEASED
        elif rec["state"] == FROZEN:
            # the detached orders out of the indexes first: the restore builds the book anew
            self.finish_cleanups(svc, (rec["symbol"],))
            try:
                if "precopy" in rec and "pieces" in rec["precopy"]:
                    import_pieces(svc.engine, _shadow_of(self.pieces[mid], svc.engine), rec["precopy"]["sha256"],
                                  self.blobs[mid], let_others_run)
                elif "precopy" in rec:  # the pre-copy with the freeze's delta, as the destination does
                    shadow = build_shadow(self.bases[mid], svc.engine.dedup_window, let_others_run)
                    import_delta(svc.engine, shadow, rec["precopy"]["sha256"], self.blobs[mid], let_others_run)
                else:
                    import_symbol(svc.engine, self.blobs[mid], let_others_run)
            except MigrationError as exc:  # pragma: no cover - its own export always fits
                log.error("migration %s: the source cannot take back its own export: %s", mid, exc)
                return _err(f"restore failed: {exc}")
            symbol = rec["symbol"]
            # the route comes back at the new epoch: epochs only grow, so clients that were told
            # "moving" to that epoch find it again here
            svc.owned = {**svc.owned, symbol: rec["epoch"]}
            svc.moved.pop(symbol, None)
            del self.frozen[symbol]
            self.blobs.pop(mid, None)
            self.bases.pop(mid, None)
            self.pieces.pop(mid, None)
            for asset, v in _holds(rec["meta"]).items():
                self.net_in[asset] = self.net_in.get(asset, 0) + v
            rec["state"] = RESTORED
        elif rec["state"] not in (RESTORED, RELEASED):
            return _err(f"migration {mid} is {rec['state']}: too late to restore")
        return _ok(self._source_answer(rec))

    # ---- destination -----------------------------------------------------------------------

    def _prepare(self, svc: Any, mid: str, cmd: dict) -> Answer:
        symbol, source, epoch = cmd.get("symbol"), cmd.get("source"), cmd.get("epoch")
        if not isinstance(symbol, str) or not isinstance(source, str) or type(epoch) is not int:
            return _err("mig_prepare needs symbol, source and epoch (the new owner's epoch)")
        rec = self.recs.get(mid)
        if rec is not None:
            if rec["role"] != "dest":
                return _err(f"migration {mid} is a source here")
            bad = self._same(rec, cmd, ("symbol", "source", "epoch"))
            return _err(bad) if bad else _ok(self._dest_answer(rec))
        if symbol in svc.owned:
            return _err(f"{symbol} is already owned here")
        if symbol in self.inert:
            return _err(f"{symbol} is already being imported (migration {self.inert[symbol]})")
        if symbol in self.frozen:
            return _err(f"{symbol} is frozen here (migration {self.frozen[symbol]})")
        # back where it left from: the detached orders of its last move out of the indexes
        self.finish_cleanups(svc, (symbol,))
        cur = svc.engine.symbols.get(symbol)
        if cur is not None and (cur.bid_keys or cur.ask_keys):
            return _err(f"{symbol} has a book here")
        rec = {"id": mid, "role": "dest", "symbol": symbol, "source": source, "epoch": epoch,
               "state": PREPARED, "meta": None}
        self.recs[mid] = rec
        self.blobs[mid] = b""
        self.inert[symbol] = mid
        return _ok(self._dest_answer(rec))

    def _dest_answer(self, rec: dict) -> dict:
        return {"type": "mig_dest", "id": rec["id"], "symbol": rec["symbol"], "state": rec["state"],
                "epoch": rec["epoch"], "staged": len(self.blobs.get(rec["id"], b"")), "meta": rec["meta"],
                "precopy": rec.get("precopy")}

    def _dest(self, mid: str) -> dict | None:
        rec = self.recs.get(mid)
        return rec if rec is not None and rec["role"] == "dest" else None

    def _import_chunk(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec = self._dest(mid)
        if rec is None:
            return _err(f"unknown migration {mid}")
        off, data = cmd.get("offset"), cmd.get("data")
        if type(off) is not int or not isinstance(data, str):
            return _err("mig_import_chunk needs offset and data (base64)")
        if rec["state"] != PREPARED:
            return _ok(self._dest_answer(rec))  # a resend after the import: already in
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            return _err("data is not base64")
        staged = self.blobs[mid]
        if not 0 <= off <= len(staged):
            return _err(f"chunk at {off}, expected at most {len(staged)}")
        # a resend overlaps what is staged: the overlap must agree, the rest is new
        seen = staged[off:off + len(raw)]
        if raw[:len(seen)] != seen:
            return _err(f"chunk at {off} differs from the bytes already staged there")
        if off + len(raw) > len(staged):
            if not isinstance(staged, bytearray):  # grown in place: no copy of all staged so far
                staged = self.blobs[mid] = bytearray(staged)
            staged += raw[len(seen):]
        return _ok(self._dest_answer(rec))

    def _preimport(self, svc: Any, mid: str, cmd: dict) -> Answer:
        """The staged pre-copy, checked and built beside the engine (the symbol still trades at
        the source); the staging is then free for the freeze's delta."""
        rec = self._dest(mid)
        if rec is None:
            return _err(f"unknown migration {mid}")
        if "piece" in cmd:
            return self._preimport_piece(svc, mid, cmd, rec)
        if rec["state"] != PREPARED or (rec.get("precopy") or {}).get("sha256") == cmd.get("sha256"):
            return _ok(self._dest_answer(rec))  # a resend: already in (or too late to matter)
        blob, bad = _staged_export(self.blobs[mid], cmd)
        if blob is None:
            self.blobs[mid] = b""  # staged bytes that do not add up: start the transfer again
            return _err(bad or "")
        try:
            shadow = build_shadow(blob, svc.engine.dedup_window, let_others_run)
        except MigrationError as exc:
            self.blobs[mid] = b""
            return _err(f"pre-copy refused: {exc}")
        rec["precopy"] = {"size": len(blob), "sha256": cmd["sha256"]}
        self.bases[mid] = blob
        self._shadows[mid] = shadow
        self.blobs[mid] = b""
        return _ok(self._dest_answer(rec))

    def _preimport_piece(self, svc: Any, mid: str, cmd: dict, rec: dict) -> Answer:
        """Piece ``piece`` of a pre-copy in pieces, checked (size, SHA-256) and added to the
        pre-copy built beside the engine. Its bytes come in ``data`` (base64, ``encoding`` as
        staged chunks) or were staged by ``mig_import_chunk``; a repeat is answered as is."""
        k = cmd.get("piece")
        pre = rec.get("precopy")
        if type(k) is not int or k < 0:
            return _err("mig_preimport piece needs piece >= 0")
        if pre is not None and "pieces" not in pre:
            return _err(f"migration {mid} has a whole pre-copy, not one in pieces")
        have: list[str] = [] if pre is None else pre["pieces"]
        if rec["state"] != PREPARED or (k < len(have) and have[k] == cmd.get("sha256")):
            return _ok(self._dest_answer(rec))  # a resend: already in (or too late to matter)
        if k != len(have):
            return _err(f"migration {mid}: pre-copy piece {k} sent, piece {len(have)} expected")
        staged: bytes | bytearray = self.blobs[mid]
        if "data" in cmd:
            try:
                staged = base64.b64decode(cmd["data"], validate=True)
            except (ValueError, TypeError):
                return _err("data is not base64")
        blob, bad = _staged_export(staged, cmd)
        self.blobs[mid] = b""  # the staging is free for the next piece (or sent again)
        if blob is None:
            return _err(bad or "")
        got = self.pieces.get(mid, [])
        try:
            shadow = self._extended(svc, mid, got, blob)
        except MigrationError as exc:
            return _err(f"pre-copy piece refused: {exc}")
        self._shadows[mid] = shadow
        # the pieces built so far live until the import: kept out of the collections, which
        # otherwise rescan every earlier piece's orders (up to 13 ms inside one piece's command
        # at 100,000 orders: bench/reports/migration_holds.md), as a snapshot keeps the engine
        gc.freeze()
        self.pieces[mid] = [*got, blob]
        have = [*have, cmd["sha256"]]
        rec["precopy"] = {"pieces": have, "sha256": pieces_sha(have), "size": (pre or {}).get("size", 0) + len(blob)}
        return _ok(self._dest_answer(rec))

    def _extended(self, svc: Any, mid: str, got: list[bytes], blob: bytes) -> Shadow:
        """The destination's pre-copy with piece ``blob`` added (``_preimport_piece``)."""
        shadow = self._shadows.get(mid)
        if shadow is None and got:  # after a restart: built again from the pieces' bytes
            shadow = _shadow_of(got, svc.engine)
        assert shadow is None or isinstance(shadow, Shadow)
        return extend_shadow(svc.engine, shadow, blob, let_others_run)

    def _import(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec = self._dest(mid)
        if rec is None:
            return _err(f"unknown migration {mid}")
        if rec["state"] in (IMPORTED, ACTIVE):
            return _ok(self._dest_answer(rec))
        if rec["state"] != PREPARED:
            return _err(f"migration {mid} is {rec['state']}")
        blob, bad = _staged_export(self.blobs[mid], cmd)
        if blob is None:
            self.blobs[mid] = b""  # staged bytes that do not add up: start the transfer again
            return _err(bad or "")
        try:
            meta = self._imported(svc, mid, rec, blob)
        except MigrationError as exc:
            self.blobs[mid] = b""  # start the transfer again, or abort
            return _err(f"import refused: {exc}")
        rec["meta"] = {k: meta[k] for k in ("orders", "finished", "accounts", "holds", "seq",
                                            "coid_conflicts", "finished_forgotten")}
        rec["state"] = IMPORTED
        self.blobs[mid] = b""
        self.bases.pop(mid, None)
        self.pieces.pop(mid, None)
        self._shadows.pop(mid, None)
        for asset, v in _holds(meta).items():
            self.net_in[asset] = self.net_in.get(asset, 0) + v
        return _ok(self._dest_answer(rec))

    def _imported(self, svc: Any, mid: str, rec: dict, blob: bytes) -> dict:
        """The staged export ``blob`` into the engine, on the pre-copy if there is one (``_import``)."""
        pre = rec.get("precopy")
        if pre is not None and export_version(blob) == DELTA_VERSION and mid in self.pieces:
            shadow = self._shadows.pop(mid, None)
            if not isinstance(shadow, Shadow):  # after a restart: built again from the pieces' bytes
                shadow = _shadow_of(self.pieces[mid], svc.engine)
            return import_pieces(svc.engine, shadow, pre["sha256"], blob, let_others_run)
        if pre is not None and export_version(blob) == DELTA_VERSION and mid in self.bases:
            whole = self._shadows.pop(mid, None)
            if not isinstance(whole, EngineState):  # after a restart: built again from the pre-copy's bytes
                whole = build_shadow(self.bases[mid], svc.engine.dedup_window, let_others_run)
            return import_delta(svc.engine, whole, pre["sha256"], blob, let_others_run)
        return import_symbol(svc.engine, blob, let_others_run)

    def _activate(self, svc: Any, mid: str, cmd: dict) -> Answer:
        rec = self._dest(mid)
        if rec is None:
            return _err(f"unknown migration {mid}")
        if rec["state"] == IMPORTED:
            symbol = rec["symbol"]
            epoch = max(rec["epoch"], svc.moved.get(symbol, 0))
            svc.owned = {**svc.owned, symbol: epoch}
            svc.moved.pop(symbol, None)
            del self.inert[symbol]
            self.blobs.pop(mid, None)
            rec["state"] = ACTIVE
        elif rec["state"] != ACTIVE:
            return _err(f"migration {mid} is {rec['state']}: import it first")
        return _ok(self._dest_answer(rec))

    def _discard(self, svc: Any, mid: str, cmd: dict) -> Answer:
        """Abort at the destination: the inert copy goes (never once it is active)."""
        rec = self._dest(mid)
        if rec is None:
            return _err(f"unknown migration {mid}")
        if rec["state"] == ACTIVE:
            return _err(f"migration {mid} is active: past the point of no return")
        if rec["state"] in _OPEN_DEST:
            symbol = rec["symbol"]
            if rec["state"] == IMPORTED:
                _blob, meta = export_symbol(svc.engine, symbol)  # takes the book and holds out
                drop_symbol(svc.engine, symbol)
                for asset, v in _holds(meta).items():
                    self.net_in[asset] = self.net_in.get(asset, 0) - v
            del self.inert[symbol]
            self.blobs.pop(mid, None)
            self.bases.pop(mid, None)
            self.pieces.pop(mid, None)
            shadow = self._shadows.pop(mid, None)
            if shadow is not None:
                release_shadow(shadow)
            rec["state"] = DISCARDED
        return _ok(self._dest_answer(rec))

    # ---- ids ---------------------------------------------------------------------------------

    def _id_base(self, svc: Any, cmd: dict) -> Answer:
        """Order and trade ids from ``base`` on (never backwards): each partition gets its own
        range, so an order keeps its id when its symbol moves and never meets an order of the
        destination with the same id."""
        base = cmd.get("base")
        if type(base) is not int or not 0 <= base < 2**62:
            return _err("id_base needs base: an int in [0, 2**62)")
        eng = svc.engine
        eng.next_oid = max(eng.next_oid, base)
        eng.next_tid = max(eng.next_tid, base)
        return _ok({"type": "id_base", "next_order_id": eng.next_oid, "next_trade_id": eng.next_tid})

    # ---- transfers of free funds -----------------------------------------------------------

    def _xfer(self, svc: Any, cmd: dict, op: str) -> Answer:
        tid, account, asset, amount = cmd.get("id"), cmd.get("account"), cmd.get("asset"), cmd.get("amount")
        if not all(isinstance(x, str) and x for x in (tid, account, asset, amount)) or len(tid) > 48:
            return _err(f"{op} needs id (1..48 chars), account, asset and amount")
        key = ("out:" if op == "xfer_out" else "in:") + tid
        prev = self.xfers.get(key)
        want = {"account": account, "asset": asset, "amount": amount}
        if prev is not None and prev["req"] != want:
            return _err(f"transfer id {tid} was used with other values")
        eop = "withdraw" if op == "xfer_out" else "deposit"
        ev = svc.engine.apply({"op": eop, "account": account, "asset": asset, "amount": amount,
                               "tx_id": XFER_PREFIX + key}, 0)
        e = ev[0]
        if e.get("type") == "rejected":
            return _err(f"{op} refused: {e.get('reason')}: {e.get('detail')}")
        if prev is None:
            self.xfers[key] = {"req": want}
        return _ok({"type": op, "id": tid, "account": account, "asset": asset, "amount": e["amount"],
                    "available": e["available"], "duplicate": bool(e.get("duplicate"))})

    # ---- state -----------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"type": "mig_state",
                "migrations": list(self.recs.values()),
                "frozen": dict(self.frozen), "inert": dict(self.inert),
                "net_in": {a: str(v) for a, v in sorted(self.net_in.items())}, "retired": self.retired}

    def to_json(self) -> dict:
        d = {"recs": self.recs, "frozen": self.frozen, "inert": self.inert,
             "net_in": {a: str(v) for a, v in self.net_in.items()}, "xfers": self.xfers,
             "blobs": {k: base64.b64encode(v).decode() for k, v in self.blobs.items()}}
        if self.retired:  # only when set: a partition never retired snapshots the same bytes as before
            d["retired"] = True
        if self.bases:  # likewise: only while a pre-copy is held
            d["bases"] = {k: base64.b64encode(v).decode() for k, v in self.bases.items()}
        if self.pieces:  # likewise: only while a pre-copy in pieces is held
            d["pieces"] = {k: [base64.b64encode(b).decode() for b in v] for k, v in self.pieces.items()}
        return d

    @classmethod
    def from_json(cls, d: dict | None) -> Migrations:
        m = cls()
        if not d:
            return m
        m.recs = d["recs"]
        m.frozen = d["frozen"]
        m.inert = d["inert"]
        m.net_in = {a: int(v) for a, v in d["net_in"].items()}
        m.xfers = d["xfers"]
        m.blobs = {k: base64.b64decode(v) for k, v in d["blobs"].items()}
        m.retired = d.get("retired") is True  # absent in snapshots written before retire existed
        m.bases = {k: base64.b64decode(v) for k, v in d.get("bases", {}).items()}
        m.pieces = {k: [base64.b64decode(b) for b in v] for k, v in d.get("pieces", {}).items()}
        return m


def _shadow_of(pieces: list[bytes], eng: EngineState) -> Shadow:
    """A pre-copy in pieces built against ``eng`` (after a restart, or for an abort)."""
    shadow: Shadow | None = None
    for blob in pieces:
        shadow = extend_shadow(eng, shadow, blob, let_others_run)
    if shadow is None:
        raise MigrationError("a pre-copy in pieces without a piece")
    return shadow
