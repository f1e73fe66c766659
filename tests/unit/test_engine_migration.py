"""Moving a symbol between engines (pyengine/engine/migration.py): the book, its holds and its
idempotency state arrive alike, an abort restores the source exactly, and bad exports change
nothing. Runs compiled and plain (MATCHX_PURE_ENGINE=1, see the Makefile)."""

from __future__ import annotations

import random

import pytest

from pyengine.engine import Engine
from pyengine.engine.migration import (
    MigrationError,
    book_rows,
    drop_symbol,
    export_symbol,
    funds_problems,
    import_symbol,
    read_export,
)

ACCTS = ("a", "b", "c", "d")
X, Y, Z = "X-Q", "Y-Q", "Z-Q"


def add(e: Engine, sym: str, base: str, fees: tuple[int, int] = (5, 20)) -> None:
    ev = e.apply({"op": "add_symbol", "symbol": sym, "base": base, "quote": "Q", "tick_size": "0.5",
                  "lot_size": "0.1", "maker_fee_bps": fees[0], "taker_fee_bps": fees[1]}, 1)
    assert ev[0]["type"] == "symbol_added", ev


def fund(e: Engine, tag: str, amount: str = "1000000") -> None:
    for a in ACCTS:
        for asset in list(e.assets):
            ev = e.apply({"op": "deposit", "account": a, "asset": asset, "amount": amount,
                          "tx_id": f"{tag}-{a}-{asset}"}, 2)
            assert ev[0]["type"] == "deposited", ev


def source(oid_base: int = 1, window: int = 50) -> Engine:
    e = Engine(dedup_window=window)
    e.next_oid = oid_base
    add(e, X, "X")
    add(e, Y, "Y")
    fund(e, "src")
    return e


def dest(oid_base: int = 10**9, window: int = 50) -> Engine:
    e = Engine(dedup_window=window)
    e.next_oid = oid_base
    add(e, Z, "Z")
    fund(e, "dst")
    return e


class Flow:
    """A random order flow on some symbols; every order has a client_order_id."""

    def __init__(self, seed: int, syms: tuple[str, ...]) -> None:
        self.r = random.Random(seed)
        self.syms = syms
        self.n = 0
        self.tag = f"f{seed}-"  # client order ids of different flows never collide
        self.coids: list[tuple[str, str, str]] = []  # (account, symbol, coid) of every place

    def next(self) -> dict:
        r = self.r
        sym = r.choice(self.syms)
        acct = r.choice(ACCTS)
        k = r.random()
        if k < 0.6 or not self.coids:
            self.n += 1
            coid = f"{self.tag}{self.n}"
            self.coids.append((acct, sym, coid))
            cmd = {"op": "place", "account": acct, "symbol": sym, "side": r.choice(("buy", "sell")),
                   "price": str(r.randint(190, 210) / 2), "qty": str(r.randint(1, 30) / 10),
                   "client_order_id": coid}
            if r.random() < 0.1:
                cmd["tif"] = "IOC"
            return cmd
        a, s, c = r.choice(self.coids)
        if k < 0.8:
            return {"op": "cancel", "account": a, "symbol": s, "client_order_id": c}
        if k < 0.9:
            return {"op": "amend", "account": a, "symbol": s, "client_order_id": c,
                    "qty": str(r.randint(1, 30) / 10)}
        # a resend of an earlier place: a duplicate while remembered
        return {"op": "place", "account": a, "symbol": s, "side": "buy", "price": "100",
                "qty": "1", "client_order_id": c}


def run(e: Engine, flow: Flow, n: int, ts: int = 100) -> list[list[dict]]:
    out = []
    for i in range(n):
        out.append(e.apply(flow.next(), ts + i))
    return out


def holds_in(meta: dict) -> dict[str, int]:
    return {a: int(v) for a, v in meta["holds"].items()}


def neg(d: dict[str, int]) -> dict[str, int]:
    return {k: -v for k, v in d.items()}


