"""Idle CPU of a 3-member cluster, per member and per thread (issue #20).

Starts a cluster as ``matchctl cluster up`` does (``LocalCluster``, the shipped settings unless a
variant says otherwise), waits for a leader and two followers, lets it settle (start-up JIT and
class loading die down), then reads every thread's CPU time and run count from
``/proc/PID/task/TID/schedstat`` over a quiet window: no client, no commands. Per thread name it
reports % of one core, wake-ups per second (times the thread was put on a CPU) and CPU per
wake-up, so a report says which agent's idle loop the CPU goes to and whether it is the number of
wake-ups or the work per wake-up.

A ``--variant NAME:key=value,...`` runs other ``ClusterLayout`` or ``Timeouts`` fields (e.g.
``idle_min_park_us=50``, ``heartbeat_interval_ms=40``), or ``jar=PATH`` (the members run that
jar: a Java change against the jar before it); variants alternate round by round (A B, B A,
...) so a change of the machine's load hits each alike.

    python bench/idle_cpu.py [--settle-s 15] [--window-s 20] [--rounds 1]
        [--variant default --variant minpark50:idle_min_park_us=50] [--report bench/reports/idle_cpu.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, log, parse_variant, pin_jar, task_files  # noqa: E402
from pyengine.node.localcluster import LocalCluster, free_port_base  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402

# /proc comm names (15 characters) -> what runs on that thread
THREAD_ROLES = (
    ("/dev/shm/matchx", "media driver (conductor, sender, receiver: SHARED)"),
    ("driver-archive", "media driver + archive (compact)"),
    ("archive-conduct", "archive (conductor, recorder, replayer: SHARED)"),
    ("consensus-modul", "consensus module"),
    ("clustered-servi", "service (MatchService, Python callbacks)"),
    ("aeron-executor", "media driver async executor"),
    ("aeron-client", "Aeron client conductors"),
    ("matchx-election", "matchx-election-timing (ElectionTiming, JoinDeadlock)"),
    ("matchx-start-ph", "matchx-start-phases (StartPhases)"),
    ("matchx-snapshot", "matchx-snapshot-schedule"),
    ("C1 CompilerThre", "JIT (C1, C2)"),
    ("C2 CompilerThre", "JIT (C1, C2)"),
    ("python", "Python threads (main, /metrics server)"),
)
OTHER = "other JVM threads (GC, VM, signal, cleaner, JPype)"


def role_of(comm: str) -> str:
    for prefix, role in THREAD_ROLES:
        if comm.startswith(prefix):
            return role
    return OTHER


def thread_sched(pid: int) -> dict[int, tuple[str, int, int]]:
    """tid -> (comm, CPU ns, times put on a CPU) of every thread of ``pid``."""
    out: dict[int, tuple[str, int, int]] = {}
    for tid, (comm, sched) in task_files(pid, "comm", "schedstat").items():
        cpu_ns, _wait_ns, slices = (int(x) for x in sched.split())
        out[tid] = (comm.strip(), cpu_ns, slices)
    return out


@dataclass
class Sample:
    """One member over one window: per role, CPU seconds and wake-ups; and the machine then (a
    busy machine delays wake-ups, so agents wake less often: idle CPU falls with load)."""

    elapsed_s: float
    load: float = 0.0  # 1-minute load average at the window's end
    busy_pct: float = 0.0  # CPU busy over the window, all processes
    cpu_s: dict[str, float] = field(default_factory=dict)
    wakeups: dict[str, int] = field(default_factory=dict)

    def total_pct(self) -> float:
        return 100 * sum(self.cpu_s.values()) / self.elapsed_s


def window(pids: dict[int, int], seconds: float) -> dict[int, Sample]:
    before = {m: thread_sched(p) for m, p in pids.items()}
    busy0 = MachineLoad._stat()
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {m: thread_sched(p) for m, p in pids.items()}
    elapsed = time.monotonic() - t0
    busy1 = MachineLoad._stat()
    busy = 100 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1])
    out: dict[int, Sample] = {}
    for m in pids:
        s = Sample(elapsed, os.getloadavg()[0], busy)
        for tid, (comm, cpu_ns, slices) in after[m].items():
            _, cpu0, slices0 = before[m].get(tid, (comm, 0, 0))  # a thread born in the window: all of it
            role = role_of(comm)
            s.cpu_s[role] = s.cpu_s.get(role, 0.0) + (cpu_ns - cpu0) / 1e9
            s.wakeups[role] = s.wakeups.get(role, 0) + slices - slices0
        out[m] = s
    return out


def layout_of(kw: dict, base_dir: Path, port_base: int) -> ClusterLayout:
    """A variant's ClusterLayout: its ``Timeouts`` fields (``heartbeat_interval_ms=40``) go to the
    layout's timeouts, the others to the layout, ``jar`` to neither."""
    timeout_keys = {f.name for f in fields(Timeouts)}
    timeouts = Timeouts(**{k: v for k, v in kw.items() if k in timeout_keys})
    layout_kw = {k: v for k, v in kw.items() if k != "jar" and k not in timeout_keys}
    return ClusterLayout(base_dir=base_dir, port_base=port_base, timeouts=timeouts, **layout_kw)


