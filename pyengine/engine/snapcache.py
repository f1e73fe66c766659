"""What an engine snapshot encoded last time and has not changed since, kept for the next one.

Most of a busy engine's snapshot is its accounts' dedup windows (the finished orders a repeated
place or a query still finds) and their fills, and most of that did not change since the last
snapshot: a finished order never changes again, a window only gains orders at its end and loses
them at its front, a fill list only gains fills at its end (the oldest dropping out). Every
member (the leader too) takes its snapshot at the same log position, and the cluster waits
meanwhile (#17): so each window is kept as runs of up to ``RUN`` consecutive orders with their
columns already encoded (a window encoded whole, on the first take after a start, is one run
until its front first drops; after a restore, the runs are cut from the block it read:
``keep_loaded``), and each account's fills as their JSON rows, and a
snapshot encodes only the orders and fills that arrived since the last one (and at most one
partly dropped run per window). Putting the runs together gives exactly the bytes of one block of all finished
orders encoded afresh (``columns.encode_orders``): each column's width comes from the ranges the
runs kept, a run whose width differs is widened or narrowed, and the difference columns (order
id, price, time stamp) get each run's first value against the previous run's last.

What the kept parts trust, and check before use: a window or fill list replaced by another
object (a restore, a symbol's import or drop) is encoded again; an account's index (its place in
``EngineState.accounts``) and the symbols' order are what they were; a window's front order
is found among the kept ones and its orders up to the old end are the kept ones (its end order
is), else the whole window is encoded again. An order of another account in a window (the small
engine of a symbol export) cannot be kept: ``Uncacheable`` tells the caller to encode afresh.

Compiled with the rest of the engine (mypyc); no clock, randomness or I/O.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

import orjson

from .columns import (
    C_ACCT,
    C_CLEN,
    C_ELEN,
    C_OID,
    C_PRICE,
    C_TS,
    NCOLS,
    Cols,
    col_bytes,
    col_code,
    events_bytes,
    get_col,
    order_columns,
    recode,
)
from .errors import SnapshotError
from .model import Account, Order, fill_record, json_int

# orders a kept run holds at most (but a window encoded whole, until its front drops): what a
# snapshot encodes again at most per window beyond the orders that arrived (a run partly dropped
# at its front, a short run at its end grown)
RUN: Final = 64
# the block's NCOLS columns, then the finished orders' symbol column (a section of its own)
SYM_COL: Final = NCOLS
_ALL: Final = NCOLS + 1
# columns whose width comes from the OR of their values (never negative), as in order_columns
_OR_COLS: Final = (2, 3, 8, 9, 10)
_WIDTHS: Final = (0, 1, 2, 4, 8)
_CODE_BYTE: Final = (b"\x00", b"\x01", b"\x02", b"\x03", b"\x04")
_U64 = struct.Struct("<Q")
_SIDES = struct.Struct("<QQ")


class Uncacheable(Exception):
    """A window holds an order of another account: the caller encodes the snapshot afresh."""


def fill_row(e: tuple, acct: Account, sidx: dict[str, int]) -> list:
    """One of ``acct``'s fills as the snapshot's row: [trade id, symbol index, price, qty, order
    id, side, maker, fee]."""
    r = fill_record(e, acct)
    return [r[1], sidx[r[2]], r[3], r[4], r[5], r[6], 1 if r[7] else 0, json_int(r[8])]


def _rows_json(rows: list[list]) -> list[bytes]:
    """Each row's JSON without its brackets, from one encoding of them all: a fill row holds only
    numbers and digit strings, so "],[" is where one row ends and the next begins (checked: one
    piece a row)."""
    if not rows:
        return []
    pieces = orjson.dumps(rows)[2:-2].split(b"],[")
    if len(pieces) != len(rows):  # pragma: no cover - a row with "],[" inside a string
        return [orjson.dumps(r)[1:-1] for r in rows]
    return pieces


class _Run:
    """Up to RUN consecutive orders of one account's window, encoded: each column's values (the
    difference columns without their first value, which depends on the run before) at their
    width, and each column's range. Built from the orders (``encode``) or from the block a
    restore just read (``_loaded_run``)."""

    def __init__(self, orders: list[Order]) -> None:
        self.orders = orders
        self.n = len(orders)
        first = orders[0]
        last = orders[-1]
        self.oid0 = first.oid
        self.price0 = first.price
        self.ts0 = first.ts
        self.oid1 = last.oid
        self.price1 = last.price
        self.ts1 = last.ts
        self.lo: list[int] = []
        self.hi: list[int] = []
        # each column's values until the snapshot that first writes them encodes them at the
        # width it needs (-1: not encoded yet), then kept as bytes only (``seal``)
        self.vals: list[list[int]] | None = None
        self.codes: list[int] = [-1] * _ALL
        self.data: list[bytes] = [b""] * _ALL
        self.coid_b = b""
        self.ev_b = b""

    def encode(self, acct: Account, ai: int, sidx: dict[str, int]) -> None:
        orders = self.orders
        first = orders[0]
        syms: list[int] = []
        for o in orders:
            if o.acct is not acct:
                raise Uncacheable()
            if o.row is not None:  # restored from a version 2-3 snapshot: its row is not needed
                if o.ev is not None:
                    events_bytes(o)  # (its events were an offset into the row)
                o.row = None
            syms.append(sidx[o.sym.name])
        # differences from the first order: its own are 0, inside every range
        cv = order_columns(orders, {acct: 0}, [], [0, 0], SnapshotError, first.oid, first.price,
                           first.ts)
        cols = cv.cols
        lo = cv.lo
        hi = cv.hi
        cols[C_ACCT] = [ai] * self.n
        hi[C_ACCT] = ai
        cols.append(syms)
        lo.append(min(0, min(syms)))
        hi.append(max(0, max(syms)))
        self.lo = lo
        self.hi = hi
        self.vals = cols
        self.coid_b = cv.coid_b
        self.ev_b = cv.ev_b

    def data_at(self, c: int, code: int) -> bytes:
        """Column ``c``'s values at the width of ``code`` (kept at it for the next snapshot)."""
        have = self.codes[c]
        if have != code:
            delta = c == C_OID or c == C_PRICE or c == C_TS
            vals = self.vals
            if have < 0 and vals is not None:
                self.data[c] = col_bytes(vals[c][1:] if delta else vals[c], code)
            else:
                self.data[c] = recode(self.data[c], have, code, self.n - 1 if delta else self.n)
            self.codes[c] = code
        return self.data[c]

    def seal(self) -> None:
        """Drops the values once written: a column no snapshot wrote is all zero (width 0)."""
        if self.vals is not None:
            for c in range(_ALL):
                if self.codes[c] < 0:
                    self.codes[c] = 0
            self.vals = None


