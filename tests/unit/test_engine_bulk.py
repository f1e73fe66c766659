"""Bulk orders (pyengine/wire/bulk.py, applied by pyengine/engine/bulk.py): same effects as
the compact and JSON APIs, one outcome per command, and bad bulks change nothing."""

from __future__ import annotations

import struct

import pytest

from pyengine.engine import model
from pyengine.engine.bulk import apply_bulk
from pyengine.engine.core import placement_events
from pyengine.engine.model import (
    EV_ACCEPTED,
    EV_AMENDED,
    EV_CANCELLED,
    EV_DUPLICATE,
    EV_REJECTED,
    EV_TRADE,
    MARKET,
    OP_AMEND,
    OP_CANCEL,
    OP_PLACE,
)
from pyengine.wire import bulk as wire_bulk
from pyengine.wire.bulk import (
    HEADER,
    MAX_COMMANDS,
    RECORD,
    BulkBuilder,
    BulkError,
    decode_answer,
    decode_bulk,
)
from tests.unit.test_engine_compact import _flow, _setup

SIDE_NAMES = ("buy", "sell")
TIF_NAMES = ("GTC", "IOC", "FOK")
STP_NAMES = ("none", "cancel_taker", "cancel_maker", "cancel_both")


def _expected(evs: list) -> list[tuple]:
    """A compact-API event list in the form ``decode_answer`` gives."""
    out: list[tuple] = []
    for e in evs:
        k = e[0]
        if k == EV_ACCEPTED:
            out.append((k, e[1].oid))
        elif k == EV_TRADE:
            out.append((k, e[1], e[2], e[3], e[4].oid, e[5].oid, e[6], e[7]))
        elif k == EV_CANCELLED:
            out.append((k, e[1].oid, e[2], e[3]))
        elif k == EV_AMENDED:
            out.append((k, e[1].oid, *e[2:7]))
        elif k == EV_REJECTED:
            out.append((k, e[1], e[2]))
        elif k == EV_DUPLICATE:
            o = e[1]
            out.append((k, o.oid))
            out.extend(_expected(placement_events(o)))
    return out


def _add(b: BulkBuilder, c: tuple) -> None:
    """The compact command ``c`` of the shared random flow, added to a bulk."""
    if c[0] == OP_PLACE:
        _, acct, sym, side, price, qty, coid, tif, otype, post_only, stp = c
        b.place(acct, sym, SIDE_NAMES[side], price, qty, client_order_id=int(coid[1:]) + 1,
                tif=TIF_NAMES[tif], market=otype == MARKET, post_only=post_only,
                stp=STP_NAMES[stp] if stp >= 0 else None)
    elif c[0] == OP_CANCEL:
        b.cancel(c[1], c[2], order_id=c[3])
    else:
        b.amend(c[1], c[2], order_id=c[3], price=c[4], qty=c[5])


def _numeric_coid(c: tuple) -> tuple:
    """The flow's client_order_id "c<k>" as the bulk path names it: str(k + 1)."""
    if c[0] != OP_PLACE:
        return c
    return (*c[:6], str(int(c[6][1:]) + 1), *c[7:])


@pytest.mark.parametrize("seed", [1, 2])
def test_bulk_matches_the_compact_api_command_for_command(seed):
    by_bulk, by_compact = _setup(), _setup()
    flow = [c for _, c in _flow(seed, 3000)]
    kinds: set[int] = set()
    ts = 10
    for start in range(0, len(flow), 250):
        chunk = flow[start:start + 250]
        b = BulkBuilder()
        for c in chunk:
            _add(b, c)
        got = decode_answer(apply_bulk(by_bulk, decode_bulk(b.encode()), ts))
        want = [_expected(by_compact.apply_compact(_numeric_coid(c), ts)) for c in chunk]
        assert got == want
        kinds.update(e[0] for evs in got for e in evs)
        ts += 1
    assert by_bulk.state_hash() == by_compact.state_hash()
    by_bulk.check_invariants()
    assert {EV_ACCEPTED, EV_TRADE, EV_CANCELLED, EV_AMENDED, EV_REJECTED, EV_DUPLICATE} <= kinds


