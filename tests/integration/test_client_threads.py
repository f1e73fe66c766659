"""The SDK's threads per answer (issue #20): by default the embedded media driver has no thread of
its own (the threads that poll and offer run it) and the receive thread polls egress itself, so an
answer goes from the socket to its future on one thread, not through the driver's, the Java
poller's and the receive thread's in turn; the poller only keeps the session alive then. With
both off the SDK works as before: the poller polls every answer and hands it over."""

from __future__ import annotations

import time

import pytest

from tests.integration.test_cluster_failover import order, setup_market

pytestmark = pytest.mark.cluster

ORDERS = 300


def _jvm_thread_names() -> set[str]:
    import jpype

    return {str(t.getName()) for t in jpype.JClass("java.lang.Thread").getAllStackTraces().keySet()}


def _polled_by_keeper(client) -> tuple[int, int]:
    """Of the answer messages to ORDERS orders sent 1 ms apart (most of them a message each),
    how many the Java poller thread polled (and handed over), and how many there were."""
    java = client._java
    keeper, total = java.keeperMessages(), java.egressMessages()
    futures = []
    for i in range(ORDERS):
        futures.append(client.submit(order("alice", "buy", "1.00", "0.01", f"b{i}")))
        time.sleep(0.001)
    assert all(f.result(30).events[0]["type"] == "accepted" for f in futures)
    return java.keeperMessages() - keeper, java.egressMessages() - total


def _client_with_a_market(make_cluster, make_client, **kwargs):
    cluster = make_cluster()
    cluster.await_leader(60)
    client = make_client(cluster.ingress_endpoints(), **kwargs)
    assert client.wait_connected(30)
    setup_market(client)
    return client


def test_answers_reach_the_receive_thread_with_no_driver_or_conductor_thread(make_cluster, make_client):
    client = _client_with_a_market(make_cluster, make_client)
    assert client._java.driverInvoked()
    names = _jvm_thread_names()
    # Aeron names a driver's thread after its directory; its client conductor "aeron-client"
    assert not any(client.aeron_dir in n for n in names), names
    assert "aeron-client" not in names and "aeron-executor" not in names, names
    # the receive thread polled (nearly) all of them itself; the poller polls only when it has
    # been away over 2 ms (a slow callback, a busy machine)
    by_keeper, messages = _polled_by_keeper(client)
    assert messages > ORDERS // 4 and by_keeper < messages // 2, (by_keeper, messages)


def test_with_both_off_the_poller_polls_every_answer(make_cluster, make_client):
    client = _client_with_a_market(make_cluster, make_client, receive_polls=False, invoke_driver=False)
    assert not client._java.driverInvoked()
    assert any(client.aeron_dir in n for n in _jvm_thread_names())
    by_keeper, messages = _polled_by_keeper(client)
    assert messages > 0 and by_keeper == messages, (by_keeper, messages)
