"""Live symbol migration under faults, with real processes (docs/migration.md): the coordinator
SIGKILLed in the middle of migrations and started again, and the worker hosting the source
partition's leader killed once the symbol is frozen. Throughout, a prober writes the moving symbol
straight to both partitions: once the destination has accepted an order, the source never accepts
one sent after that; funds balance on both partitions at the end."""

from __future__ import annotations

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

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client = client
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
                        {"op": "place", "account": ACCOUNTS[i % 3], "symbol": BTC, "side": "buy", "price": "500",
                         "qty": "0.01", "client_order_id": f"probe-{i}"}, timeout=30).events
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
    system = make_system(topology_doc)
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=120.0)
    fund(client, BTC, "f")
    fund(client, ETH, "f")
    resting_book(client, 1500)
    probe = OwnerProbe(client)
    probe.start()
    seen = []
    try:
        where = "p1"
        for round_, target in enumerate(("new", "prepared", "frozen", "imported", "activating", "switched")):
            to = "p2" if where == "p1" else "p1"
            book = l2(client, BTC)
            r = httpx.post(f"{url}/v1/migrations", json={"symbol": BTC, "to": to, "id": f"k{round_}"}, timeout=10)
            assert r.status_code == 202, r.text
            reached(system, f"k{round_}", target)  # kill as soon as the record says so
            seen.append(kill_coordinator(system))
            system.start_coordinator()
            rec = wait_migration(url, f"k{round_}")
            assert rec["state"] == "done", rec
            probe.check(where, to)
            probe.log.clear()
            assert httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"] == to
            got = l2(client, BTC)
            # the book moved whole (the probe's orders at 500 come and go with it)
            assert [b for b in got["bids"] if b[0] != "500"] == [b for b in book["bids"] if b[0] != "500"]
            assert got["asks"] == book["asks"]
            funds_ok(client)
            where = to
    finally:
        probe.stop.set()
        probe.join(60)
    print("coordinator killed in states", seen)
    assert len(set(seen) - {"done"}) >= 3, seen  # the kills landed on different steps


def test_source_leader_killed_while_frozen(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc)
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
