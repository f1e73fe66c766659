"""Symbol migration benchmarks.

    .venv/bin/python bench/migration.py --orders 1000 10000 100000 [--report bench/reports/migration_engine.md]
    .venv/bin/python bench/migration.py --cluster --orders 1000 10000 [--report bench/reports/migration.md]

Without ``--cluster``: the engine's share of the pause, export of one symbol with N resting orders
at the source and import at the destination (pyengine/engine/migration.py), in one process.

With ``--cluster``: real processes (``matchctl up`` of docs/examples/topology-2x3.json on free
ports: a coordinator running the migration driver, three workers, two partitions). BTC-USDT gets N
resting orders, then moves p1 -> p2 while one client keeps placing BTC orders (through
RoutedClient: "moving" answers are sent again until the new owner takes them) and another places
and cancels ETH-USDT orders on the source partition. Reported: the pause a client sees (the
longest BTC command during the migration, send to answer), the driver's freeze-to-activation time,
and ETH's p50/p99 during the migration against a window without one. Per migration it also
prints where the pause went: the driver's steps as the coordinator timed them (``info.timing``,
coordinator/migration_timing.py: ms from the freeze sent) and the client's side (the first
"moving" answer, the map naming the destination, the first command the destination accepted), on
the machine's one monotonic clock. ``--repeat N`` migrates each size N times (back and forth).
``--no-precopy``: the coordinator copies the whole export after the freeze (no pre-copy while the
symbol still trades), as before the pre-copy existed: for before/after runs in one window.
``--precopy-piece-orders N``: the coordinator's pre-copy in pieces of about N orders (each its own
log message at the source); 0: the whole pre-copy as one message (the mode before the pieces).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pyengine.engine import NATIVE, Engine
from pyengine.engine.migration import (
    build_shadow,
    export_delta,
    export_symbol,
    import_delta,
    import_symbol,
    precopy_symbol,
)
from pyengine.engine.migration_pieces import (
    Pieces,
    cleanup,
    export_delta_pieces,
    pieces_sha,
    take_piece,
)
from pyengine.engine.migration_shadow import extend_shadow, import_pieces

ACCOUNTS = 30


def book(n: int) -> tuple[Engine, Engine]:
    src, dst = Engine(), Engine()
    dst.next_oid = 1 << 41  # its own id range, as matchctl up gives each partition
    for e in (src, dst):
        e.apply({"op": "add_symbol", "symbol": "B", "base": "X", "quote": "Q", "tick_size": "1", "lot_size": "1"}, 1)
    for i in range(ACCOUNTS):
        src.apply({"op": "deposit", "account": f"a{i}", "asset": "X", "amount": "1000000000", "tx_id": f"x{i}"}, 1)
        src.apply({"op": "deposit", "account": f"a{i}", "asset": "Q", "amount": "10" + "0" * 12, "tx_id": f"q{i}"}, 1)
    for i in range(n):
        buy = i % 2 == 1
        ev = src.apply({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": "B", "side": "buy" if buy else "sell",
                        "price": str(1000 - i % 500 if buy else 1001 + i % 500), "qty": "1",
                        "client_order_id": f"c{i}"}, 2)
        assert ev[0]["type"] == "accepted", ev
    return src, dst


CHANGES = 100  # orders placed between the pre-copy and the freeze
PIECE = 2000  # orders per piece of the pre-copy (the coordinator's default)


def measure(n: int, reps: int = 3) -> dict:
    """CPU time (process time, the fastest of ``reps``) of the whole export and import, and of
    the pre-copy's steps: the pre-copy and its build at the destination (before the freeze), the
    freeze after ``CHANGES`` orders were placed and the import of its delta (the pause)."""
    best: dict[str, float] = {}

    def keep(name: str, t0: float) -> None:
        best[name] = min(best.get(name, float("inf")), (time.process_time() - t0) * 1000)

    for _ in range(reps):
        src, dst = book(n)
        t = time.process_time()
        blob, meta = export_symbol(src, "B")
        keep("export_ms", t)
        t = time.process_time()
        import_symbol(dst, blob)
        keep("import_ms", t)
        assert len(dst.orders) == n and meta["orders"] == n
        src, dst = book(n)
        t = time.process_time()
        base, _meta, baseline = precopy_symbol(src, "B")
        keep("precopy_ms", t)
        t = time.process_time()
        shadow = build_shadow(base, dst.dedup_window)
        keep("build_ms", t)
        for i in range(CHANGES):
            src.apply({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": "B", "side": "buy", "price": "500",
                       "qty": "1", "client_order_id": f"d{i}"}, 3)
        sha = hashlib.sha256(base).hexdigest()
        t = time.process_time()
        delta, _meta = export_delta(src, "B", baseline, sha)
        keep("freeze_ms", t)
        t = time.process_time()
        import_delta(dst, shadow, sha, delta)
        keep("delta_import_ms", t)
        assert len(dst.orders) == n + CHANGES
        # the pre-copy in pieces of PIECE orders: the longest piece at the source and at the
        # destination (each its own log message), then the freeze that walks the changed queues
        src, dst = book(n)
        pc = Pieces()
        blobs: list[bytes] = []
        shadow = None
        worst = [0.0, 0.0]
        while True:
            t = time.process_time()
            piece, pmeta = take_piece(src, "B", pc, PIECE)
            worst[0] = max(worst[0], time.process_time() - t)
            t = time.process_time()
            shadow = extend_shadow(dst, shadow, piece)
            worst[1] = max(worst[1], time.process_time() - t)
            blobs.append(piece)
            if pmeta["last"]:
                break
        best["piece_ms"] = min(best.get("piece_ms", float("inf")), worst[0] * 1000)
        best["piece_build_ms"] = min(best.get("piece_build_ms", float("inf")), worst[1] * 1000)
        for i in range(CHANGES):
            src.apply({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": "B", "side": "buy", "price": "500",
                       "qty": "1", "client_order_id": f"d{i}"}, 3)
        psha = pieces_sha([hashlib.sha256(b).hexdigest() for b in blobs])
        t = time.process_time()
        pdelta, _meta = export_delta_pieces(src, "B", pc, psha)
        keep("pieces_freeze_ms", t)
        t = time.process_time()
        assert shadow is not None
        import_pieces(dst, shadow, psha, pdelta)
        keep("pieces_import_ms", t)
        assert len(dst.orders) == n + CHANGES
        # after that freeze, the moved orders leave the source's indexes in pieces of PIECE
        # orders (mig_cleanup, each one log message): the longest piece and all of them
        det = pc.detached
        assert det is not None and det.total == n + CHANGES
        longest = 0.0
        t_all = time.process_time()
        done = 0
        while done < det.total:
            t = time.process_time()
            done = cleanup(src, det, done + PIECE)
            longest = max(longest, time.process_time() - t)
        keep("cleanup_all_ms", t_all)
        best["cleanup_piece_ms"] = min(best.get("cleanup_piece_ms", float("inf")), longest * 1000)
        assert not any(o.sym is src.symbols["B"] for o in src.orders.values())
    return {"orders": n, **best, "bytes": len(blob), "precopy_bytes": len(base), "delta_bytes": len(delta),
            "pieces": len(blobs), "walked": pc.walked}


class Sender(threading.Thread):
    """Sequential commands from one thread; every (start, latency) kept."""

    def __init__(self, make) -> None:
        super().__init__(daemon=True)
        self.make = make
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.errors = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            t = time.monotonic()
            try:
                self.make(i)
            except Exception:  # noqa: BLE001 - counted, reported
                self.errors += 1
            self.samples.append((t, time.monotonic() - t))
            time.sleep(0.002)

    def window(self, t0: float, t1: float) -> list[float]:
        return [lat for t, lat in self.samples if t0 <= t <= t1]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def up_2x3(prefix: str, chunk_bytes: int | None = None, precopy: bool = True,
           piece_orders: int | None = None, port_base: int = 30000, piece_pause_ms: int = 0,
           copy_pace_pct: int | None = None) -> tuple[Any, Path]:
    """`matchctl up` of docs/examples/topology-2x3.json on free ports in a new temporary
    directory (relaxed Raft timing, as the integration tests): (the System, the directory).
    ``chunk_bytes``: the coordinator's migration chunk size (its default when None); ``precopy``
    False: the coordinator's ``--no-migration-precopy``; ``piece_orders``: its
    ``--migration-precopy-piece-orders`` (its default when None); ``port_base``: the first port
    tried for the partitions (free ones are taken from there on); ``copy_pace_pct``: its
    ``--migration-copy-pace-pct`` (its default when None)."""
    from pyengine.node.localcluster import free_port_base
    from pyengine.node.settings import PORTS_PER_PARTITION
    from pyengine.ops.system import System

    root = Path(__file__).resolve().parents[1]
    doc = copy.deepcopy(json.loads((root / "docs/examples/topology-2x3.json").read_text()))
    doc["coordinator"]["port"] = 0
    if chunk_bytes is not None:
        doc["coordinator"]["migration_chunk_bytes"] = chunk_bytes
    if not precopy:
        doc["coordinator"]["migration_precopy"] = False
    if piece_orders is not None:
        doc["coordinator"]["migration_precopy_piece_orders"] = piece_orders
    if piece_pause_ms:
        doc["coordinator"]["migration_precopy_piece_pause_ms"] = piece_pause_ms
    if copy_pace_pct is not None:
        doc["coordinator"]["migration_copy_pace_pct"] = copy_pace_pct
    doc["settings"] = {"timeouts": {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 2000,
                                    "election_timeout_ms": 300, "startup_canvass_timeout_ms": 4000}}
    base = port_base
    for p in doc["partitions"]:
        base = free_port_base(base)
        p["port_base"] = base
        base += PORTS_PER_PARTITION
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    (tmp / "topology.json").write_text(json.dumps(doc))
    return System.up(tmp / "topology.json", tmp / "system", timeout=180), tmp


class Tracer:
    """RoutedClient's move diagnostics for one symbol: (monotonic time, event, partition)."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.events: list[tuple[float, str, str]] = []

    def __call__(self, event: str, symbol: str, partition: str) -> None:
        if symbol == self.symbol:
            self.events.append((time.monotonic(), event, partition))


