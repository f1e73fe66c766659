"""Market data without the JVM: the replicated service's subscriptions and updates, read by the
SDK's own Subscription and BookState (the same classes a MatchClient uses), message by message."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import Future

import orjson
import pytest

from pyengine.client.market import BookState, Subscription, SubscriptionRejected
from pyengine.client.match_client import Reply
from pyengine.service.marketdata import MAX_SUBSCRIPTIONS
from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.codec import decode_events, encode_command
from pyengine.wire.protocol import Channel, Command, Status

SYM = "BTC-USDT"
SETUP = [
    {"op": "add_symbol", "symbol": SYM, "base": "BTC", "quote": "USDT", "tick_size": "1", "lot_size": "1",
     "maker_fee_bps": 2, "taker_fee_bps": 5},
    {"op": "add_symbol", "symbol": "ETH-USDT", "base": "ETH", "quote": "USDT", "tick_size": "1", "lot_size": "1"},
] + [{"op": "deposit", "account": a, "asset": x, "amount": "100000000", "tx_id": f"{a}{x}"}
     for a in ("a", "b", "c") for x in ("BTC", "USDT", "ETH")]


class Session:
    """One client session on the service: its requests go in its own log messages, its frames
    (answers and market data) come back in order, as Aeron's egress delivers them."""

    def __init__(self, service: MatchingService, session_id: int) -> None:
        self.service = service
        self.session_id = session_id
        self.next_id = 1
        self.queued: list[tuple[Command, Future]] = []
        self.pending: dict[int, Future] = {}
        self.subs: dict[str, Subscription] = {}
        self.lose_market = False  # drop market frames (a slow connection, a dead leader's egress)

    def submit(self, cmd: dict) -> Future:
        fut: Future = Future()
        self.queued.append((Command(self.next_id, Channel.ENGINE_JSON, orjson.dumps(cmd)), fut))
        self.next_id += 1
        return fut

    def flush(self, ts: int = 1000) -> None:
        while self.queued:
            batch, self.queued = self.queued, []
            for c, f in batch:
                self.pending[c.request_id] = f
            message = protocol.encode_request(self.session_id, [c for c, _ in batch])
            frames = self.service.on_message(self.session_id, ts, 64, message)
            self.deliver(frames)

    def deliver(self, frames: list) -> None:
        for target, blob in frames:
            if target != self.session_id:
                continue
            kind, body = protocol.decode_reply(blob)
            if kind == protocol.KIND_MARKET:
                if not self.lose_market:
                    for msg in orjson.loads(body):
                        self.subs[msg["symbol"]].on_update(msg) if "symbol" in msg else None
                continue
            for a in body:
                self.pending.pop(a.request_id).set_result(Reply(a.request_id, orjson.loads(a.payload)))

    def subscribe(self, symbol: str, channels: list[str], callback) -> Subscription:
        sub = self.subs[symbol] = Subscription(symbol, channels, callback, self.submit)
        sub.resync("subscribe")
        self.flush()
        return sub


_rids = itertools.count(1)


def trader(service: MatchingService, cmds: list[dict], watchers: list[Session], ts: int = 1000) -> list:
    frames = service.on_message(1, ts, 64, protocol.encode_request(
        3, [Command(next(_rids), Channel.ENGINE_JSON, orjson.dumps(c)) for c in cmds]))
    for w in watchers:
        w.deliver(frames)
        w.flush(ts)
    return [orjson.loads(a.payload) for _, blob in frames if _ == 1
            for a in protocol.decode_reply(blob)[1]]


def random_commands(rng: random.Random, n: int) -> list[dict]:
    out: list[dict] = []
    for i in range(n):
        r = rng.random()
        acct = rng.choice("abc")
        if r < 0.6:
            out.append({"op": "place", "account": acct, "symbol": SYM if rng.random() < 0.9 else "ETH-USDT",
                        "side": rng.choice(("buy", "sell")), "price": str(rng.randint(90, 110)),
                        "qty": str(rng.randint(1, 5)), "client_order_id": f"o{i}",
                        "tif": rng.choice(("GTC", "GTC", "GTC", "IOC")), "stp": "none"})
        elif r < 0.8:
            out.append({"op": "cancel", "account": acct, "symbol": SYM, "client_order_id": f"o{rng.randint(0, i)}"})
        elif r < 0.95:
            out.append({"op": "amend", "account": acct, "symbol": SYM, "client_order_id": f"o{rng.randint(0, i)}",
                        "qty": str(rng.randint(1, 4)),
                        **({"price": str(rng.randint(90, 110))} if rng.random() < .5 else {})})
        else:
            out.append({"op": "cancel_all", "account": acct})
    return out