def _newest(dq: deque, m: int) -> list:
    """The last ``m`` items of ``dq``, oldest first, in O(m)."""
    if m >= len(dq):
        return list(dq)
    new = []
    it = reversed(dq)
    for _ in range(m):
        new.append(next(it))
    new.reverse()
    return new


def _index(orders: list[Order], o: Order) -> int:
    for j in range(len(orders)):
        if orders[j] is o:
            return j
    return -1


class _Window:
    """One account's dedup window (``Account.finished``) as kept runs."""

    def __init__(self, dq: deque[Order], ai: int) -> None:
        self.dq = dq
        self.ai = ai
        self.runs: list[_Run] = []
        self.count = 0  # orders in the runs

    def sync(self, acct: Account, sidx: dict[str, int], cache: SnapCache) -> None:
        """Brings the runs in line with the window: drops what left its front, encodes what
        arrived at its end."""
        dq = self.dq
        n = len(dq)
        runs = self.runs
        if n == 0:
            self.runs = []
            self.count = 0
            return
        front = dq[0]
        while runs:
            r = runs[0]
            j = _index(r.orders, front)
            if j < 0:  # the whole run left the window
                runs.pop(0)
                self.count -= r.n
                continue
            if j > 0:  # (a window's first run may be longer than RUN: split now)
                rest = r.orders[j:]
                runs[0:1] = [self._run(rest[i:i + RUN], acct, sidx, cache) for i in range(0, len(rest), RUN)]
                self.count -= j
            break
        kept = self.count
        if n < kept or (kept and dq[kept - 1] is not runs[-1].orders[-1]):
            # not what appends and drops from the front make: encode the whole window again
            cache.resyncs += 1
            runs.clear()
            kept = 0
        m = n - kept
        if m == 0:
            self.count = kept
            return
        new = _newest(dq, m)
        if not runs:
            # a window encoded whole (the first take after a start or a restore): one run, as
            # cheap as encoding it afresh; split into runs of RUN when its front first drops
            runs.append(self._run(new, acct, sidx, cache))
            self.count = n
            return
        if runs[-1].n + m <= RUN:  # a short last run grows
            last = runs.pop()
            new = last.orders + new
        for i in range(0, len(new), RUN):
            runs.append(self._run(new[i:i + RUN], acct, sidx, cache))
        self.count = n

    def _run(self, orders: list[Order], acct: Account, sidx: dict[str, int], cache: SnapCache) -> _Run:
        cache.orders_encoded += len(orders)
        r = _Run(orders)
        r.encode(acct, self.ai, sidx)
        cache.unsealed.append(r)
        return r


