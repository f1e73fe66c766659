"""A RoutedClient's market data subscription follows a migrated symbol: the coordinator moves
BTC-USDT from p1 to p2 while it trades, and the subscriber's local book continues at p2 with the
same sequence (no restart at 0), ends equal to p2's book, and has every trade once, in order."""

from __future__ import annotations

import time

import pytest

from pyengine.client.market import LocalBook
from pyengine.node.localcluster import wait_for
from tests.integration.test_migration import BTC, Flow, fund, migrate

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_subscription_follows_the_symbol_to_its_new_partition(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    url = system.coordinator_url
    trader = make_routed_client(url, moved_timeout=60.0)
    watcher = make_routed_client(url, moved_timeout=60.0)
    fund(trader, BTC, "md")
    seen: list[str] = []
    local = LocalBook(watcher, BTC, channels=("l2", "trades"))
    local.sub.callback = (lambda inner: lambda msg: (seen.append(msg["type"]), inner(msg)))(local.sub.callback)
    local.wait_ready(60)
    # both sides at one price: the flow trades against itself as it goes
    flow = Flow(trader, BTC, "md", "1000")
    flow.start()
    time.sleep(2.0)
    seq_before = local.seq
    assert seq_before > 10
    try:
        rec = migrate(url, BTC, "p2", "md-m1")
        assert rec["state"] == "done", rec
        time.sleep(2.0)
    finally:
        flow.stop.set()
        flow.join(10)

    def same():
        [b] = watcher.request({"op": "book", "symbol": BTC, "depth": 1000}, timeout=30).events
        want = {"seq": b["seq"], "bids": b["bids"], "asks": b["asks"]}
        return want if local.levels(1000) == want else None

    final = wait_for(same, 60, "the subscriber's book to equal p2's book")
    assert "moved" in seen  # the source told the subscriber, which followed on its own
    assert final["seq"] > seq_before  # the sequence continued at p2, it did not start again
    trade_ids = sorted({e["trade_id"] for evs in flow.answers.values() for e in evs if e["type"] == "trade"})
    got = [t[0] for t in local.trades]
    assert trade_ids and got == trade_ids, (len(got), len(trade_ids), local.sub.gaps)
