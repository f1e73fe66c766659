"""Moving one symbol between engines: export, import, drop (docs/migration.md).

An export is the symbol's whole matching state at one log position: its settings, its book in
priority order with remaining quantities, the funds its open orders hold (per account and
asset), the finished orders that are still in their accounts' dedup windows (the idempotency
state of the symbol), and the source's id counters. It is deterministic bytes with a checksum:

    b"MXSYMEXP" | u16 version (2) | u32 meta length | meta (JSON, sorted keys)
    | u64 state length | state | u64 book length | book | blake2b-256 of all before it

state: an engine snapshot (the snapshot codec) of a small engine holding the symbol without its
book, the accounts that have orders in it (their balances are exactly the holds of those
orders) and their finished orders of it. book: the open orders in priority order (bids best
first, then asks best first), column by column:

    u64 bids | u64 asks | 11 columns of one int per order | u64 + client order id bytes
    | u64 + placement event bytes

each column one code byte (0: all zero, no data; 1, 2, 3, 4: int8, int16, int32, int64 little
endian) and its values: order id, price and time stamp as differences from the previous order,
quantity, filled, price at placement minus price, quantity at placement minus quantity minus
filled, account (index into the state's accounts), flags (the snapshot's), client order id
length and event length (0: none). Most columns of a real book take one or two bytes an order
(version 1, the whole book in the snapshot codec, took about 75). Version 1 exports are still
read.

``export_symbol`` takes the open orders and their holds out of the source (the holds are then in
transit, inside the export); the symbol and its finished orders stay until ``drop_symbol``, so a
source that takes the symbol back (an abort: ``import_symbol`` of its own export) is restored
exactly. ``import_symbol`` checks everything before it changes anything, then builds the book in
one pass (no matching path: the orders go straight into their levels in priority order).

The imports walk every order of the book in one log message (~50 ms at 100,000 orders). A worker
process hosts a member of every partition, and their services share its one interpreter, so
another partition's member could not run for as long: they take ``pause``, a function the
service gives (it lets the process's other threads run), and call it every ``PAUSE_EVERY``
orders. It changes nothing here, so the result is the same with or without it.

Compiled with the rest of the engine (mypyc); no clock, network or JVM: every member runs it at
the same log position.
"""

from __future__ import annotations

import gc
import hashlib
import struct
import sys
from array import array
from collections import deque
from collections.abc import Callable
from typing import Final, TypeVar

import orjson

# the book's column encoding, shared with engine snapshots (version 4)
from .columns import Cols as _Cols
from .columns import col_bytes, decode_orders, encode_orders
from .errors import MigrationError, SnapshotError
from .model import BUY, LIMIT, OPEN, SELL, Account, Bal, EngineState, Level, Order, Symbol, stale
from .snapshot import (
    _F_COID,
    _F_EV,
    _F_MARKET,
    _F_POST_ONLY,
    _F_SELL,
    _F_STATUS_SHIFT,
    _F_STP_SHIFT,
    _F_TIF_SHIFT,
    _events_bytes,
    _flags,
    dump,
    load,
)

MAGIC = b"MXSYMEXP"
VERSION = 2
# a freeze after a pre-copy: the book section holds what changed since (``export_delta``)
DELTA_VERSION = 3
_READS = (1, 2, 3)
# the digest of a book (``_mix``): modulo a prime below 2^31, so every step stays a short int
_DIG_MOD: Final = 2147483647
_DIG_MUL: Final = 1000003
_HDR = struct.Struct("<8sHI")
_U64 = struct.Struct("<Q")
_DIGEST = 32
# the snapshot's order flags, as constants of this module (compiled: no lookup per order)
_FL_SELL: Final = _F_SELL
_FL_MARKET: Final = _F_MARKET
_FL_TIF_SHIFT: Final = _F_TIF_SHIFT
_FL_POST_ONLY: Final = _F_POST_ONLY
_FL_STP_SHIFT: Final = _F_STP_SHIFT
_FL_STATUS_SHIFT: Final = _F_STATUS_SHIFT
_FL_COID: Final = _F_COID
_FL_EV: Final = _F_EV
# orders between two calls of an import's ``pause`` (about 2 ms of a compiled import's work)
PAUSE_EVERY: Final = 4096
Pause = Callable[[], object] | None
# settings that must agree when an export lands on an engine that still has the symbol
_SETTINGS = ("base", "quote", "tick_c", "tick_d", "lot_c", "lot_d", "min_qty", "max_qty",
             "max_price", "maker_bps", "taker_bps", "stp_default", "band_bps")


_R = TypeVar("_R")