def test_cancel_and_amend_by_client_order_id():
    e = _setup()
    b = BulkBuilder()
    b.place("a1", "BTC-USD", "sell", 205, 10, client_order_id=7)
    b.amend("a1", "BTC-USD", client_order_id=7, qty=4)
    b.cancel("a1", "BTC-USD", client_order_id=7)
    b.cancel("a1", "BTC-USD", client_order_id=7)  # gone now
    b.cancel("a2", "BTC-USD", client_order_id=7)  # another account's id space
    res = decode_answer(apply_bulk(e, decode_bulk(b.encode()), 10))
    oid = res[0][0][1]
    assert res[0] == [(EV_ACCEPTED, oid)]
    assert res[1] == [(EV_AMENDED, oid, 205, 4, 205, 10, "kept")]
    assert res[2] == [(EV_CANCELLED, oid, 4, "user")]
    assert res[3][0][:2] == (EV_REJECTED, "unknown_order")
    assert res[4][0][:2] == (EV_REJECTED, "unknown_order")
    assert e.apply({"op": "order", "account": "a1", "client_order_id": "7"}, 11)[0]["status"] == "cancelled"


def test_a_repeated_place_answers_the_original_outcome():
    e = _setup()
    b = BulkBuilder()
    b.place("a2", "BTC-USD", "sell", 200, 5, client_order_id=1)
    b.place("a1", "BTC-USD", "buy", 200, 3, client_order_id=2)  # trades with the first
    first = decode_answer(apply_bulk(e, decode_bulk(b.encode()), 10))
    h = e.state_hash()
    again = decode_answer(apply_bulk(e, decode_bulk(b.encode()), 11))
    assert e.state_hash() == h
    assert again[1][0] == (EV_DUPLICATE, first[1][0][1])
    assert again[1][1:] == first[1]
    assert [ev[0] for ev in first[1]] == [EV_ACCEPTED, EV_TRADE]


def test_a_repeated_place_after_a_restore_answers_exactly_as_before_it():
    """A restored engine keeps a finished order's placement events as the JSON API's dicts (the
    orders they name may be gone); the bulk path must answer a resend with the same bytes as an
    engine that never restarted - members answer alike whether or not they restarted."""
    from pyengine.engine import Engine

    live = _setup()
    flow = [c for _, c in _flow(3, 1500)]
    bulks = []
    for start in range(0, len(flow), 250):
        b = BulkBuilder()
        for c in flow[start:start + 250]:
            _add(b, c)
        bulks.append(b.encode())
        apply_bulk(live, decode_bulk(bulks[-1]), 10)
    restored = Engine.restore(live.snapshot())
    dups = 0
    for blob in bulks:
        want = apply_bulk(live, decode_bulk(blob), 20)
        assert apply_bulk(restored, decode_bulk(blob), 20) == want
        ans = decode_answer(want)
        dups += sum(1 for evs in ans if evs[0][0] == EV_DUPLICATE and len(evs) > 2)  # with trades
    assert dups > 50
    # (the resent cancels and amends are new commands, not duplicates: both engines apply them)
    assert live.state_hash() == restored.state_hash()


def test_one_bad_command_does_not_stop_the_others():
    e = _setup()
    b = BulkBuilder()
    b.place("a1", "BTC-USD", "buy", 200, 5, client_order_id=1)
    b.place("nobody", "BTC-USD", "buy", 200, 5)
    b.place("a1", "ETH-USD", "buy", 200, 5)
    b.place("a1", "BTC-USD", "buy", 201, 5, tif="IOC", post_only=True)
    b.place("a1", "BTC-USD", "buy", 0, 5)
    b.amend("a1", "BTC-USD", client_order_id=1)  # neither price nor qty
    b.place("a1", "BTC-USD", "buy", 199, 5, client_order_id=2)
    res = decode_answer(apply_bulk(e, decode_bulk(b.encode()), 10))
    assert res[0][0][0] == EV_ACCEPTED and res[6][0][0] == EV_ACCEPTED
    assert [r[0][1] for r in res[1:6]] == ["unknown_account", "unknown_symbol", "bad_request",
                                          "out_of_bounds", "bad_request"]


def _one_record(**over) -> bytes:
    fields = dict(op=OP_PLACE, flags=0, side=0, tif=0, stp=-1, account=0, symbol=0, price=200,
                  qty=5, ref=0)
    fields.update(over)
    head = HEADER.pack(b"MB", 1, 1, 1, 1) + b"\x02a1" + b"\x07BTC-USD"
    return head + RECORD.pack(*fields.values())


