"""Orders as columns of narrow integers: the encoding the engine snapshot (version 4) and the
symbol export (``migration.py``, version 2) share.

A block of orders, all integers little-endian::

    u64 first count | u64 second count | 11 columns of one int per order
    | u64 + client order id bytes | u64 + placement event bytes

The two counts add up to the orders in the block; an export's book says how many are bids
(bids best first, then asks best first), a snapshot writes (n, 0) and keeps its own counts. Each
column is one code byte (0: all zero, no data; 1, 2, 3, 4: int8, int16, int32, int64) and its
values: order id, price and time stamp as differences from the previous order, quantity, filled,
price at placement minus price, quantity at placement minus quantity minus filled, account
(an index the caller gives), flags (``order_flags``), client order id length and event length
(0: none). Most columns of a real book take one or two bytes an order (~18 bytes an order
against ~67 as fixed-width columns, ~120 for a finished order as a row).

Compiled with the rest of the engine (mypyc); the errors it raises are the caller's class
(``SnapshotError`` or ``MigrationError``), so each format keeps its own messages' type.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Final

import orjson

from .model import Account, Order, placement_record

_BIG = sys.byteorder == "big"
_I32: Final = "l" if array("l").itemsize == 4 else "i"
# column codes: 0 all zero (no data), then the array type of each width
_TYPECODES = ("", "b", "h", _I32, "q")
_WIDTHS = (0, 1, 2, 4, 8)
NCOLS: Final = 11
# the columns that hold differences from the previous order, and the account column
C_OID: Final = 0
C_PRICE: Final = 1
C_TS: Final = 6
C_ACCT: Final = 7
C_CLEN: Final = 9
C_ELEN: Final = 10
_U64 = struct.Struct("<Q")
_SIDES = struct.Struct("<QQ")

# order flag bits (the snapshot's since version 1, the export's since version 1)
F_SELL: Final = 1
F_MARKET: Final = 2
F_TIF_SHIFT: Final = 2      # 2 bits
F_POST_ONLY: Final = 16
F_STP_SHIFT: Final = 5      # 2 bits
F_STATUS_SHIFT: Final = 7   # 2 bits
F_COID: Final = 512
F_EV: Final = 1024


def order_flags(o: Order) -> int:
    f = o.side | (o.otype << 1) | (o.tif << F_TIF_SHIFT) | (o.stp << F_STP_SHIFT) \
        | (o.status << F_STATUS_SHIFT)
    if o.post_only:
        f |= F_POST_ONLY
    if o.coid is not None:
        f |= F_COID
    if o.ev is not None:
        f |= F_EV
    return f


def events_bytes(o: Order) -> bytes:
    """``o``'s placement events as stored: a compact record (a trade ~45 bytes, ~270 as the
    event's JSON dict). A placement's events never change, so the order keeps the bytes (and
    stops holding the orders its events name). An order restored from a version-2/3 snapshot
    may hold them as an offset into its old snapshot row: they become bytes of their own and
    the row is dropped (nothing reads it any more)."""
    ev = o.ev
    if isinstance(ev, bytes):
        return ev
    if isinstance(ev, int):
        row = o.row
        assert row is not None
        b = bytes(row[ev:])
        o.ev = b
        o.row = None
        return b
    assert isinstance(ev, list)
    b = orjson.dumps(placement_record(o, ev))
    o.ev = b
    return b


class Cols:
    """Orders as columns (the caller's order): what a block holds."""

    def __init__(self) -> None:
        self.bids = 0
        self.oid: list[int] = []
        self.price: list[int] = []
        self.qty: list[int] = []
        self.oprice: list[int] = []
        self.oqty: list[int] = []
        self.filled: list[int] = []
        self.ts: list[int] = []
        self.acct: list[int] = []
        self.flags: list[int] = []
        self.coids: list[str | None] = []
        self.evs: list[bytes | None] = []
        # the block as read: each column's code and where its values start in ``block``, and
        # the two blobs; a restore keeps them for the snapshot cache (snapcache.py), which then
        # need not encode the same orders again
        self.block = b""
        self.codes: list[int] = []
        self.starts: list[int] = []
        self.coid_b = b""
        self.ev_b = b""


def sums(v: list[int]) -> list[int]:
    out: list[int] = []
    acc = 0
    for x in v:
        acc += x
        out.append(acc)
    return out


def col_code(lo: int, hi: int, err: type[Exception]) -> int:
    """The code of the narrowest width that holds [lo, hi] (a range that includes 0; 0: all zero)."""
    if lo == 0 and hi == 0:
        return 0
    code = 1
    while code < 4 and not (-(1 << (8 * _WIDTHS[code] - 1)) <= lo and hi < (1 << (8 * _WIDTHS[code] - 1))):
        code += 1
    if not (-(1 << 63) <= lo and hi < (1 << 63)):
        raise err("an order field does not fit 64 bits")
    return code


def col_bytes(vals: list[int], code: int) -> bytes:
    """``vals`` at the width of ``code`` (1-4), little-endian."""
    a = array(_TYPECODES[code], vals)
    if _BIG:
        a.byteswap()
    return a.tobytes()


def recode(data: bytes, frm: int, to: int, n: int) -> bytes:
    """The ``n`` values of ``data`` (width code ``frm``, 0: all zero) at the width of ``to``."""
    if frm == 0:
        return bytes(n * _WIDTHS[to])
    a = array(_TYPECODES[frm])
    a.frombytes(data)
    if _BIG:
        a.byteswap()
    return col_bytes(a.tolist(), to)


def put_col(parts: list[bytes], vals: list[int], lo: int, hi: int, err: type[Exception]) -> None:
    """One column: its code and values, in the narrowest width that holds [lo, hi] (a range that
    includes 0)."""
    code = col_code(lo, hi, err)
    parts.append(bytes([code]))
    if code:
        parts.append(col_bytes(vals, code))


def put_int_column(parts: list[bytes], vals: list[int], err: type[Exception]) -> None:
    """A column of any ints (its range found here)."""
    put_col(parts, vals, min(0, min(vals, default=0)), max(0, max(vals, default=0)), err)


def get_col(b: bytes, pos: int, n: int, err: type[Exception]) -> tuple[list[int], int, bool]:
    """The column of ``n`` ints at ``pos``: (values, position after it, whether it was all zero)."""
    if pos >= len(b):
        raise err("order columns truncated")
    code = b[pos]
    pos += 1
    if code == 0:
        return [0] * n, pos, True
    if code > 4:
        raise err(f"order column code {code} unknown")
    size = n * _WIDTHS[code]
    if pos + size > len(b):
        raise err("order columns truncated")
    a = array(_TYPECODES[code])
    a.frombytes(b[pos:pos + size])
    if _BIG:
        a.byteswap()
    return a.tolist(), pos + size, False


class ColVals:
    """A run of orders as the values of the block's 11 columns (in the order the module
    docstring lists them), each column's range, and the orders' client order ids and events as
    bytes: ``encode_orders`` writes one block of them; a snapshot keeps them for runs of
    finished orders between snapshots (``snapcache.py``)."""

    def __init__(self) -> None:
        self.cols: list[list[int]] = []
        # signed columns: [lo, hi] (both include 0); columns that are never negative: lo 0 and
        # hi the OR of their values (what sets their width; negative if a value is)
        self.lo: list[int] = []
        self.hi: list[int] = []
        self.coid_b = b""
        self.ev_b = b""


def order_columns(orders: list[Order], acct_ix: dict[Account, int], accts: list[Account],
                  held: list[int], err: type[Exception], last_oid: int = 0, last_price: int = 0,
                  last_ts: int = 0) -> ColVals:
    """The columns of ``orders`` (in the given order), in one pass over them. Numbers each order's
    account by ``acct_ix``, adding an account it does not know yet at the end (``accts``), and
    adds up its holds (``held``: per account, quote held by buys, base held by sells). Order id,
    price and time stamp are differences from the previous order's (the first's from
    ``last_*``). Each column's range is kept as it is filled (plain locals: compiled, no call
    per value)."""
    oid: list[int] = []
    price: list[int] = []
    qty: list[int] = []
    filled: list[int] = []
    doprice: list[int] = []
    doqty: list[int] = []
    ts: list[int] = []
    acct: list[int] = []
    flags: list[int] = []
    clen: list[int] = []
    elen: list[int] = []
    # ranges: signed columns lo/hi; columns that are never negative as an OR of their values
    oid_lo = oid_hi = price_lo = price_hi = dop_lo = dop_hi = doq_lo = doq_hi = ts_lo = ts_hi = 0
    # columns never negative: the OR of their values bounds them (and is negative if one is)
    qty_or = filled_or = flags_or = clen_or = elen_or = 0
    coid_parts: list[str] = []
    ev_parts: list[bytes] = []
    for o in orders:
        a = o.acct
        ai = acct_ix.get(a)
        if ai is None:
            ai = acct_ix[a] = len(accts)
            accts.append(a)
            held.append(0)
            held.append(0)
        q = o.qty
        f = o.filled
        held[2 * ai + o.side] += q * o.unit
        v = o.oid - last_oid
        last_oid = o.oid
        oid.append(v)
        if v < oid_lo:
            oid_lo = v
        elif v > oid_hi:
            oid_hi = v
        p = o.price
        v = p - last_price
        last_price = p
        price.append(v)
        if v < price_lo:
            price_lo = v
        elif v > price_hi:
            price_hi = v
        v = o.oprice - p
        doprice.append(v)
        if v < dop_lo:
            dop_lo = v
        elif v > dop_hi:
            dop_hi = v
        v = o.oqty - q - f
        doqty.append(v)
        if v < doq_lo:
            doq_lo = v
        elif v > doq_hi:
            doq_hi = v
        v = o.ts - last_ts
        last_ts = o.ts
        ts.append(v)
        if v < ts_lo:
            ts_lo = v
        elif v > ts_hi:
            ts_hi = v
        qty.append(q)
        filled.append(f)
        acct.append(ai)
        fl = order_flags(o)
        flags.append(fl)
        qty_or |= q
        filled_or |= f
        flags_or |= fl
        c = o.coid
        if c is None:
            clen.append(0)
        else:
            coid_parts.append(c)
            clen.append(len(c))
            clen_or |= len(c)
        if o.ev is None:
            elen.append(0)
        else:
            e = events_bytes(o)
            ev_parts.append(e)
            elen.append(len(e))
            elen_or |= len(e)
    if qty_or < 0 or filled_or < 0:
        raise err("an order has a negative quantity")
    text = "".join(coid_parts)
    if text.isascii():
        coid_b = text.encode("ascii")
    else:  # lengths in bytes, not characters
        enc = [x.encode() for x in coid_parts]
        coid_b = b"".join(enc)
        j = 0
        for i in range(len(clen)):
            if clen[i]:
                clen[i] = len(enc[j])
                clen_or |= clen[i]
                j += 1
    cv = ColVals()
    cv.cols = [oid, price, qty, filled, doprice, doqty, ts, acct, flags, clen, elen]
    cv.lo = [oid_lo, price_lo, 0, 0, dop_lo, doq_lo, ts_lo, 0, 0, 0, 0]
    # (a column of values >= 0 whose OR is below 2^k fits a signed width of k + 1 bits)
    cv.hi = [oid_hi, price_hi, qty_or, filled_or, dop_hi, doq_hi, ts_hi,
             len(accts) - 1 if accts else 0, flags_or, clen_or, elen_or]
    cv.coid_b = coid_b
    cv.ev_b = b"".join(ev_parts)
    return cv


def encode_orders(orders: list[Order], bids: int, acct_ix: dict[Account, int],
                  accts: list[Account], held: list[int], err: type[Exception]) -> bytes:
    """A block of ``orders`` (in the given order), the first ``bids`` of them counted as bids;
    accounts and holds as in ``order_columns``."""
    cv = order_columns(orders, acct_ix, accts, held, err)
    parts: list[bytes] = [_SIDES.pack(bids, len(orders) - bids)]
    for i in range(NCOLS):
        put_col(parts, cv.cols[i], cv.lo[i], cv.hi[i], err)
    parts.append(_U64.pack(len(cv.coid_b)))
    parts.append(cv.coid_b)
    parts.append(_U64.pack(len(cv.ev_b)))
    parts.append(cv.ev_b)
    return b"".join(parts)


def decode_orders(b: bytes, err: type[Exception]) -> Cols:
    """A block as columns; checks its shape, not its meaning (the caller does)."""
    if len(b) < _SIDES.size:
        raise err("order columns truncated")
    bids, asks = _SIDES.unpack_from(b, 0)
    n = bids + asks
    if n > len(b):
        raise err("order column counts inconsistent")
    pos = _SIDES.size
    cols: list[list[int]] = []
    zero: list[bool] = []
    codes: list[int] = []
    starts: list[int] = []
    for _ in range(NCOLS):
        codes.append(b[pos] if pos < len(b) else 0)
        starts.append(pos + 1)
        vals, pos, z = get_col(b, pos, n, err)
        cols.append(vals)
        zero.append(z)
    blobs: list[bytes] = []
    for _ in range(2):
        if pos + _U64.size > len(b):
            raise err("order columns truncated")
        (ln,) = _U64.unpack_from(b, pos)
        pos += _U64.size
        if pos + ln > len(b):
            raise err("order columns truncated")
        blobs.append(b[pos:pos + ln])
        pos += ln
    if pos != len(b):
        raise err("trailing bytes after the order columns")
    c = Cols()
    c.bids = bids
    c.block = b
    c.codes = codes
    c.starts = starts
    c.coid_b = blobs[0]
    c.ev_b = blobs[1]
    c.oid = sums(cols[0])
    c.price = sums(cols[1])
    c.qty = cols[2]
    c.filled = cols[3]
    c.ts = sums(cols[6])
    c.acct = cols[7]
    c.flags = cols[8]
    # (columns are read only from here: one list may serve two of them)
    if zero[4]:
        c.oprice = c.price
    else:
        oprice_d = cols[4]
        for i in range(n):
            c.oprice.append(c.price[i] + oprice_d[i])
    if zero[5] and zero[3]:
        c.oqty = c.qty
    else:
        oqty_d = cols[5]
        for i in range(n):
            c.oqty.append(oqty_d[i] + c.qty[i] + c.filled[i])
    coid_lens = cols[9]
    ev_lens = cols[10]
    coid_b, ev_b = blobs[0], blobs[1]
    if sum(coid_lens) != len(coid_b) or sum(ev_lens) != len(ev_b) or min(coid_lens, default=0) < 0 \
            or min(ev_lens, default=0) < 0:
        raise err("order column strings inconsistent")
    ascii_ = coid_b.isascii()
    text = coid_b.decode("ascii") if ascii_ else ""
    cpos = 0
    epos = 0
    for i in range(n):
        ln = coid_lens[i]
        if ln == 0:
            c.coids.append(None)
        else:
            try:
                c.coids.append(text[cpos:cpos + ln] if ascii_ else coid_b[cpos:cpos + ln].decode())
            except UnicodeDecodeError as exc:
                raise err("client order id not UTF-8") from exc
            cpos += ln
        ln = ev_lens[i]
        if ln == 0:
            c.evs.append(None)
        else:
            c.evs.append(ev_b[epos:epos + ln])
            epos += ln
    return c
