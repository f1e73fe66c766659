"""Market data through real members: a subscriber's local book and trade stream while the leader
is SIGKILLed five times under an order flow. The stream is continuous, or the gap is noticed and
the re-sync lands on the book the members hold; every trade id arrives once, in order."""

from __future__ import annotations

import random
import threading
import time

import pytest

from pyengine.client.market import LocalBook
from pyengine.node.localcluster import wait_for
from tests.integration.test_client_follows_leader import await_in_step, in_step_count
from tests.integration.test_cluster_failover import SYMBOL, setup_market

pytestmark = pytest.mark.cluster

KILLS = 5


def random_order(rng: random.Random, i: int) -> dict:
    side = rng.choice(("buy", "sell"))
    if rng.random() < 0.2:
        return {"op": "cancel_all", "account": "bob" if side == "sell" else "alice", "symbol": SYMBOL}
    return {"op": "place", "account": "bob" if side == "sell" else "alice", "symbol": SYMBOL, "side": side,
            "type": "limit", "tif": rng.choice(("GTC", "GTC", "IOC")), "price": f"{rng.randint(49990, 50010)}.00",
            "qty": f"0.{rng.randint(1, 9)}", "client_order_id": f"md{i}"}


def book_now(client) -> dict:
    [b] = client.request({"op": "book", "symbol": SYMBOL, "depth": 1000}, timeout=30).events
    return {"seq": b["seq"], "bids": b["bids"], "asks": b["asks"]}


def await_same_book(local: LocalBook, client) -> dict:
    """The local book equals the members' book at the same sequence (the query goes through the
    log after every order before it)."""
    def same():
        want = book_now(client)
        got = local.levels(1000)
        return want if got == want else None

    return wait_for(same, 60, "the subscriber's book to equal the book query")


def test_subscriber_book_and_trades_across_five_leader_kills(make_cluster, make_client):
    cluster = make_cluster()
    leader = cluster.await_leader(60)
    cluster.await_followers(2)
    trader = make_client(cluster.ingress_endpoints())
    assert trader.wait_connected(30), trader.last_error
    setup_market(trader)
    watcher = make_client(cluster.ingress_endpoints())
    assert watcher.wait_connected(30), watcher.last_error
    local = LocalBook(watcher, SYMBOL, channels=("l2", "trades")).wait_ready(30)

    rng = random.Random(2121)
    futures = []
    stop = threading.Event()

    def flow() -> None:
        i = 0
        while not stop.is_set():
            futures.append(trader.submit(random_order(rng, i)))
            i += 1
            time.sleep(0.005)

    loader = threading.Thread(target=flow, daemon=True)
    loader.start()
    try:
        for _ in range(KILLS):
            leader = cluster.await_leader(30)
            time.sleep(1.5)
            in_step = in_step_count(cluster, leader)
            cluster.kill(leader)
            cluster.await_leader(30, exclude=leader)
            cluster.start_member(leader)
            await_in_step(cluster, leader, in_step)
    finally:
        stop.set()
        loader.join(5)

    events = [e for f in futures for e in f.result(60).events]
    assert len(futures) > KILLS * 100
    final = await_same_book(local, watcher)
    assert final["seq"] > KILLS * 100
    # every trade once, in order: the answers (a resend's duplicate answer repeats its trades)
    trade_ids = sorted({e["trade_id"] for e in events if e["type"] == "trade"})
    got = [t[0] for t in local.trades]
    assert got == trade_ids, (len(got), len(trade_ids), local.sub.gaps)
    # each failover re-synced (a fresh snapshot) rather than trusting the stream across it
    assert local.sub.resyncs > KILLS
