"""The scripted session behind `make demo`.

Part one starts a 3-member cluster on loopback, connects a client through a follower
(REDIRECT), lists a symbol, funds two accounts, trades, SIGKILLs the leader in the middle of an
order stream, shows the client carrying on with the new leader, proves the surviving members
agree (state hash at one log position) and stops everything, leaving no process or /dev/shm
directory. Part two starts two partitions on three workers with the coordinator
(docs/examples/topology-2x3.json), trades a symbol of each through the routed client, and moves
BTC-USDT with its resting book to the other partition while a client keeps trading it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pyengine.node.localcluster import LocalCluster, free_port_base, wait_for
from pyengine.node.settings import DEFAULT_PORT_BASE, ClusterLayout
from pyengine.wire.bulk import EV_ACCEPTED, EV_CANCELLED, BulkBuilder

if TYPE_CHECKING:
    from pyengine.client.routed import RoutedClient
    from pyengine.ops.system import System

SYMBOL = "BTC-USDT"


def say(text: str) -> None:
    print(text, flush=True)


def show(events) -> None:
    for e in events if isinstance(events, list) else [events]:
        kind = e.get("type")
        if kind == "trade":
            say(f"    FILL  {e['qty']} {e['symbol']} @ {e['price']}  maker {e['maker_account']} "
                f"taker {e['taker_account']} ({e['taker_side']})")
        elif kind == "rejected":
            say(f"    reject: {e.get('reason')}")
        elif kind in ("accepted", "cancelled", "amended"):
            say(f"    {kind} order {e.get('order_id')}")
        elif kind == "symbol_added":
            say(f"    listed {e['symbol']} tick {e['tick_size']} lot {e['lot_size']}")
        elif kind == "deposited":
            say(f"    deposit {e['amount']} {e['asset']} to {e['account']}")
        else:
            say(f"    {e}")


def run(base_dir: Path, port_base: int) -> int:
    from pyengine.client.market import LocalBook
    from pyengine.client.match_client import MatchClient

    shutil.rmtree(base_dir, ignore_errors=True)
    port_base = free_port_base(port_base)
    cluster = LocalCluster(ClusterLayout(base_dir=base_dir, port_base=port_base))
    say(f"== starting a 3-member Aeron cluster in {base_dir} (ingress {cluster.ingress_endpoints()})")
    t0 = time.monotonic()
    cluster.start()
    client = watcher = None
    try:
        leader = cluster.await_leader(60)
        say(f"   member {leader} is leader after {time.monotonic() - t0:.1f}s")
        follower = next(m for m in range(3) if m != leader)
        say(f"== client connects to member {follower} only (a follower): Aeron redirects it")
        client = MatchClient(cluster.ingress_endpoints((follower,)))
        if not client.wait_connected(30):
            say(f"   could not connect: {client.last_error}")
            return 1
        say(f"   connected; session is with leader {client.leader_member_id}")

        say("== listing BTC-USDT, funding alice (USDT) and bob (BTC)")
        for cmd in (
            {"op": "add_symbol", "symbol": SYMBOL, "base": "BTC", "quote": "USDT",
             "tick_size": "0.01", "lot_size": "0.001"},
            {"op": "deposit", "account": "alice", "asset": "USDT", "amount": "1000000", "tx_id": "dep-a1"},
            {"op": "deposit", "account": "bob", "asset": "BTC", "amount": "50", "tx_id": "dep-b1"},
        ):
            show(client.request(cmd).events)

        say("== bob offers 2 BTC in two levels; alice buys 1.5 BTC")
        show(client.request(_order("bob", "sell", "50000.00", "1.0", "b-1")).events)
        show(client.request(_order("bob", "sell", "50010.00", "1.0", "b-2")).events)
        show(client.request(_order("alice", "buy", "50010.00", "1.5", "a-1")).events)

        say("== a second client subscribes to BTC-USDT market data (l2 + trades): its local book follows")
        watcher = MatchClient(cluster.ingress_endpoints())
        updates = [0]

        def follow(b: LocalBook) -> None:
            updates[0] += 1
            if updates[0] % 25 == 1:
                top = b.levels(1)
                say(f"   [subscriber] seq {top['seq']}: best bid {top['bids'][:1]} best ask {top['asks'][:1]}")

        watcher.wait_connected(30)
        book = LocalBook(watcher, SYMBOL, on_change=follow, channels=("l2", "trades")).wait_ready(30)

        say("== a stream of 120 crossing orders; the leader is SIGKILLed after the 40th")
        futures = []
        killed = {}
        answered: dict[int, float] = {}

        def kill_leader():
            lead = cluster.leader()
            killed["member"] = lead
            killed["at"] = time.monotonic()
            cluster.kill(lead)

        for i in range(120):
            side, account = ("sell", "bob") if i % 2 == 0 else ("buy", "alice")
            sent_at = time.monotonic()
            fut = client.submit(_order(account, side, "50000.00", "0.01", f"s-{i}"))
            fut.add_done_callback(lambda f, i=i: answered.setdefault(i, time.monotonic()))
            futures.append((sent_at, fut))
            if i == 40:
                threading.Thread(target=kill_leader).start()
            time.sleep(0.02)
        fills = 0
        for _, fut in futures:
            reply = fut.result(30)
            fills += sum(1 for e in reply.events if e.get("type") == "trade")
        # Only an order sent after the kill can be answered by nobody but the new leader.
        after_kill = [answered[i] for i, (sent, _) in enumerate(futures) if sent > killed["at"]]
        gap_ms = (min(after_kill) - killed["at"]) * 1000 if after_kill else float("nan")
        new_leader = cluster.await_leader(30, exclude=killed["member"])
        say(f"   killed member {killed['member']}; member {new_leader} took over; "
            f"all 120 orders answered ({fills} fills), none lost")
        say(f"   first answer from the new leader {gap_ms:.0f} ms after the kill")
        say(f"   client: {client.stats.new_leaders} new-leader events, {client.stats.resent} resends")

        say("== a market maker quotes in bulk: 200 quotes in one command, then cancels them in one")
        quotes, pulls = BulkBuilder(), BulkBuilder()
        for k in range(100):  # prices in ticks of 0.01, quantities in lots of 0.001
            quotes.place("alice", SYMBOL, "buy", 4_900_000 + 100 * k, 10, client_order_id=1000 + k)
            quotes.place("bob", SYMBOL, "sell", 5_100_000 + 100 * k, 10, client_order_id=2000 + k)
            pulls.cancel("alice", SYMBOL, client_order_id=1000 + k)
            pulls.cancel("bob", SYMBOL, client_order_id=2000 + k)
        t_bulk = time.monotonic()
        placed = client.submit_bulk(quotes).result(30).events
        ms = (time.monotonic() - t_bulk) * 1000
        accepted = sum(1 for evs in placed if evs[0][0] == EV_ACCEPTED)
        say(f"   {accepted} of {len(placed)} quotes accepted in {ms:.0f} ms (one command, one answer per quote)")
        pulled = client.submit_bulk(pulls).result(30).events
        say(f"   {sum(1 for evs in pulled if evs[0][0] == EV_CANCELLED)} cancelled by client_order_id")

        def same_book():
            [q] = watcher.request({"op": "book", "symbol": SYMBOL, "depth": 1000}).events
            return q if book.levels(1000) == {k: q[k] for k in ("seq", "bids", "asks")} else None

        q = wait_for(same_book, 30, "the subscriber's book to catch up")
        say(f"   [subscriber] its book at seq {q['seq']} equals the members' book; {len(book.trades)} trades "
            f"streamed; {book.gaps} gaps noticed, {book.sub.resyncs - 1} re-syncs (one per new leader or gap)")

        say("== alice's balances after the session")
        show_balances(client.request({"op": "balances", "account": "alice"}).events)

        say("== state hash at one log position on the surviving members")
        info = client.admin({"op": "state_hash"}).events
        survivors = [m for m in range(3) if m != killed["member"]]
        hashes = wait_for(
            lambda: [h for h in (cluster.member_hash(m) for m in survivors) if h and h["position"] == info["position"]]
            if all((cluster.member_hash(m) or {}).get("position") == info["position"] for m in survivors) else None,
            30, "hashes")
        for h in hashes:
            say(f"   member {h['member_id']}: applied {h['applied']} engine {h['engine_hash'][:20]}")
        agree = len({h["engine_hash"] for h in hashes}) == 1
        say("   members agree" if agree else "   MEMBERS DIFFER")
        return 0 if agree else 1
    finally:
        if watcher is not None:
            watcher.close()
        if client is not None:
            client.close()
        say("== stopping the cluster")
        cluster.stop()
        leftovers = [p for p in Path("/dev/shm").glob(f"matchx-c0-p{port_base}-*")]
        say(f"   stopped; /dev/shm leftovers: {leftovers or 'none'}")


def run_partitioned(base_dir: Path) -> int:
    """Part two: the topology of docs/examples/topology-2x3.json, routed by the coordinator."""
    from pyengine.client.routed import RoutedClient
    from pyengine.ops.system import System

    topology = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology-2x3.json"
    shutil.rmtree(base_dir, ignore_errors=True)
    say(f"== part 2: two partitions on three workers, routed by the coordinator ({topology.name})")
    t0 = time.monotonic()
    system = System.up(topology, base_dir, log_level="WARNING")
    try:
        say(f"   coordinator {system.coordinator_url}, leaders {system.await_leaders(30)} "
            f"after {time.monotonic() - t0:.1f}s")
        with RoutedClient(system.coordinator_url) as client:
            for symbol, price, qty in (("BTC-USDT", "50000.00", "0.5"), ("SOL-USDT", "150.000", "10")):
                base = symbol.split("-")[0]
                for cmd in (
                    {"op": "deposit", "account": "carol", "asset": "USDT", "amount": "1000000", "tx_id": f"c-{base}"},
                    {"op": "deposit", "account": "dan", "asset": base, "amount": "1000", "tx_id": f"d-{base}"},
                ):
                    client.request(cmd, symbol=symbol)  # balances live in the symbol's partition
                sell = {"op": "place", "account": "dan", "symbol": symbol, "side": "sell", "type": "limit",
                        "tif": "GTC", "price": price, "qty": qty, "client_order_id": f"d-{base}"}
                buy = {**sell, "account": "carol", "side": "buy", "client_order_id": f"c-{base}"}
                client.request(sell)
                reply = client.request(buy)
                say(f"   {symbol} is served by partition {client.route(symbol).partition}:")
                show(reply.events)
            return live_migration(system, client)
    finally:
        say("== stopping the partitioned system")
        system.down()
        say("   stopped")


def live_migration(system: System, client: RoutedClient) -> int:
    """BTC-USDT, with a resting book, moves p1 -> p2 while a client keeps buying from it."""
    from pyengine.ops.migrate import follow, start, summary

    symbol = "BTC-USDT"
    resting = []
    for k in range(10):  # dan's offers and carol's bids, five levels a side; dan's best offer is deep
        side, account = ("sell", "dan") if k % 2 else ("buy", "carol")
        price = 50100 + 10 * (k // 2) if k % 2 else 49900 - 10 * (k // 2)
        ev = client.request({"op": "place", "account": account, "symbol": symbol, "side": side,
                             "price": f"{price}.00", "qty": "5" if k == 1 else "0.1",
                             "client_order_id": f"rest-{k}"}).events
        resting.append(ev[0]["order_id"])
    # free balances stay where they are (only held funds move with orders): carol's USDT at p2 too
    client.request({"op": "deposit", "account": "carol", "asset": "USDT", "amount": "100000", "tx_id": "c-p2"},
                   partition="p2")

    def rest() -> list[int]:
        answers = [client.request({"op": "open_orders", "account": a, "symbol": symbol}).events[0]
                   for a in ("carol", "dan")]
        return sorted(o["order_id"] for ans in answers for o in ans["orders"])

    before = rest()
    say(f"== live migration: {symbol} ({len(before)} resting orders) moves p1 -> p2 while a client buys from "
        "dan's best offer")
    stop = threading.Event()
    waits: list[float] = []
    failures: list[str] = []
    fills = [0]

    def trade() -> None:  # carol buys 0.001 BTC at a time through the routed client
        i = 0
        while not stop.is_set():
            i += 1
            t = time.monotonic()
            try:
                ev = client.request({"op": "place", "account": "carol", "symbol": symbol, "side": "buy",
                                     "price": "50100.00", "qty": "0.001", "client_order_id": f"live-{i}"},
                                    timeout=60).events
                fills[0] += sum(1 for e in ev if e.get("type") == "trade")
                if ev[0]["type"] != "accepted":
                    failures.append(str(ev[0]))
            except Exception as exc:  # noqa: BLE001 - shown below, the demo goes on
                failures.append(repr(exc))
            waits.append(time.monotonic() - t)
            time.sleep(0.01)

    trader = threading.Thread(target=trade, daemon=True)
    trader.start()
    time.sleep(0.5)
    rec = start(system.coordinator_url, symbol, "p2")
    rec = follow(system.coordinator_url, rec["id"], 120)
    time.sleep(0.5)
    stop.set()
    trader.join(90)
    say(f"   {summary(rec)}")
    say(f"   the trading client: {len(waits)} orders, {fills[0]} fills, longest wait {max(waits) * 1000:.0f} ms "
        f"(orders answered 'moving' were sent again to p2){'; FAILED: ' + failures[0] if failures else ''}")
    owner = client.route(symbol).partition
    moved = owner == "p2" and rest() == before and sorted(resting) == before
    say(f"   {symbol} is now served by partition {owner}: "
        + ("the same resting orders (ids, sides, prices) are there, dan's offer reduced by the fills"
           if moved else f"its resting orders DIFFER: {rest()} vs {before}"))
    return 0 if rec["state"] == "done" and moved and not failures else 1


def show_balances(events) -> None:
    for e in events if isinstance(events, list) else [events]:
        for asset, bal in sorted((e.get("balances") or {}).items()):
            say(f"    {asset}: {bal}")


def _order(account: str, side: str, price: str, qty: str, coid: str) -> dict:
    return {"op": "place", "account": account, "symbol": SYMBOL, "side": side, "type": "limit",
            "tif": "GTC", "price": price, "qty": qty, "client_order_id": coid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matchx-demo")
    parser.add_argument("--dir", type=Path, default=Path("var/demo"))
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    parser.add_argument("--skip-partitions", action="store_true", help="only part one: one partition")
    args = parser.parse_args(argv)
    status = run(args.dir.resolve(), args.port_base)
    if status == 0 and not args.skip_partitions:
        status = run_partitioned(args.dir.resolve() / "system")
    return status


if __name__ == "__main__":
    sys.exit(main())
