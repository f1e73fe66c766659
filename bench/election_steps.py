"""Long election steps in a system's member logs: which step a failover waited in.

    .venv/bin/python bench/election_steps.py DIR [--over-ms 600]

DIR is a system directory (`matchctl up`'s, with workers/*.log) or any directory holding member
logs (*.log, searched below it). Every member logs each election step after its start
(`INFO election: STATE (+N ms since it began, step K)`, ElectionTiming.java); this counts the
transitions that took longer than ``--over-ms``, by from -> to, over all members. A member that
loops through one step many times logs one step in 20, so counts of looping elections are low
bounds.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

STEP = re.compile(r"\[matchx (?:worker \S+ )?(\S+ \S+)\] INFO election: ([A-Z_]+).*\(\+(\d+) ms since it began")


def long_steps(logs: list[Path], over_ms: int) -> Counter:
    counts: Counter = Counter()
    for log in logs:
        last: dict[str, tuple[str, int]] = {}
        for line in log.read_text(errors="replace").splitlines():
            m = STEP.search(line)
            if m is None:
                continue
            member, state, since = m.group(1), m.group(2), int(m.group(3))
            if member in last and since - last[member][1] > over_ms:
                counts[f"{last[member][0]} -> {state}"] += 1
            last[member] = (state, since)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--over-ms", type=int, default=600)
    args = parser.parse_args()
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a directory")
    logs = sorted(args.dir.rglob("*.log"))
    if not logs:
        parser.error(f"no *.log below {args.dir}")
    counts = long_steps(logs, args.over_ms)
    print(f"election steps over {args.over_ms} ms in {len(logs)} logs below {args.dir}: {sum(counts.values())}")
    for step, n in counts.most_common():
        print(f"{n:6d}  {step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
