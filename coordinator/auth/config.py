"""Configuration of the auth service (dataclass + environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import nacl.pwhash.argon2id as argon2id

from pyengine.service.tokens import DEFAULT_MAX_TOKEN_BYTES, PERMS

ENV_PREFIX = "MATCHX_AUTH_"
MIN_ADMIN_KEY_LEN = 16


@dataclass(frozen=True)
class AuthConfig:
    """Settings; every field can come from ``MATCHX_AUTH_<FIELD>`` (see :meth:`from_env`).

    ``admin_api_key`` protects ``/v1/admin/*`` (header ``X-Admin-Key``); when it is ``None`` the
    admin endpoints answer 403 ``admin_disabled``.
    """

    db_path: str = "./var/auth.db"
    admin_api_key: str | None = field(default=None, repr=False)
    access_ttl_s: int = 15 * 60
    refresh_ttl_s: int = 7 * 24 * 3600
    argon2_opslimit: int = argon2id.OPSLIMIT_INTERACTIVE
    argon2_memlimit: int = argon2id.MEMLIMIT_INTERACTIVE
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    default_perms: tuple[str, ...] = ("trade", "read")
    # Access tokens of a revoked family that expired more than this long ago are not listed.
    revoke_skew_s: int = 300
    # Argon2 hashes running at once (each holds argon2_memlimit bytes of RAM).
    max_concurrent_hashes: int = 4
    # Housekeeping (delete long-expired access/refresh rows) at most this often.
    prune_interval_s: int = 300

    def __post_init__(self) -> None:
        if self.access_ttl_s <= 0 or self.refresh_ttl_s <= 0:
            raise ValueError("TTLs must be positive")
        if not argon2id.OPSLIMIT_MIN <= self.argon2_opslimit <= argon2id.OPSLIMIT_MAX:
            raise ValueError(f"argon2_opslimit out of range {argon2id.OPSLIMIT_MIN}..")
        if not argon2id.MEMLIMIT_MIN <= self.argon2_memlimit <= argon2id.MEMLIMIT_MAX:
            raise ValueError(f"argon2_memlimit out of range {argon2id.MEMLIMIT_MIN}..")
        if self.admin_api_key is not None and len(self.admin_api_key) < MIN_ADMIN_KEY_LEN:
            raise ValueError(f"admin API key must be at least {MIN_ADMIN_KEY_LEN} characters")
        if self.max_concurrent_hashes < 1:
            raise ValueError("max_concurrent_hashes must be >= 1")
        if any(p not in PERMS for p in self.default_perms):
            raise ValueError(f"default_perms must be a subset of {PERMS}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> AuthConfig:
        """Build from ``MATCHX_AUTH_*`` variables; keyword ``overrides`` win (None = not set).

        ``MATCHX_AUTH_ADMIN_KEY_FILE`` (or override ``admin_api_key_file``) reads the admin key
        from a file (first line), which keeps it out of the process list and the environment.
        """
        env = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if f.name in ("db_path", "admin_api_key"):
                values[f.name] = raw
            elif f.name == "default_perms":
                values[f.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            else:
                values[f.name] = int(raw)
        key_file = overrides.pop("admin_api_key_file", None) or env.get(ENV_PREFIX + "ADMIN_API_KEY_FILE")
        if key_file:
            lines = Path(key_file).read_text().splitlines()
            values["admin_api_key"] = lines[0].strip() if lines else ""
        # Short alias documented for operators.
        if "admin_api_key" not in values and env.get(ENV_PREFIX + "ADMIN_KEY"):
            values["admin_api_key"] = env[ENV_PREFIX + "ADMIN_KEY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> AuthConfig:
        return replace(self, **changes)
