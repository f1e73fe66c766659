"""Planned leader handover under a steady order flow (issue 22): a leader stopped on purpose
(`matchctl cluster handover`, or a plain SIGTERM) ends its log first, the followers elect on its
end of stream, and the client follows the new leader on its own session. Checked here: nothing is
lost, nothing applied twice, and no order needed the client's periodic resend (the one that fires
when a command has waited ``resend_after_s``): what was in flight is answered through the
new-leader event alone. The pause itself is a benchmark's (bench/handover.py)."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
from decimal import Decimal

import orjson
import pytest

from pyengine.node.localcluster import wait_for
from pyengine.wire.protocol import Answer, Channel, Status
from tests.conftest import SHIPPED_TIMEOUTS
from tests.integration.raw_session import RawSession
from tests.integration.test_cluster_failover import hashes_at_one_position, order_flow, setup_market

pytestmark = pytest.mark.cluster

# The SDK's periodic resend, for commands unanswered this long: far above a handover's pause even
# on a loaded machine, so it fires only for an order the client did not get answered by following
# the new leader (it is then answered after all, and resent_on_timer counts it).
RESEND_AFTER_S = 10.0


def matchctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyengine.ops.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def survivors_elected_on_end_of_stream(cluster) -> int:
    """How many elections the members entered on a leader's end of log ('eos=true')."""
    return matchctl("errors", "--dir", str(cluster.dir)).stdout.count("eos=true")


class OrderFlow:
    """A cluster with a funded market and a client sending a GTC order every 5 ms."""

    def __init__(self, make_cluster, make_client) -> None:
        self.cluster = make_cluster()
        self.cluster.await_leader(60)
        self.cluster.await_followers(2, 60)
        self.client = make_client(self.cluster.ingress_endpoints(), resend_after_s=RESEND_AFTER_S)
        assert self.client.wait_connected(30), self.client.last_error
        setup_market(self.client)
        self.client.request({"op": "deposit", "account": "alice", "asset": "USDT", "amount": "99000000",
                             "tx_id": "t3"})
        self.client.request({"op": "deposit", "account": "bob", "asset": "BTC", "amount": "9900", "tx_id": "t4"})
        self.connects = self.client.stats.connects
        self.submitted: list[tuple[str, object]] = []
        self.stop = threading.Event()
        self.loader = threading.Thread(target=order_flow, args=(self.client, self.submitted, self.stop, 0.005),
                                       daemon=True)
        self.loader.start()
        self.more(100)

    def more(self, n: int) -> None:
        """Waits until the flow has sent ``n`` more orders."""
        sent = len(self.submitted)
        wait_for(lambda: len(self.submitted) > sent + n, 30, "the order flow to go on")

    def end(self) -> None:
        self.stop.set()
        self.loader.join(5)

    def check_all_answered_once(self) -> None:
        """Every order answered (none lost) and accepted once; the fills the client was told of are
        what the balances and the book show; funds conserved (nothing applied twice)."""
        client, submitted = self.client, self.submitted
        replies = {coid: fut.result(120) for coid, fut in submitted}
        assert len(replies) == len(submitted) > 300
        accepted = [r.events[0] for r in replies.values()]
        assert all(e["type"] == "accepted" and not e.get("duplicate") for e in accepted), [
            e for e in accepted if e["type"] != "accepted" or e.get("duplicate")][:3]
        book = client.request({"op": "book", "symbol": "BTC-USDT", "depth": 10}).events[0]
        traded = sum(Decimal(e["qty"]) for r in replies.values() for e in r.events if e["type"] == "trade")
        alice = client.request({"op": "balances", "account": "alice"}).events[0]["balances"]
        bob = client.request({"op": "balances", "account": "bob"}).events[0]["balances"]
        assert traded > 0 and Decimal(alice["BTC"]["available"]) == traded
        n_buys = sum(1 for coid, _ in submitted if int(coid[1:]) % 2 == 1)
        assert traded + sum(Decimal(q) for _, q in book["bids"]) == Decimal("0.01") * n_buys
        assert traded + sum(Decimal(q) for _, q in book["asks"]) == Decimal("0.01") * (len(submitted) - n_buys)
        for asset, amount in (("USDT", "100000000"), ("BTC", "10000")):
            assert sum(Decimal(b[asset]["available"]) + Decimal(b[asset]["held"])
                       for b in (alice, bob) if asset in b) == Decimal(amount)


def raw_ping(raw: RawSession, request_id: int) -> Answer:
    """A ping from a session that is not the SDK: it resends (same request id) by itself when an
    election on this loaded machine (the shipped 120 ms heartbeat timeout) loses the first one."""
    for _ in range(5):
        raw.send(request_id, Channel.ADMIN_JSON, orjson.dumps({"op": "ping"}))
        try:
            return raw.answer(request_id, timeout=10)
        except TimeoutError:
            continue
    raise TimeoutError(f"no answer to ping {request_id} after 5 sends")


def sigterm_and_follow(flow: OrderFlow, leader: int, more: int) -> int:
    """SIGTERM to ``leader`` under the flow: the client follows the new leader and ``more`` orders
    go on after it; the stopped member is reaped. Returns the new leader."""
    flow.cluster.kill(leader, signal.SIGTERM)
    new = flow.cluster.await_leader(60, exclude=leader)
    wait_for(lambda: flow.client.leader_member_id == new, 30, "the client to follow the handover")
    flow.more(more)
    flow.cluster.stop_member(leader, 60)
    return new


