"""Partitions and workers added and retired while a real system runs (pyengine/ops/elastic.py,
docs/partitions.md): one partition on three workers, then a fourth worker, a partition placed on
it, a symbol with resting orders migrated there and traded, removals refused and allowed, and the
changed system restarted from its directory. One system for every step (heavy on 2 cores)."""

from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from pyengine.client.routed import UnknownPartition
from pyengine.node.localcluster import wait_for
from pyengine.ops import elastic, migrate
from pyengine.ops.system import System
from tests.integration.log_lines import assert_java_lines_stamped

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

BTC = "BTC-USDT"


def place(client, account: str, side: str, price: str, coid: str) -> list[dict]:
    return client.request({"op": "place", "account": account, "symbol": BTC, "side": side, "type": "limit",
                           "price": price, "qty": "0.5", "client_order_id": coid}, timeout=60).events


def book(client) -> tuple[list, list]:
    [ev] = client.request({"op": "book", "symbol": BTC}, timeout=60).events
    return ([(Decimal(p), Decimal(q)) for p, q in ev["bids"]], [(Decimal(p), Decimal(q)) for p, q in ev["asks"]])


def refused_rest_delete(url: str, partition: str, shown: str) -> dict:
    """DELETE /v1/partitions/{partition} of a partition that holds funds: 409 naming them (``shown``
    in the message) and how to move them; the error body."""
    r = httpx.delete(f"{url}/v1/partitions/{partition}", timeout=60)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "partition_holds_funds" and err["details"]["count"] >= 1, err
    assert shown in err["message"] and "POST /v1/transfers" in err["message"], err
    return err


def worker_missing(system: System, worker_id: str) -> str:
    """Why a worker has no report: the recorded pid, whether it runs, what its file says."""
    pid = system.state().get("workers", {}).get(worker_id)
    path = system.dir / "workers" / f"{worker_id}.json"
    text = path.read_text() if path.is_file() else "(no file)"
    return f"worker {worker_id}: recorded pid {pid}, running: {system.running()}, {path.name}: {text}"


