"""Unit tests of the matching engine rules (pyengine.engine)."""

from __future__ import annotations

import pytest

from pyengine.engine import Engine, SnapshotError

SYM = "BTC-USD"


def mk(fees=(0, 0), stp="cancel_taker", dedup_window=1000, **extra) -> Engine:
    e = Engine(dedup_window=dedup_window)
    ev = e.apply({"op": "add_symbol", "symbol": SYM, "base": "BTC", "quote": "USD",
                  "tick_size": "0.5", "lot_size": "0.001", "maker_fee_bps": fees[0],
                  "taker_fee_bps": fees[1], "stp_default": stp, **extra}, 1)
    assert ev[0]["type"] == "symbol_added", ev
    for acct in ("alice", "bob", "carol", "dan"):
        e.apply({"op": "deposit", "account": acct, "asset": "USD", "amount": "100000",
                 "tx_id": f"{acct}-usd"}, 2)
        e.apply({"op": "deposit", "account": acct, "asset": "BTC", "amount": "100",
                 "tx_id": f"{acct}-btc"}, 2)
    return e


def place(e, acct, side, price, qty, ts=10, **kw):
    cmd = {"op": "place", "account": acct, "symbol": SYM, "side": side, "qty": qty, **kw}
    if price is not None:
        cmd["price"] = price
    ev = e.apply(cmd, ts)
    e.check_invariants()
    return ev


def types(ev):
    return [x["type"] for x in ev]


def bal(e, acct, asset="USD"):
    b = e.apply({"op": "balances", "account": acct}, 0)[0]["balances"][asset]
    return b["available"], b["held"]


def book(e, depth=10):
    b = e.apply({"op": "book", "symbol": SYM, "depth": depth}, 0)[0]
    return b["bids"], b["asks"]


def oid(ev):
    return ev[0]["order_id"]


# ----------------------------------------------------------------------------- basics
def test_limit_rests_and_book_l2():
    e = mk()
    place(e, "alice", "buy", "100", "1")
    place(e, "alice", "buy", "100", "0.5")
    place(e, "bob", "buy", "99.5", "2")
    place(e, "carol", "sell", "101", "1")
    assert book(e) == ([["100", "1.5"], ["99.5", "2"]], [["101", "1"]])
    assert book(e, 1) == ([["100", "1.5"]], [["101", "1"]])


def test_price_time_priority_and_maker_price():
    e = mk()
    a = oid(place(e, "alice", "sell", "101", "1"))
    b = oid(place(e, "bob", "sell", "100.5", "1"))
    c = oid(place(e, "carol", "sell", "100.5", "1"))
    ev = place(e, "dan", "buy", "102", "2.5")
    trades = [x for x in ev if x["type"] == "trade"]
    assert [(t["maker_order_id"], t["price"], t["qty"]) for t in trades] == [
        (b, "100.5", "1"), (c, "100.5", "1"), (a, "101", "0.5")]
    t = trades[0]
    assert t["taker_side"] == "buy" and t["maker_account"] == "bob"
    assert t["taker_account"] == "dan" and t["taker_order_id"] == oid(ev)
    assert [t["trade_id"] for t in trades] == [1, 2, 3]
    assert book(e) == ([], [["101", "0.5"]])


def test_trade_settlement_balances():
    e = mk()
    place(e, "bob", "sell", "100", "2")
    assert bal(e, "bob", "BTC") == ("98", "2")
    place(e, "alice", "buy", "100.5", "1")
    assert bal(e, "alice", "BTC") == ("101", "0")
    assert bal(e, "alice", "USD") == ("99900", "0")
    assert bal(e, "bob", "USD") == ("100100", "0")
    assert bal(e, "bob", "BTC") == ("98", "1")


def test_ioc_cancels_rest():
    e = mk()
    place(e, "bob", "sell", "100", "1")
    ev = place(e, "alice", "buy", "100", "3", tif="IOC")
    assert types(ev) == ["accepted", "trade", "cancelled"]
    assert ev[-1]["reason"] == "ioc" and ev[-1]["remaining_qty"] == "2"
    assert book(e) == ([], [])
    assert bal(e, "alice") == ("99900", "0")


def test_fok_all_or_nothing():
    e = mk()
    place(e, "bob", "sell", "100", "1")
    place(e, "carol", "sell", "101", "1")
    before = e.state_hash()
    ev = place(e, "alice", "buy", "100.5", "2", tif="FOK")
    assert ev[0]["reason"] == "fok_unfillable"
    assert e.state_hash() == before
    ev = place(e, "alice", "buy", "101", "2", tif="FOK")
    assert types(ev) == ["accepted", "trade", "trade"]
    assert book(e) == ([], [])


def test_post_only():
    e = mk()
    place(e, "bob", "sell", "100", "1")
    before = e.state_hash()
    ev = place(e, "alice", "buy", "100", "1", post_only=True)
    assert ev[0]["type"] == "rejected" and ev[0]["reason"] == "post_only_would_take"
    assert e.state_hash() == before
    ev = place(e, "alice", "buy", "99.5", "1", post_only=True)
    assert ev[0]["type"] == "accepted" and ev[0]["post_only"] is True
    ev = place(e, "alice", "buy", "99.5", "1", post_only=True, tif="IOC")
    assert ev[0]["reason"] == "bad_request"


def test_market_orders_never_rest_and_band():
    e = mk(market_band_bps=100)  # 1 %
    place(e, "bob", "sell", "100", "1")
    place(e, "bob", "sell", "100.5", "1")
    place(e, "bob", "sell", "102", "1")  # outside 1 % band from 100
    ev = place(e, "alice", "buy", None, "5", type="market")
    assert types(ev) == ["accepted", "trade", "trade", "cancelled"]
    assert ev[0]["price"] is None and ev[0]["tif"] == "IOC"
    assert ev[-1]["reason"] == "ioc" and ev[-1]["remaining_qty"] == "3"
    assert book(e) == ([], [["102", "1"]])
    # market sell against empty bids: accepted then cancelled
    ev = place(e, "alice", "sell", None, "1", type="market")
    assert types(ev) == ["accepted", "cancelled"]
    assert place(e, "alice", "buy", "100", "1", type="market")[0]["reason"] == "bad_request"
    assert place(e, "alice", "buy", None, "1", type="market", tif="GTC")[0][
        "reason"] == "bad_request"


