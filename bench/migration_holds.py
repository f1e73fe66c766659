"""Where another symbol waits during a migration, one worker's view (#19).

    .venv/bin/python bench/migration_holds.py --orders 10000 100000 [--report FILE]

A worker process hosts one member of each partition (docs/examples/topology-2x3.json), and the
members' services share its one Python interpreter: while one member applies a log message the
other member's service cannot run, whichever partition the message belongs to. So what another
symbol of either partition waits behind is the longest single command either member applies,
with any garbage collection it sets off.

Here two MatchingServices (source and destination, the members' GC settings, what a snapshot
froze out of collections frozen) are fed the commands the coordinator's driver sends for one
migration of a symbol with N resting orders, in the driver's order: prepare, the pre-copy's
pieces (each piece taken at the source and added at the destination), the freeze with 100 more
orders placed before it, the export's chunk and the import, activation, drop and the cleanup's
pieces. Per kind of command: how many, the longest one's CPU time (process time) and wall time,
all of them summed, and the longest garbage collection that ran inside one. Beside them a thread
stands for the worker's member of the other partition: it wakes every millisecond and needs the
interpreter each time; *other member's longest wait* is the longest gap between two of its
wakes that overlaps such a command (wall time: ~1 ms when nothing holds it up; a gap over two
adjacent commands counts for both, e.g. the import chunk right before the import). Each figure is
the lowest of ``--repeat`` migrations (each on a fresh pair of services): the least disturbed by
the rest of the machine.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import gc
import itertools
import os
import platform
import threading
import time
import zlib
from pathlib import Path

import orjson

from pyengine.engine import NATIVE
from pyengine.service.matching import GC_THRESHOLDS, MatchingService
from pyengine.wire import protocol
from pyengine.wire.protocol import Channel, Command, Status

ACCOUNTS = 30
CHANGES = 100
SYM = "BTC-USDT"
_rid = itertools.count(1)


class GcClock:
    """Every collection's duration (gc.callbacks), so a command's share can be told apart."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.spans: list[float] = []

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self.t0 = time.perf_counter()
        else:
            self.spans.append(time.perf_counter() - self.t0)


class Other(threading.Thread):
    """The worker's member of the other partition: wakes every millisecond (needing the
    interpreter to), every wake's time kept."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.wakes: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.001)
            self.wakes.append(time.perf_counter())

    def longest_gap(self, w0: float, w1: float) -> float:
        """The longest gap between two wakes that overlaps [w0, w1]."""
        wakes = self.wakes
        i = max(1, bisect.bisect_left(wakes, w0))
        j = bisect.bisect_right(wakes, w1) + 1
        return max((wakes[k] - wakes[k - 1] for k in range(i, min(j, len(wakes)))), default=0.0)


OTHER: list[Other] = []


class Member:
    """One partition's member service, fed log messages one at a time; each command timed."""

    def __init__(self, owns: dict[str, int], clock: GcClock, stats: dict[str, list[float]]) -> None:
        self.svc = MatchingService()
        self.pos = 0
        self.clock = clock
        self.stats = stats

    def send(self, channel: int, cmd: dict, kind: str | None = None) -> tuple[int, dict]:
        self.pos += 64
        msg = protocol.encode_request(7, [Command(next(_rid), channel, orjson.dumps(cmd))])
        n_gc = len(self.clock.spans)
        c0 = time.process_time()
        w0 = time.perf_counter()
        [(_, reply)] = self.svc.on_message(1, 1000 + self.pos, self.pos, msg)
        w1 = time.perf_counter()
        cpu = time.process_time() - c0
        if kind is not None:
            s = self.stats.setdefault(kind, [0, 0.0, 0.0, 0.0, 0.0, (w0, w1)])
            s[0] += 1
            s[1] = max(s[1], cpu)
            s[2] = max(s[2], w1 - w0)
            s[3] += cpu
            s[4] = max([s[4], *self.clock.spans[n_gc:]])
            s.append((w0, w1))
        [a] = protocol.decode_reply(reply)[1]
        return a.status, orjson.loads(a.payload)

    def ok(self, cmd: dict, kind: str | None = None) -> dict:
        st, body = self.send(Channel.ADMIN_JSON, cmd, kind)
        if st != Status.OK:
            raise RuntimeError(f"{cmd['op']}: {body}")
        return body

    def eng(self, cmd: dict) -> object:
        st, body = self.send(Channel.ENGINE_JSON, cmd)
        if st != Status.OK:
            raise RuntimeError(f"{cmd['op']}: {body}")
        return body


def setup(n: int, clock: GcClock, stats: dict) -> tuple[Member, Member]:
    src, dst = Member({SYM: 1}, clock, stats), Member({}, clock, stats)
    dst.svc.engine.next_oid = 1 << 41  # its own id range, as matchctl up gives each partition
    for m in (src, dst):
        m.eng({"op": "add_symbol", "symbol": SYM, "base": "BTC", "quote": "USDT", "tick_size": "0.01",
               "lot_size": "0.001"})
    src.ok({"op": "own_symbols", "symbols": {SYM: 1}})
    dst.ok({"op": "own_symbols", "symbols": {}})
    eng = src.svc.engine
    for i in range(ACCOUNTS):
        for asset, amount in (("BTC", "1000000"), ("USDT", "100000000000")):
            eng.apply({"op": "deposit", "account": f"a{i}", "asset": asset, "amount": amount,
                       "tx_id": f"{i}{asset}"}, 1)
    for i in range(n):
        buy = i % 2 == 1
        ev = eng.apply({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": SYM, "side": "buy" if buy else "sell",
                        "price": f"{20000 - i % 500 if buy else 30000 + i % 500}.00", "qty": "0.001",
                        "client_order_id": f"c{i}"}, 2)
        assert ev[0]["type"] == "accepted", ev
    return src, dst


