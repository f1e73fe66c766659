"""The pre-copy with real processes (docs/migration.md): BTC-USDT's book is copied to the
destination while it still trades at the source, then the freeze exports only what changed
since. What changes during the pre-copy (orders placed, cancelled, resting orders filled) must
arrive: the destination's book at activation is the source's at the freeze."""

from __future__ import annotations

import copy
import time
from decimal import Decimal

import httpx
import pytest

from tests.integration.test_migration import ACCOUNTS, BTC, fund, l2
from tests.integration.test_migration_destination import (
    assert_duplicates,
    nothing_in_transit,
    open_orders,
    resting,
    totals,
)
from tests.integration.test_migration_faults import DaveFlow, OwnerProbe, fund_dave_and_erin, wait_migration

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_changes_during_the_precopy_arrive(topology_doc, make_system, make_routed_client):
    """2,900 resting orders of three accounts, copied in 1 KiB chunks (~110 of them, several
    seconds on a loaded machine) while dave places and cancels BTC orders and carol's sells take
    some of alice's resting bids: the source's freeze says what changed since the pre-copy (added,
    gone, changed in place), and the destination ends with the source's book: the resting
    accounts' open orders with their remaining quantities and priority, every acknowledged dave
    order that is still open (once), none of those he cancelled; funds balance, nothing in
    transit; client_order_ids of before and during the pre-copy answer as duplicates at p2."""
    doc = copy.deepcopy(topology_doc)
    doc["coordinator"]["migration_chunk_bytes"] = 1024
    # the coordinator holds the fetched pre-copy 3 s before staging it (and the freeze's export as
    # long): the window in which carol's sells land for certain, whatever the machine's load
    doc["coordinator"]["migration_stage_delay_ms"] = 3000
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=240.0)
    fund(client, BTC, "f")
    fund_dave_and_erin(client)
    ids = resting(client, 2900)
    epoch = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()["epoch"]
    # dave's buys at 550 (below every resting bid: carol's sells never reach them), every third
    # cancelled again
    flow = DaveFlow(client, price="550", cancel_every=3)
    probe = OwnerProbe(client, account="erin")
    flow.start()
    probe.start()
    try:
        while len(flow.placed) < 5:
            time.sleep(0.05)
        r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "pc"}, timeout=10)
        assert r.status_code == 202, r.text
        # carol sells into alice's bids at 900 (rest-0, rest-300, rest-600, ... in that order) once
        # the pre-copy is fetched, before it is staged: resting orders it holds filled, whole and
        # in part, before the freeze
        deadline = time.monotonic() + 120
        while True:
            m = httpx.get(f"{url}/v1/migrations/pc", timeout=10).json()
            progress = m.get("progress") or {}
            if progress.get("part") == "precopy" and progress["fetched"] == progress["size"]:
                break
            assert m["state"] in ("new", "prepared") and time.monotonic() < deadline, m
            time.sleep(0.005)
        for i, qty in enumerate(("0.005", "0.01", "0.01")):
            ev = client.request({"op": "place", "account": "carol", "symbol": BTC, "side": "sell", "price": "899",
                                 "qty": qty, "client_order_id": f"take-{i}"}, timeout=300).events
            assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev
        m = httpx.get(f"{url}/v1/migrations/pc", timeout=10).json()
        assert m["state"] == "prepared" and not m["progress"]["imported"], m  # still inside the delay
        rec = wait_migration(url, "pc", timeout=300)
        time.sleep(1.0)
    finally:
        flow.stop.set()
        probe.stop.set()
        flow.join(120)
        probe.join(120)
    assert rec["state"] == "done", rec
    route = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()
    assert route["partition"] == "p2" and route["epoch"] == epoch + 1, route
    probe.check("p1", "p2")
    # the freeze exported only what changed since the pre-copy, and there was something
    src = client.admin({"op": "mig_state"}, partition="p1", timeout=30).events
    [meta] = [m["meta"] for m in src["migrations"] if m["id"] == "pc"]
    print("freeze after the pre-copy:", {k: meta.get(k) for k in ("orders", "appended", "removed", "changed")},
          "pause", rec["info"].get("pause_ms"), "ms")
    assert meta.get("precopy"), meta
    assert meta["appended"] >= 1 and meta["removed"] >= 1 and meta["changed"] >= 1, meta
    # the destination's book is the source's at the freeze: the resting accounts' open orders
    # (ids, remaining, priority) as p1 had them, dave's open ones once, none he cancelled
    assert not flow.errors, flow.errors[:5]
    dave = client.request({"op": "open_orders", "account": "dave", "symbol": BTC}, timeout=30).events[0]
    assert not dave["truncated"]
    got = sorted(o["order_id"] for o in dave["orders"])
    assert got == sorted(oid for _a, oid in flow.placed.values()) and not set(got) & flow.cancelled, dave
    orders = open_orders(client, "p2")
    alice = {o[0]: o for o in orders["alice"]}
    # rest-0 and rest-300 filled whole (gone), rest-600 in part (0.005 left)
    assert ids["rest-0"] not in alice and ids["rest-300"] not in alice, "filled orders at p2"
    assert Decimal(alice[ids["rest-600"]][3]) == Decimal("0.005"), alice[ids["rest-600"]]
    assert sum(len(v) for v in orders.values()) == 2900 - 2
    bids = l2(client, BTC)["bids"]
    assert bids[0][0] == "900" and Decimal(bids[0][1]) == Decimal("0.075"), bids[:2]
    # priority: rest-600 still first in its queue at p2: a sell at 900 takes it first
    assert client.transfer("carol", "BTC", "1", "p1", "p2", "carol-btc")["state"] == "done"
    ev = client.request({"op": "place", "account": "carol", "symbol": BTC, "side": "sell", "price": "900",
                         "qty": "0.005", "client_order_id": "take-after"}, timeout=30).events
    trades = [e for e in ev if e["type"] == "trade"]
    assert [t["maker_order_id"] for t in trades] == [ids["rest-600"]], ev
    nothing_in_transit(client)
    assert totals(client)  # balances across partitions answer
    assert_duplicates(client, {c: (ACCOUNTS[i % 3], ids[c]) for i, c in enumerate(list(ids)[1:20], start=1)})
    assert_duplicates(client, dict(list(flow.placed.items())[:20]))
