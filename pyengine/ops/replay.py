"""Replay JSON-lines commands through a fresh Engine and print JSON-lines events.

Usage: ``python -m pyengine.ops.replay [FILE] [--state-hash]`` (stdin when FILE is absent or ``-``).

Each input line is one command object; an optional integer ``ts`` field gives the command
timestamp (otherwise the previous timestamp + 1, starting at 1). Blank lines and lines
starting with ``#`` are skipped. A line that is not a JSON object (or has a bad ``ts``)
prints ``{"type":"rejected","reason":"bad_request","line":N,...}`` and replay goes on.
With ``--state-hash`` a final ``{"type":"state_hash","hash":...,"commands":N}`` line is
printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

import orjson

from pyengine.engine import Engine


def replay(inp: BinaryIO, out: BinaryIO, engine: Engine | None = None,
           state_hash: bool = False) -> Engine:
    eng = engine if engine is not None else Engine()
    last_ts = 0
    n_cmds = 0
    write = out.write
    dumps = orjson.dumps
    for lineno, raw in enumerate(inp, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            cmd = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            write(dumps({"type": "rejected", "reason": "bad_request", "line": lineno,
                         "detail": f"invalid JSON: {e}"[:200]}) + b"\n")
            continue
        if type(cmd) is not dict:
            write(dumps({"type": "rejected", "reason": "bad_request", "line": lineno,
                         "detail": "line is not a JSON object"}) + b"\n")
            continue
        if "ts" in cmd:
            ts = cmd.pop("ts")
            if type(ts) is not int or ts < 0 or ts >= 2**63:
                write(dumps({"type": "rejected", "reason": "bad_request", "line": lineno,
                             "detail": "ts must be a non-negative integer"}) + b"\n")
                continue
        else:
            ts = last_ts + 1
        last_ts = ts
        n_cmds += 1
        for ev in eng.apply(cmd, ts):
            if ev["type"] == "rejected":
                ev = {**ev, "line": lineno}
            write(dumps(ev) + b"\n")
    if state_hash:
        write(dumps({"type": "state_hash", "hash": eng.state_hash(), "commands": n_cmds})
              + b"\n")
    return eng


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="replay", description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", default="-", help="JSON-lines commands (default stdin)")
    ap.add_argument("--state-hash", action="store_true", help="print the final state hash")
    args = ap.parse_args(argv)
    out = sys.stdout.buffer
    if args.file == "-":
        replay(sys.stdin.buffer, out, state_hash=args.state_hash)
    else:
        try:
            f = open(args.file, "rb")  # noqa: SIM115
        except OSError as e:
            print(f"replay: cannot open {args.file}: {e}", file=sys.stderr)
            return 2
        with f:
            replay(f, out, state_hash=args.state_hash)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