def slowest(sender: Sender, t0: float, t1: float, timing: dict, n: int = 3) -> list[str]:
    """The ``n`` slowest commands of ``sender`` sent in [t0, t1], each with its span in ms from
    the freeze sent and the driver's steps it overlapped (names without their ``@`` part): what
    the other symbol's p99 waited behind."""
    base = timing.get("base_monotonic")
    steps = timing.get("steps") or []
    worst = sorted(((lat, t) for t, lat in sender.samples if t0 <= t <= t1), reverse=True)[:n]
    out = []
    for lat, t in worst:
        if base is None:
            out.append(f"{lat * 1000:.0f} ms")
            continue
        a, b = (t - base) * 1000, (t + lat - base) * 1000
        names = dict.fromkeys(nm.split("@")[0] for nm, s0, s1 in steps if s0 < b and s1 > a)
        out.append(f"{lat * 1000:.0f} ms at {a:.0f}..{b:.0f}: {', '.join(names) or 'no step'}")
    return out


def client_side(tracer: Tracer, probe: Sender, t0: float, to: str, base: float | None) -> dict:
    """The client's view of one migration: the first "moving" answer, the first time the map named
    ``to``, the first BTC command answered after that (accepted at the destination); ms from the
    driver's freeze sent (``base``) when known."""
    moving = next((t for t, e, _p in tracer.events if t >= t0 and e == "moving"), None)
    route = next((t for t, e, p in tracer.events if moving is not None and t >= moving and e == "route" and p == to),
                 None)
    not_yet = sum(1 for t, e, _p in tracer.events if t >= t0 and e == "not_yet")
    accepted = min((t + lat for t, lat in probe.samples if route is not None and t + lat >= route), default=None)

    def rel(x: float | None) -> float | None:
        return None if x is None or base is None else round((x - base) * 1000, 1)

    return {"first_moving": rel(moving), "route_seen": rel(route), "first_accepted": rel(accepted),
            "not_yet_answers": not_yet,
            "client_pause_ms": None if moving is None or accepted is None else round((accepted - moving) * 1000, 1),
            "map_wait_ms": None if moving is None or route is None else round((route - moving) * 1000, 1),
            "dest_ms": None if route is None or accepted is None else round((accepted - route) * 1000, 1)}


