"""Snapshot encoding: the whole engine state to canonical bytes and back.

Layout (all integers little-endian)::

    header  = b"MXENGSNP" | u16 version | u16 reserved(0) | u64 body_length
    body    = sections (see ``dump``)
    trailer = blake2b-256(header + body)   (none in version 5: version 4 for a checked container)

Orders are stored as columns of narrow integers (``columns.py``, the encoding the symbol export
shares since version 4): the open orders of every book in priority order, then the finished
orders (the dedup windows, most of a busy engine's state), each account's oldest first: ~18
bytes an open order and ~20 plus its events a finished one, against ~67 and ~120 in version 3.
Version 3 kept each finished order's encoded row and copied it into the next snapshot; version 4
writes one block of all finished orders, whose columns' widths depend on them all. A
``core.Engine`` keeps the encoded runs of its dedup windows and its fills' JSON between
snapshots (``snapcache.py``) and encodes only what changed since the last one, giving the same
bytes (``dump(eng, use_cache=False)`` encodes everything afresh: tests compare the two).
Restore builds a brand new Engine; any defect raises ``SnapshotError`` and nothing partial
escapes.
"""

from __future__ import annotations

import gc
import hashlib
import struct
import sys
from array import array
from collections import deque
from typing import Final, TypeVar

import orjson

# order flag bits under the names migration.py imports from here
from .columns import F_COID as _F_COID
from .columns import F_EV as _F_EV
from .columns import F_MARKET as _F_MARKET
from .columns import F_POST_ONLY as _F_POST_ONLY
from .columns import F_SELL as _F_SELL
from .columns import F_STATUS_SHIFT as _F_STATUS_SHIFT
from .columns import F_STP_SHIFT as _F_STP_SHIFT
from .columns import F_TIF_SHIFT as _F_TIF_SHIFT
from .columns import (
    Cols,
    decode_orders,
    encode_orders,
    events_bytes,
    get_col,
    order_flags,
    put_int_column,
)
from .errors import SnapshotError
from .model import (
    BUY,
    FILL,
    LIMIT,
    MARKET,
    OPEN,
    SELL,
    TRADE,
    Account,
    Bal,
    EngineState,
    Level,
    Order,
    Symbol,
    trade_record,
)
from .numbers import POW10, fmt_scaled
from .snapcache import SnapCache, Uncacheable, fill_row

# the class ``load`` builds: core.Engine, passed in so that this module needs only the state
E = TypeVar("E", bound=EngineState)

MAGIC = b"MXENGSNP"
VERSION = 4
# Version 1 (before 24 Nov 2026) kept finished orders in the order columns too; version 2
# (before 6 Dec 2026) had no market data section (sequences 0, no fills); version 3 (before
# 7 Dec 2026) stored orders as fixed-width columns and finished orders as rows; all still load.
# Version 5 is version 4 without the trailing digest, for a container that checks the bytes
# itself (the cluster's snapshot: a CRC32C over the whole service snapshot, and the archive's per
# frame): the blake2b of a 10 MB engine part was half of a warm take, on every member at once
# while the cluster waits (bench/reports/snapshot_write.md). An engine that reads only 1-4
# refuses it by its version number.
VERSION_UNSIGNED = 5
_READS: Final = (1, 2, 3, 4, 5)
_HDR = struct.Struct("<8sHHQ")
_DIGEST = 32
_BIG = sys.byteorder == "big"

_flags = order_flags
_events_bytes = events_bytes
_NONE = -(2**63)
# a finished order's row in versions 2 and 3: oid, price, qty, oprice, oqty, filled, ts, symbol
# index, flags, client order id length, events length; then the client order id (UTF-8) and the
# events
_ROW: Final = struct.Struct("<7qiHHI")
_I32: Final = "l" if array("l").itemsize == 4 else "i"
_U32: Final = "L" if array("L").itemsize == 4 else "I"


