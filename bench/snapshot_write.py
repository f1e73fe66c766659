"""Where a service snapshot's time goes on a running 3-member cluster, for snapshot channel settings.

    .venv/bin/python bench/snapshot_write.py --variants 1m:0,64m:0 --snapshots 6

For each variant (``TERM:MTU`` of the service's snapshot publication, e.g. ``1m:0`` = Aeron's
default IPC channel with the driver's 1 MB term, ``64m:0``, ``64m:65504``) a fresh cluster is
started, loaded with the failover bench's order flow (``--orders`` binary orders from one client:
a ~15 MB service snapshot at 230,000), then takes ``--snapshots`` snapshots, ``--between`` more
orders before each. Per member and snapshot: the service's build and write times (status.json: the
Python take, then the chunks offered to the publication) and how long the member's consensus
module stayed in SNAPSHOT (its counters, sampled every ms by bench/election_trace.py: build, write,
the archive recording the rest, the consensus module's own snapshot). The members take each
snapshot at the same log position, all at once, on this machine's 2 cores, as in a failover run.

    .venv/bin/python bench/snapshot_write.py --in-process --base /work/main   # CPU, old vs new code

``--in-process``: no cluster; the service alone, in fresh processes alternating this tree's code
and ``--base``'s (another checkout, its engine compiled): the state after ``--orders`` of the
flow is restored (CPU of ``MatchingService.restore``), then ``--between`` more orders, then one
take (CPU of ``snapshot_buffer``, what the bridge hands Java), ``--snapshots`` rounds each.

Writes bench/reports/snapshot_write.md (or ``--report``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import election_trace  # noqa: E402
from bench.common import (  # noqa: E402
    MachineLoad,
    OrderFlow,
    bench_cluster,
    environment,
    jar_cleanup,
    log,
    setup_commands,
)
from pyengine.node.localcluster import ClusterError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "reports" / "snapshot_write.md"


def size(text: str) -> int:
    text = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("kmg")) * mult


def send(client, flow: OrderFlow, n: int, window: int = 4000) -> None:
    futures = []
    for _ in range(n):
        futures.append(client.submit_binary(flow.next()))
        if len(futures) >= window:
            for f in futures[: window // 2]:
                f.result(120)
            del futures[: window // 2]
    for f in futures:
        f.result(120)


def run_variant(args, term: int, mtu: int, port: int) -> dict:
    from pyengine.client import MatchClient

    rows: list[dict] = []
    with bench_cluster("snapwrite", port, snapshot_interval_s=0, snapshot_log_bytes=0,
                       snapshot_term_length=term, snapshot_mtu=mtu) as cluster:
        stop = cluster.dir / "trace.stop"
        trace_file = cluster.dir / "trace.txt"
        tracer = subprocess.Popen(
            [sys.executable, "-m", "bench.election_trace", "--out", str(trace_file), "--stop-file", str(stop),
             "--dirs", ",".join(cluster.layout.aeron_dir(m) for m in range(3))], cwd=ROOT)
        client = MatchClient(cluster.ingress_endpoints())
        try:
            if not client.wait_connected(60):
                raise SystemExit(f"could not connect: {client.last_error}")
            for f in [client.submit(c) for c in setup_commands(args.accounts)]:
                f.result(120)
            flow = OrderFlow(11, args.accounts, "f")
            t0 = time.monotonic()
            send(client, flow, args.orders)
            log(f"{term >> 20} MB term, mtu {mtu}: {args.orders:,} orders in {time.monotonic() - t0:.1f} s")
            for k in range(args.snapshots):
                send(client, flow, args.between)
                time.sleep(0.5)
                for _ in range(50):
                    try:
                        cluster.request_snapshot(60)
                        break
                    except ClusterError:  # the leader's control toggle still busy: try again
                        time.sleep(0.2)
                time.sleep(0.3)
                for m in range(3):
                    st = cluster.member_status(m)
                    rows.append({"k": k, "member": m, "bytes": st.get("last_snapshot_bytes"),
                                 "build_ms": st.get("last_snapshot_build_ms"),
                                 "write_ms": st.get("last_snapshot_write_ms")})
        finally:
            client.close()
            stop.write_text("stop")
            tracer.wait(30)
        durations = election_trace.snapshot_periods(election_trace.parse(trace_file))
    # the k-th SNAPSHOT period of each member is the k-th snapshot
    per_member: dict[int, list[float]] = {}
    for member, start, end in sorted(durations, key=lambda p: p[1]):
        per_member.setdefault(member, []).append((end - start) * 1000)
    for r in rows:
        spans = per_member.get(r["member"], [])
        r["snapshot_state_ms"] = spans[r["k"]] if r["k"] < len(spans) else None
    return {"term": term, "mtu": mtu, "rows": rows}


_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench.snapshot_take import _State
from pyengine import engine
from pyengine.service.matching import MatchingService
blob = open(sys.argv[2], "rb").read()
svc = MatchingService()
t = time.process_time()
svc.restore(blob)
restore = time.process_time() - t
st = _State.__new__(_State)
st.svc, st.rid = svc, 10**8
from bench.common import OrderFlow
st.flow = OrderFlow(int(sys.argv[4]), 200, "g")
st.run(int(sys.argv[3]))
t = time.process_time()
buf = svc.snapshot_buffer()
take = time.process_time() - t
print(json.dumps({"restore_ms": restore * 1000, "take_ms": take * 1000, "bytes": len(buf), "native": engine.NATIVE}))
"""