def cluster(sizes: list[int], repeat: int = 1, chunk_bytes: int | None = None,
            precopy: bool = True, piece_orders: int | None = None,
            port_base: int = 30000, piece_pause_ms: int = 0,
            copy_pace_pct: int | None = None) -> tuple[list[dict], dict]:
    import httpx

    from pyengine.client.routed import RoutedClient
    from pyengine.wire.bulk import EV_ACCEPTED, BulkBuilder

    system, _tmp = up_2x3("matchx-migbench-", chunk_bytes, precopy, piece_orders, port_base, piece_pause_ms,
                          copy_pace_pct)
    rows: list[dict] = []
    extra: dict = {}
    try:
        url = system.coordinator_url
        tracer = Tracer("BTC-USDT")
        import inspect

        # an SDK without the trace hook (older code, for before/after runs): no client-side breakdown
        traced = "trace" in inspect.signature(RoutedClient).parameters
        client = RoutedClient(url, moved_timeout=120.0, **({"trace": tracer} if traced else {}))
        try:
            for sym, base_asset in (("BTC-USDT", "BTC"), ("ETH-USDT", "ETH")):
                for i in range(ACCOUNTS):
                    for asset, amount in ((base_asset, "1000000"), ("USDT", "100000000000")):
                        client.request({"op": "deposit", "account": f"a{i}", "asset": asset, "amount": amount,
                                        "tx_id": f"{sym}-{i}-{asset}"}, timeout=60, symbol=sym)
            placed = 0
            where = "p1"
            funded = {"p1"}
            eth_n = [0]

            def eth(i: int) -> None:
                coid = f"e{i}"
                client.request({"op": "place", "account": "a0", "symbol": "ETH-USDT", "side": "buy",
                                "price": "100.00", "qty": "0.001", "client_order_id": coid}, timeout=60)
                client.request({"op": "cancel", "account": "a0", "symbol": "ETH-USDT", "client_order_id": coid},
                               timeout=60)
                eth_n[0] += 1

            def btc(i: int) -> None:
                client.request({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": "BTC-USDT", "side": "buy",
                                "price": "10.00", "qty": "0.001", "client_order_id": f"p{time.time_ns()}"},
                               timeout=120)

            for n in [n for n in sizes for _ in range(repeat)]:
                # top the book up to n resting orders (bulks of 1000, far from the probes' price)
                futures = []
                if placed < n and where not in funded:
                    # free funds stay where they were deposited (only holds move with the book):
                    # the accounts need them at the partition that owns BTC now
                    for i in range(ACCOUNTS):
                        for asset, amount in (("BTC", "1000000"), ("USDT", "100000000000")):
                            client.request({"op": "deposit", "account": f"a{i}", "asset": asset, "amount": amount,
                                            "tx_id": f"BTC-USDT-{i}-{asset}-{where}"}, timeout=60, symbol="BTC-USDT")
                    funded.add(where)
                while placed < n:
                    b = BulkBuilder()
                    for _ in range(min(1000, n - placed)):
                        buy = placed % 2 == 0
                        b.place(f"a{placed % ACCOUNTS}", "BTC-USDT", "buy" if buy else "sell",
                                2000000 - placed % 5000 if buy else 3000000 + placed % 5000, 1,
                                client_order_id=1_000_000 + placed)
                        placed += 1
                    futures.append(client.client(where).submit_bulk(b))
                refused = 0
                for f in futures:
                    refused += sum(1 for evs in f.result(300).events if not evs or evs[0][0] != EV_ACCEPTED)
                if refused:  # e.g. no free funds where the book is: the size would be a lie
                    raise RuntimeError(f"{refused} of the resting orders for {n:,} were refused")
                other = Sender(eth)
                other.start()
                time.sleep(10.0)  # the window without a migration
                probe = Sender(btc)
                probe.start()
                time.sleep(2.0)
                to = "p2" if where == "p1" else "p1"
                t0 = time.monotonic()
                r = httpx.post(f"{url}/v1/migrations", json={"symbol": "BTC-USDT", "to": to}, timeout=30)
                r.raise_for_status()
                mid = r.json()["id"]
                while True:
                    rec = httpx.get(f"{url}/v1/migrations/{mid}", timeout=30).json()
                    if rec["state"] in ("done", "aborted"):
                        break
                    time.sleep(0.05)
                t1 = time.monotonic()
                time.sleep(2.0)
                probe.stop.set()
                other.stop.set()
                probe.join(180)
                other.join(180)
                base_w = other.window(t0 - 10.0, t0 - 0.5)
                during = other.window(t0, t1)
                timing = rec["info"].get("timing") or {}
                rows.append({
                    "orders": n, "moved": rec["info"].get("orders"), "to": to, "state": rec["state"],
                    "freeze_bytes": rec["info"].get("size"),
                    "migration_s": t1 - t0,
                    "pause_ms": max(probe.window(t0, t1 + 2.0), default=0) * 1000,
                    "driver_pause_ms": rec["info"].get("pause_ms"),
                    "eth_p50_without": pct(base_w, 0.5), "eth_p99_without": pct(base_w, 0.99),
                    "eth_p50_during": pct(during, 0.5), "eth_p99_during": pct(during, 0.99),
                    "eth_samples_during": len(during), "probe_errors": probe.errors, "eth_errors": other.errors,
                    "timing": timing, "chunks": sum(1 for s in timing.get("steps", []) if s[0].startswith("import@")),
                    "pieces": sum(1 for s in timing.get("steps", []) if s[0].startswith("precopy piece@")),
                    "freeze_ms": next((round(s[2] - s[1], 1) for s in timing.get("steps", []) if s[0] == "freeze"),
                                      None),
                    "cleanup_ms": next((round(s[2] - s[1], 1) for s in timing.get("steps", []) if s[0] == "cleanup"),
                                       None),
                    **client_side(tracer, probe, t0, to, timing.get("base_monotonic")),
                    "eth_slowest": slowest(other, t0, t1, timing),
                })
                print({k: v for k, v in rows[-1].items() if k != "timing"}, flush=True)
                for line in breakdown(rows[-1]):
                    print("   ", line, flush=True)
                where = to
            extra["load_after"] = os.getloadavg()
        finally:
            client.close()
    finally:
        system.down()
    return rows, extra


