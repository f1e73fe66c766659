"""The snapshot's kept parts (pyengine/engine/snapcache.py): a take that reuses what the last one
encoded gives exactly the bytes of an encoding afresh (``dump(engine, use_cache=False)``) after
every kind of change: orders finishing, dedup windows dropping their oldest, cancels, amends,
fills past their window, widths of a column growing and shrinking, new accounts and symbols, a
symbol's export, drop and import (back and elsewhere), a restore, and windows changed in ways
the cache does not expect. Runs compiled and plain (MATCHX_PURE_ENGINE=1, see the Makefile)."""

from __future__ import annotations

from collections import deque

import pytest

from pyengine.engine import Engine
from pyengine.engine.migration import drop_symbol, export_symbol, import_symbol
from pyengine.engine.snapcache import RUN
from pyengine.engine.snapshot import dump
from tests.unit.test_engine_migration import Flow as MigrationFlow

ACCTS = ("a", "b", "c", "d")  # (test_engine_migration's flow trades for these)
X, Y = "X-Q", "Y-Q"


def engine(window: int = 150, syms: tuple[str, ...] = (X, Y), oid_base: int = 1) -> Engine:
    e = Engine(dedup_window=window)
    e.next_oid = oid_base
    for s in syms:
        add_symbol(e, s)
    return e


def add_symbol(e: Engine, sym: str) -> None:
    base = sym.split("-")[0]
    ev = e.apply({"op": "add_symbol", "symbol": sym, "base": base, "quote": "Q", "tick_size": "0.5",
                  "lot_size": "0.1", "maker_fee_bps": 5, "taker_fee_bps": 20}, 1)
    assert ev[0]["type"] == "symbol_added", ev
    for a in ACCTS:
        for asset in (base, "Q"):
            e.apply({"op": "deposit", "account": a, "asset": asset, "amount": "100000000",
                     "tx_id": f"{sym}-{a}-{asset}"}, 2)


class Flow(MigrationFlow):
    """test_engine_migration's flow (places, cancels and amends by client order id), with some
    orders of no client order id, some non-ASCII ones (lengths in bytes, up to 2 bytes wide)
    and some self-trades."""

    def next(self) -> dict:
        cmd = super().next()
        r = self.r
        if cmd["op"] == "place":
            k = r.random()
            if k < 0.1:
                del cmd["client_order_id"]
            elif k < 0.13:
                cmd["client_order_id"] = (cmd["client_order_id"] + "-é" * 40)[:64]
            if r.random() < 0.05:
                cmd["stp"] = "none"
        return cmd


def same(e: Engine) -> bytes:
    """The take (reusing what the last encoded) equals an encoding afresh; returns it."""
    cached = dump(e)
    assert cached == dump(e, use_cache=False)
    return cached


def run(e: Engine, flow: Flow, n: int, ts: int, every: int = 0) -> int:
    for i in range(n):
        e.apply(flow.next(), ts + i)
        if every and i % every == 0:
            same(e)
    return ts + n


def windows(e: Engine) -> int:
    return sum(len(a.finished) for a in e.accounts.values())


def test_takes_along_a_flow_equal_encodings_afresh():
    """Takes after every command, then after longer and longer stretches: windows of several
    runs, dropping their oldest orders from inside a run, fills past their window."""
    e = engine(window=150)
    flow = Flow(1, (X, Y))
    ts = run(e, flow, 300, 100, every=1)
    for stretch in (7, 64, 65, 200, 500, 1500, 4000):
        ts = run(e, flow, stretch, ts)
        same(e)
    assert windows(e) == 150 * len(ACCTS)  # every window full: the oldest dropped at each take
    assert max(len(a.fills) for a in e.accounts.values()) == 1000  # fills past their window
    assert e.snap_cache.resyncs == 0


def test_a_take_right_after_a_take_encodes_nothing():
    e = engine()
    ts = run(e, Flow(2, (X, Y)), 800, 100)
    first = same(e)
    cache = e.snap_cache
    orders, fills = cache.orders_encoded, cache.fills_encoded
    assert orders >= windows(e) and fills > 0
    assert dump(e) == first
    assert (cache.orders_encoded, cache.fills_encoded) == (orders, fills)
    # one more order (it and at most one maker finish): only the runs it changed are encoded
    # again, at most a run per window
    e.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "120", "qty": "0.1",
             "tif": "IOC"}, ts)
    same(e)
    assert 0 < cache.orders_encoded - orders <= 2 * RUN
    assert cache.fills_encoded - fills <= 2


