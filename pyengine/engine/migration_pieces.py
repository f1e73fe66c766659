"""The pre-copy in pieces and the freeze that walks only what changed (docs/migration.md).

A pre-copy taken as one export walks and encodes the whole book inside one log message, and the
partition's other symbols wait behind it (0.1-0.3 s at 100,000 orders). Here the source exports
the book in pieces of whole queues (one side, one price), each its own log message of at most
about ``max_orders`` orders, from the best bid down and then from the best ask up; a cursor (the
last exported queue) says where the next piece starts. The symbol trades on between pieces.

What the freeze needs of the pieces is kept per queue (``QueueRec``): the orders as they were
when their piece was taken (id, remaining, filled), the queue's digest and each account's holds
in it. From the first piece on, the engine marks every queue that changes (``Symbol.dirty``,
the same points that feed market data). The freeze (``export_delta_pieces``) then walks only
the marked queues and the queues no piece holds, and keeps the others' digests and holds from
their pieces: the delta (format version 3, as ``migration.export_delta``: removed, changed in
place, appended at the tails) is the same bytes whatever was marked, because a queue walked
without having changed adds nothing to it. The book's digest folds each queue's digest
(``migration.fold_level``); the destination checks the book it composes against it, the order
count and each account's holds, as before.

A queue is never split between pieces: a piece ends after the queue that reaches
``max_orders`` (so one queue deeper than that makes a larger piece). An order that moved to a
queue exported later (an amend of its price) is left out of that piece: it is in the baseline
once, at its old place, and the freeze finds it moved (both queues are marked).

After a restart a member rebuilds the records from the pieces' bytes (``pieces_of``) and, having
lost the marks, walks every queue at the freeze: the same delta, more work.

The freeze does not walk the orders to take them out of the engine either (``detach``): the
book leaves its symbol whole, its holds leave per account from the records, and the orders stay
in the engine's and their accounts' open orders and the client order id index, skipped by every
reader (``Symbol.detached``, ``model.stale``), until ``cleanup`` takes them out after the freeze,
a bounded number per log message (the service's ``mig_cleanup``). So the freeze costs what
changed plus the accounts, not the book.
"""

from __future__ import annotations

import gc
import hashlib
from bisect import bisect_left

from .columns import col_bytes, encode_orders
from .errors import MigrationError
from .migration import (
    _U64,
    DELTA_VERSION,
    VERSION,
    _mix,
    _read,
    export_blob,
    finished_of,
    fold_level,
    meta_head,
    mini_account,
    mini_engine,
)
from .model import BUY, SELL, Account, EngineState, Level, Order, Symbol


class QueueRec:
    """One queue as its piece exported it: order ids, remaining and filled quantities in time
    priority, the queue's digest, and per account [orders, units held] in it."""

    __slots__ = ("oids", "qty", "filled", "digest", "accts")

    def __init__(self) -> None:
        self.oids: list[int] = []
        self.qty: list[int] = []
        self.filled: list[int] = []
        self.digest = 0
        self.accts: dict[str, list[int]] = {}

    def add(self, oid: int, side: int, price: int, qty: int, filled: int, acct: str, unit: int, h: int) -> int:
        """One order at the queue's tail; returns the queue digest ``h`` with it."""
        self.oids.append(oid)
        self.qty.append(qty)
        self.filled.append(filled)
        v = self.accts.get(acct)
        if v is None:
            v = self.accts[acct] = [0, 0]
        v[0] += 1
        v[1] += qty * unit
        return _mix(h, oid, side, price, qty, filled)


class Pieces:
    """The source's state of one pre-copy in pieces (not snapshotted: ``pieces_of`` makes it
    again from the pieces' bytes)."""

    __slots__ = ("queues", "seen", "side", "price", "count", "held", "all_dirty", "done", "walked",
                 "detached")

    def __init__(self) -> None:
        self.queues: dict[int, QueueRec] = {}   # key: bids +price, asks -price
        self.seen: set[int] = set()             # order ids some piece holds
        self.side = BUY                         # the cursor: the side and price last exported
        self.price = 0                          # 0: nothing of ``side`` exported yet
        self.count = 0                          # pieces taken
        # account -> [buy orders, quote held by them, sell orders, base held by them], over
        # every queue record
        self.held: dict[str, list[int]] = {}
        self.all_dirty = False                  # marks lost (a restart): walk every queue
        self.done = False                       # every queue of the book exported once
        self.walked = 0                         # orders the freeze walked (not state: a measure)
        self.detached: Detached | None = None   # the book the freeze took out, for its cleanup


