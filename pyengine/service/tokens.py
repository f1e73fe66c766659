"""Access tokens for matchx: Ed25519-signed JWTs (RFC 7519 / RFC 8037), verified in-process.

This module runs inside the matching nodes, so it must stay deterministic and self-contained:
it imports only the standard library, PyNaCl and orjson, does no I/O, and never reads the wall
clock on the verification path unless the caller asks for it (``verify(token, now_s=...)``).

Token format (compact JWS, three base64url segments without padding)::

    header  = {"alg": "EdDSA", "typ": "JWT", "kid": "<key id>"}
    payload = {"sub": uid, "acct": account, "perms": ["trade", "read"],
               "iat": int, "nbf": int (optional), "exp": int, "jti": str}
    token   = b64u(header) "." b64u(payload) "." b64u(ed25519_sign(b64u(header) "." b64u(payload)))

Only ``alg == "EdDSA"`` (Ed25519) is accepted: the algorithm is pinned by the verifier, never
chosen by the token. Every rejection raises :class:`TokenError` with a stable ``reason`` code
(see :data:`REASONS`).

Node-side split of responsibilities:

* gateway / session layer: ``TokenVerifier.verify(token)`` once per session -> :class:`Principal`
  (signature, structure, key id). ``Principal.to_bytes()`` is what travels as Aeron's
  ``encodedPrincipal``.
* clustered service, per command: :func:`check_command` with *cluster time* (nanoseconds) -- exp,
  nbf, permission, account and, optionally, the replicated :class:`RevocationList`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import struct
import time
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing
import orjson

__all__ = [
    "ALG",
    "AuthState",
    "CRV",
    "DEFAULT_MAX_TOKEN_BYTES",
    "PERMS",
    "REASONS",
    "Principal",
    "RevocationList",
    "TokenError",
    "TokenSigner",
    "TokenVerifier",
    "b64url_decode",
    "b64url_encode",
    "bearer_token",
    "check_command",
    "jwk_thumbprint",
]

ALG = "EdDSA"
CRV = "Ed25519"
KTY = "OKP"
TYP = "JWT"
# read_any: the operator role -- reads every account's balances and orders (and the book),
# and nothing more: no trading, no admin. "admin" implies nothing else either.
PERMS: tuple[str, ...] = ("trade", "read", "admin", "read_any")
DEFAULT_MAX_TOKEN_BYTES = 4096
MAX_CLAIM_STR_BYTES = 1024
MAX_KID_BYTES = 128

_NS_PER_S = 1_000_000_000
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_PERM_BIT = {p: 1 << i for i, p in enumerate(PERMS)}
_ALL_PERM_BITS = (1 << len(PERMS)) - 1

REASONS: frozenset[str] = frozenset(
    {
        "missing_token",  # None / empty / no bearer credential
        "malformed",  # not three segments, non-ASCII, bad claims (types, unknown perms)
        "bad_base64",  # a segment is not canonical unpadded base64url
        "oversized",  # longer than the verifier's max_token_bytes
        "bad_header",  # header not a JSON object, missing/invalid kid, typ, crit, dup keys
        "alg_not_allowed",  # anything but alg == "EdDSA" (none, HS256, RS256, ES256, ...)
        "unknown_kid",  # kid not in the verifier's key set (never added, or removed)
        "bad_signature",  # signature not 64 bytes (truncated) or does not verify
        "expired",  # now >= exp
        "not_yet_valid",  # now < nbf
        "revoked",  # jti in the revocation list
        "wrong_permission",  # command needs a permission the token does not carry
        "wrong_account",  # command is for another account than the token's acct
    }
)


class TokenError(Exception):
    """A token was rejected. ``reason`` is one of :data:`REASONS` and is stable (API contract)."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:  # programming error, not a token problem
            raise ValueError(f"unknown TokenError reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):  # keep picklable across process boundaries
        return (TokenError, (self.reason, self.detail))


# --------------------------------------------------------------------------------------------
# base64url helpers (strict: RFC 7515 section 2, no padding, canonical trailing bits)
# --------------------------------------------------------------------------------------------

_B64URL_RE = re.compile(rb"[A-Za-z0-9_-]*\Z")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(seg: str | bytes) -> bytes:
    """Strict unpadded base64url decode. Raises ``TokenError("bad_base64")``."""
    if isinstance(seg, str):
        if not seg.isascii():
            raise TokenError("bad_base64", "non-ASCII character")
        seg = seg.encode("ascii")
    if not _B64URL_RE.match(seg) or len(seg) % 4 == 1:
        raise TokenError("bad_base64", "not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(seg + b"=" * (-len(seg) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("bad_base64", str(exc)) from None
    # Reject non-canonical encodings (non-zero unused trailing bits): one token, one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != seg:
        raise TokenError("bad_base64", "non-canonical base64url")
    return raw


def _strict_json_object(raw: bytes, reason: str) -> dict:
    """Parse a JSON object; reject duplicate keys, NaN/Infinity, non-objects."""

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def bad_constant(name):
        raise ValueError(f"constant {name} not allowed")

    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, object_pairs_hook=pairs, parse_constant=bad_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenError(reason, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TokenError(reason, "not a JSON object")
    return obj


def jwk_thumbprint(public_key: bytes) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key as an OKP JWK."""
    canon = b'{"crv":"Ed25519","kty":"OKP","x":"' + b64url_encode(public_key).encode() + b'"}'
    return b64url_encode(hashlib.sha256(canon).digest())


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer <token>`` header value."""
    if authorization is None or not authorization.strip():
        raise TokenError("missing_token", "no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenError("malformed", "Authorization scheme is not Bearer")
    token = token.strip()
    if not token:
        raise TokenError("missing_token", "empty bearer token")
    return token


# --------------------------------------------------------------------------------------------
# Principal
# --------------------------------------------------------------------------------------------

# version, flags (bit0: has nbf), perm bitmask (bit i = PERMS[i]), exp, nbf -- then 4 x (u16 len + utf-8)
_PRINCIPAL_HEAD = struct.Struct(">BBBqq")
_PRINCIPAL_VERSION = 1
_U16 = struct.Struct(">H")


def _canonical_perms(perms: Iterable[str]) -> tuple[str, ...]:
    have = set(perms)
    return tuple(p for p in PERMS if p in have)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: the verified content of an access token.

    ``perms`` is a tuple in canonical order (``PERMS`` order, no duplicates); ``exp``/``nbf`` are
    seconds since the epoch (``nbf`` is ``None`` when the token has none).
    """

    uid: str
    account: str
    perms: tuple[str, ...]
    jti: str
    exp: int
    nbf: int | None
    kid: str

    def has_perm(self, perm: str) -> bool:
        return perm in self.perms

    def to_bytes(self) -> bytes:
        """Compact deterministic binary form (for Aeron ``encodedPrincipal``)."""
        mask = 0
        for p in self.perms:
            bit = _PERM_BIT.get(p)
            if bit is None:
                raise ValueError(f"unknown permission {p!r}")
            mask |= bit
        flags = 0 if self.nbf is None else 1
        parts = [_PRINCIPAL_HEAD.pack(_PRINCIPAL_VERSION, flags, mask, self.exp, 0 if self.nbf is None else self.nbf)]
        for s in (self.uid, self.account, self.jti, self.kid):
            b = s.encode("utf-8")
            if len(b) > 0xFFFF:
                raise ValueError("principal field too long")
            parts.append(_U16.pack(len(b)))
            parts.append(b)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Principal:
        """Inverse of :meth:`to_bytes`. Raises ``TokenError("malformed")`` on any corruption."""
        data = bytes(data)
        try:
            version, flags, mask, exp, nbf = _PRINCIPAL_HEAD.unpack_from(data, 0)
            if version != _PRINCIPAL_VERSION:
                raise ValueError(f"unsupported principal version {version}")
            if flags & ~1 or mask & ~_ALL_PERM_BITS:
                raise ValueError("unknown flag or permission bits")
            if not flags & 1 and nbf != 0:
                raise ValueError("nbf set without flag")
            off = _PRINCIPAL_HEAD.size
            fields = []
            for _ in range(4):
                (n,) = _U16.unpack_from(data, off)
                off += 2
                if off + n > len(data):
                    raise ValueError("truncated")
                fields.append(data[off : off + n].decode("utf-8"))
                off += n
            if off != len(data):
                raise ValueError("trailing bytes")
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise TokenError("malformed", f"bad principal encoding: {exc}") from None
        perms = tuple(p for p in PERMS if mask & _PERM_BIT[p])
        uid, account, jti, kid = fields
        return cls(uid, account, perms, jti, exp, nbf if flags & 1 else None, kid)


# --------------------------------------------------------------------------------------------
# Per-command authorisation (deterministic: cluster time only)
# --------------------------------------------------------------------------------------------


def check_command(
    principal: Principal,
    now_ns: int,
    perm: str | None,
    account: str | None,
    revocations: RevocationList | None = None,
    kids: Container[str] | None = None,
) -> None:
    """Authorise one command against cluster time ``now_ns`` (nanoseconds since the epoch).

    Checks, in this order: revoked (only if ``revocations`` is given), unknown_kid (only if
    ``kids`` is given -- e.g. the node's :class:`TokenVerifier`, so that ``remove_key`` also
    cuts off open sessions), expired (``now >= exp``), not_yet_valid (``now < nbf``),
    wrong_account (``account`` is not None and differs from the token's), wrong_permission
    (``perm`` is not None and not carried by the token). ``admin`` does not imply the other
    permissions and does not bypass the account check.
    Pure function of its arguments: safe to run in a replicated state machine.
    """
    if revocations is not None and principal.jti in revocations:
        raise TokenError("revoked", principal.jti)
    if kids is not None and principal.kid not in kids:
        raise TokenError("unknown_kid", principal.kid)
    if now_ns >= principal.exp * _NS_PER_S:
        raise TokenError("expired")
    if principal.nbf is not None and now_ns < principal.nbf * _NS_PER_S:
        raise TokenError("not_yet_valid")
    if account is not None and account != principal.account:
        raise TokenError("wrong_account")
    if perm is not None and perm not in principal.perms:
        raise TokenError("wrong_permission", perm)


# --------------------------------------------------------------------------------------------
# Verifier
# --------------------------------------------------------------------------------------------


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not kid or len(kid.encode("utf-8")) > MAX_KID_BYTES:
        raise ValueError("kid must be a non-empty string of at most 128 bytes")
    return kid


def _public_key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        try:
            key = b64url_decode(key)
        except TokenError as exc:
            raise ValueError(f"public key is not base64url: {exc.detail}") from None
    key = bytes(key)
    if len(key) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return key


_KEYS_VERSION = 1


class TokenVerifier:
    """Verifies access tokens against a set of Ed25519 public keys indexed by ``kid``.

    Keys can be added and removed at any time (rotation without restart). Not thread-safe for
    concurrent mutation; verification itself does not mutate state.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes | str] | None = None,
        *,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        leeway_s: int = 0,
    ) -> None:
        if max_token_bytes <= 0:
            raise ValueError("max_token_bytes must be positive")
        if leeway_s < 0:
            raise ValueError("leeway_s must be >= 0")
        self.max_token_bytes = int(max_token_bytes)
        self.leeway_s = int(leeway_s)
        self._keys: dict[str, nacl.signing.VerifyKey] = {}
        for kid, key in (keys or {}).items():
            self.add_key(kid, key)

    # -- key management -------------------------------------------------------------------
    def add_key(self, kid: str, public_key: bytes | str) -> None:
        """Add (or replace) a public key. ``public_key``: 32 raw bytes or base64url (JWK x)."""
        self._keys[_check_kid(kid)] = nacl.signing.VerifyKey(_public_key_bytes(public_key))

    def remove_key(self, kid: str) -> bool:
        """Remove a key; tokens signed with it then fail with ``unknown_kid``."""
        return self._keys.pop(kid, None) is not None

    def kids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def public_key(self, kid: str) -> bytes:
        return bytes(self._keys[kid])

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_jwks(cls, jwks: Iterable[Mapping] | Mapping, **kwargs) -> TokenVerifier:
        """Build from ``GET /v1/keys`` output (a list of JWKs, or ``{"keys": [...]}``)."""
        if isinstance(jwks, Mapping):
            jwks = jwks["keys"]
        v = cls(**kwargs)
        for jwk in jwks:
            if jwk.get("kty", KTY) != KTY or jwk.get("crv") != CRV or jwk.get("alg", ALG) != ALG:
                continue
            v.add_key(jwk["kid"], jwk["x"])
        return v

    def keys_to_bytes(self) -> bytes:
        """Deterministic snapshot of the key set (sorted by kid)."""
        parts = [struct.pack(">BI", _KEYS_VERSION, len(self._keys))]
        for kid in sorted(self._keys):
            b = kid.encode("utf-8")
            parts += [_U16.pack(len(b)), b, bytes(self._keys[kid])]
        return b"".join(parts)

    def load_keys_bytes(self, data: bytes) -> None:
        """Replace the key set with a snapshot made by :meth:`keys_to_bytes`."""
        data = bytes(data)
        try:
            version, n = struct.unpack_from(">BI", data, 0)
            if version != _KEYS_VERSION:
                raise ValueError(f"unsupported key snapshot version {version}")
            off = 5
            keys: dict[str, nacl.signing.VerifyKey] = {}
            for _ in range(n):
                (ln,) = _U16.unpack_from(data, off)
                off += 2
                kid = data[off : off + ln].decode("utf-8")
                off += ln
                pk = data[off : off + 32]
                off += 32
                if len(pk) != 32:
                    raise ValueError("truncated")
                keys[_check_kid(kid)] = nacl.signing.VerifyKey(pk)
            if off != len(data):
                raise ValueError("trailing bytes")
        except (struct.error, UnicodeDecodeError) as exc:
            raise ValueError(f"bad key snapshot: {exc}") from None
        self._keys = keys

    # -- verification -----------------------------------------------------------------------
    def verify(self, token: str | bytes | None, now_s: int | None = None) -> Principal:
        """Verify signature and structure; return the :class:`Principal`.

        Expiry (``exp``/``nbf``, with ``leeway_s``) is checked only when ``now_s`` is given.
        Raises :class:`TokenError` on any problem.
        """
        if token is None:
            raise TokenError("missing_token")
        if isinstance(token, (bytes, bytearray, memoryview)):
            if len(token) > self.max_token_bytes:
                raise TokenError("oversized", f"{len(token)} > {self.max_token_bytes} bytes")
            try:
                token = bytes(token).decode("ascii")
            except UnicodeDecodeError:
                raise TokenError("malformed", "non-ASCII token") from None
        elif not isinstance(token, str):
            raise TokenError("malformed", f"token must be str or bytes, not {type(token).__name__}")
        # len(str) <= len(utf-8 bytes); checked before any other work on the input.
        if len(token) > self.max_token_bytes:
            raise TokenError("oversized", f"{len(token)} > {self.max_token_bytes} bytes")
        if not token or token.isspace():
            raise TokenError("missing_token")
        if not token.isascii():
            raise TokenError("malformed", "non-ASCII token")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed", f"expected 3 segments, got {len(parts)}")
        h_seg, p_seg, s_seg = parts
        if not h_seg or not p_seg:
            raise TokenError("malformed", "empty header or payload segment")

        header_raw = b64url_decode(h_seg)
        payload_raw = b64url_decode(p_seg)
        sig = b64url_decode(s_seg)

        header = _strict_json_object(header_raw, "bad_header")
        alg = header.get("alg")
        if alg is None:
            raise TokenError("bad_header", "no alg")
        if alg != ALG:  # exact, case-sensitive: pins EdDSA, rejects none/HS256/...
            raise TokenError("alg_not_allowed", repr(alg)[:40])
        if "typ" in header and header["typ"] != TYP:
            raise TokenError("bad_header", "typ is not JWT")
        if "crit" in header:
            raise TokenError("bad_header", "crit extensions not supported")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("bad_header", "missing or invalid kid")
        vk = self._keys.get(kid)
        if vk is None:
            raise TokenError("unknown_kid", kid[:64])

        if len(sig) != 64:
            raise TokenError("bad_signature", f"signature is {len(sig)} bytes, expected 64")
        try:
            vk.verify((h_seg + "." + p_seg).encode("ascii"), sig)
        except nacl.exceptions.BadSignatureError:
            raise TokenError("bad_signature") from None

        claims = _strict_json_object(payload_raw, "malformed")
        principal = _principal_from_claims(claims, kid)
        if now_s is not None:
            if now_s >= principal.exp + self.leeway_s:
                raise TokenError("expired")
            if principal.nbf is not None and now_s < principal.nbf - self.leeway_s:
                raise TokenError("not_yet_valid")
        return principal

    check_command = staticmethod(check_command)


def _int_claim(claims: dict, name: str, required: bool = True) -> int | None:
    v = claims.get(name)
    if v is None:
        if required:
            raise TokenError("malformed", f"missing {name}")
        return None
    if type(v) is not int or not (_INT64_MIN <= v <= _INT64_MAX):  # bool is not accepted
        raise TokenError("malformed", f"{name} must be an integer")
    return v


def _str_claim(claims: dict, name: str) -> str:
    v = claims.get(name)
    if not isinstance(v, str) or not v:
        raise TokenError("malformed", f"missing or invalid {name}")
    if len(v.encode("utf-8")) > MAX_CLAIM_STR_BYTES:
        raise TokenError("malformed", f"{name} too long")
    return v


def _principal_from_claims(claims: dict, kid: str) -> Principal:
    uid = _str_claim(claims, "sub")
    account = _str_claim(claims, "acct")
    jti = _str_claim(claims, "jti")
    exp = _int_claim(claims, "exp")
    _int_claim(claims, "iat")
    nbf = _int_claim(claims, "nbf", required=False)
    perms = claims.get("perms")
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise TokenError("malformed", "perms must be a list of strings")
    unknown = [p for p in perms if p not in _PERM_BIT]
    if unknown:
        raise TokenError("malformed", f"unknown permission {unknown[0]!r}"[:80])
    return Principal(uid, account, _canonical_perms(perms), jti, exp, nbf, kid)


# --------------------------------------------------------------------------------------------
# Signer (auth service side)
# --------------------------------------------------------------------------------------------


class TokenSigner:
    """Mints access tokens with an Ed25519 private key (32-byte seed) under a ``kid``."""

    def __init__(self, private_key: bytes, kid: str | None = None) -> None:
        private_key = bytes(private_key)
        if len(private_key) != 32:
            raise ValueError("Ed25519 private key (seed) must be 32 bytes")
        self._sk = nacl.signing.SigningKey(private_key)
        self.public_key: bytes = bytes(self._sk.verify_key)
        self.kid: str = _check_kid(kid) if kid is not None else jwk_thumbprint(self.public_key)[:16]
        self._header_seg = b64url_encode(orjson.dumps({"alg": ALG, "typ": TYP, "kid": self.kid}))

    @classmethod
    def generate(cls, kid: str | None = None) -> TokenSigner:
        """New random key. Default kid: first 16 chars of the RFC 7638 thumbprint."""
        return cls(secrets.token_bytes(32), kid)

    @property
    def private_key(self) -> bytes:
        return bytes(self._sk)

    def jwk(self) -> dict:
        """Public JWK (RFC 8037 OKP)."""
        return {
            "kid": self.kid,
            "kty": KTY,
            "alg": ALG,
            "crv": CRV,
            "use": "sig",
            "x": b64url_encode(self.public_key),
        }

    def verifier(self, **kwargs) -> TokenVerifier:
        return TokenVerifier({self.kid: self.public_key}, **kwargs)

    def sign_claims(self, claims: Mapping) -> str:
        """Sign arbitrary claims as-is (no validation). Low level; prefer :meth:`mint`."""
        p_seg = b64url_encode(orjson.dumps(dict(claims)))
        signing_input = self._header_seg + "." + p_seg
        sig = self._sk.sign(signing_input.encode("ascii")).signature
        return signing_input + "." + b64url_encode(sig)

    def mint(
        self,
        uid: str,
        account: str,
        perms: Iterable[str],
        *,
        ttl_s: int,
        now_s: int | None = None,
        jti: str | None = None,
        nbf: int | None = None,
    ) -> str:
        """Mint an access token valid for ``ttl_s`` seconds from ``now_s`` (default: wall clock)."""
        perms = list(perms)
        for p in perms:
            if p not in _PERM_BIT:
                raise ValueError(f"unknown permission {p!r}")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        iat = int(time.time()) if now_s is None else int(now_s)
        claims: dict = {
            "sub": uid,
            "acct": account,
            "perms": list(_canonical_perms(perms)),
            "iat": iat,
        }
        if nbf is not None:
            claims["nbf"] = int(nbf)
        claims["exp"] = iat + int(ttl_s)
        claims["jti"] = jti if jti is not None else b64url_encode(secrets.token_bytes(16))
        return self.sign_claims(claims)


# --------------------------------------------------------------------------------------------
# Revocation list (replicated node state)
# --------------------------------------------------------------------------------------------

_REVOKE_HEAD = struct.Struct(">BqI")
_REVOKE_VERSION = 1
_I64 = struct.Struct(">q")


class RevocationList:
    """Revoked access-token ids, fed by ``revoke {seq, jtis}`` admin commands in the log.

    * :meth:`apply` is idempotent by sequence number: a command whose ``seq`` is not greater
      than :attr:`last_seq` is ignored (duplicates / replays after failover are harmless).
    * each jti may carry its token ``exp`` (seconds); :meth:`prune` drops entries that can no
      longer matter (token expired in cluster time). ``exp=None`` entries are never pruned.
    * :meth:`to_bytes` is deterministic (sorted by jti) so replicas produce identical snapshots.
    """

    __slots__ = ("_jtis", "_last_seq")

    def __init__(self) -> None:
        self._jtis: dict[str, int | None] = {}
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def apply(self, seq: int, jtis: Iterable[str | tuple[str, int | None]]) -> bool:
        """Apply one revoke command. Items are ``jti`` or ``(jti, exp_s)`` (also lists).

        Returns False (and changes nothing) if ``seq <= last_seq``.
        """
        if type(seq) is not int or seq <= 0:
            raise ValueError("seq must be a positive integer")
        if seq <= self._last_seq:
            return False
        entries: list[tuple[str, int | None]] = []
        for item in jtis:
            if isinstance(item, str):
                jti, exp = item, None
            else:
                jti, exp = item
                if exp is not None and type(exp) is not int:
                    raise ValueError("exp must be an int or None")
            if not isinstance(jti, str) or not jti:
                raise ValueError("jti must be a non-empty string")
            entries.append((jti, exp))
        for jti, exp in entries:  # validate everything before mutating
            old = self._jtis.get(jti, 0)
            if jti not in self._jtis:
                self._jtis[jti] = exp
            elif old is not None and (exp is None or exp > old):
                self._jtis[jti] = exp  # keep the entry alive as long as the longest claim
        self._last_seq = seq
        return True

    def is_revoked(self, jti: str) -> bool:
        return jti in self._jtis

    __contains__ = is_revoked

    def __len__(self) -> int:
        return len(self._jtis)

    def prune(self, now_ns: int) -> int:
        """Drop entries whose token has expired at cluster time ``now_ns``. Returns count."""
        dead = [j for j, e in self._jtis.items() if e is not None and now_ns >= e * _NS_PER_S]
        for j in dead:
            del self._jtis[j]
        return len(dead)

    def to_bytes(self) -> bytes:
        parts = [_REVOKE_HEAD.pack(_REVOKE_VERSION, self._last_seq, len(self._jtis))]
        for jti in sorted(self._jtis):
            b = jti.encode("utf-8")
            exp = self._jtis[jti]
            parts += [_U16.pack(len(b)), b, b"\x01" if exp is not None else b"\x00"]
            parts.append(_I64.pack(exp if exp is not None else 0))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> RevocationList:
        data = bytes(data)
        rl = cls()
        try:
            version, last_seq, n = _REVOKE_HEAD.unpack_from(data, 0)
            if version != _REVOKE_VERSION or last_seq < 0:
                raise ValueError("bad header")
            off = _REVOKE_HEAD.size
            for _ in range(n):
                (ln,) = _U16.unpack_from(data, off)
                off += 2
                if off + ln > len(data):
                    raise ValueError("truncated")
                jti = data[off : off + ln].decode("utf-8")
                off += ln
                has = data[off]
                (exp,) = _I64.unpack_from(data, off + 1)
                off += 9
                if has not in (0, 1) or (has == 0 and exp != 0):
                    raise ValueError("bad exp flag")
                rl._jtis[jti] = exp if has else None
            if off != len(data) or len(rl._jtis) != n:
                raise ValueError("trailing bytes or duplicate jti")
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"bad revocation snapshot: {exc}") from None
        rl._last_seq = last_seq
        return rl

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RevocationList):
            return NotImplemented
        return self._last_seq == other._last_seq and self._jtis == other._jtis

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"RevocationList(last_seq={self._last_seq}, size={len(self._jtis)})"


# --------------------------------------------------------------------------------------------
# Node-side auth state: keys + revocations, driven by admin commands in the partition's log
# --------------------------------------------------------------------------------------------

_U32 = struct.Struct(">I")


class AuthState:
    """Everything a partition needs to authorise commands, replicated through its log.

    Admin commands (JSON-like mappings, produced by ``coordinator.auth.feed``)::

        {"type": "add_key", "kid": "...", "x": "<base64url Ed25519 public key>"}
        {"type": "remove_key", "kid": "..."}
        {"type": "revoke", "seq": 42, "jtis": [["<jti>", <exp>], ...]}

    :meth:`apply` is deterministic and idempotent (re-adding a key, removing an absent key and
    replaying an old ``revoke`` seq change nothing). :meth:`to_bytes` is deterministic.
    """

    __slots__ = ("verifier", "revocations")

    def __init__(self, *, max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> None:
        self.verifier = TokenVerifier(max_token_bytes=max_token_bytes)
        self.revocations = RevocationList()

    def apply(self, cmd: Mapping) -> bool:
        """Apply one admin command; returns True if the state changed. ValueError if invalid."""
        kind = cmd.get("type")
        if kind == "add_key":
            kid, key = _check_kid(cmd.get("kid")), _public_key_bytes(cmd.get("x", b""))
            if kid in self.verifier and self.verifier.public_key(kid) == key:
                return False
            self.verifier.add_key(kid, key)
            return True
        if kind == "remove_key":
            return self.verifier.remove_key(_check_kid(cmd.get("kid")))
        if kind == "revoke":
            return self.revocations.apply(cmd.get("seq"), cmd.get("jtis") or ())
        raise ValueError(f"unknown auth command type {kind!r}")

    def verify(self, token: str | bytes | None, now_s: int | None = None) -> Principal:
        """Verify a token (at session open) including the revocation list."""
        p = self.verifier.verify(token, now_s)
        if p.jti in self.revocations:
            raise TokenError("revoked", p.jti)
        return p

    def check(self, principal: Principal, now_ns: int, perm: str | None, account: str | None) -> None:
        """Per-command check: :func:`check_command` with this state's revocations and keys."""
        check_command(principal, now_ns, perm, account, self.revocations, self.verifier)

    def prune(self, now_ns: int) -> int:
        return self.revocations.prune(now_ns)

    def to_bytes(self) -> bytes:
        keys = self.verifier.keys_to_bytes()
        return _U32.pack(len(keys)) + keys + self.revocations.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, **kwargs) -> AuthState:
        data = bytes(data)
        if len(data) < 4:
            raise ValueError("bad auth state snapshot")
        (n,) = _U32.unpack_from(data, 0)
        state = cls(**kwargs)
        state.verifier.load_keys_bytes(data[4 : 4 + n])
        state.revocations = RevocationList.from_bytes(data[4 + n :])
        return state
