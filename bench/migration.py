"""Symbol migration, the engine's share of the pause: export of one symbol with N resting orders
at the source, import at the destination (pyengine/engine/migration.py), in one process.

    .venv/bin/python bench/migration.py --orders 1000 10000 100000 [--report bench/reports/migration_engine.md]

This is NOT the pause a client sees (docs/migration.md): that adds the log round trips of every
step and the chunked copy of the export through the coordinator; a bench with real processes is
still to be written (issue #19).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from pyengine.engine import NATIVE, Engine
from pyengine.engine.migration import export_symbol, import_symbol

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


def measure(n: int) -> dict:
    src, dst = book(n)
    t0 = time.perf_counter()
    blob, meta = export_symbol(src, "B")
    t1 = time.perf_counter()
    import_symbol(dst, blob)
    t2 = time.perf_counter()
    assert len(dst.orders) == n and meta["orders"] == n
    return {"orders": n, "export_ms": (t1 - t0) * 1000, "import_ms": (t2 - t1) * 1000, "bytes": len(blob)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orders", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--report", type=Path)
    args = p.parse_args()
    load = os.getloadavg()
    rows = [measure(n) for n in args.orders]
    lines = [
        "# Symbol migration: the engine's share of the pause",
        "",
        f"`.venv/bin/python bench/migration.py --orders {' '.join(map(str, args.orders))}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; engine {'compiled' if NATIVE else 'plain Python'}; "
        f"{os.cpu_count()} cores, {platform.python_version()}; load average before the run "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (a shared, loaded machine: other sessions' tests ran).",
        "",
        "One process, no cluster: export of a symbol with N resting orders of 30 accounts (with their",
        "client order ids), then import into a second engine. Not the pause a client sees: that adds the",
        "log round trips of the steps and the chunked copy of the export (docs/migration.md).",
        "",
        "| resting orders | export ms | import ms | export bytes |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['orders']:,} | {r['export_ms']:.0f} | {r['import_ms']:.0f} | {r['bytes']:,} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
