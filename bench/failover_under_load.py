"""Failover under load: leader SIGKILL -> first answer to a request sent after the kill, while a
client sends the order flow at a steady rate.

    .venv/bin/python bench/failover_under_load.py                     # 15 trials at 1,000 orders/s
    .venv/bin/python bench/failover_under_load.py --trials 10 --rate 2000
    .venv/bin/python bench/failover_under_load.py --schedule fixed --trials 100 --rate 300   # faults on a clock
    .venv/bin/python bench/failover_under_load.py --schedule fixed --fault stop --trials 100 --rate 300

``--schedule fixed`` does not wait for the cluster to settle: it kills the leader, restarts it
from its own command line 2.5 s later, and kills the next leader 5 s after that restart (with
``--fault stop``: SIGSTOP, SIGCONT 2 s later). It reports each fault's pause (the longest gap
between two answers from just before the fault to the next one), the victim's time back in step
(restart to its election closing), the other members' election/module states at the fault (a
second fault is marked), and the trend (median of the first 20 faults against the last 20), in
bench/reports/failover_fixed_kill.md or _stop.md. The default mode is described below.

A client process (its own MatchClient; binary codec; the seeded order flow of bench/common.py)
sends open loop at ``--rate`` for the whole run and records, for every order, when it was
submitted and when its answer arrived (CLOCK_MONOTONIC, which this process shares), and when
the SDK saw a new leader / reconnected. This process runs the trials: wait until the cluster
has a leader and two followers, let it settle, SIGKILL the leader, restart the killed member
once a new leader is known, repeat. Per trial:

* failover time = first answer to an order *submitted after* the kill, minus the kill time;
* client sees new leader = the SDK's NewLeader (or reconnect) event, minus the kill time;
* worst latency of the orders submitted in the second before the kill (they wait for the
  new leader and are resent by the SDK; the service answers a resend from its reply cache);
* the election itself, from the members' Aeron counters (bench/election_trace.py runs beside
  the bench): when a survivor started an election, how many ballots it took, when one became
  leader and when it closed the election.

At the end the client drains, and the bench checks that every order got an answer (none lost,
none failed) and that all three members reach the same engine state hash. Writes
bench/reports/failover_under_load.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import election_trace  # noqa: E402
from bench.common import (  # noqa: E402
    MID,
    SYMBOLS,
    MachineLoad,
    OrderFlow,
    bench_cluster,
    build_bulk,
    bulk_ops,
    environment,
    jar_cleanup,
    log,
    setup_commands,
)
from pyengine.node.localcluster import wait_for  # noqa: E402
from pyengine.node.settings import Timeouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "bench" / "reports" / "failover_under_load.md"


# ============================================================================ client worker


class _EventTimes(logging.Handler):
    """Records when the SDK logs 'new leader' / 'connected' / a handover's 'hold' (monotonic clock)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith(("new leader", "connected", "session closed", "hold", "sent what the hold")):
            self.times.append((time.monotonic(), msg))


