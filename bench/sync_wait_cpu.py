"""What a sync request's wait costs the client in CPU while no answer has come yet (issue #20).

No cluster: a real ``ClusterClient`` (JVM, embedded media driver) whose endpoint no member
listens on, so every ``awaitDirect`` runs to its timeout, as a caller's wait does until its answer
arrives. Per wait: the process's CPU time (utime + stime of every thread: the caller's polling and
the driver it wakes) over the waits, less the same process sleeping as long (its poller thread's
connect attempts and the driver's own parks), with first waits side by side, alternated round by
round.

    python bench/sync_wait_cpu.py [--wait-ms 1] [--first-wait-us 0,500] [--waits 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, publish_report  # noqa: E402
from pyengine import jvm  # noqa: E402
from pyengine.client.match_client import CLIENT_DIR_PREFIX, SYNC_MAX_PARK_US  # noqa: E402
from pyengine.node.localcluster import free_port_base  # noqa: E402


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(client, waits: int, wait_ms: int, first_wait_us: int) -> tuple[float, float]:
    """CPU per wait less CPU per sleep as long, and the wall time per wait, both in us."""
    c0, w0 = cpu_s(), time.monotonic()
    for _ in range(waits):
        client.beginDirect()
        client.awaitDirect(wait_ms, SYNC_MAX_PARK_US, first_wait_us)
        client.endDirect()
    waiting = (cpu_s() - c0) / waits
    wall = (time.monotonic() - w0) / waits
    c0 = cpu_s()
    for _ in range(waits):
        time.sleep(wall)
    sleeping = (cpu_s() - c0) / waits
    return (waiting - sleeping) * 1e6, wall * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wait-ms", type=int, default=1, help="each wait (a round trip's length)")
    ap.add_argument("--first-wait-us", default="0,500", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--waits", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port-start", type=int, default=41000, help="where to look for a port nobody listens on")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "sync_wait_cpu.md")
    args = ap.parse_args(argv)
    jvm.start()
    import jpype

    env = environment()
    client = jpype.JClass("io.matchx.cluster.client.ClusterClient")(
        f"0=127.0.0.1:{free_port_base(args.port_start)}", f"{CLIENT_DIR_PREFIX}{os.getpid()}-waitcpu",
        "127.0.0.1", 2000, 5000, jpype.JArray(jpype.JByte)(b""), False)
    client.wakeDriver(True)  # MatchClient's default
    costs: dict[int, list[float]] = {fw: [] for fw in args.first_wait_us}
    walls: dict[int, list[float]] = {fw: [] for fw in args.first_wait_us}
    try:
        time.sleep(1.0)  # the driver and the poller started
        with MachineLoad() as load:
            for rnd in range(args.rounds):
                order = args.first_wait_us if rnd % 2 == 0 else args.first_wait_us[::-1]
                for fw in order:
                    cost, wall = measure(client, args.waits, args.wait_ms, fw)
                    costs[fw].append(cost)
                    walls[fw].append(wall)
                    print(f"round {rnd + 1}: first wait {fw} us: {cost:.0f} us of CPU per wait, "
                          f"{wall:.0f} us wall", flush=True)
    finally:
        client.close()
    lines = [
        "# A sync request's wait: the client's CPU while no answer has come",
        "",
        f"Command: `python bench/sync_wait_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Machine: {env}. **{load.summary()}**.",
        "",
        f"{args.waits} waits of {args.wait_ms} ms per round and first wait, {args.rounds} rounds alternated; "
        "each wait is `ClusterClient.awaitDirect` against an endpoint where no member listens (the wait "
        "of a caller whose answer has not come yet), with the driver wake-ups of `MatchClient`'s "
        "defaults. CPU per wait: the process's utime + stime over the waits, less the same process "
        "sleeping as long; median (range) over the rounds, in us.",
        "",
        "| first wait | CPU per wait, median (range) | wall per wait, median |",
        "|---|---|---|",
    ]
    for fw in args.first_wait_us:
        c = costs[fw]
        lines.append(f"| {fw} us | {statistics.median(c):.0f} ({min(c):.0f} to {max(c):.0f}) | "
                     f"{statistics.median(walls[fw]):.0f} |")
    return publish_report(args.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
