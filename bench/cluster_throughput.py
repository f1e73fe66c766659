"""Throughput and latency of a 3-member replicated cluster (engine executing on every member).

    .venv/bin/python bench/cluster_throughput.py                       # full run, writes the report
    .venv/bin/python bench/cluster_throughput.py --rates 1000,5000 --duration-s 10 --saturate-s 0

What it does, on loopback, with the members as separate processes (LocalCluster):

1. setup: 4 symbols (tick 0.01, lot 0.001), ``--accounts`` accounts funded in USD and every base;
2. saturation (closed loop): ``--clients`` client processes each keep ``--window`` orders
   outstanding for ``--saturate-s`` seconds; the answer rate is the most the cluster sustains;
3. open loop, for each of ``--rates``: client processes send the seeded order flow
   (bench/common.py OrderFlow: 65 % new orders of which some cross, 28 % cancels, 7 % amends)
   with ``MatchClient.submit_binary`` at a fixed schedule; latency is measured from each
   order's *planned* send time to its answer (no coordinated omission) into HdrHistograms,
   which the client processes encode and this process merges. A rate is *kept* when the
   generator kept to its schedule and no backlog was left at the end, and *held* when it is
   kept and p99 is under ``--p99-bound-ms``. Rates above the first one not kept are skipped.
4. per-process and per-thread CPU (from /proc) of the members and the clients for every phase,
   the system-wide CPU, and a check that all three members applied the same commands and reached
   the same engine state hash.

Every client process is its own MatchClient (own JVM and embedded media driver); the parent
process never starts a JVM. ``--profile-s`` additionally samples the leader with py-spy (if
installed) during the saturation phase. Before the cluster starts, ``components()`` measures
the CPU cost per order of each piece in isolation.

A bench-only experiment for a proposal in docs/performance.md: ``--client-variant proposed``
uses a MatchClient subclass whose send loop lingers to coalesce orders.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    CpuMeter,
    MachineLoad,
    OrderFlow,
    bench_cluster,
    build_bulk,
    bulk_ops,
    environment,
    hist_summary,
    jar_cleanup,
    log,
    new_histogram,
    setup_commands,
)

REPORT = Path(__file__).parent / "reports" / "cluster_throughput.md"


# ============================================================================ client worker


def proposed_client_class(linger_s: float):
    """Bench-only MatchClient whose send loop lingers up to ``linger_s`` after the first queued
    command to coalesce more into one cluster message (at low rates every order is otherwise its
    own message, and per-message costs dominate on the members). The proposal in
    docs/performance.md; pyengine/client/match_client.py does not linger.
    """
    import queue

    from pyengine.client.match_client import _RESEND_ALL, MAX_BATCH_BYTES, MatchClient
    from pyengine.wire import protocol

    class ProposedClient(MatchClient):
        def _send_loop(self) -> None:
            while True:
                try:
                    first = self._outbox.get(timeout=self.resend_after_s / 4)
                except queue.Empty:
                    self._resend_stale()
                    continue
                if first is None:
                    return
                if first is _RESEND_ALL:
                    self._resend_stale(everything=True)
                    continue
                batch = [first]
                size = len(first.payload)
                deadline = time.monotonic() + linger_s
                while size < MAX_BATCH_BYTES and len(batch) < protocol.MAX_BATCH:
                    left = deadline - time.monotonic()
                    try:
                        nxt = self._outbox.get(timeout=left) if left > 0 else self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None or nxt is _RESEND_ALL:
                        self._outbox.put(nxt)
                        break
                    batch.append(nxt)
                    size += len(nxt.payload)
                self._send(batch)
                self._resend_stale()

    return ProposedClient


def _connect(spec: dict):
    from pyengine.client import MatchClient

    cls = MatchClient
    if spec.get("variant") == "proposed":
        cls = proposed_client_class(spec.get("linger_s", 0.001))
    # A long resend interval: under overload a resend would only add load (answers still come).
    client = cls(spec["endpoints"], resend_after_s=spec.get("resend_after_s", 30.0))
    if not client.wait_connected(60):
        raise SystemExit(f"worker could not connect: {client.last_error}")
    return client


def worker_setup(spec: dict) -> dict:
    client = _connect(spec)
    try:
        cmds = setup_commands(spec["accounts"])
        futs = [client.submit(c) for c in cmds]
        bad = 0
        for f in futs:
            ev = f.result(60).events
            if not ev or ev[0]["type"] == "rejected":
                bad += 1
        return {"setup_commands": len(cmds), "rejected": bad}
    finally:
        client.close()


def worker_verify(spec: dict) -> dict:
    client = _connect(spec)
    try:
        reply = client.admin({"op": "state_hash"}, timeout=60)
        return {"leader_hash": reply.events}
    finally:
        client.close()


def _sample_backlog(outstanding, stop: threading.Event, series: list, t0: float) -> None:
    while not stop.wait(0.5):
        series.append((round(time.monotonic() - t0, 1), outstanding()))


_EVENT_NAMES = ("rejected", "accepted", "trade", "cancelled", "amended", "duplicate")


def worker_open(spec: dict) -> dict:
    """Open loop: order i is planned at start + i/rate; latency = answer time - planned time."""
    rate, duration, warmup = spec["rate"], spec["duration_s"], spec["warmup_s"]
    flow = OrderFlow(spec["seed"], spec["accounts"], spec["tag"])
    n_warm = int(rate * warmup)
    n = n_warm + int(rate * duration)
    cmds = flow.take(n)
    bulk = spec.get("api") == "bulk"
    ops = bulk_ops(cmds, {}, spec["seed"] * 10**8) if bulk else []
    bulk_max, linger = spec.get("bulk_max", 512), spec.get("bulk_linger_s", 0.001)
    client = _connect(spec)
    from pyengine.wire.codec import encode_command

    encode_command(cmds[0])  # import and warm before the clock starts
    if bulk:
        build_bulk(ops[:2]).encode()
    lat = new_histogram()
    lag = new_histogram()
    rec, lag_rec = lat.record_value, lag.record_value
    clock = time.monotonic
    answered = [0]
    first_types: dict[str, int] = {}
    errors = [0]

    def done(fut, planned: float, measured: bool) -> None:
        now = clock()
        answered[0] += 1
        if fut.exception() is not None:
            errors[0] += 1
            return
        if measured:
            rec(max(1, int((now - planned) * 1e6)))
        ev = fut.result().events
        t = ev[0]["type"] if ev else "none"
        first_types[t] = first_types.get(t, 0) + 1

    def done_bulk(fut, first: int, end: int) -> None:
        """A bulk's answer: orders first..end-1, each measured from its own planned time."""
        now = clock()
        answered[0] += end - first
        if fut.exception() is not None:
            errors[0] += end - first
            return
        for k in range(max(first, n_warm), end):
            rec(max(1, int((now - start - k * interval) * 1e6)))
        for evs in fut.result().events:
            t = _EVENT_NAMES[evs[0][0]] if evs else "none"
            first_types[t] = first_types.get(t, 0) + 1

    def outstanding() -> int:
        return i - answered[0] if bulk else client.pending_count()

    # wait for the common start time (wall clock: the client processes and the parent agree)
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    start = clock()
    stop = threading.Event()
    backlog: list = []
    interval = 1.0 / rate
    submit = client.submit_binary
    sleep = time.sleep
    i = 0
    sampler = threading.Thread(target=_sample_backlog, args=(outstanding, stop, backlog, start), daemon=True)
    sampler.start()
    while i < n:
        now = clock()
        due = min(n, int((now - start) / interval) + 1)
        if bulk:
            # everything due leaves as one bulk (at most bulk_max orders), then wait at least
            # the linger: the orders of a bulk are measured from their own planned times
            while i < due:
                j = min(due, i + bulk_max)
                t_send = clock()
                fut = client.submit_bulk(build_bulk(ops[i:j]))
                for k in range(max(i, n_warm), j):
                    lag_rec(max(1, int((t_send - start - k * interval) * 1e6)))
                fut.add_done_callback(lambda f, a=i, b=j: done_bulk(f, a, b))
                i = j
            sleep(max(linger, start + i * interval - clock()))
            continue
        while i < due:
            planned = start + i * interval
            t_send = clock()
            fut = submit(cmds[i])
            measured = i >= n_warm
            if measured:
                lag_rec(max(1, int((t_send - planned) * 1e6)))
            fut.add_done_callback(lambda f, p=planned, m=measured: done(f, p, m))
            i += 1
        nxt = start + i * interval - clock()
        if nxt > 0:
            sleep(nxt)
    send_end = clock()
    pending_at_end = outstanding()
    deadline = clock() + spec.get("drain_s", 60)
    while outstanding() and clock() < deadline:
        sleep(0.05)
    drained = clock()
    stop.set()
    sampler.join(2)
    stats = client.stats
    result = {
        "rate": rate, "sent": n, "measured": n - n_warm, "answered": answered[0], "errors": errors[0],
        "unanswered": outstanding(), "pending_at_end": pending_at_end,
        "send_s": send_end - start, "drain_s": drained - send_end,
        "batches": stats.sent_batches, "resent": stats.resent,
        "latency": lat.encode().decode(), "send_lag": lag.encode().decode(),
        "first_event": first_types, "flow": flow.kinds, "backlog": backlog,
    }
    client.close()
    return result


