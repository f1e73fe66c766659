"""The failover bench's breakdown of one kill from the members' counter trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.election_trace import (
    breakdown,
    parse,
    settled,
    snapshot_durations,
    snapshot_overlap_ms,
    snapshot_periods,
)

# member 0 led and was killed at t=10.000 s; members 1 and 2 survive
TRACE = """\
9000.0 0 CLOSED LEADER ACTIVE
9000.0 1 CLOSED FOLLOWER ACTIVE
9000.0 2 CLOSED FOLLOWER SNAPSHOT
10050.0 2 CLOSED FOLLOWER ACTIVE
10150.0 1 INIT FOLLOWER ACTIVE
10151.0 1 CANVASS FOLLOWER ACTIVE
10152.0 2 INIT FOLLOWER ACTIVE
10160.0 1 CANDIDATE_BALLOT CANDIDATE ACTIVE
10161.0 2 CANDIDATE_BALLOT CANDIDATE ACTIVE
10181.0 1 CANVASS FOLLOWER ACTIVE
10190.0 1 CANDIDATE_BALLOT CANDIDATE ACTIVE
10210.0 1 LEADER_LOG_REPLICATION LEADER ACTIVE
10350.0 1 CLOSED LEADER ACTIVE
10351.0 2 CLOSED FOLLOWER ACTIVE
12000.0 0 INIT FOLLOWER INIT
"""


def test_a_kill_is_broken_down_from_the_survivors_counters(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(TRACE + "garbage line\n")
    events = parse(path)
    assert len(events) == 15
    got = breakdown(events, killed_at=10.0, killed=0)
    assert got["detect_ms"] == pytest.approx(150.0)
    assert got["ballots"] == 3  # a split (both candidates), then member 1 again
    assert got["leader_ms"] == pytest.approx(210.0)
    assert got["complete_ms"] == pytest.approx(350.0)
    assert got["snapshot"] is True  # member 2 was still snapshotting when the leader died


def test_no_snapshot_and_no_election_in_the_horizon(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text("9000.0 1 CLOSED FOLLOWER ACTIVE\n9000.0 2 CLOSED FOLLOWER ACTIVE\n")
    got = breakdown(parse(path), killed_at=10.0, killed=0)
    assert got == {"detect_ms": None, "leader_ms": None, "complete_ms": None, "ballots": 0, "snapshot": False}


def test_settled_only_once_every_member_has_left_its_election(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(TRACE)
    events = parse(path)
    # member 0 restarted and is still in its election (joining): not settled
    assert not settled(events)
    assert not settled([e for e in events if e[0] < 10.2])  # survivors in their election
    # the killed leader's last sample before its restart still says LEADER: two leaders, not settled
    assert not settled([e for e in events if e[0] < 11.0])
    rejoined = events + [(12.5, 0, "CLOSED", "FOLLOWER", "ACTIVE")]
    assert settled(rejoined)
    assert not settled([e for e in rejoined if e[1] != 2])  # a member never seen


def test_snapshot_durations_count_only_snapshots_that_finished(tmp_path: Path) -> None:
    path = tmp_path / "trace.txt"
    path.write_text(TRACE + "13000.0 1 CLOSED LEADER SNAPSHOT\n13000.5 2 CLOSED FOLLOWER SNAPSHOT\n"
                    "13040.0 1 CLOSED LEADER ACTIVE\n13070.5 2 CLOSED FOLLOWER ACTIVE\n"
                    "14000.0 0 CLOSED FOLLOWER SNAPSHOT\n14100.0 0 INIT FOLLOWER INIT\n"
                    "15000.0 1 CLOSED LEADER SNAPSHOT\n")
    # member 2's snapshot at the start of the trace ended at 10.05 s; member 0's was cut short by
    # its restart and member 1's last one never ended in the trace
    assert snapshot_durations(parse(path)) == pytest.approx([1050.0, 40.0, 70.0])
    # a member killed in its snapshot whose restarted process is first seen ACTIVE: not a snapshot
    events = parse(path) + [(16.0, 1, "CLOSED", "FOLLOWER", "ACTIVE")]
    assert snapshot_durations(events) == pytest.approx([1050.0, 40.0, 70.0, 1000.0])
    assert snapshot_durations(events, kills=[(15.2, 1)]) == pytest.approx([1050.0, 40.0, 70.0])


def test_the_snapshot_inside_a_pause_is_measured(tmp_path: Path) -> None:
    """A fixed-schedule report says how much of each pause some member spent in SNAPSHOT."""
    path = tmp_path / "trace.txt"
    path.write_text(TRACE + "20000.0 1 CLOSED LEADER SNAPSHOT\n20000.0 2 CLOSED FOLLOWER SNAPSHOT\n"
                    "20400.0 2 CLOSED FOLLOWER ACTIVE\n20600.0 1 CLOSED LEADER ACTIVE\n"
                    "30000.0 1 CLOSED LEADER SNAPSHOT\n")
    periods = snapshot_periods(parse(path))
    # member 2 from the trace's start to 10.05 s; members 1 and 2 at 20 s; member 1 open at the end
    assert sorted((m, s, e) for m, s, e in periods) == [
        (1, 20.0, 20.6), (1, 30.0, 30.0), (2, 9.0, 10.05), (2, 20.0, 20.4)]
    assert snapshot_overlap_ms(periods, 19.9, 21.0) == pytest.approx(600.0)  # the longest, member 1's
    assert snapshot_overlap_ms(periods, 20.5, 21.0) == pytest.approx(100.0)  # its tail
    assert snapshot_overlap_ms(periods, 10.1, 19.0) == 0.0  # a pause with no snapshot in it
    assert snapshot_overlap_ms([], 0.0, 1.0) == 0.0