class _Fills:
    """One account's fills (``Account.fills``) as their JSON rows, and the account's piece of
    the snapshot's fills JSON."""

    def __init__(self, dq: deque[tuple], ai: int) -> None:
        self.dq = dq
        self.ai = ai
        self.rows: list[bytes] = []  # each fill's JSON row without its brackets
        self.last: object = None  # the newest fill when the rows were made
        self.piece = b""

    def sync(self, acct: Account, sidx: dict[str, int], cache: SnapCache) -> None:
        dq = self.dq
        n = len(dq)
        if n == 0:
            self.rows = []
            self.last = None
            self.piece = b""
            return
        newest = dq[-1]
        if newest is self.last and len(self.rows) == n:
            return
        # fills only arrive at the end (the oldest dropping out): count the new ones back to
        # the newest the rows have
        m = 0
        for e in reversed(dq):
            if e is self.last:
                break
            m += 1
        keep = n - m
        if keep > len(self.rows):  # pragma: no cover - appends cannot do this
            cache.resyncs += 1
            keep = 0
            m = n
        new = _newest(dq, m)
        rows = self.rows[len(self.rows) - keep:] if keep else []
        rows.extend(_rows_json([fill_row(e, acct, sidx) for e in new]))
        cache.fills_encoded += m
        self.rows = rows
        self.last = newest
        self.piece = b"".join([b"[", str(self.ai).encode(), b",[[", b"],[".join(rows), b"]]]"])


class _Loaded:
    """What a restore read, as ``SnapCache.keep_loaded`` takes it: the finished orders' block and
    symbol column as bytes only (their values, 12 lists of Python ints, would hold ~36 MB at
    117,000 orders until the first take; they are decoded again there), with each account's window
    and fills as they were then (the engine goes on changing them before the first take)."""

    def __init__(self, accts: list[Account], fin: list[list[Order]], block: Cols, sym_col: bytes,
                 names: list[str], fills_blob: bytes) -> None:
        self.accts, self.fin, self.names, self.fills_blob = accts, fin, names, fills_blob
        self.n = len(block.oid)
        # the block's columns, then the symbol column: code, and where the values start in which
        # bytes (the code byte just before)
        self.codes = block.codes + [sym_col[0] if sym_col else 0]
        self.starts = block.starts + [1]
        self.datas = [block.block] * NCOLS + [sym_col]
        self.coid_b, self.ev_b = block.coid_b, block.ev_b
        self.windows = [a.finished for a in accts]
        self.fill_lists = [a.fills for a in accts]
        self.fill_counts = [len(a.fills) for a in accts]
        self.fill_lasts: list[object] = [a.fills[-1] if a.fills else None for a in accts]

    def values(self) -> list[list[int]]:
        """Each column's values as stored (all zero: an empty list, never read)."""
        return [get_col(self.datas[c], self.starts[c] - 1, self.n, SnapshotError)[0] if self.codes[c] else []
                for c in range(_ALL)]