def without_gc(fn: Callable[[], _R]) -> _R:
    """``fn()`` with the cyclic collector off: it makes many small objects, none of them garbage,
    so a collection would only cost time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fn()
    finally:
        if was_enabled:
            gc.enable()


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


# a pre-copy's book as the freeze compares with it: order id -> (its index in the pre-copy's
# priority order, price, remaining quantity, filled quantity)
Baseline = dict[int, tuple[int, int, int, int]]


def _mix(h: int, oid: int, side: int, price: int, qty: int, filled: int) -> int:
    """One order into a book's digest (order, side, price, remaining, filled, in priority order):
    what the destination checks the book it composed against (a self-check, not a MAC). One
    modulo an order: every term is below 2^35 and ``h`` below 2^31, so the arithmetic stays in
    short ints (compiled: no big-int arithmetic)."""
    v = (oid % _DIG_MOD) * 8 + side + (price % _DIG_MOD) * 5 + (qty % _DIG_MOD) * 3 + (filled % _DIG_MOD) * 7
    return (h * _DIG_MUL + v) % _DIG_MOD


def fold_level(h: int, key: int, n: int, qd: int) -> int:
    """One queue into a book's level digest (queues in priority order: bids best first, then asks
    best first): its key (bids +price, asks -price), its order count and its digest (``_mix`` of
    its orders from 0, in time priority). A
    freeze after a pre-copy in pieces keeps each untouched queue's digest from its piece, so it
    folds the book without walking it (migration_pieces.py)."""
    v = (key % _DIG_MOD) * 5 + (n % _DIG_MOD) * 3 + qd
    return (h * _DIG_MUL + v) % _DIG_MOD


def baseline_of(blob: bytes) -> Baseline:
    """The baseline of a pre-copy's export, read back from its bytes (after a restart: the same
    as ``precopy_symbol`` returned)."""
    _meta, _mini, c, _delta = _read(blob)
    out: Baseline = {}
    for i in range(len(c.oid)):
        out[c.oid[i]] = (i, c.price[i], c.qty[i], c.filled[i])
    return out


def _delta_book(book: list[Order], base: Baseline, acct_ix: dict[Account, int], accts: list[Account],
                held: list[int]) -> tuple[bytes, dict]:
    """The book section of a delta export, and its counts and digest for the meta.

    In each queue (one side, one price), the orders the pre-copy had at that price in the same
    relative order come first ("kept"; their remaining and filled quantities may have changed
    in place), then the rest ("appended": new orders, and pre-copy orders that lost their place,
    e.g. by an amend up). The destination removes every pre-copy order not kept and appends the
    appended ones at their queue's tail, which gives this queue exactly: a queue only ever grows
    at its tail. Accounts and holds (``acct_ix``, ``accts``, ``held``) are of the whole book."""
    kept = bytearray(len(base))  # by the pre-copy's index: 1 if kept
    ch_oid: list[int] = []
    ch_qty: list[int] = []
    ch_filled: list[int] = []
    appended: list[Order] = []
    app_bids = 0
    h = 0
    side = -1
    price = -1
    last = -1
    appending = False
    for o in book:
        a = o.acct
        ai = acct_ix.get(a)
        if ai is None:
            ai = acct_ix[a] = len(accts)
            accts.append(a)
            held.append(0)
            held.append(0)
        held[2 * ai + o.side] += o.qty * o.unit
        h = _mix(h, o.oid, o.side, o.price, o.qty, o.filled)
        if o.side != side or o.price != price:
            side = o.side
            price = o.price
            last = -1
            appending = False
        b = base.get(o.oid)
        if not appending and b is not None and b[0] > last and b[1] == price:
            last = b[0]
            kept[last] = 1
            if b[2] != o.qty or b[3] != o.filled:
                ch_oid.append(o.oid)
                ch_qty.append(o.qty)
                ch_filled.append(o.filled)
        else:
            appending = True
            appended.append(o)
            if o.side == BUY:
                app_bids += 1
    removed = [oid for oid, b in base.items() if not kept[b[0]]]
    # the appended orders' accounts are all in acct_ix already: their holds are counted above
    scratch = [0] * len(held)
    block = encode_orders(appended, app_bids, acct_ix, accts, scratch, MigrationError)
    parts = [_U64.pack(len(block)), block]
    for col in (removed, ch_oid, ch_qty, ch_filled):
        parts.append(_U64.pack(len(col)))
        if col:
            parts.append(col_bytes(col, 4))
    extra = {"appended": len(appended), "removed": len(removed), "changed": len(ch_oid), "digest": h}
    return b"".join(parts), extra


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


def _cols_of(orders: list[Order], bids: int, acct_ix: dict[str, int]) -> _Cols:
    c = _Cols()
    c.bids = bids
    for o in orders:
        c.oid.append(o.oid)
        c.price.append(o.price)
        c.qty.append(o.qty)
        c.oprice.append(o.oprice)
        c.oqty.append(o.oqty)
        c.filled.append(o.filled)
        c.ts.append(o.ts)
        c.acct.append(acct_ix[o.acct.name])
        c.flags.append(_flags(o))
        c.coids.append(o.coid)
        c.evs.append(None if o.ev is None else _events_bytes(o))
    return c


def export_symbol(eng: EngineState, name: str) -> tuple[bytes, dict]:
    """Export ``name`` from ``eng``: returns (blob, meta) and takes the symbol's open orders and
    their holds out of ``eng`` (the symbol and its finished orders stay until ``drop_symbol``).
    The symbol's book update sequence (market data) travels in the state and in the meta."""
    blob, meta, _base = _export_gc(eng, name, True, None, "")
    return blob, meta


