"""The memory constants of the capacity model (pyengine/ops/capacity.py, docs/capacity.md):

* bytes of process memory per resting order: the engine in this process (compiled when built),
  RSS before and after placing ``--orders`` non-crossing resting orders (bench/snapshot_recovery.py's
  order shape), and the bytes of their snapshot;
* the resident memory of an idle member process (Python + JVM + Aeron), read from a real member's
  own /metrics (matchx_process_resident_memory_bytes, matchx_jvm_heap_committed_bytes) after a
  3-member cluster has elected a leader.

    .venv/bin/python bench/capacity_constants.py [--orders 200000]

Writes bench/reports/capacity_constants.md. The CPU and throughput constants come from the
throughput, snapshot and idle-CPU reports (docs/capacity.md cites each).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, bench_cluster, environment, jar_cleanup, log, setup_commands  # noqa: E402
from bench.snapshot_recovery import resting_order  # noqa: E402

REPORT = Path(__file__).resolve().parent / "reports" / "capacity_constants.md"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def engine_memory(orders: int, accounts: int, levels: int) -> dict:
    from pyengine import engine as engine_pkg
    from pyengine.engine import Engine

    eng = Engine()
    for c in setup_commands(accounts):
        eng.apply(c, 1)
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    for k in range(orders):
        eng.apply(resting_order(k, accounts, levels, True), 2)
    build_s = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    resting = len(eng.orders)
    snap = len(eng.snapshot())
    return {"compiled": engine_pkg.NATIVE, "orders": resting, "rss_per_order": (after - before) / resting,
            "snapshot_per_order": snap / resting, "build_s": build_s}


def member_memory() -> dict:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    with bench_cluster("capacity", 43000) as cluster:
        time.sleep(5)  # past start-up: JIT, first snapshot schedule tick
        out = {}
        for m, status in enumerate(cluster.status()):
            text = httpx.get(status["metrics_url"], timeout=10).text
            values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            out[m] = (values["matchx_process_resident_memory_bytes"], values["matchx_jvm_heap_committed_bytes"],
                      status["role"])
    jar_cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--levels", type=int, default=2000)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    env = environment()
    machine = MachineLoad().__enter__()
    log(f"environment: {env}")
    eng = engine_memory(args.orders, args.accounts, args.levels)
    log(f"engine: {eng}")
    members = member_memory()
    log(f"members: {members}")
    machine.__exit__(None, None, None)
    rss = [v[0] for v in members.values()]
    lines = [
        "# Capacity constants: memory per resting order, memory of an idle member\n",
        f"Command: `python bench/capacity_constants.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Environment: {env}; {machine.summary()}\n",
        f"## Engine memory per resting order ({eng['orders']:,} orders, "
        f"{'compiled' if eng['compiled'] else 'plain Python'} engine)\n",
        f"- process RSS growth per resting order: **{eng['rss_per_order']:,.0f} bytes**",
        f"- engine snapshot bytes per resting order: **{eng['snapshot_per_order']:,.0f} bytes**",
        f"- building them with Engine.apply: {eng['build_s']:.1f} s "
        f"({eng['orders'] / eng['build_s']:,.0f} orders/s on this loaded machine)\n",
        "## An idle member process (from its own /metrics)\n",
        "| member | role | resident memory | JVM heap committed |",
        "|---:|---|---:|---:|",
    ]
    for m, (r, heap, role) in sorted(members.items()):
        lines.append(f"| {m} | {role} | {r / 2**20:,.0f} MiB | {heap / 2**20:,.0f} MiB |")
    lines.append(f"\nIdle member resident memory: **max {max(rss) / 2**20:,.0f} MiB** "
                 f"(min {min(rss) / 2**20:,.0f} MiB).\n")
    args.report.write_text("\n".join(lines) + "\n")
    log(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