class _W:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack("<I", v))

    def i64(self, v: int) -> None:
        self.parts.append(struct.pack("<q", v))

    def big(self, v: int) -> None:
        n = (v.bit_length() + 8) // 8
        self.parts.append(struct.pack("<H", n))
        self.parts.append(v.to_bytes(n, "little", signed=True))

    def s(self, v: str) -> None:
        b = v.encode()
        self.parts.append(struct.pack("<I", len(b)))
        self.parts.append(b)

    def raw(self, b: bytes) -> None:
        self.parts.append(struct.pack("<Q", len(b)))
        self.parts.append(b)

    def arr(self, typecode: str, values: list[int]) -> None:
        a = array(typecode, values)
        if _BIG:
            a.byteswap()
        self.raw(a.tobytes())


class _R:
    __slots__ = ("mv", "pos")

    def __init__(self, mv: memoryview) -> None:
        self.mv = mv
        self.pos = 0

    def take(self, n: int) -> memoryview:
        p = self.pos
        if n < 0 or p + n > len(self.mv):
            raise SnapshotError("snapshot truncated")
        self.pos = p + n
        return self.mv[p:p + n]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack("<q", self.take(8))[0]

    def big(self) -> int:
        n = struct.unpack("<H", self.take(2))[0]
        return int.from_bytes(self.take(n), "little", signed=True)

    def s(self) -> str:
        return str(self.take(self.u32()), "utf-8")

    def raw(self) -> memoryview:
        return self.take(struct.unpack("<Q", self.take(8))[0])

    def arr(self, typecode: str) -> list[int]:
        a = array(typecode)
        a.frombytes(self.raw())
        if _BIG:
            a.byteswap()
        return a.tolist()  # list indexing is native in the compiled module, array's is not


def _body(eng: EngineState, use_cache: bool) -> list[bytes]:
    w = _W()
    w.i64(eng.dedup_window)
    w.i64(eng.next_oid)
    w.i64(eng.next_tid)
    assets = list(eng.assets)
    aidx = {an: i for i, an in enumerate(assets)}
    w.u32(len(assets))
    for an in assets:
        w.s(an)
        w.u32(eng.assets[an])
        w.big(eng.fees[an])
    syms = list(eng.symbols.values())
    sidx = {s.name: i for i, s in enumerate(syms)}
    w.u32(len(syms))
    for s in syms:
        w.s(s.name)
        w.u32(aidx[s.base])
        w.u32(aidx[s.quote])
        for v in (s.tick_c, s.tick_d, s.lot_c, s.lot_d, s.min_qty, s.max_qty, s.max_price,
                  s.maker_bps, s.taker_bps, s.stp_default, s.band_bps):
            w.big(v)
    accts = list(eng.accounts.values())
    w.u32(len(accts))
    for a in accts:
        w.s(a.name)
        w.u32(len(a.bal))
        for asset, b in a.bal.items():
            w.u32(aidx[asset])
            w.big(b.avail)
            w.big(b.held)
    w.u32(len(eng.txs))
    for tx, rec in eng.txs.items():
        w.s(tx)
        w.u32(0 if rec[0] == "deposit" else 1)
        w.s(rec[1])
        w.u32(aidx[rec[2]])
        w.big(rec[3])
        w.big(rec[4])

    # ---- open orders: each side's book best price first, as one block of columns
    rows: list[Order] = []
    counts: list[int] = []
    for s in syms:
        for keys, levels, sgn in ((s.bid_keys, s.bids, 1), (s.ask_keys, s.asks, -1)):
            before = len(rows)
            for i in range(len(keys) - 1, -1, -1):
                o: Order | None = levels[keys[i] * sgn].head
                while o is not None:
                    rows.append(o)
                    o = o.nxt
            counts.append(len(rows) - before)
    by_acct: dict[Account, int] = {a: i for i, a in enumerate(accts)}
    # an order whose account object is another engine's (a symbol export's small engine holds
    # the big engine's orders, migration.py) is numbered by its account's name, as before
    by_name = {a.name: i for i, a in enumerate(accts)}
    for o in rows:
        if o.acct not in by_acct:
            ai = by_name.get(o.acct.name)
            if ai is None:
                raise SnapshotError(f"an open order of {o.acct.name}, an account not in the engine")
            by_acct[o.acct] = ai
    held: list[int] = [0] * (2 * len(accts))  # (the block adds up holds: not needed here)
    w.arr("q", counts)
    # (encode_orders numbers an account it does not know at the end of ``known``: none here)
    known = list(accts)
    w.raw(encode_orders(rows, len(rows), by_acct, known, held, SnapshotError))

    # ---- finished orders (the dedup windows), each account's oldest first: one block, and
    # their symbols as a column of their own; an engine that keeps what it encoded before
    # (snapcache.py) encodes only what changed since
    w.arr(_U32, [len(a.finished) for a in accts])
    cache = eng.snap_cache if use_cache else None
    if isinstance(cache, SnapCache):
        try:
            cache.update(accts, sidx)
        except Uncacheable:
            cache.reset()
            cache = None
    if isinstance(cache, SnapCache):
        cache.finished(w.parts)
    else:
        _finished_afresh(w, accts, by_acct, known, held, sidx)
    # ---- market data (version 3): each symbol's update sequence, each account's last fills as
    # [account index, [[trade id, symbol index, price, qty, order id, side, maker, fee], ...]]
    w.arr("q", [s.seq for s in syms])
    if isinstance(cache, SnapCache):
        w.raw(cache.fills_json())
    else:
        fills: list = []
        for i in range(len(accts)):
            a = accts[i]
            if a.fills:
                fills.append([i, [fill_row(e, a, sidx) for e in a.fills]])
        w.raw(orjson.dumps(fills))
    # and each symbol's last trades: [symbol index, [[trade id, price, qty, taker side], ...]]
    recent: list = []
    for i in range(len(syms)):
        if syms[i].recent:
            recent.append([i, [list(trade_record(e)[1:]) for e in syms[i].recent]])
    w.raw(orjson.dumps(recent))
    return w.parts


