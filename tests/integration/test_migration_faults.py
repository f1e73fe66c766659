"""Live symbol migration under faults, with real processes (docs/migration.md): the coordinator
SIGKILLed in each state of a migration and started again, and the worker hosting the source
partition's leader killed once the symbol is frozen (the migration then resumed, or aborted right
after the kill and rolled back by the source's new leader). Throughout, a prober writes the moving
symbol straight to both partitions: once the destination has accepted an order, the source never
accepts one sent after that; funds balance on both partitions at the end."""

from __future__ import annotations

import copy
import glob
import os
import shutil
import signal
import sqlite3
import threading
import time

import httpx
import pytest

from pyengine.client.match_client import ClientError
from pyengine.node.localcluster import wait_for
from tests.integration.test_migration import ACCOUNTS, BTC, ETH, fund, funds_ok, l2

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


class OwnerProbe(threading.Thread):
    """Places BTC orders on p1 and p2 directly (no routing) and records (sent, answered, partition,
    accepted) for each."""

    def __init__(self, client, account: str | None = None) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.account = account  # None: the three resting accounts in turn
        self.stop = threading.Event()
        self.log: list[tuple[float, float, str, bool]] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            for p in ("p1", "p2"):
                i += 1
                sent = time.monotonic()
                try:
                    ev = self.client.client(p).request(
                        {"op": "place", "account": self.account or ACCOUNTS[i % 3], "symbol": BTC, "side": "buy",
                         "price": "500", "qty": "0.01", "client_order_id": f"probe-{i}"}, timeout=30).events
                    ok = ev[0]["type"] == "accepted"
                except (ClientError, TimeoutError):
                    ok = False
                self.log.append((sent, time.monotonic(), p, ok))
            time.sleep(0.02)

    def check(self, source: str, dest: str) -> None:
        """No order sent to the source after the destination had accepted one was accepted."""
        first_dest = min((ans for _s, ans, p, ok in self.log if p == dest and ok), default=None)
        if first_dest is None:
            return
        late = [(s, p) for s, _a, p, ok in self.log if p == source and ok and s > first_dest]
        assert not late, f"{source} accepted {len(late)} orders sent after {dest} owned {BTC}"


def kill_coordinator(system) -> str:
    """SIGKILL the coordinator; returns the state its database records for the live migration."""
    pid = system.state()["coordinator"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             20, "the coordinator to die")
    # its MatchClients' embedded media drivers died with it: their /dev/shm dirs are ours to clean
    for d in glob.glob(f"/dev/shm/matchx-client-{pid}-*"):
        shutil.rmtree(d, ignore_errors=True)
    with sqlite3.connect(system.coordinator_db) as conn:
        row = conn.execute("SELECT state FROM migrations ORDER BY created DESC LIMIT 1").fetchone()
    return row[0] if row else "none"


ORDER = ("new", "prepared", "frozen", "imported", "activating", "switched", "done")


