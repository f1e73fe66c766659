"""Planned leader handover under load: SIGTERM to the leader (what `matchctl member restart` and
`matchctl cluster handover` do) -> first answer to an order sent after it, while a client sends
the order flow at a steady rate.

    .venv/bin/python bench/handover.py                      # 20 handovers at 1,000 orders/s
    .venv/bin/python bench/handover.py --trials 5 --rate 500
    .venv/bin/python bench/handover.py --rolling --trials 5  # 5 rolling restarts (3 member restarts each)

The run, the client and the checks are bench/failover_under_load.py's (every order answered,
none applied twice: a resend is answered from the reply cache; all members end on one state
hash), with one difference: the leader is stopped with SIGTERM instead of SIGKILL, and restarted
once its process has exited. A stopping leader ends its log before anything else
(java-cluster Handover.java), so its followers elect at once instead of waiting for the
heartbeat timeout. Writes bench/reports/handover.md beside the crash figures.

With ``--rolling`` each trial is a rolling restart as `matchctl cluster rolling-restart` runs it
(pyengine/ops/members.py: each follower stopped, restarted and back in step, then the leader by
a handover): every member restart is a row of the report (its stop -> first answer to an order
sent after it), and a section at the end gives each rolling restart's total pause, the sum of its
three rows. Writes bench/reports/rolling_restart.md.
"""

from __future__ import annotations

import re
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import failover_under_load as crash  # noqa: E402

REPORT = Path(__file__).resolve().parent / "reports" / "handover.md"
ROLLING_REPORT = Path(__file__).resolve().parent / "reports" / "rolling_restart.md"
CRASH_TITLE = "# Failover under load: leader SIGKILL -> first answer to an order sent after the kill"
TITLE = "# Planned leader handover under load: leader SIGTERM -> first answer to an order sent after it"
ROLLING_TITLE = "# Rolling restart under load: each member restarted in turn, the leader last by a handover"


class Terminating:
    """The bench cluster, with a leader 'kill' that is a SIGTERM (a planned stop) and a restart
    that first waits for the stopped process to exit."""

    def __init__(self, cluster) -> None:
        self._cluster = cluster

    def __getattr__(self, name: str):
        return getattr(self._cluster, name)

    def kill(self, member_id: int, sig: int = signal.SIGTERM) -> None:
        self._cluster.kill(member_id, signal.SIGTERM if sig == signal.SIGKILL else sig)

    def start_member(self, member_id: int, detach: bool = False) -> int:
        self._cluster.stop_member(member_id, timeout=60)  # reaps the stopping process (SIGKILL after 60 s)
        return self._cluster.start_member(member_id, detach=detach)


def rolling_trials(cluster, args, trace_file: Path, trials: list[dict]) -> None:
    """--rolling: ``args.trials`` rolling restarts, each once the cluster has settled as for a
    handover; every member restart becomes a trial from the moment it is stopped."""
    from pyengine.ops import members

    rounds = args.trials
    for r in range(1, rounds + 1):
        crash.wait_settled(cluster, args, trace_file)

        def on_stop(member: int, leader: int, r: int = r) -> None:
            trials.append({"trial": len(trials) + 1, "round": r, "killed": member, "new_leader": leader,
                           "killed_at": time.monotonic()})

        started = time.monotonic()
        done = members.rolling_restart(cluster, args.catchup_timeout_s, on_stop)
        trials[-1]["new_leader"] = cluster.await_leader(60)
        crash.log(f"rolling restart {r}/{rounds} in {time.monotonic() - started:.1f} s: " + "; ".join(done))


# where a handover's time goes: (label, where it comes from), in the order the steps happen
STEPS = (
    ("hold sent", "hold_at"),  # the stopping leader starts its drain (Handover.java)
    ("client held", "client_hold_ms"),
    ("drained", "drained_at"),
    ("log ended", "log_ended_at"),  # consensus module closed: the end of stream goes out
    ("election started", "election INIT"),  # first survivor
    ("canvass", "election CANVASS"),
    ("nominate", "leader NOMINATE"),
    ("ballot", "leader CANDIDATE_BALLOT"),
    ("follower voted", "other FOLLOWER_BALLOT"),
    ("leader elected", "leader LEADER_LOG_REPLICATION"),
    ("leader replays tail", "leader LEADER_REPLAY"),
    ("leader joins new log", "leader LEADER_INIT"),
    ("leader ready", "leader LEADER_READY"),
    ("follower replays tail", "other FOLLOWER_REPLAY"),
    ("follower awaits log", "other FOLLOWER_LOG_AWAIT"),
    ("follower in step", "other CLOSED"),
    ("election closed", "leader CLOSED"),
    ("client new-leader event", "client_new_leader_ms"),
    ("client sent what it held", "client_sent_held_ms"),
    ("last answer before the pause", "pause_from_ms"),
    ("first answer after it", "pause_to_ms"),
)
_HANDOVER_LINE = re.compile(r"hold_at=([\d.]+) drained_at=([\d.]+) log_ended_at=([\d.]+)")


