"""The Java->Python bridge and the full cluster path with a service that does nothing.

1. Crossing cost: a Java thread calls a ServiceHandler implemented in Python, (a) while this
   process's main thread waits inside Java (as a member's does), (b) while the main thread keeps
   running Python (what the design avoids: the callback waits for the GIL switch interval).
2. No-op throughput through a real 3-member cluster: `ping` admin commands (decoded, answered,
   remembered for dedupe, no engine work), at batch sizes 1, 16, 256 per cluster message.

    python bench/bridge_bench.py
Writes bench/reports/bridge.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyengine import jvm  # noqa: E402


def crossing_cost(iterations: int) -> tuple[float, float]:
    jvm.start()
    import jpype

    from bench.crossing_handler import service_handler

    def noop(s, t, p, n):
        return 0

    probe = jpype.JClass("io.matchx.cluster.CrossingProbe")
    parked = float(probe.measure(service_handler(noop), iterations))
    result = jpype.JArray(jpype.JDouble)(1)
    thread = probe.start(service_handler(noop), max(200, iterations // 100), result)
    while thread.isAlive():  # the main thread stays in Python, polling
        sum(range(100))
    busy = float(result[0])
    return parked, busy


def noop_throughput(seconds: float) -> list[tuple[int, float, float]]:
    from pyengine.client import MatchClient
    from pyengine.node.localcluster import LocalCluster, free_port_base
    from pyengine.node.settings import ClusterLayout

    rows = []
    with tempfile.TemporaryDirectory(prefix="matchx-bridge-") as tmp:
        cluster = LocalCluster(ClusterLayout(base_dir=Path(tmp), port_base=free_port_base(27000)), "WARNING")
        cluster.start()
        try:
            cluster.await_leader(60)
            with MatchClient(cluster.ingress_endpoints()) as client:
                assert client.wait_connected(30)
                for batch in (1, 16, 256):
                    done = 0
                    batches0 = client.stats.sent_batches
                    t0 = time.monotonic()
                    while time.monotonic() - t0 < seconds:
                        futs = [client.submit_admin({"op": "ping"}) for _ in range(batch)]
                        for f in futs:
                            f.result(30)
                        done += batch
                    dt = time.monotonic() - t0
                    msgs = client.stats.sent_batches - batches0
                    rows.append((batch, done / dt, msgs / dt))
                    print(f"batch {batch:>4}: {done / dt:>9.0f} commands/s, {msgs / dt:>7.0f} cluster messages/s",
                          flush=True)
        finally:
            cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "bridge.md")
    args = ap.parse_args(argv)
    parked, busy = crossing_cost(args.iterations)
    print(f"crossing Java->Python: {parked / 1000:.2f} us with the main thread parked in Java, "
          f"{busy / 1000:.0f} us with the main thread running Python", flush=True)
    rows = noop_throughput(args.seconds)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        "# Bridge crossing and no-op cluster throughput\n\n"
        "Command: `python bench/bridge_bench.py` (3 members and the client on one 2-core machine).\n\n"
        f"- Java->Python crossing (JPype proxy, primitives only): **{parked / 1000:.2f} us** per call "
        f"with the main thread parked in Java; **{busy / 1000:.0f} us** when the main thread runs Python "
        "(each callback waits for the GIL switch interval). Members park their main thread in Java.\n\n"
        "No-op service (`ping`: decoded, answered, remembered for dedupe) through the full path "
        "client -> leader -> Raft log -> every member's Python service -> reply; closed loop, one client:\n\n"
        "| commands per cluster message | commands/s | cluster messages/s |\n|---|---|---|\n"
        + "".join(f"| {b} | {c:.0f} | {m:.0f} |\n" for b, c, m in rows)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
