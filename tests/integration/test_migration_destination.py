"""Live symbol migration with the destination failing, and A -> B -> A under a trading client, with
real processes (docs/migration.md, issue #19): the worker hosting the destination partition's
leader SIGKILLed while the export is copied in and imported; every member of the destination
stopped for good in the middle of a migration (the coordinator rolls back, the source trades the
symbol again); BTC-USDT moved p1 -> p2 -> p1 repeatedly while a RoutedClient keeps trading it.

What is compared: each account's open orders (ids, remaining quantities, priority order), the L2
book, the balances, ``funds_check`` on every partition and the holds in transit (the partitions'
``net_in`` sum to zero once nothing moves), and resends of acknowledged client_order_ids, which
must answer as duplicates of the same order id (nothing lost, nothing applied twice)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

import httpx
import pytest

from pyengine.client.match_client import ClientError
from pyengine.node.localcluster import wait_for
from tests.integration.test_migration import ACCOUNTS, BTC, ETH, fund, l2
from tests.integration.test_migration_faults import reached, wait_migration

if TYPE_CHECKING:
    from pyengine.client.routed import RoutedClient
    from pyengine.ops.system import System

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

ROUND_TRIPS = 20  # as issue #19 asks; ~0.5 s a migration (bench/reports/migration_roundtrips.md: timings)


def resting(client: RoutedClient, n: int, tag: str = "rest") -> dict[str, int]:
    """``n`` resting BTC orders of the three accounts, far from 1000; client_order_id -> order id."""
    futures = {}
    for i in range(n):
        buy = i % 2 == 0
        coid = f"{tag}-{i}"
        futures[coid] = client.submit({"op": "place", "account": ACCOUNTS[i % 3], "symbol": BTC,
                                       "side": "buy" if buy else "sell",
                                       "price": str(900 - i % 300 if buy else 1100 + i % 300), "qty": "0.01",
                                       "client_order_id": coid})
    ids = {}
    for coid, f in futures.items():
        ev = f.result(60).events
        assert ev[0]["type"] == "accepted", ev
        ids[coid] = ev[0]["order_id"]
    return ids


def open_orders(client: RoutedClient, partition: str | None = None) -> dict[str, list[tuple]]:
    """Every account's open BTC orders, oldest first: (order id, side, price, remaining)."""
    out = {}
    for a in ACCOUNTS:
        ev = client.request({"op": "open_orders", "account": a, "symbol": BTC}, timeout=30,
                            partition=partition).events[0]
        assert ev["type"] == "open_orders" and not ev["truncated"], ev
        out[a] = [(o["order_id"], o["side"], Decimal(o["price"]), o["remaining_qty"]) for o in ev["orders"]]
    return out


def totals(client: RoutedClient) -> dict[str, dict]:
    return {a: client.balances(a)["total"] for a in ACCOUNTS}


def nothing_in_transit(client: RoutedClient, partitions: tuple[str, ...] = ("p1", "p2")) -> None:
    """funds_check on each partition, and the holds exported equal the holds imported."""
    net: dict[str, int] = {}
    for p in partitions:
        body = client.admin({"op": "funds_check"}, partition=p, timeout=30).events
        assert body["ok"], (p, body)
        for asset, v in body["net_in"].items():
            net[asset] = net.get(asset, 0) + int(v)
    assert all(v == 0 for v in net.values()), net


def assert_duplicates(client: RoutedClient, placed: dict[str, tuple[str, int]]) -> None:
    """Each acknowledged place, sent again with its client_order_id, answers as a duplicate of the
    same order (``placed``: client_order_id -> (account, order id))."""
    for coid, (account, oid) in placed.items():
        again = client.request({"op": "place", "account": account, "symbol": BTC, "side": "buy", "price": "1000",
                                "qty": "0.01", "client_order_id": coid}, timeout=30).events
        assert again[0].get("duplicate") is True and again[0]["order_id"] == oid, (coid, again)


