"""The SDK's own Python per single order, in-process, CPU time of the thread that runs it (#20).

No cluster: a real ``MatchClient`` (JVM, embedded media driver) whose endpoint no member listens
on. Per command, each on the measuring thread, so no hand-over is in the figure:

* ``submit``: what a caller's ``submit()`` costs (JSON, the pending entry, its future, the queue);
* ``offer``: the send thread's part (``_offer``: frame, ``byte[]``, the JPype call; with no
  session the Java side answers at once, so Aeron's offer and the driver's send are not in it);
* ``answer``: the receive thread's part for one answer (``_dispatch`` of a poll's bytes: split,
  decode, the pending entry, JSON, the future resolved with a done-callback as the latency bench
  sets), one answer per poll and ``--batch`` answers per poll.

What the cluster run adds on top (thread wake-ups, Aeron, the driver) is the difference to the
client's CPU per order in ``bench/latency.py``'s per-thread profile.

    python bench/client_python_cpu.py [--commands 20000] [--batch 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import sys
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from bench.common import MachineLoad, environment, publish_report  # noqa: E402
from pyengine.client.match_client import EVENT_MESSAGE, MatchClient, _Pending  # noqa: E402
from pyengine.node.localcluster import free_port_base  # noqa: E402
from pyengine.wire import protocol  # noqa: E402
from pyengine.wire.protocol import Answer, Channel, Status  # noqa: E402

PLACE = {"op": "place", "account": "a0", "symbol": "BTC-USD", "side": "buy", "price": "90.00",
         "qty": "0.001", "client_order_id": "x1"}
# a resting place's answer as the service sends it (one accepted event)
ANSWER = orjson.dumps([{"type": "accepted", "order_id": 123456, "client_order_id": "x1", "symbol": "BTC-USD",
                        "side": "buy", "price": "90.00", "qty": "0.001", "ts": 1}])


def thread_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime


def answers_blob(first_id: int, count: int) -> bytes:
    """A poll's bytes: ``count`` reply messages (one answer each, as single orders come back)."""
    out = []
    for rid in range(first_id, first_id + count):
        body = protocol.encode_reply([Answer(rid, Status.OK, ANSWER)])
        out.append(struct.pack("<BI", EVENT_MESSAGE, len(body)) + body)
    return b"".join(out)


def per_command_us(client: MatchClient, stage: str, n: int, batch: int) -> float:
    done = [0]

    def callback(_fut) -> None:
        done[0] += 1

    if stage == "submit":
        t0 = thread_cpu_s()
        for _ in range(n):
            client.submit(PLACE)
        return 1e6 * (thread_cpu_s() - t0) / n
    if stage == "offer":
        payload = orjson.dumps(PLACE)
        pending = [_Pending(i, Channel.ENGINE_JSON, payload, Future()) for i in range(n)]
        t0 = thread_cpu_s()
        for p in pending:
            client._offer([p], wait=False)
        return 1e6 * (thread_cpu_s() - t0) / n
    # answer: pending entries first (not timed), then their answers, `batch` per poll
    first = 1_000_000_000
    payload = orjson.dumps(PLACE)
    for rid in range(first, first + n):
        p = _Pending(rid, Channel.ENGINE_JSON, payload, Future())
        p.future.add_done_callback(callback)
        client._pending[rid] = p
    blobs = [answers_blob(rid, batch) for rid in range(first, first + n, batch)]
    t0 = thread_cpu_s()
    for blob in blobs:
        client._dispatch(blob)
    used = thread_cpu_s() - t0
    assert done[0] == n, done[0]
    return 1e6 * used / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=16, help="answers per poll in the batched answer stage")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port-start", type=int, default=41000, help="where to look for a port nobody listens on")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "client_python_cpu.md")
    args = ap.parse_args(argv)
    env = environment()
    stages = [("submit", 1), ("offer", 1), ("answer", 1), ("answer", args.batch)]
    figures: dict[tuple[str, int], list[float]] = {s: [] for s in stages}
    client = MatchClient(f"0=127.0.0.1:{free_port_base(args.port_start)}", connect_timeout_ms=500)
    try:
        time.sleep(1.0)  # the client's threads started
        with MachineLoad() as load:
            for rnd in range(args.rounds):
                for stage, batch in stages:
                    figures[(stage, batch)].append(per_command_us(client, stage, args.commands, batch))
                with client._lock:
                    client._pending.clear()  # the submits' entries: never answered here
                print(f"round {rnd + 1}: " + ", ".join(f"{s}/{b} {figures[(s, b)][-1]:.2f} us"
                                                       for s, b in stages), flush=True)
    finally:
        client.close()
    lines = [
        "# The SDK's Python per single order, in-process (CPU time)",
        "",
        f"Command: `python bench/client_python_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        f"Machine: {env}, pid {os.getpid()}. **{load.summary()}**.",
        "",
        f"{args.commands:,} commands per stage and round, {args.rounds} rounds; a real MatchClient with no "
        "session (no member listens), each stage on the measuring thread: its CPU time (RUSAGE_THREAD) per "
        "command, median (range) over the rounds, in us. Thread wake-ups, Aeron's offer and poll and the "
        "driver are not in these: they need a cluster (bench/latency.py's per-thread profile).",
        "",
        "| stage | per command, median (range) |",
        "|---|---|",
    ]
    names = {"submit": "caller: `submit()`",
             "offer": "send thread: `_offer` (frame, `byte[]`, JPype call)",
             "answer": "receive thread: `_dispatch`, future resolved"}
    for stage, batch in stages:
        v = figures[(stage, batch)]
        label = names[stage] + (f", {batch} answers per poll" if stage == "answer" else "")
        lines.append(f"| {label} | {statistics.median(v):.2f} ({min(v):.2f} to {max(v):.2f}) |")
    return publish_report(args.report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
