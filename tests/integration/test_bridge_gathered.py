"""A member that is not the leader gets the messages of one log poll in one crossing
(``ServiceBridge.onSessionMessages``, gathered by MatchService). Each message must be applied
exactly as the one-message path applies it: same state, same sequence hash, same reply cache,
the same error isolation. Real JVM, real direct ByteBuffers laid out as MatchService lays them
out, real MatchingService on both sides."""

from __future__ import annotations

import struct

import orjson

from pyengine.wire import protocol
from pyengine.wire.protocol import Channel, Command
from tests.integration.test_bridge_failure import BOOM, FailingService, bridge_over

_FRAME = struct.Struct("<qi")
_GATHERED = struct.Struct("<qqqi")  # MatchService.GATHERED_HEADER_LENGTH = 28
SYMBOL = "BTC-USDT"


def engine(request_id: int, cmd: dict) -> Command:
    return Command(request_id, Channel.ENGINE_JSON, orjson.dumps(cmd))


def place(coid: str, account: str, side: str, price: str) -> dict:
    return {"op": "place", "account": account, "symbol": SYMBOL, "side": side, "type": "limit", "tif": "GTC",
            "price": price, "qty": "0.5", "client_order_id": coid}


def log_messages() -> list[tuple[int, int, int, bytes]]:
    """(session id, timestamp ms, log position, message): a market, funded accounts, orders that
    rest and cross, a resent command (answered from the reply cache), a malformed message and one
    the service raises on, from two sessions."""
    setup = [engine(1, {"op": "add_symbol", "symbol": SYMBOL, "base": "BTC", "quote": "USDT",
                        "tick_size": "0.01", "lot_size": "0.001"}),
             engine(2, {"op": "deposit", "account": "alice", "asset": "USDT", "amount": "100000", "tx_id": "a"}),
             engine(3, {"op": "deposit", "account": "bob", "asset": "BTC", "amount": "100", "tx_id": "b"})]
    bodies = [protocol.encode_request(41, setup)]
    for i in range(30):
        buy = place(f"a{i}", "alice", "buy", f"{100 + i % 5}.00")
        sell = place(f"b{i}", "bob", "sell", f"{102 + i % 3}.00")
        bodies.append(protocol.encode_request(41, [engine(10 + i, buy)]))
        bodies.append(protocol.encode_request(42, [engine(10 + i, sell)]))
        if i == 7:
            bodies.append(protocol.encode_request(41, [engine(12, place("a2", "alice", "buy", "100.00"))]))  # resent
            bodies.append(b"MX garbage")
            bodies.append(protocol.encode_request(42, [Command(900, Channel.ADMIN_JSON, b'{"op":"ping"}'),
                                                       Command(901, Channel.ADMIN_JSON, BOOM),
                                                       Command(902, Channel.ADMIN_JSON, b'{"op":"ping"}')]))
    return [(7 + n % 2, 1_000 + n, 4096 + 256 * n, body) for n, body in enumerate(bodies)]


def one_by_one(bridge, messages) -> int:
    """The leader's path: one crossing per message; the number of reply frames it wrote."""
    frames = 0
    for session_id, timestamp, position, body in messages:
        bridge.input[: len(body)] = body
        end = bridge.onSessionMessage(session_id, timestamp, position, len(body))
        offset = 0
        while offset < end:
            _, length = _FRAME.unpack_from(bridge.output, offset)
            offset += _FRAME.size + max(length, 0)
            frames += length >= 0
    return frames


def gathered(bridge, messages, per_crossing: int) -> int:
    """What MatchService.flushGathered hands over, ``per_crossing`` messages at a time."""
    frames = 0
    for first in range(0, len(messages), per_crossing):
        offset = 0
        batch = messages[first : first + per_crossing]
        for session_id, timestamp, position, body in batch:
            _GATHERED.pack_into(bridge.input, offset, session_id, timestamp, position, len(body))
            offset += _GATHERED.size
            bridge.input[offset : offset + len(body)] = body
            offset += len(body)
        frames += bridge.onSessionMessages(len(batch), offset)
    return frames


def test_gathered_messages_are_applied_exactly_as_one_at_a_time(caplog):
    messages = log_messages()
    reference = FailingService()
    with caplog.at_level("ERROR", logger="matchx.bridge"):
        frames = one_by_one(bridge_over(reference), messages)
        runs = {}
        for per_crossing in (1, 7, 50, len(messages)):
            service = FailingService()
            runs[per_crossing] = (service, gathered(bridge_over(service), messages, per_crossing))
    # the failing message is isolated: logged at its own position on every path, the rest applied
    failing = 4096 + 256 * next(n for n, m in enumerate(messages) if BOOM in m[3])
    assert caplog.text.count(f"service raised at log position {failing}") == 1 + len(runs)
    assert reference.hash_info()["position"] == messages[-1][2]
    assert reference.engine.orders, "the flow left resting orders"
    for per_crossing, (service, replies) in runs.items():
        # same engine state, same sequence of applied commands, same position, same snapshot
        # (engine, reply cache, sessions): what a member restarted from it would hold
        assert service.hash_info() == reference.hash_info(), per_crossing
        assert service.snapshot() == reference.snapshot(), per_crossing
        assert replies == frames, per_crossing  # what the leader would have sent, for the egress count
    # 3 setup commands, 60 orders and the ping before the failure; the resent order was
    # answered from the reply cache, not applied twice
    assert reference.applied == 64
