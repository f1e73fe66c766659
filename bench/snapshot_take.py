"""What a member's snapshot take costs, old code against new, on the state of the failover bench.

    .venv/bin/python bench/snapshot_take.py --base /path/to/old/checkout
    .venv/bin/python bench/snapshot_take.py --base OLD --profile   # + cProfile, plain Python

Every member (the leader too) takes its snapshot at the same log position, and the cluster makes
no progress meanwhile (#17), so the take's CPU time is a pause. No cluster here: two worker
processes, one running the code of ``--base`` (a checkout with its engine compiled), one this
checkout's, each build the service state of ``bench/failover_under_load.py`` (``--flow`` orders
of its order flow from one client in messages of 10 binary commands, ``--accounts`` accounts:
the finished orders fill the accounts' dedup windows, the answers the reply cache) and take one
snapshot. Then ``--rounds`` rounds, the two workers one after the other (which goes first
alternates), each round in each worker:

1. ``--between`` more orders of the same flow (9,000: 30 s at the bench's 300 orders/s);
2. a take (``MatchingService.snapshot()``), timed (CPU and wall);
3. a take right after it, nothing changed, timed.

The two workers' snapshots of each round must be the same bytes (same state, old and new code:
SHA-256 compared), and each worker checks its take against an encoding of the engine afresh
where the code has one (``dump(engine, use_cache=False)``). Then the load side, alternated the
same way, each in a fresh process (a restarted member's): ``MatchingService.on_start`` with the
last snapshot, ``--after-load`` more orders of the flow (another
client; a member's replay of its own log and the leader's), and the first take after them (a
member's SNAPSHOT in its catch-up, or the next scheduled one); and again with the member's
warm-up once in step (``warm_snapshot_cache``) before that take.
Figures are medians; ratios are old / new. ``--profile`` adds a cProfile of one take after
``--between`` orders in each tree with the plain-Python engine (``MATCHX_PURE_ENGINE=1``).

Writes bench/reports/snapshot_take.md (``--report`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "reports" / "snapshot_take.md"
CLIENT = 777


# ---------------------------------------------------------------------------- worker (one tree)

class _State:
    """The failover bench's service state, grown by its order flow."""

    def __init__(self, flow_n: int, accounts: int) -> None:
        import orjson

        from bench.common import OrderFlow, setup_commands
        from pyengine.service.matching import MatchingService
        from pyengine.wire.protocol import Channel

        self.svc = MatchingService()
        self.rid = 0
        self.client = CLIENT
        for c in setup_commands(accounts):
            self._send([orjson.dumps(c)], Channel.ENGINE_JSON)
        self.flow = OrderFlow(1, accounts, "f")
        self.run(flow_n)

    @classmethod
    def resumed(cls, svc, accounts: int) -> _State:
        """A flow into a restored service: another client (its request ids start again) and
        another seed and tag (its client order ids are new), on the same accounts."""
        from bench.common import OrderFlow

        st = cls.__new__(cls)
        st.svc = svc
        st.rid = 0
        st.client = CLIENT + 1
        st.flow = OrderFlow(2, accounts, "r")
        return st

    def _send(self, payloads: list[bytes], channel) -> None:
        from pyengine.wire import protocol
        from pyengine.wire.protocol import Command

        cmds = []
        for pl in payloads:
            self.rid += 1
            cmds.append(Command(self.rid, channel, pl))
        self.svc.on_message(1, 1_700_000_000_000 + self.rid, 64 * self.rid, protocol.encode_request(self.client, cmds))

    def run(self, n: int) -> None:
        from pyengine.wire.codec import encode_command
        from pyengine.wire.protocol import Channel

        for _ in range(0, n, 10):
            self._send([encode_command(self.flow.next()) for _ in range(10)], Channel.ENGINE_BINARY)


def _timed(fn):
    import gc

    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000


