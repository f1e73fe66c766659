"""A member's restart, phase by phase (wall time and CPU per phase), and two settings or two
code versions side by side.

    .venv/bin/python bench/member_start.py --rounds 6                       # class data sharing on/off
    .venv/bin/python bench/member_start.py --setting none --resting 100000 --rate 1000 --rounds 8
    .venv/bin/python bench/member_start.py --setting code --base-tree /path/to/old/checkout \\
        --resting 100000 --rate 1000 --rounds 4                           # this tree's code against older code

A 3-member cluster (LocalCluster, default layout and snapshot schedule). With ``--resting N`` a
client places N resting orders (far from the flow's prices, as bench/failover_under_load.py
does) and, with ``--rate R``, sends that bench's order flow at R orders/s for the whole run, so a
restart has a large snapshot to load, log to replay and a leader to catch up with. One snapshot
is taken before the restarts. Then one follower is stopped (``--kill``: SIGKILL, as the failover
bench does, so the archive recovers its recordings; otherwise SIGTERM), started again
``--down-s`` later, and watched until it is in step (its first election CLOSED), 2 x ``--rounds``
times alternating the two variants (A, B, B, A, ...) so both see the same machine state; with
``--setting none`` every restart is the same (a profile).

Per restart: when each of the member's ``start:`` lines appeared in its log (ms after the bench
launched it, polled every 10 ms: one clock for Python's lines and Java's) and the CPU its process
had used then, in total and per thread. Phases:
Python ready, JVM started, media driver + archive (recordings recovered) + consensus module
launched, snapshot read from the archive, service restored (engine snapshot decoded in Python,
reply cache), then the election states: FOLLOWER_REPLAY (its own log after the snapshot),
FOLLOWER_CATCHUP_INIT .. FOLLOWER_CATCHUP (what the leader appended while it was down),
FOLLOWER_LOG_INIT .. CLOSED (joining the live log). CPU is steadier than wall time on a shared
machine.

Settings: ``cds`` (A = the class data sharing archive beside the jar, B = ``MATCHX_CDS=0``);
``code`` (A = this tree, B = ``--base-tree`` on PYTHONPATH and/or ``--base-jar`` as MATCHX_JAR);
``env`` (B = the ``--env-b KEY=VALUE`` given, e.g. ``JAVA_TOOL_OPTIONS=...``); ``none``.
Writes bench/reports/member_start.md (or ``--report``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, log, thread_cpu  # noqa: E402
from pyengine.node.localcluster import LocalCluster, free_port_base, wait_for  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path(__file__).parent / "reports" / "member_start.md"
PHASE = re.compile(r"start: (.*?) \(\+(\d+) ms since process start\)")
# the boundaries of a restart, in order: (key, the start line's text begins with, what ends there).
# An election that fails part-way (Aeron: "no catchup progress", "failed to join catchup log", a
# leader change) starts again from CANVASS: the election states count at their last entry, the
# pass that closed it, so a failed attempt's time shows under "election to its last CANVASS".
PHASES = (
    ("python", "Python ready", "Python ready"),
    ("jvm", "JVM started", "JVM started"),
    ("launched", "media driver, archive", "media driver, archive (recordings recovered), consensus module launched"),
    ("snapshot_read", "snapshot at", "snapshot read from the archive"),
    ("restored", "service restored", "service restored (engine snapshot decoded, reply cache)"),
    ("canvass", "election state CANVASS", "election to its last CANVASS (failed attempts included)"),
    ("replay", "election state FOLLOWER_REPLAY", "CANVASS until its own log replay begins"),
    ("catchup_init", "election state FOLLOWER_CATCHUP_INIT", "own log replayed (FOLLOWER_REPLAY)"),
    ("catchup", "election state FOLLOWER_CATCHUP ", "leader's catch-up replay joined (FOLLOWER_CATCHUP_AWAIT)"),
    ("ready", "election state FOLLOWER_READY", "caught up, live log joined (FOLLOWER_CATCHUP, FOLLOWER_LOG_*)"),
    ("closed", "election state CLOSED", "election CLOSED (in step)"),
)
ELECTION = {key for key, prefix, _ in PHASES if prefix.startswith("election state")}
EVENT = re.compile(r"(?:WARN|ERROR) - (.{0,60})")
RESTORED = re.compile(r"restored a snapshot of (\d+) bytes in ([\d.]+) s \((\d+) resting orders\)"
                      r"(?:: engine (\d+) ms, replies (\d+) ms)?")
SNAPSHOT_AT = re.compile(r"snapshot at log position (\d+) read from the archive, (\d+) bytes in (\d+) ms")


def thread_group(name: str) -> str:
    """Threads of one role under one name: JIT compilers, GC workers, Aeron agents, Python."""
    if "Compiler" in name:
        return "JIT " + name[:2]  # C1 / C2
    if name.startswith(("GC Thread", "G1 ")) or name in ("VM Thread",):
        return "GC and VM thread"
    return re.sub(r"[-#\s]*\d+$", "", name) or name


def grouped_cpu(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in thread_cpu(pid).items():
        g = thread_group(name)
        out[g] = out.get(g, 0.0) + s * 1000
    return out


def settings(args) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    base: dict[str, str] = {}
    if args.base_tree is not None:
        base["PYTHONPATH"] = str(args.base_tree)
    if args.base_jar is not None:
        base["MATCHX_JAR"] = str(args.base_jar)
    env_b = dict(kv.split("=", 1) for kv in args.env_b)
    return {"cds": ({}, {"MATCHX_CDS": "0"}), "code": ({}, base), "env": ({}, env_b), "log": ({}, {}),
            "none": ({}, {})}


def watch_restart(cluster: LocalCluster, member: int, offset: int, launched_at: float, timeout: float) -> dict:
    """Follows the member's log from ``offset`` until its election closes: per boundary the ms
    from its launch (``launched_at``, monotonic) to when the line was seen here (polled every
    10 ms: one clock for the Python and the Java lines) and the CPU (total and per thread group)
    then; ``line_at``: the ms since process start the line itself says."""
    path = cluster.layout.member_dir(member) / "member.log"
    pid = cluster.pids()[member]
    out: dict = {"at": {}, "line_at": {}, "cpu": {}, "threads": {}}
    buf = ""
    deadline = time.monotonic() + timeout
    with path.open("r", errors="replace") as fh:
        fh.seek(offset)
        while "closed" not in out["at"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"member {member} not in step after {timeout:.0f} s")
            chunk = fh.read()
            if not chunk:
                time.sleep(0.01)
                continue
            buf += chunk
            lines, buf = buf.rsplit("\n", 1) if "\n" in buf else ("", buf)
            cpu = None
            for line in lines.splitlines():
                m = RESTORED.search(line)
                if m:
                    out["restore"] = {"bytes": int(m.group(1)), "ms": float(m.group(2)) * 1000,
                                      "orders": int(m.group(3))}
                    if m.group(4):
                        out["restore"].update(engine_ms=int(m.group(4)), replies_ms=int(m.group(5)))
                m = SNAPSHOT_AT.search(line)
                if m:
                    out["snapshot"] = {"position": int(m.group(1)), "bytes": int(m.group(2)),
                                       "read_ms": int(m.group(3))}
                m = EVENT.search(line)
                if m and "start:" not in line:
                    out.setdefault("events", []).append(m.group(1).strip())
                m = PHASE.search(line)
                if not m:
                    continue
                what = m.group(1) + " "
                if what.startswith("election state CANVASS"):
                    out["canvass_count"] = out.get("canvass_count", 0) + 1
                for key, prefix, _ in PHASES:
                    if what.startswith(prefix) and (key in ELECTION or key not in out["at"]):
                        if cpu is None:
                            cpu = grouped_cpu(pid)
                            seen = (time.monotonic() - launched_at) * 1000
                        out["at"][key] = seen
                        out["line_at"][key] = float(m.group(2))
                        out["cpu"][key] = sum(cpu.values())
                        out["threads"][key] = cpu
    status = cluster.member_status(member)
    out["position_in_step"] = status.get("log_position", 0)
    return out


def restart(cluster: LocalCluster, member: int, env: dict[str, str], args) -> dict:
    if args.kill:
        cluster.kill(member, signal.SIGKILL)
    else:
        cluster.stop_member(member)
    time.sleep(args.down_s)
    path = cluster.layout.member_dir(member) / "member.log"
    offset = path.stat().st_size if path.is_file() else 0
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the member process inherits it
    launched_at = time.monotonic()
    try:
        cluster.start_member(member)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return watch_restart(cluster, member, offset, launched_at, args.timeout_s)


def grow_log_after_snapshot(cluster: LocalCluster, mb: float) -> list[dict]:
    """A snapshot on every member, then the flow's log grows ``mb`` MB past it: what a member
    killed now replays at its restart (its own log after the snapshot, before the catch-up).
    Returns each member's figures for that snapshot (bytes, the service's build and write ms)."""
    for _ in range(100):
        try:
            taken = cluster.request_snapshot(timeout=60)
            break
        except Exception as exc:  # noqa: BLE001 - the control toggle may be busy: again
            log(f"snapshot: {exc}; again")
            time.sleep(0.5)
    else:
        raise RuntimeError("no snapshot could be taken")
    stats = [{k: cluster.member_status(m).get(f"last_snapshot_{k}", -1) for k in ("bytes", "build_ms", "write_ms")}
             for m in taken]
    mark = max(taken.values()) + int(mb * 1e6)
    wait_for(lambda: cluster.member_status(cluster.await_leader(60)).get("log_position", 0) >= mark, 600,
             f"{mb} MB of log after the snapshot", interval=0.05)
    return stats


def segments(p: dict) -> list[tuple[str, float | None, float | None]]:
    """(what ended there, wall ms, CPU ms) per boundary, from the previous boundary seen (a
    boundary the restart did not pass, e.g. no log to replay, folds into the next)."""
    out = []
    prev_t, prev_c = 0.0, 0.0
    for key, _, label in PHASES:
        if key not in p["at"] or p["at"][key] < prev_t:  # not passed, or only in a failed attempt
            out.append((label, None, None))
            continue
        t, c = p["at"][key], p["cpu"][key]
        out.append((label, t - prev_t, c - prev_c))
        prev_t, prev_c = t, c
    return out


def start_flow(cluster: LocalCluster, args, work: Path) -> subprocess.Popen:
    """The failover bench's client worker: resting orders, then its order flow at ``--rate``."""
    spec = {"endpoints": cluster.ingress_endpoints(), "accounts": 200, "setup": True, "resting": args.resting,
            "api": "binary", "seed": 11, "rate": max(args.rate, 1.0), "max_s": 3600,
            "stop_file": str(work / "stop"), "ready_file": str(work / "ready"), "out_file": str(work / "samples.bin"),
            "drain_s": 60}
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "failover_under_load.py"), "--worker",
                             json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_flow(proc: subprocess.Popen | None, work: Path) -> None:
    if proc is None:
        return
    (work / "stop").write_text("stop")
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    for d in Path("/dev/shm").glob(f"matchx-client-{proc.pid}-*"):
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=("cds", "code", "env", "log", "none"), default="cds")
    ap.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE",
                    help="--setting env: B's members start with this in their environment (repeatable)")
    ap.add_argument("--base-tree", type=Path, help="--setting code: B runs the Python code of this checkout")
    ap.add_argument("--base-jar", type=Path, help="--setting code: B runs this jar")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--resting", type=int, default=0, help="resting orders placed before the restarts")
    ap.add_argument("--rate", type=float, default=0.0, help="orders/s sent during the restarts (0: none)")
    ap.add_argument("--kill", action="store_true", help="SIGKILL the member (default SIGTERM)")
    ap.add_argument("--down-s", type=float, default=0.0, help="the member stays down this long")
    ap.add_argument("--after-s", type=float, default=1.0, help="wait this long after it is in step")
    ap.add_argument("--timeout-s", type=float, default=180.0)
    ap.add_argument("--port-start", type=int, default=47000)
    ap.add_argument("--replay-mb", help="--setting log: A,B = MB of log after a fresh snapshot before each kill "
                                        "(the schedule is off; the bench takes the snapshots); with another "
                                        "setting one number, the same for both variants (e.g. --setting code: "
                                        "two code versions replaying the same length of log)")
    ap.add_argument("--keep-dir", type=Path, help="run the cluster here and keep it (member logs)")
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    if args.setting == "code" and args.base_tree is None and args.base_jar is None:
        ap.error("--setting code needs --base-tree and/or --base-jar")
    replay_mb: dict[str, float] = {}
    if args.setting == "log":
        try:
            replay_mb = dict(zip(("A", "B"), (float(x) for x in (args.replay_mb or "").split(",")), strict=True))
        except ValueError:
            ap.error("--setting log needs --replay-mb A,B (two numbers, MB)")
    elif args.replay_mb is not None:
        try:
            replay_mb = dict.fromkeys(("A", "B"), float(args.replay_mb))
        except ValueError:
            ap.error(f"--setting {args.setting} takes one number of MB for --replay-mb")
    env_a, env_b = settings(args)[args.setting]
    variants = ("A", "B") if args.setting != "none" else ("A",)
    env_text = environment()
    base = args.keep_dir or Path(tempfile.mkdtemp(prefix="matchx-member-start-"))
    # with --setting log the bench alone decides when snapshots are taken
    schedule = {"snapshot_interval_s": 0, "snapshot_log_bytes": 0} if replay_mb else {}
    layout = ClusterLayout(base_dir=base, port_base=free_port_base(args.port_start), timeouts=Timeouts(), **schedule)
    cluster = LocalCluster(layout, log_level="INFO")
    res: dict[str, list[dict]] = {v: [] for v in variants}
    work = base / "bench"
    work.mkdir(parents=True, exist_ok=True)
    flow = None
    machine = MachineLoad().__enter__()
    try:
        cluster.start()
        cluster.await_leader(120)
        cluster.await_followers(2, 120)
        if args.resting or args.rate:
            flow = start_flow(cluster, args, work)
            wait_for(lambda: (work / "ready").exists() or flow.poll() is not None, 900, "the client")
            if flow.poll() is not None:
                raise RuntimeError("client failed: " + flow.stderr.read()[-3000:])
            log(f"{args.resting:,} resting orders placed; flow at {args.rate:,.0f}/s")
        from pyengine import jvm

        jvm.start()
        for _ in range(300):  # the schedule may be taking one: the control toggle is then busy
            try:
                cluster.request_snapshot(timeout=120)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then raised by the last try
                log(f"snapshot: {exc}; again")
                time.sleep(0.5)
        for r in range(args.rounds):
            for which in (variants if r % 2 == 0 else variants[::-1]):
                leader = cluster.await_leader(60)
                member = next(m for m in range(3) if m != leader)
                taken = grow_log_after_snapshot(cluster, replay_mb[which]) if replay_mb else []
                p = restart(cluster, member, env_a if which == "A" else env_b, args)
                p["snapshots_taken"] = taken
                res[which].append(p)
                log(f"{args.setting} {which}: " + ", ".join(f"{k} {v:.0f}" for k, v in p["at"].items())
                    + f"; cpu {p['cpu'].get('closed', 0):.0f} ms; restore {p.get('restore')}")
                time.sleep(args.after_s)
    finally:
        stop_flow(flow, work)
        cluster.stop()
        if args.keep_dir is None:
            shutil.rmtree(base, ignore_errors=True)
        machine.__exit__(None, None, None)
    write_report(args, env_text, machine, variants, res)
    return 0