def test_market_buy_bounded_by_funds():
    e = mk()
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "250",
             "tx_id": "d1"}, 3)
    place(e, "bob", "sell", "100", "5")
    ev = place(e, "dave", "buy", None, "5", type="market")
    assert types(ev) == ["accepted", "trade", "cancelled"]
    assert ev[1]["qty"] == "2.5"
    assert ev[-1]["reason"] == "insufficient_funds"
    assert bal(e, "dave") == ("0", "0")
    ev = place(e, "dave", "buy", None, "1", type="market")
    assert ev[0]["reason"] == "insufficient_funds"


def test_insufficient_funds_and_holds():
    e = mk()
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "100",
             "tx_id": "d1"}, 3)
    before = e.state_hash()
    ev = place(e, "dave", "buy", "100.5", "1")
    assert ev[0]["reason"] == "insufficient_funds"
    assert e.state_hash() == before
    ev = place(e, "dave", "buy", "100", "1")
    assert ev[0]["type"] == "accepted"
    assert bal(e, "dave") == ("0", "100")
    ev = place(e, "dave", "sell", "100", "1")
    assert ev[0]["reason"] == "insufficient_funds"  # dave has no BTC
    e.apply({"op": "cancel_all", "account": "dave"}, 5)
    assert bal(e, "dave") == ("100", "0")


def test_fees_round_up_and_hold_covers_fee():
    e = mk(fees=(3, 7))
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "100.07",
             "tx_id": "d1"}, 3)
    # hold: 1 lot at 100 = 0.1 USD + ceil(0.1 * 7 / 10000 at 8 dp) = 0.00007 -> per lot
    ev = place(e, "dave", "buy", "100", "1")
    assert ev[0]["type"] == "accepted"
    assert bal(e, "dave") == ("0", "100.07")
    ev = place(e, "bob", "sell", "100", "0.003")
    t = ev[1]
    # notional 0.3: maker fee ceil(0.3*3/1e4)=0.00009, taker 0.00021
    assert t["maker_fee"] == "0.00009" and t["taker_fee"] == "0.00021"
    assert bal(e, "bob") == ("100000.29979", "0")
    assert bal(e, "dave", "BTC") == ("0.003", "0")
    assert bal(e, "dave") == ("0.00012", "99.76979")
    e.apply({"op": "cancel_all", "account": "dave"}, 5)
    assert bal(e, "dave") == ("99.76991", "0")
    e.check_invariants()


def test_fee_rounding_tiny_trade():
    e = Engine()
    e.apply({"op": "add_symbol", "symbol": "S", "base": "B", "quote": "Q", "tick_size": "1",
             "lot_size": "1", "taker_fee_bps": 1, "maker_fee_bps": 1}, 1)
    e.apply({"op": "deposit", "account": "x", "asset": "Q", "amount": "10", "tx_id": "1"}, 1)
    e.apply({"op": "deposit", "account": "y", "asset": "B", "amount": "10", "tx_id": "2"}, 1)
    e.apply({"op": "place", "account": "y", "symbol": "S", "side": "sell", "price": "1",
             "qty": "1"}, 2)
    ev = e.apply({"op": "place", "account": "x", "symbol": "S", "side": "buy", "price": "1",
                  "qty": "1"}, 2)
    # 1 * 1 / 10000 = 0.0001 exactly at 8 dp
    assert ev[1]["taker_fee"] == "0.0001"
    e.check_invariants()


# ----------------------------------------------------------------------------- STP
@pytest.mark.parametrize("mode,expect_types,book_after", [
    ("cancel_taker", ["accepted", "cancelled"], ([], [["100", "1"], ["100.5", "1"]])),
    ("cancel_maker", ["accepted", "cancelled", "trade"], ([["100.5", "1"]], [])),
    ("cancel_both", ["accepted", "cancelled", "cancelled"], ([], [["100.5", "1"]])),
    ("none", ["accepted", "trade", "trade"], ([], [])),
])
def test_self_trade_prevention(mode, expect_types, book_after):
    e = mk()
    place(e, "alice", "sell", "100", "1")
    place(e, "bob", "sell", "100.5", "1")
    ev = place(e, "alice", "buy", "100.5", "2", stp=mode)
    assert types(ev) == expect_types
    for x in ev:
        if x["type"] == "cancelled":
            assert x["reason"] == "stp"
    if mode == "cancel_taker":
        assert ev[1]["order_id"] == oid(ev)
    if mode == "none":
        assert ev[1]["maker_account"] == ev[1]["taker_account"] == "alice"
    assert book(e) == book_after


def test_stp_default_per_symbol():
    e = mk(stp="cancel_maker")
    place(e, "alice", "sell", "100", "1")
    ev = place(e, "alice", "buy", "100", "1")
    assert ev[0]["stp"] == "cancel_maker"
    assert types(ev) == ["accepted", "cancelled"]
    assert book(e) == ([["100", "1"]], [])


# ----------------------------------------------------------------------------- cancel / amend
def test_cancel_by_id_and_client_id_and_errors():
    e = mk()
    a = oid(place(e, "alice", "buy", "100", "1", client_order_id="a1"))
    place(e, "alice", "buy", "100", "2", client_order_id="a2")
    ev = e.apply({"op": "cancel", "account": "bob", "symbol": SYM, "order_id": a}, 5)
    assert ev[0]["reason"] == "wrong_account"
    ev = e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "order_id": a}, 5)
    assert ev == [{"type": "cancelled", "order_id": a, "client_order_id": "a1",
                   "account": "alice", "symbol": SYM, "side": "buy", "remaining_qty": "1",
                   "reason": "user"}]
    ev = e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "order_id": a}, 5)
    assert ev[0]["reason"] == "unknown_order"
    ev = e.apply({"op": "cancel", "account": "alice", "symbol": SYM,
                  "client_order_id": "a2"}, 5)
    assert ev[0]["remaining_qty"] == "2"
    assert book(e) == ([], [])
    assert bal(e, "alice") == ("100000", "0")
    ev = e.apply({"op": "cancel", "account": "alice", "symbol": "NOPE", "order_id": 1}, 5)
    assert ev[0]["reason"] == "unknown_symbol"
    ev = e.apply({"op": "cancel", "account": "zed", "symbol": SYM, "order_id": 1}, 5)
    assert ev[0]["reason"] == "unknown_account"
    ev = e.apply({"op": "cancel", "account": "alice", "symbol": SYM}, 5)
    assert ev[0]["reason"] == "bad_request"