def book_of(service: MatchingService, symbol: str = SYM) -> dict:
    [b] = service.engine.apply({"op": "book", "symbol": symbol, "depth": 1000}, 0)
    return {"seq": b["seq"], "bids": b["bids"], "asks": b["asks"]}


def test_after_10000_random_commands_the_local_book_is_the_book_query_at_the_same_seq():
    s = MatchingService()
    trader(s, SETUP, [])
    rng = random.Random(21)
    trader(s, random_commands(rng, 300), [])  # a book before anyone subscribes
    w = Session(s, 50)
    book = BookState(SYM)
    trades: list[list] = []

    def on(msg: dict) -> None:
        book(msg)
        trades.extend(msg.get("trades") or [])

    sub = w.subscribe(SYM, ["l2", "trades", "top"], on)
    assert book.levels(1000) == book_of(s)
    cmds = random_commands(rng, 10_000)
    all_trades = []
    i = checks = 0
    while i < len(cmds):
        n = rng.randint(1, 40)  # log messages of 1..40 commands
        for answer in trader(s, cmds[i:i + n], [w]):
            all_trades += [[e["trade_id"], e["price"], e["qty"], e["taker_side"]]
                           for e in answer if e["type"] == "trade" and e["symbol"] == SYM and not e.get("duplicate")]
        i += n
        if rng.random() < 0.02:
            checks += 1
            assert book.levels(1000) == book_of(s)
    assert checks > 5
    assert book.levels(1000) == book_of(s)
    assert book.seq > 1000 and sub.gaps == 0
    # every trade once, in order, as the traders' answers say
    assert trades == all_trades[-len(trades):] and [t[0] for t in trades] == sorted({t[0] for t in trades})
    assert len(trades) == len([t for t in all_trades if t[0] > trades[0][0] - 1])