class SnapCache:
    """The kept parts of one engine's snapshot (``EngineState.snap_cache``): its windows and
    fills per account. ``orders_encoded`` and ``fills_encoded`` count what snapshots encoded
    (tests read them: a snapshot right after another encodes nothing), ``resyncs`` the windows
    found changed other than by appends and drops from the front."""

    def __init__(self) -> None:
        self.windows: dict[Account, _Window] = {}
        self.fills: dict[Account, _Fills] = {}
        self.syms: list[str] = []  # the symbols' order the kept parts index by
        self.orders_encoded = 0
        self.fills_encoded = 0
        self.resyncs = 0
        self.unsealed: list[_Run] = []  # runs encoded by this snapshot, their values still kept
        # what a restore read, until the kept parts are built from it (``keep_loaded``); seeded:
        # the kept parts come from a restore's bytes, not from a take
        self.loaded: _Loaded | None = None
        self.seeded = False

    def reset(self) -> None:
        self.windows = {}
        self.fills = {}
        self.syms = []
        self.unsealed = []

    def keep_loaded(self, accts: list[Account], fin: list[list[Order]], block: Cols, sym_col: bytes,
                    names: list[str], fills_blob: bytes) -> None:
        """Keeps what a restore has just read, to be kept as a take would have kept it
        (``seed_loaded``, at the first take or when the caller asks): the finished orders'
        ``block`` (``fin``: each account's orders as restored from it, in its order), their
        symbol column's bytes and the snapshot's fills JSON. The bytes are there already:
        encoding them again made the first take after a restart cost 3-4 times a warm one, and a
        restarting member often takes one in its catch-up, while the cluster waits (#17,
        bench/reports/snapshot_take_seeded.md). Nothing is built here: the restore is on a
        restarting member's way back, the runs (~40-60 ms of CPU at 117,000 finished orders)
        are not."""
        self.reset()
        self.loaded = _Loaded(accts, fin, block, sym_col, names, fills_blob)
        self.seeded = True

    def seed_loaded(self) -> bool:
        """Builds the kept parts from what the restore read (``keep_loaded``), if not yet: the
        finished orders as runs of RUN, each column's bytes at the block's width, and each
        account's fills as the JSON rows read. Trusts them to be this code's encoding of those
        orders and fills (what a snapshot it wrote holds); the windows and fills changed since
        are brought in line by the next take as after any take. True if it built them now."""
        ld = self.loaded
        if ld is None:
            return False
        self.loaded = None
        self.reset()
        self.syms = ld.names
        accts = ld.accts
        raw, codes, starts, datas = ld.values(), ld.codes, ld.starts, ld.datas
        clen = raw[C_CLEN] or [0] * ld.n
        elen = raw[C_ELEN] or [0] * ld.n
        k = cpos = epos = 0
        for ai in range(len(accts)):
            a = accts[ai]
            orders = ld.fin[ai]
            w = _Window(ld.windows[ai], ai)
            for i in range(0, len(orders), RUN):
                r = _loaded_run(orders[i:i + RUN], k, ai, raw, codes, starts, datas)
                m = k + r.n
                c1 = cpos + sum(clen[k:m])
                e1 = epos + sum(elen[k:m])
                r.coid_b = ld.coid_b[cpos:c1]
                r.ev_b = ld.ev_b[epos:e1]
                w.runs.append(r)
                k, cpos, epos = m, c1, e1
            w.count = len(orders)
            self.windows[a] = w
        for piece in _fill_pieces(ld.fills_blob):
            j = piece.find(b",[[")
            ai = int(piece[1:j]) if j > 1 and piece[1:j].isdigit() else -1
            if not 0 <= ai < len(accts):
                continue  # pragma: no cover - not a fills JSON this code wrote: built at the take
            rows = piece[j + 3:-3].split(b"],[")
            if len(rows) != ld.fill_counts[ai]:
                continue  # pragma: no cover - (as above)
            a = accts[ai]
            f = _Fills(ld.fill_lists[ai], ai)
            f.rows = rows
            f.last = ld.fill_lasts[ai]
            f.piece = piece
            self.fills[a] = f
        return True

    def update(self, accts: list[Account], sidx: dict[str, int]) -> None:
        """Brings the kept windows and fills in line with the engine's accounts (``accts``, in
        the engine's order; ``sidx``: each symbol's index): encodes what changed since."""
        self.seed_loaded()
        names = list(sidx)
        if names != self.syms:
            self.reset()
            self.syms = names
        windows: dict[Account, _Window] = {}
        fills: dict[Account, _Fills] = {}
        for ai in range(len(accts)):
            a = accts[ai]
            w = self.windows.get(a)
            if w is None or w.dq is not a.finished or w.ai != ai:
                w = _Window(a.finished, ai)
            w.sync(a, sidx, self)
            windows[a] = w
            f = self.fills.get(a)
            if f is None or f.dq is not a.fills or f.ai != ai:
                f = _Fills(a.fills, ai)
            f.sync(a, sidx, self)
            fills[a] = f
        self.windows = windows
        self.fills = fills

    def finished(self, parts: list[bytes]) -> None:
        """Appends the finished orders' sections to ``parts`` (after ``update``): the block of
        every window's orders (each account's oldest first) and their symbol column, each with
        its length, as the snapshot writes them."""
        runs: list[_Run] = []
        for w in self.windows.values():
            runs.extend(w.runs)
        _write_block(parts, runs, len(self.windows))
        for r in self.unsealed:
            r.seal()
        self.unsealed = []

    def fills_json(self) -> bytes:
        """The snapshot's fills JSON (after ``update``): [[account index, [row, ...]], ...] for
        the accounts with fills."""
        pieces = [f.piece for f in self.fills.values() if f.piece]
        return b"".join([b"[", b",".join(pieces), b"]"])


