"""Unit tests of coordinator.store: model, invariants, versioning, persistence."""

from __future__ import annotations

import threading

import pytest

from coordinator.errors import ERROR_STATUS, CoordinatorError
from coordinator.store import CoordinatorStore, aeron_endpoints, load_topology


def members(n: int = 3, base: int = 9010, worker: str = "w1", host: str = "127.0.0.1"):
    return [{"worker_id": worker, "member_id": i, "ingress_endpoint": f"{host}:{base + i}"} for i in range(n)]


@pytest.fixture
def store(tmp_path):
    s = CoordinatorStore(tmp_path / "c.db", synchronous="NORMAL")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def populated(store):
    store.create_worker("w1", "127.0.0.1")
    store.create_worker("w2", "localhost")
    store.create_partition("p1", members=members(3, 9010))
    store.create_partition("p2", members=members(1, 9020, worker="w2"))
    store.create_partition("p3")  # no members
    store.assign_symbols("p1", ["BTC-USD", "ETH-USD"])
    return store


def snapshot(store: CoordinatorStore):
    return store.version, store.export_topology(), store.list_symbols()


def rejects(store: CoordinatorStore, code: str, fn, *args, **kwargs) -> CoordinatorError:
    before = snapshot(store)
    with pytest.raises(CoordinatorError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    assert 400 <= info.value.status < 500
    assert snapshot(store) == before, "a rejected operation changed the store"
    return info.value


def test_empty_store_has_version_zero(store):
    assert store.version == 0
    assert store.routes() == {"version": 0, "symbols": {}, "partitions": {}}
    assert store.health() == {"status": "ok", "version": 0}


def test_crud_and_version_bumps(store):
    w = store.create_worker("w1", "127.0.0.1")
    assert w == {"id": "w1", "address": "127.0.0.1", "partitions": []}
    assert store.version == 1
    p = store.create_partition("p1", members=members(3))
    assert p["ingress_endpoints"] == "0=127.0.0.1:9010,1=127.0.0.1:9011,2=127.0.0.1:9012"
    assert p["state"] == "active" and p["symbols"] == []
    assert store.version == 2
    assert store.get_worker("w1")["partitions"] == ["p1"]
    store.assign_symbols("p1", ["BTC-USD"])
    assert store.version == 3
    assert store.get_symbol("BTC-USD") == {"symbol": "BTC-USD", "partition": "p1", "epoch": 1}
    # idempotent re-assign: no change, no bump
    store.assign_symbols("p1", ["BTC-USD"])
    assert store.version == 3
    store.update_worker("w1", "10.0.0.1")
    assert store.get_worker("w1")["address"] == "10.0.0.1" and store.version == 4
    store.update_worker("w1", "10.0.0.1")
    assert store.version == 4
    store.update_partition("p1", members=members(2))
    assert store.get_partition("p1")["ingress_endpoints"] == "0=127.0.0.1:9010,1=127.0.0.1:9011"
    assert store.version == 5
    store.update_partition("p1", members=members(2))  # same members: no change
    assert store.version == 5
    store.update_partition("p1", state="draining")
    assert store.version == 6
    store.unassign_symbol("BTC-USD")
    store.delete_partition("p1")
    store.delete_worker("w1")
    assert store.list_workers() == [] and store.list_partitions() == []
    assert store.version == 9


def test_routes_table(populated):
    table = populated.routes()
    assert table["version"] == populated.version
    assert table["symbols"]["BTC-USD"] == {
        "partition": "p1",
        "epoch": 1,
        "ingress_endpoints": "0=127.0.0.1:9010,1=127.0.0.1:9011,2=127.0.0.1:9012",
    }
    assert set(table["partitions"]) == {"p1", "p2", "p3"}
    assert table["partitions"]["p3"]["ingress_endpoints"] == ""
    r = populated.route("ETH-USD")
    assert r["partition"] == "p1" and r["version"] == populated.version
    assert populated.routes() is table  # cached per version
    populated.assign_symbols("p2", ["SOL-USD"])
    assert populated.routes() is not table


def test_move_bumps_epoch_and_version(populated):
    v = populated.version
    moved = populated.move_symbol("BTC-USD", "p2")
    assert moved == {
        "symbol": "BTC-USD",
        "partition": "p2",
        "epoch": 2,
        "previous_partition": "p1",
    }
    assert populated.version == v + 1
    assert populated.route("BTC-USD")["ingress_endpoints"] == "0=127.0.0.1:9020"
    # move to current owner: no-op
    assert populated.move_symbol("BTC-USD", "p2")["epoch"] == 2
    assert populated.version == v + 1
    # conditional move
    rejects(populated, "epoch_mismatch", populated.move_symbol, "BTC-USD", "p1", expected_epoch=1)
    assert populated.move_symbol("BTC-USD", "p1", expected_epoch=2)["epoch"] == 3


def test_epoch_survives_unassign_and_reassign(populated):
    populated.move_symbol("BTC-USD", "p2")  # epoch 2
    populated.unassign_symbol("BTC-USD", "p2")
    rejects(populated, "symbol_not_found", populated.get_symbol, "BTC-USD")
    rejects(populated, "symbol_not_found", populated.route, "BTC-USD")
    populated.assign_symbols("p1", ["BTC-USD"])
    assert populated.get_symbol("BTC-USD")["epoch"] == 3


@pytest.mark.parametrize(
    ("code", "call"),
    [
        ("symbol_not_found", lambda s: s.route("NOPE")),
        ("symbol_not_found", lambda s: s.move_symbol("NOPE", "p2")),
        ("symbol_not_found", lambda s: s.unassign_symbol("NOPE")),
        ("symbol_already_assigned", lambda s: s.assign_symbols("p2", ["BTC-USD"])),
        ("symbol_already_assigned", lambda s: s.assign_symbols("p2", ["SOL-USD", "BTC-USD"])),
        ("symbol_already_assigned", lambda s: s.create_partition("p9", symbols=["ETH-USD"])),
        ("symbol_not_in_partition", lambda s: s.unassign_symbol("BTC-USD", "p2")),
        ("partition_has_no_members", lambda s: s.assign_symbols("p3", ["SOL-USD"])),
        ("partition_has_no_members", lambda s: s.move_symbol("BTC-USD", "p3")),
        ("partition_has_no_members", lambda s: s.update_partition("p1", members=[])),
        ("partition_has_no_members", lambda s: s.create_partition("p9", symbols=["X"])),
        ("partition_not_found", lambda s: s.assign_symbols("p9", ["SOL-USD"])),
        ("partition_not_found", lambda s: s.move_symbol("BTC-USD", "p9")),
        ("partition_not_found", lambda s: s.get_partition("p9")),
        ("partition_not_found", lambda s: s.update_partition("p9", state="draining")),
        ("partition_not_found", lambda s: s.delete_partition("p9")),
        ("partition_has_symbols", lambda s: s.delete_partition("p1")),
        ("worker_not_found", lambda s: s.create_partition("p9", members=members(1, 9500, "w9"))),
        ("worker_not_found", lambda s: s.update_partition("p3", members=members(1, 9500, "w9"))),
        ("worker_not_found", lambda s: s.get_worker("w9")),
        ("worker_not_found", lambda s: s.delete_worker("w9")),
        ("worker_not_found", lambda s: s.update_worker("w9", "h")),
        ("worker_in_use", lambda s: s.delete_worker("w1")),
        ("duplicate_id", lambda s: s.create_worker("w1", "127.0.0.2")),
        ("duplicate_id", lambda s: s.create_partition("p1")),
        ("endpoint_in_use", lambda s: s.create_partition("p9", members=members(1, 9011))),
        ("endpoint_in_use", lambda s: s.update_partition("p3", members=members(1, 9020, "w2"))),
        ("validation_error", lambda s: s.create_worker("bad id", "h")),
        ("validation_error", lambda s: s.create_worker("w9", "bad host")),
        ("validation_error", lambda s: s.create_partition("p9", state="sleeping")),
        ("validation_error", lambda s: s.create_partition("p9", members=members(1, 70000))),
        ("validation_error", lambda s: s.create_partition("p9", members=members(4, 9500))),
        (
            "validation_error",
            lambda s: s.create_partition("p9", members=members(1, 9500) + members(1, 9501)),
        ),
        ("validation_error", lambda s: s.assign_symbols("p2", [])),
        ("validation_error", lambda s: s.assign_symbols("p2", ["A", "A"])),
        ("validation_error", lambda s: s.assign_symbols("p2", ["bad/sym"])),
        ("validation_error", lambda s: s.move_symbol("BTC-USD", "p2", expected_epoch=-1)),
    ],
)
def test_rejections_change_nothing(populated, code, call):
    err = rejects(populated, code, call, populated)
    assert err.status == ERROR_STATUS[code]
    assert err.to_dict()["error"]["code"] == code


def test_not_active_partition_cannot_gain_symbols(populated):
    populated.update_partition("p2", state="draining")
    rejects(populated, "partition_not_active", populated.assign_symbols, "p2", ["SOL-USD"])
    rejects(populated, "partition_not_active", populated.move_symbol, "BTC-USD", "p2")
    # a draining partition keeps serving what it owns and can hand symbols over
    populated.update_partition("p1", state="draining")
    assert populated.route("BTC-USD")["partition"] == "p1"
    populated.update_partition("p2", state="active")
    assert populated.move_symbol("BTC-USD", "p2")["partition"] == "p2"


def test_restart_keeps_everything(tmp_path):
    path = tmp_path / "sub" / "c.db"
    with CoordinatorStore(path) as s:
        s.create_worker("w1", "127.0.0.1")
        s.create_partition("p1", members=members(3), symbols=["BTC-USD"])
        s.create_partition("p2", members=members(1, 9020))
        s.move_symbol("BTC-USD", "p2")
        before = (s.version, s.routes(), s.export_topology())
    with CoordinatorStore(path) as s:
        assert (s.version, s.routes(), s.export_topology()) == before
        assert s.version == 4
        s.assign_symbols("p1", ["ETH-USD"])
        assert s.version == 5


def test_listener_called_after_commit(store):
    seen = []
    store.add_listener(seen.append)
    store.create_worker("w1", "h")
    with pytest.raises(CoordinatorError):
        store.create_worker("w1", "h")
    store.update_worker("w1", "h")  # no change
    assert seen == [1]
    store.remove_listener(seen.append)


def test_concurrent_writers_each_bump_once(store):
    store.create_worker("w1", "h")
    errors = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                store.create_worker(f"t{i}-{j}", "h")
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.version == 21


TOPO = {
    "workers": [{"id": "w1", "address": "127.0.0.1"}, {"id": "w2", "address": "127.0.0.1"}],
    "partitions": [
        {"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD", "ETH-USD"]},
        {
            "id": "p2",
            "state": "active",
            "members": members(3, 9020, worker="w2"),
            "symbols": ["SOL-USD"],
        },
    ],
}