def pieces_sha(shas: list[str]) -> str:
    """The pre-copy's identity (what the freeze's delta names): SHA-256 of its pieces' SHA-256s."""
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def _next_queue(sym: Symbol, side: int, price: int) -> int:
    """The key of the queue after ``price`` on ``side`` (worse; the best when ``price`` is 0),
    or 0 if there is none."""
    if side == BUY:
        keys = sym.bid_keys
        i = len(keys) - 1 if price == 0 else bisect_left(keys, price) - 1
        return keys[i] if i >= 0 else 0
    keys = sym.ask_keys
    i = len(keys) - 1 if price == 0 else bisect_left(keys, -price) - 1
    return keys[i] if i >= 0 else 0


def _add_rec(pc: Pieces, key: int, rec: QueueRec) -> None:
    pc.queues[key] = rec
    col = 0 if key > 0 else 2
    for name, v in rec.accts.items():
        t = pc.held.get(name)
        if t is None:
            t = pc.held[name] = [0, 0, 0, 0]
        t[col] += v[0]
        t[col + 1] += v[1]


def _sub_rec(pc: Pieces, key: int, rec: QueueRec) -> None:
    col = 0 if key > 0 else 2
    for name, v in rec.accts.items():
        t = pc.held[name]
        t[col] -= v[0]
        t[col + 1] -= v[1]


def take_piece(eng: EngineState, name: str, pc: Pieces, max_orders: int) -> tuple[bytes, dict]:
    """The next piece of ``name``'s pre-copy: whole queues from the cursor on until at least
    ``max_orders`` orders (or the book's end), as an export (format version 2) of those orders
    and their accounts' holds, without finished orders. Changes nothing in the engine but the
    marks (``Symbol.dirty``, from the first piece on). The meta says ``last`` once the book is
    all exported."""
    sym = eng.symbols.get(name)
    if sym is None:
        raise MigrationError(f"unknown symbol {name}")
    if max_orders < 1:
        raise MigrationError("max_orders must be at least 1")
    if pc.done:
        raise MigrationError("the pre-copy is complete")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _take_piece(eng, name, sym, pc, max_orders)
    finally:
        if gc_was_enabled:
            gc.enable()


def _take_piece(eng: EngineState, name: str, sym: Symbol, pc: Pieces, max_orders: int) -> tuple[bytes, dict]:
    if pc.count == 0:  # the marks from here on (any older ones are of no use)
        sym.dirty = set()
    orders: list[Order] = []
    nbids = 0
    seen = pc.seen
    while len(orders) < max_orders and not pc.done:
        key = _next_queue(sym, pc.side, pc.price)
        if key == 0:
            if pc.side == BUY:
                pc.side = SELL
                pc.price = 0
            else:
                pc.done = True
            continue
        lvl = sym.bids[key] if key > 0 else sym.asks[-key]
        rec = QueueRec()
        h = 0
        o = lvl.head
        while o is not None:
            oid = o.oid
            if oid not in seen:  # else it moved here after its own piece: the freeze finds it
                seen.add(oid)
                orders.append(o)
                if o.side == BUY:
                    nbids += 1
                h = rec.add(oid, o.side, o.price, o.qty, o.filled, o.acct.name, o.unit, h)
            o = o.nxt
        rec.digest = h
        _add_rec(pc, key, rec)
        pc.price = key if key > 0 else -key
    if not pc.done and _next_queue(sym, pc.side, pc.price) == 0 and (pc.side == SELL or not sym.ask_keys):
        pc.done = True
    k = pc.count
    pc.count = k + 1
    # in the bytes: a restarted member reads its cursor back from them (``pieces_of``)
    extra = {"piece": k, "last": pc.done, "cursor": [pc.side, pc.price]}
    return _piece_blob(eng, name, sym, orders, nbids, extra)


