"""Binary codec: lossless round trips, clear errors, apply_encoded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyengine.engine import Engine
from pyengine.wire.codec import CodecError, decode_command, decode_events, encode_command, encode_events

CMDS = [
    {"op": "place", "account": "a", "symbol": "BTC-USD", "side": "buy", "type": "limit",
     "tif": "GTC", "post_only": False, "price": "100.50", "qty": "0.001",
     "client_order_id": "c-1", "stp": "cancel_maker"},
    {"op": "place", "account": "a", "symbol": "S", "side": "sell", "qty": 3, "price": 7},
    {"op": "place", "account": "a", "symbol": "S", "side": "sell", "type": "market",
     "qty": "0.05", "price": None, "client_order_id": None},
    {"op": "place", "account": "ü", "symbol": "S", "side": "buy", "qty": "007", "price": "1"},
    {"op": "place", "account": "a", "symbol": "S", "side": "buy", "qty": "1", "price": 1.5},
    {"op": "place", "account": "a", "symbol": "S", "side": "short", "qty": "1"},
    {"op": "place", "account": "a", "symbol": "S", "side": "buy", "qty": "1", "extra": 1},
    {"op": "place", "account": "a", "symbol": "S", "side": "buy", "qty": str(10**30)},
    {"op": "cancel", "account": "a", "symbol": "S", "order_id": 12},
    {"op": "cancel", "account": "a", "symbol": "S", "client_order_id": "x"},
    {"op": "amend", "account": "a", "symbol": "S", "order_id": 12, "qty": "2.5"},
    {"op": "amend", "account": "a", "symbol": "S", "client_order_id": "x", "price": "0.0001"},
    {"op": "cancel", "account": 5, "symbol": "S", "order_id": "12"},
    {"op": "deposit", "account": "a", "asset": "USD", "amount": "5", "tx_id": "t"},
    {"op": "book", "symbol": "S", "depth": 3},
    {"op": "weird", "nested": {"a": [1, 2, None]}},
]


@pytest.mark.parametrize("cmd", CMDS)
def test_command_roundtrip(cmd):
    b = encode_command(cmd)
    assert decode_command(b) == cmd
    assert decode_command(memoryview(b)) == cmd


def test_hot_commands_use_fixed_layout():
    assert encode_command(CMDS[0])[0] == 1
    assert encode_command(CMDS[8])[0] == 2
    assert encode_command(CMDS[10])[0] == 3
    assert encode_command(CMDS[13])[0] == 0x7F
    assert len(encode_command(CMDS[0])) < len(str(CMDS[0])) // 2


dec_str = st.from_regex(r"(0|[1-9][0-9]{0,8})(\.[0-9]{1,8})?", fullmatch=True)
value = st.one_of(st.none(), st.integers(-(2**70), 2**70), dec_str, st.text(max_size=5),
                  st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(
    {"op": st.sampled_from(["place", "cancel", "amend"])},
    optional={k: value for k in ("account", "symbol", "side", "type", "tif", "post_only",
                                 "price", "qty", "client_order_id", "stp", "order_id")}))
def test_command_roundtrip_fuzz(cmd):
    try:
        b = encode_command(cmd)
    except CodecError:
        return  # e.g. ints beyond 64 bits in the JSON fallback
    assert decode_command(b) == cmd


@pytest.mark.parametrize("cmd", CMDS[:3] + CMDS[8:12])
def test_truncated_commands_raise_codec_error(cmd):
    b = encode_command(cmd)
    for i in range(len(b)):
        with pytest.raises(CodecError):
            decode_command(b[:i])
    with pytest.raises(CodecError):
        decode_command(b + b"\x00")


def test_garbage_commands():
    for b in [b"", b"\x09", b"\x7f{", b"\x7f[1]", b"\x01" + b"\xff" * 40, "str"]:
        with pytest.raises(CodecError):
            decode_command(b)  # type: ignore[arg-type]


def _engine_events():
    e = Engine()
    evs = e.apply({"op": "add_symbol", "symbol": "S", "base": "B", "quote": "Q",
                   "tick_size": "0.5", "lot_size": "0.1", "taker_fee_bps": 3}, 1)
    evs += e.apply({"op": "deposit", "account": "a", "asset": "Q", "amount": "1000",
                    "tx_id": "1"}, 1)
    evs += e.apply({"op": "deposit", "account": "b", "asset": "B", "amount": "1000",
                    "tx_id": "2"}, 1)
    evs += e.apply({"op": "place", "account": "b", "symbol": "S", "side": "sell",
                    "price": "10", "qty": "1", "client_order_id": "s"}, 2)
    evs += e.apply({"op": "place", "account": "a", "symbol": "S", "side": "buy",
                    "price": "10.5", "qty": "2", "tif": "IOC"}, 3)
    evs += e.apply({"op": "place", "account": "b", "symbol": "S", "side": "sell",
                    "price": "10", "qty": "1", "client_order_id": "s"}, 4)
    evs += e.apply({"op": "place", "account": "b", "symbol": "S", "side": "sell",
                    "price": "11", "qty": "1", "client_order_id": "s2"}, 4)
    evs += e.apply({"op": "amend", "account": "b", "symbol": "S", "client_order_id": "s2",
                    "price": "12"}, 4)
    evs += e.apply({"op": "book", "symbol": "S"}, 5)
    evs += e.apply({"op": "cancel", "account": "b", "symbol": "S", "order_id": 99}, 5)
    return evs


def test_events_roundtrip():
    evs = _engine_events()
    types = {e["type"] for e in evs}
    assert {"accepted", "trade", "cancelled", "amended", "rejected", "book"} <= types
    b = encode_events(evs)
    assert decode_events(b) == evs
    assert decode_events(encode_events([])) == []
    for i in range(len(b)):
        with pytest.raises(CodecError):
            decode_events(b[:i])


def test_apply_encoded():
    e1, e2 = Engine(), Engine()
    cmds = [
        {"op": "add_symbol", "symbol": "S", "base": "B", "quote": "Q", "tick_size": "1",
         "lot_size": "1"},
        {"op": "deposit", "account": "a", "asset": "Q", "amount": "100", "tx_id": "1"},
        {"op": "place", "account": "a", "symbol": "S", "side": "buy", "price": "3",
         "qty": "2", "client_order_id": "x"},
        {"op": "amend", "account": "a", "symbol": "S", "client_order_id": "x", "qty": "1"},
        {"op": "cancel", "account": "a", "symbol": "S", "order_id": 1},
    ]
    for i, c in enumerate(cmds):
        out = e1.apply_encoded(encode_command(c), i)
        assert decode_events(out) == e2.apply(c, i)
    bad = decode_events(e1.apply_encoded(b"\x01\x02", 9))
    assert bad[0]["type"] == "rejected" and bad[0]["reason"] == "bad_request"
    assert "truncated" in bad[0]["detail"]
    assert decode_events(e1.apply_encoded(b"", 9))[0]["reason"] == "bad_request"
    assert e1.state_hash() == e2.state_hash()


def test_engine_package_imports_no_network_or_jvm():
    import subprocess
    import sys

    code = ("import sys; import pyengine.engine, pyengine.wire.codec, pyengine.ops.replay; "
            "bad = [m for m in ('jpype', 'socket', 'ssl', 'http', 'urllib.request', 'asyncio')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