def test_load_topology_applies_and_is_idempotent(store):
    assert store.load_topology(TOPO) == {"changed": True, "version": 1}
    assert store.load_topology(TOPO) == {"changed": False, "version": 1}
    # order of lists does not matter
    shuffled = {
        "workers": TOPO["workers"][::-1],
        "partitions": [
            {**p, "symbols": p["symbols"][::-1], "members": p["members"][::-1]} for p in TOPO["partitions"][::-1]
        ],
    }
    assert store.load_topology(shuffled)["changed"] is False
    routes = store.routes()
    assert routes["symbols"]["SOL-USD"]["partition"] == "p2"
    assert routes["symbols"]["BTC-USD"]["epoch"] == 1
    # export round-trips
    assert store.load_topology(store.export_topology())["changed"] is False


def test_load_topology_replaces(store):
    store.load_topology(TOPO)
    new = {
        "workers": [{"id": "w1", "address": "127.0.0.1"}],
        "partitions": [
            {"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD", "SOL-USD"]},
        ],
    }
    assert store.load_topology(new) == {"changed": True, "version": 2}
    assert [w["id"] for w in store.list_workers()] == ["w1"]
    assert [p["id"] for p in store.list_partitions()] == ["p1"]
    assert store.get_symbol("SOL-USD") == {"symbol": "SOL-USD", "partition": "p1", "epoch": 2}
    assert store.get_symbol("BTC-USD")["epoch"] == 1  # owner unchanged
    rejects(store, "symbol_not_found", store.get_symbol, "ETH-USD")
    store.load_topology(TOPO)  # ETH-USD comes back with a new epoch
    assert store.get_symbol("ETH-USD")["epoch"] == 2
    assert store.get_symbol("SOL-USD")["epoch"] == 3