def _finished_afresh(w: _W, accts: list[Account], by_acct: dict[Account, int],
                     known: list[Account], held: list[int], sidx: dict[str, int]) -> None:
    """The finished orders' block and symbol column, every order encoded now."""
    fin: list[Order] = []
    fin_sym: list[int] = []
    # the account column says whose window holds the order: a symbol export's small engine
    # holds orders whose own account is the big engine's (migration.py), so map those too
    fin_ix: dict[Account, int] = dict(by_acct)
    for ai in range(len(accts)):
        a = accts[ai]
        for o in a.finished:
            if o.acct is not a and o.acct not in fin_ix:
                fin_ix[o.acct] = ai
            if o.row is not None:  # restored from a version 2-3 snapshot: its row is not needed
                if o.ev is not None:
                    events_bytes(o)  # (its events were an offset into the row)
                o.row = None
            fin.append(o)
            fin_sym.append(sidx[o.sym.name])
    w.raw(encode_orders(fin, len(fin), fin_ix, known, held, SnapshotError))
    if len(known) != len(accts):  # pragma: no cover - every order's account is the engine's
        raise SnapshotError("an order of an unknown account")
    sym_col: list[bytes] = []
    put_int_column(sym_col, fin_sym, SnapshotError)
    w.raw(b"".join(sym_col))


def _events_at(coid_len: int) -> int:
    """Where a finished order's events start in its row (the ``Order.ev`` offset form)."""
    return _ROW.size + coid_len


