"""Token authentication on the matching nodes, with a real auth service and real members."""

from __future__ import annotations

import json
import time

import pytest

from coordinator.auth.client import AuthClient
from coordinator.auth.feed import commands_for
from pyengine.client.match_client import AuthenticationError, UnauthorisedError
from pyengine.node.localcluster import wait_for
from pyengine.service.tokens import TokenSigner
from tests.integration.test_auth_service import ADMIN_KEY, AuthServer
from tests.integration.test_cluster_failover import order

pytestmark = pytest.mark.cluster

SYMBOL = "BTC-USDT"


@pytest.fixture
def auth_server(tmp_path):
    server = AuthServer(tmp_path / "auth.db", tmp_path / "auth.log", "--access-ttl", "8").start()
    yield server
    server.stop()
    server.kill()


@pytest.fixture
def secured(auth_server, make_cluster, make_client, tmp_path):
    """A cluster whose members trust the auth service's keys, an admin session that listed a
    symbol and funded alice, and helpers to log users in."""
    admin_api = AuthClient(auth_server.url, admin_key=ADMIN_KEY)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": admin_api.keys()}))
    cluster = make_cluster(auth_keys_file=str(keys_file))
    cluster.await_leader(60)

    def login(username, account, perms):
        admin_api.create_account(account)
        admin_api.create_user(username, "password-" + username, account, perms)
        return admin_api.login(username, "password-" + username)

    admin = make_client(cluster.ingress_endpoints(), token_provider=provider(admin_api, login("ops", "ops", [
        "admin", "trade", "read"])))
    assert admin.wait_connected(30), admin.last_error
    for cmd in (
        {"op": "add_symbol", "symbol": SYMBOL, "base": "BTC", "quote": "USDT",
         "tick_size": "0.01", "lot_size": "0.001"},
        {"op": "deposit", "account": "alice", "asset": "USDT", "amount": "100000", "tx_id": "a"},
        {"op": "deposit", "account": "bob", "asset": "BTC", "amount": "10", "tx_id": "b"},
        {"op": "deposit", "account": "carol", "asset": "USDT", "amount": "10", "tx_id": "c"},
    ):
        assert admin.request(cmd).events[0]["type"] != "rejected"
    return cluster, admin, admin_api, login


def provider(api, pair):
    """A token_provider for MatchClient: the access token, refreshed (rotating) on demand."""
    state = {"pair": pair, "refreshes": 0}

    def tokens(refresh: bool) -> str:
        if refresh:
            state["pair"] = api.refresh(state["pair"].refresh_token)
            state["refreshes"] += 1
        return state["pair"].access_token

    tokens.state = state
    return tokens


def test_login_trade_expire_refresh_and_carry_on(secured, make_client, auth_server):
    cluster, admin, api, login = secured
    tokens = provider(api, login("alice", "alice", ["trade", "read"]))
    alice = make_client(cluster.ingress_endpoints(), token_provider=tokens)
    assert alice.wait_connected(30), alice.last_error
    assert alice.request(order("alice", "buy", "100.00", "1", "a1")).events[0]["type"] == "accepted"
    time.sleep(9)  # the 8 s access token expires mid-session (checked against cluster time)
    reply = alice.request(order("alice", "buy", "100.00", "1", "a2"), timeout=30)
    assert reply.events[0]["type"] == "accepted"
    assert tokens.state["refreshes"] >= 1


def test_nodes_never_call_the_auth_service(secured, make_client, auth_server):
    cluster, admin, api, login = secured
    pair = login("bob", "bob", ["trade", "read"])
    auth_server.stop()  # from here on, only local verification is possible
    bob = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
    assert bob.wait_connected(30), bob.last_error
    assert bob.request(order("bob", "sell", "100.00", "1", "b1")).events[0]["type"] == "accepted"


@pytest.mark.parametrize("token, reason", [
    (b"", "missing_token"),
    (b"not-a-token", "malformed"),
    (b"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.", "alg_not_allowed"),
    (b"x" * 5000, "oversized"),
])
def test_bad_tokens_are_rejected_at_connect_with_a_reason(secured, make_client, token, reason):
    cluster, *_ = secured
    client = make_client(cluster.ingress_endpoints(), credentials=token)
    wait_for(lambda: client._auth_failure, 30, "the rejection")
    assert client._auth_failure == reason
    with pytest.raises(AuthenticationError) as err:
        client.submit({"op": "balances", "account": "alice"})
    assert err.value.reason == reason


def test_token_signed_by_another_key_is_rejected(secured, make_client):
    cluster, *_ = secured
    forged = TokenSigner.generate().mint("mallory", "alice", ["trade"], ttl_s=600)
    client = make_client(cluster.ingress_endpoints(), credentials=forged.encode())
    wait_for(lambda: client._auth_failure, 30, "the rejection")
    assert client._auth_failure == "unknown_kid"
    # the key may yet reach the partition (a key change being pushed): the client keeps trying
    wait_for(lambda: client.stats.connect_failures >= 3, 30, "the client to keep retrying an unknown key")
    assert not client._java.isReconnectHeld()


