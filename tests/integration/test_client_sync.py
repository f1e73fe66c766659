"""MatchClient's sync requests (issue #20): ``request()`` with nothing else in flight offers from
the caller's thread and takes its answer there (ClusterClient.awaitDirect), and is still a pending
command like any other: answered once across a leader kill; with other commands in flight it goes
the send and receive threads' way and every answer still reaches its caller."""

from __future__ import annotations

import threading

import pytest

from tests.integration.test_cluster_failover import SYMBOL, order, setup_market

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("first_wait", [False, True], ids=["polling", "first-wait"])
def test_requests_are_answered_on_the_callers_thread_and_fall_back_beside_other_commands(make_cluster,
                                                                                         make_client, first_wait):
    cluster = make_cluster()
    cluster.await_leader(60)
    client = make_client(cluster.ingress_endpoints(), sync_first_wait=first_wait)
    assert client.wait_connected(30)
    setup_market(client)
    # setup_market's first request may find the connect's resend still due (then it goes the
    # threads' way); once settled, every request with nothing else in flight is a sync one
    before = client.stats.sync_requests
    for i in range(20):
        events = client.request(order("bob", "sell", "60000.00", "0.01", f"s{i}"), timeout=20).events
        assert events[0]["type"] == "accepted", events
    assert client.stats.sync_requests == before + 20

    # others in flight: their answers belong to the receive thread, so request() goes that way too
    futures = [client.submit(order("alice", "buy", "1.00", "0.01", f"b{i}")) for i in range(50)]
    reply = client.request({"op": "book", "symbol": SYMBOL, "depth": 1}, timeout=20)
    assert client.stats.sync_requests == before + 20
    assert reply.events[0]["asks"][0] == ["60000", "0.2"], reply.events
    assert all(f.result(20).events[0]["type"] == "accepted" for f in futures)

    # two threads at once: one takes the sync path, the other goes through the threads; both answered
    results: list = []
    threads = [threading.Thread(target=lambda n=n: results.append(
        client.request({"op": "balances", "account": "bob"}, timeout=20).events[0]["balances"]["BTC"]))
        for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and results[0] == results[1], results


@pytest.mark.parametrize("first_wait", [False, True], ids=["polling", "first-wait"])
def test_a_sync_request_across_a_leader_kill_is_applied_once(make_cluster, make_client, first_wait):
    cluster = make_cluster()
    leader = cluster.await_leader(60)
    cluster.await_followers(2)
    client = make_client(cluster.ingress_endpoints(), sync_first_wait=first_wait)
    assert client.wait_connected(30)
    setup_market(client)
    for i in range(8):  # round trips known: the requests below have a first wait
        client.request({"op": "balances", "account": f"warm-{i}"}, timeout=30)
    cluster.kill(leader)
    # sent while no leader is known: resent to the new one, answered once, on the caller's thread
    deposit = {"op": "deposit", "account": "carol", "asset": "USDT", "amount": "5", "tx_id": "carol-1"}
    events = client.request(deposit, timeout=60).events
    assert events[0]["type"] != "rejected", events
    cluster.await_leader(30, exclude=leader)
    balance = client.request({"op": "balances", "account": "carol"}, timeout=30).events[0]["balances"]["USDT"]
    assert balance["available"] == "5", balance  # once, not twice
    assert client.pending_count() == 0


def test_closing_the_client_ends_a_waiting_request_with_a_client_error(make_cluster, make_client):
    import signal
    import time

    from pyengine.client.match_client import ClientError

    cluster = make_cluster()
    cluster.await_leader(60)
    client = make_client(cluster.ingress_endpoints())
    assert client.wait_connected(30)
    setup_market(client)
    for member in range(3):
        cluster.kill(member, signal.SIGSTOP)  # nobody answers; resumed below for the cleanup
    try:
        outcome: list = []

        def wait() -> None:
            try:
                client.request({"op": "book", "symbol": SYMBOL, "depth": 1}, timeout=60)
                outcome.append("answered")
            except Exception as exc:  # noqa: BLE001 - the test looks at which
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive()  # still waiting for the answer
        started = time.monotonic()
        client.close()
        waiter.join(20)
        assert not waiter.is_alive()
        assert time.monotonic() - started < 15
        assert len(outcome) == 1 and isinstance(outcome[0], ClientError), outcome
    finally:
        for member in range(3):
            cluster.kill(member, signal.SIGCONT)