def precopy_symbol(eng: EngineState, name: str) -> tuple[bytes, dict, Baseline]:
    """The pre-copy: an export of ``name`` as it is now (the same bytes ``export_symbol`` would
    make here) that changes nothing, so the symbol keeps trading; and the baseline the freeze
    compares the book with (``export_delta``)."""
    blob, meta, base = _export_gc(eng, name, False, None, "")
    assert base is not None
    return blob, meta, base


def export_delta(eng: EngineState, name: str, base: Baseline, base_sha: str) -> tuple[bytes, dict]:
    """The freeze after a pre-copy: like ``export_symbol`` (the book and its holds leave
    ``eng``), but the export's book holds only what changed since the pre-copy whose export has
    SHA-256 ``base_sha`` and baseline ``base`` (format version 3, ``import_delta``): the orders
    gone or moved in their queue, the remaining and filled quantities that changed in place, and
    the orders added at a queue's tail. Its state (settings, holds, finished orders) is whole.
    Costs one pass over the book (no encoding of it): the pause is the delta's, not the book's."""
    blob, meta, _base = _export_gc(eng, name, True, base, base_sha)
    return blob, meta


def _export_gc(eng: EngineState, name: str, take: bool, base: Baseline | None,
               base_sha: str) -> tuple[bytes, dict, Baseline | None]:
    sym = eng.symbols.get(name)
    if sym is None:
        raise MigrationError(f"unknown symbol {name}")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small objects, none of them garbage: a collection only costs time
    try:
        return _export(eng, name, sym, take, base, base_sha)
    finally:
        if gc_was_enabled:
            gc.enable()


def _export(eng: EngineState, name: str, sym: Symbol, take: bool, base: Baseline | None,
            base_sha: str) -> tuple[bytes, dict, Baseline | None]:
    book = _book(sym)
    nbids = 0
    for o in book:
        if o.side != BUY:
            break
        nbids += 1
    mini = mini_engine(eng, sym)
    acct_ix: dict[Account, int] = {}
    accts: list[Account] = []
    held: list[int] = []
    extra: dict = {}
    if base is None:
        book_b = encode_orders(book, nbids, acct_ix, accts, held, MigrationError)
    else:
        book_b, extra = _delta_book(book, base, acct_ix, accts, held)
        extra["precopy"] = base_sha
    # the accounts with orders in the book (in their first order's priority), then those with
    # only finished orders of the symbol
    fins = finished_of(eng, sym, acct_ix, accts)
    held.extend([0] * (2 * len(accts) - len(held)))
    finished_n = 0
    hold_quote = 0
    hold_base = 0
    for ai in range(len(accts)):
        acct = accts[ai]
        hold_quote += held[2 * ai + BUY]
        hold_base += held[2 * ai + SELL]
        finished_n += mini_account(mini, acct.name, sym, held[2 * ai + SELL], held[2 * ai + BUY],
                                   fins.get(acct, []))
    holds: dict[str, int] = {}
    if book:
        holds = {sym.base: hold_base, sym.quote: hold_quote}
        holds = {a: v for a, v in holds.items() if v or a in _assets_held(book, sym)}
    meta = meta_head(eng, name, sym)
    meta.update({
        "orders": len(book), "finished": finished_n, "accounts": len(mini.accounts),
        # asset -> units held by the exported orders (as digits: may exceed 64 bits)
        "holds": {a: str(holds[a]) for a in sorted(holds)},
    })
    meta.update(extra)

    baseline: Baseline | None = None
    if take:
        # take the book and its holds out of the source (the export now carries them)
        orders = eng.orders
        for o in book:
            acct = o.acct
            acct.coid_index()  # build a pending index before changing what it is built from
            o.hb.held -= o.qty * o.unit
            key = o.key
            del orders[key]
            del acct.open[key]
            c = o.coid
            if c is not None and acct.coids.get(c) is o:
                del acct.coids[c]
    else:
        baseline = {}
        i = 0
        for o in book:
            baseline[o.oid] = (i, o.price, o.qty, o.filled)
            i += 1
    blob = export_blob(mini, sym, name, meta, book_b, VERSION if base is None else DELTA_VERSION)
    if take:  # the book has left the engine
        sym.bids = {}
        sym.asks = {}
        sym.bid_keys = []
        sym.ask_keys = []
    return blob, meta, baseline


def finished_of(eng: EngineState, sym: Symbol, acct_ix: dict[Account, int],
                accts: list[Account]) -> dict[Account, list[Order]]:
    """Each account's finished orders of ``sym`` (the symbol's idempotency state); an account
    with some that is not in ``accts`` yet is added at its end (in the engine's own, insertion,
    order: the same on every member)."""
    fins: dict[Account, list[Order]] = {}
    for acct in eng.accounts.values():
        fin = [o for o in acct.finished if o.sym is sym]
        if fin:
            fins[acct] = fin
            if acct not in acct_ix:
                acct_ix[acct] = len(accts)
                accts.append(acct)
    return fins


