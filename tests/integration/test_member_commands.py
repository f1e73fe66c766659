"""matchctl's member-level commands on real member processes: member stop/start/restart, cluster
describe (ClusterTool on each member's files) and errors (the members' Aeron error logs)."""

from __future__ import annotations

import re
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


def test_a_member_restarted_after_a_snapshot_knows_its_leader(make_cluster):
    """A follower killed, a snapshot taken by the other two, the follower started again on an idle
    partition: it catches up from a snapshot taken after its term began, so no new-leader event
    reaches its service. It must still name its leader (status file, `matchctl member start`):
    before, its leader stayed unknown until the next election and `member start` timed out after
    60 s (two of three tries, 7 Dec)."""
    import os
    import signal

    cluster = make_cluster()
    leader = cluster.await_leader(60)
    cluster.await_followers(2, 60)
    d = str(cluster.dir)
    for _ in range(2):
        follower = next(m for m in range(3) if m != leader)
        os.kill(cluster.pids()[follower], signal.SIGKILL)
        wait_for(lambda f=follower: not cluster.is_running(f), 30, "the follower gone")
        wait_for(lambda: matchctl("cluster", "snapshot", "--dir", d).returncode == 0, 60,
                 "a snapshot by the two live members", interval=1.0)
        out = matchctl("member", "start", "0", str(follower), "--dir", d, "--timeout", "60")
        assert out.returncode == 0, out.stderr
        leader = cluster.await_leader(60)
        assert f"leader {leader})" in out.stdout, out.stdout
        assert cluster.member_status(follower)["leader_member_id"] == leader


def test_planned_handover_ends_the_log_so_followers_elect_on_it(make_cluster, make_client):
    cluster = make_cluster()
    cluster.await_leader(60)
    cluster.await_followers(2, 60)
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(30), client.last_error
    client.request({"op": "add_symbol", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                    "tick_size": "0.01", "lot_size": "0.001"}, timeout=30)
    connects = client.stats.connects

    out = matchctl("cluster", "handover", "--dir", str(cluster.dir))
    assert out.returncode == 0, out.stderr
    # the leader matchctl handed over from: on a loaded machine the leader can change on its own
    # between the wait above and the handover (a CI run saw 0 -> 1 -> 0 before it)
    said = re.search(r"member (\d+) stopped leading; member (\d+) leads", out.stdout)
    assert said, out.stdout
    old, new = int(said[1]), int(said[2])
    assert new != old and cluster.await_leader(60) == new
    assert cluster.member_status(old)["role"] == "follower"
    assert "leader stopping: log ended for a handover" in cluster.member_log(old)
    # a survivor entered its election on the end of the old leader's log, not on a timeout
    survivors = [m for m in range(3) if m != old]
    logs = matchctl("errors", "--dir", str(cluster.dir)).stdout
    sections = {m: logs.split(f"== partition 0 member {m} ")[1].split("== partition")[0] for m in survivors}
    assert any("eos=true" in sections[m] for m in survivors), sections

    # the client followed the new leader on its own: same session, no reconnect
    events = client.request({"op": "deposit", "account": "a", "asset": "USDT", "amount": "1", "tx_id": "h1"},
                            timeout=30).events
    assert events[0]["type"] != "rejected", events
    assert client.stats.connects == connects and client.leader_member_id == new


def test_rolling_restart_restarts_every_member_and_loses_nothing(make_cluster, make_client):
    cluster = make_cluster()
    cluster.await_leader(60)
    cluster.await_followers(2, 60)
    before = cluster.pids()
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(30), client.last_error
    client.request({"op": "add_symbol", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                    "tick_size": "0.01", "lot_size": "0.001"}, timeout=30)
    futures = [client.submit({"op": "deposit", "account": "a", "asset": "USDT", "amount": "1", "tx_id": f"r{i}"})
               for i in range(20)]
    out = matchctl("cluster", "rolling-restart", "--dir", str(cluster.dir), timeout=600)
    futures += [client.submit({"op": "deposit", "account": "a", "asset": "USDT", "amount": "1", "tx_id": f"s{i}"})
                for i in range(20)]
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("restarted") == 3 and "handed over" in out.stdout
    after = cluster.pids()
    assert all(after[m] != before[m] for m in range(3)) and all(cluster.is_running(m) for m in range(3))
    assert all(f.result(60).events[0]["type"] != "rejected" for f in futures)
    balances = client.request({"op": "balances", "account": "a"}, timeout=30).events
    assert balances[0]["balances"]["USDT"]["available"] == "40", balances  # every deposit applied once


@pytest.mark.parametrize("parent_ignores_sighup", [False, True], ids=["plain", "nohup"])
def test_sighup_restarts_a_member_in_place(make_cluster, make_client, parent_ignores_sighup):
    """SIGHUP starts a member's process again from its own command line: the path a member takes
    on its own when Aeron leaves its log join waiting forever (java-cluster JoinDeadlock.java,
    bench/reports/stuck_election.md). The same pid, the JVM's sockets released (the new driver
    binds the same ports), back in step from its snapshot and log, and it applies what follows:
    its state hash equals the others' at one log position. `nohup`: the cluster started by a
    parent that ignores SIGHUP (as `nohup matchctl cluster up` does), which the members inherit
    and the JVM would keep."""
    import os
    import signal

    from pyengine.ops.members import IN_STEP
    from tests.integration.test_cluster_failover import hashes_at_one_position, order, setup_market

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN) if parent_ignores_sighup else None
    try:
        cluster = make_cluster()
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
    leader = cluster.await_leader(60)
    cluster.await_followers(2, 60)
    follower = next(m for m in range(3) if m != leader)
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(60)
    setup_market(client)
    for i in range(20):
        ev = client.request(order("alice", "buy", f"{40000 + i}.00", "0.01", f"b{i}"), timeout=30).events
        assert ev[0]["type"] == "accepted", ev
    pid = cluster.pids()[follower]
    in_step = cluster.member_log(follower).count(IN_STEP)

    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "restarting this process: member" in cluster.member_log(follower), 60, "the restart")
    wait_for(lambda: cluster.member_log(follower).count(IN_STEP) > in_step, 180, "the member back in step")
    assert cluster.pids()[follower] == pid and cluster.is_running(follower)
    assert "Address already in use" not in cluster.member_log(follower)

    for i in range(20, 30):  # applied by the restarted member as well
        ev = client.request(order("alice", "buy", f"{40000 + i}.00", "0.01", f"b{i}"), timeout=30).events
        assert ev[0]["type"] == "accepted", ev
    info, hashes = hashes_at_one_position(cluster, client, range(3))
    assert len({(h["engine_hash"], h["sequence_hash"]) for h in hashes}) == 1, hashes
    assert info["applied"] == hashes[follower]["applied"]