def test_handover_under_load_loses_nothing_applies_nothing_twice_and_needs_no_resend(make_cluster, make_client):
    flow = OrderFlow(make_cluster, make_client)
    cluster, client = flow.cluster, flow.client
    first = cluster.await_leader(60)
    eos_before = survivors_elected_on_end_of_stream(cluster)
    try:
        # 1: the operator's command (SIGTERM, then the old leader restarts as a follower)
        out = matchctl("cluster", "handover", "--dir", str(cluster.dir))
        assert out.returncode == 0, out.stderr
        second = cluster.await_leader(60)
        assert second != first and f"member {first} stopped leading; member {second} leads" in out.stdout, (
            first, second, out.stdout)
        cluster.await_followers(2, 60)
        wait_for(lambda: client.leader_member_id == second, 30, "the client to follow the first handover")
        flow.more(100)
        # 2: a plain SIGTERM to the leader (what a service manager sends)
        sigterm_and_follow(flow, second, 100)
    finally:
        flow.end()
    assert not cluster.is_running(second)
    flow.check_all_answered_once()

    # The client followed both new leaders on its own session (no reconnect, no closed session),
    # and no command waited for the periodic resend: what was in flight was resent (if at all)
    # because the new leader announced itself.
    assert client.stats.new_leaders >= 2, client.stats
    assert client.stats.connects == flow.connects and client.stats.disconnects == 0, client.stats
    assert client.stats.resent_on_timer == 0, client.stats
    # both handovers took the planned path: survivors elected on the end of the leader's log
    assert survivors_elected_on_end_of_stream(cluster) >= eos_before + 2

    cluster.start_member(second)
    cluster.await_followers(2, 120)
    _, hashes = hashes_at_one_position(cluster, client, [m for m in range(3) if m != second])
    assert len({(h["engine_hash"], h["sequence_hash"]) for h in hashes}) == 1


def test_rolling_restart_under_load_loses_nothing_and_the_client_stays_on_its_session(make_cluster, make_client):
    flow = OrderFlow(make_cluster, make_client)
    cluster, client = flow.cluster, flow.client
    before = cluster.pids()
    try:
        out = matchctl("cluster", "rolling-restart", "--dir", str(cluster.dir), timeout=600)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("restarted") == 3 and "handed over" in out.stdout
        flow.more(100)
    finally:
        flow.end()
    after = cluster.pids()
    assert all(after[m] != before[m] for m in range(3)) and all(cluster.is_running(m) for m in range(3))
    flow.check_all_answered_once()
    assert client.stats.new_leaders >= 1, client.stats
    assert client.stats.connects == flow.connects and client.stats.disconnects == 0, client.stats
    _, hashes = hashes_at_one_position(cluster, client, range(3))
    assert len({(h["engine_hash"], h["sequence_hash"]) for h in hashes}) == 1


def test_handover_holds_the_sdk_drains_the_leader_and_resends_nothing(make_cluster, make_client):
    """Hold and drain (Handover.java): the stopping leader tells the session to hold, the SDK acks
    behind what it had sent and queues new orders, the leader ends its log once the ack is applied.
    So nothing is in flight at the end of the log: no order is resent at all, and the orders
    submitted meanwhile go first to the new leader, which answers them once. A session that is not
    the SDK (a raw Aeron session, which ignores the notice) follows the new leader the normal way.
    Shipped timing, as the failover tests."""
    flow = OrderFlow(lambda: make_cluster(timeouts=SHIPPED_TIMEOUTS), make_client)
    cluster, client = flow.cluster, flow.client
    first = cluster.await_leader(60)
    with RawSession(cluster.ingress_endpoints(), secrets.randbits(62) | 1) as raw:
        assert raw_ping(raw, 1).status == Status.OK
        try:
            sigterm_and_follow(flow, first, 250)
        finally:
            flow.end()
        wait_for(lambda: raw.poll(0.05) or len(raw.leaders) > 1, 30, "the raw session to follow a new leader")
        assert raw_ping(raw, 2).status == Status.OK
    flow.check_all_answered_once()

    stats = client.stats
    assert stats.holds == 1 and stats.new_leaders >= 1, stats
    # orders submitted during the handover waited in the SDK and were first sent to the new leader
    # (answered once: check_all_answered_once found no duplicate)
    assert stats.held > 0, stats
    # nothing was in flight when the log ended: nothing resent when the hold ended, none by the
    # timer, and none at all unless an unplanned election followed (on this loaded 2-core machine
    # the shipped 120 ms heartbeat timeout sometimes fires: its new leader gets the usual resends)
    assert stats.resent_after_hold == 0 and stats.resent_on_timer == 0, stats
    if stats.new_leaders == stats.holds:
        assert stats.resent == 0, stats
    assert stats.connects == flow.connects and stats.disconnects == 0, stats
    log = cluster.member_log(first)
    assert "leader stopping: log ended for a handover" in log and "every told session acked" in log, log[-2000:]
    assert survivors_elected_on_end_of_stream(cluster) >= 1