def mini_account(mini: EngineState, name: str, sym: Symbol, base_held: int, quote_held: int,
                 fin: list[Order]) -> int:
    """Account ``name`` in an export's small engine: the holds it takes along and its finished
    orders of ``sym`` (their cached snapshot rows forgotten); returns how many those are."""
    m = Account(name)
    m.bal[sym.base] = Bal(0, base_held)
    m.bal[sym.quote] = Bal(0, quote_held)
    for o in fin:
        _detach_row(o)
    m.finished = deque(fin)
    mini.accounts[name] = m
    return len(fin)


def mini_engine(eng: EngineState, sym: Symbol) -> EngineState:
    """The small engine an export's state is: ``eng``'s id counters and ``sym``'s assets."""
    mini = EngineState(dedup_window=eng.dedup_window)
    mini.next_oid = eng.next_oid
    mini.next_tid = eng.next_tid
    for asset in (sym.base, sym.quote):
        mini.assets[asset] = eng.assets[asset]
        mini.fees[asset] = 0
    return mini


def meta_head(eng: EngineState, name: str, sym: Symbol) -> dict:
    """The meta every export starts with: the symbol, its assets and the source's counters."""
    return {"symbol": name, "base": sym.base, "quote": sym.quote,
            "decimals": {sym.base: eng.assets[sym.base], sym.quote: eng.assets[sym.quote]},
            "next_oid": eng.next_oid, "next_tid": eng.next_tid, "seq": _seq(sym)}


def export_blob(mini: EngineState, sym: Symbol, name: str, meta: dict, book_b: bytes, version: int) -> bytes:
    """An export's bytes: ``mini`` holding ``sym``'s state without its book (the live object,
    its book swapped out while ``dump`` reads it: its settings, sequence and trades), the
    accounts' holds and finished orders, then ``book_b``."""
    bids, asks, bid_keys, ask_keys = sym.bids, sym.asks, sym.bid_keys, sym.ask_keys
    sym.bids = {}
    sym.asks = {}
    sym.bid_keys = []
    sym.ask_keys = []
    mini.symbols[name] = sym
    try:
        state = dump(mini)
    finally:
        sym.bids, sym.asks, sym.bid_keys, sym.ask_keys = bids, asks, bid_keys, ask_keys
    meta_b = orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)
    body = b"".join([_HDR.pack(MAGIC, version, len(meta_b)), meta_b, _U64.pack(len(state)), state,
                     _U64.pack(len(book_b)), book_b])
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def _assets_held(book: list[Order], sym: Symbol) -> set[str]:
    """The assets some exported order holds (a hold of 0 units still names its asset)."""
    out: set[str] = set()
    for o in book:
        out.add(sym.quote if o.side == BUY else sym.base)
        if len(out) == 2:
            break
    return out


def export_version(blob: bytes) -> int:
    """The format version an export's header names (0 if it has none): 3 is a delta."""
    if len(blob) < _HDR.size:
        return 0
    magic, version, _mlen = _HDR.unpack_from(blob, 0)
    return int(version) if magic == MAGIC else 0


def read_export(blob: object) -> tuple[dict, EngineState]:
    """Check and decode an export: (meta, the small engine it holds, without its book).
    Raises MigrationError."""
    meta, mini, _cols, _delta = _read(blob)
    return meta, mini


# a delta export's lists: removed order ids, then order id, remaining and filled of each order
# changed in place
_Delta = tuple[list[int], list[int], list[int], list[int]]


def _int64s(b: bytes, pos: int) -> tuple[list[int], int]:
    (n,) = _U64.unpack_from(b, pos)
    pos += _U64.size
    if n > (len(b) - pos) // 8:
        raise MigrationError("export delta truncated")
    a = array("q", b[pos:pos + 8 * n])
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist(), pos + 8 * n


def _read_delta(b: bytes) -> tuple[_Cols, _Delta]:
    (blen,) = _U64.unpack_from(b, 0)
    if _U64.size + blen > len(b):
        raise MigrationError("export delta truncated")
    cols = decode_orders(b[_U64.size:_U64.size + blen], MigrationError)
    pos = _U64.size + blen
    removed, pos = _int64s(b, pos)
    ch_oid, pos = _int64s(b, pos)
    ch_qty, pos = _int64s(b, pos)
    ch_filled, pos = _int64s(b, pos)
    if pos != len(b) or not len(ch_oid) == len(ch_qty) == len(ch_filled):
        raise MigrationError("export delta inconsistent")
    return cols, (removed, ch_oid, ch_qty, ch_filled)


