"""MatchClient(silence_reconnect_s=...): a client whose commands wait while the cluster says
nothing at all opens a new session by itself (the pusher's guard against a leader that died
without a NewLeader event reaching it), and the waiting command is still answered."""

from __future__ import annotations

import signal

import pytest

from pyengine.node.localcluster import wait_for

pytestmark = pytest.mark.cluster


def test_a_silent_cluster_makes_the_client_open_a_new_session_and_the_command_is_answered(make_cluster,
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
        wait_for(lambda: watchful.stats.silent_reconnects >= 1, 60, "the watchful client to give up the session")
        assert not waiting.done()
    finally:
        for m in frozen:
            cluster.kill(m, signal.SIGCONT)
    assert waiting.result(120).events["position"] > before  # answered once the cluster is back
    assert also_waiting.result(120).events["position"] > before
    assert watchful.stats.connects >= 2  # the answer came on a new session
    assert patient.stats.silent_reconnects == 0
