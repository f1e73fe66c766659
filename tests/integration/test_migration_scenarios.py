"""The source document's elastic scenarios end to end with real processes (issue #19,
docs/migration.md, docs/partitions.md), on one system, while ETH-USDT keeps trading on p1 (a
client places and cancels on it, and crosses now and then, the whole time):

1. split: a hot symbol (BTC-USDT, resting orders of three accounts) goes to a new partition p3
   on a new worker (`worker add w4`, `partition add p3` on it, migrate);
2. merge: the cold XRP-USDT of p2 joins the cold SOL-USDT in p1; a second migration of XRP-USDT
   asked while the first runs is refused (`migration_in_progress`) and changes nothing;
3. the emptied p2 retired (`partition remove`) once its free funds are transferred away;
4. p3 moved to other workers (`partition move p3 --as p4`).

After each step: the moved book is the book before (the L2 book; each account's open orders:
ids, sides, prices, remaining quantities, in priority order), each resting account's total
balances unchanged, funds conserved (every account's balances plus the fee pools of all
partitions, retired ones included, equal the deposits; the flow's trade fees stay in p1's pool),
``funds_check`` ok with nothing in transit, and the routing map names the right partitions."""

from __future__ import annotations

import copy
import threading
import time
from decimal import Decimal
from typing import TYPE_CHECKING, cast

import httpx
import pytest

from pyengine.client.match_client import ClientError
from pyengine.node.localcluster import wait_for
from pyengine.ops import elastic
from tests.integration.test_migration import ACCOUNTS, l2
from tests.integration.test_migration_faults import wait_migration

if TYPE_CHECKING:
    from pyengine.client.routed import RoutedClient
    from pyengine.ops.system import System

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

BTC, ETH, SOL, XRP = "BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT"
FLOW_ACCOUNTS = ("fa", "fb", "fc")  # the ETH flow's accounts (their balances change by trades)
AMOUNTS = {"BTC": "1000", "ETH": "1000", "SOL": "100000", "XRP": "1000000", "USDT": "10000000"}


class Deposits:
    """Deposits made through a RoutedClient, summed per asset (what funds must add up to)."""

    def __init__(self, client: RoutedClient) -> None:
        self.client = client
        self.total: dict[str, Decimal] = {}

    def fund(self, accounts: tuple[str, ...], symbol: str) -> None:
        for a in accounts:
            for asset in symbol.split("-"):
                ev = self.client.request({"op": "deposit", "account": a, "asset": asset, "amount": AMOUNTS[asset],
                                          "tx_id": f"{symbol}-{a}-{asset}"}, timeout=30, symbol=symbol).events
                assert ev[0]["type"] == "deposited", ev
                self.total[asset] = self.total.get(asset, Decimal(0)) + Decimal(AMOUNTS[asset])


def rest(client: RoutedClient, symbol: str, n: int, bid: Decimal, ask: Decimal, step: Decimal, qty: str) -> None:
    """``n`` resting orders of the three accounts, bids below ``bid`` and asks above ``ask``, with
    repeated prices (so priority within a level matters)."""
    futures = []
    for i in range(n):
        buy = i % 2 == 0
        price = bid - step * (i % 7) if buy else ask + step * (i % 7)
        futures.append(client.submit({"op": "place", "account": ACCOUNTS[i % 3], "symbol": symbol,
                                      "side": "buy" if buy else "sell", "price": str(price), "qty": qty,
                                      "client_order_id": f"{symbol}-rest-{i}"}))
    for f in futures:
        ev = f.result(60).events
        assert ev[0]["type"] == "accepted" and not any(e["type"] == "trade" for e in ev), ev


def book(client: RoutedClient, symbol: str, partition: str) -> tuple[dict, dict[str, list[tuple]]]:
    """The L2 book and every account's open orders of ``symbol`` at ``partition``, oldest first:
    (order id, side, price, remaining)."""
    orders = {}
    for a in ACCOUNTS:
        ev = client.request({"op": "open_orders", "account": a, "symbol": symbol}, timeout=30,
                            partition=partition).events[0]
        assert ev["type"] == "open_orders" and not ev["truncated"], ev
        orders[a] = [(o["order_id"], o["side"], Decimal(o["price"]), o["remaining_qty"]) for o in ev["orders"]]
    assert sum(len(v) for v in orders.values()) > 0
    return l2(client, symbol), orders