def _loaded_run(orders: list[Order], k: int, ai: int, raw: list[list[int]], codes: list[int],
                starts: list[int], datas: list[bytes]) -> _Run:
    """The run of ``orders``, orders ``k``.. of a block a restore read: each column's bytes at
    the block's width (``codes``; the values of column ``c`` start at ``starts[c]`` in
    ``datas[c]``, ``raw[c]`` holds them as stored) and its range, as ``_Run.encode`` finds it."""
    r = _Run(orders)
    n = r.n
    end = k + n
    lo: list[int] = []
    hi: list[int] = []
    for c in range(_ALL):
        code = codes[c]
        delta = c == C_OID or c == C_PRICE or c == C_TS
        a0 = k + 1 if delta else k
        r.codes[c] = code
        if code:
            width = _WIDTHS[code]
            st = starts[c]
            r.data[c] = datas[c][st + a0 * width:st + end * width]
        if c == C_ACCT:
            lo.append(0)
            hi.append(ai)
            continue
        mn, mx = _span(raw[c], a0, end) if code else (0, 0)
        if c in _OR_COLS:  # (the max has the OR's bit length, all a width depends on)
            lo.append(0)
            hi.append(mn if mn < 0 else mx)
        else:
            lo.append(mn)
            hi.append(mx)
    r.lo = lo
    r.hi = hi
    return r


def _span(vals: list[int], a: int, b: int) -> tuple[int, int]:
    """The smallest and largest of ``vals[a:b]`` and 0 (a loop: compiled, it is several times
    faster than min and max of a slice, ~1,800 runs of 12 columns at a restart)."""
    mn = 0
    mx = 0
    for i in range(a, b):
        v = vals[i]
        if v < mn:
            mn = v
        elif v > mx:
            mx = v
    return mn, mx