def test_destination_leader_killed_during_import(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=120.0)
    fund(client, BTC, "f")
    ids = resting(client, 3000)
    book, orders, balances = l2(client, BTC), open_orders(client), totals(client)
    assert sum(len(v) for v in orders.values()) == 3000

    leader = system.leader("p2")
    worker = system.topology.partition("p2").members[leader]
    r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "dk"}, timeout=10)
    assert r.status_code == 202, r.text
    reached(system, "dk", "frozen")  # the export is being copied into the destination
    system.stop_worker(worker, sig=signal.SIGKILL)
    rec = httpx.get(f"{url}/v1/migrations/dk", timeout=10).json()
    print(f"destination leader's worker {worker} killed with the migration {rec['state']}")
    assert rec["state"] in ("frozen", "imported"), rec  # before the destination owned the symbol
    system.start_worker(worker)
    rec = wait_migration(url, "dk")
    assert rec["state"] == "done", rec
    assert rec["info"]["orders"] == 3000, rec
    assert httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"] == "p2"

    assert l2(client, BTC) == book
    assert open_orders(client, "p2") == orders  # same ids, same remaining, same priority
    assert totals(client) == balances
    nothing_in_transit(client)
    assert_duplicates(client, {c: (ACCOUNTS[i % 3], ids[c]) for i, c in enumerate(list(ids)[:30])})
    # the destination trades the moved book: bob moves free BTC there (free funds stay at the
    # source), then his sell at 900 takes alice's best bid
    assert client.transfer("bob", "BTC", "1", "p1", "p2", "bob-btc")["state"] == "done"
    assert totals(client) == balances
    ev = client.request({"op": "place", "account": "bob", "symbol": BTC, "side": "sell", "price": "900",
                         "qty": "0.01", "client_order_id": "after-1"}, timeout=30).events
    assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev
    nothing_in_transit(client)


@pytest.mark.parametrize("precopy", [True, False], ids=["precopy", "whole"])
def test_destination_down_for_good_rolls_back(precopy, topology_doc, make_system, make_routed_client):
    """p2 stops for good once the migration is prepared. With the pre-copy (the default) the
    driver gives up while copying the pre-copy to p2: rolled back before any freeze (p1 gives its
    pre-copy up: ``released``; BTC never stopped trading there, its route and epoch unchanged).
    Without it (``migration_precopy`` false) the freeze comes first: rolled back after it (p1
    restores the symbol from its export, the route at p1 with epoch + 1). Either way p1's engine
    is exactly as before."""
    doc = copy.deepcopy(topology_doc)
    if not precopy:
        doc["coordinator"]["migration_precopy"] = False
    system = make_system(doc)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=10.0)
    fund(client, BTC, "f")
    fund(client, ETH, "f")
    ids = resting(client, 300)
    book, orders = l2(client, BTC), open_orders(client, "p1")
    balances = {a: client.request({"op": "balances", "account": a}, timeout=30, partition="p1").events[0]
                for a in ACCOUNTS}
    state_hash = client.admin({"op": "state_hash"}, partition="p1", timeout=30).events["engine_hash"]
    epoch = httpx.get(f"{url}/v1/routes/{BTC}").json()["epoch"]

    coordinator = system.state()["coordinator"]["pid"]
    r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "gone"}, timeout=10)
    assert r.status_code == 202, r.text
    reached(system, "gone", "prepared")
    # hold the driver while every member of p2 stops (the workers follow DIR/topology.json)
    os.kill(coordinator, signal.SIGSTOP)
    try:
        topo = system.topology.without_partition("p2", {})
        topo.save(system.topology_file)
        wait_for(lambda: all("p2" not in {m["partition"] for m in (system.worker_report(w.id) or {}).get(
            "members", [{"partition": "p2"}])} for w in topo.workers), 60, "every member of p2 to stop")
    finally:
        os.kill(coordinator, signal.SIGCONT)
    rec = wait_migration(url, "gone", timeout=240)
    assert rec["state"] == "aborted", rec
    src = client.admin({"op": "mig_state"}, partition="p1", timeout=30).events
    [state] = [m["state"] for m in src["migrations"] if m["id"] == "gone"]
    route = httpx.get(f"{url}/v1/routes/{BTC}").json()
    if precopy:  # rolled back before any freeze
        assert "orders" not in rec["info"] and state == "released", (rec, src)
        assert route["partition"] == "p1" and route["epoch"] == epoch, route
    else:  # rolled back after the freeze
        assert rec["info"]["orders"] == 300 and state == "restored", (rec, src)
        assert route["partition"] == "p1" and route["epoch"] == epoch + 1, route

    # the source is restored exactly, and trades BTC again
    assert client.admin({"op": "state_hash"}, partition="p1", timeout=30).events["engine_hash"] == state_hash
    assert l2(client, BTC) == book
    assert open_orders(client, "p1") == orders
    assert {a: client.request({"op": "balances", "account": a}, timeout=30, partition="p1").events[0]
            for a in ACCOUNTS} == balances
    nothing_in_transit(client, ("p1",))
    assert_duplicates(client, {c: (ACCOUNTS[i % 3], ids[c]) for i, c in enumerate(list(ids)[:10])})
    ev = client.request({"op": "place", "account": "bob", "symbol": BTC, "side": "sell", "price": "900",
                         "qty": "0.01", "client_order_id": "after-1"}, timeout=30).events
    assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev
    nothing_in_transit(client, ("p1",))

    listing = subprocess.run([sys.executable, "-m", "pyengine.ops.cli", "migrations", "--dir", str(system.dir)],
                             capture_output=True, text=True, timeout=60)
    print(listing.stdout)
    line = next(x for x in listing.stdout.splitlines() if x.startswith("gone"))
    assert " aborted " in line and "p2 unreachable" in line, listing.stdout  # the state and why


