"""Integration tests: a real ``python -m coordinator`` process (uvicorn, ephemeral port,
SQLite in tmp_path).  Every process is stopped by CoordinatorProcess, also on failure."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.testing import CoordinatorProcess
from pyengine.client.routing import Route, RouteCache, UnknownSymbol
from tests.integration.keep_alive import second_answer_after_idle

pytestmark = pytest.mark.timeout(60)


def members(n: int, base: int, worker: str = "w1"):
    return [{"worker_id": worker, "member_id": i, "ingress_endpoint": f"127.0.0.1:{base + i}"} for i in range(n)]


def ep(base: int, n: int = 3) -> str:
    return ",".join(f"{i}=127.0.0.1:{base + i}" for i in range(n))


def seed(http: httpx.Client) -> None:
    for wid in ("w1", "w2"):
        r = http.post("/v1/workers", json={"id": wid, "address": "127.0.0.1"})
        r.raise_for_status()
    http.post("/v1/partitions", json={"id": "p1", "members": members(3, 9010)}).raise_for_status()
    r = http.post("/v1/partitions", json={"id": "p2", "members": members(3, 9020, "w2")})
    r.raise_for_status()
    http.post("/v1/partitions", json={"id": "p3"}).raise_for_status()
    r = http.post("/v1/partitions/p1/symbols", json={"symbols": ["BTC-USD", "ETH-USD"]})
    r.raise_for_status()


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    # a 2 s step timeout: the funds question of DELETE /v1/partitions/{id} to a partition that
    # does not run (test_crud_over_http) gives up after 2 s instead of 10
    with CoordinatorProcess(tmp_path_factory.mktemp("coord") / "c.db",
                            extra_args=["--migration-step-timeout", "2"]) as c:
        with httpx.Client(base_url=c.url, timeout=10) as http:
            seed(http)
        yield c


@pytest.fixture
def http(coord):
    with httpx.Client(base_url=coord.url, timeout=10) as client:
        yield client


def state(http: httpx.Client):
    routes = http.get("/v1/routes").json()
    return routes["version"], routes, http.get("/v1/topology").json()


def test_crud_over_http(http):
    v = http.get("/v1/health").json()["version"]
    r = http.post("/v1/workers", json={"id": "w-crud", "address": "localhost"})
    assert r.status_code == 201 and r.headers["x-routing-version"] == str(v + 1)
    assert http.get("/v1/workers/w-crud").json() == {
        "id": "w-crud",
        "address": "localhost",
        "partitions": [],
    }
    assert http.put("/v1/workers/w-crud", json={"address": "10.0.0.7"}).json()["address"] == ("10.0.0.7")
    r = http.post("/v1/partitions", json={"id": "p-crud", "members": members(1, 9900, "w-crud")})
    assert r.status_code == 201
    assert r.json()["ingress_endpoints"] == "0=127.0.0.1:9900"
    r = http.patch("/v1/partitions/p-crud", json={"members": members(2, 9900, "w-crud")})
    assert r.json()["ingress_endpoints"] == ep(9900, 2)
    assert http.get("/v1/workers/w-crud").json()["partitions"] == ["p-crud"]
    # nothing runs p-crud's members: the coordinator cannot ask it whether it holds funds and
    # refuses (its first question starts the coordinator's JVM: a longer timeout); a partition
    # gone for good goes with force
    r = http.delete("/v1/partitions/p-crud", timeout=120)
    assert (r.status_code, r.json()["error"]["code"]) == (503, "partition_unreachable"), r.text
    assert "force=true" in r.json()["error"]["message"]
    assert http.get("/v1/health").json()["version"] == v + 4
    assert http.delete("/v1/partitions/p-crud", params={"force": "true"}).status_code == 204
    assert http.delete("/v1/workers/w-crud").status_code == 204
    assert http.get("/v1/workers/w-crud").status_code == 404
    assert http.get("/v1/health").json()["version"] == v + 6
    assert http.get("/openapi.json").json()["openapi"].startswith("3.")


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("get", "/v1/routes/NOPE-USD", None, 404, "symbol_not_found"),
        ("put", "/v1/symbols/NOPE-USD", {"partition": "p2"}, 404, "symbol_not_found"),
        ("post", "/v1/partitions/p2/symbols", {"symbols": ["BTC-USD"]}, 409, "symbol_already_assigned"),
        ("post", "/v1/partitions/p3/symbols", {"symbols": ["XRP-USD"]}, 409, "partition_has_no_members"),
        ("put", "/v1/symbols/BTC-USD", {"partition": "p3"}, 409, "partition_has_no_members"),
        ("post", "/v1/partitions", {"id": "p9", "members": members(1, 9500, "ghost")}, 404, "worker_not_found"),
        ("post", "/v1/workers", {"id": "w1", "address": "127.0.0.1"}, 409, "duplicate_id"),
        ("post", "/v1/partitions", {"id": "p1"}, 409, "duplicate_id"),
        ("delete", "/v1/workers/w1", None, 409, "worker_in_use"),
        ("post", "/v1/workers", {"id": "w9", "address": ""}, 422, "validation_error"),
        ("post", "/v1/partitions", {"id": "p9", "members": "x"}, 422, "validation_error"),
    ],
)
def test_validation_errors_change_nothing(http, method, url, body, status, code):
    before = state(http)
    kwargs = {} if body is None else {"json": body}
    r = http.request(method.upper(), url, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert state(http) == before


def test_move_bumps_epoch(http):
    v, routes, _ = state(http)
    epoch = routes["symbols"]["ETH-USD"]["epoch"]
    r = http.put("/v1/symbols/ETH-USD", json={"partition": "p2"})
    assert r.status_code == 200 and r.json()["epoch"] == epoch + 1
    route = http.get("/v1/routes/ETH-USD").json()
    assert route["ingress_endpoints"] == ep(9020)
    assert route["version"] == v + 1
    http.put("/v1/symbols/ETH-USD", json={"partition": "p1"}).raise_for_status()


def waiting_polls(http: httpx.Client) -> int:
    return http.get("/v1/health").json()["long_polls_waiting"]


def change_while_held(http: httpx.Client, poll: Callable[[], Any], change: Callable[[], object]) -> Any:
    """Runs ``poll`` (a long-poll) in a thread, waits until the coordinator says it holds it (the
    proof that the poll reached the server and waits there, not a guess from a sleep), then
    makes ``change``; returns what ``poll`` returned, after checking the change answered it."""
    outcome: dict = {}

    def run() -> None:
        outcome["result"] = poll()
        outcome["answered"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 15
        while waiting_polls(http) != 1:
            assert t.is_alive(), "the long-poll returned before any change"
            assert time.monotonic() < deadline, "the coordinator never held the long-poll"
            time.sleep(0.02)
        changed = time.monotonic()
        change()
    finally:
        t.join(20)
    assert outcome["answered"] - changed < 5, "answered by its timeout, not by the change"
    assert waiting_polls(http) == 0
    return outcome["result"]


def test_long_poll_returns_on_change(coord, http):
    v = http.get("/v1/health").json()["version"]
    assert waiting_polls(http) == 0

    def poll() -> dict:
        with httpx.Client(base_url=coord.url, timeout=20) as c:
            return c.get(f"/v1/routes?wait_version={v}&timeout=15").json()

    table = change_while_held(
        http, poll, lambda: http.post("/v1/partitions/p2/symbols", json={"symbols": ["LP-USD"]}).raise_for_status())
    assert table["version"] == v + 1
    assert table["symbols"]["LP-USD"]["partition"] == "p2"
    # timeout path: answers with the unchanged table
    t0 = time.monotonic()
    r = http.get(f"/v1/routes?wait_version={v + 1}&timeout=0.3")
    assert r.json()["version"] == v + 1 and time.monotonic() - t0 >= 0.25


def test_route_cache_wait_for_update_against_the_real_coordinator(coord, http):
    """RouteCache's background refresh (its long-poll) against the coordinator process: it waits
    at the server, a change wakes it with the new route, and without a change it waits out its
    timeout and keeps the map."""
    with RouteCache(coord.url, timeout=5.0) as cache:
        assert cache.refresh() is True
        before = cache.version
        assert cache.lookup("BTC-USD").partition == "p1"
        try:
            changed = change_while_held(
                http, lambda: cache.wait_for_update(timeout=15),
                lambda: http.put("/v1/symbols/BTC-USD", json={"partition": "p2"}).raise_for_status())
            assert changed is True
            assert cache.version == before + 1
            assert cache.lookup("BTC-USD") == Route("p2", 2, ep(9020))

            t0 = time.monotonic()
            assert cache.wait_for_update(timeout=0.5) is False  # nothing changed: held, then the same map
            assert time.monotonic() - t0 >= 0.45
            assert cache.version == before + 1 and cache.last_error is None
        finally:
            http.put("/v1/symbols/BTC-USD", json={"partition": "p1"}).raise_for_status()


def test_restart_keeps_map_and_version(tmp_path):
    """Bootstrap from a topology file, change the map through the API, stop with SIGTERM
    while a long-poll is pending (released at once, exit 0), restart: nothing is lost and
    the bootstrap file is not re-applied over the API changes."""
    topo = {
        "workers": [{"id": "w1", "address": "127.0.0.1"}, {"id": "w2", "address": "127.0.0.1"}],
        "partitions": [
            {"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD", "ETH-USD"]},
            {"id": "p2", "members": members(3, 9020, "w2")},
        ],
    }
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(topo))
    with CoordinatorProcess(tmp_path / "c.db", topology=path) as c:
        with httpx.Client(base_url=c.url, timeout=10) as http:
            assert http.get("/v1/routes").json()["version"] == 1
            assert http.post("/v1/topology", json=topo).json() == {"changed": False, "version": 1}
            http.put("/v1/symbols/BTC-USD", json={"partition": "p2"}).raise_for_status()
            http.post("/v1/partitions/p1/symbols", json={"symbols": ["SOL-USD"]})
            before = state(http)
        assert before[0] == 3

        result: dict = {}

        def poll() -> None:
            with httpx.Client(base_url=c.url, timeout=30) as http:
                result["status"] = http.get("/v1/routes?wait_version=3&timeout=60").status_code

        t = threading.Thread(target=poll)
        t.start()
        try:
            time.sleep(0.3)
            t0 = time.monotonic()
            assert c.stop() == 0, "SIGTERM must shut down cleanly"
            assert time.monotonic() - t0 < 5, "pending long-poll delayed the shutdown"
        finally:
            t.join(30)
        assert result["status"] == 200

        c.start()  # same port, same db, same --topology (bootstrap: not re-applied)
        with httpx.Client(base_url=c.url, timeout=10) as http:
            assert state(http) == before
            assert http.get("/v1/routes/BTC-USD").json()["epoch"] == 2
            http.post("/v1/partitions/p1/symbols", json={"symbols": ["XRP-USD"]})
            assert http.get("/v1/health").json()["version"] == 4


def test_route_cache_survives_coordinator_outage(tmp_path):
    with CoordinatorProcess(tmp_path / "c.db") as c:
        with httpx.Client(base_url=c.url, timeout=10) as http:
            seed(http)
        with RouteCache(c.url, timeout=1.0, retry_delay=0.01, max_retries=2) as cache:
            assert cache.refresh() is True
            version = cache.version
            assert cache.lookup("BTC-USD") == Route("p1", 1, ep(9010))
            with pytest.raises(UnknownSymbol):
                cache.lookup("NOPE-USD")

            assert c.stop() == 0
            # coordinator down: cached map keeps answering
            assert cache.refresh() is False
            assert cache.lookup("BTC-USD") == Route("p1", 1, ep(9010))
            assert cache.lookup("ETH-USD").partition == "p1"
            assert cache.version == version

            c.start()  # same port, same db
            with httpx.Client(base_url=c.url, timeout=10) as http:
                http.put("/v1/symbols/BTC-USD", json={"partition": "p2"}).raise_for_status()
            # a node answers MOVED(epoch 2): the cache catches up
            assert cache.invalidate("BTC-USD", min_epoch=2) == Route("p2", 2, ep(9020))
            assert cache.version == version + 1
            assert cache.refresh() is True


def test_bad_topology_fails_start(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"partitions": [{"id": "p1", "symbols": ["X"]}]}))
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator", "--port", "0", "--db", str(tmp_path / "c.db"), "--topology", str(path)],
        capture_output=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"partition_has_no_members" in proc.stderr


def test_an_idle_keep_alive_connection_outlives_the_clients_pool(coord):
    # the routing cache and the tools keep one httpx client to the coordinator (pool expiry 5 s)
    assert second_answer_after_idle(coord.url, "/v1/routes") == 200