def test_cancel_all():
    e = mk()
    e.apply({"op": "add_symbol", "symbol": "ETH-USD", "base": "ETH", "quote": "USD",
             "tick_size": "0.01", "lot_size": "0.01"}, 1)
    place(e, "alice", "buy", "100", "1")
    place(e, "alice", "sell", "200", "1")
    place(e, "bob", "buy", "99", "1")
    e.apply({"op": "deposit", "account": "alice", "asset": "ETH", "amount": "1",
             "tx_id": "e"}, 1)
    e.apply({"op": "place", "account": "alice", "symbol": "ETH-USD", "side": "sell",
             "price": "10", "qty": "1"}, 1)
    ev = e.apply({"op": "cancel_all", "account": "alice", "symbol": SYM}, 5)
    assert types(ev) == ["cancelled", "cancelled", "cancelled_all"]
    assert ev[-1]["count"] == 2
    assert [x["order_id"] for x in ev[:2]] == sorted(x["order_id"] for x in ev[:2])
    ev = e.apply({"op": "cancel_all", "account": "alice"}, 5)
    assert ev[-1] == {"type": "cancelled_all", "account": "alice", "symbol": None, "count": 1}
    assert book(e) == ([["99", "1"]], [])
    e.check_invariants()


def test_amend_decrease_keeps_priority():
    e = mk()
    a = oid(place(e, "alice", "sell", "100", "2"))
    b = oid(place(e, "bob", "sell", "100", "1"))
    ev = e.apply({"op": "amend", "account": "alice", "symbol": SYM, "order_id": a,
                  "qty": "1"}, 5)
    assert ev[0]["type"] == "amended" and ev[0]["priority"] == "kept"
    assert ev[0]["qty"] == "1" and ev[0]["old_qty"] == "2"
    assert bal(e, "alice", "BTC") == ("99", "1")
    ev = place(e, "carol", "buy", "100", "1")
    assert ev[1]["maker_order_id"] == a
    assert book(e) == ([], [["100", "1"]])
    assert e.apply({"op": "order", "account": "bob", "order_id": b}, 0)[0]["status"] == "open"


def test_amend_increase_loses_priority():
    e = mk()
    a = oid(place(e, "alice", "sell", "100", "1"))
    b = oid(place(e, "bob", "sell", "100", "1"))
    ev = e.apply({"op": "amend", "account": "alice", "symbol": SYM, "order_id": a,
                  "qty": "2"}, 5)
    assert ev[0]["priority"] == "lost" and ev[0]["order_id"] == a
    e.check_invariants()
    ev = place(e, "carol", "buy", "100", "1")
    assert ev[1]["maker_order_id"] == b


def test_amend_price_change_can_trade_as_taker():
    e = mk()
    place(e, "bob", "sell", "101", "1")
    a = oid(place(e, "alice", "buy", "100", "2", client_order_id="x"))
    ev = e.apply({"op": "amend", "account": "alice", "symbol": SYM, "client_order_id": "x",
                  "price": "101"}, 5)
    assert types(ev) == ["amended", "trade"]
    assert ev[1]["taker_order_id"] == a and ev[1]["price"] == "101"
    assert book(e) == ([["101", "1"]], [])
    e.check_invariants()
    q = e.apply({"op": "order", "account": "alice", "client_order_id": "x"}, 0)[0]
    assert q["remaining_qty"] == "1" and q["filled_qty"] == "1" and q["price"] == "101"
    assert q["status"] == "open" and q["qty"] == "2"


def test_amend_rejects_leave_state():
    e = mk()
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "100",
             "tx_id": "d1"}, 3)
    a = oid(place(e, "dave", "buy", "100", "1", post_only=True))
    place(e, "bob", "sell", "101", "1")
    before = e.state_hash()
    for cmd, reason in [
        ({"qty": "1.001"}, "insufficient_funds"),
        ({"price": "101"}, "post_only_would_take"),
        ({"price": "100.3"}, "price_off_tick"),
        ({"qty": "0.0005"}, "qty_off_lot"),
        ({"qty": "0"}, "out_of_bounds"),
        ({}, "bad_request"),
    ]:
        ev = e.apply({"op": "amend", "account": "dave", "symbol": SYM, "order_id": a, **cmd}, 5)
        assert ev[0]["type"] == "rejected" and ev[0]["reason"] == reason, (cmd, ev)
        assert e.state_hash() == before


def test_amend_stp_cancels_taker():
    e = mk()
    place(e, "alice", "sell", "101", "1")
    a = oid(place(e, "alice", "buy", "100", "1"))
    ev = e.apply({"op": "amend", "account": "alice", "symbol": SYM, "order_id": a,
                  "price": "101"}, 5)
    assert types(ev) == ["amended", "cancelled"] and ev[1]["reason"] == "stp"
    assert bal(e, "alice") == ("100000", "0")
    e.check_invariants()


