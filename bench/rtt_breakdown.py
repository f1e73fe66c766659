"""One single order's round trip, stage by stage: ours beside the pure-Java floor (issue #20).

Runs bench/latency.py's two systems (3 members on the same ports and settings; ours with one
``MatchClient`` process, the floor with ``EchoFloor`` and ``EchoFloorClient``) one command at a
time, with ``MATCHX_TRACE_DIR`` set: every process then stamps each stage of each round trip
with ``System.nanoTime()`` (io.matchx.cluster.LatencyTrace; Python marks through it via
``pyengine.jvm.trace``) into a memory-mapped file of its own. ``System.nanoTime()`` and Python's
``time.perf_counter_ns()`` both read CLOCK_MONOTONIC, which every process of the machine shares
(``--check-clock`` prints the two side by side), so stamps of different processes subtract.

Stages (ours | floor), each the first stamp of its kind after the stage before, within the
round trip (from one submit to the next):

    submit (caller, Python)                     | send (client thread)
    ingress offer returned (client, Java)       | offer returned
    log append on the leader (consensus module) | the same
    service entry on the leader (Java)          | the same
    Python entry / exit (bridge), handler back  | -
    egress offer returned (leader service)      | offer returned
    answer polled (client's Java poller)        | answer polled (the client thread)
    receive thread has it (Python)              | -
    future resolved (receive thread)            | -
    caller woken (Python)                       | -

The log append is the consensus module's second clock read within one duty cycle (the first is
the cycle's own; Aeron reads the clock again for each ingress message it appends). Median and
p90 per stage over ``--rtt`` round trips per round; systems alternate round by round.

    python bench/rtt_breakdown.py --rtt 1000 --rounds 2 [--variant NAME:key=value ...]
        [--report bench/reports/rtt_breakdown.md]

Variants are bench/latency.py's (ClusterLayout fields, jar=PATH, client_*=... for MatchClient).
Every process, port and /dev/shm directory is cleaned up, also on failure (bench/latency.py's
runners); the trace files live in the run's temporary directory.
"""

from __future__ import annotations

import argparse
import bisect
import os
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, log, parse_variant, pin_jar, publish_report  # noqa: E402
from bench.latency import RELAXED_TIMEOUTS, SDK_PARK_US, run_floor, run_ours  # noqa: E402
from pyengine.node.localcluster import free_port_base, ports_free  # noqa: E402
from pyengine.node.settings import PORTS_PER_MEMBER, ClusterLayout  # noqa: E402

RECORD = struct.Struct("<qii")
# LatencyTrace stage numbers
SERVICE_ENTRY, HANDLER_BACK, SERVICE_OFFERED, CM_APPEND = 1, 2, 3, 4
CLIENT_OFFERED, CLIENT_EGRESS = 11, 12
FLOOR_ENTRY, FLOOR_OFFERED, FLOOR_SEND, FLOOR_CLIENT_OFFERED, FLOOR_CLIENT_EGRESS = 21, 22, 31, 32, 33
PY_SUBMIT, PY_RECEIVED, PY_RESOLVE, PY_WOKEN, PY_ENTRY, PY_EXIT = 100, 103, 104, 105, 111, 112

# (where, stage) in the order a round trip passes them; "client", "leader", "follower"
OURS_PATH = [
    ("submit", "client", PY_SUBMIT),
    ("ingress offer returned", "client", CLIENT_OFFERED),
    ("log append (leader CM)", "leader", CM_APPEND),
    ("service entry (leader, Java)", "leader", SERVICE_ENTRY),
    ("Python entry (bridge)", "leader", PY_ENTRY),
    ("Python exit (bridge)", "leader", PY_EXIT),
    ("handler returned (Java)", "leader", HANDLER_BACK),
    ("egress offer returned", "leader", SERVICE_OFFERED),
    ("answer polled (client Java poller)", "client", CLIENT_EGRESS),
    ("receive thread has it (Python)", "client", PY_RECEIVED),
    ("future resolved (receive thread)", "client", PY_RESOLVE),
    ("caller woken", "client", PY_WOKEN),
]
FLOOR_PATH = [
    ("submit", "client", FLOOR_SEND),
    ("ingress offer returned", "client", FLOOR_CLIENT_OFFERED),
    ("log append (leader CM)", "leader", CM_APPEND),
    ("service entry (leader, Java)", "leader", FLOOR_ENTRY),
    ("egress offer returned", "leader", FLOOR_OFFERED),
    ("answer polled (client Java poller)", "client", FLOOR_CLIENT_EGRESS),
]


def read_trace(path: Path) -> list[tuple[int, int]]:
    """(time ns, stage) of one process, in time order; unwritten records (time 0) skipped."""
    data = path.read_bytes()
    used = len(data.rstrip(b"\0"))  # the mapped file is sparse past its last record
    used += -used % RECORD.size
    out = [(t, stage) for t, stage, _thread in RECORD.iter_unpack(data[:used]) if t]
    out.sort()
    return out


