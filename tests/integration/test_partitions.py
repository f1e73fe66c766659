"""Partitions end to end with real processes: a coordinator and three workers, each worker one JVM
hosting a member of both partitions (docs/examples/topology-2x3.json on free ports), clients
routed by the coordinator's map."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coordinator.testing import CoordinatorProcess
from pyengine.client.routing import UnknownSymbol
from pyengine.node.localcluster import wait_for
from pyengine.node.topology import Topology

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def fund_and_cross(client, symbol: str, tag: str, price: str = "10", qty: str = "1") -> list[dict]:
    """Deposits for a seller and a buyer in the symbol's partition, then a crossing pair of orders;
    returns the trades."""
    base, quote = symbol.split("-")
    for account, asset, amount in (("bob", base, "1000"), ("alice", quote, "1000000")):
        events = client.request({"op": "deposit", "account": account, "asset": asset, "amount": amount,
                                 "tx_id": f"{tag}-{account}-{symbol}"}, timeout=20, symbol=symbol).events
        assert events[0]["type"] == "deposited", events
    sell = client.request({"op": "place", "account": "bob", "symbol": symbol, "side": "sell", "type": "limit",
                           "price": price, "qty": qty, "client_order_id": f"{tag}-s"}, timeout=20).events
    assert sell[0]["type"] == "accepted", sell
    buy = client.request({"op": "place", "account": "alice", "symbol": symbol, "side": "buy", "type": "limit",
                          "price": price, "qty": qty, "client_order_id": f"{tag}-b"}, timeout=20).events
    assert buy[0]["type"] == "accepted", buy
    return [e for e in buy if e["type"] == "trade"]


def members_agree(system, client, partition: str) -> None:
    """Every member of the partition reports the same state hash at one log position."""
    info = client.admin({"op": "state_hash"}, partition=partition, timeout=20).events
    layout = system.layout(partition)

    def reported():
        hashes = []
        for m in range(layout.members):
            try:
                hashes.append(json.loads((layout.member_dir(m) / "hash.json").read_text()))
            except (OSError, ValueError):
                return None
        return hashes if all(h["position"] == info["position"] for h in hashes) else None

    hashes = wait_for(reported, 20, f"the members of {partition} to report their state hash")
    assert len({(h["engine_hash"], h["sequence_hash"]) for h in hashes}) == 1, hashes


def test_two_partitions_on_three_workers_route_and_fill(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    # one JVM per worker, each hosting a member of both partitions
    assert {w: {p.id for p, _ in system.topology.members_on(w)} for w in ("w1", "w2", "w3")} == {
        "w1": {"p1", "p2"}, "w2": {"p1", "p2"}, "w3": {"p1", "p2"}}
    client = make_routed_client(system.coordinator_url)

    btc = fund_and_cross(client, "BTC-USDT", "t1", price="50000.00", qty="0.5")
    sol = fund_and_cross(client, "SOL-USDT", "t2", price="150.000", qty="2")
    assert [(t["symbol"], t["price"], t["qty"]) for t in btc] == [("BTC-USDT", "50000", "0.5")]
    assert [(t["symbol"], t["price"], t["qty"]) for t in sol] == [("SOL-USDT", "150", "2")]
    assert set(client.clients()) == {"p1", "p2"}
    assert client.route("BTC-USDT").partition == "p1" and client.route("SOL-USDT").partition == "p2"

    # Balances are per partition: bob's BTC lives in p1, his SOL in p2.
    p1 = client.request({"op": "balances", "account": "bob"}, partition="p1").events[0]["balances"]
    p2 = client.request({"op": "balances", "account": "bob"}, partition="p2").events[0]["balances"]
    assert "BTC" in p1 and "SOL" not in p1
    assert "SOL" in p2 and "BTC" not in p2

    # A partition refuses the other's symbols (it was told what it owns).
    from pyengine.client.match_client import MovedError

    with pytest.raises(MovedError):
        client.client("p2").request({"op": "book", "symbol": "BTC-USDT"}, timeout=20)

    for partition in ("p1", "p2"):
        members_agree(system, client, partition)


def test_stale_route_is_corrected_through_moved(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    url = system.coordinator_url
    client = make_routed_client(url)
    assert fund_and_cross(client, "XRP-USDT", "before")  # caches XRP-USDT -> p2
    assert client.route("XRP-USDT").partition == "p2"

    # Move XRP-USDT from p2 to p1: destination first, then the source, then the map.
    with httpx.Client(base_url=url, timeout=10) as http:
        epoch = http.get("/v1/symbols/XRP-USDT").json()["epoch"]
        operator = make_routed_client(url)
        operator.admin({"op": "own_symbols", "symbols": {"XRP-USDT": epoch + 1}}, partition="p1")
        spec = system.topology.symbol("XRP-USDT")
        assert operator.request(spec.add_symbol_command(), partition="p1").events[0]["type"] == "symbol_added"
        operator.admin({"op": "release_symbol", "symbol": "XRP-USDT", "epoch": epoch + 1}, partition="p2")
        moved = http.put("/v1/symbols/XRP-USDT", json={"partition": "p1", "expected_epoch": epoch})
        assert moved.status_code == 200, moved.text
        assert moved.json()["epoch"] == epoch + 1

    # The client still routes XRP-USDT to p2; the user code below does not change.
    assert client.route("XRP-USDT").partition == "p2"
    trades = fund_and_cross(client, "XRP-USDT", "after", price="0.5000", qty="10")
    assert [(t["symbol"], t["qty"]) for t in trades] == [("XRP-USDT", "10")]
    assert client.stats.moved >= 1
    route = client.route("XRP-USDT")
    assert (route.partition, route.epoch) == ("p1", epoch + 1)
    book = client.request({"op": "book", "symbol": "XRP-USDT"}).events[0]
    assert book["symbol"] == "XRP-USDT"


def test_coordinator_restart_keeps_map_and_trading_goes_on(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
    url = system.coordinator_url
    with httpx.Client(base_url=url, timeout=10) as http:
        before = http.get("/v1/routes").json()
        topology_before = http.get("/v1/topology").json()
    client = make_routed_client(url)
    fund_and_cross(client, "BTC-USDT", "up")

    system.stop_coordinator()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/v1/health", timeout=2)
    # Trading goes on from the cached map, on symbols seen before and not yet used.
    assert fund_and_cross(client, "ETH-USDT", "down", price="3000.00", qty="1")
    assert fund_and_cross(client, "SOL-USDT", "down", price="150.000", qty="1")
    assert client.routes.version == before["version"]

    system.start_coordinator()
    assert system.coordinator_url == url  # same port
    with httpx.Client(base_url=url, timeout=10) as http:
        after = http.get("/v1/routes").json()
        assert after == before
        assert http.get("/v1/topology").json() == topology_before
        assert http.get("/v1/health").json()["version"] == before["version"]
    assert client.routes.refresh() and client.routes.version == before["version"]
    assert fund_and_cross(client, "XRP-USDT", "again", price="0.5000", qty="10")


def test_a_killed_worker_costs_each_partition_one_member(topology_doc, make_system, make_routed_client):
    """Many-to-many: SIGKILL of one worker takes a member of both partitions; both fail over."""
    system = make_system(topology_doc)
    client = make_routed_client(system.coordinator_url)
    fund_and_cross(client, "ETH-USDT", "k1", price="3000.00", qty="1")
    fund_and_cross(client, "SOL-USDT", "k1", price="150.000", qty="1")
    leader = system.leader("p1")
    victim = system.topology.partition("p1").members[leader]
    system.stop_worker(victim, sig=signal.SIGKILL)
    assert not Path(system.worker_aeron_dir(victim)).exists()

    assert fund_and_cross(client, "ETH-USDT", "k2", price="3000.00", qty="1")
    assert fund_and_cross(client, "SOL-USDT", "k2", price="150.000", qty="1")
    for partition in ("p1", "p2"):
        roles = sorted(m["role"] for m in system.partition_status(partition))
        assert roles == ["down", "follower", "leader"], (partition, roles)


def test_sighup_restarts_a_worker_with_its_members(topology_doc, make_system, make_routed_client):
    """SIGHUP starts a worker's process again in place with all its members: the path a worker
    takes on its own when one of its members' log join waits forever (java-cluster
    JoinDeadlock.java). Same pid, each member back in step, both partitions trade on, and every
    member of each agrees on the state hash. The system is started by a parent that ignores
    SIGHUP (as `nohup matchctl up` does): the workers inherit that, and the JVM would keep it."""
    import os

    from pyengine.ops.members import IN_STEP

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        system = make_system(topology_doc)
    finally:
        signal.signal(signal.SIGHUP, previous)
    client = make_routed_client(system.coordinator_url)
    fund_and_cross(client, "ETH-USDT", "h1", price="3000.00", qty="1")
    fund_and_cross(client, "SOL-USDT", "h1", price="150.000", qty="1")
    leader = system.leader("p1")
    worker = next(w for i, w in enumerate(system.topology.partition("p1").members) if i != leader)
    pid = system.state()["workers"][worker]
    log_file = system.dir / "workers" / f"{worker}.log"
    in_step = log_file.read_text(errors="replace").count(IN_STEP)

    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: f"restarting this process: worker {worker}" in log_file.read_text(errors="replace"), 60,
             "the restart")
    wait_for(lambda: log_file.read_text(errors="replace").count(IN_STEP) >= in_step + 2, 180,
             "both of the worker's members back in step")
    assert system.state()["workers"][worker] == pid and f"worker {worker} (pid {pid})" in system.running()

    assert fund_and_cross(client, "ETH-USDT", "h2", price="3000.00", qty="1")
    assert fund_and_cross(client, "SOL-USDT", "h2", price="150.000", qty="1")
    for partition in ("p1", "p2"):
        members_agree(system, client, partition)


# ---- bad input: a clear error and no change ------------------------------------------------------


def bad_topologies(doc: dict) -> dict[str, tuple[object, str]]:
    """name -> (topology document or raw text, part of the expected message)."""
    cases: dict[str, tuple[object, str]] = {}
    twice = copy.deepcopy(doc)
    twice["partitions"][1]["symbols"].append({"symbol": "BTC-USDT", "tick_size": "0.01", "lot_size": "0.001"})
    cases["symbol_in_two_partitions"] = (twice, "'BTC-USDT' is given to two partitions")
    empty = copy.deepcopy(doc)
    empty["partitions"][0]["members"] = []
    cases["partition_without_members"] = (empty, "'p1' has no members")
    ghost = copy.deepcopy(doc)
    ghost["partitions"][1]["members"][2] = "w9"
    cases["unknown_worker"] = (ghost, "worker 'w9', which does not exist")
    bad_symbol = copy.deepcopy(doc)
    del bad_symbol["partitions"][0]["symbols"][0]["tick_size"]
    cases["symbol_without_tick"] = (bad_symbol, "missing tick_size")
    typo = copy.deepcopy(doc)
    typo["partitions"][0]["port-base"] = 1
    cases["unknown_field"] = (typo, "unknown field(s) 'port-base'")
    cases["not_json"] = ('{"workers": [', "not valid JSON")
    return cases


def test_bad_input_gets_a_clear_error_and_changes_nothing(topology_doc, tmp_path, make_routed_client):
    # 1. `matchctl up` checks the topology before it starts or writes anything.
    for name, (doc, message) in bad_topologies(topology_doc).items():
        path = tmp_path / f"{name}.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        directory = tmp_path / f"sys-{name}"
        done = subprocess.run([sys.executable, "-m", "pyengine.ops.cli", "up", str(path), "--dir", str(directory)],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        assert message in done.stderr, (name, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert not directory.exists(), name

    # 2. The coordinator refuses the same mistakes in its API with a stable code, version unchanged.
    topo = Topology.from_dict(topology_doc)
    good = topo.coordinator_document()
    (tmp_path / "coord-topology.json").write_text(json.dumps(good))
    with CoordinatorProcess(tmp_path / "coord.db", topology=tmp_path / "coord-topology.json") as coord, \
            httpx.Client(base_url=coord.url, timeout=10) as http:
        version = http.get("/v1/health").json()["version"]
        routes = http.get("/v1/routes").json()

        def refused(method: str, path: str, code: str, **kwargs) -> None:
            resp = http.request(method, path, **kwargs)
            assert resp.status_code >= 400, resp.text
            assert resp.json()["error"]["code"] == code, resp.text
            assert http.get("/v1/routes").json() == routes

        refused("GET", "/v1/routes/NOPE-USDT", "symbol_not_found")
        refused("PUT", "/v1/symbols/NOPE-USDT", "symbol_not_found", json={"partition": "p1"})
        twice = copy.deepcopy(good)
        twice["partitions"][1]["symbols"].append("BTC-USDT")
        refused("POST", "/v1/topology", "symbol_already_assigned", json=twice)
        empty = copy.deepcopy(good)
        empty["partitions"][0]["members"] = []
        refused("POST", "/v1/topology", "partition_has_no_members", json=empty)
        ghost = copy.deepcopy(good)
        ghost["partitions"][1]["members"][0]["worker_id"] = "w9"
        refused("POST", "/v1/topology", "worker_not_found", json=ghost)
        refused("POST", "/v1/topology", "validation_error", content=b'{"workers": [',
                headers={"content-type": "application/json"})
        refused("POST", "/v1/partitions/p1/symbols", "validation_error", json={"symbol": ["X-Y"]})
        assert http.get("/v1/health").json()["version"] == version

        # 3. The routed client: an unknown symbol is an error before anything is sent anywhere.
        client = make_routed_client(coord.url)
        with pytest.raises(UnknownSymbol):
            client.request({"op": "place", "symbol": "NOPE-USDT", "account": "a", "side": "buy", "qty": "1"})
        with pytest.raises(ValueError, match="partition= or symbol="):
            client.submit({"op": "deposit", "account": "a", "asset": "USDT", "amount": "1", "tx_id": "x"})
        assert client.clients() == {} and client.stats.clients == 0
