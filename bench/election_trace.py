"""Election timeline of a local cluster, read from the members' Aeron counters.

    .venv/bin/python -m bench.election_trace --dirs D0,D1,D2 --out trace.txt --stop-file STOP

Samples every member's election-state, node-role and consensus-module-state counters (the
``cnc.dat`` in its Aeron directory) about every millisecond and writes one line per change::

    <CLOCK_MONOTONIC ms> <member> <Aeron ElectionState> <role> <ConsensusModule.State>

until the stop file appears. A member that restarts gets a new ``cnc.dat``; it is mapped again.
The failover bench runs this as a child process and turns the lines into a per-kill breakdown
(``breakdown``): when the survivors noticed, when one became leader, when the election closed.
The counters are the consensus module's own, so the timeline costs the cluster nothing but the
sampling (~1,000 small reads a second from this process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROLES = {0: "FOLLOWER", 1: "CANDIDATE", 2: "LEADER"}
# ConsensusModule.State codes (Aeron 1.51): a member only starts an election from ACTIVE or
# SUSPENDED, so a SNAPSHOT in progress delays noticing a dead leader
MODULE_STATES = {0: "INIT", 1: "ACTIVE", 2: "SUSPENDED", 3: "SNAPSHOT", 4: "QUITTING", 5: "TERMINATING",
                 6: "CLOSED"}


class _Member:
    """One member's counters, mapped from its current ``cnc.dat`` (None until it has them)."""

    def __init__(self, aeron_dir: str) -> None:
        self.cnc = os.path.join(aeron_dir, "cnc.dat")
        self.inode = -1
        self.reader = None
        self.ids: tuple[int, ...] | None = None

    def refresh(self, jpype, control, types: tuple[int, ...]) -> None:
        try:
            inode = os.stat(self.cnc).st_ino
        except OSError:
            self.inode, self.reader, self.ids = -1, None, None
            return
        if inode == self.inode and self.ids is not None:
            return
        try:
            reader = control.mapCounters(jpype.JClass("java.io.File")(self.cnc))
            found: dict[int, int] = {}
            for cid in range(int(reader.maxCounterId())):
                if reader.getCounterState(cid) != reader.RECORD_ALLOCATED:
                    continue
                t = int(reader.getCounterTypeId(cid))
                if t in types:
                    found[t] = cid
        except Exception:  # noqa: BLE001 - a driver file still being written: next round
            return
        self.inode, self.reader = inode, reader
        self.ids = tuple(found[t] for t in types) if len(found) == len(types) else None

    def read(self) -> tuple[int, ...] | None:
        if self.reader is None or self.ids is None:
            return None
        try:
            return tuple(int(self.reader.getCounterValue(i)) for i in self.ids)
        except Exception:  # noqa: BLE001
            return None


def sample(dirs: list[str], out: Path, stop_file: Path, interval_s: float = 0.001) -> None:
    from pyengine import jvm

    jvm.start()
    import jpype

    counters = jpype.JClass("io.aeron.AeronCounters")
    control = jpype.JClass("io.aeron.cluster.ClusterControl")
    states = jpype.JClass("io.aeron.cluster.ElectionState")
    types = (int(counters.CLUSTER_ELECTION_STATE_TYPE_ID), int(counters.CLUSTER_NODE_ROLE_TYPE_ID),
             int(counters.CLUSTER_CONSENSUS_MODULE_STATE_TYPE_ID))
    names = {int(s.code()): str(s.name()) for s in states.values()}
    members = [_Member(d) for d in dirs]
    last: dict[int, tuple[int, ...]] = {}
    next_refresh = 0.0
    with out.open("w") as f:
        while not stop_file.exists():
            now = time.monotonic()
            if now >= next_refresh:
                for m in members:
                    m.refresh(jpype, control, types)
                next_refresh = now + 0.2
            for i, m in enumerate(members):
                v = m.read()
                if v is not None and last.get(i) != v:
                    last[i] = v
                    f.write(f"{now * 1000:.1f} {i} {names.get(v[0], v[0])} {ROLES.get(v[1], v[1])} "
                            f"{MODULE_STATES.get(v[2], v[2])}\n")
                    f.flush()
            time.sleep(interval_s)


Event = tuple[float, int, str, str, str]


def parse(path: Path) -> list[Event]:
    """(monotonic seconds, member, election state, role, consensus module state) per line."""
    events = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5:
            events.append((float(parts[0]) / 1000, int(parts[1]), parts[2], parts[3], parts[4]))
    return events