def in_process(args) -> list[str]:
    """CPU of a restore and of a take after --between orders, this tree's code against --base's."""
    import tempfile

    from bench.snapshot_take import _State

    state = Path(tempfile.mkdtemp(prefix="snapwrite-")) / "state.bin"
    st = _State(args.orders, args.accounts)
    # a service snapshot both codes read: its engine part signed (engine snapshot version 4)
    parts = st.svc._snapshot_parts()
    signed = st.svc.engine.snapshot()
    parts[1:3] = [struct.pack("<Q", len(signed)), signed]
    state.write_bytes(b"".join(parts))
    trees = {"new": str(ROOT), "old": str(args.base)}
    out: dict[str, list[dict]] = {"new": [], "old": []}
    try:
        for k in range(args.snapshots):
            for name in (("old", "new") if k % 2 else ("new", "old")):
                cmd = [sys.executable, "-c", _CHILD, trees[name], str(state), str(args.between), str(k)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=trees[name])
                if proc.returncode:
                    raise RuntimeError(f"{name} code failed: {proc.stderr[-2000:]}")
                out[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        state.unlink()
        state.parent.rmdir()
    lines = [f"| ms CPU (median of {args.snapshots}) | old ({args.base}) | new |", "|---|---:|---:|"]
    for key, label in (("restore_ms", "restore (`MatchingService.restore`, incl. its warm-up take)"),
                       ("take_ms", f"take after {args.between:,} more orders (`snapshot_buffer`)")):
        lines.append(f"| {label} | {med([r[key] for r in out['old']]):.0f} | {med([r[key] for r in out['new']]):.0f} |")
    lines.append(f"| snapshot bytes | {med([r['bytes'] for r in out['old']]):,.0f} | "
                 f"{med([r['bytes'] for r in out['new']]):,.0f} |")
    lines += ["", "Engines compiled: old " + str(all(r["native"] for r in out["old"])) + ", new " +
              str(all(r["native"] for r in out["new"])) + ". Each round, take ms old/new: " + "; ".join(
                  f"{o['take_ms']:.0f}/{n['take_ms']:.0f}" for o, n in zip(out["old"], out["new"], strict=True)) +
              ". Restore ms old/new: " + "; ".join(
                  f"{o['restore_ms']:.0f}/{n['restore_ms']:.0f}" for o, n in zip(out["old"], out["new"], strict=True))
              + "."]
    return lines


def med(values: list) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="1m:0,64m:0", help="TERM:MTU,... of the snapshot publication")
    ap.add_argument("--orders", type=int, default=230_000)
    ap.add_argument("--between", type=int, default=9_000, help="orders before each snapshot")
    ap.add_argument("--snapshots", type=int, default=6)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--port-start", type=int, default=27800)
    ap.add_argument("--report", type=Path, default=REPORT)
    ap.add_argument("--in-process", action="store_true", help="CPU of take and restore, no cluster")
    ap.add_argument("--base", type=Path, help="with --in-process: the checkout to compare against")
    args = ap.parse_args(argv)
    load_before = __import__("os").getloadavg()[0]
    env = environment()
    machine = MachineLoad().__enter__()
    if args.in_process:
        table = in_process(args)
        machine.__exit__(None, None, None)
        text = "\n".join([
            "## The service alone: CPU of a take and a restore, old code against new", "",
            f"Command: `python bench/snapshot_write.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
            f"Environment: {env}; load average before {load_before:.2f}; {machine.summary()}.  ",
            f"State: the failover bench's flow, {args.orders:,} orders from one client ({args.accounts} accounts), "
            f"restored in a fresh process, then {args.between:,} more orders and one take; old and new alternate.", "",
            *table]) + "\n"
        args.report.write_text(text)
        print(text)
        return 0
    results = []
    for v in args.variants.split(","):
        term, mtu = v.split(":")
        results.append(run_variant(args, size(term), int(mtu), args.port_start))
    jar_cleanup()
    machine.__exit__(None, None, None)
    lines = [
        "# A service snapshot on a running cluster: build, write, and the time in SNAPSHOT",
        "",
        f"Command: `python bench/snapshot_write.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Environment: {env}; load average before the run {load_before:.2f}; {machine.summary()}.  ",
        f"State: the failover bench's flow, {args.orders:,} binary orders from one client ({args.accounts} accounts), "
        f"then {args.between:,} more before each of {args.snapshots} snapshots (taken on request, no schedule). "
        "Three members take each snapshot at one log position, all at once, on 2 cores.",
        "",
        "build: the service's take (Python); write: its chunks offered to the snapshot publication (blocks while "
        "the archive has not recorded the window); SNAPSHOT: the consensus module's state as sampled from its "
        "counters (build + write + waiting for the recording to complete + the module's own snapshot).",
        "",
        "| snapshot publication | snapshot MB | build ms (median) | write ms (median) | SNAPSHOT ms (median) | "
        "SNAPSHOT ms (max) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        rows = res["rows"]
        mb = med([r["bytes"] for r in rows]) / 1e6
        name = f"term {res['term'] >> 20} MB, mtu {res['mtu'] or 'driver default'}"
        states = [r["snapshot_state_ms"] for r in rows if r["snapshot_state_ms"] is not None]
        lines.append(f"| {name} | {mb:.1f} | {med([r['build_ms'] for r in rows]):.0f} | "
                     f"{med([r['write_ms'] for r in rows]):.0f} | {med(states):.0f} | "
                     f"{max(states) if states else float('nan'):.0f} |")
    lines += ["", "Each snapshot and member (build / write / SNAPSHOT ms):", ""]
    for res in results:
        lines.append(f"- term {res['term'] >> 20} MB, mtu {res['mtu']}: " + "; ".join(
            f"#{r['k']} m{r['member']} {r['build_ms']}/{r['write_ms']}/"
            f"{'-' if r['snapshot_state_ms'] is None else round(r['snapshot_state_ms'])}" for r in res["rows"]))
    args.report.write_text("\n".join(lines) + "\n")
    log(f"report: {args.report}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