def test_lost_updates_are_noticed_and_the_resync_lands_on_the_right_book_with_every_trade():
    s = MatchingService()
    trader(s, SETUP, [])
    rng = random.Random(5)
    w = Session(s, 50)
    book = BookState(SYM)
    seen: list[dict] = []
    trades: list[list] = []

    def on(msg: dict) -> None:
        seen.append(msg)
        book(msg)
        trades.extend(msg.get("trades") or [])

    sub = w.subscribe(SYM, ["l2", "trades"], on)
    all_trades: list[int] = []
    cmds = random_commands(rng, 3000)
    for i in range(0, len(cmds), 10):
        w.lose_market = (i // 10) % 17 == 3  # now and then an update never arrives
        for answer in trader(s, cmds[i:i + 10], [w]):
            all_trades += [e["trade_id"] for e in answer
                           if e["type"] == "trade" and e["symbol"] == SYM and not e.get("duplicate")]
    w.lose_market = False
    trader(s, [{"op": "place", "account": "a", "symbol": SYM, "side": "buy", "price": "1", "qty": "1"}], [w])
    assert sub.gaps > 10
    assert sum(1 for m in seen if m["type"] == "gap") == sub.gaps
    assert book.levels(1000) == book_of(s)
    assert [t[0] for t in trades] == all_trades  # fetched again after each gap: none lost, none twice


@pytest.mark.parametrize("cmd,reason", [
    ({"op": "subscribe", "symbol": "NOPE", "channels": ["l2"]}, "unknown_symbol"),
    ({"op": "subscribe", "symbol": SYM, "channels": ["l3"]}, "unknown_channel"),
    ({"op": "subscribe", "symbol": SYM, "channels": []}, "bad_request"),
    ({"op": "subscribe", "symbol": SYM, "channels": "l2"}, "bad_request"),
    ({"op": "subscribe", "symbol": 5, "channels": ["l2"]}, "bad_request"),
    ({"op": "subscribe", "symbol": SYM, "channels": ["l2"], "depth": 0}, "bad_request"),
    ({"op": "unsubscribe"}, "bad_request"),
])
def test_bad_subscriptions_get_a_clear_error_and_change_nothing(cmd, reason):
    s = MatchingService()
    trader(s, SETUP, [])
    before = s.market.encode()
    w = Session(s, 50)
    fut = w.submit(cmd)
    w.flush()
    [answer] = fut.result().events
    assert answer["type"] == "rejected" and answer["reason"] == reason and answer["detail"]
    assert s.market.encode() == before and not any(sym.watch for sym in s.engine.symbols.values())


def test_too_many_subscriptions_per_session():
    s = MatchingService()
    trader(s, SETUP + [{"op": "add_symbol", "symbol": f"S{i}", "base": f"B{i}", "quote": "USDT",
                        "tick_size": "1", "lot_size": "1"} for i in range(MAX_SUBSCRIPTIONS)], [])
    w = Session(s, 50)
    for i in range(MAX_SUBSCRIPTIONS):
        w.subscribe(f"S{i}", ["top"], lambda m: None).wait_ready(0)
    sub = w.subscribe(SYM, ["top"], lambda m: None)
    with pytest.raises(SubscriptionRejected, match="too_many_subscriptions"):
        sub.wait_ready(0)
    w.subscribe("S0", ["l2"], lambda m: None).wait_ready(0)  # replacing one is allowed
    other = Session(s, 51)
    other.subscribe(SYM, ["top"], lambda m: None).wait_ready(0)  # the limit is per session


def test_updates_are_one_message_per_session_per_log_message_and_stop_at_session_close():
    s = MatchingService()
    trader(s, SETUP, [])
    watchers = [Session(s, 100 + i) for i in range(3)]
    for w in watchers:
        w.subscribe(SYM, ["l2"], lambda m: None)
    cmds = [{"op": "place", "account": "a", "symbol": SYM, "side": "buy", "price": str(90 + i), "qty": "1"}
            for i in range(20)]
    frames = s.on_message(1, 1000, 64, protocol.encode_request(3, [Command(next(_rids), Channel.ENGINE_JSON,
                                                                          orjson.dumps(c)) for c in cmds]))
    market = [(t, protocol.decode_reply(b)) for t, b in frames if protocol.decode_reply(b)[0] == protocol.KIND_MARKET]
    assert sorted(t for t, _ in market) == [100, 101, 102]
    [upd] = orjson.loads(market[0][1][1])
    assert upd["u"] - upd["U"] == 19 and len(upd["bids"]) == 20
    s.on_session_close(101, 2000)
    cancel = Command(next(_rids), Channel.ENGINE_JSON, orjson.dumps({"op": "cancel_all", "account": "a"}))
    frames = s.on_message(1, 1000, 64, protocol.encode_request(3, [cancel]))
    assert sorted(t for t, b in frames if protocol.decode_reply(b)[0] == protocol.KIND_MARKET) == [100, 102]


def test_a_restored_member_continues_the_sequence_and_the_subscriptions():
    s = MatchingService()
    trader(s, SETUP, [])
    w = Session(s, 50)
    book = BookState(SYM)
    sub = w.subscribe(SYM, ["l2"], book)
    rng = random.Random(1)
    trader(s, random_commands(rng, 500), [w])
    restored = MatchingService()
    restored.restore(s.snapshot())
    assert restored.snapshot() == s.snapshot()
    w.service = restored  # a new leader with the same log
    trader(restored, random_commands(rng, 500), [w])
    assert sub.gaps == 0 and book.levels(1000) == book_of(restored)


def test_followers_encode_nothing_but_keep_the_same_sequence():
    leader, follower = MatchingService(), MatchingService()
    follower.role = 0
    for svc in (leader, follower):
        trader(svc, SETUP, [])
        Session(svc, 50).subscribe(SYM, ["l2"], lambda m: None)
    cmds = random_commands(random.Random(3), 200)
    for svc in (leader, follower):
        batch = [Command(i + 1, Channel.ENGINE_JSON, orjson.dumps(c)) for i, c in enumerate(cmds)]
        frames = svc.on_message(1, 1000, 64, protocol.encode_request(3, batch))
        kinds = [protocol.decode_reply(b)[0] for _, b in frames]
        assert (protocol.KIND_MARKET in kinds) == (svc is leader)
    assert leader.engine.state_hash() == follower.engine.state_hash()
    assert leader.engine.snapshot() == follower.engine.snapshot()
    assert leader.market.encode() == follower.market.encode()


def test_open_orders_and_fills_in_the_binary_codec():
    s = MatchingService()
    trader(s, SETUP, [])
    trader(s, [{"op": "place", "account": "a", "symbol": SYM, "side": "sell", "price": "100", "qty": "3"},
               {"op": "place", "account": "b", "symbol": SYM, "side": "buy", "price": "100", "qty": "2"}], [])
    for cmd, key in (({"op": "open_orders", "account": "a", "symbol": SYM}, "orders"),
                     ({"op": "fills", "account": "a", "since": 0, "limit": 10}, "fills")):
        frames = s.on_message(1, 1000, 64, protocol.encode_request(4, [Command(next(_rids), Channel.ENGINE_BINARY,
                                                                             encode_command(cmd))]))
        [a] = protocol.decode_reply(frames[0][1])[1]
        assert a.status == Status.OK
        [answer] = decode_events(a.payload)
        assert answer == s.engine.apply(cmd, 0)[0] and len(answer[key]) == 1
    [fills] = s.engine.apply({"op": "fills", "account": "b"}, 0)
    assert fills["fills"][0]["liquidity"] == "taker" and fills["fills"][0]["fee"] == "0.1"
