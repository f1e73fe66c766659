"""A member's restart, phase by phase, with and without a JVM start setting, side by side.

    .venv/bin/python bench/member_start.py --rounds 6            # class data sharing on/off

A 3-member cluster (LocalCluster, default layout) takes one snapshot; then one follower is
stopped and started again 2 x ``--rounds`` times, alternating the two settings (on, off, off,
on, ...) so both see the same machine state. Per restart: the member's `start:` lines (ms since
its process started: Python ready, JVM started, media driver + archive + consensus module
launched, snapshot read, in step) and the CPU time (user + system, all threads) the member
process had used when it was in step, which is steadier than wall time on a shared machine.

Settings compared: ``cds`` (the class data sharing archive beside the jar, pyengine/jvm.py;
off = MATCHX_CDS=0).

Writes bench/reports/member_start.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, log  # noqa: E402
from pyengine.node.localcluster import LocalCluster, free_port_base, wait_for  # noqa: E402
from pyengine.node.settings import ClusterLayout, Timeouts  # noqa: E402

REPORT = Path(__file__).parent / "reports" / "member_start.md"
PHASE = re.compile(r"start: (.*?) \(\+(\d+) ms since process start\)")
PHASES = (("python", "Python ready"), ("jvm", "JVM started"), ("launched", "media driver, archive"),
          ("snapshot_read", "snapshot at"), ("closed", "election state CLOSED"))
SETTINGS = {"cds": ({}, {"MATCHX_CDS": "0"})}  # setting -> (env when on, env when off)


def phases(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in PHASE.finditer(text):
        for key, prefix in PHASES:
            if m.group(1).startswith(prefix):
                out.setdefault(key, float(m.group(2)))
    return out


def proc_cpu_ms(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def restart(cluster: LocalCluster, member: int, env: dict[str, str]) -> dict[str, float]:
    cluster.stop_member(member)
    offset = len(cluster.member_log(member))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the member process inherits it
    try:
        cluster.start_member(member)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wait_for(lambda: "election state CLOSED" in cluster.member_log(member)[offset:], 180,
             "the restarted member in step", interval=0.01)
    cpu = proc_cpu_ms(cluster.pids()[member])
    time.sleep(1.0)  # its last start lines
    out = phases(cluster.member_log(member)[offset:])
    out["cpu_ms"] = cpu
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cds")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--port-start", type=int, default=47000)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    on_env, off_env = SETTINGS[args.setting]
    env_text = environment()
    base = Path(tempfile.mkdtemp(prefix="matchx-member-start-"))
    layout = ClusterLayout(base_dir=base, port_base=free_port_base(args.port_start), timeouts=Timeouts())
    cluster = LocalCluster(layout, log_level="INFO")
    res: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    machine = MachineLoad().__enter__()
    try:
        cluster.start()
        cluster.await_leader(120)
        cluster.await_followers(2, 120)
        from pyengine import jvm

        jvm.start()
        for _ in range(300):  # the schedule may be taking one: the control toggle is then busy
            try:
                cluster.request_snapshot(timeout=120)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then raised by the last try
                log(f"snapshot: {exc}; again")
                time.sleep(0.5)
        leader = cluster.await_leader(60)
        member = next(m for m in range(3) if m != leader)
        for r in range(args.rounds):
            for which in (("on", "off") if r % 2 == 0 else ("off", "on")):
                p = restart(cluster, member, on_env if which == "on" else off_env)
                res[which].append(p)
                log(f"{args.setting} {which}: {p}")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        machine.__exit__(None, None, None)

    def med(which: str, key: str) -> str:
        v = [p[key] for p in res[which] if key in p]
        return f"{statistics.median(v):,.0f}" if v else "-"

    lines = [
        f"# A member's restart with `{args.setting}` on and off, side by side\n",
        f"Command: `python bench/member_start.py {' '.join(sys.argv[1:])}`  ",
        f"Environment: {env_text}; {machine.summary()}; 3 members on one 2-core machine (loopback); "
        "measured on a shared, loaded machine when the load above says so.  ",
        f"Restarts: one follower, {args.rounds} times each way, alternating; a snapshot of an almost empty "
        "state (the start costs alone).\n",
        "| median over the restarts (ms after process start) | on | off |", "|---|---:|---:|",
    ]
    for key, prefix in PHASES:
        lines.append(f"| {prefix} | {med('on', key)} | {med('off', key)} |")
    lines.append(f"| **CPU used by the member when in step (ms, all threads)** | {med('on', 'cpu_ms')} | "
                 f"{med('off', 'cpu_ms')} |")
    lines += ["", "Each restart (ms):", "", "| setting | " + " | ".join(k for k, _ in PHASES) + " | cpu |",
              "|---|" + "---:|" * (len(PHASES) + 1)]
    for which in ("on", "off"):
        for p in res[which]:
            lines.append(f"| {which} | " + " | ".join(f"{p[k]:.0f}" if k in p else "-" for k, _ in PHASES)
                         + f" | {p['cpu_ms']:.0f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
