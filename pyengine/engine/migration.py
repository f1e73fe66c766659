"""Moving one symbol between engines: export, import, drop (docs/migration.md).

An export is the symbol's whole matching state at one log position: its settings, its book in
priority order with remaining quantities, the funds its open orders hold (per account and
asset), the finished orders that are still in their accounts' dedup windows (the idempotency
state of the symbol), and the source's id counters. It is deterministic bytes with a checksum:

    b"MXSYMEXP" | u16 version | u32 meta length | meta (JSON, sorted keys)
    | u64 state length | state (an engine snapshot holding only this symbol) | blake2b-256

The state part reuses the engine's snapshot codec on a small engine that holds the symbol, the
accounts that have orders in it (their balances are exactly the holds of those orders) and their
finished orders of it: one well-tested codec instead of a second one.

``export_symbol`` takes the open orders and their holds out of the source (the holds are then in
transit, inside the export); the symbol and its finished orders stay until ``drop_symbol``, so a
source that takes the symbol back (an abort: ``import_symbol`` of its own export) is restored
exactly. ``import_symbol`` checks everything before it changes anything.

Plain Python, no clock, network or JVM: every member runs it at the same log position.
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque

import orjson

from .errors import SnapshotError
from .model import BUY, OPEN, Account, Bal, EngineState, Order, Symbol
from .snapshot import _events_bytes, dump, load

MAGIC = b"MXSYMEXP"
VERSION = 1
_HDR = struct.Struct("<8sHI")
_U64 = struct.Struct("<Q")
_DIGEST = 32
# settings that must agree when an export lands on an engine that still has the symbol
_SETTINGS = ("base", "quote", "tick_c", "tick_d", "lot_c", "lot_d", "min_qty", "max_qty",
             "max_price", "maker_bps", "taker_bps", "stp_default", "band_bps")


class MigrationError(Exception):
    """An export or import that cannot be done; the engine is unchanged."""


def _book(sym: Symbol) -> list[Order]:
    """The symbol's open orders in priority order: bids best first, then asks best first."""
    out: list[Order] = []
    for keys, levels, sgn in ((sym.bid_keys, sym.bids, 1), (sym.ask_keys, sym.asks, -1)):
        for i in range(len(keys) - 1, -1, -1):
            o = levels[keys[i] * sgn].head
            while o is not None:
                out.append(o)
                o = o.nxt
    return out


def _held_asset(o: Order) -> str:
    return o.sym.quote if o.side == BUY else o.sym.base


def _detach_row(o: Order) -> None:
    """Forget ``o``'s cached snapshot row: it names the symbol by its index in the engine it was
    written for. Its events (kept at an offset into that row) become bytes of their own."""
    ev = o.ev
    row = o.row
    if isinstance(ev, int) and row is not None:
        o.ev = bytes(row[ev:])
    elif isinstance(ev, list):
        _events_bytes(o)
    o.row = None


def export_symbol(eng: EngineState, name: str) -> tuple[bytes, dict]:
    """Export ``name`` from ``eng``: returns (blob, meta) and takes the symbol's open orders and
    their holds out of ``eng`` (the symbol and its finished orders stay until ``drop_symbol``).
    The symbol's book update sequence (market data) travels in the state and in the meta."""
    sym = eng.symbols.get(name)
    if sym is None:
        raise MigrationError(f"unknown symbol {name}")
    book = _book(sym)
    mini = EngineState(dedup_window=eng.dedup_window)
    mini.next_oid = eng.next_oid
    mini.next_tid = eng.next_tid
    for asset in (sym.base, sym.quote):
        mini.assets[asset] = eng.assets[asset]
        mini.fees[asset] = 0
    mini.symbols[name] = sym  # the live object: dump reads its settings and book, changes neither
    held: dict[tuple[str, str], int] = {}
    for o in book:
        k = (o.acct.name, _held_asset(o))
        held[k] = held.get(k, 0) + o.qty * o.unit
    finished_n = 0
    # accounts in the engine's own (insertion) order: deterministic on every member
    for acct in eng.accounts.values():
        fin = [o for o in acct.finished if o.sym is sym]
        if not fin and not any(o.sym is sym for o in acct.open.values()):
            continue
        m = Account(acct.name)
        m.bal[sym.base] = Bal(0, held.get((acct.name, sym.base), 0))
        m.bal[sym.quote] = Bal(0, held.get((acct.name, sym.quote), 0))
        for o in fin:
            _detach_row(o)
        m.finished = deque(fin)
        mini.accounts[acct.name] = m
        finished_n += len(fin)
    holds: dict[str, int] = {}
    for (_a, asset), v in held.items():
        holds[asset] = holds.get(asset, 0) + v
    meta = {
        "symbol": name, "base": sym.base, "quote": sym.quote,
        "decimals": {sym.base: eng.assets[sym.base], sym.quote: eng.assets[sym.quote]},
        "next_oid": eng.next_oid, "next_tid": eng.next_tid, "seq": _seq(sym),
        "orders": len(book), "finished": finished_n, "accounts": len(mini.accounts),
        # asset -> units held by the exported orders (as digits: may exceed 64 bits)
        "holds": {a: str(holds[a]) for a in sorted(holds)},
    }
    state = dump(mini)
    meta_b = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)
    body = _HDR.pack(MAGIC, VERSION, len(meta_b)) + meta_b + _U64.pack(len(state)) + state
    blob = body + hashlib.blake2b(body, digest_size=_DIGEST).digest()

    # take the book and its holds out of the source (the export now carries them)
    for o in book:
        acct = o.acct
        acct.coid_index()  # build a pending index before changing what it is built from
        o.hb.held -= o.qty * o.unit
        del eng.orders[o.key]
        del acct.open[o.key]
        c = o.coid
        if c is not None and acct.coids.get(c) is o:
            del acct.coids[c]
    sym.bids = {}
    sym.asks = {}
    sym.bid_keys = []
    sym.ask_keys = []
    return blob, meta