def _read(blob: object) -> tuple[dict, EngineState, _Cols, _Delta | None]:
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
    if version not in _READS:
        raise MigrationError(f"export version {version} is not supported (this engine reads "
                             f"versions {', '.join(map(str, _READS))})")
    off = _HDR.size
    delta: _Delta | None = None
    try:
        meta = orjson.loads(body[off:off + mlen])
        off += mlen
        (slen,) = _U64.unpack_from(body, off)
        off += _U64.size
        if version == 1:
            if off + slen != len(body):
                raise MigrationError("export state length inconsistent")
        elif off + slen + _U64.size > len(body):
            raise MigrationError("export state length inconsistent")
        mini = load(body[off:off + slen], EngineState)
        off += slen
        if version >= 2:
            (blen,) = _U64.unpack_from(body, off)
            off += _U64.size
            if off + blen != len(body):
                raise MigrationError("export book length inconsistent")
            if version == DELTA_VERSION:
                cols, delta = _read_delta(body[off:])
            else:
                cols = decode_orders(body[off:], MigrationError)
    except SnapshotError as exc:
        raise MigrationError(f"export state corrupt: {exc}") from exc
    except (ValueError, struct.error) as exc:
        raise MigrationError(f"export malformed: {exc}") from exc
    if not isinstance(meta, dict) or list(mini.symbols) != [meta.get("symbol")] \
            or (version == DELTA_VERSION) != isinstance(meta.get("precopy"), str):
        raise MigrationError("export meta does not match its state")
    src = mini.symbols[meta["symbol"]]
    if version == 1:
        # the book is in the state: as columns, and out of the small engine
        book = _book(src)
        nbids = 0
        for o in book:
            if o.side != BUY:
                break
            nbids += 1
        ix = {a.name: i for i, a in enumerate(mini.accounts.values())}
        cols = _cols_of(book, nbids, ix)
        mini.orders.clear()
        for a in mini.accounts.values():
            a.open.clear()
        src.bids = {}
        src.asks = {}
        src.bid_keys = []
        src.ask_keys = []
    elif src.bid_keys or src.ask_keys or mini.orders:
        raise MigrationError("export state holds a book")
    return meta, mini, cols, delta


def _check_target(eng: EngineState, name: str, mini: EngineState, src: Symbol) -> Symbol | None:
    """The engine can take the export's symbol: same asset decimals, no book of it here, the
    same settings if it has the symbol. Returns the symbol it has (or None)."""
    for asset, dec in mini.assets.items():
        have = eng.assets.get(asset)
        if have is not None and have != dec:
            raise MigrationError(f"asset {asset} has {have} decimals here, {dec} in the export")
    cur = eng.symbols.get(name)
    if cur is not None:
        if cur.bid_keys or cur.ask_keys:
            raise MigrationError(f"symbol {name} already has a book here")
        if cur.detached:  # its orders would share a symbol with the detached ones
            raise MigrationError(f"symbol {name}'s book detached here is not cleaned up yet")
        for setting in _SETTINGS:
            if getattr(cur, setting) != getattr(src, setting):
                raise MigrationError(f"symbol {name} exists here with other settings ({setting})")
    return cur


def _check_rows(c: _Cols, src: Symbol, naccts: int, orders: dict[object, Order], pause: Pause = None) -> list[int]:
    """Each order of the columns well formed and in priority order (bids best first, then asks
    best first), none open in ``orders``; returns the holds per account (2 per account: quote
    held by buys, base held by sells)."""
    n = len(c.oid)
    held = [0] * (2 * naccts)  # per account: [quote held by buys, base held by sells]
    units: dict[int, int] = {}
    seen: set[int] = set()
    last = 0
    for i in range(n):
        if pause is not None and i & (PAUSE_EVERY - 1) == PAUSE_EVERY - 1:
            pause()
        f = c.flags[i]
        side = SELL if f & _FL_SELL else BUY
        p = c.price[i]
        q = c.qty[i]
        ai = c.acct[i]
        if side != (BUY if i < c.bids else SELL) or f & _FL_MARKET or (f >> _FL_STATUS_SHIFT) & 3 != OPEN \
                or q <= 0 or p <= 0 or not 0 <= ai < naccts or c.ts[i] < 0 or c.filled[i] < 0 \
                or (f & _FL_COID != 0) != (c.coids[i] is not None) or (f & _FL_EV != 0) != (c.evs[i] is not None):
            raise MigrationError(f"export book order {c.oid[i]} malformed")
        if i != 0 and i != c.bids and (p > last if side == BUY else p < last):
            raise MigrationError("export book out of priority order")
        last = p
        oid = c.oid[i]
        if oid in orders:
            raise MigrationError(f"order id {oid} is already open here")
        if oid in seen or oid <= 0:
            raise MigrationError(f"order id {oid} twice in the export")
        seen.add(oid)
        if side == SELL:
            unit = src.bpl
        else:
            u = units.get(p)
            if u is None:
                u = units[p] = src.buy_unit(p)
            unit = u
        held[2 * ai + side] += q * unit
    return held


def _check_holds(mini: EngineState, src: Symbol, held: list[int]) -> None:
    """Every account of the export holds exactly what its orders hold (``held`` as
    ``_check_rows`` returns it, in the export's account order)."""
    ai = 0
    for a in mini.accounts.values():
        for asset, b in a.bal.items():
            want = (held[2 * ai] if asset == src.quote else 0) + (held[2 * ai + 1] if asset == src.base else 0)
            if b.avail != 0 or b.held != want:
                raise MigrationError(f"export holds of {a.name} {asset} do not match its orders")
        ai += 1