def worker(spec: dict) -> int:
    from pyengine.client import MatchClient

    events = _EventTimes()
    lg = logging.getLogger("matchx.client")
    lg.setLevel(logging.INFO)
    lg.addHandler(events)
    client = MatchClient(spec["endpoints"])
    if not client.wait_connected(60):
        raise SystemExit(f"could not connect: {client.last_error}")
    if spec.get("setup"):
        for f in [client.submit(c) for c in setup_commands(spec["accounts"])]:
            f.result(120)
    if spec.get("resting"):
        preload_resting(client, spec["resting"], spec["accounts"])
    flow = OrderFlow(spec["seed"], spec["accounts"], "f")
    rate = spec["rate"]
    cap = int(rate * spec["max_s"]) + 1
    sent_at = array("d", bytes(8 * cap))
    answered_at = array("d", bytes(8 * cap))
    status = array("b", bytes(cap))  # 0 pending, 1 ok, 2 duplicate (answered from cache), 3 error
    clock = time.monotonic

    def done(fut, i: int) -> None:
        answered_at[i] = clock()
        if fut.exception() is not None:
            status[i] = 3
        else:
            status[i] = 2 if fut.result().duplicate else 1

    def done_bulk(fut, first: int, end: int) -> None:
        t = clock()
        st = 3 if fut.exception() is not None else 2 if fut.result().duplicate else 1
        for k in range(first, end):
            answered_at[k] = t
            status[k] = st

    bulk = spec.get("api") == "bulk"
    linger = spec.get("bulk_linger_s", 0.005)
    coids: dict[str, int] = {}
    stop_file = Path(spec["stop_file"])
    Path(spec["ready_file"]).write_text(str(os.getpid()))
    submit = client.submit_binary
    interval = 1.0 / rate
    start = clock()
    i = 0
    next_check = start
    while i < cap:
        now = clock()
        if now >= next_check:
            if stop_file.exists():
                break
            next_check = now + 0.1
        due = min(cap, int((now - start) / interval) + 1)
        if bulk:  # what is due leaves as one bulk, at least ``linger`` apart
            if due > i:
                b = build_bulk(bulk_ops([flow.next() for _ in range(i, due)], coids))
                t = clock()
                for k in range(i, due):
                    sent_at[k] = t
                client.submit_bulk(b).add_done_callback(lambda f, a=i, z=due: done_bulk(f, a, z))
                i = due
            time.sleep(max(linger, start + i * interval - clock()))
            continue
        while i < due:
            cmd = flow.next()
            sent_at[i] = clock()
            submit(cmd).add_done_callback(lambda f, i=i: done(f, i))
            i += 1
        nxt = start + i * interval - clock()
        if nxt > 0:
            time.sleep(nxt)
    n = i
    print(f"sent {n:,} orders; draining {client.pending_count():,} outstanding ...", file=sys.stderr, flush=True)
    deadline = clock() + spec.get("drain_s", 900)
    while client.pending_count() and clock() < deadline:
        time.sleep(0.05)
    drain_s = clock() - (deadline - spec.get("drain_s", 900))
    # the last answers' callbacks may still be running
    time.sleep(0.2)
    unanswered = client.pending_count()
    out = Path(spec["out_file"])
    with out.open("wb") as fh:
        sent_at[:n].tofile(fh)
        answered_at[:n].tofile(fh)
        status[:n].tofile(fh)
    try:
        leader_hash = client.admin({"op": "state_hash"}, timeout=300).events
    except Exception as exc:  # noqa: BLE001 - reported, the samples are already written
        leader_hash = {"error": str(exc)}
    result = {"n": n, "unanswered": unanswered, "events": events.times, "drain_s": drain_s,
              "resent": client.stats.resent, "resent_on_timer": client.stats.resent_on_timer,
              "new_leaders": client.stats.new_leaders,
              "holds": client.stats.holds, "held": client.stats.held,
              "resent_after_hold": client.stats.resent_after_hold,
              "connects": client.stats.connects, "batches": client.stats.sent_batches,
              "leader_hash": leader_hash}
    client.close()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