class Trader(threading.Thread):
    """Trades BTC through RoutedClient (buys and sells at 1000 that cross each other) and records
    every acknowledged place: client_order_id -> (account, order id)."""

    def __init__(self, client: RoutedClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.placed: dict[str, tuple[str, int]] = {}
        self.errors: list[str] = []
        self.trades = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            coid, account = f"t-{i}", ACCOUNTS[i % 3]
            try:
                ev = self.client.request({"op": "place", "account": account, "symbol": BTC,
                                          "side": "buy" if i % 2 else "sell", "price": "1000", "qty": "0.01",
                                          "client_order_id": coid}, timeout=60).events
            except (ClientError, TimeoutError) as exc:
                self.errors.append(f"{coid}: {exc!r}")
                continue
            if ev[0]["type"] == "accepted":
                self.placed[coid] = (account, ev[0]["order_id"])
                self.trades += sum(1 for e in ev if e["type"] == "trade")
            else:
                self.errors.append(f"{coid}: {ev[0]}")
            time.sleep(0.005)


def round_trips(system: System, client: RoutedClient, n: int,
                on_round: Callable[[int, dict, float], None] | None = None) -> dict:
    """BTC-USDT p1 -> p2 -> p1, ``n`` times (after one round trip without trading), with 300
    resting orders and a Trader the whole time; checks at the end. Returns the migration records
    and the counts."""
    url = system.coordinator_url
    fund(client, BTC, "f")
    ids = resting(client, 300)
    rest = {a: [o for o in v if o[2] != 1000] for a, v in open_orders(client).items()}
    # free funds stay where they are deposited (only holds move with orders): the trader needs
    # them at both partitions; p2 knows BTC once the symbol has been there (a first round trip)
    for k, to in enumerate(("p2", "p1")):
        r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": to, "id": f"warm{k}"}, timeout=10)
        assert r.status_code == 202, r.text
        assert wait_migration(url, f"warm{k}")["state"] == "done"
        if to == "p2":
            for a in ACCOUNTS:
                for asset, amount in (("BTC", "1000"), ("USDT", "10000000")):
                    ev = client.request({"op": "deposit", "account": a, "asset": asset, "amount": amount,
                                         "tx_id": f"p2-{a}-{asset}"}, timeout=30, partition="p2").events
                    assert ev[0]["type"] == "deposited", ev
    trader = Trader(client)
    trader.start()
    records = []
    try:
        for k in range(2 * n):
            to = "p2" if k % 2 == 0 else "p1"
            t0 = time.monotonic()
            r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": to, "id": f"rt{k}"}, timeout=10)
            assert r.status_code == 202, r.text
            rec = wait_migration(url, f"rt{k}")
            assert rec["state"] == "done", rec
            records.append(rec)
            if on_round is not None:
                on_round(k, rec, time.monotonic() - t0)
    finally:
        trader.stop.set()
        trader.join(120)
    assert not trader.errors, trader.errors[:5]
    assert len(trader.placed) > 2 * n and trader.trades > 0, (len(trader.placed), trader.trades)
    owner = httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"]
    assert owner == "p1"
    # the resting orders are all open at the owner, unchanged and in their order; the only other
    # open orders are the trader's acknowledged ones, each at most once
    now = open_orders(client, owner)
    trader_ids = {oid for _a, oid in trader.placed.values()}
    for a in ACCOUNTS:
        assert [o for o in now[a] if o[2] != 1000] == rest[a], a
        others = [o[0] for o in now[a] if o[2] == 1000]
        assert len(others) == len(set(others)) and set(others) <= trader_ids, a
    nothing_in_transit(client)
    # every unit deposited is still there (1000 BTC and 10,000,000 USDT per account at each
    # partition): in the accounts of both partitions or in their fee pools
    fees = {"BTC": Decimal(0), "USDT": Decimal(0)}
    for p in ("p1", "p2"):
        for asset, v in client.admin({"op": "funds"}, partition=p, timeout=30).events["fees"].items():
            fees[asset] += Decimal(v)
    total = {asset: sum(Decimal(t[asset]["available"]) + Decimal(t[asset]["held"]) for t in totals(client).values())
             for asset in fees}
    assert total["BTC"] + fees["BTC"] == 6 * 1000 and total["USDT"] + fees["USDT"] == 6 * 10_000_000, (total, fees)
    assert_duplicates(client, {**dict(list(trader.placed.items())[:: max(1, len(trader.placed) // 200)]),
                               **{c: (ACCOUNTS[i % 3], ids[c]) for i, c in enumerate(list(ids)[:10])}})
    return {"records": records, "placed": len(trader.placed), "trades": trader.trades, "ids": ids}


def test_round_trips_under_trading(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    client = make_routed_client(system.coordinator_url, moved_timeout=60.0)
    out = round_trips(system, client, ROUND_TRIPS)
    print(f"{len(out['records'])} migrations, {out['placed']} orders acknowledged, {out['trades']} trades")
    assert len(out["records"]) == 2 * ROUND_TRIPS


def test_migration_with_tokens_on(topology_doc, make_system, make_routed_client, monkeypatch):
    """`matchctl up` with the auth service in the topology: the coordinator gets the service
    user's credential (System passes it), so its migration steps are accepted by partitions that
    check tokens; traders with their own tokens follow the symbol."""
    from tests.integration.test_auth_paths import CHEAP_ARGON2

    for k, v in CHEAP_ARGON2.items():
        monkeypatch.setenv(k, v)
    system = make_system({**topology_doc, "auth": {"port": 0}}, name="secured", timeout=180)
    url = system.coordinator_url
    admin = make_routed_client(url, **system.control_credentials())
    fund(admin, BTC, "f")
    traders = {}
    with system.auth_client() as api:
        for a in ("alice", "bob"):
            api.create_account(a)
            api.create_user(a, "password-for-tests", a, ["trade", "read"])
            token = api.login(a, "password-for-tests").access_token
            traders[a] = make_routed_client(url, credentials=token.encode(), moved_timeout=60.0)
    placed = {}
    for i in range(20):
        ev = traders["alice"].request({"op": "place", "account": "alice", "symbol": BTC, "side": "buy",
                                       "price": str(900 - i), "qty": "0.01", "client_order_id": f"a-{i}"},
                                      timeout=30).events
        assert ev[0]["type"] == "accepted", ev
        placed[f"a-{i}"] = ev[0]["order_id"]
    book = l2(traders["alice"], BTC)

    out = subprocess.run([sys.executable, "-m", "pyengine.ops.cli", "migrate", BTC, "--to", "p2",
                          "--dir", str(system.dir)], capture_output=True, text=True, timeout=240)
    print(out.stdout, out.stderr)
    assert out.returncode == 0 and f"{BTC}: moved 20 orders" in out.stdout, (out.stdout, out.stderr)
    assert httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"] == "p2"
    assert l2(traders["alice"], BTC) == book
    again = traders["alice"].request({"op": "place", "account": "alice", "symbol": BTC, "side": "buy",
                                      "price": "900", "qty": "0.01", "client_order_id": "a-0"}, timeout=30).events
    assert again[0].get("duplicate") is True and again[0]["order_id"] == placed["a-0"], again
    assert admin.transfer("bob", "BTC", "1", "p1", "p2", "bob-btc")["state"] == "done"
    ev = traders["bob"].request({"op": "place", "account": "bob", "symbol": BTC, "side": "sell", "price": "900",
                                 "qty": "0.01", "client_order_id": "b-1"}, timeout=30).events
    assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev
    nothing_in_transit(admin)