def test_load_topology_swaps_endpoints_between_partitions(store):
    store.load_topology(TOPO)
    swapped = {
        "workers": TOPO["workers"],
        "partitions": [
            {**TOPO["partitions"][0], "members": members(3, 9020)},
            {**TOPO["partitions"][1], "members": members(3, 9010, worker="w2")},
        ],
    }
    assert store.load_topology(swapped)["changed"] is True
    assert store.route("BTC-USD")["ingress_endpoints"].startswith("0=127.0.0.1:9020")


@pytest.mark.parametrize(
    ("code", "topo"),
    [
        ("validation_error", {"workers": "x"}),
        ("validation_error", {"workers": [], "partitions": [], "extra": 1}),
        ("validation_error", {"partitions": [{"id": "p1", "members": [{"worker_id": "w1"}]}]}),
        ("duplicate_id", {"workers": [TOPO["workers"][0]] * 2}),
        (
            "duplicate_id",
            {"workers": TOPO["workers"], "partitions": [TOPO["partitions"][0]] * 2},
        ),
        ("worker_not_found", {"workers": [], "partitions": TOPO["partitions"]}),
        (
            "symbol_already_assigned",
            {
                "workers": TOPO["workers"],
                "partitions": [
                    TOPO["partitions"][0],
                    {**TOPO["partitions"][1], "symbols": ["BTC-USD"]},
                ],
            },
        ),
        (
            "partition_has_no_members",
            {"workers": [], "partitions": [{"id": "p1", "symbols": ["X"]}]},
        ),
        (
            "endpoint_in_use",
            {
                "workers": TOPO["workers"],
                "partitions": [
                    TOPO["partitions"][0],
                    {**TOPO["partitions"][1], "members": members(1, 9012, "w2")},
                ],
            },
        ),
        (
            "partition_not_active",
            {
                "workers": TOPO["workers"],
                "partitions": [
                    TOPO["partitions"][0],
                    {**TOPO["partitions"][1], "state": "draining", "symbols": ["NEW"]},
                ],
            },
        ),
    ],
)
def test_load_topology_rejections_change_nothing(store, code, topo):
    store.load_topology(TOPO)
    rejects(store, code, store.load_topology, topo)