def _piece_blob(eng: EngineState, name: str, sym: Symbol, orders: list[Order], nbids: int,
                extra: dict) -> tuple[bytes, dict]:
    """A version 2 export of ``orders`` (whole queues, priority order) and their holds: what
    the destination builds into its pre-copy (``migration_shadow.extend_shadow``)."""
    acct_ix: dict[Account, int] = {}
    accts: list[Account] = []
    held: list[int] = []
    book_b = encode_orders(orders, nbids, acct_ix, accts, held, MigrationError)
    mini = mini_engine(eng, sym)
    for ai in range(len(accts)):
        mini_account(mini, accts[ai].name, sym, held[2 * ai + SELL], held[2 * ai + BUY], [])
    holds = _holds_meta(sym, sum(held[0::2]), sum(held[1::2]), nbids > 0, len(orders) > nbids)
    meta = meta_head(eng, name, sym)
    meta.update({"orders": len(orders), "finished": 0, "accounts": len(accts), "holds": holds})
    meta.update(extra)
    return export_blob(mini, sym, name, meta, book_b, VERSION), meta


def _holds_meta(sym: Symbol, quote: int, base: int, buys: bool, sells: bool) -> dict[str, str]:
    """The meta's holds: asset -> units (as digits), for each asset some order holds."""
    out: dict[str, str] = {}
    if buys or quote:
        out[sym.quote] = str(quote)
    if sells or base:
        out[sym.base] = str(base)
    return {a: out[a] for a in sorted(out)}


def pieces_of(blobs: list[bytes], sym: Symbol) -> Pieces:
    """The source's records of the pieces ``blobs`` (its own, in order), read back from their
    bytes after a restart: the marks are lost, so the freeze walks every queue."""
    pc = Pieces()
    pc.all_dirty = True
    for blob in blobs:
        meta, mini, c, _delta = _read(blob)
        names = [a.name for a in mini.accounts.values()]
        last_key = 0
        rec = QueueRec()
        h = 0
        for i in range(len(c.oid)):
            p = c.price[i]
            buy = i < c.bids
            key = p if buy else -p
            if key != last_key:
                if last_key != 0:
                    rec.digest = h
                    _add_rec(pc, last_key, rec)
                rec = QueueRec()
                h = 0
                last_key = key
            side = BUY if buy else SELL
            oid = c.oid[i]
            pc.seen.add(oid)
            h = rec.add(oid, side, p, c.qty[i], c.filled[i], names[c.acct[i]],
                        sym.buy_unit(p) if buy else sym.bpl, h)
        if last_key != 0:
            rec.digest = h
            _add_rec(pc, last_key, rec)
        cur = meta["cursor"]
        pc.side = int(cur[0])
        pc.price = int(cur[1])
        pc.done = bool(meta["last"])
        pc.count += 1
    return pc


def export_delta_pieces(eng: EngineState, name: str, pc: Pieces, base_sha: str) -> tuple[bytes, dict]:
    """The freeze after a pre-copy in pieces (``base_sha``: ``pieces_sha`` of them): the
    symbol's book and its holds leave ``eng`` and the export holds what changed since the
    pieces (format version 3, read by ``migration_shadow.import_pieces``), found by walking only the
    queues marked since the first piece and those no piece holds. ``pc`` is used up."""
    sym = eng.symbols.get(name)
    if sym is None:
        raise MigrationError(f"unknown symbol {name}")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _export_delta_pieces(eng, name, sym, pc, base_sha)
    finally:
        if gc_was_enabled:
            gc.enable()


class _Delta:
    __slots__ = ("removed", "ch_oid", "ch_qty", "ch_filled", "appended", "app_bids", "walked")

    def __init__(self) -> None:
        self.removed: list[int] = []
        self.ch_oid: list[int] = []
        self.ch_qty: list[int] = []
        self.ch_filled: list[int] = []
        self.appended: list[Order] = []
        self.app_bids = 0
        self.walked = 0