def handover_marks(log_text: str, killed_at: float) -> dict[str, float]:
    """The stopping leader's own timestamps (its member log, CLOCK_MONOTONIC ms) for the
    handover that began at ``killed_at`` (monotonic s): ms after the SIGTERM."""
    for m in _HANDOVER_LINE.finditer(log_text):
        hold, drained, ended = (float(x) for x in m.groups())
        if killed_at * 1000 - 5 <= hold <= killed_at * 1000 + 5000:
            return {"hold_at": hold - killed_at * 1000, "drained_at": drained - killed_at * 1000,
                    "log_ended_at": ended - killed_at * 1000}
    return {}


def election_steps(events, killed_at: float, killed: int, new_leader: int, horizon_s: float = 5.0) -> dict:
    """When the survivors first entered each election state after the SIGTERM (ms; from the
    members' Aeron counters, bench/election_trace.py): 'leader X' for the new leader, 'other X'
    for the other survivor, 'election INIT' / 'election CANVASS' for the first survivor."""
    out: dict[str, float] = {}
    for t, m, state, _role, _mod in events:
        if t <= killed_at or m == killed:
            continue
        if t > killed_at + horizon_s:
            break
        at = (t - killed_at) * 1000
        if state in ("INIT", "CANVASS"):
            out.setdefault(f"election {state}", at)
        out.setdefault(f"{'leader' if m == new_leader else 'other'} {state}", at)
    return out


def steps_section(trials: list[dict]) -> str:
    """Per handover, when each step happened (ms after the SIGTERM), and the medians."""
    present = [(label, key) for label, key in STEPS if any(t.get(key) is not None for t in trials)]
    if not present:
        return ""

    def ms(v) -> str:
        return "-" if v is None or v != v else f"{v:.0f}"

    lines = ["## Where a handover's time goes", "",
             "Milliseconds after the SIGTERM. *hold sent*, *drained* and *log ended* are the stopping leader's own "
             "clock (its member log: Handover.java); the election states are the survivors' Aeron counters "
             "(bench/election_trace.py, sampled every ~1 ms: a state shorter than that can be missed, '-'); "
             "*leader* is the new leader, *follower* the other survivor; the client's times are the SDK's log "
             "events; the pause is the gap between the last two columns.", "",
             "| trial | " + " | ".join(label for label, _ in present) + " | pause |",
             "|---:|" + "---:|" * (len(present) + 1)]
    for t in trials:
        lines.append(f"| {t['trial']} | " + " | ".join(ms(t.get(key)) for _, key in present) +
                     f" | **{ms(t.get('pause_ms'))}** |")
    med = []
    for _label, key in present:
        vals = [t[key] for t in trials if t.get(key) is not None and t[key] == t[key]]
        med.append(f"{statistics.median(vals):.0f}" if vals else "-")
    pauses = [t["pause_ms"] for t in trials if t.get("pause_ms") == t.get("pause_ms")]
    lines.append("| median | " + " | ".join(med) + f" | **{statistics.median(pauses):.0f}** |" if pauses else "")
    lines.append("")
    return "\n".join(lines)


def pause_section(trials: list[dict]) -> str:
    """The handovers' pauses: the longest time without any answer around each SIGTERM."""
    pauses = [t["pause_ms"] for t in trials]
    return "\n".join([
        "## Pause: the longest time without any answer", "",
        "A stopped leader still answers orders sent after its SIGTERM until it has ended its log, so the "
        "'failover' column above (first answer to an order sent after the SIGTERM) can be a few ms while "
        "trading stops later. The pause is the longest gap between two consecutive answers from the last "
        "answer before the SIGTERM until the next trial (at 1,000 orders/s the flow's own gap is ~1 ms).", "",
        "*handover gap* is the gap around the client's new-leader event alone: the handover's own pause, "
        "without a later stall before the next trial (a snapshot, the restarted member catching up).", "",
        "| trial | pause (ms) | handover gap (ms) |", "|---|---|---|",
        *[f"| {t['trial']} | **{t['pause_ms']:.0f}** | {t.get('handover_gap_ms', float('nan')):.0f} |"
          for t in trials], "",
        f"{len(pauses)} handovers: pause median {statistics.median(pauses):.0f} ms, p90 "
        f"{crash.pctl(pauses, 90):.0f} ms, p99 {crash.pctl(pauses, 99):.0f} ms, max {max(pauses):.0f} ms.",
        *gap_line(trials), ""])