def dump(eng: EngineState, use_cache: bool = True, digest: bool = True) -> bytes:
    """``eng``'s snapshot; ``use_cache=False`` encodes every part now (the same bytes: tests and
    benchmarks compare the two), leaving the engine's kept parts as they were. ``digest=False``
    writes version 5: the same body without the blake2b digest, for a caller whose container
    checks the bytes (a cluster snapshot)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the column lists are large; collecting while building them only costs time
    try:
        parts = _body(eng, use_cache)
    finally:
        if gc_was_enabled:
            gc.enable()
    hdr = _HDR.pack(MAGIC, VERSION if digest else VERSION_UNSIGNED, 0, sum([len(x) for x in parts]))
    parts.insert(0, hdr)
    blob = b"".join(parts)
    if not digest:
        return blob
    return blob + hashlib.blake2b(blob, digest_size=_DIGEST).digest()


def state_hash(eng: EngineState) -> str:
    return hashlib.sha256(dump(eng)).hexdigest()


def load(blob: object, cls: type[E]) -> E:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SnapshotError("snapshot must be bytes")
    mv = memoryview(blob).cast("B")
    if len(mv) < _HDR.size:
        raise SnapshotError("snapshot truncated (shorter than header)")
    magic, version, _res, blen = _HDR.unpack(mv[: _HDR.size])
    if magic != MAGIC:
        raise SnapshotError("not an engine snapshot (bad magic)")
    if version not in _READS:
        raise SnapshotError(f"unsupported snapshot version {version} (this engine reads versions "
                            f"{', '.join(map(str, _READS))})")
    signed = version != VERSION_UNSIGNED
    if len(mv) != _HDR.size + blen + (_DIGEST if signed else 0):
        raise SnapshotError("snapshot truncated or has trailing bytes")
    if signed:
        h = hashlib.blake2b(mv[: _HDR.size + blen], digest_size=_DIGEST)
        if h.digest() != bytes(mv[_HDR.size + blen:]):
            raise SnapshotError("snapshot checksum mismatch (corrupt)")
    # a bulk load of long-lived objects: collecting during it only costs time
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        # version 5 is version 4's body
        eng = _load_body(_R(mv[_HDR.size: _HDR.size + blen]), 4 if version == VERSION_UNSIGNED else version, cls)
    except SnapshotError:
        raise
    except Exception as e:
        raise SnapshotError(f"snapshot malformed: {type(e).__name__}: {e}") from e
    finally:
        if gc_was_enabled:
            gc.enable()
    return eng


def _load_body(r: _R, version: int, cls: type[E]) -> E:
    eng = cls(dedup_window=r.i64())
    eng.next_oid = r.i64()
    eng.next_tid = r.i64()
    assets: list[str] = []
    for _ in range(r.u32()):
        an = r.s()
        eng.assets[an] = r.u32()
        eng.fees[an] = r.big()
        assets.append(an)
    syms: list[Symbol] = []
    for _ in range(r.u32()):
        s = Symbol()
        s.name = r.s()
        s.base = assets[r.u32()]
        s.quote = assets[r.u32()]
        s.tick_c = r.big()
        s.tick_d = r.big()
        s.lot_c = r.big()
        s.lot_d = r.big()
        s.min_qty = r.big()
        s.max_qty = r.big()
        s.max_price = r.big()
        s.maker_bps = r.big()
        s.taker_bps = r.big()
        s.stp_default = r.big()
        s.band_bps = r.big()
        s.hold_bps = max(s.maker_bps, s.taker_bps)
        s.tick_str = fmt_scaled(s.tick_c, s.tick_d)
        s.lot_str = fmt_scaled(s.lot_c, s.lot_d)
        bd = eng.assets[s.base]
        qd = eng.assets[s.quote]
        s.bpl = s.lot_c * POW10[bd - s.lot_d]
        s.qpu = s.tick_c * s.lot_c * POW10[qd - s.tick_d - s.lot_d]
        s.quote_dec = qd
        if s.name in eng.symbols:
            raise SnapshotError("duplicate symbol in snapshot")
        eng.symbols[s.name] = s
        syms.append(s)
    accts: list[Account] = []
    for _ in range(r.u32()):
        acct = Account(r.s())
        for _ in range(r.u32()):
            asset = assets[r.u32()]
            av = r.big()
            acct.bal[asset] = Bal(av, r.big())
        eng.accounts[acct.name] = acct
        accts.append(acct)
    for _ in range(r.u32()):
        tx = r.s()
        op = "deposit" if r.u32() == 0 else "withdraw"
        account = r.s()
        asset = assets[r.u32()]
        amount = r.big()
        avail = r.big()
        eng.txs[tx] = (op, account, asset, amount, avail, tx)

    nsyms = len(syms)
    naccts = len(accts)
    b = _Builder(accts, syms)
    fin_counts: list[int] = []
    fin_blob = b""
    fin4: list[list[Order]] = []
    fin_cols: Cols | None = None
    sym_col = b""
    if version >= 4:
        counts = r.arr("q")
        rows = _open_rows_v4(b, decode_orders(bytes(r.raw()), SnapshotError), counts, nsyms)
        fin_counts = r.arr(_U32)
        fin_cols = decode_orders(bytes(r.raw()), SnapshotError)
        sym_col = bytes(r.raw())
        fin_sym, end, _zero = get_col(sym_col, 0, len(fin_cols.oid), SnapshotError)
        if end != len(sym_col):
            raise SnapshotError("finished order symbols inconsistent")
        fin4 = _finished_v4(b, fin_cols, fin_sym, fin_counts, naccts)
    else:
        counts = r.arr("q")
        rows = _rows_v1_to_v3(r, b, counts)
        if version >= 2:
            fin_counts = r.arr(_U32)
            fin_blob = bytes(r.raw())
    seqs: list[int] = []
    fills_blob = b"[]"
    recent_blob = b"[]"
    if version >= 3:
        seqs = r.arr("q")
        fills_blob = bytes(r.raw())
        recent_blob = bytes(r.raw())
    if r.pos != len(r.mv):
        raise SnapshotError("trailing bytes in snapshot body")
    # version 1: the columns hold the finished orders too, each account's after the books
    column_sections = 2 * nsyms + (naccts if version == 1 else 0)
    if len(counts) != column_sections or sum(counts) != len(rows):
        raise SnapshotError("order counts inconsistent")
    if version >= 2 and len(fin_counts) != naccts:
        raise SnapshotError("finished order counts inconsistent")

    pos = 0
    open_orders: list[Order] = []
    for si in range(nsyms):
        s = syms[si]
        for side in (BUY, SELL):
            cnt = counts[2 * si + side]
            levels = s.bids if side == BUY else s.asks
            keys = s.bid_keys if side == BUY else s.ask_keys
            last = -1
            lvl: Level | None = None
            for k in range(pos, pos + cnt):
                o = rows[k]
                if o.side != side or o.status != OPEN or o.qty <= 0 or o.sym is not s \
                        or o.otype != LIMIT:
                    raise SnapshotError("inconsistent resting order")
                if lvl is None or o.price != last:
                    if o.price in levels:
                        raise SnapshotError("book levels out of order")
                    lvl = Level()
                    levels[o.price] = lvl
                    keys.append(o.price if side == BUY else -o.price)
                    last = o.price
                lvl.push(o)
                open_orders.append(o)
            keys.reverse()
            if keys != sorted(keys):
                raise SnapshotError("book levels out of order")
            pos += cnt
    orders = eng.orders
    for o in open_orders:
        okey = o.key
        orders[okey] = o
        o.acct.open[okey] = o
    if len(orders) != len(open_orders):
        raise SnapshotError("duplicate order id")
    if version == 1:
        for ai in range(naccts):
            cnt = counts[2 * nsyms + ai]
            _set_finished(accts[ai], rows[pos:pos + cnt])
            pos += cnt
    elif version < 4:
        _load_finished(b, accts, fin_counts, fin_blob)
    else:
        for ai in range(naccts):
            _set_finished(accts[ai], fin4[ai])
    if version >= 3:
        _load_market_data(syms, accts, seqs, fills_blob, recent_blob)
    cache = eng.snap_cache
    if fin_cols is not None and isinstance(cache, SnapCache):
        cache.keep_loaded(accts, fin4, fin_cols, sym_col, [s.name for s in syms], fills_blob)
    return eng


def _rows_v1_to_v3(r: _R, b: _Builder, counts: list[int]) -> list[Order]:
    """The order columns of a version 1-3 snapshot (fixed widths) as orders."""
    n = r.i64()
    oid = r.arr("q")
    price = r.arr("q")
    qty = r.arr("q")
    oprice = r.arr("q")
    oqty = r.arr("q")
    filled = r.arr("q")
    ts = r.arr("q")
    acc = r.arr(_I32)
    sym = r.arr(_I32)
    flags = r.arr("H")
    coid_lens = r.arr(_U32)
    coid_blob = bytes(r.raw())
    ev_lens = r.arr(_U32)
    ev_blob = bytes(r.raw())
    for col in (oid, price, qty, oprice, oqty, filled, ts, acc, sym, flags):
        if len(col) != n:
            raise SnapshotError("order columns have inconsistent lengths")
    if sum(counts) != n:
        raise SnapshotError("order counts inconsistent")
    # client order ids: one decode of the whole blob when it is ASCII (byte == char offsets)
    if sum(coid_lens) != len(coid_blob):
        raise SnapshotError("client order id blob inconsistent")
    coids: list[str] = []
    cpos = 0
    if coid_blob.isascii():
        text = coid_blob.decode("ascii")
        for ln in coid_lens:
            coids.append(text[cpos:cpos + ln])
            cpos += ln
    else:
        for ln in coid_lens:
            coids.append(coid_blob[cpos:cpos + ln].decode())
            cpos += ln
    if sum(ev_lens) != len(ev_blob):
        raise SnapshotError("event blob inconsistent")
    rows: list[Order] = []
    ci = 0
    ei = 0
    epos = 0
    for i in range(n):
        f = flags[i]
        coid: str | None = None
        if f & _F_COID:
            if ci >= len(coids):
                raise SnapshotError("string/event blobs inconsistent")
            coid = coids[ci]
            ci += 1
        ev: bytes | None = None
        if f & _F_EV:
            if ei >= len(ev_lens):
                raise SnapshotError("string/event blobs inconsistent")
            ln = ev_lens[ei]
            # kept as JSON: decoded only if the order's placement is repeated (a duplicate)
            ev = ev_blob[epos:epos + ln]
            epos += ln
            ei += 1
        rows.append(b.order(oid[i], acc[i], sym[i], f, price[i], qty[i], oprice[i], oqty[i], filled[i],
                            ts[i], coid, ev))
    if ci != len(coids) or ei != len(ev_lens):
        raise SnapshotError("string/event blobs inconsistent")
    return rows


def _order_v4(b: _Builder, c: Cols, k: int, ai: int, si: int) -> Order:
    """Order ``k`` of a version-4 block (its account and symbol given)."""
    f = c.flags[k]
    coid = c.coids[k]
    ev = c.evs[k]  # kept as JSON: decoded only if the order's placement is repeated (a duplicate)
    if bool(f & _F_COID) != (coid is not None) or bool(f & _F_EV) != (ev is not None):
        raise SnapshotError("order flags and strings inconsistent")
    p = c.price[k]
    op_ = c.oprice[k]
    if f & _F_MARKET:  # no price: 0 in the columns, _NONE in what the builder checks
        if p != 0 or op_ != 0:
            raise SnapshotError("market order with a price")
        p = op_ = _NONE
    return b.order(c.oid[k], ai, si, f, p, c.qty[k], op_, c.oqty[k], c.filled[k], c.ts[k], coid, ev)


def _open_rows_v4(b: _Builder, c: Cols, counts: list[int], nsyms: int) -> list[Order]:
    """The open orders of a version-4 snapshot: each symbol's bids, then its asks (``counts``)."""
    n = len(c.oid)
    if len(counts) != 2 * nsyms or sum(counts) != n or min(counts, default=0) < 0:
        raise SnapshotError("order counts inconsistent")
    rows: list[Order] = []
    k = 0
    for j in range(2 * nsyms):
        si = j // 2
        for _ in range(counts[j]):
            rows.append(_order_v4(b, c, k, c.acct[k], si))
            k += 1
    return rows