def test_add_worker_and_partition_migrate_trade_and_remove(topology_doc, make_system, make_routed_client):
    doc = copy.deepcopy(topology_doc)
    doc["partitions"] = doc["partitions"][:1]  # p1 on w1, w2, w3 with BTC-USDT and ETH-USDT
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=60.0)

    # bad input changes nothing
    before = system.topology_file.read_text()
    with pytest.raises(elastic.ElasticError, match="already exists"):
        elastic.add_partition(system, "p1", ["w1", "w2", "w3"])
    with pytest.raises(elastic.ElasticError, match="w9"):
        elastic.add_partition(system, "p2", ["w1", "w2", "w9"])
    with pytest.raises(elastic.ElasticError, match="already in the topology"):
        elastic.add_worker(system, "w1")
    assert system.topology_file.read_text() == before
    assert [p["id"] for p in httpx.get(f"{url}/v1/partitions").json()] == ["p1"]

    # a fourth worker joins; it runs idle until a partition is placed on it
    report = elastic.add_worker(system, "w4")
    assert report["members"] == [] and System(system.dir).status()["workers"]["w4"]["running"]
    assert "w4" in [w["id"] for w in httpx.get(f"{url}/v1/workers").json()]

    rec = elastic.add_partition(system, "p2", ["w4", "w2", "w3"])
    assert [m["worker_id"] for m in rec["members"]] == ["w4", "w2", "w3"] and rec["symbols"] == []
    # add_partition returns once p2 has a leader; on a loaded machine a follower may still be
    # starting then
    wait_for(lambda: sorted(m["role"] for m in System(system.dir).status()["partitions"]["p2"])
             == ["follower", "follower", "leader"], 120, "p2's members to be leader and followers")
    # the new worker's Java lines (its start, p2's election) carry the time as its Python lines do
    assert_java_lines_stamped((system.dir / "workers" / "w4.log").read_text())

    # resting orders of two accounts at p1, migrated to p2, then a trade there
    for account, asset, amount in (("alice", "USDT", "100000"), ("bob", "BTC", "10")):
        ev = client.request({"op": "deposit", "account": account, "asset": asset, "amount": amount,
                             "tx_id": f"d-{account}"}, timeout=60, partition="p1").events
        assert ev[0]["type"] == "deposited", ev
    assert place(client, "alice", "buy", "100", "a1")[0]["type"] == "accepted"
    assert place(client, "bob", "sell", "120", "b1")[0]["type"] == "accepted"
    mig = migrate.follow(url, migrate.start(url, BTC, "p2")["id"], 180.0)
    assert mig["state"] == "done" and mig["info"]["orders"] == 2, mig
    assert httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"] == "p2"
    # alice's free USDT stayed at p1 (only holds move with orders): she moves some to p2
    assert client.transfer("alice", "USDT", "1000", "p1", "p2", "t-alice")["state"] == "done"
    events = place(client, "alice", "buy", "120", "a2")  # crosses bob's migrated sell at p2
    assert [e["type"] for e in events if e["type"] == "trade"] == ["trade"], events
    assert client.route(BTC).partition == "p2"
    assert book(client) == ([(Decimal(100), Decimal("0.5"))], [])

    # p2 owns a symbol: refused, nothing changed
    before = system.topology_file.read_text()
    with pytest.raises(elastic.ElasticError, match="still owns BTC-USDT"):
        elastic.remove_partition(system, "p2")
    assert system.topology_file.read_text() == before
    assert httpx.get(f"{url}/v1/partitions/p2").json()["state"] == "active"

    # BTC-USDT goes back to p1; p2 owns no symbol but holds funds (alice's and bob's free
    # balances stayed): refused, nothing changed
    assert migrate.follow(url, migrate.start(url, BTC, "p1")["id"], 180.0)["state"] == "done"
    with pytest.raises(elastic.ElasticError, match="holds funds"):
        elastic.remove_partition(system, "p2")
    assert system.topology_file.read_text() == before
    assert httpx.get(f"{url}/v1/partitions/p2").json()["state"] == "active"
    # the same through the REST API: the coordinator asks p2 itself, refuses, changes nothing
    version = httpx.get(f"{url}/v1/health").json()["version"]
    refused_rest_delete(url, "p2", "alice")
    assert httpx.get(f"{url}/v1/health").json()["version"] == version
    assert httpx.get(f"{url}/v1/partitions/p2").json()["state"] == "active"

    # a partition placed by the coordinator on the least-loaded workers (w1 and w4 host one
    # member each, w2 and w3 two), empty: retired
    rec = elastic.add_partition(system, "p3")
    assert [m["worker_id"] for m in rec["members"]] == ["w1", "w4", "w2"], rec
    assert "p3" in System(system.dir).status()["partitions"]

    # a RoutedClient whose cached map still names a retired partition (issue #19): BTC-USDT goes
    # to p3, the client routes it there, BTC-USDT goes back to p1 and p3 is retired. Nobody is
    # left to answer the client MOVED; it must notice p3 is silent, refresh its map and send the
    # command to p1 (without the fix it waited for ever)
    assert migrate.follow(url, migrate.start(url, BTC, "p3")["id"], 180.0)["state"] == "done"
    stale = make_routed_client(url, moved_timeout=60.0)
    assert book(stale) == ([(Decimal(100), Decimal("0.5"))], [])
    assert stale.route(BTC).partition == "p3" and stale.client("p3").connected
    assert migrate.follow(url, migrate.start(url, BTC, "p1")["id"], 180.0)["state"] == "done"
    assert book(client) == ([(Decimal(100), Decimal("0.5"))], [])
    # carol's deposit at p3, which owns no symbol now (it knows USDT since BTC-USDT was there):
    # DELETE /v1/partitions/p3 is refused and changes nothing; once the deposit is transferred to
    # p1, remove_partition's DELETE (the coordinator asks p3 again) goes through
    ev = client.request({"op": "deposit", "account": "carol", "asset": "USDT", "amount": "50",
                         "tx_id": "d-carol-p3"}, timeout=60, partition="p3").events
    assert ev[0]["type"] == "deposited", ev
    version, before = httpx.get(f"{url}/v1/health").json()["version"], system.topology_file.read_text()
    err = refused_rest_delete(url, "p3", "carol USDT 50")
    assert err["details"]["count"] == 1, err
    assert httpx.get(f"{url}/v1/health").json()["version"] == version
    assert httpx.get(f"{url}/v1/partitions/p3").json()["state"] == "active"
    assert system.topology_file.read_text() == before
    assert client.transfer("carol", "USDT", "50", "p3", "p1", "t-carol")["state"] == "done"
    done = elastic.remove_partition(system, "p3")
    assert stale.route(BTC).partition == "p3"  # nothing told it: its map is the old one
    assert book(stale) == ([(Decimal(100), Decimal("0.5"))], [])  # answered by p1
    assert stale.route(BTC).partition == "p1" and stale.stats.rerouted >= 1, stale.stats
    # p3's client (reconnecting to members that are gone) is closed, right after the resend
    wait_for(lambda: stale.stats.retired == 1 and "p3" not in stale.clients(), 30, "p3's client to be closed")
    # a resend through it is idempotent: alice's bid, placed at p1 before everything, is a duplicate
    again = place(stale, "alice", "buy", "100", "a1")
    assert again[0].get("duplicate") is True, again
    # a partition that is gone, named explicitly: a clear error, not a wait
    with pytest.raises(UnknownPartition):
        stale.request({"op": "balances", "account": "alice"}, timeout=30, partition="p3")
    assert Path(done["retired_dir"]).is_dir()
    assert httpx.get(f"{url}/v1/partitions/p3").status_code == 404
    assert "p3" not in [p.id for p in System(system.dir).topology.partitions]
    for w in ("w1", "w4", "w2"):
        report = system.worker_report(w)
        assert report is not None, worker_missing(system, w)  # down, or not the process recorded
        assert "p3" not in {m["partition"] for m in report["members"]}

    # down, then up from the directory: p2 and w4 come back, BTC-USDT's book is at p1
    system.down()
    again = System.up(None, system.dir, timeout=120)
    status = again.status()
    assert set(status["partitions"]) == {"p1", "p2"} and status["workers"]["w4"]["running"], status
    client2 = make_routed_client(again.coordinator_url, moved_timeout=60.0)
    assert book(client2) == ([(Decimal(100), Decimal("0.5"))], [])  # alice's bid moved there and back
    assert client2.route(BTC).partition == "p1"


