"""In-process tests of the coordinator REST layer (FastAPI TestClient, no sockets)."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
from fastapi import Header, HTTPException

with warnings.catch_warnings():  # starlette: "httpx with TestClient is deprecated"
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from coordinator.api import create_app
from coordinator.store import CoordinatorStore


def members(n: int, base: int, worker: str = "w1"):
    return [{"worker_id": worker, "member_id": i, "ingress_endpoint": f"127.0.0.1:{base + i}"} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = CoordinatorStore(tmp_path / "c.db", synchronous="NORMAL")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store)) as c:
        yield c


def seed(client) -> None:
    assert client.post("/v1/workers", json={"id": "w1", "address": "127.0.0.1"}).status_code == 201
    r = client.post("/v1/partitions", json={"id": "p1", "members": members(3, 9010)})
    assert r.status_code == 201
    assert client.post("/v1/partitions", json={"id": "p2", "members": members(1, 9020)}).is_success
    assert client.post("/v1/partitions", json={"id": "empty"}).status_code == 201
    r = client.post("/v1/partitions/p1/symbols", json={"symbols": ["BTC-USD", "ETH-USD"]})
    assert r.status_code == 200


@pytest.fixture
def seeded(client):
    seed(client)
    return client


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One seeded app for tests that must not change anything (rejections)."""
    store = CoordinatorStore(tmp_path_factory.mktemp("api") / "c.db", synchronous="NORMAL")
    try:
        with TestClient(create_app(store)) as c:
            seed(c)
            yield c
    finally:
        store.close()


def version(client) -> int:
    return client.get("/v1/health").json()["version"]


def test_health_and_openapi(client):
    r = client.get("/v1/health")
    assert r.json() == {"status": "ok", "version": 0, "long_polls_waiting": 0}
    assert r.headers["x-routing-version"] == "0"
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/routes",
        "/v1/routes/{symbol}",
        "/v1/workers",
        "/v1/workers/{worker_id}",
        "/v1/partitions",
        "/v1/partitions/{partition_id}",
        "/v1/partitions/{partition_id}/symbols",
        "/v1/symbols/{symbol}",
        "/v1/topology",
        "/v1/health",
    ):
        assert path in spec["paths"], path


def test_crud_roundtrip(seeded):
    c = seeded
    assert [w["id"] for w in c.get("/v1/workers").json()] == ["w1"]
    assert c.get("/v1/workers/w1").json()["partitions"] == ["p1", "p2"]
    p1 = c.get("/v1/partitions/p1").json()
    assert p1["symbols"] == ["BTC-USD", "ETH-USD"]
    assert p1["ingress_endpoints"] == "0=127.0.0.1:9010,1=127.0.0.1:9011,2=127.0.0.1:9012"
    r = c.patch("/v1/partitions/p2", json={"state": "draining"})
    assert r.status_code == 200 and r.json()["state"] == "draining"
    r = c.put("/v1/workers/w1", json={"address": "10.1.2.3"})
    assert r.json()["address"] == "10.1.2.3"
    assert c.delete("/v1/partitions/empty").status_code == 204
    assert c.get("/v1/partitions/empty").json()["error"]["code"] == "partition_not_found"
    assert [s["symbol"] for s in c.get("/v1/symbols").json()] == ["BTC-USD", "ETH-USD"]


