"""matchctl's member-level commands on real member processes: member stop/start/restart, cluster
describe (ClusterTool on each member's files) and errors (the members' Aeron error logs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyengine.node.localcluster import wait_for

pytestmark = pytest.mark.cluster


def matchctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyengine.ops.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_member_stop_start_restart_describe_and_errors(make_cluster):
    cluster = make_cluster()
    leader = cluster.await_leader(60)
    cluster.await_followers(2, 60)
    d = str(cluster.dir)
    follower = next(m for m in range(3) if m != leader)

    out = matchctl("member", "stop", "0", str(follower), "--dir", d)
    assert out.returncode == 0, out.stderr
    assert not cluster.is_running(follower) and cluster.member_status(follower)["role"] == "down"

    out = matchctl("member", "start", "0", str(follower), "--dir", d)
    assert out.returncode == 0, out.stderr
    assert "is follower" in out.stdout or "is leader" in out.stdout
    first_pid = cluster.pids()[follower]

    out = matchctl("member", "restart", "0", str(follower), "--dir", d)
    assert out.returncode == 0, out.stderr
    assert cluster.pids()[follower] != first_pid and cluster.is_running(follower)
    wait_for(lambda: cluster.member_status(follower)["role"] in ("follower", "leader"), 60, "the member back")

    # bad input: a clear error, nothing changed
    pids = cluster.pids()
    for args, message in ((("start", "0", str(follower)), "already running"),
                          (("stop", "7", "0"), "holds partition 0, not 7"),
                          (("stop", "0", "5"), "member 5 is not in 0..2")):
        out = matchctl("member", *args, "--dir", d)
        assert out.returncode == 1 and message in out.stderr, (args, out.stdout, out.stderr)
    assert cluster.pids() == pids and all(cluster.is_running(m) for m in range(3))

    out = matchctl("cluster", "describe", "--dir", d)
    assert out.returncode == 0, out.stderr
    for m in range(3):
        assert f"== partition 0 member {m}:" in out.stdout
    assert out.stdout.count("Type: CONSENSUS_MODULE") == 3 and out.stdout.count("Type: CONTAINER") == 3
    assert "type=TERM" in out.stdout and "leadershipTermId=0" in out.stdout

    out = matchctl("errors", "--dir", d, "--member", str(follower))
    assert out.returncode == 0, out.stderr
    assert f"== partition 0 member {follower} (running)" in out.stdout
    assert "error log" in out.stdout
    assert all(f"member {m} (" not in out.stdout for m in range(3) if m != follower)
