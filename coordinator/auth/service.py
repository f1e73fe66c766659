"""Auth service logic, independent of HTTP: accounts, login, refresh rotation, revocation, keys.

All state is in SQLite (:class:`~coordinator.auth.store.Store`); the in-memory signer/verifier
are caches of the ``signing_keys`` table, reloaded after every key change.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import orjson

from pyengine.service.tokens import (
    PERMS,
    Principal,
    TokenError,
    TokenSigner,
    TokenVerifier,
    b64url_encode,
)

from .config import AuthConfig
from .store import Store

USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}\Z")
ACCOUNT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 1024
REFRESH_PREFIX = "mxr_"

# reason -> HTTP status. Token-verification reasons (pyengine.service.tokens.REASONS) map to 401.
STATUS: dict[str, int] = {
    "bad_request": 400,
    "invalid_username": 400,
    "invalid_account": 400,
    "weak_password": 400,
    "invalid_perms": 400,
    "invalid_credentials": 401,
    "invalid_refresh_token": 401,
    "refresh_expired": 401,
    "refresh_reused": 401,
    "refresh_revoked": 401,
    "admin_required": 401,
    "bad_admin_key": 403,
    "admin_disabled": 403,
    "account_disabled": 403,
    "unknown_account": 404,
    "unknown_user": 404,
    "unknown_jti": 404,
    "unknown_kid": 404,
    "account_exists": 409,
    "username_taken": 409,
    "active_key": 409,
}


class ServiceError(Exception):
    """A request was refused. ``reason`` is stable; ``status`` is the HTTP status to use."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status if status is not None else STATUS.get(reason, 401)
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    jti: str  # of the access token (not part of the HTTP response)

    def public(self) -> dict:
        return {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "refresh_expires_in": self.refresh_expires_in,
        }


def refresh_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_jti() -> str:
    return b64url_encode(secrets.token_bytes(16))


