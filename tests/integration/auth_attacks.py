"""The attacks every way of starting the system must refuse, run against one partition.

Shared by tests/integration/test_auth_paths.py (`matchctl cluster up`, `matchctl up`) and
tests/docker (compose): the same eight refusals, each with its reason code, the book and every
balance unchanged afterwards, and a valid token that trades.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from coordinator.auth.client import AuthClient
from pyengine.client.match_client import AuthenticationError, MatchClient, UnauthorisedError
from pyengine.node.localcluster import wait_for
from pyengine.service.tokens import TokenSigner, b64url_encode

SYMBOL = "BTC-USDT"
PASSWORD = "password-for-tests"


def order(account: str, side: str, price: str, qty: str, coid: str) -> dict:
    return {"op": "place", "account": account, "symbol": SYMBOL, "side": side, "type": "limit", "tif": "GTC",
            "price": price, "qty": qty, "client_order_id": coid}


ACTIVE_KEY_SQL = "SELECT kid, private_key FROM signing_keys WHERE status = 'active'"


def active_signer(auth_db: Path) -> TokenSigner:
    """The auth service's own signing key, read from its database: lets a test mint a token the
    service would never issue (already expired) that is otherwise genuine."""
    with sqlite3.connect(auth_db) as db:
        kid, seed = db.execute(ACTIVE_KEY_SQL).fetchone()
    return TokenSigner(bytes(seed), kid)


def alg_none_token(account: str) -> bytes:
    header = b64url_encode(b'{"alg":"none","typ":"JWT","kid":"x"}')
    payload = b64url_encode(b'{"sub":"m","acct":"%s","perms":["trade"],"iat":1,"exp":9999999999,"jti":"j"}'
                            % account.encode())
    return f"{header}.{payload}.".encode()


@dataclass
class Partition:
    """One partition under attack: its ingress, the auth service, a control (admin) client."""

    endpoints: str
    api: AuthClient  # with the admin key
    signer: TokenSigner  # the auth service's active key (active_signer)
    control: MatchClient  # admin + read: deposits, the book
    make_client: Callable[..., MatchClient]
    client_kwargs: dict = field(default_factory=dict)  # e.g. egress_host for containers
    revocation_delays: list[float] = field(default_factory=list)

    def user(self, name: str, perms: list[str]):
        self.api.create_account(name)
        self.api.create_user(name, PASSWORD, name, perms)
        return self.api.login(name, PASSWORD)

    def connect(self, token: str | bytes) -> MatchClient:
        return self.make_client(self.endpoints, credentials=token.encode() if isinstance(token, str) else token,
                                **self.client_kwargs)

    def refused_at_connect(self, token: bytes, reason: str) -> None:
        client = self.connect(token)
        wait_for(lambda: client._auth_failure, 30, f"the {reason} refusal")
        assert client._auth_failure == reason
        with pytest.raises(AuthenticationError) as err:
            client.submit(order("alice", "buy", "100.00", "1", f"x-{reason}"))
        assert err.value.reason == reason


def run_attacks(part: Partition) -> None:
    """The whole matrix; asserts as it goes."""
    alice_pair = part.user("alice", ["trade", "read"])
    sam_pair = part.user("sam", ["trade", "read"])
    rita_pair = part.user("rita", ["read"])
    olga_pair = part.user("olga", ["read_any"])  # the operator role
    for cmd in ({"op": "deposit", "account": "alice", "asset": "USDT", "amount": "100000", "tx_id": "t-a"},
                {"op": "deposit", "account": "sam", "asset": "BTC", "amount": "10", "tx_id": "t-s"}):
        first = part.control.request(cmd, timeout=30).events[0]
        assert first["type"] != "rejected", first

    olga = part.connect(olga_pair.access_token)
    assert olga.wait_connected(30), olga.last_error

    def observed() -> tuple:
        book = part.control.request({"op": "book", "symbol": SYMBOL, "depth": 20}, timeout=30).events[0]
        balances = tuple(str(olga.request({"op": "balances", "account": a}, timeout=30).events[0])
                         for a in ("alice", "sam", "rita", "olga"))
        return str(book["bids"]), str(book["asks"]), balances

    before = observed()

    # refused at connect, by the leader's authenticator
    signer = part.signer
    expired = signer.mint("u-alice", "alice", ["trade", "read"], ttl_s=60, now_s=int(time.time()) - 3600)
    stranger = TokenSigner.generate()
    impostor = TokenSigner(TokenSigner.generate().private_key, signer.kid)  # the real kid, another key
    for token, reason in [
        (b"", "missing_token"),
        (b"not-a-token", "malformed"),
        (alg_none_token("alice"), "alg_not_allowed"),
        (stranger.mint("u-m", "alice", ["trade"], ttl_s=600).encode(), "unknown_kid"),
        (impostor.mint("u-m", "alice", ["trade"], ttl_s=600).encode(), "bad_signature"),
        (expired.encode(), "expired"),
    ]:
        part.refused_at_connect(token, reason)

    # refused per command: the session is good, the command is not its to send
    alice = part.connect(alice_pair.access_token)
    rita = part.connect(rita_pair.access_token)
    for c in (alice, rita):
        assert c.wait_connected(30), c.last_error
    for client, cmd, reason in [
        (alice, order("sam", "sell", "100.00", "1", "wa"), "wrong_account"),
        (alice, {"op": "balances", "account": "sam"}, "wrong_account"),
        (rita, order("rita", "buy", "100.00", "1", "wp"), "wrong_permission"),
        (alice, {"op": "deposit", "account": "alice", "asset": "USDT", "amount": "5", "tx_id": "t-x"},
         "wrong_permission"),
        (olga, order("olga", "buy", "100.00", "1", "op"), "wrong_permission"),  # the operator only reads
        (olga, {"op": "cancel_all", "account": "olga"}, "wrong_permission"),
        (olga, {"op": "deposit", "account": "olga", "asset": "USDT", "amount": "5", "tx_id": "t-o"},
         "wrong_permission"),
    ]:
        with pytest.raises(UnauthorisedError, match=reason):
            client.request(cmd, timeout=30)

    # revoked: an open session is closed by the partition once the revocation reaches it, and
    # the token is refused at connect from then on
    second = part.api.login("alice", PASSWORD)
    victim = part.connect(second.access_token)
    assert victim.wait_connected(30), victim.last_error
    assert victim.request({"op": "balances", "account": "alice"}, timeout=30).events[0]["type"] == "balances"
    started = time.monotonic()
    assert part.api.revoke(refresh_token=second.refresh_token) >= 1
    wait_for(lambda: victim._auth_failure, 30, "the revoked session to be refused")
    part.revocation_delays.append(time.monotonic() - started)
    assert victim._auth_failure == "revoked"
    with pytest.raises(AuthenticationError, match="revoked"):
        victim.submit(order("alice", "buy", "100.00", "1", "rv"))
    part.refused_at_connect(second.access_token.encode(), "revoked")

    assert observed() == before, "a refused command changed the book or a balance"

    # a valid token trades
    sam = part.connect(sam_pair.access_token)
    assert sam.wait_connected(30), sam.last_error
    assert alice.request(order("alice", "buy", "100.00", "1", "ok-a"), timeout=30).events[0]["type"] == "accepted"
    events = sam.request(order("sam", "sell", "100.00", "1", "ok-s"), timeout=30).events
    assert any(e["type"] == "trade" for e in events), events
    after = observed()
    assert after != before
    assert "'BTC'" in after[2][0]  # alice now holds BTC, seen through the operator's read
