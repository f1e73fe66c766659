"""The export format (pyengine/engine/migration.py, version 2: the book as columns of narrow
ints): a round trip keeps the book exact and is compact; a corrupted export (even one whose
checksum was made to fit) is refused with a clear error and changes nothing; version 1 exports
are still read. Runs compiled and plain (MATCHX_PURE_ENGINE=1)."""

from __future__ import annotations

import hashlib
import struct
from collections import deque

import pytest

from pyengine.engine import Engine
from pyengine.engine.migration import (
    MigrationError,
    book_rows,
    export_symbol,
    funds_problems,
    import_symbol,
    read_export,
)
from pyengine.engine.model import Account, Bal, EngineState
from pyengine.engine.snapshot import dump
from tests.unit.test_engine_migration import Flow, X, dest, holds_in, run, source

_HDR = struct.Struct("<8sHI")
_U64 = struct.Struct("<Q")


def _parts(blob: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(version, meta, state, book) of an export."""
    _magic, version, mlen = _HDR.unpack_from(blob, 0)
    off = _HDR.size
    meta = blob[off:off + mlen]
    off += mlen
    (slen,) = _U64.unpack_from(blob, off)
    off += 8
    state = blob[off:off + slen]
    off += slen
    (blen,) = _U64.unpack_from(blob, off)
    off += 8
    return version, meta, state, blob[off:off + blen]


def _signed(version: int, meta: bytes, state: bytes, book: bytes, trailer: bytes = b"") -> bytes:
    """An export put together from its parts, with a checksum that fits."""
    body = (_HDR.pack(b"MXSYMEXP", version, len(meta)) + meta + _U64.pack(len(state)) + state
            + _U64.pack(len(book)) + book + trailer)
    return body + hashlib.blake2b(body, digest_size=32).digest()


def _moved() -> tuple[Engine, Engine, bytes, dict, list[tuple]]:
    src, dst = source(), dest()
    run(src, Flow(21, (X,)), 400)  # fills, partial fills, amends, cancels, IOCs
    rows = book_rows(src, X)
    blob, meta = export_symbol(src, X)
    return src, dst, blob, meta, rows


def test_round_trip_is_exact_and_compact():
    src, dst, blob, meta, rows = _moved()
    assert rows and any(r[6] for r in rows), "some resting orders are partly filled"
    version, _m, _s, book = _parts(blob)
    assert version == 2
    assert len(book) < 30 * len(rows)  # version 1 took ~75 bytes an order
    got = import_symbol(dst, blob)
    assert book_rows(dst, X) == rows and got["orders"] == len(rows)
    assert funds_problems(dst, holds_in(meta)) == []
    # the same bytes from the same state: every member exports alike
    src2 = source()
    run(src2, Flow(21, (X,)), 400)
    assert export_symbol(src2, X)[0] == blob
    # and the imported book trades: a crossing order fills against it at the best price
    best_ask = min((r for r in rows if r[2] == 1), key=lambda r: (r[3], r[0]))
    ev = dst.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "1000",
                    "qty": "0.1", "tif": "IOC"}, 10**6)
    fills = [e for e in ev if e["type"] == "trade"]
    assert fills and fills[0]["maker_order_id"] == best_ask[0]
    assert funds_problems(dst, holds_in(meta)) == []


def test_non_ascii_client_order_ids_and_empty_book_round_trip():
    src, dst = source(), dest()
    for i, coid in enumerate(("ä-1", "x", "日本-3", "ok")):
        ev = src.apply({"op": "place", "account": "a", "symbol": X, "side": "sell",
                        "price": str(101 + i), "qty": "1", "client_order_id": coid}, 10 + i)
        assert ev[0]["type"] == "accepted", ev
    rows = book_rows(src, X)
    blob, meta = export_symbol(src, X)
    import_symbol(dst, blob)
    assert book_rows(dst, X) == rows
    assert dst.apply({"op": "place", "account": "a", "symbol": X, "side": "sell", "price": "101",
                      "qty": "1", "client_order_id": "日本-3"}, 50)[0].get("duplicate") is True
    # an empty book moves too
    blob2, meta2 = export_symbol(dest(), "Z-Q")
    assert meta2["orders"] == 0 and _parts(blob2)[3][:16] == bytes(16)


def _tampered(blob: bytes) -> list[tuple[bytes, str]]:
    version, meta, state, book = _parts(blob)
    n_bids, n_asks = struct.unpack_from("<QQ", book, 0)
    assert n_bids and n_asks
    cols = book[16:]
    out = [
        (_signed(4, meta, state, book), "version 4 is not supported"),
        (_signed(version, meta, state, book[:-1]), "truncated|inconsistent|trailing"),
        (_signed(version, meta, state, book + b"\0"), "trailing"),
        (_signed(version, meta, state, book[:20]), "truncated|inconsistent"),
        (_signed(version, meta, state, struct.pack("<QQ", n_bids + 1, n_asks - 1) + cols),
         "malformed|priority"),
        (_signed(version, meta, state, struct.pack("<QQ", 10**12, 0) + cols), "inconsistent"),
        (_signed(version, meta, state, book[:16] + b"\x09" + cols[1:]), "column code 9"),
        (_signed(version, meta, b"nonsense", book), "state corrupt"),
        (_signed(version, b"{not json", state, book), "malformed"),
    ]
    # the first column (order ids): the second order gets the first one's id
    code = cols[0]
    width = (0, 1, 2, 4, 8)[code]
    if width:
        first = cols[1:1 + width]
        second = (0).to_bytes(width, "little")
        bad = book[:16] + bytes([code]) + first + second + cols[1 + 2 * width:]
        out.append((_signed(version, meta, state, bad), "twice"))
    return out


def test_corrupted_exports_are_refused_and_change_nothing():
    _src, dst, blob, _meta, _rows = _moved()
    h = dst.state_hash()
    for bad, what in _tampered(blob):
        with pytest.raises(MigrationError, match=what):
            import_symbol(dst, bad)
        assert dst.state_hash() == h, what
    # a flipped bit anywhere fails the checksum
    for pos in (3, 20, len(blob) // 2, len(blob) - 40, len(blob) - 1):
        bad = blob[:pos] + bytes([blob[pos] ^ 0x10]) + blob[pos + 1:]
        with pytest.raises(MigrationError):
            import_symbol(dst, bad)
        assert dst.state_hash() == h
    import_symbol(dst, blob)  # the good one still fits


def test_changed_quantities_or_prices_are_refused():
    _src, dst, blob, _meta, _rows = _moved()
    version, meta, state, book = _parts(blob)
    h = dst.state_hash()
    # walk the columns to the third one (quantities) and the second (price steps)
    n = sum(struct.unpack_from("<QQ", book, 0))
    pos = 16
    starts = []
    for _ in range(3):
        starts.append(pos)
        code = book[pos]
        pos += 1 + n * (0, 1, 2, 4, 8)[code]
    qpos = starts[2]
    assert book[qpos] != 0
    w = (0, 1, 2, 4, 8)[book[qpos]]
    q0 = int.from_bytes(book[qpos + 1:qpos + 1 + w], "little", signed=True)
    more = book[:qpos + 1] + (q0 + 1).to_bytes(w, "little", signed=True) + book[qpos + 1 + w:]
    with pytest.raises(MigrationError, match="holds"):
        import_symbol(dst, _signed(version, meta, state, more))
    ppos = starts[1]
    w = (0, 1, 2, 4, 8)[book[ppos]]
    # the second order's price step made large: the bids are no longer best first
    worse = book[:ppos + 1 + w] + (2 ** (8 * w - 1) - 1).to_bytes(w, "little", signed=True) \
        + book[ppos + 1 + 2 * w:]
    with pytest.raises(MigrationError, match="priority|holds"):
        import_symbol(dst, _signed(version, meta, state, worse))
    assert dst.state_hash() == h


def _v1_export(eng: Engine, name: str) -> bytes:
    """What version 1 wrote (the whole book in the snapshot codec), from a copy of ``eng``."""
    import orjson

    from pyengine.engine.migration import _book, _detach_row

    e = Engine.restore(eng.snapshot())
    sym = e.symbols[name]
    mini = EngineState(dedup_window=e.dedup_window)
    mini.next_oid, mini.next_tid = e.next_oid, e.next_tid
    for asset in (sym.base, sym.quote):
        mini.assets[asset] = e.assets[asset]
        mini.fees[asset] = 0
    mini.symbols[name] = sym
    book = _book(sym)
    held: dict[tuple[str, str], int] = {}
    for o in book:
        k = (o.acct.name, sym.quote if o.side == 0 else sym.base)
        held[k] = held.get(k, 0) + o.qty * o.unit
    for acct in e.accounts.values():
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
    meta = orjson.dumps({"symbol": name, "orders": len(book), "holds": {}}, option=orjson.OPT_SORT_KEYS)
    state = dump(mini)
    body = _HDR.pack(b"MXSYMEXP", 1, len(meta)) + meta + _U64.pack(len(state)) + state
    return body + hashlib.blake2b(body, digest_size=32).digest()


def test_version_1_exports_are_still_read():
    src, dst = source(), dest()
    run(src, Flow(23, (X,)), 300)
    rows = book_rows(src, X)
    v1 = _v1_export(src, X)
    meta, mini = read_export(v1)
    assert meta["orders"] == len(rows) and not mini.symbols[X].bid_keys
    import_symbol(dst, v1)
    assert book_rows(dst, X) == rows
    _blob, meta2 = export_symbol(src, X)  # the same book, now as version 2: the same holds
    assert funds_problems(dst, holds_in(meta2)) == []