def _walk_queue(pc: Pieces, key: int, lvl: Level | None, d: _Delta) -> tuple[int, int]:
    """A queue that may have changed since its piece: its delta (into ``d``), its record's
    holds replaced by what it holds now; returns (orders, digest) of it now."""
    rec = pc.queues.get(key)
    pos: dict[int, int] = {}
    if rec is not None:
        _sub_rec(pc, key, rec)
        for i in range(len(rec.oids)):
            pos[rec.oids[i]] = i
    kept = bytearray(len(pos))
    now = QueueRec()
    n = 0
    h = 0
    last = -1
    appending = False
    o = lvl.head if lvl is not None else None
    while o is not None:
        h = _mix(h, o.oid, o.side, o.price, o.qty, o.filled)
        n += 1
        v = now.accts.get(o.acct.name)
        if v is None:
            v = now.accts[o.acct.name] = [0, 0]
        v[0] += 1
        v[1] += o.qty * o.unit
        i = pos.get(o.oid, -1)
        if not appending and i > last:
            last = i
            kept[i] = 1
            assert rec is not None
            if rec.qty[i] != o.qty or rec.filled[i] != o.filled:
                d.ch_oid.append(o.oid)
                d.ch_qty.append(o.qty)
                d.ch_filled.append(o.filled)
        else:
            appending = True
            d.appended.append(o)
            if o.side == BUY:
                d.app_bids += 1
        o = o.nxt
    if rec is not None:
        for i in range(len(rec.oids)):
            if not kept[i]:
                d.removed.append(rec.oids[i])
    _add_rec(pc, key, now)
    d.walked += n
    return n, h


def _export_delta_pieces(eng: EngineState, name: str, sym: Symbol, pc: Pieces,
                         base_sha: str) -> tuple[bytes, dict]:
    dirty = sym.dirty
    sym.dirty = None
    walk_all = pc.all_dirty or dirty is None
    marks: set[int] = set() if dirty is None else dirty
    d = _Delta()
    n = 0
    h = 0
    queues = pc.queues
    for keys, levels, sgn in ((sym.bid_keys, sym.bids, 1), (sym.ask_keys, sym.asks, -1)):
        for i in range(len(keys) - 1, -1, -1):
            key = keys[i]
            rec = queues.get(key)
            if rec is not None and not walk_all and key not in marks:
                qn = len(rec.oids)
                qd = rec.digest
            else:
                qn, qd = _walk_queue(pc, key, levels[key * sgn], d)
            h = fold_level(h, key, qn, qd)
            n += qn
    # queues a piece holds that are gone now: every order of theirs removed
    gone = [key for key in queues if (key > 0 and key not in sym.bids) or (key < 0 and -key not in sym.asks)]
    for key in gone:
        _walk_queue(pc, key, None, d)
        del queues[key]
    d.removed.sort()  # one order whatever was walked: the same bytes on every member
    # the accounts with orders in the book, by name, then those with only finished orders of
    # the symbol (in the engine's order)
    accts: list[Account] = []
    acct_ix: dict[Account, int] = {}
    hq = 0
    hb = 0
    for nm in sorted(pc.held):
        t = pc.held[nm]
        if t[0] or t[2]:
            a = eng.accounts[nm]
            acct_ix[a] = len(accts)
            accts.append(a)
            hq += t[1]
            hb += t[3]
    with_orders = len(accts)
    fins = finished_of(eng, sym, acct_ix, accts)
    scratch = [0] * (2 * len(accts))
    naccts = len(accts)
    block = encode_orders(d.appended, d.app_bids, acct_ix, accts, scratch, MigrationError)
    if len(accts) != naccts:  # pragma: no cover - every walked order's account is counted
        raise MigrationError("an appended order's account has no orders in the records")
    parts = [_U64.pack(len(block)), block]
    for col in (d.removed, d.ch_oid, d.ch_qty, d.ch_filled):
        parts.append(_U64.pack(len(col)))
        if col:
            parts.append(col_bytes(col, 4))
    book_b = b"".join(parts)
    mini = mini_engine(eng, sym)
    finished_n = 0
    buys = False
    sells = False
    for ai in range(len(accts)):
        acct = accts[ai]
        ht: list[int] | None = pc.held.get(acct.name) if ai < with_orders else None
        if ht is not None:
            buys = buys or ht[0] > 0
            sells = sells or ht[2] > 0
        finished_n += mini_account(mini, acct.name, sym, ht[3] if ht is not None else 0,
                                   ht[1] if ht is not None else 0, fins.get(acct, []))
    meta = meta_head(eng, name, sym)
    meta.update({
        "orders": n, "finished": finished_n, "accounts": len(mini.accounts),
        "holds": _holds_meta(sym, hq, hb, buys, sells) if n else {},
        "precopy": base_sha, "appended": len(d.appended), "removed": len(d.removed),
        "changed": len(d.ch_oid), "digest": h, "ldigest": 1, "pieces": pc.count,
    })
    pc.walked = d.walked
    blob = export_blob(mini, sym, name, meta, book_b, DELTA_VERSION)
    pc.detached = detach(sym, accts[:with_orders], pc, n)
    return blob, meta