def worker_saturate(spec: dict) -> dict:
    """Closed loop: keep ``window`` orders outstanding; count answers per second."""
    duration, warmup, window = spec["duration_s"], spec["warmup_s"], spec["window"]
    flow = OrderFlow(spec["seed"], spec["accounts"], spec["tag"])
    client = _connect(spec)
    bulk = spec.get("api") == "bulk"
    per_send = spec.get("bulk_max", 512) if bulk else 1  # orders per submit
    sem = threading.Semaphore(max(1, window // per_send))
    answered = [0]
    lock = threading.Lock()
    coids: dict[str, int] = {}

    def done(_f) -> None:
        with lock:
            answered[0] += per_send
        sem.release()

    # The order generator is the bench's own work, not the SDK's: generated before the clock
    # starts (for the expected rate), so it does not take CPU from the cluster under test.
    chunk = 20_000 - 20_000 % per_send
    pregen = []
    for _ in range(int(spec.get("pregen_orders", 0)) // chunk + 1):
        cmds = flow.take(chunk)
        pregen.append(bulk_ops(cmds, coids, spec["seed"] * 10**8) if bulk else cmds)
    k = 0
    buf: list = []
    j = 0
    submit = client.submit_bulk if bulk else client.submit_binary
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    late_s = max(0.0, -delay)  # > 0: generating the flow took longer than the lead time
    t0 = time.monotonic()
    end = t0 + warmup + duration
    per_second: list[int] = []
    next_mark = t0 + 1.0
    last = 0
    sent = 0
    while True:
        now = time.monotonic()
        if now >= next_mark:
            per_second.append(answered[0] - last)
            last = answered[0]
            next_mark += 1.0
            if now >= end:
                break
        if not sem.acquire(timeout=0.05):
            continue
        if j == len(buf):
            if k < len(pregen):
                buf, k = pregen[k], k + 1
            else:  # ran past the pre-generated flow: generate on the go
                buf = flow.take(chunk)
                if bulk:
                    buf = bulk_ops(buf, coids, spec["seed"] * 10**8)
            if bulk:
                buf = [build_bulk(ops) for ops in chunks(buf, per_send)]  # the SDK's work: measured
            j = 0
        submit(buf[j]).add_done_callback(done)
        j += 1
        sent += per_send
    w = int(warmup)
    steady = per_second[w:]
    deadline = time.monotonic() + 60
    while client.pending_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    result = {"sent": sent, "answered": answered[0], "per_second": per_second,
              "steady_rate": sum(steady) / max(1, len(steady)), "batches": client.stats.sent_batches,
              "unanswered": client.pending_count() * per_send, "late_s": late_s}
    client.close()
    return result


def chunks(items: list, size: int) -> list[list]:
    return [items[k:k + size] for k in range(0, len(items), size)]


def worker_main(spec_json: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(spec_json)
    fn = {"setup": worker_setup, "open": worker_open, "saturate": worker_saturate,
          "verify": worker_verify}[spec["mode"]]
    out = fn(spec)
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the JVM's non-daemon threads must not keep the worker alive


# ============================================================================ parent


def spawn(spec: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"client worker {proc.pid} timed out; stderr: {err[-2000:]}") from None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"client worker {proc.pid} failed (rc {proc.returncode}): {err[-3000:]}")


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def run_phase(cluster, specs: list[dict], timeout: float, lead_delay: float, on_spawn=None):
    """Starts the client processes, measures CPU from the common start time to the end of
    sending, and returns (results, cpu meter, system busy %)."""
    start_at = time.time() + lead_delay
    for s in specs:
        s["start_at"] = start_at
    procs = [spawn(s) for s in specs]
    if on_spawn is not None:
        on_spawn(procs)
    pids = {f"member {m}": p for m, p in cluster.pids().items()}
    pids.update({f"client {i}": p.pid for i, p in enumerate(procs)})
    meter = CpuMeter(pids)
    time.sleep(max(0.0, start_at - time.time()))
    meter.start()
    pos0 = log_positions(cluster)
    sys0 = system_cpu()
    measure_for = specs[0].get("warmup_s", 0) + specs[0]["duration_s"]
    t_end = time.monotonic() + measure_for
    while time.monotonic() < t_end:
        time.sleep(min(5.0, t_end - time.monotonic()))
        left = t_end - time.monotonic()
        if left > 1:
            log(f"  ... {measure_for - left:.0f}/{measure_for:.0f} s")
    meter.stop()
    pos1 = log_positions(cluster)
    # how far each member's service got through the log in the phase, relative to the furthest:
    # a follower below 1.0 was falling behind (its backlog is work still owed at the end)
    moved = {m: pos1[m] - pos0[m] for m in pos0 if m in pos1}
    top = max(moved.values(), default=0)
    meter.pace = {m: (v / top if top else 1.0) for m, v in moved.items()}
    sys1 = system_cpu()
    busy = 100 * (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1])
    results = [collect(p, timeout) for p in procs]
    # CPU of everything else on the machine (other people's processes), in % of one core
    meter.others = max(0.0, busy * (os.cpu_count() or 2) - sum(meter.percent().values()))
    return results, meter, busy


def wait_until_members_agree(cluster, timeout: float) -> None:
    """Until every member's service is at the same log position (no work still owed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pos = log_positions(cluster)
        if len(set(pos.values())) == 1:
            time.sleep(0.5)  # status files are refreshed every 200 ms: confirm
            if log_positions(cluster) == pos:
                return
        time.sleep(0.2)
    raise TimeoutError(f"members still at different log positions after {timeout:.0f} s: {log_positions(cluster)}")


def log_positions(cluster) -> dict[int, int]:
    """Each member's service log position (status files, refreshed every 200 ms)."""
    return {m: int(st.get("log_position", 0)) for m, st in enumerate(cluster.status())}


def cpu_lines(meter: CpuMeter, leader: int) -> list[str]:
    pct = meter.percent()
    lines = [f"cluster + clients together: {sum(pct.values()):.0f}% of a core; everything else on the machine: "
             f"{meter.others:.0f}% of a core"]
    for k in sorted(pct):
        extra = ""
        if k.startswith("member"):
            m = int(k.split()[1])
            role = "leader" if m == leader else "follower"
            top = ", ".join(f"{n} {v:.0f}%" for n, v in meter.top_threads(k, 5))
            extra = f" ({role}; threads: {top})"
        else:
            top = ", ".join(f"{n} {v:.0f}%" for n, v in meter.top_threads(k, 4))
            extra = f" (threads: {top})"
        lines.append(f"{k}: {pct[k]:.0f}% of a core{extra}")
    return lines


def merge(encoded: list[str]):
    from hdrh.histogram import HdrHistogram

    h = new_histogram()
    for e in encoded:
        h.add(HdrHistogram.decode(e.encode()))
    return h


def profile_leader(pid: int, seconds: float, out: Path) -> dict | None:
    """py-spy samples (200 Hz) of the leader's Python frames, all threads. Returns the share of
    wall time each function was on a stack (inclusive) and at the top of one (self)."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return None
    rate = 200
    raw = out.with_suffix(".txt")
    proc = subprocess.run([str(spy), "record", "--pid", str(pid), "-d", str(int(seconds)), "-r", str(rate),
                           "-f", "raw", "-o", str(raw), "--nonblocking"],
                          capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or not raw.exists():
        log(f"py-spy failed: {proc.stderr[-400:]}")
        return None
    self_counts: dict[str, int] = {}
    incl: dict[str, int] = {}
    active = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        if not frames:
            continue
        active += n
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    raw.unlink(missing_ok=True)
    wall = rate * seconds
    return {"seconds": seconds, "active_pct": 100 * active / wall,
            "self": [(k, 100 * v / wall) for k, v in sorted(self_counts.items(), key=lambda kv: -kv[1])[:15]],
            "inclusive": [(k, 100 * v / wall) for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:20]]}


def components(n: int = 40_000, accounts: int = 200) -> list[tuple[str, float, str]]:
    """CPU cost (time.process_time, so other load on the machine does not count) per order of the
    pieces an order goes through, each in isolation in this process. Returns
    (what, µs per order, note)."""
    import gc

    import orjson

    from pyengine.engine import Engine
    from pyengine.service.matching import MatchingService, ReplyCache
    from pyengine.wire import protocol
    from pyengine.wire.codec import decode_command, decode_events, encode_command, encode_events
    from pyengine.wire.protocol import Channel, Command

    eng = Engine()
    for c in setup_commands(accounts):
        eng.apply(c, 1)
    flow = OrderFlow(99, accounts, "iso")
    for c in flow.take(20_000):
        eng.apply(c, 2)
    snap = eng.snapshot()
    cmds = flow.take(n)
    enc = [encode_command(c) for c in cmds]
    B = 100
    msgs = [protocol.encode_request(7, [Command(i + j + 1, Channel.ENGINE_BINARY, enc[i + j]) for j in range(B)])
            for i in range(0, n - n % B, B)]
    out: list[tuple[str, float, str]] = []

    def cpu(fn, reps: int = 3) -> float:
        best = float("inf")
        for _ in range(reps):
            gc.collect()
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        return best / n * 1e6

    def cpu_fresh(fn, reps: int = 3) -> float:
        best = float("inf")
        for _ in range(reps):
            x = Engine.restore(snap)
            gc.collect()
            t0 = time.process_time()
            fn(x)
            best = min(best, time.process_time() - t0)
        return best / n * 1e6

    out.append(("encode_command (client, submit_binary)", cpu(lambda: [encode_command(c) for c in cmds]), ""))
    out.append(("decode_command (member)", cpu(lambda: [decode_command(e) for e in enc]), ""))
    e2 = Engine.restore(snap)
    ev = [e2.apply(c, 3) for c in cmds]
    out.append(("Engine.apply (dict in, events out; no codec)", cpu_fresh(lambda x: [x.apply(c, 3) for c in cmds]),
                ""))
    out.append(("encode_events (member)", cpu(lambda: [encode_events(x) for x in ev]), ""))
    blobs = [encode_events(x) for x in ev]
    out.append(("decode_events (client, every answer)", cpu(lambda: [decode_events(b) for b in blobs]), ""))
    out.append(("orjson.dumps(events) (alternative)", cpu(lambda: [orjson.dumps(x) for x in ev]), ""))
    js = [orjson.dumps(x) for x in ev]
    out.append(("orjson.loads(events) (alternative)", cpu(lambda: [orjson.loads(b) for b in js]), ""))
    out.append(("Engine.apply_encoded (decode + apply + encode)",
                cpu_fresh(lambda x: [x.apply_encoded(p, 3) for p in enc]), ""))

    def service_run(cache_cls, prefill: int) -> float:
        svc = MatchingService()
        svc.engine = Engine.restore(snap)
        svc.replies = cache_cls(50_000)
        for r in range(prefill):
            svc.replies.put(7, -prefill + r, 0, b"x")  # older request ids of the same client
        gc.collect()
        t0 = time.process_time()
        for i, m in enumerate(msgs):
            svc.on_message(1, 1000, i, m)
        return (time.process_time() - t0) / (len(msgs) * B) * 1e6

    out.append(("MatchingService.on_message, batch 100, client's first 50k requests",
                service_run(ReplyCache, 0), "what a member does per order"))
    out.append(("MatchingService.on_message, batch 100, client past 50k requests",
                service_run(ReplyCache, 50_000), "reply cache evicting (steady state)"))

    def put_cost(cache_cls) -> float:
        c = cache_cls(50_000)
        for r in range(1, 50_001):
            c.put(7, r, 0, b"x")
        t0 = time.process_time()
        for r in range(50_001, 50_001 + n):
            c.put(7, r, 0, b"x")
        return (time.process_time() - t0) / n * 1e6

    out.append(("ReplyCache.put, full window (OrderedDict eviction)", put_cost(ReplyCache), ""))
    import hashlib

    chain = b"\0" * 16
    t0 = time.process_time()
    for p in enc:
        chain = hashlib.blake2b(chain + p, digest_size=16).digest()
    out.append(("sequence hash chain (blake2b per command)", (time.process_time() - t0) / n * 1e6, ""))
    replies = [protocol.encode_reply([protocol.Answer(i + j, 0, blobs[i + j]) for j in range(B)])
               for i in range(0, n - n % B, B)]
    out.append(("protocol.encode_request (client, per order)",
                cpu(lambda: [protocol.encode_request(7, [Command(i + j + 1, Channel.ENGINE_BINARY, enc[i + j])
                                                         for j in range(B)]) for i in range(0, n - n % B, B)]), ""))
    out.append(("protocol.decode_reply (client, per answer)", cpu(lambda: [protocol.decode_reply(r) for r in replies]),
                ""))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--rates", default="250,500,1000,2000,5000,10000,20000,50000")
    ap.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per rate")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds before each rate")
    ap.add_argument("--clients", type=int, default=1, help="client processes (each its own MatchClient/JVM)")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--p99-bound-ms", type=float, default=100.0)
    ap.add_argument("--saturate-s", type=float, default=20.0, help="closed-loop phase (0 = skip)")
    ap.add_argument("--window", type=int, default=4000, help="outstanding orders per client when saturating")
    ap.add_argument("--profile-s", type=float, default=0.0, help="py-spy the leader this long while saturating")
    ap.add_argument("--no-components", action="store_true", help="skip the in-process component costs")
    ap.add_argument("--client-variant", choices=("sdk", "proposed"), default="sdk",
                    help="proposed = a bench-only MatchClient subclass with the changes proposed in the report")
    ap.add_argument("--linger-ms", type=float, default=1.0, help="send-loop linger of the proposed variant")
    ap.add_argument("--api", choices=("binary", "bulk"), default="binary",
                    help="binary = one command per order (submit_binary); bulk = many orders per command "
                         "(submit_bulk, ticks and lots)")
    ap.add_argument("--bulk-max", type=int, default=512, help="orders per bulk (at most; saturation: exactly)")
    ap.add_argument("--bulk-linger-ms", type=float, default=1.0,
                    help="open loop with bulks: the sender waits at least this long between bulks")
    ap.add_argument("--pregen-rate", type=int, default=120_000,
                    help="saturation: orders/s worth of flow generated before the clock starts")
    ap.add_argument("--idle-min-park-us", type=int, help="members' idle strategy: first park (default: the layout's)")
    ap.add_argument("--idle-yields", type=int, help="members' idle strategy: sched_yield calls before parking")
    ap.add_argument("--port-start", type=int, default=41000)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    rates = [int(r) for r in args.rates.split(",") if r]
    env = environment()
    log(f"environment: {env}")
    comps = []
    if not args.no_components:
        log("component costs in isolation (CPU time per order, this process) ...")
        comps = components()
        for what, us, note in comps:
            log(f"  {what:<72} {us:7.2f} µs {note}")
    rows: list[dict] = []
    sat: dict | None = None
    profile = None
    verify: dict = {}
    machine = MachineLoad().__enter__()
    layout_kw = {k: v for k, v in (("idle_min_park_us", args.idle_min_park_us), ("idle_yields", args.idle_yields))
                 if v is not None}
    with bench_cluster("tput", args.port_start, **layout_kw) as cluster:
        endpoints = cluster.ingress_endpoints()
        leader = cluster.await_leader(30)
        log(f"cluster up (leader member {leader}); setup: 4 symbols, {args.accounts} funded accounts")
        base = {"endpoints": endpoints, "accounts": args.accounts, "variant": args.client_variant,
                "linger_s": args.linger_ms / 1000, "api": args.api, "bulk_max": args.bulk_max,
                "bulk_linger_s": args.bulk_linger_ms / 1000}
        res = collect(spawn({**base, "mode": "setup"}), 300)
        log(f"setup done: {res}")

        if args.saturate_s > 0:
            log(f"saturation: {args.clients} client(s), {args.window} outstanding each, "
                f"{args.saturate_s:.0f} s (+3 s warm-up)")
            specs = [{**base, "mode": "saturate", "duration_s": args.saturate_s, "warmup_s": 3.0,
                      "pregen_orders": args.pregen_rate * (args.saturate_s + 3.0),
                      "window": args.window, "seed": 1000 + c, "tag": f"s{c}-"} for c in range(args.clients)]
            prof_threads: list[threading.Thread] = []
            prof_out: dict[str, dict | None] = {}
            # py-spy the last --profile-s seconds of the phase: the client is past its first 50k
            # requests by then (steady state of the reply cache)
            # time for the JVM to start and the flow to be generated before the clock starts
            # (~4 µs per pre-generated order)
            lead = 10.0 + 4e-6 * args.pregen_rate * (args.saturate_s + 3.0)
            prof_delay = lead + 3.0 + max(0.0, args.saturate_s - args.profile_s - 1.0)

            def on_spawn(procs) -> None:
                if args.profile_s <= 0:
                    return
                targets = {"leader": cluster.pids()[leader], "client": procs[0].pid}
                for name, pid in targets.items():
                    def prof(name=name, pid=pid):
                        time.sleep(prof_delay)
                        prof_out[name] = profile_leader(pid, args.profile_s,
                                                        args.report.with_suffix(f".{name}.spy"))

                    t = threading.Thread(target=prof, daemon=True)
                    t.start()
                    prof_threads.append(t)

            results, meter, busy = run_phase(cluster, specs, 300 + lead, lead_delay=lead, on_spawn=on_spawn)
            for t in prof_threads:
                t.join(args.profile_s + 90)
            profile = prof_out or None
            late = max(r.get("late_s", 0.0) for r in results)
            if late > 1.0:
                log(f"  WARNING: a client started {late:.1f} s late (flow generation): CPU and pace "
                    "figures cover part of its set-up")
            answered_rate = sum(r["steady_rate"] for r in results)
            # sustained = what all three members executed, not what the leader and the faster
            # follower answered while the other follower fell behind
            pace = min(meter.pace.values(), default=1.0)
            total = answered_rate * pace
            sent = sum(r["sent"] for r in results)
            batches = sum(r["batches"] for r in results)
            sat = {"rate": total, "answered_rate": answered_rate, "pace": meter.pace,
                   "cpu": cpu_lines(meter, leader), "busy": busy,
                   "per_second": [sum(x) for x in zip(*[r["per_second"] for r in results], strict=False)],
                   "avg_batch": sent / max(1, batches), "unanswered": sum(r["unanswered"] for r in results),
                   "cpu_per_order_us": {k: 1e6 * v / 100 / max(1.0, total) for k, v in meter.percent().items()}}
            # a follower that fell behind catches up now, not during the first open-loop rate
            t_wait = time.monotonic()
            try:
                wait_until_members_agree(cluster, 120)
                log(f"members at the same log position {time.monotonic() - t_wait:.1f} s after the phase")
            except TimeoutError as exc:
                log(f"  {exc}")
            log(f"saturation: {answered_rate:,.0f} orders/s answered; members' pace through the log "
                f"{', '.join(f'{m}: {v:.2f}' for m, v in sorted(meter.pace.items()))}")
            log(f"saturation: {total:,.0f} orders/s sustained (answers/s after warm-up x slowest member's pace), "
                f"avg batch {sat['avg_batch']:.0f} orders/message; machine busy {busy:.0f}%")
            for line in sat["cpu"]:
                log("  " + line)

        for rate in rates:
            per_client = rate / args.clients
            log(f"open loop {rate:,} orders/s: {args.clients} client(s) x {per_client:,.0f}/s, "
                f"{args.warmup_s:.0f} s warm-up + {args.duration_s:.0f} s measured")
            specs = [{**base, "mode": "open", "rate": per_client, "duration_s": args.duration_s,
                      "warmup_s": args.warmup_s, "seed": 7 + 100 * c + rate, "tag": f"r{rate}c{c}-",
                      "drain_s": 120} for c in range(args.clients)]
            results, meter, busy = run_phase(cluster, specs, 600, lead_delay=8.0)
            lat = merge([r["latency"] for r in results])
            lag = merge([r["send_lag"] for r in results])
            s = hist_summary(lat)
            sent = sum(r["sent"] for r in results)
            batches = sum(r["batches"] for r in results)
            pending_end = sum(r["pending_at_end"] for r in results)
            unanswered = sum(r["unanswered"] for r in results)
            send_s = max(r["send_s"] for r in results)
            achieved = sent / send_s
            first: dict[str, int] = {}
            for r in results:
                for k, v in r["first_event"].items():
                    first[k] = first.get(k, 0) + v
            lag_p99 = lag.get_value_at_percentile(99) / 1000
            backlog = [b for r in results for b in r["backlog"]]
            # kept: at most half a second of orders still outstanding when sending ends (no growing backlog)
            kept = unanswered == 0 and pending_end <= max(100, rate * 0.5) and lag_p99 < 20
            held = kept and s.get("p99_ms", 1e9) <= args.p99_bound_ms
            row = {"rate": rate, **s, "achieved": achieved, "lag_p99_ms": lag_p99, "pending_end": pending_end,
                   "unanswered": unanswered, "avg_batch": sent / max(1, batches), "busy": busy,
                   "cpu": cpu_lines(meter, leader), "held": held, "kept": kept, "first_event": first,
                   "max_backlog": max((b[1] for b in backlog), default=0),
                   "backlog_series": backlog,
                   "resent": sum(r["resent"] for r in results), "errors": sum(r["errors"] for r in results),
                   "cpu_pct": meter.percent()}
            rows.append(row)
            log(f"  {rate:,}/s: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, p99.9 {s['p999_ms']:.2f} ms, "
                f"max {s['max_ms']:.1f} ms; sent at {achieved:,.0f}/s (send lag p99 {lag_p99:.1f} ms), "
                f"backlog at end {pending_end}, max backlog {row['max_backlog']}, unanswered {unanswered}, "
                f"avg batch {row['avg_batch']:.1f}; machine busy {busy:.0f}% -> throughput "
                f"{'kept' if kept else 'NOT kept'}, "
                f"{'HELD' if held else 'NOT held'} (p99 bound {args.p99_bound_ms:.0f} ms)")
            for line in row["cpu"]:
                log("    " + line)
            log("    backlog (s since start, orders outstanding): " +
                ", ".join(f"{t}:{b}" for t, b in backlog if b > rate * 0.02))
            if not kept:
                log(f"  {rate:,}/s: the cluster did not keep up (backlog); higher rates skipped")
                break

        log("verifying that all members applied the same commands ...")
        collect(spawn({**base, "mode": "verify"}), 120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            hashes = {m: cluster.member_hash(m) for m in range(3)}
            if all(hashes.values()) and len({(h["position"], h["engine_hash"]) for h in hashes.values()}) == 1:
                break
            time.sleep(0.2)
        verify = {m: (h or {}) for m, h in hashes.items()}
        agree = len({(h.get("position"), h.get("engine_hash"), h.get("applied")) for h in verify.values()}) == 1
        log(f"members agree: {agree}; applied {[h.get('applied') for h in verify.values()]}")
    jar_cleanup()
    machine.__exit__(None, None, None)
    env = f"{env}; {machine.summary()}"
    log(machine.summary())

    best = max((r["rate"] for r in rows if r["held"]), default=0)
    best_kept = max((r["rate"] for r in rows if r["kept"]), default=0)
    write_report(args, env, sat, rows, (best, best_kept), verify, agree, profile, comps)
    log(f"highest open-loop rate kept (no backlog): {best_kept:,} orders/s; held (also p99 <= "
        f"{args.p99_bound_ms:.0f} ms): {best:,} orders/s; report: {args.report}")
    return 0


def api_text(args) -> str:
    if args.api == "bulk":
        return (f"bulk orders (`submit_bulk`: up to {args.bulk_max} orders per command in ticks and lots; "
                f"open loop: what is due leaves as one bulk, at least {args.bulk_linger_ms:g} ms apart)")
    return "binary codec (`submit_binary`: one command per order)"


def write_report(args, env, sat, rows, bests, verify, agree, profile, comps) -> None:
    best, best_kept = bests
    cmd = "python bench/cluster_throughput.py " + " ".join(sys.argv[1:])
    members = "as shipped"
    variant = ("MatchClient as shipped" if args.client_variant == "sdk" else
               f"bench-only ProposedClient ({args.linger_ms:.1f} ms send linger)")
    out = ["# Cluster throughput and latency (3 members, engine on every member)\n",
           f"Command: `{cmd.strip()}`  ",
           f"Environment: {env}. Members, clients and everything else share the 2 cores.  ",
           f"Client: {variant}. Members: {members}.  ",
           f"Settings: {args.clients} client process(es) (each its own MatchClient: JVM + embedded media "
           f"driver), {api_text(args)}, 4 symbols (40/30/20/10 %), {args.accounts} funded "
           f"accounts; order flow: 50 % passive GTC, 8 % crossing GTC, 7 % IOC, 28 % cancel and 7 % amend "
           f"by client_order_id (bench/common.py OrderFlow). Open-loop latency is measured from each "
           f"order's planned send time to its answer (no coordinated omission); {args.warmup_s:.0f} s warm-up "
           f"then {args.duration_s:.0f} s measured per rate. Kept = the cluster kept up: schedule kept (send lag p99 "
           f"< 20 ms), at most 0.5 s worth of orders outstanding when sending ended, nothing unanswered; "
           f"held = kept and p99 <= {args.p99_bound_ms:.0f} ms. "
           f"Rates above the first one not kept are skipped.\n"]
    if sat:
        out.append(f"## Sustained throughput (closed loop, {args.clients} client(s) x {args.window} outstanding)\n")
        out.append(f"**{sat['rate']:,.0f} orders/s** sustained: executed by all three members (answers "
                   f"{sat['answered_rate']:,.0f}/s x the slowest member's pace through the log; pace per member, "
                   f"1.00 = the furthest: " + ", ".join(f"member {m} {v:.2f}" for m, v in sorted(sat["pace"].items()))
                   + ").\n")
        out.append(f"Answers (mean over {args.saturate_s:.0f} s after warm-up; "
                   f"per second: {', '.join(str(x) for x in sat['per_second'])}); average "
                   f"{sat['avg_batch']:.0f} orders per cluster message; machine busy {sat['busy']:.0f}%; "
                   f"unanswered {sat['unanswered']}.\n")
        out.append("CPU during the saturation phase:\n")
        out += [f"- {line}" for line in sat["cpu"]]
        out.append("")
        per = sat["cpu_per_order_us"]
        tot = sum(per.values())
        out.append("CPU per order (µs of CPU per answered order): " + ", ".join(
            f"{k} {v:.0f} µs" for k, v in sorted(per.items())) + f"; together **{tot:.0f} µs**, so two idle cores "
            f"could carry at most ~{2e6 / max(1.0, tot):,.0f} orders/s with this software (an upper bound from "
            f"CPU alone, ignoring that waits and the scheduler cost more when the cores are full).\n")
    out.append("## Open-loop latency at fixed rates\n")
    out.append("| target /s | sent /s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | send lag p99 ms | "
               "max backlog | backlog at end | avg batch | machine busy | kept | held |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|")
    for r in rows:
        out.append(f"| {r['rate']:,} | {r['achieved']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                   f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['max_ms']:.1f} | {r['lag_p99_ms']:.1f} | "
                   f"{r['max_backlog']} | {r['pending_end']} | {r['avg_batch']:.1f} | {r['busy']:.0f}% | "
                   f"{'yes' if r['kept'] else 'no'} | {'yes' if r['held'] else 'no'} |")
    out.append(f"\n**Highest rate kept (no backlog): {best_kept:,} orders/s; highest rate held (also p99 <= "
               f"{args.p99_bound_ms:.0f} ms): {best:,} orders/s.**\n")
    for r in rows:
        out.append(f"CPU at {r['rate']:,}/s:\n")
        out += [f"- {line}" for line in r["cpu"]]
        out.append(f"- first event of each answer: {r['first_event']}; resent {r['resent']}, "
                   f"errors {r['errors']}\n")
    out.append("## Replication check\n")
    out.append(f"After the run every member answered `state_hash` at the same log position: members agree = "
               f"**{agree}**; " + "; ".join(
                   f"member {m}: applied {h.get('applied')}, engine hash {str(h.get('engine_hash'))[:16]}…"
                   for m, h in verify.items()) + "\n")
    if comps:
        out.append("## Component costs in isolation (CPU time per order, one process, no cluster)\n")
        out.append("| piece | µs per order | note |\n|---|---:|---|")
        out += [f"| {w} | {v:.2f} | {n} |" for w, v, n in comps]
        out.append("")
    for name, prof in (profile or {}).items():
        if not prof:
            continue
        out.append(f"## py-spy of the {name} during saturation (last {prof['seconds']:.0f} s of the phase, 200 Hz)\n")
        out.append(f"Python frames were on a stack in {prof['active_pct']:.0f}% of the samples (all threads; a thread "
                   "waiting for a core counts as running, so read the shares relative to each other).\n")
        out.append("| function (inclusive) | % of samples | | function (self) | % of samples |")
        out.append("|---|---:|---|---|---:|")
        inc, slf = prof["inclusive"], prof["self"]
        for i in range(max(len(inc), len(slf))):
            a = f"`{inc[i][0]}` | {inc[i][1]:.1f}" if i < len(inc) else " | "
            b = f"`{slf[i][0]}` | {slf[i][1]:.1f}" if i < len(slf) else " | "
            out.append(f"| {a} | | {b} |")
        out.append("")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