def _finished_v4(b: _Builder, c: Cols, sym: list[int], fin_counts: list[int],
                 naccts: int) -> list[list[Order]]:
    """The finished orders of a version-4 snapshot, per account (oldest first)."""
    n = len(c.oid)
    if len(fin_counts) != naccts or sum(fin_counts) != n:
        raise SnapshotError("finished order counts inconsistent")
    out: list[list[Order]] = []
    k = 0
    for ai in range(naccts):
        fin: list[Order] = []
        for _ in range(fin_counts[ai]):
            if c.acct[k] != ai:
                raise SnapshotError("finished order of another account")
            fin.append(_order_v4(b, c, k, ai, sym[k]))
            k += 1
        out.append(fin)
    return out


def _load_market_data(syms: list[Symbol], accts: list[Account], seqs: list[int], blob: bytes,
                      recent_blob: bytes) -> None:
    if len(seqs) != len(syms):
        raise SnapshotError("symbol sequences inconsistent")
    for i in range(len(syms)):
        if seqs[i] < 0:
            raise SnapshotError("negative symbol sequence")
        syms[i].seq = seqs[i]
    for ai, rows in orjson.loads(blob):
        fills = accts[ai].fills
        if fills:
            raise SnapshotError("an account's fills appear twice")
        for tid, si, price, qty, oid, side, maker, fee in rows:
            fills.append((FILL, int(tid), syms[si].name, int(price), int(qty), int(oid), int(side),
                          bool(maker), int(fee)))
    for si, rows in orjson.loads(recent_blob):
        recent = syms[si].recent
        if recent:
            raise SnapshotError("a symbol's trades appear twice")
        for tid, price, qty, side in rows:
            recent.append((TRADE, int(tid), int(price), int(qty), int(side)))