def reached(system, mid: str, target: str, timeout: float = 120.0) -> None:
    """Poll the coordinator's database (as fast as it goes) until ``mid`` is at ``target`` or later."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(system.coordinator_db, timeout=10)
    try:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT state FROM migrations WHERE id = ?", (mid,)).fetchone()
            if row and row[0] in ORDER and ORDER.index(row[0]) >= ORDER.index(target):
                return
            time.sleep(0.001)
    finally:
        conn.close()
    raise AssertionError(f"migration {mid} never reached {target}")


def wait_migration(url: str, mid: str, timeout: float = 180.0) -> dict:
    def finished():
        try:
            rec = httpx.get(f"{url}/v1/migrations/{mid}", timeout=10).json()
        except httpx.HTTPError:
            return None
        return rec if rec.get("state") in ("done", "aborted") else None

    return wait_for(finished, timeout, f"migration {mid} to finish")


def resting_book(client, n: int) -> None:
    futures = []
    for i in range(n):
        buy = i % 2 == 0
        futures.append(client.submit({"op": "place", "account": ACCOUNTS[i % 3], "symbol": BTC,
                                      "side": "buy" if buy else "sell",
                                      "price": str(900 - i % 300 if buy else 1100 + i % 300), "qty": "0.01",
                                      "client_order_id": f"rest-{i}"}))
    for f in futures:
        assert f.result(60).events[0]["type"] == "accepted"


def test_coordinator_killed_mid_migration_resumes(topology_doc, make_system, make_routed_client):
    """BTC (1,500 resting orders of three accounts) moved p1 -> p2 -> p1 ... six times, the
    coordinator SIGKILLed each time in another state, ``new`` to ``switched``, and started again.
    The coordinator holds 0.5 s after each step before it records the next state
    (``migration_step_hold_ms``), so the kill lands in the state named, mostly with that state's
    step already applied at the partition (the record one step behind it): the state the database
    holds after the kill is asserted to be that one. Each resumed migration must end ``done`` with
    the book, each account's open orders (ids, remaining, priority) and balances as before, nothing
    in transit, and never two owners (erin's prober writes BTC straight to both partitions)."""
    from tests.integration.test_migration_destination import nothing_in_transit, open_orders, totals

    doc = copy.deepcopy(topology_doc)
    # without the hold `imported` lasts one database write (with its fsync) and `activating` one
    # round trip: a run without it at load ~40 still killed in each state named, but nothing
    # bounds that window; 0.5 s on top of it (six waits a migration, ~20 s for the whole test)
    doc["coordinator"]["migration_step_hold_ms"] = 500
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=120.0)
    fund(client, BTC, "f")
    fund(client, ETH, "f")
    for p in ("p1", "p2"):  # the prober's account, funded where its orders go
        ev = client.request({"op": "deposit", "account": "erin", "asset": "USDT", "amount": "100000",
                             "tx_id": f"erin-{p}"}, timeout=30, partition=p).events
        assert ev[0]["type"] == "deposited", ev
    resting_book(client, 1500)
    probe = OwnerProbe(client, account="erin")
    probe.start()
    seen = []
    targets = ("new", "prepared", "frozen", "imported", "activating", "switched")
    try:
        where = "p1"
        for round_, target in enumerate(targets):
            to = "p2" if where == "p1" else "p1"
            book, orders, balances = l2(client, BTC), open_orders(client, where), totals(client)
            epoch = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()["epoch"]
            r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": to, "id": f"k{round_}"}, timeout=10)
            assert r.status_code == 202, r.text
            reached(system, f"k{round_}", target)  # kill as soon as the record says so
            seen.append(kill_coordinator(system))
            assert seen[-1] == target, f"killed in {seen[-1]}, meant {target}"
            system.start_coordinator()
            rec = wait_migration(url, f"k{round_}")
            assert rec["state"] == "done", rec
            probe.check(where, to)
            probe.log.clear()
            route = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()
            assert (route["partition"], route["epoch"]) == (to, epoch + 1), route
            got = l2(client, BTC)
            # the book moved whole (the prober's orders at 500 come and go with it)
            assert [b for b in got["bids"] if b[0] != "500"] == [b for b in book["bids"] if b[0] != "500"]
            assert got["asks"] == book["asks"]
            assert open_orders(client, to) == orders  # same ids, remaining, priority
            assert totals(client) == balances
            nothing_in_transit(client)
            where = to
    finally:
        probe.stop.set()
        probe.join(60)
    print("coordinator killed in states", seen)
    assert seen == list(targets), seen


def test_source_leader_killed_while_frozen(topology_doc, make_system, make_routed_client):
    doc = copy.deepcopy(topology_doc)
    # small chunks, a copy of ~100 of them: with the pipelined, compressed copy and 48 KiB chunks
    # the whole copy was over before the kill landed (a run saw the migration activating)
    doc["coordinator"]["migration_chunk_bytes"] = 1024
    # after the pre-copy the freeze's export is a chunk or two: the coordinator holds it 3 s
    # before staging it, so the kill lands while the record says frozen (it lands in the
    # pre-copy's copy in test_source_leader_killed_during_copy[precopy])
    doc["coordinator"]["migration_stage_delay_ms"] = 3000
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=120.0)
    fund(client, BTC, "f")
    resting_book(client, 3000)
    book = l2(client, BTC)
    r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "lk"}, timeout=10)
    assert r.status_code == 202, r.text

    leader = system.leader("p1")
    worker = system.topology.partition("p1").members[leader]
    reached(system, "lk", "frozen")
    system.stop_worker(worker, sig=signal.SIGKILL)
    with sqlite3.connect(system.coordinator_db) as conn:
        state = conn.execute("SELECT state FROM migrations WHERE id = 'lk'").fetchone()[0]
    print("source leader's worker killed with the migration", state)
    assert state in ("frozen", "imported"), state  # the copy was under way
    system.start_worker(worker)
    rec = wait_migration(url, "lk")
    assert rec["state"] == "done", (state, rec)
    assert l2(client, BTC) == book
    funds_ok(client)