def _check_import(eng: EngineState, meta: dict, mini: EngineState,
                  c: _Cols, pause: Pause) -> tuple[Symbol, Symbol | None]:
    name = meta["symbol"]
    src = mini.symbols[name]
    cur = _check_target(eng, name, mini, src)
    # the book: each order well formed and in priority order; its holds are the accounts'
    _check_holds(mini, src, _check_rows(c, src, len(mini.accounts), eng.orders, pause))
    return src, cur


def import_symbol(eng: EngineState, blob: object, pause: Pause = None) -> dict:
    """Add an export's symbol to ``eng``: the same book in the same priority, the holds credited
    as held to the same accounts, the finished orders remembered (older than the account's own;
    the window keeps its newest ``dedup_window``). Returns the export's meta plus what the import
    did. Raises MigrationError, changing nothing, if the export does not fit. ``pause``: see
    the module's doc."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # many small objects, none of them garbage: a collection only costs time
    try:
        return _import(eng, blob, pause)
    finally:
        if gc_was_enabled:
            gc.enable()


def _import(eng: EngineState, blob: object, pause: Pause) -> dict:
    meta, mini, cols, delta = _read(blob)
    if delta is not None:
        raise MigrationError("a delta export needs its pre-copy (import_delta)")
    src, cur = _check_import(eng, meta, mini, cols, pause)
    sym = _take_symbol(eng, meta["symbol"], mini, src, cur)
    accts, conflicts, skipped, forgotten = _adopt_accounts(eng, mini, sym, cur)
    conflicts += _build_book(eng, sym, cols, accts, pause)
    return {**meta, "coid_conflicts": conflicts, "finished_skipped": skipped,
            "finished_forgotten": forgotten}


def _take_symbol(eng: EngineState, name: str, mini: EngineState, src: Symbol, cur: Symbol | None) -> Symbol:
    """The export's assets and symbol in ``eng`` (checked by ``_check_target``)."""
    for asset, dec in mini.assets.items():
        if asset not in eng.assets:
            eng.assets[asset] = dec
            eng.fees[asset] = 0
    if cur is None:
        eng.symbols[name] = src
        return src
    # an empty copy: the source taking back its own export, or the symbol coming back to a
    # partition that once dropped it; the book's update sequence continues from the export
    cur.seq = src.seq
    return cur


def _adopt_accounts(eng: EngineState, mini: EngineState, sym: Symbol,
                    cur: Symbol | None) -> tuple[list[Account], int, int, int]:
    """The export's accounts in ``eng``: holds credited as held, finished orders remembered.
    Returns the accounts (in the export's order) and the client order id conflicts, finished
    orders skipped (already here) and forgotten (a full window)."""
    conflicts = 0
    skipped = 0
    forgotten = 0
    accts: list[Account] = []
    for m in mini.accounts.values():
        acct = eng.accounts.get(m.name)
        if acct is None:
            acct = eng.accounts[m.name] = Account(m.name)
        accts.append(acct)
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
    return accts, conflicts, skipped, forgotten


def _build_book(eng: EngineState, sym: Symbol, c: _Cols, accts: list[Account], pause: Pause) -> int:
    """The checked columns as the symbol's book, in one pass: each order straight into its
    level (priority order), the engine's and its account's open orders and the client order id
    index. Returns the client order ids that name another open order already (kept on it)."""
    bids: dict[int, Level] = {}
    asks: dict[int, Level] = {}
    bid_keys: list[int] = []
    ask_keys: list[int] = []
    # per account: (its coid index, quote balance, base balance)
    cells: list[tuple[dict[str, Order], Bal, Bal] | None] = [None] * len(accts)
    units: dict[int, int] = {}
    orders = eng.orders
    conflicts = 0
    lvl: Level | None = None
    last = -1
    for i in range(len(c.oid)):
        if pause is not None and i & (PAUSE_EVERY - 1) == PAUSE_EVERY - 1:
            pause()
        ai = c.acct[i]
        acct = accts[ai]
        cell = cells[ai]
        if cell is None:
            cell = cells[ai] = (acct.coid_index(), acct.bal[sym.quote], acct.bal[sym.base])
        idx, qb, bb = cell
        f = c.flags[i]
        p = c.price[i]
        if f & _FL_SELL:
            side = SELL
            unit = sym.bpl
            hb, rb = bb, qb
        else:
            side = BUY
            u = units.get(p)
            if u is None:
                u = units[p] = sym.buy_unit(p)
            unit = u
            hb, rb = qb, bb
        coid = c.coids[i]
        o = _new_order(c, i, acct, sym, side, unit, hb, rb)
        if lvl is None or p != last or i == c.bids:
            lvl = Level()
            if side == BUY:
                bids[p] = lvl
                bid_keys.append(p)
            else:
                asks[p] = lvl
                ask_keys.append(-p)
            last = p
        lvl.push(o)
        key = o.key
        orders[key] = o
        acct.open[key] = o
        if coid is not None:
            prev = idx.get(coid)
            if prev is not None and prev is not o and prev.status == OPEN:
                conflicts += 1
            else:
                idx[coid] = o
    bid_keys.reverse()
    ask_keys.reverse()
    sym.bids = bids
    sym.asks = asks
    sym.bid_keys = bid_keys
    sym.ask_keys = ask_keys
    return conflicts


