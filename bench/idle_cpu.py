"""Idle CPU of a 3-member cluster: start it, let it settle, then read the CPU time the member
processes use over a quiet window (utime+stime from /proc). Prints the figure and writes
bench/reports/idle_cpu.md.

    python bench/idle_cpu.py [--window-s 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyengine.node.localcluster import LocalCluster, free_port_base  # noqa: E402
from pyengine.node.settings import ClusterLayout  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle-s", type=float, default=10.0)
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--idle-max-park-us", type=int, default=ClusterLayout.idle_max_park_us)
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "idle_cpu.md")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="matchx-idle-") as tmp:
        cluster = LocalCluster(ClusterLayout(base_dir=Path(tmp), port_base=free_port_base(25000),
                                              idle_max_park_us=args.idle_max_park_us), "WARNING")
        cluster.start()
        try:
            cluster.await_leader(60)
            print(f"settling {args.settle_s:.0f}s ...", flush=True)
            time.sleep(args.settle_s)
            pids = cluster.pids()
            before = {m: cpu_seconds(p) for m, p in pids.items()}
            t0 = time.monotonic()
            print(f"measuring {args.window_s:.0f}s ...", flush=True)
            time.sleep(args.window_s)
            elapsed = time.monotonic() - t0
            used = {m: cpu_seconds(p) - before[m] for m, p in pids.items()}
        finally:
            cluster.stop()
    per_member = {m: 100 * u / elapsed for m, u in used.items()}
    total = sum(per_member.values())
    lines = [f"member {m}: {pct:.1f}% of one core" for m, pct in sorted(per_member.items())]
    summary = f"3 idle members together: {total:.1f}% of one core ({total / 2:.1f}% of this 2-core machine)"
    print("\n".join(lines + [summary]))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        "# Idle CPU of a 3-member cluster\n\n"
        f"Command: `python bench/idle_cpu.py --window-s {args.window_s:.0f}`; members idle with "
        f"SHARED driver/archive threading and a backoff idle strategy parking up to "
        f"{args.idle_max_park_us} us.\n\n"
        + "".join(f"- {line}\n" for line in lines) + f"\n**{summary}**\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