class DaveFlow(threading.Thread):
    """dave's BTC buys at ``price`` (950: they cross nothing) through the RoutedClient, one after
    the other; every acknowledged place is kept: client_order_id -> (account, order id). With
    ``cancel_every`` n, every n-th is cancelled again once acknowledged (then it is not kept, its
    order id is in ``cancelled``)."""

    def __init__(self, client, price: str = "950", cancel_every: int = 0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.price = price
        self.cancel_every = cancel_every
        self.stop = threading.Event()
        self.placed: dict[str, tuple[str, int]] = {}
        self.cancelled: set[int] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            coid = f"dave-{i}"
            try:
                ev = self.client.request({"op": "place", "account": "dave", "symbol": BTC, "side": "buy",
                                          "price": self.price, "qty": "0.01", "client_order_id": coid},
                                         timeout=300).events
                if ev[0]["type"] != "accepted":
                    self.errors.append(f"{coid}: {ev[0]}")
                    continue
                self.placed[coid] = ("dave", ev[0]["order_id"])
                if self.cancel_every and i % self.cancel_every == 0:
                    ev = self.client.request({"op": "cancel", "account": "dave", "symbol": BTC,
                                              "client_order_id": coid}, timeout=300).events
                    if ev[0]["type"] != "cancelled":
                        self.errors.append(f"cancel {coid}: {ev[0]}")
                        continue
                    self.cancelled.add(self.placed.pop(coid)[1])
            except (ClientError, TimeoutError) as exc:
                self.errors.append(f"{coid}: {exc!r}")
            time.sleep(0.02)


def fund_dave_and_erin(client) -> None:
    """dave places BTC through the routed client during a migration, erin is the prober's
    account: both funded at both partitions (free funds do not move with a symbol)."""
    for p in ("p1", "p2"):
        for account in ("dave", "erin"):
            ev = client.request({"op": "deposit", "account": account, "asset": "USDT", "amount": "100000",
                                 "tx_id": f"{account}-{p}"}, timeout=30, partition=p).events
            assert ev[0]["type"] == "deposited", ev


def _poll_migration(url: str, mid: str, until, timeout: float = 300.0) -> dict:
    """GET /v1/migrations/{mid} as fast as it answers until ``until(record)``; the record."""
    deadline = time.monotonic() + timeout
    rec: dict = {}
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            rec = http.get(f"{url}/v1/migrations/{mid}").json()
            if until(rec):
                return rec
            if rec["state"] in ("done", "aborted"):
                raise AssertionError(f"migration {mid} ended before the point waited for: {rec}")
            time.sleep(0.002)
    raise AssertionError(f"migration {mid}: the point waited for never came within {timeout:.0f} s: {rec}")


@pytest.mark.parametrize("phase", ["export", "import", "abort", "precopy", "precopy-abort"])
def test_source_leader_killed_during_copy(phase, topology_doc, make_system, make_routed_client):
    """``export``, ``import``, ``abort``: a migration without a pre-copy (the topology's
    ``migration_precopy`` false), so that the whole export is copied after the freeze.
    ``precopy``: with the pre-copy, the worker of p1's leader SIGKILLed while the coordinator
    copies the pre-copy out of p1 (in pieces of 200 orders: after its first piece, before its
    last; BTC still trades at p1); ``precopy-abort``: killed likewise and the migration aborted right after the kill: it
    must end ``aborted`` without a freeze (p1 gives its pre-copy up: ``released``; the route
    stays at p1 with its old epoch, as no client was ever told "moving").

    The worker of p1's leader SIGKILLed while the coordinator copies BTC's export out of p1
    (``export``: after the first chunk was fetched and before the last), or once the whole
    export was fetched and before the destination's import was answered (``import``: the
    coordinator stages the export at the destination and has it imported while the source
    elects a new leader). ``abort``: killed as in ``export``, and the migration aborted with
    DELETE /v1/migrations/{id} right after the kill, while the source has no leader (so the copy
    cannot have reached the point of no return): the rollback (the source's new leader restores
    the symbol from its own export, the route back at p1 with epoch + 1, the destination's copy
    discarded) runs against a source that lost its leader; it must end ``aborted``. Seen from
    outside: the progress of GET /v1/migrations/{id}; the export spans ~110 chunks
    (``migration_chunk_bytes``). For ``import`` and ``abort`` the coordinator waits 4 s between
    the fetched export and its staging (``migration_stage_delay_ms``): the pipelined staging and
    import take a few ms, too short a window for a poll to land in every run (a fresh-clone run
    saw the migration done before the poll saw the whole export fetched)."""
    from tests.integration.test_migration_destination import (
        assert_duplicates,
        nothing_in_transit,
        open_orders,
        resting,
        totals,
    )

    doc = copy.deepcopy(topology_doc)
    doc["coordinator"]["migration_chunk_bytes"] = 1024  # ~110 chunks: the kill lands inside the copy
    precopy = phase.startswith("precopy")
    if not precopy:
        doc["coordinator"]["migration_precopy"] = False
    else:  # the pre-copy in ~15 pieces (each a log message at both ends): the kill lands inside
        doc["coordinator"]["migration_precopy_piece_orders"] = 200
    if phase in ("import", "abort"):
        # abort: the DELETE must reach a migration short of its point of no return; without the
        # delay the pipelined copy (fetch, stage, import, activate) finished between the kill and
        # the DELETE once at load ~22
        doc["coordinator"]["migration_stage_delay_ms"] = 4000
    system = make_system(doc, timeout=120)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=240.0)
    fund(client, BTC, "f")
    fund_dave_and_erin(client)
    # bids 601..900, asks 1100..1399 of alice, bob, carol (under open_orders' 1,000 per account)
    ids = resting(client, 2900)
    book, orders, balances = l2(client, BTC), open_orders(client, "p1"), totals(client)
    epoch = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()["epoch"]

    probe = OwnerProbe(client, account="erin")
    flow = DaveFlow(client)
    leader = system.leader("p1")
    assert leader is not None
    worker = system.topology.partition("p1").members[leader]
    probe.start()
    flow.start()
    try:
        wait_for(lambda: len(flow.placed) >= 5, 60, "dave's first orders")
        r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": "p2", "id": "lx"}, timeout=10)
        assert r.status_code == 202, r.text

        def point(m: dict) -> bool:
            progress = m.get("progress") or {}
            if precopy:
                return m["state"] == "prepared" and progress.get("part") == "precopy" and progress["fetched"] >= 1024
            if m["state"] != "frozen" or not progress:
                return False
            if phase in ("export", "abort"):
                return progress["fetched"] >= 1024
            return progress["fetched"] == progress["size"]

        at = _poll_migration(url, "lx", point)
        system.stop_worker(worker, sig=signal.SIGKILL)
        if phase in ("abort", "precopy-abort"):
            r = httpx.delete(f"{url}/v1/migrations/lx", timeout=10)
            # 409 migration_past_no_return would mean the copy went on without the source's leader
            assert r.status_code == 202 and r.json()["abort"], r.text
        after = httpx.get(f"{url}/v1/migrations/lx", timeout=10).json()
        print(f"p1's leader's worker {worker} killed at {at['progress']}; then {after['state']} {after['progress']}")
        assert at["progress"]["chunks"] >= 1 and not at["progress"]["imported"], at
        # progress only grows: the export was not all fetched (export) or not yet staged (import,
        # inside the stage delay) when the kill went out
        assert after["state"] == ("prepared" if precopy else "frozen") and not after["progress"]["imported"], after
        if phase in ("precopy", "precopy-abort"):  # not every piece of the pre-copy fetched
            assert not after["progress"]["last"] and after["progress"]["size"] is None, after
        elif phase == "export":
            assert after["progress"]["fetched"] < after["progress"]["size"], after
        else:  # import, abort: inside the stage delay at the latest
            assert after["progress"]["staged"] == 0, after
        system.start_worker(worker)
        rec = wait_migration(url, "lx", timeout=300)
        time.sleep(2.0)  # a few more of dave's orders at the owner
    finally:
        flow.stop.set()
        probe.stop.set()
        flow.join(120)
        probe.join(120)
    print("migration", rec["state"], rec.get("error"), rec["info"].get("pause_ms"), "ms pause;",
          len(flow.placed), "dave orders;", len(probe.log), "probes")
    assert rec["state"] in ("done", "aborted"), rec
    if phase in ("abort", "precopy-abort"):
        # rolled back, and the destination's inert copy discarded within the step timeout (its
        # members lost one of theirs with the killed worker too)
        assert rec["state"] == "aborted" and rec["abort"], rec
        assert not rec["info"].get("discard_pending"), rec
    if phase != "precopy-abort":
        assert rec["info"]["orders"] >= 2900 + 5, rec  # the resting orders, dave's and the prober's
    owner = "p2" if rec["state"] == "done" else "p1"
    route = httpx.get(f"{url}/v1/routes/{BTC}", timeout=10).json()
    # never frozen: nobody was told "moving", the epoch stays
    assert route["partition"] == owner and route["epoch"] == epoch + (phase != "precopy-abort"), route
    probe.check("p1", "p2")  # never two owners
    if rec["state"] == "aborted":
        # p2 never owned BTC: none of the prober's orders sent straight to it was accepted;
        # p1's new leader restored the symbol from its export, p2 discarded its copy
        assert not [s for s, _a, p, ok in probe.log if p == "p2" and ok], "p2 accepted BTC orders"
        src = client.admin({"op": "mig_state"}, partition="p1", timeout=30).events
        dst = client.admin({"op": "mig_state"}, partition="p2", timeout=30).events
        want = "released" if phase == "precopy-abort" else "restored"
        assert [m["state"] for m in src["migrations"] if m["id"] == "lx"] == [want], src
        assert not src["frozen"] and not dst["inert"], (src, dst)
        assert [m["state"] for m in dst["migrations"] if m["id"] == "lx"] == ["discarded"], dst

    # the resting accounts' book, open orders (ids, remaining, priority) and balances as before
    # (dave's orders are at 950, the prober's at 500)
    got = l2(client, BTC)
    assert [b for b in got["bids"] if b[0] not in ("500", "950")] == book["bids"], got
    assert got["asks"] == book["asks"]
    assert open_orders(client, owner) == orders
    assert totals(client) == balances
    nothing_in_transit(client)  # funds_check everywhere, nothing left in transit
    # every order dave had acknowledged is open at the owner exactly once; resends are duplicates
    dave = client.request({"op": "open_orders", "account": "dave", "symbol": BTC}, timeout=30).events[0]
    assert not dave["truncated"]
    assert sorted(o["order_id"] for o in dave["orders"]) == sorted(oid for _a, oid in flow.placed.values()), dave
    assert not flow.errors, flow.errors[:5]
    assert_duplicates(client, {c: (ACCOUNTS[i % 3], ids[c]) for i, c in enumerate(list(ids)[:20])})
    assert_duplicates(client, dict(list(flow.placed.items())[:20]))
    # the owner trades BTC: carol's sell at 900 takes alice's best bid (carol's free BTC was
    # deposited at p1: moved to the owner first)
    if owner != "p1":
        assert client.transfer("carol", "BTC", "1", "p1", owner, "carol-btc")["state"] == "done"
    ev = client.request({"op": "place", "account": "carol", "symbol": BTC, "side": "sell", "price": "900",
                         "qty": "0.01", "client_order_id": "after-1"}, timeout=30).events
    assert ev[0]["type"] == "accepted" and any(e["type"] == "trade" for e in ev), ev
    nothing_in_transit(client)