# ----------------------------------------------------------------------------- idempotency
def test_duplicate_place_returns_original_events():
    e = mk()
    place(e, "bob", "sell", "100", "1")
    ev1 = place(e, "alice", "buy", "100", "2", client_order_id="c1")
    h = e.state_hash()
    ev2 = place(e, "alice", "buy", "100", "2", client_order_id="c1")
    assert e.state_hash() == h
    assert [dict(x, duplicate=True) for x in ev1] == ev2
    # even with different params and after the order was cancelled
    e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "client_order_id": "c1"}, 5)
    ev3 = place(e, "alice", "sell", "999", "7", client_order_id="c1")
    assert ev3 == ev2
    # the same id in another account is independent
    ev4 = place(e, "carol", "buy", "99", "1", client_order_id="c1")
    assert "duplicate" not in ev4[0]
    # restored engine answers duplicates the same way
    e2 = Engine.restore(e.snapshot())
    assert place(e2, "alice", "buy", "1", "1", client_order_id="c1") == ev2


def test_duplicates_answer_alike_live_restored_and_from_an_older_snapshot():
    """A snapshot keeps a finished placement's events as a compact record; a restored engine
    must answer a repeated place with exactly the live engine's dicts - trades with fees, a maker
    cancelled by self-trade prevention (gone by then), an IOC remainder, a market order - and
    events kept as the dicts' JSON (snapshots before 24 Nov 2026) must answer alike too."""
    import orjson

    from pyengine.engine.core import event_dict

    e = mk(fees=(10, 25), stp="cancel_maker")
    place(e, "bob", "sell", "100", "1", client_order_id="m1")
    place(e, "alice", "sell", "100.5", "1", client_order_id="self")
    place(e, "bob", "sell", "101", "3", client_order_id="m2")
    places = [
        ("alice", "buy", "101", "2", {"client_order_id": "t1"}),  # trades, cancels its own maker
        ("carol", "buy", "101", "5", {"client_order_id": "t2", "tif": "IOC"}),  # IOC remainder
        ("dan", "sell", None, "0.5", {"client_order_id": "t3", "type": "market"}),  # no book: cancelled
    ]
    place(e, "dan", "buy", "99", "1", client_order_id="m3")
    originals = {}
    for acct, side, price, qty, kw in places:
        originals[(acct, kw["client_order_id"])] = place(e, acct, side, price, qty, **kw)
    assert any(x["type"] == "cancelled" and x["reason"] == "stp" for x in originals[("alice", "t1")])
    assert any(x["type"] == "trade" and x["taker_fee"] != "0" for x in originals[("alice", "t1")])

    def dups(engine):
        return {k: place(engine, k[0], "buy", "1", "1", client_order_id=k[1]) for k in originals}

    want = {k: [dict(x, duplicate=True) for x in v] for k, v in originals.items()}
    assert dups(e) == want
    blob = e.snapshot()
    assert dups(Engine.restore(blob)) == want
    assert dups(e) == want  # the live engine now holds the records too
    assert Engine.restore(blob).snapshot() == blob

    older = Engine.restore(blob)
    for acct, cid in originals:
        o = older.accounts[acct].coid_index()[cid]
        o.ev = orjson.dumps([event_dict(x) for x in originals[(acct, cid)]])
    assert dups(older) == want


def test_a_duplicate_with_fees_beyond_64_bits_answers_alike_after_a_restore():
    # the snapshot's compact record holds such a fee as its digits (JSON numbers stop at 64 bits)
    e = Engine()
    e.apply({"op": "add_symbol", "symbol": "X-Y", "base": "X", "quote": "Y", "tick_size": "1",
             "lot_size": "1", "maker_fee_bps": 10, "taker_fee_bps": 20}, 1)
    for a in ("a", "b"):
        e.apply({"op": "deposit", "account": a, "asset": "Y", "amount": "1" + "0" * 32, "tx_id": a + "y"}, 2)
        e.apply({"op": "deposit", "account": a, "asset": "X", "amount": "1" + "0" * 16, "tx_id": a + "x"}, 2)
    big = "1" + "0" * 15
    e.apply({"op": "place", "account": "a", "symbol": "X-Y", "side": "sell", "price": big, "qty": big}, 3)
    cmd = {"op": "place", "account": "b", "symbol": "X-Y", "side": "buy", "price": big, "qty": big,
           "client_order_id": "t"}
    trade = e.apply(cmd, 4)[1]
    assert int(trade["taker_fee"].replace(".", "")) >= 2**63
    restored = Engine.restore(e.snapshot())
    want = e.apply(cmd, 5)
    assert want[1] == dict(trade, duplicate=True)
    assert restored.apply(cmd, 5) == want


def test_rejected_place_is_not_remembered():
    e = mk()
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "10",
             "tx_id": "d1"}, 3)
    ev = place(e, "dave", "buy", "100", "1", client_order_id="k")
    assert ev[0]["reason"] == "insufficient_funds"
    e.apply({"op": "deposit", "account": "dave", "asset": "USD", "amount": "1000",
             "tx_id": "d2"}, 3)
    ev = place(e, "dave", "buy", "100", "1", client_order_id="k")
    assert ev[0]["type"] == "accepted" and "duplicate" not in ev[0]


def test_dedup_window_is_bounded():
    e = Engine(dedup_window=3)
    e.apply({"op": "add_symbol", "symbol": "S", "base": "B", "quote": "Q", "tick_size": "1",
             "lot_size": "1"}, 1)
    e.apply({"op": "deposit", "account": "x", "asset": "Q", "amount": "1000", "tx_id": "1"}, 1)
    for i in range(5):
        e.apply({"op": "place", "account": "x", "symbol": "S", "side": "buy", "price": "1",
                 "qty": "1", "tif": "IOC", "client_order_id": f"c{i}"}, 2)
    acct = e.accounts["x"]
    assert [o.coid for o in acct.finished] == ["c2", "c3", "c4"]
    assert sorted(acct.coids) == ["c2", "c3", "c4"]
    ev = e.apply({"op": "place", "account": "x", "symbol": "S", "side": "buy", "price": "1",
                  "qty": "1", "tif": "IOC", "client_order_id": "c0"}, 2)
    assert "duplicate" not in ev[0]
    ev = e.apply({"op": "place", "account": "x", "symbol": "S", "side": "buy", "price": "1",
                  "qty": "1", "tif": "IOC", "client_order_id": "c4"}, 2)
    assert ev[0]["duplicate"] is True