def _fresh_check(svc, blob: bytes) -> bool | None:
    """Whether the service snapshot's engine part is what an encoding afresh gives (None: this
    tree's engine keeps nothing between snapshots, so there is nothing to compare)."""
    from pyengine.engine import snapshot

    try:  # (the service snapshot's engine part has no digest since engine version 5)
        fresh = snapshot.dump(svc.engine, use_cache=False, digest=False)
    except TypeError:  # an older dump(engine[, use_cache])
        try:
            fresh = snapshot.dump(svc.engine, use_cache=False)
        except TypeError:
            return None
    return fresh in blob


def restore_worker(args) -> int:
    """One load of ``--blob`` in this fresh process as a restarting member loads it
    (``MatchingService.on_start``), ``--after-load`` more orders (a
    member's own log and catch-up after its snapshot), then the first take after the load (a
    member's take in its catch-up, or the next snapshot's) and a take right after it. With
    ``--in-step``, the member's warm-up once in step (``warm_snapshot_cache``) comes first."""
    sys.path.insert(0, str(args.tree))
    from pyengine import engine as engine_pkg
    from pyengine.service.matching import MatchingService

    blob = args.blob.read_bytes()
    svc = MatchingService()
    _, cpu, wall = _timed(lambda: svc.on_start(0, blob))
    if args.after_load:
        _State.resumed(svc, args.accounts).run(args.after_load)
    warm_cpu = _timed(svc.warm_snapshot_cache)[1] if args.in_step else 0.0
    first, cpu2, wall2 = _timed(svc.snapshot)
    _, cpu3, _wall3 = _timed(svc.snapshot)
    same = first == blob if not args.after_load else _fresh_check(svc, first) is not False
    print(json.dumps({"native": engine_pkg.NATIVE, "cpu": cpu, "wall": wall, "take_cpu": cpu2,
                      "take_wall": wall2, "again_cpu": cpu3, "warm_cpu": warm_cpu, "same": same}))
    return 0


def worker(args) -> int:
    sys.path.insert(0, str(args.tree))
    import hashlib

    from pyengine import engine as engine_pkg

    out = sys.stdout
    t0 = time.process_time()
    st = _State(args.flow, args.accounts)
    eng = st.svc.engine
    first, first_cpu, first_wall = _timed(st.svc.snapshot)
    out.write(json.dumps({
        "native": engine_pkg.NATIVE, "build_cpu_s": time.process_time() - t0,
        "open": len(eng.orders), "finished": sum(len(a.finished) for a in eng.accounts.values()),
        "fills": sum(len(a.fills) for a in eng.accounts.values()),
        "replies": sum(len(e) for e in st.svc.replies.by_client.values()),
        "bytes": len(first), "first_cpu": first_cpu, "first_wall": first_wall}) + "\n")
    out.flush()
    last = first
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "round":
            st.run(cmd["orders"])
            blob, cpu, wall = _timed(st.svc.snapshot)
            again, cpu2, wall2 = _timed(st.svc.snapshot)
            res = {"cpu": cpu, "wall": wall, "again_cpu": cpu2, "again_wall": wall2,
                   "sha": hashlib.sha256(blob).hexdigest(), "same_again": again == blob,
                   "fresh_equal": _fresh_check(st.svc, blob), "bytes": len(blob)}
            last = blob
        elif cmd["op"] == "save":
            Path(cmd["path"]).write_bytes(last)
            res = {"bytes": len(last)}
        elif cmd["op"] == "profile":
            import cProfile
            import io
            import pstats

            st.run(cmd["orders"])
            prof = cProfile.Profile()
            prof.enable()
            st.svc.snapshot()
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(cmd.get("top", 12))
            res = {"text": buf.getvalue()}
        else:
            break
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


# ---------------------------------------------------------------------------- orchestrator