def test_a_client_refused_for_good_stops_reconnecting_until_new_credentials(secured, make_client):
    """Each connect attempt costs the cluster a session and its log buffers: a token that can
    never pass (here malformed; revoked, bad signature... alike) is not retried every second."""
    cluster, admin, api, login = secured
    client = make_client(cluster.ingress_endpoints(), credentials=b"not-a-token")
    wait_for(lambda: client._auth_failure, 30, "the rejection")
    assert client._auth_failure == "malformed"
    wait_for(lambda: client._java.isReconnectHeld(), 10, "the client to hold its reconnects")
    time.sleep(1.5)  # an attempt already under way when the hold came may still fail
    failures = client.stats.connect_failures
    time.sleep(3)  # the retry loop runs every 50 ms to 1 s: three seconds would show it
    assert client.stats.connect_failures == failures
    assert not client.wait_connected(0.1)

    client.set_credentials(login("erin", "erin", ["read"]).access_token.encode())
    assert client.wait_connected(30), client.last_error
    assert client.request({"op": "book", "symbol": SYMBOL, "depth": 1}).events[0]["type"] == "book"


def test_permission_and_account_are_checked_on_every_command(secured, make_client):
    cluster, admin, api, login = secured
    carol = make_client(cluster.ingress_endpoints(), token_provider=provider(api, login("carol", "carol", ["read"])))
    assert carol.wait_connected(30)
    assert carol.request({"op": "balances", "account": "carol"}).events[0]["type"] == "balances"
    with pytest.raises(UnauthorisedError, match="wrong_permission"):
        carol.request(order("carol", "buy", "100.00", "1", "c1"))
    with pytest.raises(UnauthorisedError, match="wrong_account"):
        carol.request({"op": "balances", "account": "alice"})
    with pytest.raises(UnauthorisedError, match="wrong_permission"):
        carol.request({"op": "deposit", "account": "carol", "asset": "USDT", "amount": "5", "tx_id": "x"})
    book = admin.request({"op": "book", "symbol": SYMBOL, "depth": 5}).events[0]
    assert book["bids"] == [] and book["asks"] == []  # nothing changed


def test_revoked_token_closes_its_session_also_on_a_member_that_was_down(secured, make_client):
    cluster, admin, api, login = secured
    pair = login("dave", "dave", ["trade", "read"])
    leader = cluster.leader()
    late = next(m for m in range(3) if m != leader)
    cluster.stop_member(late)

    dave = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
    assert dave.wait_connected(30)
    assert dave.request({"op": "book", "symbol": SYMBOL, "depth": 1}).events[0]["type"] == "book"
    api.revoke(refresh_token=pair.refresh_token)  # kills the family, access jti included
    for cmd in commands_for(api, kids=[k["kid"] for k in api.keys()], last_seq=0):
        admin.admin({**cmd, "op": cmd.pop("type")})
    # The partition closes dave's session; his client reconnects with the same token and is
    # refused at connect with the reason: anything else (a timeout, a lost leader) fails here.
    wait_for(lambda: dave._auth_failure, 30, "dave's session to be refused")
    assert dave._auth_failure == "revoked"
    with pytest.raises(AuthenticationError, match="revoked"):
        dave.submit({"op": "book", "symbol": SYMBOL, "depth": 1})

    cluster.start_member(late)
    cluster.await_followers(2, 60)
    # Make the member that was down the leader: it must refuse the revoked token too.
    for _ in range(6):
        current = cluster.await_leader(30)
        if current == late:
            break
        cluster.kill(current)
        cluster.await_leader(30, exclude=current)
        cluster.start_member(current)
        cluster.await_followers(2, 60)
    assert cluster.await_leader(30) == late
    again = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
    wait_for(lambda: again._auth_failure, 30, "the rejection")
    assert again._auth_failure == "revoked"


def test_a_member_restored_from_a_snapshot_knows_the_sessions_opened_before_it(secured, make_client):
    """Aeron restores the open sessions from a snapshot without opening them again: the member
    must still know their principals, or it alone refuses their commands and the replicas part."""
    cluster, admin, api, login = secured  # admin's session opened before the snapshot
    cluster.request_snapshot(60)
    leader = cluster.await_leader(30)
    restarted = next(m for m in range(3) if m != leader)
    cluster.stop_member(restarted)
    cluster.start_member(restarted)  # loads the snapshot: admin's session comes from it
    cluster.await_followers(2, 60)
    reply = admin.request({"op": "deposit", "account": "alice", "asset": "BTC", "amount": "1", "tx_id": "after"},
                          timeout=30)
    assert reply.events[0]["type"] != "rejected", reply.events
    info = admin.admin({"op": "state_hash"}, timeout=30).events

    def reported():
        hs = [cluster.member_hash(m) for m in range(3)]
        return hs if all(h and h["position"] == info["position"] for h in hs) else None

    hashes = wait_for(reported, 60, "every member to report the state hash")
    assert len({h["engine_hash"] for h in hashes}) == 1, hashes  # the restored member applied it too