def test_deposit_withdraw_idempotent():
    e = mk()
    d = {"op": "deposit", "account": "dave", "asset": "USD", "amount": "5.5", "tx_id": "t"}
    ev = e.apply(d, 1)
    assert ev == [{"type": "deposited", "account": "dave", "asset": "USD", "amount": "5.5",
                   "tx_id": "t", "available": "5.5"}]
    assert e.apply(d, 2) == [dict(ev[0], duplicate=True)]
    assert bal(e, "dave") == ("5.5", "0")
    ev = e.apply(dict(d, amount="6"), 3)
    assert ev[0]["reason"] == "tx_id_conflict"
    w = {"op": "withdraw", "account": "dave", "asset": "USD", "amount": "5", "tx_id": "w"}
    assert e.apply(w, 4)[0]["type"] == "withdrawn"
    assert e.apply(w, 4)[0]["duplicate"] is True
    assert bal(e, "dave") == ("0.5", "0")
    ev = e.apply(dict(w, tx_id="w2"), 5)
    assert ev[0]["reason"] == "insufficient_funds"
    assert e.apply(dict(w, account="nobody", tx_id="w3"), 5)[0]["reason"] == "unknown_account"
    assert e.apply(dict(d, asset="DOGE", tx_id="x"), 5)[0]["reason"] == "unknown_asset"
    assert e.apply(dict(d, amount="0.000000001", tx_id="x"), 5)[0][
        "reason"] == "amount_precision"
    assert e.apply(dict(d, amount="-1", tx_id="x"), 5)[0]["reason"] == "out_of_bounds"
    assert e.apply(dict(d, amount=1.5, tx_id="x"), 5)[0]["reason"] == "bad_request"
    e.check_invariants()


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("patch,reason", [
    ({"symbol": "NOPE"}, "unknown_symbol"),
    ({"account": "nobody"}, "unknown_account"),
    ({"price": "100.25"}, "price_off_tick"),
    ({"qty": "0.0001"}, "qty_off_lot"),
    ({"qty": "0"}, "out_of_bounds"),
    ({"qty": "-1"}, "out_of_bounds"),
    ({"price": "0"}, "out_of_bounds"),
    ({"price": 100.5}, "bad_request"),
    ({"qty": True}, "bad_request"),
    ({"price": "1e3"}, "bad_request"),
    ({"side": "hold"}, "bad_request"),
    ({"tif": "DAY"}, "bad_request"),
    ({"type": "stop"}, "bad_request"),
    ({"stp": "maybe"}, "bad_request"),
    ({"post_only": "yes"}, "bad_request"),
    ({"client_order_id": 5}, "bad_request"),
    ({"account": None}, "bad_request"),
    ({"price": None}, "bad_request"),
])
def test_place_rejects(patch, reason):
    e = mk(max_price="1000", max_qty="10")
    cmd = {"op": "place", "account": "alice", "symbol": SYM, "side": "buy", "price": "100",
           "qty": "1", **patch}
    before = e.state_hash()
    ev = e.apply(cmd, 5)
    assert len(ev) == 1 and ev[0]["type"] == "rejected" and ev[0]["reason"] == reason, ev
    assert e.state_hash() == before


def test_bounds():
    e = mk(max_price="1000", max_qty="10", min_qty="0.01")
    assert place(e, "alice", "buy", "1000.5", "1")[0]["reason"] == "out_of_bounds"
    assert place(e, "alice", "buy", "100", "10.001")[0]["reason"] == "out_of_bounds"
    assert place(e, "alice", "buy", "100", "0.009")[0]["reason"] == "out_of_bounds"
    assert place(e, "alice", "buy", 100, 1)[0]["type"] == "accepted"


@pytest.mark.parametrize("cmd", [
    None, [], "place", 5, {}, {"op": None}, {"op": "explode"}, {"op": ["place"]},
    {"op": "place"}, {"op": "cancel", "account": {"x": 1}, "symbol": SYM, "order_id": 1},
    {"op": "book", "symbol": ["x"]}, {"op": "book", "symbol": SYM, "depth": 0},
    {"op": "cancel", "account": "alice", "symbol": SYM, "order_id": "1"},
    {"op": "order", "account": "alice"},
])
def test_malformed_never_raises(cmd):
    e = mk()
    before = e.state_hash()
    ev = e.apply(cmd, 5)
    assert ev[0]["type"] == "rejected" and ev[0]["reason"] == "bad_request", ev
    assert e.state_hash() == before


def test_bad_ts():
    e = mk()
    assert e.apply({"op": "book", "symbol": SYM}, 1.0)[0]["reason"] == "bad_request"
    assert e.apply({"op": "book", "symbol": SYM}, -1)[0]["reason"] == "bad_request"


def test_add_symbol_rules():
    e = mk()
    base = {"op": "add_symbol", "symbol": SYM, "base": "BTC", "quote": "USD",
            "tick_size": "0.5", "lot_size": "0.001"}
    assert e.apply(base, 1)[0]["reason"] == "duplicate_symbol"
    assert e.apply(dict(base, symbol="X", tick_size="0"), 1)[0]["reason"] == "out_of_bounds"
    assert e.apply(dict(base, symbol="X", quote="BTC"), 1)[0]["reason"] == "bad_request"
    assert e.apply(dict(base, symbol="X", tick_size=0.1), 1)[0]["reason"] == "bad_request"
    # USD has 8 decimals: tick 0.0001 * lot 0.00001 needs 9
    ev = e.apply(dict(base, symbol="X", tick_size="0.0001", lot_size="0.00001"), 1)
    assert ev[0]["reason"] == "asset_precision"
    ev = e.apply(dict(base, symbol="ETH-BTC", base="ETH", quote="BTC", tick_size="0.00001",
                      lot_size="0.001"), 1)
    assert ev[0]["type"] == "symbol_added"
    assert ev[0]["base_decimals"] == 8 and ev[0]["quote_decimals"] == 8