def run_variant(kw: dict, jar: Path, settle_s: float, window_s: float, port_start: int) -> dict[int, Sample]:
    os.environ["MATCHX_JAR"] = str(kw.get("jar", jar))  # the member processes inherit it
    tmp = Path(tempfile.mkdtemp(prefix="matchx-idle-"))
    cluster = LocalCluster(layout_of(kw, tmp, free_port_base(port_start)), "WARNING")
    try:
        cluster.start()
        cluster.await_leader(90)
        cluster.await_followers(2, 90)
        time.sleep(settle_s)
        return window(cluster.pids(), window_s)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def fmt_pct(x: float) -> str:
    return f"{x:.2f}" if x < 1 else f"{x:.1f}"


def variant_section(name: str, kw: dict, samples: list[dict[int, Sample]]) -> list[str]:
    desc = ", ".join(f"{k}={v}" for k, v in kw.items()) or "the shipped settings"
    members = sorted(samples[0])
    per_member = {m: [s[m].total_pct() for s in samples] for m in members}
    machine = ", ".join(f"load {s[members[0]].load:.1f} / CPU {s[members[0]].busy_pct:.0f}% busy" for s in samples)
    lines = [f"## Variant `{name}`: {desc}", "",
             "Per member, % of one core (each round): " +
             "; ".join(f"member {m}: " + ", ".join(f"{p:.1f}" for p in per_member[m]) for m in members) +
             f" (the machine in each round's window: {machine})",
             "",
             f"**mean per member {statistics.mean(p for v in per_member.values() for p in v):.1f}% of one core, "
             f"highest member {max(max(v) for v in per_member.values()):.1f}%**", "",
             "| thread | % of one core (mean per member) | wake-ups/s | CPU us per wake-up |", "|---|---|---|---|"]
    roles: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for m in members:
            for role, cpu in s[m].cpu_s.items():
                roles.setdefault(role, []).append((cpu / s[m].elapsed_s, s[m].wakeups.get(role, 0) / s[m].elapsed_s))
    n = len(samples) * len(members)
    rows = sorted(((r, sum(c for c, _ in v) / n, sum(w for _, w in v) / n) for r, v in roles.items()),
                  key=lambda row: -row[1])
    for role, cpu, wakes in rows:
        per_wake = 1e6 * cpu / wakes if wakes else float("nan")
        lines.append(f"| {role} | {fmt_pct(100 * cpu)} | {wakes:,.0f} | {per_wake:.1f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle-s", type=float, default=15.0, help="after the cluster is in step, before the window")
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variant", action="append", default=None, help="NAME[:key=value,...]; repeatable")
    ap.add_argument("--port-start", type=int, default=25000)
    ap.add_argument("--report", type=Path, default=Path(__file__).parent / "reports" / "idle_cpu.md")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    jar = pin_jar()
    env, started = environment(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, list[dict[int, Sample]]] = {name: [] for name, _ in variants}
    with MachineLoad() as load:
        for r in range(args.rounds):
            for name, kw in (variants if r % 2 == 0 else variants[::-1]):
                log(f"round {r + 1}/{args.rounds}, variant {name}: start, settle {args.settle_s:.0f}s, "
                    f"window {args.window_s:.0f}s")
                results[name].append(run_variant(kw, jar, args.settle_s, args.window_s, args.port_start))
                got = results[name][-1]
                log("  " + ", ".join(f"member {m} {s.total_pct():.1f}%" for m, s in sorted(got.items())) +
                    f" (load {next(iter(got.values())).load:.1f})")
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Idle CPU of a 3-member cluster, per thread",
        "",
        f"Command: `python bench/idle_cpu.py{' ' + cmd if cmd else ''}`",
        "",
        f"Machine: {env}; started {started}.",
        f"**{load.summary()}.**",
        "",
        f"Each member as `matchctl cluster up` starts it, in step, no client; after {args.settle_s:.0f} s of "
        f"settling, CPU of every thread over {args.window_s:.0f} s from /proc/PID/task/TID/schedstat. "
        "Wake-ups: times a thread was put on a CPU (each park that ends, each yield that gave the CPU "
        "away). Threads of the same role summed; per member means over members and rounds.",
        "",
    ]
    for name, kw in variants:
        lines += variant_section(name, kw, results[name])
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