class Detached:
    """A book taken out whole at the freeze (``detach``): its orders are still in the engine's
    and their accounts' indexes until ``cleanup`` takes them out, in the book's priority order
    from a cursor. Not state: a member restored from a snapshot never had them in its indexes
    (a snapshot holds the books, and the indexes are made from them)."""

    __slots__ = ("sym", "levels", "li", "nxt", "total", "done")

    def __init__(self, sym: Symbol, levels: list[Level], total: int) -> None:
        self.sym = sym
        self.levels = levels       # bids best first, then asks best first
        self.li = 0                # the level the cursor is in
        self.nxt: Order | None = levels[0].head if levels else None  # the next order out
        self.total = total
        self.done = 0              # orders taken out so far


def detach(sym: Symbol, accts: list[Account], pc: Pieces, total: int) -> Detached:
    """The book leaves the symbol whole and its holds leave the accounts as one sum per account
    and asset (from the pieces' records): O(levels + accounts), no walk of the orders (that walk
    was nearly all of the freeze's cost). The orders stay in the indexes, skipped by every
    reader (``Symbol.detached``), until ``cleanup`` has taken the last one out."""
    for a in accts:
        t = pc.held[a.name]
        if t[1]:
            a.bal[sym.quote].held -= t[1]
        if t[3]:
            a.bal[sym.base].held -= t[3]
    levels = [sym.bids[k] for k in reversed(sym.bid_keys)]
    levels.extend([sym.asks[-k] for k in reversed(sym.ask_keys)])
    sym.bids = {}
    sym.asks = {}
    sym.bid_keys = []
    sym.ask_keys = []
    sym.detached = total > 0
    return Detached(sym, levels, total)


def cleanup(eng: EngineState, det: Detached, upto: int) -> int:
    """Take the detached book's orders out of the engine's and their accounts' open orders and
    the client order id index until ``upto`` of them are out (in priority order: the same ones
    on every member); returns how many are out. The last one clears ``Symbol.detached``. Each
    order leaves its level's links too: a member's snapshots freeze the book out of the cyclic
    collector, so only reference counting can free it (linked, it stayed for good)."""
    orders = eng.orders
    o = det.nxt
    levels = det.levels
    li = det.li
    done = det.done
    goal = min(upto, det.total)
    while done < goal:
        while o is None and li + 1 < len(levels):
            lvl = levels[li]
            lvl.head = None
            lvl.tail = None
            li += 1
            o = levels[li].head
        if o is None:  # pragma: no cover - ``total`` counts the detached levels' orders
            det.total = done
            break
        key = o.key
        del orders[key]
        acct = o.acct
        del acct.open[key]
        c = o.coid
        # (a pending client order id index is built from the open orders: it never holds it)
        if c is not None and acct.coids.get(c) is o:
            del acct.coids[c]
        done += 1
        n = o.nxt
        o.lvl = None
        o.prev = None
        o.nxt = None
        o = n
    det.nxt = o
    det.li = li
    det.done = done
    if done >= det.total:
        det.sym.detached = False
        for lvl in levels[li:]:
            lvl.head = None
            lvl.tail = None
        det.levels = []
        det.nxt = None
    return done
