"""MatchClient(silence_reconnect_s=...): a client whose commands wait while the cluster says
nothing at all looks for the leader with a second session by itself (the pusher's guard against a
leader that died without a NewLeader event reaching it), keeps its first session meanwhile, and
the waiting command is answered either way."""

from __future__ import annotations

import signal

import pytest

from pyengine.node.localcluster import wait_for

pytestmark = pytest.mark.cluster


def test_a_silent_cluster_makes_the_client_look_for_the_leader_and_the_command_is_answered(make_cluster,
                                                                                           make_client):
    cluster = make_cluster()
    cluster.await_leader(60)
    watchful = make_client(cluster.ingress_endpoints(), silence_reconnect_s=0.5)
    patient = make_client(cluster.ingress_endpoints())  # the default: no such guard
    assert watchful.wait_connected(30), watchful.last_error
    assert patient.wait_connected(30), patient.last_error
    before = watchful.admin({"op": "state_hash"}, timeout=30).events["position"]
    frozen = list(range(cluster.layout.members))
    for m in frozen:
        cluster.kill(m, signal.SIGSTOP)  # every member: nothing answers, no NewLeader either
    try:
        waiting = watchful.submit_admin({"op": "state_hash"})
        also_waiting = patient.submit_admin({"op": "state_hash"})
        wait_for(lambda: watchful.stats.silence_probes >= 1, 60, "the watchful client to look for the leader")
        assert not waiting.done()
    finally:
        for m in frozen:
            cluster.kill(m, signal.SIGCONT)
    assert waiting.result(120).events["position"] > before  # answered once the cluster is back
    assert also_waiting.result(120).events["position"] > before
    assert patient.stats.silence_probes == 0


def test_a_session_silent_through_a_long_election_follows_the_new_leader(make_cluster, make_client):
    """The election after the leader's death outlasts the client's silence limit (here: no quorum
    until the test lets one follower go on). The client must not give its session up: the new
    leader's NewLeader event comes on it. It knows only the old leader's endpoint, so a second
    session could never connect and the command can be answered only through that event (before
    this was fixed the client closed its session at the silence limit, lost the event, and kept
    connecting to the dead leader: the command was never answered)."""
    cluster = make_cluster()
    leader = cluster.await_leader(60)
    cluster.await_followers(2, 60)
    # new_leader_timeout_ms: Aeron itself would give the session up 5 s after its publication to
    # the stopped leader went unconnected; the election here may take longer on a loaded machine
    client = make_client(cluster.ingress_endpoints(only=(leader,)), silence_reconnect_s=0.5,
                         new_leader_timeout_ms=60_000)
    assert client.wait_connected(30), client.last_error
    before = client.admin({"op": "state_hash"}, timeout=30).events["position"]
    held = next(m for m in range(cluster.layout.members) if m != leader)
    cluster.kill(leader, signal.SIGSTOP)
    cluster.kill(held, signal.SIGSTOP)  # the third member alone cannot elect
    try:
        waiting = client.submit_admin({"op": "state_hash"})
        wait_for(lambda: client.stats.silence_probes >= 1, 60, "the client to look for the leader")
        assert not waiting.done()
        cluster.kill(leader, signal.SIGKILL)
    finally:
        cluster.kill(held, signal.SIGCONT)
    assert waiting.result(120).events["position"] > before
    assert client.stats.new_leaders >= 1  # through the first session's NewLeader event
    assert client.leader_member_id != leader