def test_order_query():
    e = mk()
    ev = place(e, "alice", "buy", "100", "1", client_order_id="q")
    q = e.apply({"op": "order", "account": "alice", "order_id": oid(ev)}, 0)[0]
    assert q == {"type": "order", "order_id": oid(ev), "client_order_id": "q",
                 "account": "alice", "symbol": SYM, "side": "buy", "order_type": "limit",
                 "tif": "GTC", "post_only": False, "stp": "cancel_taker", "price": "100",
                 "qty": "1", "remaining_qty": "1", "filled_qty": "0", "status": "open",
                 "ts": 10}
    assert e.apply({"op": "order", "account": "bob", "order_id": oid(ev)}, 0)[0][
        "reason"] == "wrong_account"
    place(e, "bob", "sell", "100", "1")
    q = e.apply({"op": "order", "account": "alice", "client_order_id": "q"}, 0)[0]
    assert q["status"] == "filled" and q["filled_qty"] == "1" and q["remaining_qty"] == "0"
    assert e.apply({"op": "order", "account": "alice", "order_id": 999}, 0)[0][
        "reason"] == "unknown_order"


def test_no_floats_in_events():
    e = mk(fees=(1, 2))
    place(e, "bob", "sell", "100", "1")
    evs = place(e, "alice", "buy", "100", "2")
    evs += e.apply({"op": "balances", "account": "alice"}, 0)
    evs += e.apply({"op": "book", "symbol": SYM}, 0)

    def walk(x):
        assert not isinstance(x, float)
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(evs)


# ----------------------------------------------------------------------------- snapshots
def _busy_engine() -> Engine:
    e = mk(fees=(2, 5))
    for i in range(30):
        place(e, "alice", "buy", str(90 + i % 7), "1", client_order_id=f"b{i}")
        place(e, "bob", "sell", str(100 + i % 5), "0.5", client_order_id=f"s{i}")
    place(e, "carol", "buy", "102", "3", tif="IOC", client_order_id="sweep")
    e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "client_order_id": "b3"}, 9)
    return e


def test_snapshot_roundtrip_and_hash():
    e = _busy_engine()
    blob = e.snapshot()
    e2 = Engine.restore(blob)
    assert e2.snapshot() == blob
    assert e2.state_hash() == e.state_hash()
    e2.check_invariants()
    for cmd in [
        {"op": "place", "account": "carol", "symbol": SYM, "side": "buy", "price": "103",
         "qty": "2"},
        {"op": "place", "account": "carol", "symbol": SYM, "side": "buy", "price": "1",
         "qty": "2", "client_order_id": "sweep"},
        {"op": "amend", "account": "alice", "symbol": SYM, "client_order_id": "b4",
         "price": "96"},
        {"op": "cancel_all", "account": "bob"},
    ]:
        assert e.apply(cmd, 50) == e2.apply(cmd, 50)
    assert e.snapshot() == e2.snapshot()


def test_state_hash_changes_with_state():
    e = _busy_engine()
    h = e.state_hash()
    place(e, "alice", "buy", "50", "1")
    assert e.state_hash() != h


def test_snapshot_errors():
    blob = _busy_engine().snapshot()
    with pytest.raises(SnapshotError, match="magic"):
        Engine.restore(b"XXXXXXXX" + blob[8:])
    with pytest.raises(SnapshotError, match="version"):
        Engine.restore(blob[:8] + b"\x63\x00" + blob[10:])
    with pytest.raises(SnapshotError, match="truncated"):
        Engine.restore(blob[:-5])
    with pytest.raises(SnapshotError, match="truncated"):
        Engine.restore(blob[:10])
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(SnapshotError, match="checksum"):
        Engine.restore(bytes(bad))
    with pytest.raises(SnapshotError):
        Engine.restore("not bytes")  # type: ignore[arg-type]
    assert Engine.restore(memoryview(blob)).snapshot() == blob


def test_snapshot_scales():
    """50k resting orders: snapshot + restore stay fast (1M is measured in the bench)."""
    import time

    e = Engine()
    e.apply({"op": "add_symbol", "symbol": "S", "base": "B", "quote": "Q", "tick_size": "1",
             "lot_size": "1"}, 1)
    e.apply({"op": "deposit", "account": "x", "asset": "Q", "amount": "10000000000",
             "tx_id": "1"}, 1)
    for i in range(50_000):
        e.apply({"op": "place", "account": "x", "symbol": "S", "side": "buy",
                 "price": 1 + i % 500, "qty": 1, "client_order_id": f"o{i}"}, i)
    t0 = time.process_time()  # CPU time: robust when the machine is busy
    blob = e.snapshot()
    e2 = Engine.restore(blob)
    dt = time.process_time() - t0
    assert len(e2.orders) == 50_000
    assert dt < 10, dt  # ~0.3 s on an idle core
    assert e2.snapshot() == blob


def test_lazy_deletion_compaction_keeps_priority():
    e = mk()
    ids = [oid(place(e, "alice", "buy", "100", "0.01")) for _ in range(60)]
    last = oid(place(e, "bob", "buy", "100", "0.01"))
    for i in ids[:-1]:
        e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "order_id": i}, 5)
        e.check_invariants()
    # moves away and back leave dead cells behind; priority must follow the moves
    e.apply({"op": "amend", "account": "alice", "symbol": SYM, "order_id": ids[-1],
             "price": "99"}, 6)
    e.apply({"op": "amend", "account": "alice", "symbol": SYM, "order_id": ids[-1],
             "price": "100"}, 7)
    e.check_invariants()
    ev = place(e, "carol", "sell", "100", "0.01")
    assert ev[1]["maker_order_id"] == last
    ev = place(e, "carol", "sell", "100", "0.01")
    assert ev[1]["maker_order_id"] == ids[-1]
    assert book(e) == ([], [])