def test_retired_partition_refuses_direct_deposits(topology_doc, make_system, make_routed_client, monkeypatch):
    """The race of issue #19's retirement: a deposit sent straight to a partition between the
    question about its funds and its removal. p2's symbol moves to p1; a deposit at p2 makes its
    retirement refused (matchctl and REST, nothing changed, p2 still takes deposits); a removal
    whose DELETE fails after the retire leaves p2 taking deposits; once its funds are transferred
    away DELETE retires it in its own log: a deposit sent straight to it then is refused and
    changes nothing, while reads still answer."""
    from pyengine.client.match_client import ClientError, MatchClient

    doc = copy.deepcopy(topology_doc)
    p1, p2 = doc["partitions"]
    p1["symbols"].extend(s for s in p2["symbols"] if s["symbol"] != "SOL-USDT")
    p2["symbols"] = [s for s in p2["symbols"] if s["symbol"] == "SOL-USDT"]
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=60.0)
    assert migrate.follow(url, migrate.start(url, "SOL-USDT", "p1")["id"], 180.0)["state"] == "done"

    def deposit(tx: str, amount: str) -> list[dict]:
        return client.request({"op": "deposit", "account": "carol", "asset": "USDT", "amount": amount,
                               "tx_id": tx}, timeout=60, partition="p2").events

    assert deposit("c1", "50")[0]["type"] == "deposited"
    before = system.topology_file.read_text()
    with pytest.raises(elastic.ElasticError, match="holds funds of 1 balance"):
        elastic.remove_partition(system, "p2")  # (its offline-and-back bumps the map's version)
    version = httpx.get(f"{url}/v1/health").json()["version"]
    refused_rest_delete(url, "p2", "carol USDT 50")
    assert httpx.get(f"{url}/v1/health").json()["version"] == version
    assert system.topology_file.read_text() == before
    assert httpx.get(f"{url}/v1/partitions/p2").json()["state"] == "active"
    assert deposit("c2", "1")[0]["type"] == "deposited"  # the refused retirement changed nothing

    assert client.transfer("carol", "USDT", "51", "p2", "p1", "t-carol")["state"] == "done"
    # the coordinator refuses the removal after p2 was retired: p2 is unretired, takes deposits
    real = elastic._coordinator

    def refusing_delete(system_, method, path, **kwargs):
        if method == "DELETE":
            raise elastic.ElasticError("the coordinator refused: injected")
        return real(system_, method, path, **kwargs)

    monkeypatch.setattr(elastic, "_coordinator", refusing_delete)
    with pytest.raises(elastic.ElasticError, match="injected"):
        elastic.remove_partition(system, "p2")
    monkeypatch.setattr(elastic, "_coordinator", real)
    assert httpx.get(f"{url}/v1/partitions/p2").json()["state"] == "active"
    assert deposit("c3", "2")[0]["type"] == "deposited"
    assert client.transfer("carol", "USDT", "2", "p2", "p1", "t-carol-2")["state"] == "done"

    # retired in its own log, out of the map; its members still run (the topology lists p2)
    assert httpx.delete(f"{url}/v1/partitions/p2", timeout=60).status_code == 204
    with MatchClient(system.topology.ingress_endpoints("p2"), **system.control_credentials()) as direct:
        assert direct.wait_connected(60)
        with pytest.raises(ClientError, match="partition retired"):
            direct.request({"op": "deposit", "account": "carol", "asset": "USDT", "amount": "9",
                            "tx_id": "c4"}, timeout=60)
        [bal] = direct.request({"op": "balances", "account": "carol"}, timeout=60).events
        assert Decimal(bal["balances"].get("USDT", {}).get("available", "0")) == 0, bal
        assert direct.admin({"op": "funds"}, timeout=60).events["count"] == 0
        assert direct.admin({"op": "retire"}, timeout=60).events["changed"] is False