def test_widths_that_grow_and_shrink():
    """A column's width set by one run (a time stamp jump, a long client order id) widens every
    run's bytes, and once that run leaves the windows they narrow again."""
    e = engine(window=80)
    flow = Flow(3, (X,))
    ts = run(e, flow, 400, 100)
    same(e)
    ev = e.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "95", "qty": "0.1",
                  "tif": "IOC", "client_order_id": "ü" * 64}, ts + 2**40)  # 128 bytes, a big jump
    assert ev[0]["type"] == "accepted", ev
    same(e)
    ts = run(e, flow, 600, ts + 2**40 + 1)
    same(e)  # the wide order has left a's window
    ts = run(e, flow, 3, ts)
    same(e)


def test_new_accounts_and_symbols_between_takes():
    e = engine(syms=(X,))
    ts = run(e, Flow(4, (X,)), 300, 100)
    same(e)
    add_symbol(e, Y)  # new symbol: the symbols' order the kept parts index by changes
    ts = run(e, Flow(5, (X, Y)), 300, ts)
    same(e)
    for i in range(300):  # accounts past 256: the account column widens
        e.apply({"op": "deposit", "account": f"n{i}", "asset": "Q", "amount": "1000", "tx_id": f"n{i}"}, ts)
    ts = run(e, Flow(6, (X, Y)), 200, ts)
    same(e)


def test_export_drop_and_import_back_and_elsewhere():
    src = engine()
    dst = engine(syms=(), oid_base=10**9)
    add_symbol(dst, "Z-Q")
    ts = run(src, Flow(7, (X, Y)), 1200, 100)
    run(dst, Flow(8, ("Z-Q",)), 300, 100)
    same(src)
    same(dst)
    blob, meta = export_symbol(src, X)  # its book leaves; its finished orders stay
    assert meta["finished"] > 0
    same(src)
    import_symbol(src, blob)  # an abort: the source takes its own export back
    same(src)
    ts = run(src, Flow(9, (X, Y)), 200, ts)
    same(src)
    blob, meta = export_symbol(src, X)
    drop_symbol(src, X)  # its finished orders leave the windows
    same(src)
    import_symbol(dst, blob)  # arrives elsewhere: older than the account's own orders
    same(dst)
    run(dst, Flow(10, (X, "Z-Q")), 400, ts)
    run(src, Flow(11, (Y,)), 400, ts)
    same(dst)
    same(src)
    blob, _ = export_symbol(dst, X)  # and back to a source that once dropped it
    drop_symbol(dst, X)
    import_symbol(src, blob)
    same(src)
    same(dst)
    run(src, Flow(12, (X, Y)), 300, ts + 1000)
    same(src)


def test_restore_then_takes():
    e = engine()
    flow = Flow(13, (X, Y))
    ts = run(e, flow, 900, 100)
    blob = same(e)
    r = Engine.restore(blob)
    assert same(r) == blob
    run(e, Flow(14, (X, Y)), 300, ts)
    run(r, Flow(14, (X, Y)), 300, ts)
    assert same(r) == same(e)


def test_takes_equal_an_engine_that_never_took_one():
    """The kept parts change nothing they encode (no state moves into them)."""
    a, b = engine(), engine()
    run(a, Flow(15, (X, Y)), 1500, 100, every=37)
    run(b, Flow(15, (X, Y)), 1500, 100)
    assert dump(a) == dump(b, use_cache=False)
    blob, _ = export_symbol(a, Y)
    assert blob == export_symbol(b, Y)[0]
    assert dump(a) == dump(b, use_cache=False)
    assert Engine.restore(dump(a)).state_hash() == b.state_hash()


@pytest.mark.parametrize("edit", ["rotate", "replace_middle_run", "clear_and_refill", "pop_end",
                                  "swap_end", "new_deque", "new_fills", "symbols_reordered",
                                  "accounts_reordered"])