def totals(client: RoutedClient) -> dict[str, dict[str, tuple[Decimal, Decimal]]]:
    """Each resting account's balances summed over the partitions: asset -> (available, held)."""
    return {a: {asset: (Decimal(v["available"]), Decimal(v["held"]))
                for asset, v in client.balances(a)["total"].items()} for a in ACCOUNTS}


def routing(url: str) -> tuple[dict[str, str], list[str]]:
    """The coordinator's map: symbol -> partition, and the partitions."""
    symbols = {s["symbol"]: s["partition"] for s in httpx.get(f"{url}/v1/symbols", timeout=10).json()}
    return symbols, sorted(p["id"] for p in httpx.get(f"{url}/v1/partitions", timeout=10).json())


def net_in(client: RoutedClient, partition: str) -> dict[str, int]:
    """``funds_check`` of ``partition`` (must be ok): the holds it imported minus exported."""
    check = cast(dict, client.admin({"op": "funds_check"}, partition=partition, timeout=30).events)
    assert check["ok"], (partition, check)
    return {asset: int(v) for asset, v in check["net_in"].items()}


def add(into: dict, more: dict, sign: int = 1) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + sign * v


def funds_total(system: System, client: RoutedClient, partitions: list[str], retired_fees: dict[str, Decimal],
                retired_net: dict[str, int]) -> dict[str, Decimal]:
    """Per asset: every balance (available + held) and fee pool of ``partitions``, plus the fee
    pools of retired partitions; each partition's ``funds_check`` ok and nothing in transit (the
    holds imported minus exported, over the live partitions and the retired ones, sum to zero)."""
    total = dict(retired_fees)
    net = dict(retired_net)
    for p in partitions:
        add(net, net_in(client, p))
        held = elastic.funds(system, p)
        assert held["count"] == len(held["balances"]), held
        for b in held["balances"]:
            total[b["asset"]] = total.get(b["asset"], Decimal(0)) + Decimal(b["available"]) + Decimal(b["held"])
        for asset, v in held["fees"].items():
            total[asset] = total.get(asset, Decimal(0)) + Decimal(v)
    assert all(v == 0 for v in net.values()), net  # every export imported
    return {a: v for a, v in total.items() if v}