def _load_finished(b: _Builder, accts: list[Account], fin_counts: list[int], blob: bytes) -> None:
    """The finished rows of a version-2 snapshot; each order keeps its row for the next snapshot."""
    end = len(blob)
    pos = 0
    size = _ROW.size
    for ai in range(len(accts)):
        a = accts[ai]
        fin: list[Order] = []
        for _ in range(fin_counts[ai]):
            if pos + size > end:
                raise SnapshotError("finished order rows truncated")
            oid, p, q, op_, oq, filled, ts, si, f, clen, elen = _ROW.unpack_from(blob, pos)
            cstart = pos + size
            estart = cstart + clen
            stop = estart + elen
            if stop > end:
                raise SnapshotError("finished order rows truncated")
            if bool(f & _F_COID) != (clen > 0) or bool(f & _F_EV) != (elen > 0):
                raise SnapshotError("finished order row inconsistent")
            coid = blob[cstart:estart].decode() if clen else None
            o = b.order(oid, ai, si, f, p, q, op_, oq, filled, ts, coid, None)
            o.row = blob[pos:stop]
            if elen:
                o.ev = _events_at(clen)  # the events' JSON, kept in the row (see Order.ev)
            fin.append(o)
            pos = stop
        _set_finished(a, fin)
    if pos != end:
        raise SnapshotError("trailing bytes after the finished order rows")


