"""Snapshot encoding: the whole engine state to canonical bytes and back.

Layout (all integers little-endian)::

    header  = b"MXENGSNP" | u16 version | u16 reserved(0) | u64 body_length
    body    = sections (see ``dump``)
    trailer = blake2b-256(header + body)

Orders (the bulk of the state) are stored column-wise as packed int64 arrays, so a
snapshot with 1,000,000 resting orders encodes and restores in a few seconds.
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
from operator import attrgetter

import orjson

from .errors import SnapshotError

MAGIC = b"MXENGSNP"
VERSION = 1
_HDR = struct.Struct("<8sHHQ")
_DIGEST = 32
_BIG = sys.byteorder == "big"

# order flag bits
_F_SELL = 1
_F_MARKET = 2
_F_TIF_SHIFT = 2      # 2 bits
_F_POST_ONLY = 16
_F_STP_SHIFT = 5      # 2 bits
_F_STATUS_SHIFT = 7   # 2 bits
_F_COID = 512
_F_EV = 1024
_NONE = -(2**63)


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

    def arr(self, typecode: str) -> array:
        a = array(typecode)
        a.frombytes(self.raw())
        if _BIG:
            a.byteswap()
        return a


def _body(eng) -> bytes:
    w = _W()
    w.i64(eng.dedup_window)
    w.i64(eng.next_oid)
    w.i64(eng.next_tid)
    assets = list(eng.assets)
    aidx = {a: i for i, a in enumerate(assets)}
    w.u32(len(assets))
    for a in assets:
        w.s(a)
        w.u32(eng.assets[a])
        w.big(eng.fees[a][0])
    syms = list(eng.symbols.values())
    sidx = {id(s): i for i, s in enumerate(syms)}
    w.u32(len(syms))
    for s in syms:
        w.s(s.name)
        w.u32(aidx[s.base])
        w.u32(aidx[s.quote])
        for v in (s.tick_c, s.tick_d, s.lot_c, s.lot_d, s.min_qty, s.max_qty, s.max_price,
                  s.maker_bps, s.taker_bps, s.stp_default, s.band_bps):
            w.big(v)
    accts = list(eng.accounts.values())
    acidx = {id(a): i for i, a in enumerate(accts)}
    w.u32(len(accts))
    for a in accts:
        w.s(a.name)
        w.u32(len(a.bal))
        for asset, (av, hd) in a.bal.items():
            w.u32(aidx[asset])
            w.big(av)
            w.big(hd)
    w.u32(len(eng.txs))
    for tx, (op, account, asset, amount, avail, _tx) in eng.txs.items():
        w.s(tx)
        w.u32(0 if op == "deposit" else 1)
        w.s(account)
        w.u32(aidx[asset])
        w.big(amount)
        w.big(avail)

    # ---- orders, column-wise
    rows: list = []
    counts: list[int] = []
    for s in syms:
        nb = 0
        for k in reversed(s.bid_keys):
            for e in s.bids[k]:
                o = e[0]
                if o is not None:
                    rows.append(o)
                    nb += 1
        na = 0
        for k in reversed(s.ask_keys):
            for e in s.asks[-k]:
                o = e[0]
                if o is not None:
                    rows.append(o)
                    na += 1
        counts.append(nb)
        counts.append(na)
    for a in accts:
        rows.extend(a.finished)
        counts.append(len(a.finished))
    n = len(rows)
    # one C-level pass over the (scattered) order objects, then columns by transposition
    fields = ("oid", "price", "qty", "oprice", "oqty", "filled", "ts", "acct", "sym", "side",
              "otype", "tif", "post_only", "stp", "status", "coid", "ev")
    if rows:
        cols = list(zip(*map(attrgetter(*fields), rows), strict=True))
    else:
        cols = [()] * len(fields)
    (oid, price_c, qty, oprice_c, oqty, filled, ts, acct_c, sym_c, side_c, otype_c, tif_c,
     po_c, stp_c, status_c, coid_col, ev_col) = cols
    price = [_NONE if p is None else p for p in price_c]
    oprice = [_NONE if p is None else p for p in oprice_c]
    acc = list(map(acidx.__getitem__, map(id, acct_c)))
    sym = list(map(sidx.__getitem__, map(id, sym_c)))
    # side: BUY=0/SELL=1 is _F_SELL; otype LIMIT=0/MARKET=1 -> _F_MARKET
    flags = [sd | (ot << 1) | (tf << _F_TIF_SHIFT) | (_F_POST_ONLY if po else 0)
             | (sp << _F_STP_SHIFT) | (st << _F_STATUS_SHIFT) | (0 if c is None else _F_COID)
             | (0 if e is None else _F_EV)
             for sd, ot, tf, po, sp, st, c, e in zip(side_c, otype_c, tif_c, po_c, stp_c,
                                                     status_c, coid_col, ev_col, strict=True)]
    coid_strs = [c for c in coid_col if c is not None]
    coid_text = "".join(coid_strs)
    if coid_text.isascii():
        coid_lens = list(map(len, coid_strs))
        coid_bytes = coid_text.encode("ascii")
    else:
        enc = [c.encode() for c in coid_strs]
        coid_lens = list(map(len, enc))
        coid_bytes = b"".join(enc)
    ev_enc = [orjson.dumps(e) for e in ev_col if e is not None]
    ev_lens = list(map(len, ev_enc))
    w.arr("q", counts)
    w.i64(n)
    for col in (oid, price, qty, oprice, oqty, filled, ts):
        w.arr("q", col)
    w.arr("l" if array("l").itemsize == 4 else "i", acc)
    w.arr("l" if array("l").itemsize == 4 else "i", sym)
    w.arr("H", flags)
    w.arr("L" if array("L").itemsize == 4 else "I", coid_lens)
    w.raw(coid_bytes)
    w.arr("L" if array("L").itemsize == 4 else "I", ev_lens)
    w.raw(b"".join(ev_enc))
    return b"".join(w.parts)


def dump(eng) -> bytes:
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the column lists are large; collecting while building them only costs time
    try:
        body = _body(eng)
    finally:
        if gc_was_enabled:
            gc.enable()
    hdr = _HDR.pack(MAGIC, VERSION, 0, len(body))
    h = hashlib.blake2b(hdr, digest_size=_DIGEST)
    h.update(body)
    return hdr + body + h.digest()


def state_hash(eng) -> str:
    return hashlib.sha256(dump(eng)).hexdigest()


def load(cls, blob: bytes):
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise SnapshotError("snapshot must be bytes")
    mv = memoryview(blob).cast("B")
    if len(mv) < _HDR.size + _DIGEST:
        raise SnapshotError("snapshot truncated (shorter than header)")
    magic, version, _res, blen = _HDR.unpack(mv[: _HDR.size])
    if magic != MAGIC:
        raise SnapshotError("not an engine snapshot (bad magic)")
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version} (this engine reads {VERSION})")
    if len(mv) != _HDR.size + blen + _DIGEST:
        raise SnapshotError("snapshot truncated or has trailing bytes")
    h = hashlib.blake2b(mv[: _HDR.size + blen], digest_size=_DIGEST)
    if h.digest() != bytes(mv[_HDR.size + blen:]):
        raise SnapshotError("snapshot checksum mismatch (corrupt)")
    # a bulk load of long-lived objects: collecting during it only costs time
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        eng = _load_body(cls, _R(mv[_HDR.size: _HDR.size + blen]))
    except SnapshotError:
        raise
    except Exception as e:
        raise SnapshotError(f"snapshot malformed: {type(e).__name__}: {e}") from e
    finally:
        if gc_was_enabled:
            gc.enable()
    return eng


def _load_body(cls, r: _R):
    from .core import (
        BUY,
        MARKET,
        OPEN,
        SELL,
        Account,
        Order,
        Symbol,
        _new_level,
    )
    from .numbers import POW10, fmt_scaled

    eng = cls(dedup_window=r.i64())
    eng.next_oid = r.i64()
    eng.next_tid = r.i64()
    assets = []
    for _ in range(r.u32()):
        a = r.s()
        eng.assets[a] = r.u32()
        eng.fees[a] = [r.big()]
        assets.append(a)
    syms = []
    for _ in range(r.u32()):
        s = Symbol()
        s.name = r.s()
        s.base = assets[r.u32()]
        s.quote = assets[r.u32()]
        (s.tick_c, s.tick_d, s.lot_c, s.lot_d, s.min_qty, s.max_qty, s.max_price,
         s.maker_bps, s.taker_bps, s.stp_default, s.band_bps) = (r.big() for _ in range(11))
        s.hold_bps = max(s.maker_bps, s.taker_bps)
        s.tick_str = fmt_scaled(s.tick_c, s.tick_d)
        s.lot_str = fmt_scaled(s.lot_c, s.lot_d)
        bd = eng.assets[s.base]
        qd = eng.assets[s.quote]
        s.bpl = s.lot_c * POW10[bd - s.lot_d]
        s.qpu = s.tick_c * s.lot_c * POW10[qd - s.tick_d - s.lot_d]
        if s.name in eng.symbols:
            raise SnapshotError("duplicate symbol in snapshot")
        eng.symbols[s.name] = s
        syms.append(s)
    accts = []
    for _ in range(r.u32()):
        a = Account(r.s())
        for _ in range(r.u32()):
            asset = assets[r.u32()]
            a.bal[asset] = [r.big(), r.big()]
        eng.accounts[a.name] = a
        accts.append(a)
    for _ in range(r.u32()):
        tx = r.s()
        op = "deposit" if r.u32() == 0 else "withdraw"
        account = r.s()
        asset = assets[r.u32()]
        amount = r.big()
        avail = r.big()
        eng.txs[tx] = (op, account, asset, amount, avail, tx)

    counts = r.arr("q")
    n = r.i64()
    oid, price, qty, oprice, oqty, filled, ts = (r.arr("q") for _ in range(7))
    acc = r.arr("l" if array("l").itemsize == 4 else "i")
    sym = r.arr("l" if array("l").itemsize == 4 else "i")
    flags = r.arr("H")
    coid_lens = r.arr("L" if array("L").itemsize == 4 else "I")
    coid_blob = bytes(r.raw())
    ev_lens = r.arr("L" if array("L").itemsize == 4 else "I")
    ev_blob = bytes(r.raw())
    if r.pos != len(r.mv):
        raise SnapshotError("trailing bytes in snapshot body")
    for col in (oid, price, qty, oprice, oqty, filled, ts, acc, sym, flags):
        if len(col) != n:
            raise SnapshotError("order columns have inconsistent lengths")
    if len(counts) != 2 * len(syms) + len(accts) or sum(counts) != n:
        raise SnapshotError("order counts inconsistent")

    # client order ids: one decode of the whole blob when it is ASCII (byte == char offsets)
    if sum(coid_lens) != len(coid_blob):
        raise SnapshotError("client order id blob inconsistent")
    if coid_blob.isascii():
        text = coid_blob.decode("ascii")
        coids = []
        cpos = 0
        for ln in coid_lens:
            coids.append(text[cpos:cpos + ln])
            cpos += ln
    else:
        coids = []
        cpos = 0
        for ln in coid_lens:
            coids.append(coid_blob[cpos:cpos + ln].decode())
            cpos += ln
    coid_iter = iter(coids)
    if sum(ev_lens) != len(ev_blob):
        raise SnapshotError("event blob inconsistent")
    flag_cache: dict[int, tuple] = {}
    cells: dict[tuple, tuple] = {}   # (account, symbol, side) -> (hb, rb)
    units: dict[tuple, int] = {}     # (symbol, price) -> buy unit
    rows = []
    ei = 0
    epos = 0
    for i in range(n):
        f = flags[i]
        fl = flag_cache.get(f)
        if fl is None:
            fl = flag_cache[f] = (SELL if f & _F_SELL else BUY, MARKET if f & _F_MARKET else 0,
                                  (f >> _F_TIF_SHIFT) & 3, bool(f & _F_POST_ONLY),
                                  (f >> _F_STP_SHIFT) & 3, (f >> _F_STATUS_SHIFT) & 3)
        side, otype, tif, post_only, stp, status = fl
        ai = acc[i]
        si = sym[i]
        a = accts[ai]
        s = syms[si]
        p = price[i]
        if p == _NONE:
            p = None
        op_ = oprice[i]
        if op_ == _NONE:
            op_ = None
        coid = next(coid_iter) if f & _F_COID else None
        ev = None
        if f & _F_EV:
            ln = ev_lens[ei]
            ev = orjson.loads(ev_blob[epos:epos + ln])
            epos += ln
            ei += 1
        key = (ai, si, side)
        hr = cells.get(key)
        if hr is None:
            hr = cells[key] = ((a.bal[s.quote], a.bal[s.base]) if side == BUY
                               else (a.bal[s.base], a.bal[s.quote]))
        if side == BUY:
            if otype == MARKET:
                unit = 0
            else:
                uk = (si, p)
                unit = units.get(uk)
                if unit is None:
                    unit = units[uk] = s.buy_unit(p)
        else:
            unit = s.bpl
        o = Order(oid[i], a, s, side, p, qty[i], unit, hr[0], hr[1], coid, otype, tif,
                  post_only, stp, ts[i])
        o.oprice = op_
        o.oqty = oqty[i]
        o.filled = filled[i]
        o.status = status
        o.ev = ev
        rows.append(o)
    if next(coid_iter, None) is not None or ei != len(ev_lens):
        raise SnapshotError("string/event blobs inconsistent")

    pos = 0
    open_orders = []
    for si, s in enumerate(syms):
        for side, cnt in ((BUY, counts[2 * si]), (SELL, counts[2 * si + 1])):
            levels = s.bids if side == BUY else s.asks
            keys = s.bid_keys if side == BUY else s.ask_keys
            last = None
            lvl = None
            for o in rows[pos:pos + cnt]:
                if o.side != side or o.status != OPEN or o.qty <= 0 or o.sym is not s:
                    raise SnapshotError("inconsistent resting order")
                if o.price != last:
                    if o.price in levels:
                        raise SnapshotError("book levels out of order")
                    lvl = levels[o.price] = _new_level()
                    keys.append(o.price if side == BUY else -o.price)
                    last = o.price
                e = [o]
                o.ent = e
                lvl.append(e)
                lvl.total += o.qty
                open_orders.append(o)
            keys.reverse()
            if keys != sorted(keys):
                raise SnapshotError("book levels out of order")
            pos += cnt
    # open orders are registered in ascending id order (the order cancel_all follows);
    # the rows of the book are oid[0:len(open_orders)] of the columns
    ids = oid[: len(open_orders)]
    orders = eng.orders
    for i in sorted(range(len(open_orders)), key=ids.__getitem__):
        o = open_orders[i]
        k = o.oid
        orders[k] = o
        a = o.acct
        a.open[k] = o
        if o.coid is not None:
            a.coids[o.coid] = o
    if len(orders) != len(open_orders):
        raise SnapshotError("duplicate order id")
    for ai, a in enumerate(accts):
        cnt = counts[2 * len(syms) + ai]
        fin = rows[pos:pos + cnt]
        for o in fin:
            if o.acct is not a or o.status == OPEN:
                raise SnapshotError("inconsistent finished order")
            if o.coid is not None:
                a.coids[o.coid] = o
        a.finished = deque(fin)
        pos += cnt
    return eng
