"""One open-loop phase of a ``bench/latency.py --keep DIR`` run as a timeline (issue #20): each
100 ms of planned send time with its commands' latency (p50, p99, max), beside what happened then:
members' snapshots (from their status files), the client's Python collections, and JVM
collections of any process (``JAVA_TOOL_OPTIONS=-Xlog:gc:file=DIR/gc-%p.log:time`` during the
run; pids from the run's pids.txt). A tail that comes in bursts shows which of them it follows.

    python bench/tail_timeline.py RUN_DIR [--phase open-5000] [--jvm-gc-dir DIR] [--bucket-ms 100]
    python bench/tail_timeline.py KEEP_DIR/*  (several runs: one row each)
"""

from __future__ import annotations

import argparse
import re
import sys
from array import array
from datetime import datetime
from itertools import pairwise
from pathlib import Path


def latencies(lat_dir: Path, phase: str) -> tuple[float, int, array]:
    """(wall clock of the planned start, ns between commands, latency ns of command i)."""
    start_s, interval = (lat_dir / f"{phase}.start").read_text().split()
    lat = array("q")
    lat.frombytes((lat_dir / f"{phase}.lat").read_bytes())
    return float(start_s), int(interval), lat


def events(run: Path, jvm_gc_dir: Path | None, t0: float, t1: float) -> list[tuple[float, str]]:
    """(wall clock s, what) of everything between t0 and t1."""
    lat_dir = run / "lat"
    out: list[tuple[float, str]] = []
    snaps = lat_dir / "snapshots.txt"
    for line in snaps.read_text().splitlines() if snaps.is_file() else []:
        m, at_ms, build, write, size = line.split()
        # the status file stamps a snapshot when it is written: it began build + write ms before
        end = int(at_ms) / 1000
        out.append((end - (int(build) + int(write)) / 1000,
                    f"member {m} snapshot: build {build} ms + write {write} ms, {int(size):,} bytes"))
    client_gc = lat_dir / "client_gc.txt"
    for line in client_gc.read_text().splitlines() if client_gc.is_file() else []:
        at, gen, ms = line.split()
        if int(gen) == 2 or float(ms) >= 1:
            out.append((float(at), f"client Python gc gen {gen}: {float(ms):.1f} ms"))
    pids = {}
    pid_file = lat_dir / "pids.txt"
    for line in pid_file.read_text().splitlines() if pid_file.is_file() else []:
        name, _, pid = line.rpartition(" ")
        pids[pid] = name
    if jvm_gc_dir is not None:
        for path in jvm_gc_dir.glob("gc-*.log"):
            pid = path.stem.split("-")[1]
            who = pids.get(pid)
            if who is None:
                continue
            for line in path.read_text().splitlines():
                # [2026-12-07T22:56:01.123+0000] GC(3) Pause Young (Allocation Failure) 12M->3M(60M) 4.210ms
                m = re.match(r"\[(\S+)\].*(Pause \w+).* ([\d.]+)ms$", line)
                if m:
                    at = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                    out.append((at, f"{who} JVM {m.group(2)}: {float(m.group(3)):.1f} ms"))
    return sorted(e for e in out if t0 - 0.5 <= e[0] <= t1 + 0.5)


def cpu_by_bucket(lat_dir: Path, t0: float, bucket_s: float, buckets: int) -> list[dict[str, float]]:
    """% of one core each process used in each bucket, from the run's cpu.txt samples."""
    path = lat_dir / "cpu.txt"
    out: list[dict[str, float]] = [{} for _ in range(buckets)]
    if not path.is_file():
        return out
    lines = path.read_text().splitlines()
    per_s = float(lines[0].split()[1])
    samples = []
    for line in lines[1:]:
        at, *pairs = line.split()
        samples.append((float(at), {k: int(v) for k, v in (p.split("=") for p in pairs)}))
    for (a0, c0), (a1, c1) in pairwise(samples):
        b = int(((a0 + a1) / 2 - t0) // bucket_s)
        if 0 <= b < buckets and a1 > a0:
            for name in c1.keys() & c0.keys():
                share = 100 * (c1[name] - c0[name]) / per_s / (a1 - a0)
                out[b].setdefault(name, 0.0)
                out[b][name] += share * (a1 - a0) / bucket_s
    return out


def pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))]