def gap_line(trials: list[dict]) -> list[str]:
    gaps = [t["handover_gap_ms"] for t in trials if t.get("handover_gap_ms") == t.get("handover_gap_ms")]
    if not gaps:
        return []
    return [f"Handover gap median {statistics.median(gaps):.0f} ms, p90 {crash.pctl(gaps, 90):.0f} ms, "
            f"p99 {crash.pctl(gaps, 99):.0f} ms, max {max(gaps):.0f} ms."]


def rolling_section(trials: list[dict]) -> str:
    """Each rolling restart's total pause: the sum of its member restarts' pauses."""
    rounds: dict[int, list[dict]] = {}
    for t in trials:
        rounds.setdefault(t["round"], []).append(t)
    totals = [sum(t["pause_ms"] for t in steps) for steps in rounds.values()]
    leaders = [steps[-1]["pause_ms"] for steps in rounds.values()]
    lines = ["## Rolling restarts: total pause", "",
             "Each rolling restart stops and restarts the followers one at a time (each back in step before "
             "the next), then the leader by a handover. A member restart's pause is the longest time without "
             "any answer from its stop until the next member's stop (the order flow's own gap, ~1 ms at "
             "1,000 orders/s, when nothing stalls); a rolling restart's total pause is the sum of its three.", "",
             "| rolling restart | follower restarts (ms) | leader handover (ms) | total pause (ms) |",
             "|---|---|---|---|"]
    for (r, steps), total in zip(rounds.items(), totals, strict=True):
        followers = ", ".join(f"{t['pause_ms']:.0f}" for t in steps[:-1])
        lines.append(f"| {r} | {followers} | {steps[-1]['pause_ms']:.0f} | **{total:.0f}** |")
    lines += ["", f"{len(totals)} rolling restarts: total pause median {statistics.median(totals):.0f} ms, "
              f"max {max(totals):.0f} ms; the leader's handover median {statistics.median(leaders):.0f} ms, "
              f"max {max(leaders):.0f} ms.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return crash.main(argv)
    rolling = "--rolling" in argv
    if rolling:
        argv.remove("--rolling")
    if not any(a.startswith("--trials") for a in argv):
        argv += ["--trials", "5" if rolling else "20"]
    if not any(a.startswith("--report") for a in argv):
        argv += ["--report", str(ROLLING_REPORT if rolling else REPORT)]
    if any(a.startswith("--schedule") for a in argv):
        raise SystemExit("handover.py runs settled trials only")
    if rolling:
        trials: list[dict] = []

        def run_rolling(cluster, args, trace_file: Path, out: list[dict]) -> None:
            rolling_trials(cluster, args, trace_file, out)
            trials.extend(out)

        crash.settled_trials = run_rolling
        code = crash.main(argv)
        report = Path(argv[argv.index("--report") + 1])
        if report.is_file() and trials:
            text = report.read_text().replace(CRASH_TITLE, ROLLING_TITLE + "\n\n" + (
                "Each row is one member restart of a rolling restart (`matchctl cluster rolling-restart`): "
                "'killed' is the member stopped (SIGTERM; the leader's last, a handover), 'failover' the pause "
                "from that stop to the first answer to an order sent after it."), 1)
            text = text.replace("python bench/failover_under_load.py", "python bench/handover.py --rolling", 1)
            report.write_text(text + "\n" + rolling_section(trials))
        return code
    settled = crash.settled_trials
    handovers: list[dict] = []

    def run_handovers(cluster, args, trace_file: Path, out: list[dict]) -> None:
        from bench import election_trace

        settled(Terminating(cluster), args, trace_file, out)
        # the members' logs and the trace go with the cluster's directory: read them now
        events = election_trace.parse(trace_file) if trace_file.exists() else []
        for t in out:
            t.update(handover_marks(cluster.member_log(t["killed"]), t["killed_at"]))
            t.update(election_steps(events, t["killed_at"], t["killed"], t["new_leader"]))
        handovers.extend(out)

    crash.settled_trials = run_handovers
    code = crash.main(argv)
    report = Path(argv[argv.index("--report") + 1]) if "--report" in argv else REPORT
    if report.is_file() and handovers:
        report.write_text(report.read_text() + "\n" + pause_section(handovers) + "\n" + steps_section(handovers))
    if report.is_file():
        text = report.read_text().replace(CRASH_TITLE, TITLE + "\n\n" + (
            "Each trial stops the leader with SIGTERM (a planned stop: it ends its log first, "
            "Handover.java) instead of killing it; 'killed', 'the kill' and 'failover' below mean that "
            "SIGTERM and the pause it caused. The stopped member is restarted once its process has exited."), 1)
        text = text.replace("python bench/failover_under_load.py", "python bench/handover.py", 1)
        report.write_text(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