class Worker:
    def __init__(self, name: str, tree: Path, args, pure: bool = False) -> None:
        env = dict(os.environ)
        env.pop("MATCHX_PURE_ENGINE", None)
        if pure:
            env["MATCHX_PURE_ENGINE"] = "1"
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--tree", str(tree),
             "--flow", str(args.flow), "--accounts", str(args.accounts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(tree))
        self.info: dict = {}

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} ended early (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(60)


def _med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--restore-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--blob", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--in-step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help="the checkout of the old code (its engine compiled)")
    ap.add_argument("--flow", type=int, default=230_000, help="orders of the flow before the first take")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--between", type=int, default=9_000, help="orders of the flow between two rounds' takes")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--loads", type=int, default=9, help="loads of the last snapshot per code, each in a fresh process")
    ap.add_argument("--after-load", type=int, default=6_000,
                    help="orders between a load and its first take (a restarting member's replay: "
                         "~2 MiB of log, the snapshot size trigger)")
    ap.add_argument("--profile", action="store_true", help="also cProfile one take per tree (plain Python)")
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.restore_worker:
        return restore_worker(args)
    if args.base is None:
        ap.error("--base is required")
    sys.path.insert(0, str(ROOT))
    from bench.common import MachineLoad, environment, log

    env = environment()
    log(f"environment: {env}")
    machine = MachineLoad().__enter__()
    trees = {"old": args.base.resolve(), "new": ROOT}
    workers = {k: Worker(k, t, args) for k, t in trees.items()}
    for w in workers.values():
        w.info = w.read()
        log(f"{w.name}: {w.info}")
    rounds: dict[str, list[dict]] = {"old": [], "new": []}
    same_bytes = True
    for i in range(args.rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        res = {k: workers[k].ask({"op": "round", "orders": args.between}) for k in order}
        same_bytes &= res["old"]["sha"] == res["new"]["sha"]
        for k in order:
            rounds[k].append(res[k])
        log(f"round {i}: " + ", ".join(f"{k} {res[k]['cpu']:.0f}/{res[k]['again_cpu']:.0f} ms CPU" for k in order)
            + f", same bytes {res['old']['sha'] == res['new']['sha']}")
    # the load side in fresh processes (a restarted member's): the last snapshot, read by each
    # code in turn
    blob_file = Path(tempfile.mkstemp(prefix="matchx-snapshot-take-", suffix=".bin")[1])
    workers["new"].ask({"op": "save", "path": str(blob_file)})
    loads: dict[str, list[dict]] = {"old": [], "new": []}
    in_step: dict[str, list[dict]] = {"old": [], "new": []}
    try:
        for i in range(args.loads):
            for k in (("old", "new") if i % 2 == 0 else ("new", "old")):
                for mode, rows in (([], loads[k]), (["--in-step"], in_step[k])):
                    rows.append(json.loads(subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--restore-worker", "--tree",
                         str(trees[k]), "--blob", str(blob_file), "--accounts", str(args.accounts),
                         "--after-load", str(args.after_load), *mode], capture_output=True, text=True,
                        check=True, cwd=str(trees[k])).stdout))
            log(f"load {i}: " + ", ".join(f"{k} {loads[k][-1]['cpu']:.0f} ms + take {loads[k][-1]['take_cpu']:.0f} ms"
                                          f" (in step: warm-up {in_step[k][-1]['warm_cpu']:.0f} ms + take "
                                          f"{in_step[k][-1]['take_cpu']:.0f} ms)" for k in ("old", "new")))
    finally:
        blob_file.unlink()
    for w in workers.values():
        w.close()
    profiles: dict[str, str] = {}
    if args.profile:
        for k, t in trees.items():
            log(f"profiling {k} (plain Python) ...")
            w = Worker(k, t, args, pure=True)
            w.read()
            w.ask({"op": "round", "orders": args.between})
            profiles[k] = w.ask({"op": "profile", "orders": args.between})["text"]
            w.close()
    machine.__exit__(None, None, None)
    log(machine.summary())
    write_report(args, env, machine.summary(), workers, rounds, loads, in_step, profiles, same_bytes)
    fresh_ok = all(r["fresh_equal"] is not False and r["same_again"] for rs in rounds.values() for r in rs)
    loads_ok = all(r["same"] for rs in (*loads.values(), *in_step.values()) for r in rs)
    return 0 if same_bytes and fresh_ok and loads_ok else 1


