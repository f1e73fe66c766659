"""The migration driver (coordinator/migrations.py) against real partition services run in this
process (pyengine.service.matching.MatchingService, fed as a log would): the whole protocol, the
coordinator stopped after every single step and restarted on its database, a destination that
never answers, aborts, bad requests, and a symbol moved there and back twenty times.

Processes, sockets and Aeron are in tests/integration/test_migration*.py; this is the logic."""

from __future__ import annotations

import time

import pytest

from coordinator.errors import CoordinatorError
from coordinator.migrations import Driver, MigrationStore, PartitionUnavailable
from coordinator.store import CoordinatorStore
from pyengine.service.matching import MatchingService
from pyengine.wire.protocol import Status
from tests.unit.test_service_migration import BTC, ETH, Part, book, writable


class Crash(BaseException):
    """The coordinator process dies here (nothing after it runs)."""


class LocalTransport:
    """Admin commands straight into the partitions' services; ``down`` partitions do not answer;
    ``crash_at`` kills the caller before the n-th command is delivered (or, with
    ``crash_after``, after it was applied but before its answer arrives)."""

    def __init__(self, parts: dict[str, Part]) -> None:
        self.parts = parts
        self.down: set[str] = set()
        self.calls = 0
        self.crash_at: int | None = None
        self.crash_after = False

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        if partition in self.down:
            raise PartitionUnavailable(f"{partition} is down")
        self.calls += 1
        if self.crash_at == self.calls and not self.crash_after:
            raise Crash()
        st, body = self.parts[partition].admin(command)
        if self.crash_at == self.calls:
            raise Crash()
        return {Status.OK: "ok", Status.MOVED: "moved"}.get(st, "error"), body


def members(n: int, base: int, worker: str = "w1") -> list[dict]:
    return [{"member_id": i, "worker_id": worker, "ingress_endpoint": f"127.0.0.1:{base + i}"} for i in range(n)]


@pytest.fixture
def system(tmp_path):
    """A coordinator store with p1 (owns BTC and ETH), p2 and p3 (no members), and the services."""
    path = tmp_path / "c.db"
    store = CoordinatorStore(path, synchronous="NORMAL")
    store.create_worker("w1", "127.0.0.1")
    store.create_partition("p1", members=members(3, 9010))
    store.create_partition("p2", members=members(3, 9020))
    store.create_partition("p3")
    store.assign_symbols("p1", [BTC, ETH])
    e = store.get_symbol(BTC)["epoch"]
    p1 = Part("p1", {BTC: e, ETH: store.get_symbol(ETH)["epoch"]})
    p2 = Part("p2", {})
    p2.svc.engine.next_oid = 10**9
    for i in range(40):
        buy = i % 2 == 1
        p1.place(BTC, "abc"[i % 3], "buy" if buy else "sell", str(92 - i % 7 if buy else 108 + i % 7), f"o{i}")
    parts = {"p1": p1, "p2": p2}
    transport = LocalTransport(parts)
    yield store, transport, parts, path
    store.close()


def owners(parts: dict[str, Part], tag: str) -> list[str]:
    return [name for name, p in parts.items() if writable(p, tag)]


def funds_ok(parts: dict[str, Part]) -> None:
    for p in parts.values():
        p.funds_ok()


def test_migration_end_to_end(system):
    store, transport, parts, _ = system
    before = book(parts["p1"])
    epoch = store.get_symbol(BTC)["epoch"]
    d = Driver(store, transport)
    rec = d.start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done", rec
    assert rec["info"]["orders"] == len(before) and rec["info"]["pause_ms"] is not None
    assert store.get_symbol(BTC) == {"symbol": BTC, "partition": "p2", "epoch": epoch + 1}
    assert book(parts["p2"]) == before and book(parts["p1"]) == []
    assert owners(parts, "end") == ["p2"]
    st, _ = parts["p1"].place(ETH, "a", "buy", "10")
    assert st == Status.OK
    funds_ok(parts)
    # the same request again is the same migration, not a second one
    assert d.start(BTC, "p2", "m1")["state"] == "done"