def _snapshot_format_scenario() -> Engine:
    """A fixed command stream with everything a snapshot holds: resting orders on both sides,
    finished orders with trades and fees, a maker cancelled by self-trade prevention, an IOC
    remainder, a market order, a cancel, an amend, client order ids, transfers. Its version-1
    snapshot (written by the engine of 24 Nov 2026) is kept in tests/unit/data."""
    e = mk(fees=(10, 25), stp="cancel_maker")
    for i in range(12):
        place(e, "alice", "buy", str(90 + i % 5), "0.25", client_order_id=f"b{i}")
        place(e, "bob", "sell", str(100 + i % 4), "0.5", client_order_id=f"s{i}")
    place(e, "alice", "sell", "100.5", "1", client_order_id="self")
    place(e, "alice", "buy", "101", "2", client_order_id="t1")
    place(e, "carol", "buy", "103", "5", client_order_id="t2", tif="IOC")
    place(e, "dan", "sell", None, "0.5", client_order_id="t3", type="market")
    e.apply({"op": "cancel", "account": "alice", "symbol": SYM, "client_order_id": "b3"}, 11)
    e.apply({"op": "amend", "account": "alice", "symbol": SYM, "client_order_id": "b4", "price": "95"}, 12)
    e.apply({"op": "withdraw", "account": "dan", "asset": "USD", "amount": "12.5", "tx_id": "w1"}, 13)
    return e


def _dup_answers(e: Engine) -> dict:
    return {(a.name, o.coid): place(e, a.name, "buy", "1", "1", client_order_id=o.coid)
            for a in list(e.accounts.values()) for o in list(a.finished) if o.coid is not None}


def test_a_version_1_snapshot_still_loads_into_the_same_state():
    """Snapshots before 24 Nov 2026 (version 1) kept finished orders in the order columns: one
    restores into exactly the state the same commands build live (equal version-2 snapshot), and
    its remembered orders answer duplicates alike."""
    from pathlib import Path

    v1 = (Path(__file__).parent / "data" / "engine_snapshot_v1.bin").read_bytes()
    assert v1[8:10] == b"\x01\x00"
    restored = Engine.restore(v1)
    restored.check_invariants()
    live = _snapshot_format_scenario()
    # version 1 and 2 had no market data: sequences restart at 0, fills empty (on every member)
    assert all(s.seq > 0 for s in live.symbols.values())
    for s in live.symbols.values():
        s.seq = 0
        s.recent.clear()
    for a in live.accounts.values():
        a.fills.clear()
    assert restored.snapshot() == live.snapshot()
    assert restored.snapshot()[8:10] == b"\x04\x00"
    assert _dup_answers(restored) == _dup_answers(live)


def test_a_version_3_snapshot_still_loads_into_the_same_state():
    """Snapshots before 7 Dec 2026 (version 3: fixed-width order columns, finished orders as
    rows) restore into exactly the state the same commands build live: equal version-4
    snapshots (so an equal state hash), duplicates answered alike, and the restored finished
    orders drop their old rows once the next snapshot has encoded them."""
    from pathlib import Path

    v3 = (Path(__file__).parent / "data" / "engine_snapshot_v3.bin").read_bytes()
    assert v3[8:10] == b"\x03\x00"
    restored = Engine.restore(v3)
    restored.check_invariants()
    assert any(isinstance(o.ev, int) for a in restored.accounts.values() for o in a.finished)
    live = _snapshot_format_scenario()
    assert restored.state_hash() == live.state_hash()
    v4 = restored.snapshot()
    assert v4 == live.snapshot() and v4[8:10] == b"\x04\x00"
    assert all(o.row is None and not isinstance(o.ev, int) for a in restored.accounts.values()
               for o in a.finished)
    assert _dup_answers(restored) == _dup_answers(live)
    assert Engine.restore(v4).snapshot() == v4


def test_version_4_packs_a_deep_book_in_few_bytes():
    """The compact encoding (columns of narrow ints, shared with the symbol export): a book of
    20,000 resting orders with client order ids, plus finished orders with trades, takes well
    under the ~67 bytes an open order of version 3, and restores exactly."""
    e = mk(dedup_window=2000)
    for i in range(20_000):  # (apply, not place: place checks every invariant after each order)
        e.apply({"op": "place", "account": ("alice", "bob")[i % 2], "symbol": SYM,
                 "side": ("buy", "sell")[i % 2], "qty": "0.001", "client_order_id": f"c{i}",
                 "price": str(100 - 1 - i % 50) if i % 2 == 0 else str(101 + i % 50)}, 10)
    e.check_invariants()
    assert len(e.orders) == 20_000
    blob = e.snapshot()
    assert len(blob) < 20_000 * 30, len(blob)
    for i in range(300):  # takers: finished orders with trades, in the dedup windows
        place(e, ("carol", "dan")[i % 2], ("sell", "buy")[i % 2], "90" if i % 2 == 0 else "160", "0.002",
              client_order_id=f"t{i}")
    blob = e.snapshot()
    e2 = Engine.restore(blob)
    e2.check_invariants()
    assert e2.snapshot() == blob
    assert _dup_answers(e2) == _dup_answers(e)


def test_snapshots_taken_along_the_way_do_not_change_later_snapshots():
    """A finished order keeps its encoded snapshot row: an engine that took (and restored)
    snapshots in between must write the same bytes as one that never did."""
    cmds = [
        {"op": "place", "account": acct, "symbol": SYM, "side": side, "price": str(price), "qty": qty,
         "client_order_id": f"{acct}{i}", **({"tif": "IOC"} if i % 7 == 0 else {})}
        for i in range(120)
        for acct, side, price, qty in [(("alice", "bob", "carol")[i % 3], ("buy", "sell")[i % 2],
                                        95 + (i * 7) % 11, ("0.5", "1", "0.25")[i % 3])]
    ]
    quiet = mk(fees=(3, 9), dedup_window=5)
    busy = mk(fees=(3, 9), dedup_window=5)
    for i, cmd in enumerate(cmds):
        assert quiet.apply(cmd, 20 + i) == busy.apply(cmd, 20 + i)
        if i % 9 == 0:
            busy.snapshot()
        if i % 25 == 0:
            busy = Engine.restore(busy.snapshot())
    assert any(a.finished for a in quiet.accounts.values())
    # the events of a snapshotted finished order are kept once, as bytes (no row since version 4)
    assert any(isinstance(o.ev, bytes) for a in busy.accounts.values() for o in a.finished)
    assert busy.snapshot() == quiet.snapshot()
    assert _dup_answers(busy) == _dup_answers(quiet)