def read_export(blob: object) -> tuple[dict, EngineState]:
    """Check and decode an export: (meta, the small engine it holds). Raises MigrationError."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise MigrationError("an export is bytes")
    b = bytes(blob)
    if len(b) < _HDR.size + _U64.size + _DIGEST:
        raise MigrationError("export truncated")
    body, digest = b[:-_DIGEST], b[-_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise MigrationError("export checksum mismatch (corrupt or truncated)")
    magic, version, mlen = _HDR.unpack_from(body, 0)
    if magic != MAGIC:
        raise MigrationError("not a symbol export (bad magic)")
    if version != VERSION:
        raise MigrationError(f"export version {version} is not supported (expected {VERSION})")
    off = _HDR.size
    try:
        meta = orjson.loads(body[off:off + mlen])
        off += mlen
        (slen,) = _U64.unpack_from(body, off)
        off += _U64.size
        if off + slen != len(body):
            raise MigrationError("export state length inconsistent")
        mini = load(body[off:], EngineState)
    except SnapshotError as exc:
        raise MigrationError(f"export state corrupt: {exc}") from exc
    except (ValueError, struct.error) as exc:
        raise MigrationError(f"export malformed: {exc}") from exc
    if not isinstance(meta, dict) or list(mini.symbols) != [meta.get("symbol")]:
        raise MigrationError("export meta does not match its state")
    return meta, mini


def _check_import(eng: EngineState, meta: dict, mini: EngineState) -> tuple[Symbol, Symbol | None]:
    name = meta["symbol"]
    src = mini.symbols[name]
    for asset, dec in mini.assets.items():
        have = eng.assets.get(asset)
        if have is not None and have != dec:
            raise MigrationError(f"asset {asset} has {have} decimals here, {dec} in the export")
    cur = eng.symbols.get(name)
    if cur is not None:
        if cur.bid_keys or cur.ask_keys:
            raise MigrationError(f"symbol {name} already has a book here")
        for f in _SETTINGS:
            if getattr(cur, f) != getattr(src, f):
                raise MigrationError(f"symbol {name} exists here with other settings ({f})")
    held: dict[tuple[str, str], int] = {}
    for o in _book(src):
        if o.key in eng.orders:
            raise MigrationError(f"order id {o.oid} is already open here")
        k = (o.acct.name, _held_asset(o))
        held[k] = held.get(k, 0) + o.qty * o.unit
    for a in mini.accounts.values():
        for asset, b in a.bal.items():
            if b.avail != 0 or b.held != held.get((a.name, asset), 0):
                raise MigrationError(f"export holds of {a.name} {asset} do not match its orders")
    return src, cur


def import_symbol(eng: EngineState, blob: object) -> dict:
    """Add an export's symbol to ``eng``: the same book in the same priority, the holds credited
    as held to the same accounts, the finished orders remembered (older than the account's own;
    the window keeps its newest ``dedup_window``). Returns the export's meta plus what the import
    did. Raises MigrationError, changing nothing, if the export does not fit."""
    meta, mini = read_export(blob)
    src, cur = _check_import(eng, meta, mini)
    name = meta["symbol"]
    for asset, dec in mini.assets.items():
        if asset not in eng.assets:
            eng.assets[asset] = dec
            eng.fees[asset] = 0
    if cur is None:
        sym = src
        eng.symbols[name] = sym
    else:
        # an empty copy: the source taking back its own export, or the symbol coming back to a
        # partition that once dropped it; the book's update sequence continues from the export
        sym = cur
        if hasattr(src, "seq"):
            sym.seq = src.seq
    conflicts = 0
    skipped = 0
    forgotten = 0
    for m in mini.accounts.values():
        acct = eng.accounts.get(m.name)
        if acct is None:
            acct = eng.accounts[m.name] = Account(m.name)
        idx = acct.coid_index()
        bals: dict[str, Bal] = {}
        for asset in (sym.base, sym.quote):
            b = acct.bal.get(asset)
            if b is None:
                b = acct.bal[asset] = Bal()
            b.held += m.bal[asset].held
            bals[asset] = b
        known = {o.oid for o in acct.finished if o.sym is sym} if cur is not None else set()
        fin: list[Order] = []
        for o in m.finished:
            if o.oid in known:
                skipped += 1  # still remembered here (the source's own copy)
                continue
            _adopt(o, acct, sym, bals)
            fin.append(o)
        if fin:
            # the imported orders count as older than the account's own, so a full window
            # forgets them first
            drop = max(0, len(fin) + len(acct.finished) - eng.dedup_window)
            for o in fin[:drop]:
                o.ev = None
            forgotten += min(drop, len(fin))
            while drop > len(fin):
                old = acct.finished.popleft()
                drop -= 1
                forgotten += 1
                c = old.coid
                if c is not None and idx.get(c) is old:
                    del idx[c]
                old.ev = None
            kept = fin[drop:]
            merged = deque(kept)
            merged.extend(acct.finished)
            acct.finished = merged
            for o in kept:
                c = o.coid
                if c is not None:
                    if c in idx and idx[c] is not o:
                        conflicts += 1
                    else:
                        idx[c] = o
    # the book: the mini engine's orders, re-pointed to this engine's accounts and balances
    levels = (src.bids, src.asks)
    keys = (src.bid_keys, src.ask_keys)
    if sym is not src:
        sym.bids, sym.asks = levels
        sym.bid_keys, sym.ask_keys = keys
    for o in _book(sym):
        acct = eng.accounts[o.acct.name]
        _adopt(o, acct, sym, {a: acct.bal[a] for a in (sym.base, sym.quote)})
        eng.orders[o.key] = o
        acct.open[o.key] = o
        c = o.coid
        if c is not None:
            idx = acct.coid_index()
            if c in idx and idx[c] is not o and idx[c].status == OPEN:
                conflicts += 1
            else:
                idx[c] = o
    return {**meta, "coid_conflicts": conflicts, "finished_skipped": skipped,
            "finished_forgotten": forgotten}


def _adopt(o: Order, acct: Account, sym: Symbol, bals: dict[str, Bal]) -> None:
    o.acct = acct
    o.sym = sym
    if o.side == BUY:
        o.hb, o.rb = bals[sym.quote], bals[sym.base]
    else:
        o.hb, o.rb = bals[sym.base], bals[sym.quote]


def drop_symbol(eng: EngineState, name: str) -> int:
    """Forget a symbol whose book was exported: its finished orders leave the dedup windows.
    The empty symbol itself stays (inert: the service answers MOVED for it): the accounts' fill
    histories still name it, and a later move back lands on it. Returns how many finished orders
    were forgotten."""
    sym = eng.symbols.get(name)
    if sym is None:
        raise MigrationError(f"unknown symbol {name}")
    if sym.bid_keys or sym.ask_keys:
        raise MigrationError(f"symbol {name} still has a book (export it first)")
    n = 0
    for acct in eng.accounts.values():
        if not any(o.sym is sym for o in acct.finished):
            continue
        idx = acct.coid_index()
        keep: deque[Order] = deque()
        for o in acct.finished:
            if o.sym is sym:
                n += 1
                c = o.coid
                if c is not None and idx.get(c) is o:
                    del idx[c]
                o.ev = None
            else:
                keep.append(o)
        acct.finished = keep
    return n


def _seq(sym: Symbol) -> int:
    # the market-data sequence (an engine without market data has none)
    v = getattr(sym, "seq", 0)
    return v if isinstance(v, int) else 0


def funds_problems(eng: EngineState, net_in: dict[str, int] | None = None) -> list[str]:
    """The funds invariants of one engine, as a list of what is broken (empty when all hold):
    per asset, available + held + fees = deposits - withdrawals + ``net_in`` (holds imported
    minus holds exported); per account and asset, held = the holds of its open orders."""
    out: list[str] = []
    held: dict[tuple[str, str], int] = {}
    for o in eng.orders.values():
        k = (o.acct.name, _held_asset(o))
        held[k] = held.get(k, 0) + o.qty * o.unit
    totals: dict[str, int] = dict(eng.fees)
    for acct in eng.accounts.values():
        for asset, b in acct.bal.items():
            if b.avail < 0 or b.held < 0:
                out.append(f"negative balance {acct.name} {asset}")
            if b.held != held.get((acct.name, asset), 0):
                out.append(f"held {acct.name} {asset}: {b.held} != orders' {held.get((acct.name, asset), 0)}")
            totals[asset] = totals.get(asset, 0) + b.avail + b.held
    flows: dict[str, int] = dict(net_in or {})
    for op, _a, asset, amount, _v, _tx in eng.txs.values():
        flows[asset] = flows.get(asset, 0) + (amount if op == "deposit" else -amount)
    for asset in sorted(set(totals) | set(flows)):
        if totals.get(asset, 0) != flows.get(asset, 0):
            out.append(f"conservation {asset}: balances+fees {totals.get(asset, 0)} != flows {flows.get(asset, 0)}")
    return out


def book_rows(eng: EngineState, name: str) -> list[tuple]:
    """The symbol's book as comparable rows (priority order): what tests compare across a move."""
    sym = eng.symbols.get(name)
    if sym is None:
        return []
    return [(o.oid, o.acct.name, o.side, o.price, o.qty, o.oqty, o.filled, o.coid, o.ts)
            for o in _book(sym)]