def test_chunk_size_sets_the_copy_steps_and_progress_shows_them(system):
    store, transport, parts, _ = system
    before = book(parts["p1"])
    # staged = the export's own bytes; the whole export after the freeze (no pre-copy)
    d = Driver(store, transport, chunk_bytes=1024, compress=False, precopy=False)
    rec = d.start(BTC, "p2", "c1", wait=True)
    assert rec["state"] == "done" and book(parts["p2"]) == before
    size = rec["info"]["size"]
    progress = d.describe(rec)["progress"]
    assert progress == {"size": size, "fetched": size, "staged": size, "chunks": -(-size // 1024),
                        "chunk_bytes": 1024, "imported": True, "part": "export"}, progress
    assert progress["chunks"] >= 2, progress  # the export spans several chunks
    for bad in (1023, 64 * 1024 + 1):
        with pytest.raises(ValueError, match="chunk_bytes"):
            Driver(store, transport, chunk_bytes=bad)


@pytest.mark.parametrize("code, args", [
    ("symbol_not_found", ("NOPE-USDT", "p2")),
    ("partition_not_found", (BTC, "p9")),
    ("migration_to_owner", (BTC, "p1")),
    ("partition_has_no_members", (BTC, "p3")),
    ("validation_error", (BTC, "p2", "bad id!")),
])
def test_bad_requests_change_nothing(system, code, args):
    store, transport, parts, _ = system
    d = Driver(store, transport)
    before = (store.version, store.list_symbols(), d.migs.list(), parts["p1"].svc.engine.state_hash())
    with pytest.raises(CoordinatorError) as info:
        d.start(*args)
    assert info.value.code == code
    assert (store.version, store.list_symbols(), d.migs.list(), parts["p1"].svc.engine.state_hash()) == before


def test_two_migrations_of_one_symbol_and_reused_ids(system):
    store, transport, parts, _ = system
    migs = MigrationStore(store)
    migs.create(BTC, "p2", "m1")
    with pytest.raises(CoordinatorError) as info:
        migs.create(BTC, "p2", "m2")
    assert info.value.code == "migration_in_progress"
    with pytest.raises(CoordinatorError) as info:
        migs.create(ETH, "p2", "m1")
    assert info.value.code == "migration_id_conflict"
    assert [m["id"] for m in migs.list()] == ["m1"]


@pytest.mark.parametrize("piece_orders", [2000, 4, 0])
def test_coordinator_killed_after_every_step_resumes_to_one_owner(tmp_path, system, piece_orders):
    """Kill the driver before, and after, each command it sends; restart it on its database;
    at every point at most one partition takes orders, and the migration ends done. The
    pre-copy in one piece, in pieces of 4 orders (~10 pieces), and as one message."""
    store, transport, parts, path = system
    total = None
    # a dry run on copies counts the commands of a whole migration
    k = 0
    while True:
        k += 1
        for after in (False, True):
            fresh_store, fresh_parts = _fresh(tmp_path / f"k{k}{after}", store, parts)
            t = LocalTransport(fresh_parts)
            t.crash_at, t.crash_after = k, after
            d = Driver(fresh_store, t, piece_orders=piece_orders)
            d.migs.create(BTC, "p2", "m1")
            try:
                d.run("m1")
                crashed = False
            except Crash:
                crashed = True
            assert len(owners(fresh_parts, f"mid{k}{after}")) <= 1
            fresh_store.close()
            again = CoordinatorStore(fresh_store.path, synchronous="NORMAL")
            t.crash_at = None
            rec = Driver(again, t, piece_orders=piece_orders).run("m1")
            assert rec["state"] == "done", (k, after, rec)
            # the book moved whole (the probes' orders of the owners checks aside)
            assert [r for r in book(fresh_parts["p2"]) if not (r[7] or "").startswith("probe")] == book(parts["p1"])
            assert owners(fresh_parts, f"end{k}{after}") == ["p2"]
            assert again.get_symbol(BTC)["partition"] == "p2"
            funds_ok(fresh_parts)
            # the source's cleanup of the moved orders carried on to its end
            assert not any(o.sym.name == BTC for o in fresh_parts["p1"].svc.engine.orders.values())
            again.close()
        if not crashed:
            total = k
            break
    assert total and total > (18 if piece_orders == 4 else 6)  # pieces of 4: ~7 pieces, 2 commands each


class Recording(LocalTransport):
    """LocalTransport that keeps every command it delivers, with its partition."""

    def __init__(self, parts: dict[str, Part]) -> None:
        super().__init__(parts)
        self.sent: list[tuple[str, dict]] = []

    def admin(self, partition: str, command: dict) -> tuple[str, dict]:
        self.sent.append((partition, command))
        return super().admin(partition, command)


@pytest.mark.parametrize("pause_s", [0.0, 0.02])
def test_the_source_cleans_up_after_the_drop_in_pieces(system, pause_s):
    """After a pre-copy in pieces the source's freeze leaves the moved orders in its indexes;
    after the drop the driver has it take them out ``piece_orders`` at a time, one command each
    (paced like the pieces), before it records the migration done."""
    store, _, parts, _ = system
    t = Recording(parts)
    n = len(book(parts["p1"]))
    rec = Driver(store, t, piece_orders=6, piece_pause_s=pause_s).start(BTC, "p2", "m1", wait=True)
    assert rec["state"] == "done"
    ops = [c["op"] for _p, c in t.sent]
    drop = ops.index("mig_drop")
    cleanups = [(p, c) for p, c in t.sent[drop + 1:]]
    assert [p for p, _c in cleanups] == ["p1"] * -(-n // 6)
    assert [c["upto"] for _p, c in cleanups] == list(range(6, n + 6, 6))
    assert ops.index("mig_freeze") < drop and "mig_cleanup" not in ops[:drop]
    assert not any(o.sym.name == BTC for o in parts["p1"].svc.engine.orders.values())
    steps = [s[0] for s in rec["info"]["timing"]["steps"]]
    assert "cleanup" in steps
    if pause_s:
        cl = next(s for s in rec["info"]["timing"]["steps"] if s[0] == "cleanup")
        assert cl[2] - cl[1] >= pause_s * 1000 * -(-n // 6) * 0.9


def _fresh(path, store: CoordinatorStore, parts: dict[str, Part]) -> tuple[CoordinatorStore, dict[str, Part]]:
    """A copy of the system (store and services) to break."""
    path.mkdir()
    s = CoordinatorStore(path / "c.db", synchronous="NORMAL")
    s.load_topology(store.export_topology())
    out = {}
    for name, p in parts.items():
        q = Part.__new__(Part)
        q.name, q.pos = p.name, p.pos
        q.svc = MatchingService()
        q.svc.restore(p.svc.snapshot())
        out[name] = q
    return s, out


def test_destination_down_for_good_rolls_back_exactly(system):
    store, transport, parts, _ = system
    h = parts["p1"].svc.engine.state_hash()
    epoch = store.get_symbol(BTC)["epoch"]
    d = Driver(store, transport, step_timeout=0.3)
    d.migs.create(BTC, "p2", "m1")
    # prepared at the destination and frozen at the source, then the destination goes away
    d._step(d.migs.get("m1"))
    d._step(d.migs.get("m1"))
    assert owners(parts, "frozen") == []
    transport.down.add("p2")
    rec = d.run("m1")
    assert rec["state"] == "aborted" and "unreachable" in rec["error"] and rec["info"]["discard_pending"]
    assert parts["p1"].svc.engine.state_hash() == h
    assert store.get_symbol(BTC) == {"symbol": BTC, "partition": "p1", "epoch": epoch + 1}
    assert owners(parts, "after") == ["p1"]
    funds_ok(parts)
    transport.down.clear()
    assert d.retry_discard("m1")
    assert d.migs.get("m1")["info"]["discard_pending"] is False
    funds_ok(parts)


def test_abort_before_activation_and_refused_after(system):
    store, transport, parts, _ = system
    h = parts["p1"].svc.engine.state_hash()
    d = Driver(store, transport)
    d.migs.create(BTC, "p2", "m1")
    for _ in range(3):  # prepared, frozen, imported
        d._step(d.migs.get("m1"))
    assert d.migs.get("m1")["state"] == "imported"
    d.migs.request_abort("m1")
    rec = d.run("m1")
    assert rec["state"] == "aborted" and not rec["info"]["discard_pending"]
    assert parts["p1"].svc.engine.state_hash() == h
    assert book(parts["p2"]) == []
    funds_ok(parts)
    done = d.start(BTC, "p2", "m2", wait=True)
    assert done["state"] == "done"
    with pytest.raises(CoordinatorError) as info:
        d.abort("m2")
    assert info.value.code == "migration_past_no_return"


def test_there_and_back_twenty_times_under_flow(system):
    store, transport, parts, _ = system
    d = Driver(store, transport)
    where = "p1"
    for i in range(20):
        other = "p2" if where == "p1" else "p1"
        p = parts[where]
        for j in range(5):
            p.place(BTC, "abc"[j % 3], "buy" if j % 2 else "sell", str(90 - j if j % 2 else 110 + j), f"r{i}-{j}")
        st, _ = p.eng({"op": "cancel", "account": "a", "symbol": BTC, "client_order_id": f"r{i}-0"})
        before = book(p)
        rec = d.start(BTC, other, f"m{i}", wait=True)
        assert rec["state"] == "done", rec
        assert book(parts[other]) == before
        assert owners(parts, f"t{i}") == [other]
        funds_ok(parts)
        where = other
    assert store.get_symbol(BTC)["partition"] == where


def rest(store: CoordinatorStore, driver: Driver | None):
    """The coordinator's REST app (the real one, in this process) as a TestClient."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from coordinator.api import create_app

    return TestClient(create_app(store, migration_driver=driver))


def transfer_done(c, tid: str, amount: str) -> None:
    """POST a transfer of ``amount`` USDT of account a from p1 to p2 and wait until it is done."""
    r = c.post("/v1/transfers", json={"id": tid, "account": "a", "asset": "USDT", "amount": amount,
                                      "from": "p1", "to": "p2"})
    assert r.status_code == 202, r.text
    for _ in range(200):
        if c.get(f"/v1/transfers/{tid}").json()["state"] == "done":
            break
        time.sleep(0.05)
    assert c.get(f"/v1/transfers/{tid}").json()["state"] == "done"


def test_rest_api_and_openapi(system):
    store, transport, parts, _ = system
    d = Driver(store, transport)
    with rest(store, d) as c:
        paths = c.get("/openapi.json").json()["paths"]
        assert {"post", "get"} <= set(paths["/v1/migrations"]) and "delete" in paths["/v1/migrations/{mid}"]
        r = c.post("/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "m1"})
        assert r.status_code == 202, r.text
        assert d.wait("m1", 30)["state"] == "done"
        got = c.get("/v1/migrations/m1").json()
        assert got["state"] == "done" and got["dest"] == "p2"
        assert [m["id"] for m in c.get("/v1/migrations").json()] == ["m1"]
        r = c.delete("/v1/migrations/m1")
        assert r.status_code == 409 and r.json()["error"]["code"] == "migration_past_no_return"
        r = c.post("/v1/migrations", json={"symbol": BTC, "to": "p2"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "migration_to_owner"
        assert c.get("/v1/migrations/nope").status_code == 404
        assert c.get("/v1/routes/" + BTC).json()["partition"] == "p2"
        assert 'matchx_coordinator_migrations{state="done"} 1.0' in c.get("/metrics").text
        transfer_done(c, "x1", "2")
        r = c.post("/v1/transfers", json={"id": "x1", "account": "a", "asset": "USDT", "amount": "3",
                                          "from": "p1", "to": "p2"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "transfer_id_conflict"
        assert c.post("/v1/transfers", json={"id": "x2", "account": "a", "asset": "USDT", "amount": "-1",
                                             "from": "p1", "to": "p2"}).status_code == 422
        assert "/v1/transfers" in c.get("/openapi.json").json()["paths"]
    with rest(store, None) as c:  # no driver: a clear answer, not a 500
        r = c.post("/v1/migrations", json={"symbol": BTC, "to": "p1"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "migrations_unavailable"


def test_rest_bad_input_gets_a_clear_error_and_changes_nothing(system):
    """Issue #19's bad-input list through the REST API: unknown symbol or partition, migrating to
    the owner, a partition without members, a migration or transfer id reused with other values,
    removing a partition that owns symbols (one that holds funds:
    test_rest_delete_partition_asks_it_about_its_funds)."""
    store, transport, parts, _ = system
    d = Driver(store, transport)
    with rest(store, d) as c:
        r = c.post("/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "m1"})
        assert r.status_code == 202, r.text
        assert d.wait("m1", 30)["state"] == "done"
        transfer_done(c, "x1", "2")

        def state() -> tuple:
            return (store.version, store.list_symbols(), store.list_partitions(), c.get("/v1/migrations").json(),
                    c.get("/v1/transfers").json(), [p.svc.engine.state_hash() for p in parts.values()])

        before = state()
        xfer = {"account": "a", "asset": "USDT", "amount": "1", "from": "p1", "to": "p2"}
        for method, path, body, status, code in (
            ("post", "/v1/migrations", {"symbol": "NOPE-USDT", "to": "p1"}, 404, "symbol_not_found"),
            ("post", "/v1/migrations", {"symbol": ETH, "to": "p9"}, 404, "partition_not_found"),
            ("post", "/v1/migrations", {"symbol": BTC, "to": "p2"}, 409, "migration_to_owner"),
            ("post", "/v1/migrations", {"symbol": ETH, "to": "p3"}, 409, "partition_has_no_members"),
            ("post", "/v1/migrations", {"symbol": ETH, "to": "p2", "id": "m1"}, 409, "migration_id_conflict"),
            ("post", "/v1/migrations", {"symbol": BTC, "to": "p1", "id": "m1"}, 409, "migration_id_conflict"),
            ("post", "/v1/migrations", {"symbol": ETH, "to": "p2", "id": "bad id!"}, 422, "validation_error"),
            ("delete", "/v1/migrations/nope", None, 404, "migration_not_found"),
            ("post", "/v1/transfers", {"id": "x1", **xfer}, 409, "transfer_id_conflict"),
            ("post", "/v1/transfers", {"id": "x1", **xfer, "amount": "2", "to": "p1", "from": "p2"}, 409,
             "transfer_id_conflict"),
            ("post", "/v1/transfers", {"id": "x2", **xfer, "to": "p9"}, 404, "partition_not_found"),
            ("post", "/v1/transfers", {"id": "x2", **xfer, "to": "p3"}, 409, "partition_has_no_members"),
            ("post", "/v1/transfers", {"id": "x2", **xfer, "to": "p1"}, 422, "validation_error"),
            ("delete", "/v1/partitions/p2", None, 409, "partition_has_symbols"),
            ("delete", "/v1/partitions/p9", None, 404, "partition_not_found"),
        ):
            r = c.request(method.upper(), path, json=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, body, r.text)
            assert r.json()["error"]["message"], r.text  # says what is wrong
            assert state() == before, (path, body)
def avail(p: Part, account: str, asset: str) -> str:
    st, ev = p.eng({"op": "balances", "account": account})
    return ev[0]["balances"].get(asset, {}).get("available", "0")


def test_rest_delete_partition_asks_it_about_its_funds(system):
    """DELETE /v1/partitions/{id} with a migration driver asks the partition whether accounts hold
    funds there: refused while they do (409, naming them and how to move them), while a transfer
    to it is unfinished (409), and while it cannot be asked (503), each changing nothing; allowed
    once its funds are transferred away. A partition without members is not asked; ?force=true
    removes one that is gone for good without asking."""
    store, transport, parts, _ = system
    p1, p2 = parts["p1"], parts["p2"]
    d = Driver(store, transport, step_timeout=0.3)
    store.create_partition("p4", members=members(3, 9040))
    transport.down.add("p4")  # registered, never answers

    def state() -> tuple:
        return store.version, store.list_partitions(), [p.svc.engine.state_hash() for p in parts.values()]

    with rest(store, d) as c:
        before = state()
        r = c.delete("/v1/partitions/p2")  # p2 owns no symbol; a, b and c have USDT, BTC, ETH there
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "partition_holds_funds" and err["details"]["count"] == 9, err
        assert "9 balance(s)" in err["message"] and "a BTC 100000" in err["message"], err
        assert "POST /v1/transfers" in err["message"], err
        assert state() == before
        transport.down.add("p2")
        r = c.delete("/v1/partitions/p2")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "partition_unreachable"), r.text
        assert "force=true" in r.json()["error"]["message"]
        transport.down.discard("p2")
        assert state() == before
        # a transfer to p2 recorded, not yet run: refused by the store, before asking p2
        d.transfers.create("x0", "a", "USDT", "1", "p1", "p2")
        calls = transport.calls
        r = c.delete("/v1/partitions/p2")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "transfer_in_progress"), r.text
        assert r.json()["error"]["details"]["transfers"] == ["x0"] and transport.calls == calls
        assert d.transfers.run("x0")["state"] == "done"
        # every balance of p2 transferred to p1: p2 is retired
        for b in p2.ok({"op": "funds"})["balances"]:
            tid = f"out-{b['account']}-{b['asset']}"
            d.transfers.create(tid, b["account"], b["asset"], b["available"], "p2", "p1")
            assert d.transfers.run(tid)["state"] == "done"
        assert p2.ok({"op": "funds"})["count"] == 0
        assert c.delete("/v1/partitions/p2").status_code == 204
        assert "p2" not in [p["id"] for p in store.list_partitions()]
        # no members: nothing to ask
        calls = transport.calls
        assert c.delete("/v1/partitions/p3").status_code == 204 and transport.calls == calls
        # gone for good: 503 until forced
        assert c.delete("/v1/partitions/p4").status_code == 503
        assert c.delete("/v1/partitions/p4", params={"force": "true"}).status_code == 204
        assert [p["id"] for p in store.list_partitions()] == ["p1"]
    funds_ok({"p1": p1})


def test_transfers_exactly_once_resumable_and_refunded(system):
    store, transport, parts, _ = system
    p1, p2 = parts["p1"], parts["p2"]
    d = Driver(store, transport)
    tr = d.transfers
    a1, a2 = avail(p1, "a", "USDT"), avail(p2, "a", "USDT")
    tr.create("t1", "a", "USDT", "10", "p1", "p2")
    assert tr.run("t1")["state"] == "done"
    assert tr.create("t1", "a", "USDT", "10", "p1", "p2")["state"] == "done"  # the same request again
    assert tr.run("t1")["state"] == "done"
    assert (float(avail(p1, "a", "USDT")), float(avail(p2, "a", "USDT"))) == (float(a1) - 10, float(a2) + 10)
    with pytest.raises(CoordinatorError) as info:
        tr.create("t1", "a", "USDT", "11", "p1", "p2")
    assert info.value.code == "transfer_id_conflict"
    for bad, code in ((("t2", "a", "USDT", "1", "p1", "p3"), "partition_has_no_members"),
                      (("t2", "a", "USDT", "1", "p1", "p1"), "validation_error"),
                      (("t2", "a", "USDT", "1", "p1", "p9"), "partition_not_found")):
        with pytest.raises(CoordinatorError) as info:
            tr.create(*bad)
        assert info.value.code == code
    # not enough free funds: refused, nothing moved
    tr.create("t3", "a", "USDT", "99999999", "p1", "p2")
    t = tr.run("t3")
    assert t["state"] == "refused" and "insufficient" in t["error"]
    # the coordinator dies after the debit: the funds are in transit until it runs again
    transport.crash_at, transport.crash_after = transport.calls + 1, True
    tr.create("t4", "a", "USDT", "5", "p1", "p2")
    with pytest.raises(Crash):
        tr.run("t4")
    transport.crash_at = None
    assert tr.get("t4")["state"] == "new"  # its debit was applied, not yet recorded
    assert tr.run("t4")["state"] == "done"  # sent again: a duplicate at p1, then the credit
    assert (float(avail(p1, "a", "USDT")), float(avail(p2, "a", "USDT"))) == (float(a1) - 15, float(a2) + 15)
    # a destination that does not know the asset: paid back at the source
    p1.ok({"op": "own_symbols", "symbols": {"SOL-USDT": 1}})
    p1.eng({"op": "add_symbol", "symbol": "SOL-USDT", "base": "SOL", "quote": "USDT", "tick_size": "0.5",
            "lot_size": "0.01"})
    p1.eng({"op": "deposit", "account": "a", "asset": "SOL", "amount": "3", "tx_id": "sol"})
    tr.create("t5", "a", "SOL", "2", "p1", "p2")
    t = tr.run("t5")
    assert t["state"] == "refunded" and "unknown_asset" in t["error"], t
    assert avail(p1, "a", "SOL") == "3"
    funds_ok(parts)


def test_chunk_size_setting_reaches_the_coordinator_and_bad_values_are_refused(tmp_path):
    """``coordinator.migration_chunk_bytes`` in the topology survives the file the system
    keeps and becomes ``--migration-chunk-bytes``; out-of-range values are refused by name."""
    import json
    from pathlib import Path

    from coordinator.__main__ import parse_args
    from pyengine.node.topology import Topology, TopologyError

    doc = json.loads((Path(__file__).resolve().parents[2] / "docs/examples/topology-2x3.json").read_text())
    doc["coordinator"]["migration_chunk_bytes"] = 4096
    topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
    assert topo.coordinator.migration_chunk_bytes == 4096
    for bad in (512, 70000, "4096"):
        doc["coordinator"]["migration_chunk_bytes"] = bad
        with pytest.raises(TopologyError, match="migration_chunk_bytes"):
            Topology.from_dict(doc)
    assert parse_args(["--migration-chunk-bytes", "2048"]).migration_chunk_bytes == 2048
    assert parse_args([]).migration_chunk_bytes == 48 * 1024
    with pytest.raises(SystemExit):
        parse_args(["--migration-chunk-bytes", "100"])


@pytest.mark.parametrize("key, flag, kw", [
    ("migration_stage_delay_ms", "--migration-stage-delay-ms", "stage_delay_s"),
    ("migration_step_hold_ms", "--migration-step-hold-ms", "step_hold_s"),
])
def test_fault_test_delays_reach_the_coordinator_and_bad_values_are_refused(tmp_path, key, flag, kw):
    """``coordinator.migration_stage_delay_ms`` and ``migration_step_hold_ms`` (fault tests only)
    survive the topology file and are refused out of range, in the topology and on the command
    line."""
    import json
    from pathlib import Path

    from coordinator.__main__ import parse_args
    from pyengine.node.topology import Topology, TopologyError

    attr = flag.removeprefix("--").replace("-", "_")
    doc = json.loads((Path(__file__).resolve().parents[2] / "docs/examples/topology-2x3.json").read_text())
    assert getattr(Topology.from_dict(doc).coordinator, key) == 0
    doc["coordinator"][key] = 4000
    topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
    assert getattr(topo.coordinator, key) == 4000
    for bad in (-1, 700_000, "4000"):
        doc["coordinator"][key] = bad
        with pytest.raises(TopologyError, match=key):
            Topology.from_dict(doc)
    assert getattr(parse_args([flag, "2500"]), attr) == 2500
    assert getattr(parse_args([]), attr) == 0
    with pytest.raises(SystemExit):
        parse_args([flag, "-5"])
    with pytest.raises(ValueError, match=kw):
        Driver(CoordinatorStore(tmp_path / "c.db"), None, **{kw: -1})  # type: ignore[arg-type]


def test_precopy_switch_reaches_the_coordinator_and_bad_values_are_refused():
    """``coordinator.migration_precopy`` (default true) survives the topology file, only false
    is written out, a non-boolean is refused, and false becomes ``--no-migration-precopy``."""
    import json
    from pathlib import Path

    from coordinator.__main__ import parse_args
    from pyengine.node.topology import Topology, TopologyError

    doc = json.loads((Path(__file__).resolve().parents[2] / "docs/examples/topology-2x3.json").read_text())
    assert Topology.from_dict(doc).coordinator.migration_precopy is True
    assert "migration_precopy" not in Topology.from_dict(doc).to_dict()["coordinator"]
    doc["coordinator"]["migration_precopy"] = False
    topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
    assert topo.coordinator.migration_precopy is False
    for bad in (0, "false", None):
        doc["coordinator"]["migration_precopy"] = bad
        with pytest.raises(TopologyError, match="migration_precopy"):
            Topology.from_dict(doc)
    assert parse_args([]).migration_precopy is True
    assert parse_args(["--no-migration-precopy"]).migration_precopy is False


def test_precopy_piece_setting_reaches_the_coordinator_and_bad_values_are_refused(tmp_path):
    """``coordinator.migration_precopy_piece_orders`` (default: the coordinator's 2,000) survives
    the topology file, is refused out of range in the topology, on the command line and by the
    driver, and 0 (the whole pre-copy as one message) is kept."""
    import json
    from pathlib import Path

    from coordinator.__main__ import parse_args
    from pyengine.node.topology import Topology, TopologyError

    def optional_setting(key: str, good: tuple[int, ...], bad: tuple[object, ...]) -> None:
        """None (the coordinator's default) unless set, written out only when set, bounded."""
        assert getattr(Topology.from_dict(doc).coordinator, key) is None
        assert key not in Topology.from_dict(doc).to_dict()["coordinator"]
        for v in good:
            doc["coordinator"][key] = v
            topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
            assert getattr(topo.coordinator, key) == v
        for v in bad:
            doc["coordinator"][key] = v
            with pytest.raises(TopologyError, match=key):
                Topology.from_dict(doc)
        doc["coordinator"].pop(key)

    key = "migration_precopy_piece_orders"
    doc = json.loads((Path(__file__).resolve().parents[2] / "docs/examples/topology-2x3.json").read_text())
    optional_setting(key, (0, 500), (-1, 100_001, "500", True))
    assert parse_args([]).migration_precopy_piece_orders == 2000
    assert parse_args(["--migration-precopy-piece-orders", "0"]).migration_precopy_piece_orders == 0
    with pytest.raises(SystemExit):
        parse_args(["--migration-precopy-piece-orders", "-3"])
    with pytest.raises(ValueError, match="piece_orders"):
        Driver(CoordinatorStore(tmp_path / "c.db"), None, piece_orders=200_000)  # type: ignore[arg-type]
    # the wait between pieces: 0 (none) by default, written out only when set, bounded
    pkey = "migration_precopy_piece_pause_ms"
    assert Topology.from_dict(doc).coordinator.migration_precopy_piece_pause_ms == 0
    doc["coordinator"][pkey] = 50
    topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
    assert topo.coordinator.migration_precopy_piece_pause_ms == 50
    for bad in (-1, 10_001, "50"):
        doc["coordinator"][pkey] = bad
        with pytest.raises(TopologyError, match=pkey):
            Topology.from_dict(doc)
    assert parse_args([]).migration_precopy_piece_pause_ms == 0
    assert parse_args(["--migration-precopy-piece-pause-ms", "50"]).migration_precopy_piece_pause_ms == 50
    with pytest.raises(SystemExit):
        parse_args(["--migration-precopy-piece-pause-ms", "20000"])
    # the copy's pace: the coordinator's default unless set, written out only when set, bounded
    doc["coordinator"].pop(pkey)
    optional_setting("migration_copy_pace_pct", (0, 250), (-1, 1001, "100", True))
    assert parse_args([]).migration_copy_pace_pct == 0
    assert parse_args(["--migration-copy-pace-pct", "100"]).migration_copy_pace_pct == 100
    with pytest.raises(SystemExit):
        parse_args(["--migration-copy-pace-pct", "1001"])


def test_every_migration_setting_of_the_topology_reaches_the_coordinators_driver(tmp_path):
    """The path ``matchctl up`` takes: the topology's coordinator settings become the command line
    System starts the coordinator with, which the coordinator parses into its migration driver.
    Each setting set to a value other than its default arrives in the driver; a topology without
    them gives the driver the coordinator's defaults."""
    import json
    from pathlib import Path

    from coordinator.__main__ import migration_driver, parse_args
    from pyengine.node.topology import Topology
    from pyengine.ops.system import coordinator_migration_args

    def driver_of(doc: dict) -> Driver:
        topo = Topology.from_dict(json.loads(json.dumps(Topology.from_dict(doc).to_dict())))
        args = parse_args(coordinator_migration_args(topo.coordinator))
        return migration_driver(args, CoordinatorStore(tmp_path / f"c{len(list(tmp_path.iterdir()))}.db"))[0]

    doc = json.loads((Path(__file__).resolve().parents[2] / "docs/examples/topology-2x3.json").read_text())
    plain = driver_of(doc)
    assert (plain.chunk_bytes, plain.stage_delay_s, plain.step_hold_s, plain.precopy, plain.piece_orders,
            plain.piece_pause_s, plain.copy_pace) == (48 * 1024, 0, 0, True, 2000, 0, 0)
    doc["coordinator"].update(migration_chunk_bytes=4096, migration_stage_delay_ms=1500, migration_step_hold_ms=700,
                              migration_precopy=False, migration_precopy_piece_orders=300,
                              migration_precopy_piece_pause_ms=40, migration_copy_pace_pct=150)
    d = driver_of(doc)
    assert (d.chunk_bytes, d.stage_delay_s, d.step_hold_s, d.precopy, d.piece_orders, d.piece_pause_s,
            d.copy_pace) == (4096, 1.5, 0.7, False, 300, 0.04, 1.5)