def test_windows_changed_other_than_by_appends_and_drops(edit):
    """Nothing in the engine changes a window or a fill list but by appending and dropping its
    oldest, or by replacing it, nor reorders its symbols; if something did, the take still
    equals an encoding afresh where the cache can see it (a window's front, end and length, the
    objects, the symbols' order)."""
    e = engine(window=400)
    ts = run(e, Flow(16, (X, Y)), 1500, 100)
    same(e)
    a = max(e.accounts.values(), key=lambda acct: len(acct.finished))
    fin = a.finished
    assert len(fin) > 2 * RUN
    if edit == "rotate":
        fin.rotate(3)
    elif edit == "replace_middle_run":
        items = list(fin)
        del items[RUN:2 * RUN]
        fin.clear()
        fin.extend(items)
    elif edit == "clear_and_refill":
        items = list(fin)[5:]
        fin.clear()
        fin.extend(items)
        fin.append(items[0])  # (an order twice: the end is not the last kept order)
    elif edit == "pop_end":
        fin.pop()
    elif edit == "swap_end":  # same length, same front: only the end tells
        fin.pop()
        fin.append(fin[0])
    elif edit == "new_deque":
        a.finished = deque(list(fin)[::2])
    elif edit == "new_fills":
        a.fills = deque(list(a.fills)[:-3], maxlen=a.fills.maxlen)
    elif edit == "symbols_reordered":  # every symbol's index changes
        e.symbols = dict(reversed(list(e.symbols.items())))
    else:  # every account's index changes
        e.accounts = dict(reversed(list(e.accounts.items())))
    same(e)
    run(e, Flow(17, (X, Y)), 100, ts)
    same(e)


def test_a_window_holding_another_accounts_order_is_encoded_afresh():
    e = engine()
    run(e, Flow(18, (X, Y)), 600, 100)
    same(e)
    accts = list(e.accounts.values())
    accts[0].finished.append(accts[1].finished[-1])  # not something the engine does
    assert dump(e) == dump(e, use_cache=False)


def test_a_restore_keeps_what_it_read_and_takes_after_it_equal_encodings_afresh():
    """A restore keeps the finished orders' block and the fills it has just read, and the first
    take builds the kept parts from them (snapcache's ``keep_loaded``, ``seed_loaded``): right
    after the restore it encodes nothing; after changes made before it (a restarting member's
    replay: windows dropping their oldest from inside a run and gaining new runs, fills past
    their window) it encodes only what changed, and every take equals an encoding afresh and
    the engine that never restored, a width growing after it too."""
    e = engine(window=150)
    ts = run(e, Flow(19, (X, Y)), 3000, 100)
    blob = dump(e, use_cache=False)
    r = Engine.restore(blob)
    cache = r.snap_cache
    assert cache.seeded and not cache.windows  # nothing built at the restore
    assert dump(r) == blob
    assert sum(len(w.runs) for w in cache.windows.values()) > len(ACCTS)
    assert all(run_.n <= RUN for w in cache.windows.values() for run_ in w.runs)
    assert (cache.orders_encoded, cache.fills_encoded, cache.resyncs) == (0, 0, 0)
    replayed = Engine.restore(blob)
    ts2 = run(e, Flow(20, (X, Y)), 400, ts)
    run(replayed, Flow(20, (X, Y)), 400, ts)  # before its first take
    assert same(replayed) == same(e)
    cache = replayed.snap_cache
    # what arrived since, and at most a partly dropped run per window: not the whole windows
    assert 0 < cache.orders_encoded <= 400 + len(ACCTS) * RUN
    assert cache.fills_encoded <= 2 * 400 and cache.resyncs == 0
    wide = {"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "95", "qty": "0.1",
            "tif": "IOC", "client_order_id": "ü" * 64}
    for x in (e, replayed):
        x.apply(wide, ts2 + 2**40)
    assert same(replayed) == same(e)


def test_a_restore_kept_then_fills_and_windows_replaced_before_the_first_take():
    """What the restore read is for the windows and fill lists it read: ones replaced or
    dropped before the first take (a symbol's drop and import) are encoded as they are."""
    e = engine()
    run(e, Flow(22, (X, Y)), 1200, 100)
    r = Engine.restore(dump(e, use_cache=False))
    blob, _ = export_symbol(r, X)
    drop_symbol(r, X)
    import_symbol(r, blob)
    assert r.snap_cache.loaded is not None
    same(r)


def test_a_restore_of_an_engine_with_empty_windows_and_no_fills():
    e = engine()
    blob = dump(e, use_cache=False)
    r = Engine.restore(blob)
    assert r.snap_cache.seeded
    assert dump(r) == blob
    run(r, Flow(21, (X,)), 200, 100)
    same(r)