def test_export_import_moves_book_holds_and_dedup_state():
    src, dst = source(), dest()
    run(src, Flow(1, (X, Y)), 400)
    run(dst, Flow(2, (Z,)), 100)
    before = book_rows(src, X)
    y_before = book_rows(src, Y)
    assert before, "the flow left a book to move"
    blob, meta = export_symbol(src, X)
    assert meta["orders"] == len(before) and meta["finished"] > 0
    # the source keeps its other symbol and the frozen, empty symbol; the holds are in transit
    assert book_rows(src, X) == [] and book_rows(src, Y) == y_before
    assert funds_problems(src, neg(holds_in(meta))) == []
    got = import_symbol(dst, blob)
    assert got["symbol"] == X and got["coid_conflicts"] == 0
    assert book_rows(dst, X) == before
    assert funds_problems(dst, holds_in(meta)) == []
    dst.check_invariants  # noqa: B018 - (its conservation check knows nothing of moves)
    # the destination answers like the source would: cancel by id, duplicates of open orders
    oid, acct = before[0][0], before[0][1]
    ev = dst.apply({"op": "cancel", "account": acct, "symbol": X, "order_id": oid}, 10_000)
    assert ev[0]["type"] == "cancelled" and ev[0]["order_id"] == oid
    coid = before[1][7]
    ev = dst.apply({"op": "place", "account": before[1][1], "symbol": X, "side": "buy",
                    "price": "100", "qty": "1", "client_order_id": coid}, 10_001)
    assert ev[0].get("duplicate") is True and ev[0]["order_id"] == before[1][0]
    assert funds_problems(dst, holds_in(meta)) == []
    assert drop_symbol(src, X) == meta["finished"]
    assert book_rows(src, X) == [] and funds_problems(src, neg(holds_in(meta))) == []


def test_abort_restores_the_source_exactly():
    src = source()
    run(src, Flow(3, (X, Y)), 500)
    h = src.state_hash()
    blob, meta = export_symbol(src, X)
    assert src.state_hash() != h
    got = import_symbol(src, blob)  # the source takes its own export back
    assert got["finished_skipped"] == meta["finished"]
    assert src.state_hash() == h
    src.check_invariants()
    # and it trades on as if nothing happened
    run(src, Flow(4, (X, Y)), 100)
    src.check_invariants()


def test_export_is_deterministic():
    a, b = source(), source()
    run(a, Flow(5, (X, Y)), 300)
    run(b, Flow(5, (X, Y)), 300)
    assert export_symbol(a, X)[0] == export_symbol(b, X)[0]


@pytest.mark.parametrize("seed", range(12))
def test_random_streams_after_a_move_match_an_engine_that_never_moved(seed):
    """The same commands on the symbol give the same answers at the destination as at a copy of
    the source that kept the symbol (ids aligned; balances large enough never to differ; windows
    that forget nothing: the destination's window holds fewer of the account's orders, so with
    small ones it remembers longer than the source would)."""
    src, dst = source(window=10**6), dest(window=10**6)
    flow = Flow(100 + seed, (X, Y))
    run(src, flow, 300 + 40 * seed)
    run(dst, Flow(200 + seed, (Z,)), 50)
    ref = Engine.restore(src.snapshot())
    dst.next_oid, dst.next_tid = src.next_oid, src.next_tid  # same ids for the comparison
    blob, meta = export_symbol(src, X)
    import_symbol(dst, blob)
    fund(dst, "after")  # the destination has never seen asset X: its accounts need some
    drop_symbol(src, X)
    flow.syms = (X,)
    flow.coids = [c for c in flow.coids if c[1] == X]
    for i in range(300):
        cmd = flow.next()
        assert dst.apply(cmd, 50_000 + i) == ref.apply(cmd, 50_000 + i), (i, cmd)
    assert book_rows(dst, X) == book_rows(ref, X)
    assert funds_problems(dst, holds_in(meta)) == []
    assert funds_problems(src, neg(holds_in(meta))) == []
    # both sides still trade their other symbols
    run(src, Flow(300 + seed, (Y,)), 50)
    run(dst, Flow(400 + seed, (Z,)), 50)
    assert funds_problems(dst, holds_in(meta)) == []