def preload_resting(client, n: int, accounts: int) -> None:
    """``n`` resting GTC orders far from the order flow's prices (buys 30-50 % below the mid,
    sells 30-50 % above: the flow drifts by a tick now and then, so they never trade), in bulks
    of 1,000: the state a restarted member must load from its snapshot."""
    from pyengine.wire.bulk import BulkBuilder

    started = time.monotonic()
    futures = []
    for first in range(0, n, 1000):
        b = BulkBuilder()
        for k in range(first, min(n, first + 1000)):
            sym = SYMBOLS[k % len(SYMBOLS)]
            offset = 3000 + (k // len(SYMBOLS)) % 2000
            side, price = ("buy", MID - offset) if k % 2 else ("sell", MID + offset)
            b.place(f"a{k % accounts}", sym, side, price, 1 + k % 7)
        futures.append(client.submit_bulk(b))
        if len(futures) >= 8:
            futures.pop(0).result(120)
    for f in futures:
        f.result(120)
    print(f"{n:,} resting orders placed in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


# ============================================================================ parent


def wait_settled(cluster, args, trace_file: Path) -> None:
    """Until the cluster has settled: the restarted member caught up, every member out of its
    election, then ``--settle-s`` of quiet."""
    leader = cluster.await_leader(60)
    cluster.await_followers(2, 120)
    # the restarted member has caught up with where the leader was when it rejoined
    mark = cluster.member_status(leader).get("log_position", 0)
    try:
        wait_for(lambda mark=mark: all(cluster.member_status(m).get("log_position", -1) >= mark
                                       for m in range(3)), args.catchup_timeout_s,
                 "the restarted member to catch up")
    except Exception as exc:  # noqa: BLE001 - report it and go on with the trial
        log(f"  {exc}; going on anyway")
    # ... and has left its election (a member still catching up is in one; its status
    # file can say follower before that)
    try:
        wait_for(lambda: election_trace.settled(election_trace.parse(trace_file)),
                 args.catchup_timeout_s, "every member to leave its election")
    except Exception as exc:  # noqa: BLE001 - report it and go on with the trial
        log(f"  {exc}; going on anyway")
    time.sleep(args.settle_s)


def settled_trials(cluster, args, trace_file: Path, trials: list[dict]) -> None:
    """Each kill after the cluster has settled (wait_settled)."""
    for t in range(1, args.trials + 1):
        wait_settled(cluster, args, trace_file)
        leader = cluster.await_leader(60)
        killed_at = time.monotonic()
        cluster.kill(leader)
        new_leader = cluster.await_leader(60, exclude=leader)
        seen_at = time.monotonic()
        # on separate machines a restart would not compete with the survivors; here the
        # restarted JVM takes most of a core for a second, so it waits out the failover
        time.sleep(max(0.0, killed_at + args.restart_delay_s - time.monotonic()))
        cluster.start_member(leader)
        trials.append({"trial": t, "killed": leader, "new_leader": new_leader, "killed_at": killed_at})
        log(f"trial {t:>2}: killed leader member {leader}; member {new_leader} leads "
            f"(seen in status files after {(seen_at - killed_at) * 1000:.0f} ms); restarting member {leader}")


def fixed_schedule(cluster, args, trace_file: Path, trials: list[dict]) -> None:
    """Faults on a fixed clock, the way real failures come: kill (or SIGSTOP) the leader, restart
    the victim from its own command line ``--restart-after-s`` later (or SIGCONT it), fault the
    next leader ``--next-fault-after-s`` after that, whatever state the members are in. A kill
    that lands while the previous victim is still rejoining is a second fault, and the report
    shows it as one (the other members' states at the kill)."""
    stop = args.fault == "stop"
    for t in range(1, args.trials + 1):
        # the victim is whoever leads now; with no leader (a double fault still resolving) wait
        # for one, since only a leader can be its victim
        leader = cluster.await_leader(120)
        at_fault = election_trace.parse(trace_file) if trace_file.exists() else []
        fault_at = time.monotonic()
        cluster.kill(leader, signal.SIGSTOP if stop else signal.SIGKILL)
        time.sleep(max(0.0, fault_at + args.restart_after_s - time.monotonic()))
        back_at = time.monotonic()
        if stop:
            cluster.kill(leader, signal.SIGCONT)
        else:
            cluster.start_member(leader)
        others = election_trace.states_at(at_fault, fault_at, [m for m in range(3) if m != leader])
        trials.append({"trial": t, "killed": leader, "killed_at": fault_at, "back_at": back_at, "others": others})
        log(f"fault {t:>3}: {'stopped' if stop else 'killed'} leader member {leader}; others "
            f"{', '.join(f'{m}: {s}' for m, s in others.items())}; {'resumed' if stop else 'restarted'} after "
            f"{(back_at - fault_at) * 1000:.0f} ms")
        time.sleep(max(0.0, back_at + args.next_fault_after_s - time.monotonic()))


def longest_gap(answers: list[float], start: float, end: float) -> float:
    """The longest time between two consecutive answers from the last answer before ``start``
    to the first answer after ``end`` (seconds; ``answers`` sorted)."""
    a, b = longest_gap_edges(answers, start, end)
    return b - a


def longest_gap_edges(answers: list[float], start: float, end: float) -> tuple[float, float]:
    """The two answers around that longest gap (nan, nan without two answers)."""
    lo = max(0, bisect.bisect_left(answers, start) - 1)
    hi = min(len(answers), bisect.bisect_right(answers, end) + 1)
    window = answers[lo:hi]
    return max(zip(window, window[1:], strict=False), key=lambda ab: ab[1] - ab[0],
               default=(float("nan"), float("nan")))


def fixed_analysis(trials: list[dict], sent_at, answered_at, status, trace) -> None:
    """Per fault: the pause (longest gap between two answers from just before the fault to the
    next fault) and the victim's time back in step (restart or SIGCONT to its election closing:
    Aeron closes a follower's election once it has caught up to the leader's commit position and
    joined the live log)."""
    answers = sorted(answered_at[i] for i in range(len(status)) if status[i] in (1, 2))
    periods = election_trace.snapshot_periods(trace)
    for k, tr in enumerate(trials):
        end = trials[k + 1]["killed_at"] if k + 1 < len(trials) else tr["back_at"] + 5.0
        a, b = longest_gap_edges(answers, tr["killed_at"], end)
        tr["pause_ms"] = (b - a) * 1000
        # how much of that pause some member spent taking a snapshot (sampled every few ms)
        tr["snapshot_in_pause_ms"] = election_trace.snapshot_overlap_ms(periods, a, b) if b == b else 0.0
        closed = next((ts for ts, m, state, _role, _mod in trace
                       if m == tr["killed"] and ts > tr["back_at"] and state == "CLOSED"), None)
        tr["in_step_ms"] = (closed - tr["back_at"]) * 1000 if closed is not None else float("nan")
        tr["double_fault"] = any(s != "CLOSED/ACTIVE" for s in tr["others"].values())


def trend(values: list[float], n: int = 20) -> tuple[float, float]:
    """Median of the first ``n`` and of the last ``n`` values (a third of the run each if shorter)."""
    k = min(n, max(1, len(values) // 3))
    return statistics.median(values[:k]), statistics.median(values[-k:])


def write_fixed_report(args, env, timeouts, trials, summary, res, agree) -> None:
    cmd = "python bench/failover_under_load.py " + " ".join(sys.argv[1:])
    pauses = [t["pause_ms"] for t in trials]
    steps = [t["in_step_ms"] for t in trials if t["in_step_ms"] == t["in_step_ms"]]
    first, last = trend(pauses)
    snapped = [t["pause_ms"] for t in trials if t["snapshot_in_pause_ms"] > 0]
    clean = [t["pause_ms"] for t in trials if not t["snapshot_in_pause_ms"] > 0]
    verb = "SIGSTOP, SIGCONT" if args.fault == "stop" else "SIGKILL, restart from its own command line"
    lines = [
        f"# Failover on a fixed schedule: leader {verb} {args.restart_after_s:g} s later, next fault "
        f"{args.next_fault_after_s:g} s after that\n",
        f"Command: `{cmd.strip()}`  ",
        f"Environment: {env}; 3 members + the client on one 2-core machine (loopback)"
        + (", **measured on a shared, loaded machine** (other work ran beside it; the load figures above are the "
           "machine's).  " if args.load_before > 2.5 else
           f"; nothing else ran beside it (load average {args.load_before:.2f} before the run; this bench's own "
           "processes make the load during it).  "),
        f"State: {args.resting:,} resting orders (placed before the faults) besides the flow's own book.  "
        if args.resting else "",
        f"Settings: heartbeat interval {timeouts.heartbeat_interval_ms} ms, heartbeat timeout "
        f"{timeouts.heartbeat_timeout_ms} ms, election timeout {timeouts.election_timeout_ms} ms; snapshots "
        f"{'by the layout defaults' if args.snapshot_interval_s is None else f'every {args.snapshot_interval_s} s'}"
        f" and {'the default log growth' if args.snapshot_log_mib is None else f'{args.snapshot_log_mib} MiB of log'};"
        f" one client (MatchClient) sending the bench order flow open loop at {args.rate:,.0f} orders/s. Faults do "
        "not wait for the cluster to settle.\n",
        f"**{summary}**\n",
        f"Pause (longest gap between two answers around a fault): median {statistics.median(pauses):.0f} ms, p99 "
        f"{pctl(pauses, 99):.0f} ms, max {max(pauses):.0f} ms; trend: median of the first "
        f"{min(20, max(1, len(pauses) // 3))} {first:.0f} ms, of the last {last:.0f} ms "
        f"({(last / first - 1) * 100:+.0f} %).  ",
        (f"Victim back in step ({'SIGCONT' if args.fault == 'stop' else 'restart'} to its election closed, i.e. "
         f"caught up to the leader's commit position): median {statistics.median(steps):.0f} ms, p99 "
         f"{pctl(steps, 99):.0f} ms, max {max(steps):.0f} ms.  " if steps else "Victim back in step: not seen.  "),
        f"Faults that were a second fault (another member not CLOSED/ACTIVE at the fault): "
        f"{sum(t['double_fault'] for t in trials)}.\n",
        "Targets (#17, a quiet machine): p99 pause <= 500 ms, max <= 1 s, last-20 median within 20 % of the "
        "first 20, victims back in step within 3 s (p99).\n",
        f"Pauses with a snapshot in them (a member in SNAPSHOT for part of the longest gap): "
        f"{len(snapped)} of {len(trials)}"
        + (f"; their median {statistics.median(snapped):.0f} ms against {statistics.median(clean):.0f} ms for the "
           "others.\n" if snapped and clean else ".\n"),
        "| fault | victim | other members at the fault (election state / module state) | pause ms | "
        "of it in a snapshot ms | back in step ms |",
        "|---:|---:|---|---:|---:|---:|",
    ]

    def ms(v) -> str:
        return "-" if v is None or v != v else f"{v:.0f}"

    for t in trials:
        others = ", ".join(f"{m}: {s}" for m, s in t["others"].items())
        mark = " **second fault**" if t["double_fault"] else ""
        lines.append(f"| {t['trial']} | {t['killed']} | {others}{mark} | **{ms(t['pause_ms'])}** | "
                     f"{ms(t['snapshot_in_pause_ms'])} | {ms(t['in_step_ms'])} |")
    lines.append("")
    lines.append(f"Client: {res['new_leaders']} new-leader events, {res['connects']} connects, {res['resent']:,} "
                 f"orders resent by the SDK; drained in {res['drain_s']:.0f} s after the last fault. Members agree "
                 f"on the state hash: {agree}.\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")


def pctl(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--rate", type=float, default=1000.0, help="orders/s sent during the whole run")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--settle-s", type=float, default=3.0, help="quiet time with 3 members before a kill")
    ap.add_argument("--heartbeat-interval-ms", type=int, default=Timeouts.heartbeat_interval_ms)
    ap.add_argument("--heartbeat-timeout-ms", type=int, default=Timeouts.heartbeat_timeout_ms)
    ap.add_argument("--election-timeout-ms", type=int, default=Timeouts.election_timeout_ms)
    ap.add_argument("--election-status-interval-ms", type=int, default=Timeouts.election_status_interval_ms)
    ap.add_argument("--idle-min-park-us", type=int, help="members' idle strategy: first park (default: the layout's)")
    ap.add_argument("--idle-max-park-us", type=int, help="members' idle strategy: longest park")
    ap.add_argument("--idle-yields", type=int, help="members' idle strategy: sched_yield calls before parking")
    ap.add_argument("--restart-delay-s", type=float, default=1.0,
                    help="restart the killed member this long after the kill (0 = as soon as a new leader is known)")
    ap.add_argument("--setup-repeat-ms", type=int, default=Timeouts.setup_repeat_ms,
                    help="media driver's SETUP repeat (100 = Aeron's own)")
    ap.add_argument("--snapshot-interval-s", type=int, default=None,
                    help="members snapshot on this schedule (default: the layout's, as `matchctl cluster up`)")
    ap.add_argument("--snapshot-log-mib", type=int, default=None,
                    help="... and after this much log growth (default: the layout's)")
    ap.add_argument("--schedule", choices=("settled", "fixed"), default="settled",
                    help="settled: each kill after the cluster has settled; fixed: faults on a fixed clock "
                         "(--restart-after-s, --next-fault-after-s) whatever state the cluster is in")
    ap.add_argument("--fault", choices=("kill", "stop"), default="kill",
                    help="with --schedule fixed: SIGKILL the leader (restarted later), or SIGSTOP it (SIGCONT later)")
    ap.add_argument("--restart-after-s", type=float, default=None,
                    help="fixed: restart (default 2.5 s) or SIGCONT (default 2 s) this long after the fault")
    ap.add_argument("--next-fault-after-s", type=float, default=5.0, help="fixed: next fault this long after that")
    ap.add_argument("--resting", type=int, default=0,
                    help="resting orders placed (far from the flow's prices) before the faults begin")
    ap.add_argument("--catchup-timeout-s", type=float, default=180.0)
    ap.add_argument("--api", choices=("binary", "bulk"), default="binary",
                    help="how the client sends: one command per order, or what is due as one bulk")
    ap.add_argument("--bulk-linger-ms", type=float, default=5.0, help="with --api bulk: at least this apart")
    ap.add_argument("--keep-dir", type=Path, help="run the cluster here and keep it (member logs) afterwards")
    # below Linux's ephemeral range (32768-60999): a killed member's ports are free until it
    # restarts, and any socket bound to port 0 meanwhile (the client's egress, other programs)
    # can take one of them; the restart then fails with "Address already in use"
    ap.add_argument("--port-start", type=int, default=26000)
    ap.add_argument("--report", type=Path, default=REPORT)
    args = ap.parse_args(argv)
    if args.restart_after_s is None:
        args.restart_after_s = 2.0 if args.fault == "stop" else 2.5
    if args.worker:
        return worker(json.loads(args.worker))

    timeouts = Timeouts(heartbeat_interval_ms=args.heartbeat_interval_ms,
                        heartbeat_timeout_ms=args.heartbeat_timeout_ms,
                        election_timeout_ms=args.election_timeout_ms,
                        election_status_interval_ms=args.election_status_interval_ms,
                        setup_repeat_ms=args.setup_repeat_ms,
                        startup_canvass_timeout_ms=max(2000, 2 * args.heartbeat_timeout_ms))
    args.load_before = os.getloadavg()[0]
    env = environment()
    log(f"environment: {env}")
    trials: list[dict] = []
    machine = MachineLoad().__enter__()
    if args.keep_dir is not None:
        args.keep_dir.mkdir(parents=True, exist_ok=True)
    idle_kw = {k: v for k, v in (("idle_min_park_us", args.idle_min_park_us), ("idle_yields", args.idle_yields),
                                 ("idle_max_park_us", args.idle_max_park_us)) if v is not None}
    snap_kw = {k: v for k, v in (("snapshot_interval_s", args.snapshot_interval_s),
                                 ("snapshot_log_bytes", None if args.snapshot_log_mib is None
                                  else args.snapshot_log_mib << 20)) if v is not None}
    if args.schedule == "fixed" and args.report == REPORT:
        args.report = REPORT.with_name(f"failover_fixed_{args.fault}.md")
    with bench_cluster("failover", args.port_start, timeouts=timeouts, keep_dir=args.keep_dir,
                       **snap_kw, **idle_kw) as cluster:
        work = cluster.dir / "bench"
        work.mkdir(exist_ok=True)
        spec = {"endpoints": cluster.ingress_endpoints(), "accounts": args.accounts, "setup": True,
                "resting": args.resting,
                "api": args.api, "bulk_linger_s": args.bulk_linger_ms / 1000,
                "seed": 11, "rate": args.rate, "max_s": 60 + args.trials * 60,
                "stop_file": str(work / "stop"), "ready_file": str(work / "ready"),
                "out_file": str(work / "samples.bin")}
        proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        trace_file = work / "election_trace.txt"
        tracer = subprocess.Popen(
            [sys.executable, "-m", "bench.election_trace", "--out", str(trace_file), "--stop-file", spec["stop_file"],
             "--dirs", ",".join(cluster.layout.aeron_dir(m) for m in range(3))], cwd=ROOT)
        err_lines: list[str] = []
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
        try:
            wait_for(lambda: Path(spec["ready_file"]).exists() or proc.poll() is not None, 180, "the client")
            if proc.poll() is not None:
                raise RuntimeError("client failed: " + "".join(err_lines[-30:]))
            log(f"client sending {args.rate:,.0f} orders/s; warming up 5 s")
            time.sleep(5)
            if args.schedule == "fixed":
                fixed_schedule(cluster, args, trace_file, trials)
            else:
                settled_trials(cluster, args, trace_file, trials)
            cluster.await_followers(2, 120)
            time.sleep(2)
        except BaseException:
            # interrupted or failed: the client must not linger draining for minutes
            proc.kill()
            proc.wait()
            tracer.kill()
            for d in Path("/dev/shm").glob(f"matchx-client-{proc.pid}-*"):
                shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            Path(spec["stop_file"]).write_text("stop")
            try:
                out, _ = proc.communicate(timeout=1500)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            try:
                tracer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()
        trace = election_trace.parse(trace_file) if trace_file.exists() else []
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError("client failed: " + "".join(err_lines[-40:]))
        res = json.loads(line[7:])
        n = res["n"]
        raw = Path(spec["out_file"]).read_bytes()
        sent_at, answered_at, status = array("d"), array("d"), array("b")
        sent_at.frombytes(raw[: 8 * n])
        answered_at.frombytes(raw[8 * n : 16 * n])
        status.frombytes(raw[16 * n : 17 * n])
        # every member answers state_hash at the same log position
        deadline = time.monotonic() + 30
        while True:
            hashes = {m: cluster.member_hash(m) or {} for m in range(3)}
            keys = {(h.get("position"), h.get("engine_hash"), h.get("applied")) for h in hashes.values()}
            if len(keys) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        agree = len(keys) == 1 and None not in next(iter(keys))
    jar_cleanup()
    machine.__exit__(None, None, None)
    env = f"{env}; {machine.summary()}"
    log(machine.summary())

    ev_times = [(t, m) for t, m in res["events"]]
    answers = sorted(answered_at[i] for i in range(n) if status[i] in (1, 2))
    for j, tr in enumerate(trials):
        k = tr["killed_at"]
        # the longest time without any answer, from the last answer before the fault until the
        # next trial (a stopped leader can still answer orders sent after its SIGTERM, so the
        # first answer after the fault does not show a handover's pause; this does)
        gap_from, gap_to = longest_gap_edges(answers, k, trials[j + 1]["killed_at"] if j + 1 < len(trials) else k + 10)
        tr["pause_ms"] = (gap_to - gap_from) * 1000
        tr["pause_from_ms"], tr["pause_to_ms"] = (gap_from - k) * 1000, (gap_to - k) * 1000
        first = None
        worst_before = 0.0
        for i in range(n):
            s = sent_at[i]
            if s > k and status[i] and (first is None or answered_at[i] < first):
                first = answered_at[i]
                if s > k + 5:
                    break
            if k - 1.0 <= s <= k and status[i]:
                worst_before = max(worst_before, answered_at[i] - s)
        tr["failover_ms"] = (first - k) * 1000 if first is not None else float("nan")
        seen = next((t for t, m in ev_times if t > k and (m.startswith("new leader") or m.startswith("connected"))),
                    None)
        tr["client_new_leader_ms"] = (seen - k) * 1000 if seen is not None else float("nan")
        # the gap around the client's new-leader event: the handover's own pause, apart from any
        # later stall before the next trial (a snapshot, the restarted member catching up)
        at = bisect.bisect_left(answers, seen) if seen is not None else 0
        tr["handover_gap_ms"] = (answers[at] - answers[at - 1]) * 1000 if 0 < at < len(answers) else float("nan")
        held = next((t for t, m in ev_times if t > k and m.startswith("hold")), None)
        tr["client_hold_ms"] = (held - k) * 1000 if held is not None and (seen is None or held < seen) else None
        sent = next((t for t, m in ev_times if t > k and m.startswith("sent what the hold")), None)
        tr["client_sent_held_ms"] = (sent - k) * 1000 if sent is not None else None
        tr["worst_inflight_ms"] = worst_before * 1000
        tr.update(election_trace.breakdown(trace, k, tr["killed"]))
        log(f"trial {tr['trial']:>2}: failover {tr['failover_ms']:.0f} ms (client saw the new leader after "
            f"{tr['client_new_leader_ms']:.0f} ms); orders in flight at the kill answered within "
            f"{tr['worst_inflight_ms']:.0f} ms")

    fo = [t["failover_ms"] for t in trials]
    answered = sum(1 for s in status if s in (1, 2))
    dups = sum(1 for s in status if s == 2)
    errors = sum(1 for s in status if s == 3)
    pending = sum(1 for s in status if s == 0)
    summary = (f"{len(fo)} trials at {args.rate:,.0f} orders/s: failover median {statistics.median(fo):.0f} ms, "
               f"p90 {pctl(fo, 90):.0f} ms, max {max(fo):.0f} ms; {n:,} orders sent, {answered:,} answered "
               f"({dups:,} answered from the reply cache after a resend), {errors} failed, "
               f"{pending + res['unanswered']} unanswered; members agree on the state hash: {agree}")
    log(summary)
    snaps = election_trace.snapshot_durations(trace, [(t["killed_at"], t["killed"]) for t in trials])
    if snaps:
        log(f"snapshots: {len(snaps)} taken by the members, SNAPSHOT state median {statistics.median(snaps):.0f} ms, "
            f"max {max(snaps):.0f} ms")
    if args.schedule == "fixed":
        fixed_analysis(trials, sent_at, answered_at, status, trace)
        for tr in trials:
            log(f"fault {tr['trial']:>3}: pause {tr['pause_ms']:.0f} ms; member {tr['killed']} back in step "
                f"{tr['in_step_ms']:.0f} ms after its {'SIGCONT' if args.fault == 'stop' else 'restart'}"
                f"{'; a second fault' if tr['double_fault'] else ''}")
        write_fixed_report(args, env, timeouts, trials, summary, res, agree)
    else:
        write_report(args, env, timeouts, trials, summary, res, agree, fo, snaps)
    log(f"report: {args.report}")
    return 0 if pending + res["unanswered"] + errors == 0 and agree else 1


def write_report(args, env, timeouts, trials, summary, res, agree, fo, snaps) -> None:
    cmd = "python bench/failover_under_load.py " + " ".join(sys.argv[1:])
    target_met = pctl(fo, 99) < 500
    how = (f"what is due as one bulk, at least {args.bulk_linger_ms:g} ms apart" if args.api == "bulk"
           else "binary codec, one command per order")
    restart = (f"{args.restart_delay_s:g} s after the kill (or once a new leader is known, if later)"
               if args.restart_delay_s > 0 else "as soon as a new leader is known")
    lines = [
        "# Failover under load: leader SIGKILL -> first answer to an order sent after the kill\n",
        f"Command: `{cmd.strip()}`  ",
        f"Environment: {env}; 3 members + the client on one 2-core machine (loopback).  ",
        f"Settings: heartbeat interval {timeouts.heartbeat_interval_ms} ms, heartbeat timeout "
        f"{timeouts.heartbeat_timeout_ms} ms, election timeout {timeouts.election_timeout_ms} ms, "
        f"election status interval "
        f"{timeouts.election_status_interval_ms} ms, SETUP repeat {timeouts.setup_repeat_ms} ms; one client "
        f"process (MatchClient, default resend interval 1 s) sending the bench order flow ({how}) open "
        f"loop at {args.rate:,.0f} orders/s during the whole run; {args.settle_s:.0f} s with three members before "
        f"each kill (after the restarted member has caught up and every member has left its election); "
        f"the killed member is restarted "
        f"{restart}; members snapshot every {args.snapshot_interval_s} s.\n",
        f"**{summary}**\n",
        f"Target failover p99 < 500 ms: **{'met' if target_met else 'not met'}** (with {len(fo)} trials the p99 "
        f"is the worst trial, {max(fo):.0f} ms).\n",
        "Columns: milliseconds after the kill. *election started*, *leader elected* and *election closed* come "
        "from the members' own Aeron counters (election state and role, sampled every ~1 ms by "
        "bench/election_trace.py); *ballots* counts the ballots the survivors started (more than one: a split "
        "vote or a vote that came too late); *snapshot*: a survivor was taking a snapshot when the leader died or "
        "before it noticed (Aeron starts an election only from the ACTIVE state, so a snapshot in progress "
        "delays it).\n",
        "| trial | killed | new leader | snapshot | election started | ballots | leader elected | election closed "
        "| client saw new leader | failover | in-flight orders answered within |",
        "|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(v) -> str:
        return "-" if v is None or v != v else f"{v:.0f}"

    for t in trials:
        lines.append(f"| {t['trial']} | {t['killed']} | {t['new_leader']} | {'yes' if t.get('snapshot') else ''} | "
                     f"{ms(t.get('detect_ms'))} | "
                     f"{t.get('ballots', '-')} | {ms(t.get('leader_ms'))} | {ms(t.get('complete_ms'))} | "
                     f"{ms(t['client_new_leader_ms'])} | **{ms(t['failover_ms'])}** | {ms(t['worst_inflight_ms'])} |")
    phases = [("election started", "detect_ms"), ("leader elected", "leader_ms"), ("election closed", "complete_ms"),
              ("client saw new leader", "client_new_leader_ms"), ("failover", "failover_ms")]
    cells = []
    for label, key in phases:
        vals = [t[key] for t in trials if t.get(key) is not None and t[key] == t[key]]
        if vals:
            cells.append(f"{label} {statistics.median(vals):.0f}")
    lines.append("")
    lines.append("Medians (ms after the kill): " + ", ".join(cells) + ".\n")
    if snaps:
        lines.append(f"Snapshots during the run: {len(snaps)} (all members), each member's consensus module in "
                     f"SNAPSHOT (service snapshot built, written and recorded; a dead leader goes unnoticed meanwhile) "
                     f"median {statistics.median(snaps):.0f} ms, p90 {pctl(snaps, 90):.0f} ms, max "
                     f"{max(snaps):.0f} ms.\n")
    lines.append(f"After the last trial the client needed {res['drain_s']:.0f} s to receive every outstanding "
                 "answer (a backlog means the cluster did not keep up with the offered rate on this machine).\n")
    lines.append(f"Client: {res['new_leaders']} new-leader events, {res['connects']} connects, {res['resent']:,} "
                 f"orders resent by the SDK ({res.get('resent_on_timer', 0):,} of them by its periodic resend, "
                 f"not on a new leader's event), {res['batches']:,} cluster messages; "
                 f"{res.get('holds', 0)} hold notices followed, {res.get('held', 0):,} orders held by them and first "
                 f"sent to the new leader, {res.get('resent_after_hold', 0):,} resent when a hold ended (in flight "
                 "when the old leader ended its log).\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
