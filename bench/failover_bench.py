"""Failover time: leader SIGKILL -> first reply from the new leader, seen by the client.

A client sends a steady stream of requests (one every --interval-ms) to a 3-member cluster on
loopback; each trial SIGKILLs the current leader, measures until the first answer that arrives
after the kill (it can only come from the new leader), restarts the killed member, waits until
it has caught up, and goes again. Prints every trial and writes bench/reports/failover.md.

    python bench/failover_bench.py --trials 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyengine.node.localcluster import LocalCluster, free_port_base, wait_for  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=Timeouts.heartbeat_timeout_ms)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=Timeouts.heartbeat_interval_ms)
    ap.add_argument("--election-timeout-ms", type=int, default=Timeouts.election_timeout_ms)
    ap.add_argument("--election-status-interval-ms", type=int, default=Timeouts.election_status_interval_ms)
    ap.add_argument("--settle-s", type=float, default=3.0)
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "failover.md")
    args = ap.parse_args(argv)

    from pyengine.client import MatchClient

    timeouts = Timeouts(heartbeat_interval_ms=args.heartbeat_interval_ms,
                        heartbeat_timeout_ms=args.heartbeat_timeout_ms,
                        election_timeout_ms=args.election_timeout_ms,
                        election_status_interval_ms=args.election_status_interval_ms)
    with tempfile.TemporaryDirectory(prefix="matchx-failover-") as tmp:
        layout = ClusterLayout(base_dir=Path(tmp), port_base=free_port_base(24000), timeouts=timeouts)
        cluster = LocalCluster(layout, log_level="WARNING")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        cluster.start()
        client = None
        results: list[float] = []
        try:
            cluster.await_leader(60)
            cluster.await_followers(2)
            client = MatchClient(cluster.ingress_endpoints())
            assert client.wait_connected(30), client.last_error
            answers: list[tuple[float, float]] = []  # (sent, answered)
            lock = threading.Lock()
            stop = threading.Event()
            sent = [0]

            def pump():
                while not stop.is_set():
                    t_sent = time.monotonic()

                    def on_done(_f, t_sent=t_sent):
                        with lock:
                            answers.append((t_sent, time.monotonic()))

                    client.submit_admin({"op": "ping"}).add_done_callback(on_done)
                    sent[0] += 1
                    time.sleep(args.interval_ms / 1000)

            pumper = threading.Thread(target=pump, daemon=True)
            pumper.start()
            time.sleep(1.0)
            for trial in range(1, args.trials + 1):
                leader = cluster.await_leader(30)
                cluster.await_followers(2, 60)
                time.sleep(args.settle_s)  # a restarted member warms up (JIT) before the next kill
                killed_at = time.monotonic()
                cluster.kill(leader)
                # Only a request sent after the kill proves the new leader answers.
                def answered_after(killed_at=killed_at):
                    return next((a for s, a in answers[-5000:] if s > killed_at), None)

                first = wait_for(answered_after, 60, "an answer from the new leader")
                gap_ms = (first - killed_at) * 1000
                new_leader = cluster.await_leader(30, exclude=leader)
                results.append(gap_ms)
                print(f"trial {trial:>2}: killed member {leader}, member {new_leader} leads, "
                      f"first answer after {gap_ms:7.1f} ms", flush=True)
                cluster.start_member(leader)
            stop.set()
            pumper.join(5)
            wait_for(lambda: client.pending_count() == 0, 30, "every request answered")
            lost = sent[0] - len(answers)
        finally:
            if client is not None:
                client.close()
            cluster.stop()

    med, worst = statistics.median(results), max(results)
    p90 = sorted(results)[max(0, int(len(results) * 0.9) - 1)]
    summary = (f"{len(results)} trials: median {med:.0f} ms, p90 {p90:.0f} ms, max {worst:.0f} ms; "
               f"{sent[0]} requests sent, {lost} unanswered")
    print(summary)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        "# Failover: leader SIGKILL -> first reply from the new leader\n\n"
        f"Command: `python bench/failover_bench.py --trials {args.trials}`  \n"
        f"Settings: heartbeat interval {timeouts.heartbeat_interval_ms} ms, heartbeat timeout "
        f"{timeouts.heartbeat_timeout_ms} ms, election timeout {timeouts.election_timeout_ms} ms, "
        f"election status interval "
        f"{timeouts.election_status_interval_ms} ms, SETUP repeat {timeouts.setup_repeat_ms} ms; "
        f"client request every {args.interval_ms} ms; 3 members + client on one 2-core machine.\n\n"
        f"**{summary}**\n\n| trial | ms |\n|---|---|\n"
        + "".join(f"| {i} | {v:.1f} |\n" for i, v in enumerate(results, 1))
    )
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
