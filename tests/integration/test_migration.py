"""Live symbol migration with real processes: a coordinator (running the migration driver) and
three workers hosting two partitions, clients routed by the coordinator's map (docs/migration.md).

BTC-USDT (with resting orders of several accounts) moves from p1 to p2 while ETH-USDT, also on p1,
keeps trading; then it moves back while orders keep arriving for it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from decimal import Decimal

import httpx
import pytest

from pyengine.client.match_client import ClientError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

BTC, ETH = "BTC-USDT", "ETH-USDT"
ACCOUNTS = ("alice", "bob", "carol")


def fund(client, symbol: str, tag: str) -> None:
    base, quote = symbol.split("-")
    for a in ACCOUNTS:
        for asset, amount in ((base, "1000"), (quote, "10000000")):
            ev = client.request({"op": "deposit", "account": a, "asset": asset, "amount": amount,
                                 "tx_id": f"{tag}-{a}-{asset}"}, timeout=30, symbol=symbol).events
            assert ev[0]["type"] == "deposited", ev


def l2(client, symbol: str) -> dict:
    ev = client.request({"op": "book", "symbol": symbol, "depth": 1000}, timeout=30).events[0]
    return {"bids": ev["bids"], "asks": ev["asks"]}


def migrate(url: str, symbol: str, to: str, mid: str, timeout: float = 90.0) -> dict:
    r = httpx.post(f"{url}/v1/migrations", json={"symbol": symbol, "to": to, "id": mid}, timeout=10)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = httpx.get(f"{url}/v1/migrations/{mid}", timeout=10).json()
        if rec["state"] in ("done", "aborted"):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"migration {mid} did not finish: {rec}")


def funds_ok(client) -> None:
    for p in ("p1", "p2"):
        body = client.admin({"op": "funds_check"}, partition=p, timeout=30).events
        assert body["ok"], (p, body)


class Flow(threading.Thread):
    """Orders on one symbol from another thread; every answer is kept by client_order_id."""

    def __init__(self, client, symbol: str, tag: str, price: str) -> None:
        super().__init__(daemon=True)
        self.client, self.symbol, self.tag, self.price = client, symbol, tag, price
        self.stop = threading.Event()
        self.answers: dict[str, list[dict]] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            coid = f"{self.tag}-{i}"
            try:
                ev = self.client.request({"op": "place", "account": ACCOUNTS[i % 3], "symbol": self.symbol,
                                          "side": "buy" if i % 2 else "sell", "price": self.price, "qty": "0.01",
                                          "client_order_id": coid}, timeout=30).events
                self.answers[coid] = ev
            except (ClientError, TimeoutError) as exc:
                self.errors.append(f"{coid}: {exc!r}")
            time.sleep(0.01)


def test_migrate_there_and_back_under_flow(topology_doc, make_system, make_routed_client):
    system = make_system(topology_doc, timeout=120)  # generous: a start at load ~70 took over 50 s
    url = system.coordinator_url
    client = make_routed_client(url, moved_timeout=60.0)
    fund(client, BTC, "f")
    fund(client, ETH, "f")
    # a resting book of three accounts, far from the flow's prices
    for i in range(60):
        buy = i % 2 == 0
        ev = client.request({"op": "place", "account": ACCOUNTS[i % 3], "symbol": BTC,
                             "side": "buy" if buy else "sell", "price": str(900 - i if buy else 1100 + i),
                             "qty": "0.01", "client_order_id": f"rest-{i}"}, timeout=30).events
        assert ev[0]["type"] == "accepted", ev
    before = l2(client, BTC)

    eth = Flow(client, ETH, "eth", "2000")
    eth.start()
    time.sleep(1.0)
    rec = migrate(url, BTC, "p2", "m1")
    assert rec["state"] == "done", rec
    assert rec["info"]["orders"] == 60 and rec["epoch"] == rec["old_epoch"] + 1
    assert httpx.get(f"{url}/v1/routes/{BTC}").json()["partition"] == "p2"
    assert l2(client, BTC) == before  # the same book at the destination
    funds_ok(client)
    # alice's BTC is now split: free at p1, held by her sells at p2; together still her deposit
    bal = client.balances("alice")
    assert bal["partitions"]["p2"]["BTC"]["held"] != "0" and bal["partitions"]["p1"]["BTC"]["held"] == "0", bal
    assert Decimal(bal["total"]["BTC"]["available"]) + Decimal(bal["total"]["BTC"]["held"]) == 1000, bal
    # dave (who trades nothing here) moves free USDT to p2: exactly once by id, his total unchanged
    ev = client.request({"op": "deposit", "account": "dave", "asset": "USDT", "amount": "800", "tx_id": "dave"},
                        timeout=30, partition="p1").events
    assert ev[0]["type"] == "deposited", ev
    for _ in range(2):  # the same transfer id twice: one transfer
        assert client.transfer("dave", "USDT", "500", "p1", "p2", "move-usdt")["state"] == "done"
    dave = client.balances("dave")
    assert dave["partitions"]["p1"]["USDT"]["available"] == "300", dave
    assert dave["partitions"]["p2"]["USDT"]["available"] == "500", dave
    assert Decimal(dave["total"]["USDT"]["available"]) == 800, dave
    funds_ok(client)
    # never two owners: p1 refuses BTC, p2 takes it
    with pytest.raises(ClientError):
        client.client("p1").request({"op": "book", "symbol": BTC}, timeout=30)
    # a resend of an order placed at p1 is a duplicate at p2 (same order id)
    dup = client.request({"op": "place", "account": "alice", "symbol": BTC, "side": "buy", "price": "900",
                          "qty": "0.01", "client_order_id": "rest-0"}, timeout=30).events
    assert dup[0].get("duplicate") is True

    # back to p1 while orders arrive for BTC itself
    btc = Flow(client, BTC, "btc", "1000")
    btc.start()
    time.sleep(1.0)
    rec = migrate(url, BTC, "p1", "m2")
    time.sleep(1.0)
    btc.stop.set()
    eth.stop.set()
    btc.join(60)
    eth.join(60)
    assert rec["state"] == "done", rec
    assert not btc.errors and not eth.errors, (btc.errors[:5], eth.errors[:5])
    assert len(eth.answers) > 20 and len(btc.answers) > 20
    funds_ok(client)
    # nothing lost, nothing applied twice: every acknowledged place answers as a duplicate of itself
    for coid, ev in list(btc.answers.items()):
        assert ev[0]["type"] in ("accepted", "rejected"), ev
        if ev[0]["type"] != "accepted":
            continue
        again = client.request({"op": "place", "account": ev[0]["account"], "symbol": BTC, "side": ev[0]["side"],
                                "price": "1000", "qty": "0.01", "client_order_id": coid}, timeout=30).events
        assert again[0].get("duplicate") is True and again[0]["order_id"] == ev[0]["order_id"], (coid, again)

    # the operator's way: matchctl migrate / migrations, and bad input refused with one line
    def matchctl(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyengine.ops.cli", *argv, "--dir", str(system.dir)],
                              capture_output=True, text=True, timeout=180)

    out = matchctl("migrate", ETH, "--to", "p2")
    assert out.returncode == 0, out.stderr
    assert f"{ETH}: moved" in out.stdout and "pause" in out.stdout, out.stdout
    bad = matchctl("migrate", ETH, "--to", "p2")
    assert bad.returncode == 2 and "migration_to_owner" in bad.stderr, bad
    bad = matchctl("migrate", "NOPE-USDT", "--to", "p1")
    assert bad.returncode == 2 and "symbol_not_found" in bad.stderr, bad
    listing = matchctl("migrations")
    assert listing.returncode == 0 and listing.stdout.count(" done ") == 3, listing.stdout
    funds_ok(client)

    # the rest of issue #19's bad input through matchctl: each a clear error, nothing changed
    def unchanged() -> tuple:
        # (not the map's version: `partition remove` takes the partition offline while it checks
        # its funds, and back)
        parts = {p["id"]: (p["state"], p["ingress_endpoints"], p["symbols"])
                 for p in httpx.get(f"{url}/v1/partitions", timeout=10).json()}
        return (httpx.get(f"{url}/v1/routes", timeout=10).json()["symbols"], parts,
                httpx.get(f"{url}/v1/migrations", timeout=10).json(), system.topology_file.read_text())

    def refused(argv: tuple[str, ...], text: str) -> None:
        before = unchanged()
        out = matchctl(*argv)
        assert out.returncode != 0 and text in out.stderr, (argv, out)
        assert unchanged() == before, argv

    refused(("migrate", BTC, "--to", "p9"), "partition_not_found")
    # m1 moved BTC-USDT to p2: the same request again is that migration (nothing new), a reuse of
    # its id with other values is refused
    before = unchanged()
    again = matchctl("migrate", BTC, "--to", "p2", "--id", "m1")
    assert again.returncode == 0 and "migration m1" in again.stdout, again
    assert unchanged() == before
    refused(("migrate", BTC, "--to", "p1", "--id", "m1"), "migration_id_conflict")
    refused(("migrate", ETH, "--to", "p1", "--id", "m1"), "migration_id_conflict")
    # a partition without members (only the REST API makes one: `matchctl partition add` places members)
    r = httpx.post(f"{url}/v1/partitions", json={"id": "p9"}, timeout=10)
    assert r.status_code == 201, r.text
    refused(("migrate", BTC, "--to", "p9"), "partition_has_no_members")
    assert httpx.delete(f"{url}/v1/partitions/p9", timeout=10).status_code == 204
    refused(("partition", "remove", "p7"), "p7")
    refused(("partition", "remove", "p2"), "still owns")
    # p1 owns nothing once BTC-USDT is at p2 too, but it holds the accounts' free funds
    assert matchctl("migrate", BTC, "--to", "p2").returncode == 0
    refused(("partition", "remove", "p1"), "holds funds")
    funds_ok(client)

    # the coordinator's links to the partitions close with it (no /dev/shm left behind)
    pid = system.state()["coordinator"]["pid"]
    system.down()
    left = [d for d in os.listdir("/dev/shm") if d.startswith(f"matchx-client-{pid}-")]
    assert not left, (left, (system.dir / "coordinator.log").read_text()[-3000:])
