"""DELETE /v1/partitions/{id} retires the partition in its own log (coordinator/retire.py) and
POST /v1/topology keeps state (coordinator/store.py), against the real REST app and partition
services run in this process (fixtures of test_coordinator_migrations.py)."""

from __future__ import annotations

from coordinator.migrations import Driver
from pyengine.wire.protocol import Status
from tests.unit.test_coordinator_migrations import LocalTransport, members, rest
from tests.unit.test_coordinator_migrations import system as system  # noqa: F401 - the fixture
from tests.unit.test_service_migration import BTC, ETH, Part


def empty(p: Part) -> None:
    """Withdraw every balance of ``p``: it holds nothing, so it may retire."""
    for b in p.ok({"op": "funds", "limit": 100})["balances"]:
        st, ev = p.eng({"op": "withdraw", "account": b["account"], "asset": b["asset"],
                        "amount": b["available"], "tx_id": f"w-{b['account']}-{b['asset']}"})
        assert ev[0]["type"] == "withdrawn", ev


def deposit(p: Part, tx: str) -> tuple[int, object]:
    return p.eng({"op": "deposit", "account": "z", "asset": "USDT", "amount": "7", "tx_id": tx})


def test_delete_retires_the_partition_so_a_direct_deposit_is_refused(system):
    store, transport, parts, _ = system
    p2 = parts["p2"]
    empty(p2)
    with rest(store, Driver(store, transport)) as c:
        assert c.delete("/v1/partitions/p2").status_code == 204
    assert "p2" not in [p["id"] for p in store.list_partitions()]
    # a client that still sends straight to p2 (MatchClient, RoutedClient with partition=)
    before = p2.svc.engine.state_hash()
    st, body = deposit(p2, "late")
    assert st == Status.ERROR and body["reason"] == "partition_retired", body
    assert p2.svc.engine.state_hash() == before and p2.ok({"op": "funds"})["count"] == 0


def test_delete_refused_while_funds_are_held_leaves_the_partition_open(system):
    store, transport, parts, _ = system
    p2 = parts["p2"]
    with rest(store, Driver(store, transport)) as c:
        version = store.version
        r = c.delete("/v1/partitions/p2")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "partition_holds_funds"), r.text
        assert store.version == version
    assert not p2.svc.migrations.retired
    st, ev = deposit(p2, "still-open")
    assert st == Status.OK and ev[0]["type"] == "deposited", ev


class RaceTransport(LocalTransport):
    """Right after ``retire`` reaches ``partition``, ``meanwhile`` runs (e.g. a transfer to it is
    recorded): the store's own check then refuses the deletion."""

    def __init__(self, parts: dict[str, Part], partition: str, meanwhile) -> None:
        super().__init__(parts)
        self.partition, self.meanwhile = partition, meanwhile

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        answer = super().admin(partition, command)
        if partition == self.partition and command.get("op") == "retire":
            self.meanwhile()
        return answer


def test_delete_refused_after_retire_unretires_the_partition(system):
    """The store refuses the deletion after the partition was retired (a transfer to it recorded
    in between): 409, version unchanged, and the partition accepts deposits again."""
    store, _, parts, _ = system
    p2 = parts["p2"]
    empty(p2)
    holder: list[Driver] = []
    transport = RaceTransport(parts, "p2", lambda: holder[0].transfers.create("x9", "a", "USDT", "1", "p1", "p2"))
    d = Driver(store, transport)
    holder.append(d)
    with rest(store, d) as c:
        version = store.version
        r = c.delete("/v1/partitions/p2")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "transfer_in_progress"), r.text
        assert store.version == version and "p2" in [p["id"] for p in store.list_partitions()]
    assert not p2.svc.migrations.retired
    st, ev = deposit(p2, "after-refused-delete")
    assert st == Status.OK and ev[0]["type"] == "deposited", ev
    assert d.transfers.run("x9")["state"] == "done"  # and the transfer into it goes through


def test_delete_with_force_does_not_ask_and_a_retired_partition_stays_retired(system):
    store, transport, parts, _ = system
    p2 = parts["p2"]
    empty(p2)
    assert p2.ok({"op": "retire"})["changed"] is True  # retired by an operator before
    with rest(store, Driver(store, transport)) as c:
        store.create_partition("p4", members=members(3, 9040))
        transport.down.add("p4")
        calls = transport.calls
        assert c.delete("/v1/partitions/p4", params={"force": "true"}).status_code == 204
        assert transport.calls == calls
        assert c.delete("/v1/partitions/p2").status_code == 204  # already retired: fine
    assert p2.svc.migrations.retired


def test_post_topology_refuses_drops_and_moves_unless_forced(system):
    store, transport, parts, _ = system
    with rest(store, Driver(store, transport)) as c:
        doc = c.get("/v1/topology").json()
        version = store.version
        moved = {**doc, "partitions": [{**p, "symbols": [ETH] if p["id"] == "p1" else
                                        ([BTC] if p["id"] == "p2" else p["symbols"])} for p in doc["partitions"]]}
        dropped = {**doc, "partitions": [p for p in doc["partitions"] if p["id"] != "p2"]}
        for bad, detail, endpoint in ((moved, "BTC-USDT (p1 -> p2)", "POST /v1/migrations"),
                                      (dropped, "partition(s) p2", "DELETE /v1/partitions")):
            r = c.post("/v1/topology", json=bad)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "topology_needs_migration"), r.text
            message = r.json()["error"]["message"]
            assert detail in message and endpoint in message and "force=true" in message, message
            assert store.version == version and c.get("/v1/topology").json() == doc
        # new symbols and partitions are fine
        grown = {**doc, "partitions": [*[{**p, "symbols": [*p["symbols"], "SOL-USDT"]} if p["id"] == "p1" else p
                                         for p in doc["partitions"]],
                                       {"id": "p5", "members": members(3, 9050), "symbols": ["XRP-USDT"]}]}
        assert c.post("/v1/topology", json=grown).json() == {"changed": True, "version": version + 1}
        # bootstrap / disaster recovery
        r = c.post("/v1/topology", json=moved, params={"force": "true"})
        assert r.status_code == 200 and r.json()["changed"] is True, r.text
        assert store.get_symbol(BTC)["partition"] == "p2"
        assert "force" in str(c.get("/openapi.json").json()["paths"]["/v1/topology"]["post"]["parameters"])
    with rest(store, None) as c:  # no migration driver: nothing to migrate with, applied as before
        assert c.post("/v1/topology", json=dropped).json()["changed"] is True