@pytest.mark.parametrize("over, reason", [
    ({"account": 1}, "bad_request"),
    ({"symbol": 5}, "bad_request"),
    ({"flags": 64}, "bad_request"),
    ({"op": 9}, "bad_request"),
    ({"op": OP_CANCEL, "ref": 0}, "bad_request"),
    ({"op": OP_AMEND, "ref": 99}, "unknown_order"),
    ({"side": 3}, "bad_request"),
    ({"tif": 5}, "bad_request"),
    ({"stp": 4}, "bad_request"),
    ({"qty": -5}, "out_of_bounds"),
    ({"price": -1}, "out_of_bounds"),
])
def test_bad_records_are_rejected_and_change_nothing(over, reason):
    e = _setup()
    h = e.state_hash()
    res = decode_answer(apply_bulk(e, decode_bulk(_one_record(**over)), 10))
    assert len(res) == 1 and res[0][0][:2] == (EV_REJECTED, reason), res
    assert e.state_hash() == h


@pytest.mark.parametrize("mutate, text", [
    (lambda m: m[:4], "shorter than"),
    (lambda m: b"XX" + m[2:], "bad magic"),
    (lambda m: m[:2] + b"\x09" + m[3:], "version"),
    (lambda m: m[:-1], "records need"),
    (lambda m: m + b"\x00", "records need"),
    (lambda m: m[:3] + struct.pack("<HHH", 1, 1, 0) + m[9:], "out of range"),
    (lambda m: m[:3] + struct.pack("<HHH", 1, 1, MAX_COMMANDS + 1) + m[9:], "out of range"),
    (lambda m: m[:9] + b"\x00" + m[10:], "bad length"),
    (lambda m: m[:9] + b"\x02\xff\xfe" + m[12:], "not UTF-8"),
    (lambda m: m[:3] + struct.pack("<HHH", 40, 1, 1) + m[9:], "name"),
])
def test_malformed_bulks_raise_a_clear_error(mutate, text):
    with pytest.raises(BulkError, match=text):
        decode_bulk(mutate(_one_record()))


def test_builder_checks_its_input():
    b = BulkBuilder()
    with pytest.raises(BulkError, match="exactly one"):
        b.cancel("a1", "BTC-USD")
    with pytest.raises(BulkError, match="exactly one"):
        b.amend("a1", "BTC-USD", order_id=1, client_order_id=2, qty=1)
    with pytest.raises(BulkError, match="bad place"):
        b.place("a1", "BTC-USD", "hold", 1, 1)
    with pytest.raises(BulkError, match="bad place"):
        b.place("a1", "BTC-USD", "buy", 1, 1, client_order_id=-1)
    with pytest.raises(BulkError, match="1..64 bytes"):
        b.place("", "BTC-USD", "buy", 1, 1)
    with pytest.raises(BulkError, match="empty bulk"):
        b.encode()
    for i in range(MAX_COMMANDS):
        b.cancel("a1", "BTC-USD", order_id=i + 1)
    with pytest.raises(BulkError, match="at most"):
        b.cancel("a1", "BTC-USD", order_id=1)


def test_undecodable_answers_raise():
    with pytest.raises(BulkError):
        decode_answer(b"\x01\x00\x01\x00\x09")
    with pytest.raises(BulkError, match="trailing"):
        decode_answer(b"\x00\x00\x00")


def test_a_full_answer_leaves_the_rest_not_applied():
    """An answer Aeron could not carry is never built: past the size limit the remaining
    commands are answered not_applied and change nothing (they may be sent again)."""
    e = _setup()
    b = BulkBuilder()
    for i in range(20):
        b.place("a1", "BTC-USD", "sell", 300 + i, 1, client_order_id=i + 1)
    res = decode_answer(apply_bulk(e, decode_bulk(b.encode()), 10, max_answer_bytes=55))
    applied = [r for r in res if r[0][0] == EV_ACCEPTED]
    assert len(applied) == 5  # 5 x (2 + 9) bytes reach 55
    assert all(r[0][:2] == (EV_REJECTED, "not_applied") for r in res[5:])
    book = e.apply({"op": "book", "symbol": "BTC-USD", "depth": 50}, 11)[0]
    assert len(book["asks"]) == 5
    assert len(apply_bulk(_setup(), decode_bulk(b.encode()), 10)) < 96_000


def test_wire_codes_are_the_engines():
    """apply_bulk writes the engine's op and event codes straight into the answer: the wire
    format's tables must hold the same numbers."""
    for name in ("OP_PLACE", "OP_CANCEL", "OP_AMEND", "EV_REJECTED", "EV_ACCEPTED", "EV_TRADE",
                 "EV_CANCELLED", "EV_AMENDED", "EV_DUPLICATE"):
        assert getattr(wire_bulk, name) == getattr(model, name), name
