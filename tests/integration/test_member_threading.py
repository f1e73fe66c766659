"""Compact member threading (issue #20): the driver and the archive of each member run on one
agent thread, and the members still serve commands and fail over on a leader SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest

from pyengine.node.localcluster import wait_for
from tests.conftest import TEST_TIMEOUTS

pytestmark = pytest.mark.cluster


def thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(open(f"/proc/{pid}/task/{tid}/comm").read().strip())
        except OSError:
            pass  # the thread ended meanwhile
    return names


def test_compact_members_serve_and_fail_over(make_cluster, make_client):
    cluster = make_cluster(timeouts=TEST_TIMEOUTS, member_threading="compact")
    leader = cluster.await_leader(90)
    cluster.await_followers(2, 90)
    for member, pid in cluster.pids().items():
        names = thread_names(pid)
        # one runner for driver + archive; no archive thread and no driver thread (named after
        # its directory) of their own
        assert names.count("driver-archive") == 1, (member, sorted(names))
        assert not [n for n in names if n.startswith(("archive-conduct", "/dev/shm/"))], names
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(60)
    client.request({"op": "add_symbol", "symbol": "BTC-USD", "base": "BTC", "quote": "USD", "tick_size": "0.01",
                    "lot_size": "0.001"}, 30)
    first = client.request({"op": "deposit", "account": "a", "asset": "USD", "amount": "5", "tx_id": "d1"}, 30)
    assert first.events[0]["type"] != "rejected", first.events

    cluster.kill(leader, signal.SIGKILL)
    new_leader = cluster.await_leader(60, exclude=leader)
    assert new_leader != leader
    second = client.request({"op": "deposit", "account": "a", "asset": "USD", "amount": "7", "tx_id": "d2"}, 30)
    assert second.events[0]["type"] != "rejected", second.events
    balance = client.request({"op": "balances", "account": "a"}, 30).events
    assert "12" in str(balance), balance

    cluster.start_member(leader)
    wait_for(lambda: cluster.member_status(leader).get("role") == "follower", 90, "the old leader back as follower")