def timeline(run: Path, phase: str, jvm_gc_dir: Path | None, bucket_ms: int) -> list[str]:
    start, interval, lat = latencies(run / "lat", phase)
    per_bucket = max(1, bucket_ms * 1_000_000 // interval)
    t1 = start + len(lat) * interval / 1e9
    evs = events(run, jvm_gc_dir, start, t1)
    n_buckets = (len(lat) + per_bucket - 1) // per_bucket
    cpu = cpu_by_bucket(run / "lat", start, bucket_ms / 1000, n_buckets)
    lines = [f"# {run.name}, {phase}: latency by planned send time, {bucket_ms} ms buckets", "",
             "CPU: % of one core in the bucket (members m0-m2, client c; 2 cores = 200 %).", "",
             "| from (s) | commands | p50 ms | p99 ms | max ms | CPU m0 / m1 / m2 / c, sum | what began in it |",
             "|---|---|---|---|---|---|---|"]
    for i, b in enumerate(range(0, len(lat), per_bucket)):
        chunk = sorted(x / 1e6 for x in lat[b:b + per_bucket])
        b0 = start + b * interval / 1e9
        b1 = b0 + bucket_ms / 1000
        what = "; ".join(w for at, w in evs if b0 <= at < b1)
        c = cpu[i]
        use = " / ".join(f"{c.get(k, 0):.0f}" for k in ("member0", "member1", "member2", "client"))
        lines.append(f"| {b0 - start:.1f} | {len(chunk)} | {pct(chunk, 0.5):.1f} | {pct(chunk, 0.99):.1f} | "
                     f"{chunk[-1]:.1f} | {use}, {sum(c.values()):.0f} | {what} |")
    before = [w for at, w in evs if at < start]
    if before:
        lines += ["", "Just before the phase: " + "; ".join(before)]
    return lines


def summary(runs: list[Path], phase: str, jvm_gc_dir: Path | None, bucket_ms: int) -> list[str]:
    """One row per run: the phase's p99, its worst bucket, and what happened during the phase."""
    lines = [f"| run | {phase} p50 / p99 / max ms | worst {bucket_ms} ms bucket: from (s), p99 ms | snapshots "
             "(build + write ms each) | client Python gen 2 (ms each) | longest JVM pause: who, ms |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        start, interval, lat = latencies(run / "lat", phase)
        ms = sorted(x / 1e6 for x in lat)
        per_bucket = max(1, bucket_ms * 1_000_000 // interval)
        worst = max(range(0, len(lat), per_bucket),
                    key=lambda b: pct(sorted(x / 1e6 for x in lat[b:b + per_bucket]), 0.99))
        worst_p99 = pct(sorted(x / 1e6 for x in lat[worst:worst + per_bucket]), 0.99)
        evs = events(run, jvm_gc_dir, start, start + len(lat) * interval / 1e9)
        snaps = [w.split("snapshot: ")[1].split(",")[0] for _, w in evs if "snapshot:" in w and "member 0" in w]
        gen2 = [w.rsplit(": ", 1)[1] for _, w in evs if "gc gen 2" in w]
        jvm = [(float(w.rsplit(": ", 1)[1].split()[0]), w.split(" JVM")[0]) for _, w in evs if " JVM " in w]
        longest = max(jvm) if jvm else None
        lines.append(f"| {run.name} | {pct(ms, 0.5):.1f} / {pct(ms, 0.99):.1f} / {ms[-1]:.1f} | "
                     f"{worst * interval / 1e9:.1f}, {worst_p99:.1f} | {len(snaps)}: {'; '.join(snaps) or '-'} | "
                     f"{len(gen2)}: {', '.join(gen2) or '-'} | "
                     f"{f'{longest[1]}, {longest[0]:.1f}' if longest else '-'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, nargs="+", help="runs' directories under latency.py's --keep; more than "
                    "one: a row each instead of the timeline")
    ap.add_argument("--phase", default="open-5000")
    ap.add_argument("--jvm-gc-dir", type=Path)
    ap.add_argument("--bucket-ms", type=int, default=100)
    args = ap.parse_args(argv)
    if len(args.run) == 1:
        print("\n".join(timeline(args.run[0], args.phase, args.jvm_gc_dir, args.bucket_ms)))
    else:
        print("\n".join(summary(args.run, args.phase, args.jvm_gc_dir, args.bucket_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