def write_report(args, env: str, machine: str, workers: dict, rounds: dict, loads: dict, in_step: dict,
                 profiles: dict, same_bytes: bool) -> None:
    info = workers["new"].info
    old_rev = _rev(args.base)
    new_rev = _rev(ROOT)

    def row(what: str, rs: dict, key: str) -> str:
        o, n = _med(rs["old"], key), _med(rs["new"], key)
        return f"| {what} | {o:.0f} | {n:.0f} | {o / n:.1f}x |"

    def table(unit: str, take: str, again: str, first: str) -> list[str]:
        return [f"| ms {unit} | old | new | old / new |", "|---|---:|---:|---:|",
                row(f"take after {args.between:,} orders", rounds, take),
                row("take right after a take (nothing changed)", rounds, again),
                row("load (`MatchingService.on_start`, as a member starts; a fresh process)",
                    loads, take),
                row(f"first take after the load and {args.after_load:,} orders", loads, first),
                *([row("take right after that one", loads, "again_cpu"),
                   row(f"warm-up once in step instead (after the load and {args.after_load:,} orders)",
                       in_step, "warm_cpu"),
                   row("first take after that warm-up", in_step, "take_cpu")] if unit == "CPU" else []), ""]

    fresh = [r["fresh_equal"] for r in rounds["new"]]
    same_after = all(r["same_again"] for rs in rounds.values() for r in rs) and \
        all(r["same"] for rs in (*loads.values(), *in_step.values()) for r in rs)
    pairs = list(zip(rounds["old"], rounds["new"], strict=True))
    load_pairs = list(zip(loads["old"], loads["new"], strict=True))
    lines = [
        "# Snapshot take: old code against new, on the failover bench's state\n",
        f"Command: `python bench/snapshot_take.py {' '.join(sys.argv[1:])}`  ",
        f"Environment: {env}; {machine}; engines compiled (old: {workers['old'].info['native']}, "
        f"new: {info['native']}); one process per code, no cluster.  ",
        f"Old: {old_rev}; new: {new_rev}.  ",
        f"State: `bench/failover_under_load.py`'s flow, {args.flow:,} orders from one client "
        f"({args.accounts} accounts), then {args.between:,} more before each round's take: at the "
        f"first take {info['open']:,} open orders, {info['finished']:,} finished orders in the dedup "
        f"windows, {info['fills']:,} fills, {info['replies']:,} cached answers; service snapshot "
        f"{info['bytes']:,} bytes (last round {rounds['new'][-1]['bytes']:,}).\n",
        f"Same bytes from old and new code in every round: **{same_bytes}**; new take equal to an "
        f"encoding afresh in every round: **{all(f is True for f in fresh)}**; a take right after a take "
        "gave the same bytes, and every load's first take (after the orders since) equalled an encoding afresh: "
        f"**{same_after}**.\n",
        f"Medians over {args.rounds} rounds (alternated: old first in even rounds) and {args.loads} loads; "
        "ms of CPU of the worker process (wall in the second table).\n",
        *table("CPU", "cpu", "again_cpu", "take_cpu"),
        *table("wall", "wall", "again_wall", "take_wall"),
        f"First take after building the state (nothing kept yet): old {workers['old'].info['first_cpu']:.0f} ms, "
        f"new {info['first_cpu']:.0f} ms CPU.\n",
        "Each round, ms CPU (old / new): " + "; ".join(
            f"{o['cpu']:.0f}/{n['cpu']:.0f}" for o, n in pairs) + ".  ",
        "Right after a take: " + "; ".join(
            f"{o['again_cpu']:.0f}/{n['again_cpu']:.0f}" for o, n in pairs) + ".  ",
        "Loads: " + "; ".join(f"{o['cpu']:.0f}/{n['cpu']:.0f}" for o, n in load_pairs) + ".  ",
        "First takes after them: " + "; ".join(f"{o['take_cpu']:.0f}/{n['take_cpu']:.0f}" for o, n in load_pairs)
        + ".\n",
    ]
    for k, text in profiles.items():
        lines += [f"## cProfile of one take after {args.between:,} orders, {k} code, plain Python\n", "```",
                  text.strip(), "```", ""]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.report}", file=sys.stderr)


def _rev(tree: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "pyengine"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(tree)
    return f"{rev}{' (with uncommitted engine changes)' if dirty else ''}"


if __name__ == "__main__":
    sys.exit(main())
