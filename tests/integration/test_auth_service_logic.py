"""Auth service logic in-process with a controllable clock (real SQLite file in tmp_path).

Covers what is slow or awkward through a real server: expiry of access and refresh tokens,
pruning, configuration, HTTP details (headers, OpenAPI).
"""

from __future__ import annotations

import sqlite3
import warnings

import pytest

from coordinator.auth.config import AuthConfig
from coordinator.auth.service import AuthService, ServiceError, refresh_hash
from pyengine.service.tokens import TokenError

ADMIN_KEY = "k" * 24


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def config(tmp_path) -> AuthConfig:
    return AuthConfig(
        db_path=str(tmp_path / "var" / "auth.db"),
        admin_api_key=ADMIN_KEY,
        access_ttl_s=60,
        refresh_ttl_s=600,
        argon2_opslimit=1,
        argon2_memlimit=8192,
    )


@pytest.fixture()
def svc(config, clock):
    s = AuthService(config, clock=clock)
    try:
        yield s
    finally:
        s.close()


def user(svc: AuthService, name: str = "alice", perms=None) -> str:
    acct = svc.create_account()["account"]
    svc.create_user(name, "password123", acct, perms)
    return acct


def err(fn) -> str:
    with pytest.raises(ServiceError) as ei:
        fn()
    return ei.value.reason


def test_db_created_private_and_password_hashed(svc, config):
    user(svc)
    import os
    import stat

    assert stat.S_IMODE(os.stat(config.db_path).st_mode) == 0o600
    with sqlite3.connect(config.db_path) as c:
        (h,) = c.execute("SELECT password_hash FROM users").fetchone()
    assert h.startswith("$argon2id$") and "password123" not in h


def test_access_token_expiry_uses_clock(svc, clock):
    user(svc)
    pair = svc.login("alice", "password123")
    assert svc.authenticate(pair.access_token).uid
    clock.t += 59
    assert svc.authenticate(pair.access_token)
    clock.t += 1
    assert err(lambda: svc.authenticate(pair.access_token)) == "expired"
    # the node-side verifier does no time check unless asked to
    assert svc.verifier.verify(pair.access_token).jti == pair.jti
    with pytest.raises(TokenError):
        svc.verifier.verify(pair.access_token, now_s=int(clock.t))


def test_refresh_token_expiry(svc, clock):
    user(svc)
    pair = svc.login("alice", "password123")
    clock.t += 599
    pair2 = svc.refresh(pair.refresh_token)  # sliding: new one lives 600 s from now
    clock.t += 600
    assert err(lambda: svc.refresh(pair2.refresh_token)) == "refresh_expired"
    # replaying the used (and expired) first token still counts as reuse
    assert err(lambda: svc.refresh(pair.refresh_token)) == "refresh_reused"


def test_refresh_tokens_stored_hashed(svc, config):
    user(svc)
    pair = svc.login("alice", "password123")
    with sqlite3.connect(config.db_path) as c:
        rows = [r[0] for r in c.execute("SELECT token_hash FROM refresh_tokens")]
    assert rows == [refresh_hash(pair.refresh_token)]
    assert pair.refresh_token not in rows


def test_reuse_revokes_whole_family_only(svc, clock):
    user(svc)
    f = svc.login("alice", "password123")
    other = svc.login("alice", "password123")
    clock.t += 10
    g = svc.refresh(f.refresh_token)
    clock.t += 10
    h = svc.refresh(g.refresh_token)
    assert err(lambda: svc.refresh(g.refresh_token)) == "refresh_reused"
    assert err(lambda: svc.refresh(h.refresh_token)) == "refresh_revoked"
    feed = svc.revocations_since(0)
    assert [r["jti"] for r in feed] == [f.jti, g.jti, h.jti]  # issue order
    t0 = int(clock.t) - 20
    assert [r["exp"] for r in feed] == [t0 + 60, t0 + 70, t0 + 80]
    assert [r["seq"] for r in feed] == [1, 2, 3]
    assert svc.refresh(other.refresh_token).jti  # other login unaffected
    assert svc.revocations_since(3) == []


def test_family_revocation_skips_long_expired_access_tokens(svc, clock, config):
    user(svc)
    a = svc.login("alice", "password123")
    clock.t += 400  # a.access expired 340 s ago (> revoke_skew_s=300)
    b = svc.refresh(a.refresh_token)
    assert err(lambda: svc.refresh(a.refresh_token)) == "refresh_reused"
    assert [r["jti"] for r in svc.revocations_since(0)] == [b.jti]


def test_disable_user(svc):
    user(svc)
    s1 = svc.login("alice", "password123")
    s2 = svc.login("alice", "password123")
    assert svc.disable_user("alice")["revoked"] == 2
    assert err(lambda: svc.login("alice", "password123")) == "account_disabled"
    assert err(lambda: svc.refresh(s1.refresh_token)) == "refresh_revoked"
    assert err(lambda: svc.authenticate(s2.access_token)) == "revoked"
    assert err(lambda: svc.disable_user("nobody")) == "unknown_user"