def _new_order(c: _Cols, i: int, acct: Account, sym: Symbol, side: int, unit: int, hb: Bal, rb: Bal) -> Order:
    """Order ``i`` of checked columns, not yet in any level or index."""
    f = c.flags[i]
    o = Order(c.oid[i], acct, sym, side, c.price[i], c.qty[i], unit, hb, rb, c.coids[i], LIMIT,
              (f >> _FL_TIF_SHIFT) & 3, bool(f & _FL_POST_ONLY), (f >> _FL_STP_SHIFT) & 3, c.ts[i])
    o.oprice = c.oprice[i]
    o.oqty = c.oqty[i]
    o.filled = c.filled[i]
    o.ev = c.evs[i]
    return o


def build_shadow(base: bytes, dedup_window: int, pause: Pause = None) -> EngineState:
    """A pre-copy's export as a small engine of its own (the destination builds it while the
    symbol still trades at the source, so the freeze's pause does not build the book)."""
    shadow = EngineState(dedup_window=dedup_window)
    import_symbol(shadow, base, pause)
    return shadow


def import_delta(eng: EngineState, shadow: EngineState, base_sha: str, blob: object, pause: Pause = None) -> dict:
    """Add a delta export's symbol to ``eng``: ``shadow`` (``build_shadow`` of the pre-copy whose
    SHA-256 is ``base_sha``) with the delta applied is checked against the source's book (order
    count, digest of every order's id, side, price, remaining and filled in priority order, each
    account's holds), then its orders move into ``eng`` (no order is built in the pause but the
    delta's); the state (holds, finished orders) as in ``import_symbol``. Returns what
    ``import_symbol`` returns. Raises MigrationError, leaving ``eng`` unchanged (``shadow`` may
    be half changed then: build it again), if the export does not fit. ``pause``: see the
    module's doc."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _import_delta(eng, shadow, base_sha, blob, pause)
    finally:
        if gc_was_enabled:
            gc.enable()


def _import_delta(eng: EngineState, shadow: EngineState, base_sha: str, blob: object, pause: Pause) -> dict:
    meta, mini, c, delta = _read(blob)
    if delta is None:
        raise MigrationError("not a delta export")
    if meta["precopy"] != base_sha:
        raise MigrationError("the delta export is of another pre-copy")
    name = meta["symbol"]
    src = mini.symbols[name]
    ssym = shadow.symbols.get(name)
    if ssym is None:
        raise MigrationError(f"the pre-copy holds no {name}")
    for setting in _SETTINGS:
        if getattr(ssym, setting) != getattr(src, setting):
            raise MigrationError(f"{name}'s settings changed since the pre-copy ({setting})")
    cur = _check_target(eng, name, mini, src)
    macc = list(mini.accounts.values())
    _check_rows(c, src, len(macc), eng.orders)
    # the delta on the pre-copy's book: removed, changed in place, appended at the tails
    removed, ch_oid, ch_qty, ch_filled = delta
    sorders = shadow.orders
    for oid in removed:
        delta_remove(sorders, ssym, oid)
    for i in range(len(ch_oid)):
        delta_change(sorders, ch_oid[i], ch_qty[i], ch_filled[i])
    spare = Bal()  # the shadow's orders get their accounts' balances when they move
    for i in range(len(c.oid)):
        side = SELL if c.flags[i] & _FL_SELL else BUY
        p = c.price[i]
        o3 = _new_order(c, i, macc[c.acct[i]], ssym, side, ssym.bpl if side == SELL else ssym.buy_unit(p),
                        spare, spare)
        if o3.key in sorders:
            raise MigrationError(f"order {o3.oid} of the delta is in the pre-copy already")
        sorders[o3.key] = o3
        ssym.level_of(side, p).push(o3)
    # the composed book against the source's: count, digest, each account's holds
    book, h = _composed(ssym, bool(meta.get("ldigest")), pause)
    ix = {macc[i].name: i for i in range(len(macc))}
    held = [0] * (2 * len(macc))
    orders = eng.orders
    owner: list[int] = []  # each order's account, as its index in the export
    for j in range(len(book)):
        if pause is not None and j & (PAUSE_EVERY - 1) == PAUSE_EVERY - 1:
            pause()
        o = book[j]
        ai = ix.get(o.acct.name)
        if ai is None:
            raise MigrationError(f"order {o.oid}'s account {o.acct.name} is not in the export")
        owner.append(ai)
        held[2 * ai + o.side] += o.qty * o.unit
        if o.key in orders:
            raise MigrationError(f"order id {o.oid} is already open here")
    if len(book) != meta["orders"] or h != meta["digest"]:
        raise MigrationError("the book made of the pre-copy and the delta is not the source's")
    _check_holds(mini, src, held)
    # all checked: the symbol, its accounts and the shadow's book move into the engine
    sym = _take_symbol(eng, name, mini, src, cur)
    accts, conflicts, skipped, forgotten = _adopt_accounts(eng, mini, sym, cur)
    conflicts += _adopt_book(eng, sym, ssym, book, accts, owner, pause)
    del shadow.symbols[name]
    return {**meta, "coid_conflicts": conflicts, "finished_skipped": skipped,
            "finished_forgotten": forgotten}


def delta_remove(orders: dict[object, Order], sym: Symbol, oid: int) -> Order:
    """A delta's removal on a pre-copy's book (``orders``, ``sym``'s levels): order ``oid`` out
    of its queue, the queue gone if it was the last."""
    o = orders.pop(oid, None)
    if o is None:
        raise MigrationError(f"order {oid} of the delta is not in the pre-copy")
    lvl = o.lvl
    assert lvl is not None
    lvl.total -= o.qty
    lvl.remove(o)
    if lvl.head is None:
        sym.drop_level(o.side, o.price)
    return o


def delta_change(orders: dict[object, Order], oid: int, qty: int, filled: int) -> tuple[Order, int]:
    """A delta's change in place on a pre-copy's book: order ``oid``'s remaining and filled
    quantities; returns it and its remaining quantity before."""
    o = orders.get(oid)
    if o is None or qty <= 0 or filled < 0:
        raise MigrationError(f"order {oid} of the delta does not fit the pre-copy")
    lvl = o.lvl
    assert lvl is not None
    was = o.qty
    lvl.total += qty - was
    o.qty = qty
    o.filled = filled
    return o, was


def _composed(sym: Symbol, by_level: bool, pause: Pause) -> tuple[list[Order], int]:
    """The book in priority order and its digest, in one walk: ``_mix`` of every order in
    priority order, or (``by_level``: a freeze after a pre-copy in pieces) ``fold_level`` of
    each queue's digest."""
    out: list[Order] = []
    h = 0
    for keys, levels, sgn in ((sym.bid_keys, sym.bids, 1), (sym.ask_keys, sym.asks, -1)):
        for i in range(len(keys) - 1, -1, -1):
            o = levels[keys[i] * sgn].head
            qd = 0
            n = 0
            while o is not None:
                out.append(o)
                if pause is not None and len(out) & (PAUSE_EVERY - 1) == 0:
                    pause()
                if by_level:
                    qd = _mix(qd, o.oid, o.side, o.price, o.qty, o.filled)
                    n += 1
                else:
                    h = _mix(h, o.oid, o.side, o.price, o.qty, o.filled)
                o = o.nxt
            if by_level:
                h = fold_level(h, keys[i], n, qd)
    return out, h


def _adopt_book(eng: EngineState, sym: Symbol, ssym: Symbol, book: list[Order], accts: list[Account],
                owner: list[int], pause: Pause) -> int:
    """The shadow's checked ``book`` (``ssym``'s levels) as ``sym``'s, each order now of its
    account here (``accts[owner[i]]``); returns the client order id conflicts."""
    orders = eng.orders
    conflicts = 0
    # per account here: its client order id index, quote and base balances (looked up once)
    cells: list[tuple[dict[str, Order], Bal, Bal] | None] = [None] * len(accts)
    for i in range(len(book)):
        if pause is not None and i & (PAUSE_EVERY - 1) == PAUSE_EVERY - 1:
            pause()
        o = book[i]
        ai = owner[i]
        acct = accts[ai]
        cell = cells[ai]
        if cell is None:
            cell = cells[ai] = (acct.coid_index(), acct.bal[sym.quote], acct.bal[sym.base])
        idx, q, b = cell
        o.acct = acct
        o.sym = sym
        if o.side == BUY:
            o.hb, o.rb = q, b
        else:
            o.hb, o.rb = b, q
        key = o.key
        orders[key] = o
        acct.open[key] = o
        coid = o.coid
        if coid is not None:
            conflicts += claim_coid(idx, coid, o)
    move_levels(ssym, sym)
    return conflicts


def claim_coid(idx: dict[str, Order], coid: str, o: Order) -> int:
    """An imported open order's client order id into its account's index; 1 if another open
    order has it here (a conflict: the index keeps naming that one), else 0."""
    prev = idx.get(coid)
    if prev is not None and prev is not o and prev.status == OPEN:
        return 1
    idx[coid] = o
    return 0


def move_levels(frm: Symbol, to: Symbol) -> None:
    """``frm``'s book (its levels) becomes ``to``'s; ``frm`` is left without one."""
    to.bids = frm.bids
    to.asks = frm.asks
    to.bid_keys = frm.bid_keys
    to.ask_keys = frm.ask_keys
    frm.bids = {}
    frm.asks = {}
    frm.bid_keys = []
    frm.ask_keys = []


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
        if stale(o):  # a detached book's, waiting for its cleanup: its holds left at the freeze
            continue
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
