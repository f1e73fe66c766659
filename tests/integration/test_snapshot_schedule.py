"""The snapshot schedule members run by default: by log growth and by time, never on an idle log.

A restarted member loads its latest snapshot and replays the log after it, so these triggers are
what bound a restart (docs/operations.md, "Snapshots and recovery").
"""

from __future__ import annotations

import time

import pytest

from pyengine.node.localcluster import wait_for
from pyengine.node.settings import DEFAULT_SNAPSHOT_INTERVAL_S, DEFAULT_SNAPSHOT_LOG_BYTES, ClusterLayout
from pyengine.node.topology import Topology
from tests.integration.test_cluster_failover import order, setup_market

pytestmark = pytest.mark.cluster


def snapshot_positions(cluster) -> list[int]:
    return [cluster.member_status(m).get("last_snapshot_position", -1) for m in range(3)]


def assert_no_snapshot_of_an_idle_log(cluster, taken: list[int]) -> None:
    """A snapshot after ``taken`` only where the log grew past it: an election on a starved
    machine appends to the log by itself (its new-term event), and that growth is due a snapshot."""
    for m, before in enumerate(taken):
        status = cluster.member_status(m)
        if status.get("last_snapshot_position", -1) != before:
            assert status.get("log_position", 0) > before, status


def test_every_start_path_snapshots_by_default(tmp_path):
    layout = ClusterLayout(base_dir=tmp_path)
    props = layout.member_properties(0)
    assert int(props["snapshot.interval.s"]) == DEFAULT_SNAPSHOT_INTERVAL_S > 0
    assert int(props["snapshot.log.bytes"]) == DEFAULT_SNAPSHOT_LOG_BYTES > 0
    # a worker's members (matchctl up, compose) take their settings from the topology
    topo = Topology.from_dict({"workers": [{"id": "w1"}, {"id": "w2"}, {"id": "w3"}],
                               "partitions": [{"id": "p1", "cluster_id": 1, "port_base": 21000,
                                               "members": ["w1", "w2", "w3"], "symbols": []}]})
    member = topo.layout("p1", tmp_path).member_properties(0)
    assert member["snapshot.interval.s"] == props["snapshot.interval.s"]
    assert member["snapshot.log.bytes"] == props["snapshot.log.bytes"]
    assert Topology.from_dict(topo.to_dict()).snapshot_log_bytes == DEFAULT_SNAPSHOT_LOG_BYTES


def test_log_growth_triggers_a_snapshot_and_an_idle_log_none(make_cluster, make_client):
    # time trigger off: only the log growth can cause these snapshots
    cluster = make_cluster(snapshot_interval_s=0, snapshot_log_bytes=64 * 1024)
    cluster.await_leader(60)
    cluster.await_followers(2, 60)
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(30)
    setup_market(client)
    assert snapshot_positions(cluster) == [-1, -1, -1]
    futures = [client.submit(order("bob", "sell", f"{60000 + i}.00", "0.001", f"s{i}")) for i in range(600)]
    for f in futures:
        f.result(60)
    taken = wait_for(lambda: (p := snapshot_positions(cluster)) and min(p) > 0 and len(set(p)) == 1 and p, 30,
                     "every member to take the scheduled snapshot")
    # the log since that snapshot is below the threshold and does not grow: no further snapshot
    time.sleep(1.5)
    assert_no_snapshot_of_an_idle_log(cluster, taken)


def test_time_triggers_a_snapshot_only_while_the_log_grows(make_cluster, make_client):
    cluster = make_cluster(snapshot_interval_s=1, snapshot_log_bytes=0)
    cluster.await_leader(60)
    cluster.await_followers(2, 60)
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(30)
    setup_market(client)
    # a snapshot of the whole log so far (an earlier one may predate the setup commands)
    first = wait_for(lambda: (p := snapshot_positions(cluster)) and len(set(p)) == 1 and p[0] > 0
                     and all(cluster.member_status(m).get("log_position") == p[0] for m in range(3)) and p, 30,
                     "a timed snapshot of the whole log")
    time.sleep(2.5)  # more than two intervals with nothing sent
    assert_no_snapshot_of_an_idle_log(cluster, first)
    client.request(order("bob", "sell", "61000.00", "0.001", "late"), timeout=20)
    wait_for(lambda: min(snapshot_positions(cluster)) > first[0], 30, "a timed snapshot of the new log")