def test_admin_revoke_unknown_jti_is_recorded(svc, clock):
    out = svc.revoke(jti="made-up", is_admin=True)
    assert out == {"revoked": 1}
    assert svc.revocations_since(0) == [{"seq": 1, "jti": "made-up", "exp": int(clock.t) + 60}]
    assert svc.revoke(jti="made-up", is_admin=True) == {"revoked": 0}
    assert err(lambda: svc.revoke(jti="x", refresh_token="y", is_admin=True)) == "bad_request"


def test_prune_keeps_what_matters(svc, clock, config):
    user(svc)
    a = svc.login("alice", "password123")
    svc.refresh(a.refresh_token)
    clock.t += 10 * 86400  # everything expired long ago
    svc.login("alice", "password123")  # triggers housekeeping
    with sqlite3.connect(config.db_path) as c:
        n_access = c.execute("SELECT COUNT(*) FROM access_tokens").fetchone()[0]
        n_refresh = c.execute("SELECT COUNT(*) FROM refresh_tokens").fetchone()[0]
    assert (n_access, n_refresh) == (1, 1)  # only the new session
    assert err(lambda: svc.refresh(a.refresh_token)) == "invalid_refresh_token"


def test_keys_survive_reopen(config, clock):
    s = AuthService(config, clock=clock)
    try:
        kid1 = s.active_kid
        kid2 = s.rotate_key()["kid"]
        jwks = s.published_jwks()
    finally:
        s.close()
    s = AuthService(config, clock=clock)
    try:
        assert s.active_kid == kid2
        assert s.published_jwks() == jwks and [k["kid"] for k in jwks] == [kid2, kid1]
        assert s.verifier.kids() == tuple(sorted([kid1, kid2]))
    finally:
        s.close()


def test_config_from_env(tmp_path):
    key_file = tmp_path / "admin.key"
    key_file.write_text("file-admin-key-0123456789\n")
    env = {
        "MATCHX_AUTH_DB_PATH": "/tmp/x.db",
        "MATCHX_AUTH_ACCESS_TTL_S": "30",
        "MATCHX_AUTH_ADMIN_KEY": "env-admin-key-0123456789",
        "MATCHX_AUTH_DEFAULT_PERMS": "read",
    }
    c = AuthConfig.from_env(env)
    assert (c.db_path, c.access_ttl_s, c.admin_api_key, c.default_perms) == (
        "/tmp/x.db",
        30,
        "env-admin-key-0123456789",
        ("read",),
    )
    assert "admin-key" not in repr(c)
    c = AuthConfig.from_env(env, admin_api_key_file=str(key_file), access_ttl_s=None)
    assert c.admin_api_key == "file-admin-key-0123456789" and c.access_ttl_s == 30
    assert AuthConfig.from_env({}).db_path == "./var/auth.db"
    assert AuthConfig.from_env({}).admin_api_key is None
    for bad in (
        {"admin_api_key": "short"},
        {"access_ttl_s": 0},
        {"argon2_opslimit": 0},
        {"argon2_memlimit": 1},
        {"default_perms": ("withdraw",)},
    ):
        with pytest.raises(ValueError):
            AuthConfig(**bad)


def test_http_layer_details(svc):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        from coordinator.auth.app import create_app

    user(svc, perms=["read"])
    with TestClient(create_app(service=svc)) as http:
        spec = http.get("/openapi.json").json()
        for path in ("/v1/login", "/v1/refresh", "/v1/logout", "/v1/revoke", "/v1/revocations",
                     "/v1/keys", "/v1/admin/users", "/v1/admin/keys/rotate"):  # fmt: skip
            assert path in spec["paths"]
        assert http.get("/.well-known/jwks.json").json() == {"keys": svc.published_jwks()}
        r = http.post("/v1/login", json={"username": "alice", "password": "password123"})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        body = r.json()
        assert set(body) == {
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in",
        }
        r = http.get("/v1/me", headers={"Authorization": "Bearer " + body["access_token"][:-3]})
        assert r.status_code == 401 and r.json()["error"]["code"] in ("bad_signature", "bad_base64")
        assert "Bearer" in r.headers["www-authenticate"]
        r = http.get("/v1/me", headers={"Authorization": "Basic abc"})
        assert r.json()["error"]["code"] == "malformed"
        r = http.get("/v1/revocations", params={"since": -1})
        assert r.status_code == 422
        r = http.post("/v1/admin/users", json={}, headers={"X-Admin-Key": ADMIN_KEY})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    # the app's lifespan closed the service's store
    with pytest.raises(sqlite3.ProgrammingError):
        svc.revocations_since(0)


def test_admin_disabled_without_key(tmp_path, clock):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

        from coordinator.auth.app import create_app

    cfg = AuthConfig(db_path=str(tmp_path / "a.db"), argon2_opslimit=1, argon2_memlimit=8192)
    with TestClient(create_app(cfg)) as http:
        r = http.post("/v1/admin/accounts", json={}, headers={"X-Admin-Key": "x" * 20})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"


def test_one_process_per_database(svc, config, clock):
    with pytest.raises(RuntimeError, match="in use"):
        AuthService(config, clock=clock)
    svc.close()
    AuthService(config, clock=clock).close()  # free again once closed
