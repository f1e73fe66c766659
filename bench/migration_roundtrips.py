"""BTC-USDT moved A -> B -> A many times under trading, with real processes (issue #19).

    .venv/bin/python bench/migration_roundtrips.py [--round-trips 20] [--report bench/reports/migration_roundtrips.md]

`matchctl up` of docs/examples/topology-2x3.json on free ports; 300 resting BTC orders of three
accounts; one RoutedClient trades BTC (crossing buys and sells) the whole time while the symbol
moves p1 -> p2 -> p1 ``--round-trips`` times. The checks are those of
tests/integration/test_migration_destination.py::test_round_trips_under_trading (20 round trips
too, in `make test`); this script adds the timings: every resting order open at the owner, unchanged and in its order;
the trader's open orders only its own acknowledged ones; funds_check on both partitions, nothing in
transit; every unit deposited in an account or a fee pool; a resend of acknowledged
client_order_ids answered as a duplicate of the same order. Reported: each migration's time and
the driver's freeze-to-activation pause.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checks live in the integration test


def run(round_trips: int) -> tuple[list[dict], dict, str | None]:
    from migration import up_2x3  # bench/migration.py

    from pyengine.client.routed import RoutedClient
    from tests.integration.test_migration_destination import round_trips as check_round_trips

    rows: list[dict] = []
    out: dict = {}
    failure = None
    system, tmp = up_2x3("matchx-roundtrips-")
    try:
        client = RoutedClient(system.coordinator_url, moved_timeout=120.0)

        def on_round(k: int, rec: dict, dt: float) -> None:
            rows.append({"k": k, "from": rec["source"], "to": rec["dest"], "s": dt,
                         "pause_ms": rec["info"].get("pause_ms"), "orders": rec["info"].get("orders")})
            print(f"migration {k + 1}/{2 * round_trips}: {rec['source']} -> {rec['dest']} {dt:.1f} s, "
                  f"{rec['info'].get('orders')} orders, pause {rec['info'].get('pause_ms')} ms", flush=True)

        try:
            out = check_round_trips(system, client, round_trips, on_round)
        except AssertionError as exc:
            failure = str(exc)[:500]
        finally:
            client.close()
    finally:
        system.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, out, failure


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--round-trips", type=int, default=20)
    p.add_argument("--report", type=Path)
    args = p.parse_args()
    load = os.getloadavg()
    t0 = time.monotonic()
    rows, out, failure = run(args.round_trips)
    total = time.monotonic() - t0
    pauses = sorted(r["pause_ms"] for r in rows if r["pause_ms"] is not None)
    times = sorted(r["s"] for r in rows)
    lines = [
        "# BTC-USDT moved p1 -> p2 -> p1 repeatedly under trading",
        "",
        f"`.venv/bin/python bench/migration_roundtrips.py --round-trips {args.round_trips}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores shared with other "
        f"sessions; load average before {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, after "
        f"{os.getloadavg()[0]:.1f}; {total:.0f} s in all (system start and stop included).",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        f"**Result: {'all checks passed' if failure is None else 'FAILED: ' + failure}.** "
        f"{len(rows)} of {2 * args.round_trips} migrations done"
        + (f"; {out['placed']:,} orders acknowledged, {out['trades']:,} trades." if out else "."),
        "",
    ]
    if rows:
        lines += [
            f"Per migration: median {times[len(times) // 2]:.1f} s (max {times[-1]:.1f} s), driver pause median "
            f"{pauses[len(pauses) // 2] if pauses else '?'} ms (max {pauses[-1] if pauses else '?'} ms).",
            "",
            "| # | from | to | orders moved | seconds | driver pause ms |",
            "|---:|---|---|---:|---:|---:|",
        ]
        lines += [f"| {r['k'] + 1} | {r['from']} | {r['to']} | {r['orders']} | {r['s']:.1f} | {r['pause_ms']} |"
                  for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0 if failure is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