def _fill_pieces(blob: bytes) -> list[bytes]:
    """The snapshot's fills JSON ([[account index, [row, ...]], ...]) as each account's piece: a
    row holds only numbers and digit strings, so "]]],[" is where one account's ends."""
    body = blob[1:-1]
    if not body:
        return []
    parts = body.split(b"]]],[")
    last = len(parts) - 1
    return [(b"[" if i else b"") + parts[i] + (b"]]]" if i < last else b"") for i in range(len(parts))]


def _encode_new(runs: list[_Run], c: int, code: int) -> None:
    """Column ``c`` of the runs that have not encoded it yet, at the width of ``code``: one array
    for all of them (a run a take would mean thousands of small arrays on a first take)."""
    delta = c == C_OID or c == C_PRICE or c == C_TS
    vals: list[int] = []
    todo: list[_Run] = []
    for r in runs:
        rv = r.vals
        if rv is not None and r.codes[c] < 0:
            vals.extend(rv[c][1:] if delta else rv[c])
            todo.append(r)
    if not todo:
        return
    big = col_bytes(vals, code)
    width = _WIDTHS[code]
    off = 0
    for r in todo:
        k = (r.n - 1 if delta else r.n) * width
        r.data[c] = big[off:off + k]
        r.codes[c] = code
        off += k


def _write_block(parts: list[bytes], runs: list[_Run], naccts: int) -> None:
    """The runs as one block (``columns.encode_orders``' bytes for all their orders, counted as
    (n, 0)) and then their symbol column (``columns.put_int_column``'s), each after its u64
    length."""
    lo = [0] * _ALL
    hi = [0] * _ALL
    heads: list[int] = []  # each run's first order id, price and time stamp differences
    last_oid = last_price = last_ts = 0
    total = 0
    for r in runs:
        for c, d in ((C_OID, r.oid0 - last_oid), (C_PRICE, r.price0 - last_price),
                     (C_TS, r.ts0 - last_ts)):
            heads.append(d)
            if d < lo[c]:
                lo[c] = d
            elif d > hi[c]:
                hi[c] = d
        last_oid = r.oid1
        last_price = r.price1
        last_ts = r.ts1
        total += r.n
        rlo = r.lo
        rhi = r.hi
        for c in range(_ALL):
            if rlo[c] < lo[c]:
                lo[c] = rlo[c]
            if c in _OR_COLS:
                hi[c] |= rhi[c]
            elif rhi[c] > hi[c]:
                hi[c] = rhi[c]
    lo[C_ACCT] = 0
    hi[C_ACCT] = naccts - 1 if naccts else 0
    if hi[2] < 0 or hi[3] < 0:  # pragma: no cover - a run with one is refused when encoded
        raise SnapshotError("an order has a negative quantity")
    codes = [col_code(lo[c], hi[c], SnapshotError) for c in range(_ALL)]
    blk: list[bytes] = [_SIDES.pack(total, 0)]
    for c in range(NCOLS):
        code = codes[c]
        blk.append(_CODE_BYTE[code])
        if not code:
            continue
        _encode_new(runs, c, code)
        k = 0 if c == C_OID else 1 if c == C_PRICE else 2 if c == C_TS else -1
        width = _WIDTHS[code]
        for i in range(len(runs)):
            if k >= 0:
                blk.append(heads[3 * i + k].to_bytes(width, "little", signed=True))
            blk.append(runs[i].data_at(c, code))
    coids = [r.coid_b for r in runs]
    evs = [r.ev_b for r in runs]
    blk.append(_U64.pack(sum([len(x) for x in coids])))
    blk.extend(coids)
    blk.append(_U64.pack(sum([len(x) for x in evs])))
    blk.extend(evs)
    parts.append(_U64.pack(sum([len(x) for x in blk])))
    parts.extend(blk)
    code = codes[SYM_COL]
    sym: list[bytes] = [_CODE_BYTE[code]]
    if code:
        _encode_new(runs, SYM_COL, code)
        for r in runs:
            sym.append(r.data_at(SYM_COL, code))
    parts.append(_U64.pack(sum([len(x) for x in sym])))
    parts.extend(sym)