def test_draining_partition_may_keep_symbols_in_topology(store):
    store.load_topology(TOPO)
    draining = {
        "workers": TOPO["workers"],
        "partitions": [TOPO["partitions"][0], {**TOPO["partitions"][1], "state": "draining"}],
    }
    assert store.load_topology(draining)["changed"] is True
    assert store.get_partition("p2")["state"] == "draining"


def test_module_load_topology(tmp_path):
    path = tmp_path / "boot.db"
    assert load_topology(TOPO, path)["changed"] is True
    assert load_topology(TOPO, path) == {"changed": False, "version": 1}


def test_aeron_endpoints_sorted():
    ms = [
        {"member_id": 2, "ingress_endpoint": "c:3"},
        {"member_id": 0, "ingress_endpoint": "a:1"},
    ]
    assert aeron_endpoints(ms) == "0=a:1,2=c:3"


def test_load_topology_keep_state_refuses_drops_and_moves_and_changes_nothing(store):
    """``keep_state`` (POST /v1/topology on a coordinator with a migration driver): a document that
    drops a partition with members or moves an assigned symbol would leave the old partition's
    orders and funds behind: refused, naming them and the endpoints to use; version unchanged."""
    store.load_topology(TOPO)
    dropped = {"workers": TOPO["workers"], "partitions": [
        {"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD", "ETH-USD", "SOL-USD"]}]}
    err = rejects(store, "topology_needs_migration", store.load_topology, dropped, keep_state=True)
    assert err.details == {"partitions": ["p2"], "symbols": {"SOL-USD": {"from": "p2", "to": "p1"}}}, err
    assert "DELETE /v1/partitions" in err.message and "POST /v1/migrations" in err.message, err
    assert "force=true" in err.message, err
    moved = {"workers": TOPO["workers"], "partitions": [
        {"id": "p1", "members": members(3, 9010), "symbols": ["ETH-USD"]},
        {"id": "p2", "members": members(3, 9020, worker="w2"), "symbols": ["SOL-USD", "BTC-USD"]}]}
    err = rejects(store, "topology_needs_migration", store.load_topology, moved, keep_state=True)
    assert err.details == {"partitions": [], "symbols": {"BTC-USD": {"from": "p1", "to": "p2"}}}, err
    assert "BTC-USD (p1 -> p2)" in err.message, err
    # without keep_state (bootstrap, --topology-mode replace, ?force=true) it is applied
    assert store.load_topology(moved) == {"changed": True, "version": 2}
    assert store.get_symbol("BTC-USD") == {"symbol": "BTC-USD", "partition": "p2", "epoch": 2}


def test_load_topology_keep_state_allows_new_symbols_partitions_and_workers(store):
    store.load_topology(TOPO)
    grown = {"workers": [*TOPO["workers"], {"id": "w3", "address": "127.0.0.1"}], "partitions": [
        {**TOPO["partitions"][0], "symbols": ["BTC-USD", "ETH-USD", "XRP-USD"]},
        TOPO["partitions"][1],
        {"id": "p3", "members": members(3, 9030, worker="w3"), "symbols": ["ADA-USD"]},
        {"id": "p4", "symbols": []}]}
    assert store.load_topology(grown, keep_state=True) == {"changed": True, "version": 2}
    assert store.get_symbol("ADA-USD")["partition"] == "p3"
    # a partition without members holds nothing: dropping it is fine; unassigning a symbol too
    shrunk = {**grown, "partitions": [{**grown["partitions"][0], "symbols": ["BTC-USD", "ETH-USD"]},
                                      *grown["partitions"][1:3]]}
    assert store.load_topology(shrunk, keep_state=True)["changed"] is True
    assert [p["id"] for p in store.list_partitions()] == ["p1", "p2", "p3"]
    assert store.load_topology(shrunk, keep_state=True) == {"changed": False, "version": 3}