def breakdown(r: dict) -> list[str]:
    """One migration's pause, step by step: the driver's steps, then the client's events (ms
    from the freeze sent)."""
    timing = r.get("timing") or {}
    if not timing.get("steps"):
        return ["(no step timing in the migration record: a coordinator without it)"]
    from coordinator.migration_timing import render
    return [*render(timing),
            *(f"ETH slowest pair: {w}" for w in r.get("eth_slowest", [])),
            f"client: first \"moving\" answer at {r['first_moving']}, map names {r.get('to', 'the destination')} "
            f"at {r['route_seen']}, first command accepted there at {r['first_accepted']} "
            f"({r['not_yet_answers']} \"not yet\" answers): pause {r['client_pause_ms']} ms = waiting for the "
            f"map {r['map_wait_ms']} + at the destination {r['dest_ms']}"]


def cluster_report(args: argparse.Namespace, rows: list[dict], load: tuple, extra: dict) -> str:
    lines = [
        "# Symbol migration with real processes: the pause a client sees",
        "",
        f"`.venv/bin/python bench/migration.py --cluster --orders {' '.join(map(str, args.orders))}"
        f"{f' --repeat {args.repeat}' if args.repeat > 1 else ''}"
        f"{f' --chunk-bytes {args.chunk_bytes}' if args.chunk_bytes else ''}"
        f"{' --no-precopy' if args.no_precopy else ''}"
        f"{'' if args.precopy_piece_orders is None else f' --precopy-piece-orders {args.precopy_piece_orders}'}"
        f"{f' --precopy-piece-pause-ms {args.precopy_piece_pause_ms}' if args.precopy_piece_pause_ms else ''}"
        f"{'' if args.copy_pace_pct is None else f' --copy-pace-pct {args.copy_pace_pct}'}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; engine {'compiled' if NATIVE else 'plain Python'}; "
        f"{os.cpu_count()} cores; load average before "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, after {extra.get('load_after', (0, 0, 0))[0]:.1f}"
        # the bench's own 2x3 system brings the load to ~8 on 2 cores; above that others were running
        f"{' (measured on a shared, loaded machine)' if max(load[0], extra.get('load_after', (0,))[0]) > 10 else ''}.",
        "",
        "`matchctl up` of docs/examples/topology-2x3.json (3 workers, 2 partitions of 3 members). BTC-USDT moves",
        "p1 -> p2 (then back for the next size) with N resting orders of 30 accounts, while one client places",
        "BTC orders one after another through RoutedClient and another places and cancels ETH-USDT orders on",
        "the source partition. *Longest BTC command*: send to answer, during the migration (about the",
        "client pause plus one round trip). *Moved*: the orders the source exported (the book at the freeze).",
        "*Client pause*: the issue's measure, from the first \"moving\" answer the BTC client got to the first",
        "BTC command the destination accepted (RoutedClient's trace hook, monotonic clock).",
        "*Freeze export*: the bytes the source exported at the freeze (after a pre-copy: what changed since",
        "it, and the symbol's accounts and finished orders; without one: the whole book).",
        "*Driver*: freeze acknowledged to activation acknowledged (then the route flip), as the coordinator",
        "recorded it (`pause_ms`); *activation at*: the activation's answer, ms from the freeze sent (`timing`).",
        "ETH figures are per place+cancel pair, sequential. *Pieces*: the pre-copy's pieces (each one log",
        "message at the source and one at the destination; 0: none, or the whole pre-copy as one message);",
        "*freeze ms*: the freeze sent to answered (the source applying it, with the log's round trip).",
        "*Cleanup ms*: after the drop, the source's cleanup of the moved orders in pieces (first sent to last",
        "answered; none: a freeze that took them out itself). ETH's *during* window ends when the migration is",
        "done, so it holds the cleanup.",
        "",
        "| resting orders | moved | client pause ms | longest BTC command ms | driver ms | activation at ms | "
        "freeze export bytes | chunks | pieces | freeze ms | migration s | ETH p50 / p99 ms without | "
        "ETH p50 / p99 ms during | cleanup ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['orders']:,} | {r.get('moved')} | {r.get('client_pause_ms')} | {r['pause_ms']:.0f} | "
                     f"{r['driver_pause_ms']} | "
                     f"{(r.get('timing') or {}).get('activated_ms')} | {r.get('freeze_bytes') or 0:,} | "
                     f"{r.get('chunks')} | {r.get('pieces')} | {r.get('freeze_ms')} | {r['migration_s']:.1f} | "
                     f"{r['eth_p50_without']:.0f} / {r['eth_p99_without']:.0f} | "
                     f"{r['eth_p50_during']:.0f} / {r['eth_p99_during']:.0f} ({r['eth_samples_during']} pairs) | "
                     f"{r.get('cleanup_ms')} |")
    lines += ["", "Errors: " + ", ".join(f"{r['orders']:,}: BTC {r['probe_errors']}, ETH {r['eth_errors']}"
                                          for r in rows)]
    lines += ["", "## Where each pause went", "",
              "The driver's steps (start .. end, ms from the freeze sent; export and import chunks folded,",
              "they overlap when the copy is pipelined), then the client's side of the same migration.", ""]
    for i, r in enumerate(rows, 1):
        lines += [f"Migration {i}: {r['orders']:,} resting orders, to {r.get('to')}", "", "```",
                  *breakdown(r), "```", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--report", type=Path)
    p.add_argument("--cluster", action="store_true", help="real processes: the pause a client sees")
    p.add_argument("--repeat", type=int, default=1, help="with --cluster: migrations per size (back and forth)")
    p.add_argument("--chunk-bytes", type=int, help="with --cluster: the coordinator's migration chunk size")
    p.add_argument("--no-precopy", action="store_true",
                   help="with --cluster: the whole export copied after the freeze (no pre-copy)")
    p.add_argument("--port-base", type=int, default=30000,
                   help="with --cluster: the first port tried for the partitions (a range of your own)")
    p.add_argument("--precopy-piece-pause-ms", type=int, default=0,
                   help="with --cluster: the coordinator's wait between two pre-copy pieces")
    p.add_argument("--precopy-piece-orders", type=int,
                   help="with --cluster: the coordinator's pre-copy piece size in orders (0: one message)")
    p.add_argument("--copy-pace-pct", type=int,
                   help="with --cluster: the coordinator's wait after each pre-copy or cleanup piece, in percent "
                   "of the time the piece took (its default when not given; 0: pieces back to back)")
    args = p.parse_args()
    load = os.getloadavg()
    if args.cluster:
        crow, extra = cluster(args.orders, args.repeat, args.chunk_bytes, not args.no_precopy,
                              args.precopy_piece_orders, args.port_base, args.precopy_piece_pause_ms,
                              args.copy_pace_pct)
        text = cluster_report(args, crow, load, extra)
        print(text)
        if args.report:
            args.report.write_text(text)
        return 0
    rows = [measure(n) for n in args.orders]
    lines = [
        "# Symbol migration: the engine's share of the pause",
        "",
        f"`.venv/bin/python bench/migration.py --orders {' '.join(map(str, args.orders))}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; engine {'compiled' if NATIVE else 'plain Python'}; "
        f"{os.cpu_count()} cores, {platform.python_version()}; load average before the run "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, after {os.getloadavg()[0]:.1f}.",
        "",
        "One process, no cluster, CPU time (process time, the fastest of 3): a symbol with N resting",
        "orders of 30 accounts (with their client order ids) on 500 price levels a side. *Whole*: export at",
        "the source, then import into a second engine (what a migration without a pre-copy does in its",
        "pause). *Pre-copy*: the pre-copy at the source and its build at the destination (both before",
        f"the freeze, while the symbol trades), then, after {CHANGES} more orders, the freeze's export",
        "(what changed since) and its import (the pause's engine work). Not the pause a client sees: that",
        "adds the log round trips of the steps and the copy (docs/migration.md); in a cluster each of",
        "three members of each partition does this work.",
        f"*Pieces*: the pre-copy in pieces of {PIECE:,} orders (whole queues); the longest piece at the source",
        "and its build at the destination (each one log message: what another symbol may wait behind), then,",
        f"after the same {CHANGES} orders, the freeze that walks only the changed queues and its import;",
        "the freeze takes the book out whole (its orders stay in the indexes, skipped by every reader);",
        f"*cleanup*: then the source takes the orders out of its indexes in pieces of {PIECE:,} (each one log",
        "message after the drop): the longest piece, and all of them together.",
        "",
        "| resting orders | whole: export ms | whole: import ms | whole bytes | pre-copy ms | build ms | "
        "pre-copy bytes | pause: freeze ms | pause: import ms | freeze bytes | pieces | longest piece ms | "
        "longest piece build ms | pieces: freeze ms | pieces: import ms | longest cleanup piece ms | "
        "cleanup, all pieces ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['orders']:,} | {r['export_ms']:.1f} | {r['import_ms']:.1f} | {r['bytes']:,} | "
                     f"{r['precopy_ms']:.1f} | {r['build_ms']:.1f} | {r['precopy_bytes']:,} | "
                     f"{r['freeze_ms']:.1f} | {r['delta_import_ms']:.1f} | {r['delta_bytes']:,} | {r['pieces']} | "
                     f"{r['piece_ms']:.1f} | {r['piece_build_ms']:.1f} | {r['pieces_freeze_ms']:.1f} | "
                     f"{r['pieces_import_ms']:.1f} | {r['cleanup_piece_ms']:.1f} | {r['cleanup_all_ms']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