def test_routes_and_move(seeded):
    c = seeded
    table = c.get("/v1/routes").json()
    assert table["version"] == version(c)
    assert table["symbols"]["BTC-USD"] == {
        "partition": "p1",
        "epoch": 1,
        "ingress_endpoints": "0=127.0.0.1:9010,1=127.0.0.1:9011,2=127.0.0.1:9012",
    }
    r = c.put("/v1/symbols/BTC-USD", json={"partition": "p2"})
    assert r.status_code == 200
    assert r.json()["epoch"] == 2 and r.json()["partition"] == "p2"
    route = c.get("/v1/routes/BTC-USD").json()
    assert route == {
        "symbol": "BTC-USD",
        "partition": "p2",
        "epoch": 2,
        "ingress_endpoints": "0=127.0.0.1:9020",
        "version": table["version"] + 1,
    }
    assert c.delete("/v1/partitions/p1/symbols/ETH-USD").status_code == 204
    assert c.delete("/v1/symbols/BTC-USD").status_code == 204
    assert c.get("/v1/routes").json()["symbols"] == {}


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("get", "/v1/routes/DOGE-USD", None, 404, "symbol_not_found"),
        ("get", "/v1/symbols/DOGE-USD", None, 404, "symbol_not_found"),
        ("put", "/v1/symbols/DOGE-USD", {"partition": "p2"}, 404, "symbol_not_found"),
        ("delete", "/v1/symbols/DOGE-USD", None, 404, "symbol_not_found"),
        ("post", "/v1/partitions/p2/symbols", {"symbols": ["BTC-USD"]}, 409, "symbol_already_assigned"),
        ("post", "/v1/partitions/empty/symbols", {"symbols": ["SOL-USD"]}, 409, "partition_has_no_members"),
        ("put", "/v1/symbols/BTC-USD", {"partition": "empty"}, 409, "partition_has_no_members"),
        ("patch", "/v1/partitions/p1", {"members": []}, 409, "partition_has_no_members"),
        ("post", "/v1/partitions", {"id": "p9", "members": members(1, 9500, "ghost")}, 404, "worker_not_found"),
        ("patch", "/v1/partitions/empty", {"members": members(1, 9500, "ghost")}, 404, "worker_not_found"),
        ("post", "/v1/workers", {"id": "w1", "address": "127.0.0.9"}, 409, "duplicate_id"),
        ("post", "/v1/partitions", {"id": "p1"}, 409, "duplicate_id"),
        ("delete", "/v1/workers/w1", None, 409, "worker_in_use"),
        ("delete", "/v1/partitions/p1", None, 409, "partition_has_symbols"),
        ("post", "/v1/partitions", {"id": "p9", "members": members(1, 9010)}, 409, "endpoint_in_use"),
        ("put", "/v1/symbols/BTC-USD", {"partition": "p2", "expected_epoch": 7}, 409, "epoch_mismatch"),
        ("delete", "/v1/partitions/p2/symbols/BTC-USD", None, 409, "symbol_not_in_partition"),
        ("get", "/v1/workers/nope", None, 404, "worker_not_found"),
        ("get", "/v1/nothing-here", None, 404, "not_found"),
        ("post", "/v1/routes", {}, 405, "method_not_allowed"),
        # malformed requests
        ("post", "/v1/workers", {"id": "w9"}, 422, "validation_error"),
        ("post", "/v1/workers", {"id": "w9", "address": "a b"}, 422, "validation_error"),
        ("post", "/v1/workers", {"id": 5, "address": "h"}, 422, "validation_error"),
        ("post", "/v1/workers", {"id": "w9", "address": "h", "x": 1}, 422, "validation_error"),
        ("post", "/v1/workers", [1, 2], 422, "validation_error"),
        ("post", "/v1/partitions", {"id": "p9", "state": "weird"}, 422, "validation_error"),
        (
            "post",
            "/v1/partitions",
            {"id": "p9", "members": [{"worker_id": "w1", "member_id": 3, "ingress_endpoint": "h:1"}]},
            422,
            "validation_error",
        ),
        (
            "post",
            "/v1/partitions",
            {"id": "p9", "members": [{"worker_id": "w1", "member_id": 0, "ingress_endpoint": "nohost"}]},
            422,
            "validation_error",
        ),
        ("post", "/v1/partitions/p1/symbols", {"symbols": []}, 422, "validation_error"),
        ("post", "/v1/partitions/p1/symbols", {"symbols": "BTC-USD"}, 422, "validation_error"),
        ("put", "/v1/symbols/BTC-USD", {}, 422, "validation_error"),
        ("get", "/v1/routes?wait_version=x", None, 422, "validation_error"),
        ("get", "/v1/routes?wait_version=1&timeout=100000", None, 422, "validation_error"),
        ("post", "/v1/topology", {"workers": [{"id": "w1"}]}, 422, "validation_error"),
    ],
)
def test_errors_are_stable_json_and_change_nothing(shared, method, url, body, status, code):
    c = shared
    before = (version(c), c.get("/v1/topology").json())
    kwargs = {} if body is None else {"json": body}
    r = c.request(method.upper(), url, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and isinstance(err["details"], dict)
    assert (version(c), c.get("/v1/topology").json()) == before


def test_invalid_json_body(shared):
    r = shared.post("/v1/workers", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_error"


def test_topology_endpoints(client):
    topo = {
        "workers": [{"id": "w1", "address": "127.0.0.1"}],
        "partitions": [{"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD"]}],
    }
    assert client.post("/v1/topology", json=topo).json() == {"changed": True, "version": 1}
    assert client.post("/v1/topology", json=topo).json() == {"changed": False, "version": 1}
    exported = client.get("/v1/topology").json()
    assert exported["partitions"][0]["state"] == "active"
    assert client.post("/v1/topology", json=exported).json()["changed"] is False
    bad = {**topo, "partitions": topo["partitions"] * 2}
    r = client.post("/v1/topology", json=bad)
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_id"


def test_long_poll_immediate_timeout_and_wakeup(seeded):
    c = seeded
    v = version(c)
    t0 = time.monotonic()
    assert c.get(f"/v1/routes?wait_version={v - 1}&timeout=5").json()["version"] == v
    assert time.monotonic() - t0 < 2
    t0 = time.monotonic()
    assert c.get(f"/v1/routes?wait_version={v}&timeout=0.3").json()["version"] == v
    assert 0.25 <= time.monotonic() - t0 < 3

    def change() -> None:
        time.sleep(0.3)
        c.post("/v1/partitions/p1/symbols", json={"symbols": ["SOL-USD"]})

    t = threading.Thread(target=change)
    t.start()
    try:
        t0 = time.monotonic()
        table = c.get(f"/v1/routes?wait_version={v}&timeout=10").json()
        assert table["version"] == v + 1
        assert "SOL-USD" in table["symbols"]
        assert time.monotonic() - t0 < 5
    finally:
        t.join()


def test_admin_dependency_guards_mutations_only(store):
    def admin(x_admin_token: str | None = Header(default=None)) -> None:
        if x_admin_token != "secret":
            raise HTTPException(status_code=401, detail="admin token required")

    with TestClient(create_app(store, admin_dependency=admin)) as c:
        r = c.post("/v1/workers", json={"id": "w1", "address": "h"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "http_error"
        r = c.post("/v1/workers", json={"id": "w1", "address": "h"}, headers={"x-admin-token": "secret"})
        assert r.status_code == 201
        assert c.get("/v1/routes").status_code == 200
        assert c.get("/v1/workers").status_code == 200


def test_app_owning_its_db(tmp_path):
    app = create_app(db_path=str(tmp_path / "own.db"))
    with TestClient(app) as c:
        assert c.post("/v1/workers", json={"id": "w1", "address": "h"}).status_code == 201
    with CoordinatorStore(tmp_path / "own.db") as s:
        assert s.version == 1


def test_placement_picks_least_loaded_workers_one_each(client):
    for w in ("w1", "w2", "w3", "w4"):
        assert client.post("/v1/workers", json={"id": w, "address": "127.0.0.1"}).status_code == 201
    busy = [{"worker_id": w, "member_id": i, "ingress_endpoint": f"127.0.0.1:{9100 + i}"}
            for i, w in enumerate(("w1", "w2", "w3"))]
    assert client.post("/v1/partitions", json={"id": "p1", "members": busy}).status_code == 201
    r = client.get("/v1/placement", params={"members": 3})
    assert r.status_code == 200
    assert r.json() == {"workers": ["w4", "w1", "w2"], "load": {"w1": 1, "w2": 1, "w3": 1, "w4": 0}}
    assert "/v1/placement" in client.get("/openapi.json").json()["paths"]
    assert client.get("/v1/placement", params={"members": 4}).status_code == 422
    assert client.delete("/v1/partitions/p1").status_code == 204
    for w in ("w2", "w3"):
        assert client.delete(f"/v1/workers/{w}").status_code == 204
    version = client.get("/v1/health").json()["version"]
    r = client.get("/v1/placement", params={"members": 3})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_enough_workers"
    assert client.get("/v1/placement", params={"members": 2}).json()["workers"] == ["w1", "w4"]
    assert client.get("/v1/health").json()["version"] == version  # placement only answers