def _set_finished(a: Account, fin: list[Order]) -> None:
    for o in fin:
        if o.acct is not a or o.status == OPEN:
            raise SnapshotError("inconsistent finished order")
    a.finished = deque(fin)
    a.coids_pending = True  # the client order id index is built on first use


class _Builder:
    """Builds restored orders, sharing their balance cells and buy units."""

    def __init__(self, accts: list[Account], syms: list[Symbol]) -> None:
        self.syms = syms
        self.nsyms = len(syms)
        # (account, symbol, side) -> (held, received) balances; (price, symbol) -> buy unit; both
        # keyed by one int (no tuple per order)
        self.cells: dict[int, tuple[Bal, Bal]] = {}
        self.units: dict[int, int] = {}
        self.accts = accts

    def order(self, oid: int, ai: int, si: int, f: int, p: int, qty: int, op_: int, oqty: int, filled: int,
              ts: int, coid: str | None, ev: bytes | None) -> Order:
        nsyms = self.nsyms
        if not (0 <= ai < len(self.accts) and 0 <= si < nsyms):
            raise SnapshotError("order refers to an unknown account or symbol")
        a = self.accts[ai]
        s = self.syms[si]
        side = SELL if f & _F_SELL else BUY
        otype = MARKET if f & _F_MARKET else LIMIT
        if otype == MARKET:
            if p != _NONE or op_ != _NONE:
                raise SnapshotError("market order with a price")
            p = 0
            op_ = 0
        key = (ai * nsyms + si) * 2 + side
        hr = self.cells.get(key)
        if hr is None:
            base = _balance_of(a, s.base)
            quote = _balance_of(a, s.quote)
            hr = (quote, base) if side == BUY else (base, quote)
            self.cells[key] = hr
        if side == SELL:
            unit = s.bpl
        elif otype == MARKET:
            unit = 0
        else:
            uk = p * nsyms + si
            u = self.units.get(uk)
            if u is None:
                u = s.buy_unit(p)
                self.units[uk] = u
            unit = u
        o = Order(oid, a, s, side, p, qty, unit, hr[0], hr[1], coid, otype,
                  (f >> _F_TIF_SHIFT) & 3, bool(f & _F_POST_ONLY), (f >> _F_STP_SHIFT) & 3, ts)
        o.oprice = op_
        o.oqty = oqty
        o.filled = filled
        o.status = (f >> _F_STATUS_SHIFT) & 3
        o.ev = ev
        return o


def _balance_of(a: Account, asset: str) -> Bal:
    b = a.bal.get(asset)
    if b is None:
        raise SnapshotError(f"order of {a.name} holds {asset} without a balance")
    return b