@pytest.mark.parametrize("cut", ["block_tail", "block_header", "wrong_account", "symbol_column"])
def test_a_snapshot_with_broken_finished_orders_is_refused(cut):
    """Structure errors behind a valid checksum (a writer's bug, not a disk's) are refused too."""
    import hashlib
    import struct

    from pyengine.engine.columns import encode_orders

    e = _snapshot_format_scenario()
    for a in e.accounts.values():
        a.fills.clear()
    for s in e.symbols.values():
        s.recent.clear()
    blob = e.snapshot()
    body = bytearray(blob[20:-32])
    # the finished orders' block is the same bytes as encoding them again (deterministic)
    accts = list(e.accounts.values())
    fin = [o for a in accts for o in a.finished]
    block = encode_orders(fin, len(fin), {a: i for i, a in enumerate(accts)}, accts, [0] * 8, SnapshotError)
    at = body.find(block)
    assert at > 0 and body.find(block, at + 1) == -1
    counts_at = at - 8 - 8 - 4 * len(accts)  # u64 length + u32 per account, then the block's u64
    assert struct.unpack_from(f"<Q{len(accts)}I", body, counts_at)[1:] == tuple(len(a.finished) for a in accts)
    if cut == "block_tail":
        del body[at + len(block) - 3:at + len(block)]
        struct.pack_into("<Q", body, at - 8, len(block) - 3)
    elif cut == "block_header":
        struct.pack_into("<Q", body, at, len(fin) + 1)  # one order more than the columns hold
    elif cut == "wrong_account":
        counts = [len(a.finished) for a in accts]
        i = next(k for k in range(len(counts)) if counts[k])
        counts[i] -= 1
        counts[(i + 1) % len(counts)] += 1
        struct.pack_into(f"<{len(accts)}I", body, counts_at + 8, *counts)
    else:  # the symbols column (a u64 length and one code byte: all zero) names a symbol that is not there
        sym_at = at + len(block)
        assert body[sym_at:sym_at + 9] == struct.pack("<Q", 1) + b"\x00"
        body[sym_at:sym_at + 9] = struct.pack("<Q", 1 + len(fin)) + b"\x01" + bytes([7]) * len(fin)
    hdr = blob[:12] + struct.pack("<Q", len(body))
    bad = hdr + bytes(body)
    bad += hashlib.blake2b(bad, digest_size=32).digest()
    with pytest.raises(SnapshotError, match="order"):
        Engine.restore(bad)


def test_snapshots_taken_along_the_way_give_the_bytes_of_one_taken_at_the_end():
    """An engine that took snapshots all along gives the bytes of the same engine that never took
    one (a snapshot changes nothing it encodes, e.g. a cache of encoded parts going stale), also
    past FILLS_WINDOW fills per account (the oldest drop out) and with self-trades (a taker's own
    fill record beside the maker's live event), and after a restore."""
    from pyengine.engine.model import FILLS_WINDOW

    cmds = []
    for i in range(FILLS_WINDOW + 300):
        price = str(100 + (i % 5))
        cmds.append(("bob", "sell", price, "0.001", {}))
        cmds.append(("alice", "buy", price, "0.001", {}))
        if i % 97 == 0:  # alice trades with herself (no prevention)
            cmds.append(("alice", "sell", price, "0.001", {"stp": "none"}))
            cmds.append(("alice", "buy", price, "0.001", {"stp": "none"}))
    snapshotting = mk()
    for k, (acct, side, price, qty, kw) in enumerate(cmds):
        place(snapshotting, acct, side, price, qty, ts=10 + k, **kw)
        # no snapshot for more than FILLS_WINDOW fills of an account in the middle: the fill an
        # earlier snapshot saw last is gone
        if k % 211 == 0 and not 1000 < k < 3800:
            snapshotting.snapshot()
        if k % 1500 == 0:  # a fresh engine replaying the same prefix, never snapshotted before
            fresh = mk()
            for j, (a2, s2, p2, q2, kw2) in enumerate(cmds[: k + 1]):
                place(fresh, a2, s2, p2, q2, ts=10 + j, **kw2)
            assert snapshotting.snapshot() == fresh.snapshot(), k
    fresh = mk()
    for j, (a2, s2, p2, q2, kw2) in enumerate(cmds):
        place(fresh, a2, s2, p2, q2, ts=10 + j, **kw2)
    fills = fresh.apply({"op": "fills", "account": "alice"}, 0)[0]["fills"]
    assert len(fills) == FILLS_WINDOW  # the window is full: older fills dropped out
    assert snapshotting.snapshot() == fresh.snapshot()
    restored = Engine.restore(snapshotting.snapshot())
    place(restored, "bob", "sell", "100", "0.001", ts=99999)
    place(fresh, "bob", "sell", "100", "0.001", ts=99999)
    place(restored, "alice", "buy", "100", "0.001", ts=99999)
    place(fresh, "alice", "buy", "100", "0.001", ts=99999)
    restored.snapshot()
    assert restored.snapshot() == fresh.snapshot()


def test_an_unsigned_snapshot_is_version_4_without_its_digest_and_restores_exactly():
    """``snapshot(digest=False)`` (what the cluster's service snapshot holds: the container checks
    the bytes) is version 5: version 4's header and body, no blake2b trailer. It restores to the
    same state; a version 5 snapshot with bytes after its body, or cut short, is refused."""
    e = _snapshot_format_scenario()
    signed = e.snapshot()
    unsigned = e.snapshot(digest=False)
    assert signed[8:10] == b"\x04\x00" and unsigned[8:10] == b"\x05\x00"
    assert unsigned[10:] == signed[10:-32]
    r = Engine.restore(unsigned)
    assert r.state_hash() == e.state_hash() and r.snapshot() == signed
    with pytest.raises(SnapshotError, match="trailing"):
        Engine.restore(unsigned + b"\x00" * 32)
    with pytest.raises(SnapshotError, match="truncated"):
        Engine.restore(unsigned[:-1])
