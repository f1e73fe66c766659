"""The pre-copy in pieces (pyengine/engine/migration_pieces.py): the book exported a few queues at
a time while the symbol trades between the pieces, then a freeze that walks only the queues that
changed. The destination's book made of the pieces and the delta equals the source's at the
freeze, in the same state a whole export would leave; the delta is the same bytes whether the
source kept its marks or lost them in a restart; an abort gives the source back exactly.
Runs compiled and plain (MATCHX_PURE_ENGINE=1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from migration_cases import check_as_whole, copy, freeze_beside_whole, restored_exactly, sha
from test_engine_migration import ACCTS, Flow, X, Y, Z, add, dest, holds_in, neg, run, source

from pyengine.engine import Engine, migration_shadow
from pyengine.engine.migration import (
    MigrationError,
    book_rows,
    funds_problems,
)
from pyengine.engine.migration_pieces import (
    Pieces,
    cleanup,
    export_delta_pieces,
    pieces_of,
    pieces_sha,
    take_piece,
)
from pyengine.engine.migration_shadow import Shadow, extend_shadow, import_pieces
from pyengine.engine.model import EV_REJECTED, OP_AMEND, OP_CANCEL


def precopy(src: Engine, pc: Pieces, n: int, between=None) -> list[bytes]:
    """Every piece of X (``n`` orders each), ``between(i)`` run after piece ``i``."""
    blobs: list[bytes] = []
    while True:
        blob, meta = take_piece(src, X, pc, n)
        assert meta["piece"] == len(blobs)
        blobs.append(blob)
        if meta["last"]:
            return blobs
        if between is not None:
            between(len(blobs) - 1)


def shadow_of(blobs: list[bytes], eng: Engine) -> Shadow:
    sh = None
    for b in blobs:
        sh = extend_shadow(eng, sh, b)
    assert sh is not None
    return sh


@pytest.mark.parametrize("seed,n", [(s, n) for s in range(6) for n in (1, 3, 8)])
def test_pieces_with_trading_between_them_give_the_whole_exports_book_and_state(seed, n):
    """Places, fills, cancels, amends and resends between every two pieces and after the last;
    the destination ends where a whole export at the freeze would leave it (same engine state
    hash), and so does the source; funds hold on both sides."""
    src, dst = source(), dest()
    flow = Flow(700 + seed, (X, Y))
    run(src, flow, 300 + 20 * seed)
    pc = Pieces()
    blobs = precopy(src, pc, n, lambda i: run(src, flow, 3 + seed, ts=2_000 + 50 * i))
    assert len(blobs) > 1
    shadow = shadow_of(blobs, dst)
    run(src, flow, 20 + 5 * seed, ts=40_000)
    base = pieces_sha([sha(b) for b in blobs])
    fz = freeze_beside_whole(src, dst, lambda: export_delta_pieces(src, X, pc, base))
    assert fz.meta["pieces"] == len(blobs)
    got = import_pieces(dst, shadow, base, fz.delta)
    indexes_hold_the_book(dst)
    check_as_whole(src, dst, fz, got, flow)


@pytest.mark.parametrize("meanwhile", ["nothing", "account", "symbol"])
def test_pieces_built_before_the_destination_changed_import_as_the_whole_export(meanwhile):
    """The destination builds each piece against its accounts, balances and symbol as they are
    then (here: no account b, no balance of X, no symbol X); when one appeared before the import
    (b's first deposit, the symbol added), the import points the orders at it: the destination
    ends where a whole export leaves it, in either case."""
    src = source()
    dst = Engine(dedup_window=50)
    dst.next_oid = 10**9
    add(dst, Z, "Z")
    for a in "acd":  # b's account is new here (accounts new at once land in another order)
        dst.apply({"op": "deposit", "account": a, "asset": "Q", "amount": "7", "tx_id": f"early-{a}"}, 2)
    assert "b" not in dst.accounts
    flow = Flow(61, (X, Y))
    run(src, flow, 300)
    pc = Pieces()
    blobs = precopy(src, pc, 5, lambda i: run(src, flow, 3, ts=2_000 + 50 * i))
    shadow = shadow_of(blobs, dst)
    if meanwhile == "account":
        ev = dst.apply({"op": "deposit", "account": "b", "asset": "Q", "amount": "5", "tx_id": "late-b"}, 3)
        assert ev[0]["type"] == "deposited", ev
    elif meanwhile == "symbol":
        add(dst, X, "X")
    run(src, flow, 30, ts=40_000)
    base = pieces_sha([sha(b) for b in blobs])
    fz = freeze_beside_whole(src, dst, lambda: export_delta_pieces(src, X, pc, base))
    got = import_pieces(dst, shadow, base, fz.delta)
    indexes_hold_the_book(dst)
    check_as_whole(src, dst, fz, got, flow)


def indexes_hold_the_book(e: Engine) -> None:
    """Every order of every book in the engine's and its account's open orders, no other there,
    and each client order id naming an order of its own account."""
    book = [o for sym in e.symbols.values() for lvl in (*sym.bids.values(), *sym.asks.values())
            for o in lvl.orders()]
    assert len(book) == len(e.orders) and all(e.orders.get(o.oid) is o for o in book)
    assert sum(len(a.open) for a in e.accounts.values()) == len(e.orders)
    for a in e.accounts.values():
        assert all(e.orders.get(k) is o and o.acct is a for k, o in a.open.items())
        assert all(o.coid == c and o.acct is a for c, o in a.coid_index().items())


def test_the_symbol_state_copied_at_the_import_is_every_field_but_the_book():
    """The pre-copy's symbol object becomes the engine's with the export's state copied onto it:
    a field added to ``Symbol`` and not to that list would keep the first piece's value."""
    tree = ast.parse((Path(migration_shadow.__file__).parent / "model.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Symbol")
    slots = next(n.value for n in cls.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in n.targets))
    fields = set(ast.literal_eval(slots))
    book_and_marks = {"bids", "asks", "bid_keys", "ask_keys", "dirty", "detached"}
    assert set(migration_shadow._SYMBOL_STATE) == fields - book_and_marks


def test_the_freeze_walks_only_the_changed_queues_and_gives_the_same_bytes_without_marks():
    """A source that lost its marks (restarted: records read back from the pieces' bytes) walks
    every queue and makes the same delta as one that walks only the queue that changed."""
    a = source()
    run(a, Flow(21, (X, Y)), 400)
    b = copy(a)
    pa = Pieces()
    blobs = precopy(a, pa, 5)
    pb = pieces_of(blobs, b.symbols[X])  # b took the same pieces, then restarted
    book = book_rows(a, X)
    for e in (a, b):
        # one fill at the best bid's queue, one cancel in another queue, one new ask queue
        e.apply({"op": "place", "account": "d", "symbol": X, "side": "sell", "price": "1",
                 "qty": "0.1", "client_order_id": "hit", "tif": "IOC"}, 50_000)
        e.apply({"op": "cancel", "account": book[-1][1], "symbol": X, "order_id": book[-1][0]}, 50_001)
        e.apply({"op": "place", "account": "a", "symbol": X, "side": "sell", "price": "300",
                 "qty": "1", "client_order_id": "far"}, 50_002)
    # the queues touched: the best bid's (the fill), the cancelled order's, the new one at 300
    touched = {book[0][3], -book[-1][3], -600}
    assert book[0][2] == 0 and book[-1][2] == 1
    sym = a.symbols[X]
    size = 0
    for key in touched:
        lvl = sym.bids.get(key) if key > 0 else sym.asks.get(-key)
        o = lvl.head if lvl is not None else None
        while o is not None:
            size += 1
            o = o.nxt
    base = pieces_sha([sha(x) for x in blobs])
    da, ma = export_delta_pieces(a, X, pa, base)
    db, mb = export_delta_pieces(b, X, pb, base)
    assert da == db and ma == mb
    assert ma["changed"] + ma["removed"] >= 2 and ma["appended"] == 1
    assert 1 <= pa.walked == size < len(book) // 2  # those queues only
    assert pb.walked == ma["orders"]
    assert a.state_hash() == b.state_hash()


def test_an_order_that_moves_to_a_queue_not_yet_exported_is_exported_once():
    """An order of piece 0 amended to a price a later piece holds: that piece leaves it out (it is
    in the baseline once), the freeze finds it moved; the result is the source's book."""
    src, dst = source(), dest()
    for i in range(4):
        src.apply({"op": "place", "account": ACCTS[i], "symbol": X, "side": "buy", "price": str(99 - i),
                   "qty": "1", "client_order_id": f"b{i}"}, 10 + i)
    pc = Pieces()
    first, meta = take_piece(src, X, pc, 1)  # the queue at 99
    assert meta["orders"] == 1 and not meta["last"]
    ev = src.apply({"op": "amend", "account": ACCTS[0], "symbol": X, "client_order_id": "b0", "price": "97"}, 20)
    assert ev[0]["type"] == "amended", ev
    rest, meta = take_piece(src, X, pc, 10)  # 98, 97 (with b0 left out), 96
    assert meta["last"] and meta["orders"] == 3
    at_freeze = book_rows(src, X)
    base = pieces_sha([sha(first), sha(rest)])
    delta, dmeta = export_delta_pieces(src, X, pc, base)
    assert dmeta["removed"] == 1 and dmeta["appended"] == 1 and dmeta["orders"] == 4
    import_pieces(dst, shadow_of([first, rest], dst), base, delta)
    assert book_rows(dst, X) == at_freeze
    assert funds_problems(dst, holds_in(dmeta)) == []


def test_abort_after_a_pieces_freeze_restores_the_source_exactly():
    src = source()
    flow = Flow(31, (X, Y))
    run(src, flow, 400)
    pc = Pieces()
    blobs = precopy(src, pc, 3, lambda i: run(src, flow, 4, ts=3_000 + 10 * i))
    run(src, flow, 40, ts=7_000)
    h = src.state_hash()
    base = pieces_sha([sha(b) for b in blobs])
    delta, meta = export_delta_pieces(src, X, pc, base)
    assert book_rows(src, X) == [] and funds_problems(src, neg(holds_in(meta))) == []
    # its detached orders are still in the indexes: the symbol takes no book before they are out
    det = pc.detached
    assert det is not None and det.total == meta["orders"] > 0 and src.symbols[X].detached
    with pytest.raises(MigrationError, match="not cleaned up yet"):
        import_pieces(src, shadow_of(blobs, src), base, delta)
    assert cleanup(src, det, det.total // 2) == det.total // 2 and src.symbols[X].detached
    assert funds_problems(src, neg(holds_in(meta))) == []
    assert cleanup(src, det, det.total + 5) == det.total and not src.symbols[X].detached
    restored_exactly(src, import_pieces(src, shadow_of(blobs, src), base, delta), meta, h, flow)


def test_the_cleanup_unlinks_the_moved_orders_for_reference_counting():
    """A member's snapshots freeze its book out of the cyclic collector: an order taken out by
    the cleanup still linked to its level and neighbours would never be freed."""
    src = source()
    flow = Flow(32, (X, Y))
    run(src, flow, 400)
    moved = [o for o in src.orders.values() if o.sym is src.symbols[X]]
    pc = Pieces()
    blobs = precopy(src, pc, 3)
    export_delta_pieces(src, X, pc, pieces_sha([sha(b) for b in blobs]))
    det = pc.detached
    assert det is not None and det.total == len(moved) > 10
    half = det.total // 2
    cleanup(src, det, half)
    out = [o for o in moved if o.key not in src.orders]
    assert len(out) == half and all(o.lvl is None and o.nxt is None and o.prev is None for o in out)
    cleanup(src, det, det.total)
    assert all(o.lvl is None and o.nxt is None and o.prev is None for o in moved)


def test_pieces_that_do_not_fit_change_nothing():
    src, dst = source(), dest()
    run(src, Flow(41, (X, Y)), 300)
    pc = Pieces()
    blobs = precopy(src, pc, 6)
    assert len(blobs) >= 3
    sh = shadow_of(blobs[:2], dst)
    rows = (list(sh.orders), dict(sh.queues), {a: list(r.held) for a, r in sh.accts.items()})
    with pytest.raises(MigrationError, match="already"):
        extend_shadow(dst, sh, blobs[1])  # the same piece twice
    assert (list(sh.orders), dict(sh.queues), {a: list(r.held) for a, r in sh.accts.items()}) == rows
    with pytest.raises(MigrationError, match="complete"):
        take_piece(src, X, pc, 6)
    base = pieces_sha([sha(b) for b in blobs])
    h = dst.state_hash()
    delta, _m = export_delta_pieces(src, X, pc, base)
    # a piece missing at the destination: another pre-copy, or a book that is not the source's
    with pytest.raises(MigrationError, match="another pre-copy"):
        import_pieces(dst, shadow_of(blobs[:-1], dst), pieces_sha([sha(b) for b in blobs[:-1]]), delta)
    with pytest.raises(MigrationError, match="not the source's"):
        import_pieces(dst, shadow_of(blobs[:-1], dst), base, delta)
    assert dst.state_hash() == h
    import_pieces(dst, shadow_of(blobs, dst), base, delta)
    assert funds_problems(dst, holds_in(_m)) == []


def test_bad_piece_requests_are_refused():
    src = source()
    run(src, Flow(51, (X, Y)), 100)
    with pytest.raises(MigrationError, match="unknown symbol"):
        take_piece(src, "NOPE", Pieces(), 5)
    with pytest.raises(MigrationError, match="at least 1"):
        take_piece(src, X, Pieces(), 0)
    assert src.symbols[X].dirty is None  # nothing started


def test_an_empty_book_is_one_last_piece():
    src, dst = source(), dest()
    pc = Pieces()
    blob, meta = take_piece(src, X, pc, 10)
    assert meta["last"] and meta["orders"] == 0
    src.apply({"op": "place", "account": "a", "symbol": X, "side": "buy", "price": "99", "qty": "1",
               "client_order_id": "late"}, 5)
    base = pieces_sha([sha(blob)])
    delta, dmeta = export_delta_pieces(src, X, pc, base)
    assert dmeta["orders"] == 1 and dmeta["appended"] == 1
    import_pieces(dst, extend_shadow(dst, None, blob), base, delta)
    assert [r[7] for r in book_rows(dst, X)] == ["late"]


def test_readers_skip_the_detached_orders_before_during_and_after_their_cleanup():
    """After a freeze the moved book's orders wait in the engine's indexes for their cleanup.
    Before it, between its pieces and after it, every command answers as on a member restored
    from a snapshot, whose indexes never held them: orders and open orders queried, cancels and
    amends by order id and client order id (JSON and compact), cancel_all without a symbol, a
    moved order's client order id placed again on another symbol; funds hold on both."""
    src = source()
    flow = Flow(61, (X, Y))
    run(src, flow, 500)
    pc = Pieces()
    blobs = precopy(src, pc, 7, lambda i: run(src, flow, 3, ts=3_000 + 10 * i))
    moved = book_rows(src, X)  # (order id, account, side, price, qty, oqty, filled, coid, ts)
    _delta, meta = export_delta_pieces(src, X, pc, pieces_sha([sha(b) for b in blobs]))
    det = pc.detached
    assert det is not None and det.total == len(moved) > 20
    assert sum(1 for o in src.orders.values() if o.sym.name == X) == len(moved)
    twin = copy(src)
    assert not any(o.sym.name == X for o in twin.orders.values())
    later = Flow(62, (Y,))
    ts = [10_000]

    def both(cmd: dict) -> None:
        ts[0] += 1
        assert src.apply(cmd, ts[0]) == twin.apply(cmd, ts[0]), cmd

    def both_compact(cmd: tuple) -> None:
        ts[0] += 1
        got = src.apply_compact(cmd, ts[0])
        assert got == twin.apply_compact(cmd, ts[0]) and got[0][0] == EV_REJECTED, (cmd, got)

    for k, upto in enumerate((0, 7, len(moved) // 2, len(moved))):
        assert cleanup(src, det, upto) == upto
        assert src.symbols[X].detached == (upto < len(moved))
        for oid, acct, _side, _p, _q, _oq, _f, coid, _ts in moved[k::4][:8]:
            both({"op": "order", "account": acct, "order_id": oid})
            both({"op": "order", "account": acct, "client_order_id": coid})
            both({"op": "cancel", "account": acct, "symbol": Y, "order_id": oid})
            both({"op": "cancel", "account": acct, "symbol": Y, "client_order_id": coid})
            both({"op": "amend", "account": acct, "symbol": Y, "order_id": oid, "qty": "0.1"})
            both_compact((OP_CANCEL, acct, Y, oid))
            both_compact((OP_CANCEL, acct, Y, coid))
            both_compact((OP_AMEND, acct, Y, oid, 0, 1))
            # the client order id left with its order: free here again, on any symbol
            both({"op": "place", "account": acct, "symbol": Y, "side": "buy", "price": "96", "qty": "0.1",
                  "client_order_id": coid})
        for _ in range(30):
            both(later.next())
        both({"op": "cancel_all", "account": ACCTS[k]})
        for a in ACCTS:
            both({"op": "open_orders", "account": a})
            both({"op": "balances", "account": a})
        assert funds_problems(src, neg(holds_in(meta))) == funds_problems(twin, neg(holds_in(meta))) == []
        assert src.state_hash() == twin.state_hash()
    # all out: nothing of X left in any index
    assert not any(o.sym.name == X for o in src.orders.values())
    for a in src.accounts.values():
        assert not any(o.sym.name == X for o in a.open.values())
        assert not any(o.sym.name == X and o.status == 0 for o in a.coid_index().values())