def settled(events: list[Event], members: int = 3) -> bool:
    """Whether every member's latest sample shows it out of any election (CLOSED), with one
    leader: a restarted member is still joining (catching up, or in its election) until then,
    and a kill before that is a second failure, not a failover."""
    latest: dict[int, tuple[str, str]] = {}
    for _, m, state, role, _ in events:
        latest[m] = (state, role)
    if len(latest) != members or any(state != "CLOSED" for state, _ in latest.values()):
        return False
    return sum(role == "LEADER" for _, role in latest.values()) == 1


def states_at(events: list[Event], at: float, members: list[int]) -> dict[int, str]:
    """Each member's last sampled "election state/consensus module state" at time ``at``
    ("down" if it has no sample yet: not started, or its restart has no counters yet).
    CLOSED/ACTIVE is a member in step; anything else at a kill makes the kill a second fault."""
    latest: dict[int, str] = {}
    for t, m, state, _role, mod in events:
        if t > at:
            break
        latest[m] = f"{state}/{mod}"
    return {m: latest.get(m, "down") for m in members}


def snapshot_durations(events: list[Event], kills: list[tuple[float, int]] = ()) -> list[float]:
    """Milliseconds each member's consensus module spent in SNAPSHOT, per snapshot taken (the
    time in which that member would not notice a dead leader). A snapshot cut short by a kill
    (``kills``: (time, member); its restarted process may first be sampled already ACTIVE), or
    still open at the end of the trace, is left out."""
    started: dict[int, float] = {}
    out: list[float] = []
    for t, m, _state, _role, mod in events:
        if mod == "SNAPSHOT":
            started.setdefault(m, t)
        elif m in started:
            t0 = started.pop(m)
            if mod == "ACTIVE" and not any(km == m and t0 <= kt <= t for kt, km in kills):
                out.append((t - t0) * 1000)
    return out


def snapshot_periods(events: list[Event]) -> list[tuple[int, float, float]]:
    """(member, start, end) of each time a member's consensus module was sampled in SNAPSHOT
    (end: the first later sample in another module state; a period still open at the end of the
    trace ends at its last sample)."""
    started: dict[int, float] = {}
    last: dict[int, float] = {}
    out: list[tuple[int, float, float]] = []
    for t, m, _state, _role, mod in events:
        if mod == "SNAPSHOT":
            started.setdefault(m, t)
        elif m in started:
            out.append((m, started.pop(m), t))
        last[m] = t
    out.extend((m, t0, last[m]) for m, t0 in started.items())
    return out


def snapshot_overlap_ms(periods: list[tuple[int, float, float]], start: float, end: float) -> float:
    """The longest time any member spent in SNAPSHOT within [start, end] (0 without one): a
    snapshot stalls every member's service at the same log position, so a pause that overlaps
    one has the snapshot in it."""
    return max((max(0.0, min(e, end) - max(s, start)) * 1000 for _m, s, e in periods), default=0.0)


def breakdown(events: list[Event], killed_at: float, killed: int,
              horizon_s: float = 10.0) -> dict[str, float | int | None]:
    """Milliseconds from the kill until a survivor entered an election (``detect_ms``), one became
    leader (``leader_ms``) and the leader closed the election (``complete_ms``), how many
    ballots were started (``ballots``; more than one means a split or a lost vote), and whether
    a survivor was taking a snapshot when the leader died or before it noticed (``snapshot``)."""
    detect = leader = complete = None
    ballots = 0
    module: dict[int, str] = {}
    snapshot = False
    for t, m, state, role, mod in events:
        if m == killed:
            continue
        if t <= killed_at:
            module[m] = mod  # each survivor's state at the kill
            continue
        if t > killed_at + horizon_s:
            break
        if detect is None:
            snapshot = snapshot or mod == "SNAPSHOT" or any(v == "SNAPSHOT" for v in module.values())
        if detect is None and state == "INIT":
            detect = t
        if state == "CANDIDATE_BALLOT" and role == "CANDIDATE":
            ballots += 1
        if leader is None and role == "LEADER":
            leader = t
        if leader is not None and role == "LEADER" and state == "CLOSED":
            complete = t
            break

    def ms(x: float | None) -> float | None:
        return None if x is None else (x - killed_at) * 1000

    if detect is None:
        snapshot = snapshot or any(v == "SNAPSHOT" for v in module.values())
    return {"detect_ms": ms(detect), "leader_ms": ms(leader), "complete_ms": ms(complete), "ballots": ballots,
            "snapshot": snapshot}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", required=True, help="comma list of the members' Aeron directories")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stop-file", type=Path, required=True)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    args = ap.parse_args(argv)
    sample(args.dirs.split(","), args.out, args.stop_file, args.interval_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
