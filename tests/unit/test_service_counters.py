"""The service's monitoring counts (pyengine/service/counters.py) and the node's message timer."""

from __future__ import annotations

import orjson

from pyengine.node.metrics import BUCKETS, MessageTimer
from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.codec import encode_command
from pyengine.wire.protocol import Channel, Command


def run(service: MatchingService, client_id: int, cmds: list[Command]) -> None:
    service.on_message(5, 1000, 64, protocol.encode_request(client_id, cmds))


def eng(rid: int, cmd: dict) -> Command:
    return Command(rid, Channel.ENGINE_JSON, orjson.dumps(cmd))


SYMBOL = {"op": "add_symbol", "symbol": "ETH-USDT", "base": "ETH", "quote": "USDT",
          "tick_size": "0.01", "lot_size": "0.001"}
PLACE = {"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "type": "limit", "tif": "GTC",
         "price": "10.00", "qty": "1", "client_order_id": "c1"}


def test_commands_are_counted_by_kind_and_outcome_and_rejects_by_reason() -> None:
    s = MatchingService()
    s.on_start(0, None)
    run(s, 1, [eng(1, SYMBOL), eng(2, PLACE)])  # accepted, then rejected: no such account
    run(s, 1, [eng(2, PLACE)])  # a resend: duplicate
    binary = encode_command({**PLACE, "client_order_id": "c2"})
    run(s, 1, [Command(3, Channel.ENGINE_BINARY, binary)])  # rejected in the binary codec
    run(s, 1, [Command(4, Channel.ADMIN_JSON, b'{"op":"own_symbols","symbols":{}}')])
    run(s, 1, [eng(5, PLACE)])  # no longer owned: moved
    s.on_message(5, 1000, 64, b"\x00garbage")  # malformed: one error
    counts = s.counters.by_kind_outcome()
    assert counts == {("json", "accepted"): 1, ("json", "rejected"): 1, ("json", "duplicate"): 1,
                      ("binary", "accepted"): 0, ("binary", "rejected"): 1, ("admin", "accepted"): 1,
                      ("json", "moved"): 1, ("malformed", "error"): 1}
    reasons = s.counters.rejects_by_kind()
    assert reasons == {("json", "unknown_account"): 1, ("binary", "unknown_account"): 1}
    assert s.counters.messages == 6 and s.counters.commands == 6


def test_counting_does_not_change_the_state_hash() -> None:
    a, b = MatchingService(), MatchingService()
    for s in (a, b):
        s.on_start(0, None)
    run(a, 1, [eng(1, SYMBOL)])
    a.counters.count([], [])  # counts are output only
    run(b, 1, [eng(1, SYMBOL)])
    assert a.hash_info() == b.hash_info()


def test_timer_puts_each_message_and_command_in_its_bucket() -> None:
    t = MessageTimer()
    t.observe(3e-6, 1)  # below the first bound
    t.observe(0.004, 4)  # 4 commands at 1 ms each
    t.observe(2.0, 0)  # a message without commands (malformed): per message only
    assert t.message_counts[0] == 1 and t.message_counts[BUCKETS.index(5e-3)] == 1
    assert t.message_counts[-1] == 1
    assert t.command_counts[0] == 1 and t.command_counts[BUCKETS.index(1e-3)] == 4
    fam = MessageTimer.family("x_seconds", "doc", t.command_counts, t.command_sum, {"member": "0"})
    buckets = {s.labels["le"]: s.value for s in fam.samples if s.name == "x_seconds_bucket"}
    assert buckets["+Inf"] == 5 and buckets["0.001"] == 5 and buckets["5e-06"] == 1
