"""A restarted member's first snapshot take, with and without the snapshot cache warmed while the
snapshot loads (#17).

    .venv/bin/python bench/snapshot_warm_start.py

In-process, no cluster: the failover bench's service state (``bench/snapshot_take.py``'s
``_State``: ``--flow`` orders from one client, ``--accounts`` accounts), its snapshot, then
``--rounds`` rounds, each loading that snapshot into a fresh service twice, alternated: *cold*
(the sections only, as a restore did before the warm-up) and *warm* (``MatchingService.restore``,
which takes one snapshot to build the engine's cache); then ``--between`` more orders (30 s at
the failover bench's 300 orders/s, a member's catch-up and first period) and the first take,
which on a member stalls the whole cluster. CPU time; medians.

Writes bench/reports/snapshot_warm_start.md (``--report`` to change).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import environment  # noqa: E402
from bench.snapshot_take import _State  # noqa: E402
from pyengine.service import matching  # noqa: E402
from pyengine.service.matching import MatchingService  # noqa: E402


def _load_cold(svc: MatchingService, blob: bytes) -> None:
    """The restore without its warm-up take (the code before it)."""
    mv = memoryview(blob)
    _magic, version, applied, position, chain = matching._SNAP_HEADER.unpack_from(mv, 0)
    off = matching._SNAP_HEADER.size
    (engine_len,) = matching._U64.unpack_from(mv, off)
    gc.disable()
    try:
        svc._restore_sections(mv, off + 8, engine_len, applied, position, chain, version)
        gc.freeze()
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flow", type=int, default=230_000)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--between", type=int, default=9_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--report", type=Path, default=ROOT / "bench" / "reports" / "snapshot_warm_start.md")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    state = _State(args.flow, args.accounts)
    blob = state.svc.snapshot()
    rows: dict[str, dict[str, list[float]]] = {m: {"load": [], "take": []} for m in ("cold", "warm")}
    for r in range(args.rounds):
        for mode in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            svc = MatchingService()
            t0 = time.process_time()
            if mode == "warm":
                svc.restore(blob)
            else:
                _load_cold(svc, blob)
            rows[mode]["load"].append((time.process_time() - t0) * 1000)
            # the same flow goes on from where the state's stopped, in the restored service
            state.svc = svc
            state.run(args.between)
            t0 = time.process_time()
            svc.snapshot()
            rows[mode]["take"].append((time.process_time() - t0) * 1000)
            print(f"round {r + 1} {mode}: load {rows[mode]['load'][-1]:.0f} ms, first take "
                  f"{rows[mode]['take'][-1]:.0f} ms", flush=True)
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in rows.items()}
    load_after = os.getloadavg()[0]
    lines = [
        "# A restarted member's first snapshot take, cold and warm",
        "",
        "Command: `" + " ".join(["python bench/snapshot_warm_start.py", *(argv or sys.argv[1:])]) + "`",
        f"Environment: {environment()}; load average {load_before:.2f} before, {load_after:.2f} after.",
        "",
        f"State: the failover bench's service state after {args.flow:,} orders of its flow, "
        f"{args.accounts} accounts; snapshot {len(blob):,} bytes. Each round loads it into a fresh "
        f"service cold (sections only) and warm (`MatchingService.restore`, which takes one "
        f"snapshot to build the engine's cache), then {args.between:,} more orders, then the first "
        f"take. CPU time, medians of {args.rounds} rounds, alternated.",
        "",
        "| load | load ms | first take ms |",
        "|---|---:|---:|",
        f"| cold | {med['cold']['load']:.0f} | {med['cold']['take']:.0f} |",
        f"| warm | {med['warm']['load']:.0f} | {med['warm']['take']:.0f} |",
        "",
        f"The warm-up moves {med['warm']['load'] - med['cold']['load']:.0f} ms of CPU into the "
        f"member's start (the member is out of the quorum then anyway) and takes "
        f"{med['cold']['take'] - med['warm']['take']:.0f} ms off its first take, which every "
        "member takes at the same log position while the cluster waits.",
        "",
    ]
    args.report.write_text("\n".join(lines))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