class EthFlow(threading.Thread):
    """Places and cancels ETH-USDT orders of the flow accounts the whole time, and every fourth
    round a sell that the next buy takes (a trade, fees into p1's pool). Every answer is checked
    as it comes: an accepted place, a cancel that cancelled it, a crossing buy fully filled."""

    def __init__(self, client: RoutedClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.placed: dict[str, tuple[str, int]] = {}  # client_order_id -> (account, order id)
        self.errors: list[str] = []
        self.rounds = self.trades = 0

    def _place(self, account: str, side: str, price: str, coid: str) -> list[dict]:
        cmd = {"op": "place", "account": account, "symbol": ETH, "side": side, "price": price, "qty": "0.01",
               "client_order_id": coid}
        ev = cast(list, self.client.request(cmd, timeout=60).events)
        if ev[0]["type"] != "accepted":
            raise AssertionError(f"{coid}: {ev}")
        self.placed[coid] = (account, ev[0]["order_id"])
        return ev

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            a, b = FLOW_ACCOUNTS[i % 3], FLOW_ACCOUNTS[(i + 1) % 3]
            try:
                oid = self._place(a, "buy" if i % 2 else "sell", "1500" if i % 2 else "2500", f"eth-{i}")[0]["order_id"]
                ev = self.client.request({"op": "cancel", "account": a, "symbol": ETH, "order_id": oid},
                                         timeout=60).events
                if ev[0]["type"] != "cancelled" or ev[0]["order_id"] != oid:
                    raise AssertionError(f"cancel of eth-{i}: {ev}")
                if i % 4 == 0:
                    self._place(a, "sell", "2000", f"eth-{i}-s")
                    ev = self._place(b, "buy", "2000", f"eth-{i}-b")
                    if [e["type"] for e in ev if e["type"] == "trade"] != ["trade"]:
                        raise AssertionError(f"eth-{i}-b did not trade: {ev}")
                    self.trades += 1
                self.rounds += 1
            except (ClientError, TimeoutError, AssertionError) as exc:
                self.errors.append(f"eth-{i}: {exc!r}")
            time.sleep(0.01)


def test_split_merge_move_retire_while_eth_trades(topology_doc: dict, make_system, make_routed_client) -> None:
    doc = copy.deepcopy(topology_doc)
    p1, p2 = doc["partitions"]
    sol = next(s for s in p2["symbols"] if s["symbol"] == SOL)
    p2["symbols"].remove(sol)
    p1["symbols"].append(sol)  # p1: BTC, ETH, SOL on w1, w2, w3; p2: XRP on w2, w3, w1
    # every migration holds its fetched export 2 s before staging it (a fault-test knob): the
    # second XRP request below then always meets the first in flight (without it the pipelined
    # copy of 30 orders once finished first, in a fresh-clone run)
    doc["coordinator"]["migration_stage_delay_ms"] = 2000
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=120.0)

    deposits = Deposits(client)
    for symbol in (BTC, SOL, XRP):
        deposits.fund(ACCOUNTS, symbol)
    deposits.fund(FLOW_ACCOUNTS, ETH)
    rest(client, BTC, 90, Decimal(900), Decimal(1100), Decimal(1), "0.01")
    rest(client, SOL, 30, Decimal(20), Decimal(30), Decimal("0.5"), "1")
    rest(client, XRP, 30, Decimal("0.5"), Decimal("0.7"), Decimal("0.01"), "100")
    retired_fees: dict[str, Decimal] = {}
    retired_net: dict[str, int] = {}  # what retired partitions imported minus exported
    partitions = ["p1", "p2"]
    assert funds_total(system, client, partitions, retired_fees, retired_net) == deposits.total
    balances = totals(client)

    def after_step(symbols: dict[str, str]) -> None:
        """The map, the resting accounts' totals, funds conserved, ETH still trading."""
        assert routing(url) == (symbols, sorted(partitions))
        for s, p in symbols.items():
            assert client.route(s).partition == p, s
        assert totals(client) == balances
        assert funds_total(system, client, partitions, retired_fees, retired_net) == deposits.total
        rounds = flow.rounds
        wait_for_rounds(flow, rounds + 3)

    flow = EthFlow(client)
    flow.start()
    try:
        wait_for_rounds(flow, 3)

        # 1. split: BTC-USDT to p3 on a new worker w4
        before = book(client, BTC, "p1")
        assert elastic.add_worker(system, "w4")["members"] == []
        rec = elastic.add_partition(system, "p3", ["w4", "w2", "w3"])
        assert [m["worker_id"] for m in rec["members"]] == ["w4", "w2", "w3"] and rec["symbols"] == []
        partitions.append("p3")
        r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p3", "id": "split"}, timeout=10)
        assert r.status_code == 202, r.text
        mig = wait_migration(url, "split")
        assert mig["state"] == "done" and mig["info"]["orders"] == 90, mig
        assert book(client, BTC, "p3") == before
        after_step({BTC: "p3", ETH: "p1", SOL: "p1", XRP: "p2"})

        # 2. merge: XRP-USDT joins SOL-USDT in p1; a second migration of it at once is refused
        before = book(client, XRP, "p2")
        epoch = httpx.get(f"{url}/v1/routes/{XRP}", timeout=10).json()["epoch"]
        r = httpx.post(f"{url}/v1/migrations", json={"symbol": XRP, "to": "p1", "id": "merge"}, timeout=10)
        assert r.status_code == 202, r.text
        r2 = httpx.post(f"{url}/v1/migrations", json={"symbol": XRP, "to": "p3", "id": "merge-again"}, timeout=10)
        assert r2.status_code == 409 and r2.json()["error"]["code"] == "migration_in_progress", r2.text
        mig = wait_migration(url, "merge")
        assert mig["state"] == "done" and mig["info"]["orders"] == 30, mig
        assert httpx.get(f"{url}/v1/migrations/merge-again", timeout=10).status_code == 404
        assert "merge-again" not in [m["id"] for m in httpx.get(f"{url}/v1/migrations", timeout=10).json()]
        route = httpx.get(f"{url}/v1/routes/{XRP}", timeout=10).json()
        assert route["partition"] == "p1" and route["epoch"] == epoch + 1, route
        assert book(client, XRP, "p1") == before
        assert book(client, SOL, "p1")[1]  # SOL's book is still there beside it
        after_step({BTC: "p3", ETH: "p1", SOL: "p1", XRP: "p1"})

        # 3. p2 owns nothing; its free funds (the resting accounts' XRP and USDT deposits) go to
        # p1 first (refused while it holds them, nothing changed), then it is retired
        with pytest.raises(elastic.ElasticError, match="holds funds"):
            elastic.remove_partition(system, "p2")
        assert httpx.get(f"{url}/v1/partitions/p2", timeout=10).json()["state"] == "active"
        for b in elastic.funds(system, "p2")["balances"]:
            assert b["held"].strip("0.") == "", b  # the holds went with XRP's orders
            client.transfer(b["account"], b["asset"], b["available"], "p2", "p1", f"retire-{b['account']}-{b['asset']}")
        add(retired_net, net_in(client, "p2"))  # XRP's holds exported to p1
        done = elastic.remove_partition(system, "p2")
        for asset, v in done["fees"].items():
            retired_fees[asset] = retired_fees.get(asset, Decimal(0)) + Decimal(v)
        partitions.remove("p2")
        assert httpx.get(f"{url}/v1/partitions/p2", timeout=10).status_code == 404
        after_step({BTC: "p3", ETH: "p1", SOL: "p1", XRP: "p1"})

        # 4. p3 moved to other workers as p4 (BTC-USDT migrated, p3 retired)
        before = book(client, BTC, "p3")
        p3_net = net_in(client, "p3")  # BTC's holds imported from p1
        moved = elastic.move_partition(system, "p3", ["w1", "w3", "w4"], new_id="p4")
        # p3 exported to p4 what p4 imported (p4's only import): p3 retired with that taken off
        add(retired_net, p3_net)
        add(retired_net, net_in(client, "p4"), -1)
        assert moved["symbols"] == [BTC], moved
        for asset, v in moved["retired"]["fees"].items():
            retired_fees[asset] = retired_fees.get(asset, Decimal(0)) + Decimal(v)
        partitions[partitions.index("p3")] = "p4"
        assert [m["worker_id"] for m in httpx.get(f"{url}/v1/partitions/p4", timeout=10).json()["members"]] \
            == ["w1", "w3", "w4"]
        # The client last routed BTC-USDT to p3, whose members are gone: nobody is left to answer
        # it MOVED; it notices p3 is silent, refreshes its map and sends to p4 (RoutedClient)
        # (unless a refresh for another reason, e.g. the ETH flow's commands waiting through an
        # election, brought the new map already)
        cached_p3 = client.route(BTC).partition == "p3"
        assert book(client, BTC, "p4") == before
        print(f"after partition move: cached route at p3 {cached_p3}, {client.stats}")
        if cached_p3:
            assert client.stats.rerouted >= 1, client.stats
            wait_for(lambda: "p3" not in client.clients(), 30, "p3's client to be closed")
        after_step({BTC: "p4", ETH: "p1", SOL: "p1", XRP: "p1"})
    finally:
        flow.stop.set()
        flow.join(120)

    # the flow: every order answered as expected, none lost, none applied twice
    print(f"ETH flow: {flow.rounds} rounds, {len(flow.placed)} orders acknowledged, {flow.trades} trades")
    assert not flow.errors, flow.errors[:5]
    assert flow.rounds > 10 and flow.trades > 0, (flow.rounds, flow.trades)
    for a in FLOW_ACCOUNTS:
        ev = client.request({"op": "open_orders", "account": a, "symbol": ETH}, timeout=30).events[0]
        assert ev["orders"] == [], ev  # each place was cancelled or filled
    for coid, (account, oid) in list(flow.placed.items())[:: max(1, len(flow.placed) // 50)]:
        again = client.request({"op": "place", "account": account, "symbol": ETH, "side": "buy", "price": "1500",
                                "qty": "0.01", "client_order_id": coid}, timeout=30).events
        assert again[0].get("duplicate") is True and again[0]["order_id"] == oid, (coid, again)
    assert funds_total(system, client, partitions, retired_fees, retired_net) == deposits.total
    # the moved symbols still trade where they are now: carol's sell takes alice's best XRP bid
    ev = client.request({"op": "place", "account": "carol", "symbol": XRP, "side": "sell", "price": "0.5",
                         "qty": "100", "client_order_id": "xrp-after"}, timeout=30).events
    assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev


def wait_for_rounds(flow: EthFlow, rounds: int, timeout: float = 120.0) -> None:
    """Until the ETH flow has completed ``rounds`` rounds (it keeps trading between the steps)."""
    deadline = time.monotonic() + timeout
    while flow.rounds < rounds and not flow.errors:
        if time.monotonic() > deadline or not flow.is_alive():
            raise AssertionError(f"the ETH flow stalled at {flow.rounds} rounds: {flow.errors[:3]}")
        time.sleep(0.1)