def med(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f}" if values else "-"


def write_report(args, env_text: str, machine: MachineLoad, variants: tuple[str, ...], res: dict) -> None:
    names = {"cds": {"A": "CDS on", "B": "CDS off"},
             "code": {"A": "this tree", "B": f"base ({args.base_tree or ''} {args.base_jar or ''})".strip()},
             "env": {"A": "as shipped", "B": " ".join(args.env_b)},
             "log": {v: f"{float(mb):g} MB of log after the snapshot" for v, mb in
                     zip(("A", "B"), (args.replay_mb or "0,0").split(","), strict=False)},
             "none": {"A": "restart"}}[args.setting]
    lines = [
        f"# A member's restart, phase by phase ({args.setting}: " + " vs ".join(names[v] for v in variants) + ")\n",
        f"Command: `python bench/member_start.py {' '.join(sys.argv[1:])}`  ",
        f"Environment: {env_text}; {machine.summary()}; 3 members on one 2-core machine (loopback); "
        "measured on a shared, loaded machine when the load above says so.  ",
        f"State: {args.resting:,} resting orders, order flow {args.rate:,.0f} orders/s during the restarts; "
        f"one follower {'SIGKILLed' if args.kill else 'stopped'}, down {args.down_s} s, restarted, "
        f"{args.rounds} times{' each way, alternating' if len(variants) > 1 else ''}"
        + (f"; before each kill the bench took a snapshot and let the log grow {args.replay_mb} MB past it "
           "(the snapshot schedule off)" if args.replay_mb and args.setting != "log" else "") + ".\n",
        "Per phase, median over the restarts: wall ms (CPU ms of the member process, all threads) "
        "from the previous boundary to this one.\n",
        "| phase ends at | " + " | ".join(names[v] for v in variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for i, (_key, _, label) in enumerate(PHASES):
        cells = []
        for v in variants:
            segs = [segments(p)[i] for p in res[v]]
            walls = [s[1] for s in segs if s[1] is not None]
            cpus = [s[2] for s in segs if s[2] is not None]
            cells.append(f"{med(walls)} ({med(cpus)})" if walls else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for title, key in (("**in step, ms after its launch**", "closed"),):
        lines.append(f"| {title} | " + " | ".join(
            med([p["at"][key] for p in res[v] if key in p["at"]]) + " (" +
            med([p["cpu"][key] for p in res[v] if key in p["cpu"]]) + ")" for v in variants) + " |")
    lines += ["", "Snapshot loaded and service restore (medians):", ""]
    for v in variants:
        snaps = [p["snapshot"] for p in res[v] if "snapshot" in p]
        rest = [p["restore"] for p in res[v] if "restore" in p]
        detail = ""
        if rest and "engine_ms" in rest[0]:
            detail = (f", of it engine {med([r['engine_ms'] for r in rest if 'engine_ms' in r])} ms, "
                      f"reply cache {med([r['replies_ms'] for r in rest if 'replies_ms' in r])} ms")
        grown = [(p["position_in_step"] - p["snapshot"]["position"]) / 1e6 for p in res[v] if "snapshot" in p]
        lines.append(f"- {names[v]}: snapshot {med([s['bytes'] / 1e6 for s in snaps], 1)} MB "
                     f"read in {med([s['read_ms'] for s in snaps])} ms; restore "
                     f"{med([r['ms'] for r in rest])} ms wall{detail}; log from the snapshot to in step "
                     f"{med(grown, 1)} MB")
    taken = [s for v in variants for p in res[v] for s in p.get("snapshots_taken", [])]
    if taken:
        lines += ["", f"The snapshots the bench took before the kills ({len(taken)}, every member's): "
                  f"median {med([s['bytes'] / 1e6 for s in taken], 1)} MB, the service's build "
                  f"{med([s['build_ms'] for s in taken])} ms (max {max(s['build_ms'] for s in taken)}), its write "
                  f"into the recording {med([s['write_ms'] for s in taken])} ms (max "
                  f"{max(s['write_ms'] for s in taken)}) (status.json of each member)."]
    lines += ["", "Elections that failed part-way and started again (CANVASS entered more than once), and "
              "the Aeron warnings the restarted member logged:", ""]
    for v in variants:
        again = [p.get("canvass_count", 1) - 1 for p in res[v]]
        events: dict[str, int] = {}
        for p in res[v]:
            for e in p.get("events", []):
                events[e] = events.get(e, 0) + 1
        lines.append(f"- {names[v]}: {sum(1 for a in again if a > 0)} of {len(again)} restarts ({sum(again)} "
                     "extra CANVASS); " + ("; ".join(f"{n} x `{e}`" for e, n in sorted(events.items(),
                                                                                      key=lambda kv: -kv[1]))
                                          or "no warnings"))
    lines += ["", "CPU per thread group when in step (ms, median):", ""]
    for v in variants:
        groups: dict[str, list[float]] = {}
        for p in res[v]:
            for g, ms in p["threads"].get("closed", {}).items():
                groups.setdefault(g, []).append(ms)
        top = sorted(groups.items(), key=lambda kv: -statistics.median(kv[1]))[:10]
        lines.append(f"- {names[v]}: " + ", ".join(f"{g} {statistics.median(ms):,.0f}" for g, ms in top))
    lines += ["", "Each restart (ms after its launch; CPU ms when in step):", "",
              "| variant | " + " | ".join(k for k, _, _ in PHASES) + " | cpu |", "|---|" + "---:|" * (len(PHASES) + 1)]
    for v in variants:
        for p in res[v]:
            lines.append(f"| {names[v]} | " + " | ".join(f"{p['at'][k]:.0f}" if k in p["at"] else "-"
                                                         for k, _, _ in PHASES)
                         + f" | {p['cpu'].get('closed', float('nan')):.0f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    log(f"wrote {args.report}")


if __name__ == "__main__":
    sys.exit(main())
