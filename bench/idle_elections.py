"""Leader changes of an idle 3-member cluster that nobody caused, per Raft timing: how much CPU
starvation a heartbeat timeout tolerates on this machine. No fault is injected and no client
sends anything; every leader change in the window is a member that missed the leader's
heartbeats for a whole heartbeat timeout. Writes bench/reports/idle_elections.md.

    python bench/idle_elections.py [--window-s 60] [--heartbeat-timeouts-ms 120,500]

Each timing gets its own cluster, one after the other (never two at once); the other timeouts
scale as in the shipped defaults (interval 1/6 of the timeout, election timeout 1/6, canvass
timeout the larger of 1 s and 2 x the heartbeat timeout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, bench_cluster, environment, log  # noqa: E402
from pyengine.node.settings import Timeouts  # noqa: E402


def timeouts_for(heartbeat_timeout_ms: int) -> Timeouts:
    shipped = Timeouts()
    if heartbeat_timeout_ms == shipped.heartbeat_timeout_ms:
        return shipped
    sixth = max(1, heartbeat_timeout_ms // 6)
    return Timeouts(heartbeat_interval_ms=sixth, heartbeat_timeout_ms=heartbeat_timeout_ms,
                    election_timeout_ms=sixth,
                    election_status_interval_ms=min(shipped.election_status_interval_ms, heartbeat_timeout_ms - 1),
                    startup_canvass_timeout_ms=max(shipped.startup_canvass_timeout_ms, 2 * heartbeat_timeout_ms))


def leader_changes(cluster) -> int:
    return sum(cluster.member_log(m).count("role -> leader") for m in range(cluster.layout.members))


def measure(heartbeat_timeout_ms: int, window_s: float) -> dict:
    t = timeouts_for(heartbeat_timeout_ms)
    with bench_cluster("idle-elections", 44000, timeouts=t, log_level="INFO") as cluster:
        before = leader_changes(cluster)
        with MachineLoad() as load:
            time.sleep(window_s)
        changes = leader_changes(cluster) - before
    row = {"timeouts": t, "changes": changes, "per_min": changes * 60 / window_s, "load": load.summary()}
    log(f"heartbeat timeout {heartbeat_timeout_ms} ms: {changes} leader changes in {window_s:.0f} s ({load.summary()})")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--heartbeat-timeouts-ms", default="120,500")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "idle_elections.md")
    args = ap.parse_args(argv)
    env = environment()
    rows = [measure(int(x), args.window_s) for x in args.heartbeat_timeouts_ms.split(",")]
    lines = [
        "# Leader changes of an idle cluster (no fault, no client)",
        "",
        f"Command: `python bench/idle_elections.py --window-s {args.window_s:g} "
        f"--heartbeat-timeouts-ms {args.heartbeat_timeouts_ms}`  ",
        f"Environment: {env}; 3 members on one {os.cpu_count()}-core machine (loopback), each timing its own "
        "cluster, one after the other.",
        "",
        "| heartbeat interval / timeout, election timeout | leader changes in the window | per minute | machine |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        t = r["timeouts"]
        lines.append(f"| {t.heartbeat_interval_ms} / {t.heartbeat_timeout_ms} ms, {t.election_timeout_ms} ms "
                     f"{'(shipped defaults)' if t == Timeouts() else ''} | {r['changes']} | {r['per_min']:.1f} | "
                     f"{r['load']} |")
    lines += ["", "Every change here is spurious: nothing was killed. A member starved of CPU for longer than "
              "the heartbeat timeout starts an election; the shorter the timeout, the less starvation it takes.", ""]
    args.report.write_text("\n".join(lines))
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