def migrate(src: Member, dst: Member, pieces: int) -> None:
    """The driver's commands for one migration, in its order (coordinator/migrations.py)."""
    mid = "m1"
    dst.ok({"op": "mig_prepare", "id": mid, "symbol": SYM, "source": "p1", "epoch": 2}, "prepare (dest)")
    k = 0
    while True:
        pre = src.ok({"op": "mig_precopy", "id": mid, "symbol": SYM, "dest": "p2", "epoch": 2, "piece": k,
                      "max_orders": pieces}, "pre-copy piece (source)")
        raw = base64.b64decode(pre["data"]) if "data" in pre else _fetch(src, mid, pre, k)
        dst.ok({"op": "mig_preimport", "id": mid, "piece": k, "size": pre["size"], "sha256": pre["sha256"],
                "encoding": "zlib", "data": base64.b64encode(zlib.compress(raw, 1)).decode()},
               "pre-copy piece added (dest)")
        if pre["last"]:
            break
        k += 1
    for i in range(CHANGES):
        src.eng({"op": "place", "account": f"a{i % ACCOUNTS}", "symbol": SYM, "side": "buy", "price": "100.00",
                 "qty": "0.001", "client_order_id": f"d{i}"})
    fz = src.ok({"op": "mig_freeze", "id": mid, "symbol": SYM, "dest": "p2", "epoch": 2}, "freeze (source)")
    raw = _fetch(src, mid, fz, None)
    stream = zlib.compress(raw, 1)
    dst.ok({"op": "mig_import_chunk", "id": mid, "offset": 0, "data": base64.b64encode(stream).decode()},
           "import chunk (dest)")
    dst.ok({"op": "mig_import", "id": mid, "size": fz["size"], "sha256": fz["sha256"], "encoding": "zlib"},
           "import (dest)")
    dst.ok({"op": "mig_activate", "id": mid}, "activate (dest)")
    drop = src.ok({"op": "mig_drop", "id": mid}, "drop (source)")
    total = int(drop.get("cleanup", {}).get("orders", 0))
    upto = 0
    while upto < total:
        upto += pieces
        src.ok({"op": "mig_cleanup", "id": mid, "upto": upto}, "cleanup piece (source)")


def _fetch(src: Member, mid: str, ans: dict, piece: int | None) -> bytes:
    out = b""
    while len(out) < ans["size"]:
        cmd = {"op": "mig_export_chunk", "id": mid, "offset": len(out), "length": 65536}
        if piece is not None:
            cmd.update({"part": "precopy", "piece": piece})
        body = src.ok(cmd, "export chunk (source)")
        out += base64.b64decode(body["data"])
    return out


def measure(n: int, pieces: int) -> dict[str, list[float]]:
    clock = GcClock()
    stats: dict[str, list[float]] = {}
    gc.set_threshold(*GC_THRESHOLDS)  # as MatchingService.on_start sets it in a member
    src, dst = setup(n, clock, stats)
    gc.collect()
    gc.freeze()  # as the members' last snapshot left it
    gc.callbacks.append(clock)
    other = Other()
    other.start()
    time.sleep(0.05)
    try:
        migrate(src, dst, pieces)
    finally:
        gc.callbacks.remove(clock)
        time.sleep(0.01)
        other.stop.set()
        other.join()
    for s in stats.values():
        spans = s[5:]
        del s[5:]
        s.append(max(other.longest_gap(w0, w1) for w0, w1 in spans))
    moved = sum(1 for o in dst.svc.engine.orders.values() if o.sym.name == SYM)
    if moved != n + CHANGES:
        raise RuntimeError(f"{moved} orders at the destination, not {n + CHANGES}")
    return stats


def report(args: argparse.Namespace, rows: list[tuple[int, dict]], load: tuple) -> str:
    lines = [
        "# Symbol migration: the longest command one worker applies (#19)",
        "",
        f"`.venv/bin/python bench/migration_holds.py --orders {' '.join(map(str, args.orders))} "
        f"--repeat {args.repeat}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; engine {'compiled' if NATIVE else 'plain Python'}; "
        f"{os.cpu_count()} cores, {platform.python_version()}; load average before {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}, after {os.getloadavg()[0]:.1f}.",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| resting orders | command | count | longest, CPU ms | longest, wall ms | all, CPU ms | longest GC inside, ms "
        "| other member's longest wait, ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, stats in rows:
        for kind, (count, cpu, wall, total, gcmax, gap) in stats.items():
            lines.append(f"| {n:,} | {kind} | {count} | {cpu * 1000:.1f} | {wall * 1000:.1f} | {total * 1000:.1f} | "
                         f"{gcmax * 1000:.1f} | {gap * 1000:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--pieces", type=int, default=2000, help="orders per pre-copy and cleanup piece")
    ap.add_argument("--repeat", type=int, default=3, help="migrations per size; the lowest figures kept")
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    load = os.getloadavg()
    rows = []
    for n in args.orders:
        stats = measure(n, args.pieces)
        for _ in range(args.repeat - 1):
            again = measure(n, args.pieces)
            for kind, s in stats.items():
                t = again[kind]
                s[1:3] = [min(s[1], t[1]), min(s[2], t[2])]
                s[3:6] = [min(s[3], t[3]), min(s[4], t[4]), min(s[5], t[5])]
        rows.append((n, stats))
        for kind, s in stats.items():
            print(n, kind, s[0], f"cpu {s[1] * 1000:.1f} wall {s[2] * 1000:.1f} sum {s[3] * 1000:.1f} "
                  f"gc {s[4] * 1000:.1f} other waited {s[5] * 1000:.1f}", flush=True)
    text = report(args, rows, load)
    if args.report:
        args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