@dataclass
class Breakdown:
    """Per stage (name -> the durations from the stage before, ns) over every round trip."""

    stages: dict[str, list[int]] = field(default_factory=dict)
    totals: list[int] = field(default_factory=list)
    follower_entry: list[int] = field(default_factory=list)  # leader service entry -> first follower's
    incomplete: int = 0


def roles(traces: dict[int, list[tuple[int, int]]], client_stage: int) -> tuple[int, int, list[int]]:
    """(client pid, leader pid, follower pids): the client stamps ``client_stage``; the leader is
    the member with the most log appends."""
    client = next(pid for pid, recs in traces.items() if any(s == client_stage for _, s in recs))
    members = [pid for pid in traces if pid != client]
    appends = {pid: sum(1 for _, s in traces[pid] if s == CM_APPEND) for pid in members}
    leader = max(members, key=lambda pid: appends[pid])
    return client, leader, [pid for pid in members if pid != leader]


def first_at(times: list[int], at: int, end: int) -> int | None:
    """The first of the sorted ``times`` in [at, end), or None."""
    i = bisect.bisect_left(times, at)
    return times[i] if i < len(times) and times[i] < end else None


def analyse(trace_dir: Path, path: list[tuple[str, str, int]], rtt: int, into: Breakdown) -> None:
    traces = {int(f.stem): read_trace(f) for f in trace_dir.glob("*.trace")}
    first_stage = path[0][2]
    client, leader, followers = roles(traces, first_stage)
    for pid, recs in sorted(traces.items()):
        counts: dict[int, int] = {}
        for _, stage in recs:
            counts[stage] = counts.get(stage, 0) + 1
        role = "client" if pid == client else "leader" if pid == leader else "follower"
        log(f"  trace {pid} ({role}): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    index: dict[tuple[str, int], list[int]] = {}
    for role, pids in (("client", [client]), ("leader", [leader]), ("follower", followers)):
        for pid in pids:
            for t, stage in traces[pid]:
                index.setdefault((role, stage), []).append(t)
    for times in index.values():
        times.sort()
    starts = index[("client", first_stage)][-rtt:]  # the one-at-a-time phase
    entry_stage = next(st for _, w, st in path if w == "leader" and st != CM_APPEND)
    entry_name = next(n for n, _, st in path if st == entry_stage)
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else start + 10**9
        at = start
        stamps: list[tuple[str, int]] = []
        for name, where, stage in path[1:]:
            found = first_at(index.get((where, stage), []), at, end)
            if found is None:
                break
            stamps.append((name, found))
            at = found
        if len(stamps) != len(path) - 1:
            into.incomplete += 1
            continue
        prev = start
        for name, t in stamps:
            into.stages.setdefault(name, []).append(t - prev)
            prev = t
        into.totals.append(prev - start)
        entry = dict(stamps)[entry_name]
        follower = first_at(index.get(("follower", entry_stage), []), start, end)
        if follower is not None:
            into.follower_entry.append(follower - entry)


def us(values: list[int], q: float) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"{v[min(len(v) - 1, int(q * len(v)))] / 1000:.0f}" if q != 0.5 else f"{statistics.median(v) / 1000:.0f}"


def check_clock() -> str:
    """System.nanoTime() and time.perf_counter_ns() read back to back in one process."""
    from pyengine import jvm

    jvm.start()
    import jpype

    nano = jpype.JClass("java.lang.System").nanoTime
    pairs = []
    for _ in range(5):
        a = time.perf_counter_ns()
        j = int(nano())
        b = time.perf_counter_ns()
        m = time.monotonic_ns()
        pairs.append((a, j, b, m))
    return "\n".join(f"perf_counter_ns {a}  System.nanoTime {j} (between: {a <= j <= b})  monotonic_ns {m}"
                     for a, j, b, m in pairs)


def report(args, results: dict[tuple[str, str], Breakdown], variants, env: str, load: str, started: str) -> str:
    lines = [
        "# One single order's round trip, stage by stage: ours beside the floor",
        "",
        f"Command: `python bench/rtt_breakdown.py {' '.join(args.argv)}`",
        "",
        f"Machine: {env}; started {started}. **{load}**.",
        "",
        f"One command at a time, {args.rtt} per round and system after {args.warmup} warm-up, "
        f"{args.rounds} round(s), systems alternating. Each stage: from the stage before to this one, "
        "median (p90) in us, over every complete round trip; times from System.nanoTime() in every "
        "process (CLOCK_MONOTONIC, one clock on the machine). The stamps from Python are calls into "
        "Java (~1-2 us each, 4 per round trip of ours). "
        + ("Raft timing relaxed (heartbeat 100/2000 ms)." if args.relaxed_timeouts else "Shipped Raft timing."),
        "",
    ]
    for vname, kw in variants:
        lines += [f"## Variant `{vname}`" + (f": {', '.join(f'{k}={v}' for k, v in kw.items())}" if kw else
                                              " (the shipped settings)"), ""]
        o, f = results.get((vname, "ours")), results.get((vname, "floor"))
        floor_names = {n for n, _, _ in FLOOR_PATH}
        lines += ["| stage (time since the stage before) | ours median | ours p90 | floor median | floor p90 |",
                  "|---|---:|---:|---:|---:|"]
        names = [n for n, _, _ in OURS_PATH[1:]]
        for name in names:
            ov = o.stages.get(name, []) if o else []
            fv = f.stages.get(name, []) if f and name in floor_names else []
            if name == "answer polled (client Java poller)" and f:
                # the floor's egress stamp follows its service's offer directly
                fv = f.stages.get(name, [])
            lines.append(f"| {name} | {us(ov, 0.5)} | {us(ov, 0.9)} | {us(fv, 0.5) if fv else '-'} | "
                         f"{us(fv, 0.9) if fv else '-'} |")
        lines.append(f"| **round trip (submit -> caller woken / answer polled)** | "
                     f"**{us(o.totals, 0.5) if o else '-'}**"
                     f" | {us(o.totals, 0.9) if o else '-'} | **{us(f.totals, 0.5) if f else '-'}** | "
                     f"{us(f.totals, 0.9) if f else '-'} |")
        lines.append(f"| (leader service entry -> first follower's, beside) | {us(o.follower_entry, 0.5) if o else '-'}"
                     f" | {us(o.follower_entry, 0.9) if o else '-'} | {us(f.follower_entry, 0.5) if f else '-'} | "
                     f"{us(f.follower_entry, 0.9) if f else '-'} |")
        lines += ["", f"Round trips with every stage: ours {len(o.totals) if o else 0} "
                  f"({o.incomplete if o else 0} incomplete), floor {len(f.totals) if f else 0} "
                  f"({f.incomplete if f else 0} incomplete).", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rtt", type=int, default=1000, help="round trips one at a time, per round and system")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--systems", default="ours,floor")
    ap.add_argument("--variant", action="append", default=None, help="as bench/latency.py's")
    ap.add_argument("--relaxed-timeouts", action="store_true")
    ap.add_argument("--port-start", type=int, default=27000)
    ap.add_argument("--client-timeout-s", type=float, default=600)
    ap.add_argument("--check-clock", action="store_true", help="only print the clock check")
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "rtt_breakdown.md")
    args = ap.parse_args(argv)
    if args.check_clock:
        print(check_clock())
        return 0
    args.argv = sys.argv[1:] if argv is None else argv
    # what bench/latency.py's runners read: one-at-a-time only
    args.idle_s, args.rates, args.duration_s, args.drain_s, args.binary, args.floor_size = 0, [], 1.0, 30.0, False, 128
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    systems = [s.strip() for s in args.systems.split(",")]
    jar = pin_jar()
    env, started = environment(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    port_base = free_port_base(args.port_start)
    results: dict[tuple[str, str], Breakdown] = {}
    with MachineLoad() as load:
        for rnd in range(args.rounds):
            for vname, kw in variants:
                for system in systems if rnd % 2 == 0 else systems[::-1]:
                    layout_kw = {k: v for k, v in kw.items() if not k.startswith("client_") and k != "jar"}
                    variant_jar = Path(kw.get("jar", jar))
                    os.environ["MATCHX_JAR"] = str(variant_jar)
                    if args.relaxed_timeouts:
                        layout_kw.setdefault("timeouts", RELAXED_TIMEOUTS)
                    with tempfile.TemporaryDirectory(prefix=f"matchx-rtt-{system}-") as tmp:
                        layout = ClusterLayout(base_dir=Path(tmp), port_base=port_base, **layout_kw)
                        deadline = time.monotonic() + 60
                        while not ports_free("127.0.0.1", range(port_base, port_base + 3 * PORTS_PER_MEMBER)):
                            if time.monotonic() > deadline:
                                raise RuntimeError(f"ports from {port_base} still taken")
                            time.sleep(0.5)
                        out, traces = Path(tmp) / "lat", Path(tmp) / "trace"
                        out.mkdir()
                        traces.mkdir()
                        os.environ["MATCHX_TRACE_DIR"] = str(traces)  # members and client inherit it
                        log(f"round {rnd + 1}/{args.rounds} variant {vname}: {system} (load {os.getloadavg()[0]:.1f})")
                        try:
                            if system == "ours":
                                client_kw = {k[len("client_"):]: v for k, v in kw.items()
                                             if k.startswith("client_") and k != "client_park_us"}
                                run_ours(args, layout, out, client_kw)
                            else:
                                run_floor(args, layout, out, variant_jar, kw.get("client_park_us", SDK_PARK_US))
                        finally:
                            os.environ.pop("MATCHX_TRACE_DIR", None)
                        analyse(traces, OURS_PATH if system == "ours" else FLOOR_PATH, args.rtt,
                                results.setdefault((vname, system), Breakdown()))
    text = report(args, results, variants, env, load.summary(), started)
    return publish_report(args.report, text)


if __name__ == "__main__":
    sys.exit(main())
