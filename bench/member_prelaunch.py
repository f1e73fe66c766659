"""A member process's way to its Aeron launch, in-process: CPU and wall time, this tree against
an older checkout (#17).

    .venv/bin/python bench/member_prelaunch.py --base /path/to/old/checkout --rounds 9

No cluster: each round starts one fresh process per tree (alternated, which goes first too) that
does what ``pyengine/node/member.py`` does before ``MemberNode.launch``: Python and the member
module, the JVM (class data sharing as the jar has it), the bridge and the service modules, and,
in a tree whose member starts its metrics server before the launch (one without
``pyengine/node/metrics_port.py``), that server with its collectors' modules. Times are taken
in the process (CPU: ``getrusage``, Python's own start included; wall: from the first line of
the script, Python's start left out). Both trees run the jar ``MATCHX_JAR`` or this tree's.

Writes bench/reports/member_prelaunch.md (``--report`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "reports" / "member_prelaunch.md"


def _cpu_ms() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1000


def probe(tree: Path) -> int:
    """One process: the steps before the launch, timed."""
    w0 = time.perf_counter()
    sys.path.insert(0, str(tree))
    marks: dict[str, tuple[float, float]] = {}

    def mark(name: str) -> None:
        marks[name] = ((time.perf_counter() - w0) * 1000, _cpu_ms())

    import pyengine.node.member  # noqa: F401
    from pyengine import jvm

    mark("imports")
    jvm.start()
    jvm.stamp_java_log_lines()
    mark("jvm")
    from pyengine.node.bridge import ServiceBridge
    from pyengine.service.matching import MatchingService

    ServiceBridge(MatchingService())
    server = None
    if not (tree / "pyengine" / "node" / "metrics_port.py").exists():
        from pyengine.node.metrics import JvmCollector, MetricsServer

        server = MetricsServer("127.0.0.1", 0, [JvmCollector({"member": "0"})])
        server.start()
    mark("launch")
    if server is not None:
        server.stop()  # (after the mark: its shutdown waits up to half a second for the serving loop)
    print(json.dumps(marks))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help="the older checkout (its engine compiled)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    if args.probe is not None:
        return probe(args.probe)
    if args.base is None:
        ap.error("--base is required")
    # (here, not at the top: a probe process must import only what a member does)
    sys.path.insert(0, str(ROOT))
    from bench.common import MachineLoad, environment, log
    env = dict(os.environ)
    env.setdefault("MATCHX_JAR", str(ROOT / "java-cluster" / "target" / "matchx-cluster.jar"))
    trees = {"old": args.base.resolve(), "new": ROOT}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    machine = MachineLoad().__enter__()
    for i in range(args.rounds):
        for k in (("old", "new") if i % 2 == 0 else ("new", "old")):
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", str(trees[k])],
                                 capture_output=True, text=True, check=True, cwd=str(trees[k]), env=env,
                                 timeout=120).stdout
            runs[k].append(json.loads(out.strip().splitlines()[-1]))
        log(f"round {i}: " + ", ".join(f"{k} {runs[k][-1]['launch'][1]:.0f} ms CPU" for k in ("old", "new")))
    machine.__exit__(None, None, None)

    def med(k: str, step: str, idx: int, before: str | None) -> float:
        return statistics.median(r[step][idx] - (r[before][idx] if before else 0.0) for r in runs[k])

    steps = (("imports", None, "Python: the member module and what it imports (CPU: and Python's start)"),
             ("jvm", "imports", "the JVM started (JPype, class data sharing)"),
             ("launch", "jvm", "bridge and service modules (and the old tree's metrics server)"),
             ("launch", None, "**ready to launch**"))
    lines = [
        "# A member's way to its Aeron launch, old code against new\n",
        f"Command: `python bench/member_prelaunch.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Environment: {environment()}; {machine.summary()}.  ",
        f"Old: {args.base}; new: {ROOT}; jar `{env['MATCHX_JAR']}` for both.  ",
        f"Medians of {args.rounds} fresh processes per tree, alternated; ms.\n",
        "| step | old CPU | new CPU | old wall | new wall |", "|---|---:|---:|---:|---:|",
    ]
    for step, before, what in steps:
        lines.append(f"| {what} | {med('old', step, 1, before):.0f} | {med('new', step, 1, before):.0f} | "
                     f"{med('old', step, 0, before):.0f} | {med('new', step, 0, before):.0f} |")
    lines += ["", "Ready to launch, each run (CPU ms, old / new): " + "; ".join(
        f"{o['launch'][1]:.0f}/{n['launch'][1]:.0f}" for o, n in zip(runs["old"], runs["new"], strict=True)) + "."]
    args.report.write_text("\n".join([*lines, ""]))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
