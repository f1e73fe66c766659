"""Reproduces the intermittent JPype SIGSEGV at JVM start: SIGTERM while JPype builds its class
wrappers.

    .venv/bin/python bench/sigterm_at_start.py --trials 40

Each trial starts a child process that starts the JVM as every member, worker and client does
(``pyengine.jvm.start``) and looks up the member's main classes, and sends it SIGTERM after a
random 0.3-2.0 s; the child runs in a scratch directory, where the JVM writes its hs_err file if
it crashes. Counted per trial: crashed (SIGSEGV in ``_jpype.so``: the hs_err file names the
frame and the Java frames), ended by the JVM's own SIGTERM handling (exit 143: the JVM had a
SIGTERM handler), ended by the signal (-15: the OS default, before the JVM or, since jvm.py
keeps the JVM from handling SIGTERM, after it), started before the signal came, or started
with the signal lost (it came while the JVM was being created, when jvm.py ignores it).

Writes bench/reports/sigterm_at_start.md.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MachineLoad, environment, log  # noqa: E402

REPORT = Path(__file__).parent / "reports" / "sigterm_at_start.md"
ROOT = Path(__file__).resolve().parent.parent
CHILD = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pyengine import jvm
jvm.start()
import jpype
for n in ("io.matchx.cluster.MemberNode", "io.aeron.cluster.ConsensusModule", "io.aeron.archive.Archive",
          "io.aeron.driver.MediaDriver", "java.util.Properties", "io.matchx.cluster.ShutdownLatch"):
    jpype.JClass(n)
print("started", flush=True)
import time
time.sleep(5)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    env = environment()
    rows: list[tuple[float, str, str]] = []
    machine = MachineLoad().__enter__()
    with tempfile.TemporaryDirectory(prefix="matchx-sigterm-") as tmp:
        for i in range(args.trials):
            work = Path(tmp) / str(i)
            work.mkdir()
            delay = rnd.uniform(0.3, 2.0)
            p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=work, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            time.sleep(delay)
            p.send_signal(signal.SIGTERM)
            out = p.communicate(timeout=120)[0].decode(errors="replace")
            crash = sorted(work.glob("hs_err_pid*.log"))
            if crash:
                text = crash[0].read_text(errors="replace")
                frame = re.search(r"Problematic frame:\n# (.*)", text)
                java = re.findall(r"^j  (\S+)", text, re.M)[:2]
                how = (f"SIGSEGV at {frame.group(1).strip() if frame else '?'}; Java frames {', '.join(java)}; "
                       f"'SIGTERM handler' thread: {'yes' if 'SIGTERM handler' in text else 'no'}")
                kind = "crashed"
            elif "started" in out:
                # exit 0: the SIGTERM came while the JVM was being created and was ignored
                # (pyengine/jvm.py); -15: it came after the child had started
                kind = "started; SIGTERM lost" if p.returncode == 0 else "started first"
                how = f"exit {p.returncode}"
            else:
                kind, how = ("JVM's SIGTERM handling" if p.returncode == 143 else "ended by the signal"), \
                    f"exit {p.returncode}"
            rows.append((delay, kind, how))
            log(f"trial {i + 1}: SIGTERM after {delay:.2f} s: {kind} ({how})")
    machine.__exit__(None, None, None)
    counts: dict[str, int] = {}
    for _, kind, _ in rows:
        counts[kind] = counts.get(kind, 0) + 1
    lines = [
        "# SIGTERM while the JVM starts under JPype\n",
        f"Command: `python bench/sigterm_at_start.py {' '.join(sys.argv[1:])}`  ",
        f"Environment: {env}; {machine.summary()}.\n",
        "| outcome | trials |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in sorted(counts.items())],
        "", "| SIGTERM after (s) | outcome | detail |", "|---:|---|---|",
        *[f"| {d:.2f} | {k} | {h} |" for d, k, h in rows],
    ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    log(f"wrote {args.report}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