class AuthService:
    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.store = Store(config.db_path)
        self._keys_lock = threading.Lock()
        self._signer: TokenSigner
        self._verifier: TokenVerifier
        self._last_prune = 0
        self._hash_slots = threading.BoundedSemaphore(config.max_concurrent_hashes)
        try:
            # Login for an unknown user still pays one Argon2 verification (no user enumeration).
            self._dummy_hash = argon2id.str(
                secrets.token_bytes(16),
                opslimit=config.argon2_opslimit,
                memlimit=config.argon2_memlimit,
            )
            self._load_keys(create_if_missing=True)
        except BaseException:
            self.store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def now(self) -> int:
        return int(self._clock())

    # ------------------------------------------------------------------ keys
    def _load_keys(self, create_if_missing: bool = False) -> None:
        with self._keys_lock:
            with self.store.read() as conn:
                rows = conn.execute(
                    "SELECT kid, private_key, public_key, status FROM signing_keys "
                    "WHERE status IN ('active', 'published')"
                ).fetchall()
            active = [r for r in rows if r["status"] == "active"]
            if not active and create_if_missing:
                signer = TokenSigner.generate()
                with self.store.tx() as conn:
                    conn.execute(
                        "INSERT INTO signing_keys(kid, private_key, public_key, status, created_at)"
                        " VALUES (?, ?, ?, 'active', ?)",
                        (signer.kid, signer.private_key, signer.public_key, self.now()),
                    )
                rows = list(rows) + [{"kid": signer.kid, "public_key": signer.public_key, "status": "active"}]
            else:
                if not active:
                    raise RuntimeError("no active signing key")
                signer = TokenSigner(active[0]["private_key"], active[0]["kid"])
            verifier = TokenVerifier(
                {r["kid"]: bytes(r["public_key"]) for r in rows},
                max_token_bytes=self.config.max_token_bytes,
            )
            self._signer, self._verifier = signer, verifier

    @property
    def active_kid(self) -> str:
        return self._signer.kid

    @property
    def verifier(self) -> TokenVerifier:
        return self._verifier

    def published_jwks(self) -> list[dict]:
        """Public keys tokens may be signed with: the active one first, then older published."""
        with self.store.read() as conn:
            rows = conn.execute(
                "SELECT kid, public_key FROM signing_keys WHERE status IN ('active', 'published')"
                " ORDER BY status = 'active' DESC, created_at DESC, kid"
            ).fetchall()
        return [_jwk(r["kid"], bytes(r["public_key"])) for r in rows]

    def list_keys(self) -> list[dict]:
        with self.store.read() as conn:
            rows = conn.execute(
                "SELECT kid, public_key, status, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, kid"
            ).fetchall()
        return [
            {
                **_jwk(r["kid"], bytes(r["public_key"])),
                "status": r["status"],
                "created_at": r["created_at"],
                "retired_at": r["retired_at"],
            }
            for r in rows
        ]

    def rotate_key(self) -> dict:
        """New active key (new kid); the previous active key stays published."""
        signer = TokenSigner.generate()
        now = self.now()
        with self.store.tx() as conn:
            conn.execute("UPDATE signing_keys SET status='published' WHERE status='active'")
            conn.execute(
                "INSERT INTO signing_keys(kid, private_key, public_key, status, created_at)"
                " VALUES (?, ?, ?, 'active', ?)",
                (signer.kid, signer.private_key, signer.public_key, now),
            )
        self._load_keys()
        return {**signer.jwk(), "status": "active", "created_at": now, "retired_at": None}

    def remove_key(self, kid: str) -> dict:
        """Stop publishing a non-active key and wipe its private half."""
        now = self.now()
        with self.store.tx() as conn:
            row = conn.execute("SELECT status FROM signing_keys WHERE kid=?", (kid,)).fetchone()
            if row is None or row["status"] == "retired":
                raise ServiceError("unknown_kid", kid)
            if row["status"] == "active":
                raise ServiceError("active_key", "rotate before removing the active key")
            conn.execute(
                "UPDATE signing_keys SET status='retired', private_key=NULL, retired_at=? WHERE kid=?",
                (now, kid),
            )
        self._load_keys()
        return {"kid": kid, "status": "retired", "retired_at": now}

    # ------------------------------------------------------------------ admin: accounts/users
    def create_account(self, account: str | None = None) -> dict:
        if account is None:
            account = "acc-" + secrets.token_hex(6)
        if not ACCOUNT_RE.match(account):
            raise ServiceError("invalid_account", "1-64 chars of [A-Za-z0-9_.:-]")
        now = self.now()
        with self.store.tx() as conn:
            if conn.execute("SELECT 1 FROM accounts WHERE account=?", (account,)).fetchone():
                raise ServiceError("account_exists", account)
            conn.execute("INSERT INTO accounts(account, created_at) VALUES (?, ?)", (account, now))
        return {"account": account, "created_at": now}

    def create_user(
        self,
        username: str,
        password: str,
        account: str,
        perms: Iterable[str] | None = None,
    ) -> dict:
        if not USERNAME_RE.match(username):
            raise ServiceError("invalid_username", "1-64 chars of [A-Za-z0-9_.@+-]")
        if not MIN_PASSWORD_LEN <= len(password) <= MAX_PASSWORD_LEN:
            raise ServiceError("weak_password", f"{MIN_PASSWORD_LEN}..{MAX_PASSWORD_LEN} characters")
        perm_list = list(self.config.default_perms if perms is None else perms)
        if any(p not in PERMS for p in perm_list):
            raise ServiceError("invalid_perms", f"allowed: {', '.join(PERMS)}")
        perm_list = [p for p in PERMS if p in perm_list]
        pw_hash = self._hash_password(password)  # slow: outside the DB lock
        uid = "u-" + secrets.token_hex(8)
        now = self.now()
        with self.store.tx() as conn:
            if not conn.execute("SELECT 1 FROM accounts WHERE account=?", (account,)).fetchone():
                raise ServiceError("unknown_account", account)
            if conn.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone():
                raise ServiceError("username_taken", username)
            conn.execute(
                "INSERT INTO users(uid, username, password_hash, account, perms, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (uid, username, pw_hash, account, orjson.dumps(perm_list).decode(), now),
            )
        return {
            "uid": uid,
            "username": username,
            "account": account,
            "perms": perm_list,
            "disabled": False,
        }

    def disable_user(self, username: str) -> dict:
        """Disable a user and revoke all its sessions (refresh families + live access tokens)."""
        now = self.now()
        with self.store.tx() as conn:
            row = conn.execute("SELECT uid FROM users WHERE username=?", (username,)).fetchone()
            if row is None:
                raise ServiceError("unknown_user", username)
            conn.execute("UPDATE users SET disabled=1 WHERE uid=?", (row["uid"],))
            fams = conn.execute(
                "SELECT family_id FROM families WHERE uid=? AND revoked_at IS NULL",
                (row["uid"],),
            ).fetchall()
            n = sum(self._revoke_family(conn, f["family_id"], now, "user_disabled") for f in fams)
        return {"uid": row["uid"], "disabled": True, "revoked": n}

    def _hash_password(self, password: str) -> str:
        with self._hash_slots:
            return argon2id.str(
                password.encode("utf-8"),
                opslimit=self.config.argon2_opslimit,
                memlimit=self.config.argon2_memlimit,
            ).decode("ascii")

    # ------------------------------------------------------------------ login / refresh
    def login(self, username: str, password: str) -> TokenPair:
        with self.store.read() as conn:
            user = conn.execute("SELECT * FROM users WHERE username=?", (username,)).fetchone()
        stored = user["password_hash"].encode("ascii") if user is not None else self._dummy_hash
        try:
            with self._hash_slots:
                ok = argon2id.verify(stored, password.encode("utf-8"))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
            ok = False
        if not ok or user is None:
            raise ServiceError("invalid_credentials")
        if user["disabled"]:
            raise ServiceError("account_disabled")
        now = self.now()
        self._maybe_prune(now)
        family_id = secrets.token_hex(16)
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO families(family_id, uid, created_at) VALUES (?, ?, ?)",
                (family_id, user["uid"], now),
            )
            return self._issue_pair(conn, user, family_id, now)

    def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token dies and a new pair is returned.

        Presenting an already-used token revokes its whole family (all refresh tokens of that
        login, and the family's access-token jtis go to the revocation list).
        """
        now = self.now()
        h = refresh_hash(refresh_token)
        failure: str | None = None
        pair: TokenPair | None = None
        with self.store.tx() as conn:
            row = conn.execute(
                "SELECT r.family_id, r.expires_at, r.used_at, f.revoked_at, f.uid"
                " FROM refresh_tokens r JOIN families f ON f.family_id = r.family_id"
                " WHERE r.token_hash=?",
                (h,),
            ).fetchone()
            if row is None:
                failure = "invalid_refresh_token"
            elif row["revoked_at"] is not None:
                failure = "refresh_revoked"
            elif row["used_at"] is not None:
                self._revoke_family(conn, row["family_id"], now, "refresh_reuse")
                failure = "refresh_reused"  # committed below, then reported
            elif row["expires_at"] <= now:
                failure = "refresh_expired"
            else:
                user = conn.execute("SELECT * FROM users WHERE uid=?", (row["uid"],)).fetchone()
                if user is None or user["disabled"]:
                    failure = "account_disabled"
                else:
                    conn.execute("UPDATE refresh_tokens SET used_at=? WHERE token_hash=?", (now, h))
                    pair = self._issue_pair(conn, user, row["family_id"], now)
        if failure is not None:
            raise ServiceError(failure)
        assert pair is not None
        return pair

    def _issue_pair(self, conn, user, family_id: str, now: int) -> TokenPair:
        signer = self._signer
        ttl = self.config.access_ttl_s
        jti = _new_jti()
        perms = orjson.loads(user["perms"])
        access = signer.mint(user["uid"], user["account"], perms, ttl_s=ttl, now_s=now, jti=jti)
        conn.execute(
            "INSERT INTO access_tokens(jti, family_id, uid, kid, issued_at, exp) VALUES (?, ?, ?, ?, ?, ?)",
            (jti, family_id, user["uid"], signer.kid, now, now + ttl),
        )
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO refresh_tokens(token_hash, family_id, issued_at, expires_at) VALUES (?, ?, ?, ?)",
            (refresh_hash(refresh), family_id, now, now + self.config.refresh_ttl_s),
        )
        return TokenPair(access, "Bearer", ttl, refresh, self.config.refresh_ttl_s, jti)

    # ------------------------------------------------------------------ revocation
    def _revoke_family(self, conn, family_id: str, now: int, reason: str) -> int:
        conn.execute(
            "UPDATE families SET revoked_at=?, revoke_reason=? WHERE family_id=? AND revoked_at IS NULL",
            (now, reason, family_id),
        )
        cur = conn.execute(
            "INSERT OR IGNORE INTO revocations(jti, exp, revoked_at, reason)"
            " SELECT jti, exp, ?, ? FROM access_tokens WHERE family_id=? AND exp > ?"
            " ORDER BY issued_at, jti",
            (now, reason, family_id, now - self.config.revoke_skew_s),
        )
        return max(cur.rowcount, 0)

    def _revoke_jti(self, conn, jti: str, exp: int, now: int, reason: str) -> int:
        cur = conn.execute(
            "INSERT OR IGNORE INTO revocations(jti, exp, revoked_at, reason) VALUES (?, ?, ?, ?)",
            (jti, exp, now, reason),
        )
        return max(cur.rowcount, 0)

    def logout(self, refresh_token: str | None = None, access_token: str | None = None) -> dict:
        """End a session (its refresh family). Unknown refresh tokens are not an error
        (RFC 7009 style); an access token must be valid."""
        now = self.now()
        if refresh_token:
            with self.store.tx() as conn:
                row = conn.execute(
                    "SELECT family_id FROM refresh_tokens WHERE token_hash=?",
                    (refresh_hash(refresh_token),),
                ).fetchone()
                n = self._revoke_family(conn, row["family_id"], now, "logout") if row else 0
            return {"revoked": n}
        if access_token:
            principal = self.authenticate(access_token)
            with self.store.tx() as conn:
                row = conn.execute("SELECT family_id, exp FROM access_tokens WHERE jti=?", (principal.jti,)).fetchone()
                if row is not None and row["family_id"] is not None:
                    n = self._revoke_family(conn, row["family_id"], now, "logout")
                else:
                    n = self._revoke_jti(conn, principal.jti, principal.exp, now, "logout")
            return {"revoked": n}
        raise ServiceError("missing_token", "refresh_token or Authorization bearer required")

    def revoke(
        self,
        *,
        jti: str | None = None,
        refresh_token: str | None = None,
        is_admin: bool = False,
        access_token: str | None = None,
    ) -> dict:
        """Revoke one access token by ``jti`` (admin, or the token owner via ``access_token``),
        or a refresh token's whole family (possession of the refresh token is enough)."""
        if (jti is None) == (refresh_token is None):
            raise ServiceError("bad_request", "give exactly one of jti, refresh_token")
        if refresh_token is not None:
            return self.logout(refresh_token=refresh_token)
        assert jti is not None
        owner_uid = None
        if not is_admin:
            if not access_token:
                raise ServiceError("missing_token", "admin key or owner's bearer token required")
            owner_uid = self.authenticate(access_token).uid
        now = self.now()
        with self.store.tx() as conn:
            row = conn.execute("SELECT uid, exp FROM access_tokens WHERE jti=?", (jti,)).fetchone()
            if row is None and not is_admin:
                raise ServiceError("unknown_jti", jti)
            if row is not None and owner_uid is not None and row["uid"] != owner_uid:
                raise ServiceError("unknown_jti", jti)  # do not reveal other users' jtis
            exp = row["exp"] if row is not None else now + self.config.access_ttl_s
            n = self._revoke_jti(conn, jti, exp, now, "admin" if is_admin else "owner")
        return {"revoked": n}

    def revocations_since(self, since: int = 0, limit: int = 1000) -> list[dict]:
        """Revocations with ``seq > since`` in seq order (what partitions get as admin cmds)."""
        with self.store.read() as conn:
            rows = conn.execute(
                "SELECT seq, jti, exp FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?",
                (since, limit),
            ).fetchall()
        return [{"seq": r["seq"], "jti": r["jti"], "exp": r["exp"]} for r in rows]

    def is_revoked(self, jti: str) -> bool:
        with self.store.read() as conn:
            return conn.execute("SELECT 1 FROM revocations WHERE jti=?", (jti,)).fetchone() is not None

    def authenticate(self, access_token: str | None) -> Principal:
        """Full check of a bearer access token as this service sees it (wall clock)."""
        try:
            principal = self._verifier.verify(access_token, now_s=self.now())
        except TokenError as exc:
            raise ServiceError(exc.reason, exc.detail, status=401) from None
        if self.is_revoked(principal.jti):
            raise ServiceError("revoked", status=401)
        return principal

    # ------------------------------------------------------------------ housekeeping
    def _maybe_prune(self, now: int) -> None:
        if now - self._last_prune < self.config.prune_interval_s:
            return
        self._last_prune = now
        with self.store.tx() as conn:
            conn.execute("DELETE FROM access_tokens WHERE exp < ?", (now - self.config.revoke_skew_s - 60,))
            # Used tokens are kept until they expire (+1 day) so that reuse is still detected.
            conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now - 86400,))


def _jwk(kid: str, public_key: bytes) -> dict:
    return {
        "kid": kid,
        "kty": "OKP",
        "alg": "EdDSA",
        "crv": "Ed25519",
        "use": "sig",
        "x": b64url_encode(public_key),
    }