def test_there_and_back_many_times():
    a, b = source(), dest()
    flow = Flow(7, (X,))
    net = {"a": {}, "b": {}}
    cur, other, ka, kb = a, b, "a", "b"
    for _ in range(20):
        run(cur, flow, 30)
        blob, meta = export_symbol(cur, X)
        import_symbol(other, blob)
        drop_symbol(cur, X)
        for asset, v in holds_in(meta).items():
            net[ka][asset] = net[ka].get(asset, 0) - v
            net[kb][asset] = net[kb].get(asset, 0) + v
        assert funds_problems(cur, net[ka]) == [] and funds_problems(other, net[kb]) == []
        cur, other, ka, kb = other, cur, kb, ka
    assert funds_problems(a, net["a"]) == [] and funds_problems(b, net["b"]) == []


def test_bad_exports_change_nothing():
    src, dst = source(), dest()
    run(src, Flow(8, (X,)), 200)
    blob, _ = export_symbol(src, X)
    h = dst.state_hash()
    for bad, what in (
        (blob[:-1], "checksum"),
        (blob[:10], "truncated"),
        (blob[:40] + bytes([blob[40] ^ 1]) + blob[41:], "checksum"),
        (b"not an export at all" * 4, "checksum"),
        ("text", "bytes"),
    ):
        with pytest.raises(MigrationError, match=what):
            import_symbol(dst, bad)
        assert dst.state_hash() == h
    # a destination with a live book of the symbol refuses
    add(dst, X, "X")
    dst.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "99",
               "qty": "1"}, 5)
    h = dst.state_hash()
    with pytest.raises(MigrationError, match="already has a book"):
        import_symbol(dst, blob)
    assert dst.state_hash() == h


def test_colliding_order_ids_and_decimals_are_refused():
    src = source()
    run(src, Flow(9, (X,)), 200)
    blob, _ = export_symbol(src, X)
    same_ids = dest(oid_base=1)
    run(same_ids, Flow(10, (Z,)), 200)
    assert same_ids.orders, "the destination has open orders with overlapping ids"
    h = same_ids.state_hash()
    with pytest.raises(MigrationError, match="already open here"):
        import_symbol(same_ids, blob)
    assert same_ids.state_hash() == h
    other_dec = Engine()
    other_dec.apply({"op": "add_symbol", "symbol": "W", "base": "X", "quote": "V", "tick_size": "1",
                     "lot_size": "0.000000000001"}, 1)
    h = other_dec.state_hash()
    with pytest.raises(MigrationError, match="decimals"):
        import_symbol(other_dec, blob)
    assert other_dec.state_hash() == h


def test_export_of_unknown_symbol_and_drop_of_live_book():
    src = source()
    with pytest.raises(MigrationError, match="unknown symbol"):
        export_symbol(src, "NOPE")
    src.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "99", "qty": "1"}, 5)
    with pytest.raises(MigrationError, match="still has a book"):
        drop_symbol(src, X)


def test_export_carries_counters_and_sequence():
    src = source(oid_base=77)
    run(src, Flow(11, (X,)), 50)
    seq = getattr(src.symbols[X], "seq", 0)
    blob, meta = export_symbol(src, X)
    m, mini = read_export(blob)
    assert m == meta and m["seq"] == seq and m["next_oid"] == src.next_oid
    assert getattr(mini.symbols[X], "seq", 0) == seq
    assert m["next_tid"] == src.next_tid and list(mini.symbols) == [X]


def test_full_dedup_window_forgets_imported_orders_first():
    src, dst = source(), dest()
    run(src, Flow(12, (X,)), 400)
    run(dst, Flow(13, (Z,)), 600)
    blob, meta = export_symbol(src, X)
    got = import_symbol(dst, blob)
    for acct in dst.accounts.values():
        assert len(acct.finished) <= dst.dedup_window
    assert got["finished_forgotten"] > 0
    assert funds_problems(dst, holds_in(meta)) == []
