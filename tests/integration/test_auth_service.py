"""The auth service as a real process: uvicorn on 127.0.0.1 (ephemeral port), SQLite in tmp_path.

Every server started here is stopped in a finaliser (SIGTERM, then SIGKILL), also on failure.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coordinator.auth.client import AuthClient, AuthError
from pyengine.service.tokens import RevocationList, TokenError, TokenVerifier, check_command
from tests.integration.keep_alive import second_answer_after_idle

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "test-admin-key-0123456789"
ACCESS_TTL = 120
NS = 1_000_000_000


class AuthServer:
    """One ``python -m coordinator.auth`` child process."""

    def __init__(self, db: Path, log: Path, *extra: str) -> None:
        self.db, self.log, self.extra = db, log, extra
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AuthServer:
        env = dict(os.environ, MATCHX_AUTH_ADMIN_KEY=ADMIN_KEY, PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable, "-m", "coordinator.auth",
            "--host", "127.0.0.1", "--port", "0", "--db", str(self.db),
            "--argon2-opslimit", "1", "--argon2-memlimit", "8192",
            "--access-ttl", str(ACCESS_TTL), "--log-level", "warning", "--no-access-log", "--exit-with-parent",
            *self.extra,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )
        try:
            line = self._readline(timeout)
            info = json.loads(line)
            assert info["event"] == "listening" and info["pid"] == self.proc.pid
            self.port = int(info["port"])
        except BaseException:
            self.kill()
            raise
        return self

    def _readline(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            deadline = time.monotonic() + timeout
            buf = b""
            while not buf.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no startup line; log: {self.log.read_text()[-2000:]}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"server exited; log: {self.log.read_text()[-2000:]}")
                buf += chunk
            return buf.decode()
        finally:
            sel.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL if it does not stop in time)."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        rest = proc.stdout.read().decode() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
        self.stopped_output = rest
        return proc.returncode

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture()
def server_factory(tmp_path):
    started: list[AuthServer] = []

    def make(*extra: str, db: Path | None = None) -> AuthServer:
        s = AuthServer(db or tmp_path / "auth.db", tmp_path / "server.log", *extra)
        started.append(s)
        return s.start()

    try:
        yield make
    finally:
        for s in started:
            try:
                s.stop()
            finally:
                s.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    s = AuthServer(d / "auth.db", d / "server.log")
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def admin(server):
    with AuthClient(server.url, admin_key=ADMIN_KEY) as c:
        yield c


_n = 0


def new_user(admin: AuthClient, perms=None, account=None) -> tuple[str, str, str]:
    global _n
    _n += 1
    account = account or admin.create_account()["account"]
    username = f"user{_n}-{os.getpid()}"
    admin.create_user(username, "correct horse", account, perms)
    return username, "correct horse", account


def reason(fn) -> str:
    with pytest.raises(AuthError) as ei:
        fn()
    return ei.value.reason


# ------------------------------------------------------------------------------ login
def test_login_token_verifies_with_published_keys(admin):
    user, pw, acct = new_user(admin, perms=["trade", "read"])
    pair = admin.login(user, pw)
    assert pair.token_type == "Bearer" and pair.expires_in == ACCESS_TTL
    assert pair.refresh_token and pair.refresh_token != pair.access_token
    verifier = admin.verifier()
    now = int(time.time())
    p = verifier.verify(pair.access_token, now_s=now)
    assert p.account == acct and p.perms == ("trade", "read") and p.kid == verifier.kids()[0]
    assert abs(p.exp - (now + ACCESS_TTL)) <= 5
    check_command(p, time.time_ns(), "trade", acct)
    with pytest.raises(TokenError) as ei:
        check_command(p, time.time_ns(), "admin", acct)
    assert ei.value.reason == "wrong_permission"
    me = admin.me(pair.access_token)
    assert me["uid"] == p.uid and me["jti"] == p.jti


def test_login_rejections(admin, server):
    user, pw, _ = new_user(admin)
    assert reason(lambda: admin.login(user, "wrong password")) == "invalid_credentials"
    assert reason(lambda: admin.login("nobody-here", pw)) == "invalid_credentials"
    r = httpx.post(server.url + "/v1/login", json={"username": user})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = httpx.post(server.url + "/v1/login", content=b"{not json", timeout=5)
    assert r.status_code == 422


def test_admin_endpoints_need_admin_key(server):
    with AuthClient(server.url) as anon, AuthClient(server.url, admin_key="x" * 20) as wrong:
        r = httpx.post(server.url + "/v1/admin/accounts", json={})
        assert r.status_code == 401 and r.json()["error"]["code"] == "admin_required"
        assert reason(wrong.create_account) == "bad_admin_key"
        assert reason(wrong.rotate_key) == "bad_admin_key"
        assert reason(lambda: anon.create_account()) == "admin_required"  # client-side


def test_admin_account_and_user_errors(admin):
    acct = admin.create_account()["account"]
    assert reason(lambda: admin.create_account(acct)) == "account_exists"
    assert reason(lambda: admin.create_user("dup-user-x", "pw-long-enough", "no-such")) == ("unknown_account")
    admin.create_user("dup-user-x", "pw-long-enough", acct)
    assert reason(lambda: admin.create_user("dup-user-x", "pw-long-enough", acct)) == ("username_taken")
    assert reason(lambda: admin.create_user("short-pw", "short", acct)) == "weak_password"
    assert reason(lambda: admin.create_user("bad perm", "pw-long-enough", acct)) in (
        "invalid_username",
        "validation_error",
    )
    assert reason(lambda: admin.create_user("p2", "pw-long-enough", acct, ["withdraw"])) == ("validation_error")


# ------------------------------------------------------------------------------ refresh
def test_refresh_rotation(admin):
    user, pw, _ = new_user(admin)
    first = admin.login(user, pw)
    second = admin.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    v = admin.verifier()
    assert v.verify(second.access_token).jti != v.verify(first.access_token).jti
    third = admin.refresh(second.refresh_token)  # the new one works (once)
    assert admin.me(third.access_token)["uid"] == v.verify(first.access_token).uid
    assert reason(lambda: admin.refresh("mxr_not-a-real-token")) == "invalid_refresh_token"


def test_refresh_reuse_kills_family(admin):
    user, pw, _ = new_user(admin)
    v = admin.verifier()
    since = _last_seq(admin)
    a = admin.login(user, pw)
    other_session = admin.login(user, pw)  # separate family: must survive
    b = admin.refresh(a.refresh_token)
    c = admin.refresh(b.refresh_token)

    assert reason(lambda: admin.refresh(a.refresh_token)) == "refresh_reused"  # replay
    assert reason(lambda: admin.refresh(c.refresh_token)) == "refresh_revoked"  # family dead
    assert reason(lambda: admin.refresh(b.refresh_token)) == "refresh_revoked"

    family_jtis = {v.verify(t.access_token).jti for t in (a, b, c)}
    revoked = admin.revocations(since=since)
    assert {r["jti"] for r in revoked} == family_jtis
    for t in (a, b, c):
        assert reason(lambda t=t: admin.me(t.access_token)) == "revoked"

    assert admin.me(other_session.access_token)["uid"]
    assert admin.refresh(other_session.refresh_token).access_token


# ------------------------------------------------------------------------------ revocation
def _last_seq(client: AuthClient) -> int:
    rows = client.revocations(since=0, limit=10000)
    return rows[-1]["seq"] if rows else 0


def test_revocation_feed_incremental(admin):
    user, pw, _ = new_user(admin)
    other_user, other_pw, _ = new_user(admin)
    v = admin.verifier()
    since = _last_seq(admin)

    s1 = admin.login(user, pw)
    s2 = admin.login(user, pw)
    s3 = admin.login(user, pw)
    s4 = admin.login(user, pw)
    s5 = admin.login(user, pw)
    s6 = admin.login(user, pw)
    o1 = admin.login(other_user, other_pw)
    j = {k: v.verify(t.access_token).jti for k, t in dict(s1=s1, s2=s2, s3=s3, s4=s4, s5=s5,
                                                      o1=o1).items()}  # fmt: skip

    assert admin.logout(refresh_token=s1.refresh_token) == 1
    assert admin.logout(refresh_token=s1.refresh_token) == 0  # idempotent
    assert admin.logout(access_token=s2.access_token) == 1  # via bearer
    assert admin.revoke(refresh_token=s3.refresh_token) == 1
    assert admin.revoke(jti=j["s4"], as_admin=True) == 1
    assert admin.revoke(jti=j["s5"], access_token=s5.access_token) == 1  # owner
    # a user cannot revoke (or probe) someone else's token
    assert reason(lambda: admin.revoke(jti=j["o1"], access_token=s6.access_token)) == "unknown_jti"
    assert reason(lambda: admin.revoke(jti=j["s1"])) == "missing_token"
    assert admin.revoke(refresh_token="mxr_unknown") == 0  # RFC 7009: not an error

    feed = admin.revocations(since=since)
    assert [r["jti"] for r in feed] == [j["s1"], j["s2"], j["s3"], j["s4"], j["s5"]]
    seqs = [r["seq"] for r in feed]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5 and seqs[0] > since
    assert all(r["exp"] > time.time() for r in feed)
    assert admin.revocations(since=seqs[2]) == feed[3:]
    assert admin.revocations(since=since, limit=2) == feed[:2]
    assert admin.revocations(since=seqs[-1]) == []
    assert admin.me(o1.access_token)["jti"] == j["o1"]  # untouched
    assert admin.me(s6.access_token)["uid"]

    # What a partition does with the feed: revoke {seq, jtis} admin commands, idempotent.
    rl = RevocationList()
    assert rl.apply(seqs[2], [(r["jti"], r["exp"]) for r in feed[:3]])
    assert not rl.apply(seqs[1], [(r["jti"], r["exp"]) for r in feed[:2]])  # stale replay
    assert rl.apply(seqs[-1], [(r["jti"], r["exp"]) for r in feed[3:]])
    p = v.verify(s4.access_token)
    with pytest.raises(TokenError) as ei:
        check_command(p, time.time_ns(), "trade", p.account, rl)
    assert ei.value.reason == "revoked"
    assert all(rl.is_revoked(x) for x in (j["s1"], j["s5"])) and not rl.is_revoked(j["o1"])


def test_disable_user_revokes_sessions(admin):
    user, pw, _ = new_user(admin)
    s = admin.login(user, pw)
    out = admin.disable_user(user)
    assert out["disabled"] and out["revoked"] == 1
    assert reason(lambda: admin.me(s.access_token)) == "revoked"
    assert reason(lambda: admin.refresh(s.refresh_token)) == "refresh_revoked"
    assert reason(lambda: admin.login(user, pw)) == "account_disabled"


# ------------------------------------------------------------------------------ keys
def test_key_rotation(server):
    with AuthClient(server.url, admin_key=ADMIN_KEY) as admin:
        user, pw, _ = new_user(admin)
        old_kid = admin.keys()[0]["kid"]
        old = admin.login(user, pw)

        new_key = admin.rotate_key()
        assert new_key["status"] == "active" and new_key["kid"] != old_kid
        keys = admin.keys()
        assert [k["kid"] for k in keys] == [new_key["kid"], old_kid]  # old still published
        assert all(k["alg"] == "EdDSA" and k["crv"] == "Ed25519" for k in keys)
        live_keys = [k for k in admin.admin_keys() if k["status"] != "retired"]
        assert {k["kid"]: k["status"] for k in live_keys} == {
            new_key["kid"]: "active",
            old_kid: "published",
        }
        new = admin.login(user, pw)
        v = admin.verifier()
        assert v.verify(new.access_token).kid == new_key["kid"]
        assert v.verify(old.access_token).kid == old_kid  # still valid until removed
        assert admin.me(old.access_token)["kid"] == old_kid

        assert reason(lambda: admin.remove_key(new_key["kid"])) == "active_key"
        assert admin.remove_key(old_kid)["status"] == "retired"
        assert reason(lambda: admin.remove_key(old_kid)) == "unknown_kid"
        assert [k["kid"] for k in admin.keys()] == [new_key["kid"]]
        v2 = admin.verifier()
        with pytest.raises(TokenError) as ei:
            v2.verify(old.access_token)
        assert ei.value.reason == "unknown_kid"
        assert reason(lambda: admin.me(old.access_token)) == "unknown_kid"
        assert v2.verify(new.access_token)

        # A node applying add_key/remove_key commands without restart:
        node = TokenVerifier.from_jwks(keys)
        node.remove_key(old_kid)
        assert node.kids() == v2.kids()


# ------------------------------------------------------------------------------ restart
def test_restart_keeps_everything(server_factory, tmp_path):
    db = tmp_path / "restart.db"
    srv = server_factory(db=db)
    with AuthClient(srv.url, admin_key=ADMIN_KEY) as admin:
        user, pw, acct = new_user(admin)
        s1 = admin.login(user, pw)
        s2 = admin.refresh(s1.refresh_token)  # s1's refresh token is now used
        keep = admin.login(user, pw)
        admin.logout(refresh_token=keep.refresh_token)
        live = admin.login(user, pw)
        admin.rotate_key()
        keys_before = admin.keys()
        feed_before = admin.revocations()
    assert srv.stop() == 0, "SIGTERM must shut down cleanly"
    assert '"stopped"' in srv.stopped_output

    srv2 = server_factory(db=db)
    assert srv2.port is not None
    with AuthClient(srv2.url, admin_key=ADMIN_KEY) as admin:
        assert admin.keys() == keys_before
        assert admin.revocations() == feed_before
        v = admin.verifier()
        assert v.verify(s2.access_token).account == acct  # pre-restart token, old key
        assert admin.me(live.access_token)["account"] == acct
        assert admin.login(user, pw).access_token  # credentials survived
        assert admin.refresh(live.refresh_token).access_token  # unused refresh survives
        assert reason(lambda: admin.refresh(s1.refresh_token)) == "refresh_reused"  # still used
        assert reason(lambda: admin.refresh(keep.refresh_token)) == "refresh_revoked"
        assert reason(lambda: admin.create_account(acct)) == "account_exists"
    assert srv2.stop() == 0


def test_unreachable_server_gives_clear_error(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with AuthClient(f"http://127.0.0.1:{port}", timeout=2) as c:
        err = pytest.raises(AuthError, c.keys).value
    assert err.reason == "unavailable" and err.status is None


# ------------------------------------------------------------------------------ feed to partitions
def test_feed_produces_partition_commands(admin):
    from coordinator.auth.feed import AuthFeed, commands_for
    from pyengine.service.tokens import AuthState

    feed = AuthFeed(AuthClient(admin.base_url), batch=2)
    first = feed.poll()
    kinds = [c["type"] for c in first]
    assert kinds[0] == "add_key" and set(kinds) <= {"add_key", "revoke"}
    assert feed.poll() == []  # nothing new

    user, pw, acct = new_user(admin)
    sessions = [admin.login(user, pw) for _ in range(3)]
    for s in sessions:
        admin.logout(refresh_token=s.refresh_token)
    cmds = feed.poll()
    assert [c["type"] for c in cmds] == ["revoke", "revoke"]  # batch=2 -> 2 + 1
    assert [len(c["jtis"]) for c in cmds] == [2, 1] and cmds[0]["seq"] < cmds[1]["seq"]

    # A partition that replays every command from scratch ends in the same state.
    partition = AuthState()
    for c in first + cmds:
        partition.apply(c)
    assert partition.to_bytes() == feed.state.to_bytes()
    for s in sessions:
        with pytest.raises(TokenError) as ei:
            partition.verify(s.access_token)
        assert ei.value.reason == "revoked"

    # Stateless form: commands for a replica known only by (kids, last_seq).
    assert commands_for(admin, partition.verifier.kids(), partition.revocations.last_seq) == []
    stale = commands_for(admin, ["gone-kid"], 0)
    assert stale[-1] == {"type": "remove_key", "kid": "gone-kid"}


def test_require_token_dependency(admin, server):
    import warnings

    from fastapi import Depends, FastAPI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from coordinator.auth.deps import require_token
    from coordinator.auth.feed import AuthFeed

    feed = AuthFeed(AuthClient(server.url), min_interval_s=0)
    app = FastAPI()

    @app.get("/guarded")
    def guarded(p=Depends(require_token(feed, perm="admin"))):  # noqa: B008
        return {"uid": p.uid}

    boss, boss_pw, _ = new_user(admin, perms=["admin"])
    pleb, pleb_pw, _ = new_user(admin, perms=["read"])
    boss_tok = admin.login(boss, boss_pw)
    with TestClient(app) as http:
        assert http.get("/guarded").status_code == 401
        r = http.get("/guarded", headers={"Authorization": "Bearer " + admin.login(pleb, pleb_pw).access_token})
        assert r.status_code == 403 and r.json()["detail"].startswith("wrong_permission")
        r = http.get("/guarded", headers={"Authorization": "Bearer " + boss_tok.access_token})
        assert r.status_code == 200
        admin.logout(refresh_token=boss_tok.refresh_token)
        r = http.get("/guarded", headers={"Authorization": "Bearer " + boss_tok.access_token})
        assert r.status_code == 401 and r.json()["detail"].startswith("revoked")


def test_an_idle_keep_alive_connection_outlives_the_clients_pool(server):
    # uvicorn's default (5 s) equals httpx's pool expiry: a login in CI once went out on a
    # connection the service was closing at that moment ("Server disconnected ...")
    assert second_answer_after_idle(server.url, "/v1/keys") == 200
