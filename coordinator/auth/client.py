"""Small synchronous client for the auth service (httpx)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import httpx

from pyengine.service.tokens import TokenVerifier


class AuthError(Exception):
    """The auth service refused a request, or could not be reached.

    ``reason``: the service's stable error code (e.g. ``invalid_credentials``,
    ``refresh_reused``, ``expired``), ``unavailable`` (connection/timeout) or ``bad_response``.
    """

    def __init__(self, reason: str, status: int | None = None, detail: object = None) -> None:
        self.reason = reason
        self.status = status
        self.detail = detail
        msg = reason if status is None else f"{reason} (HTTP {status})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int | None = None


class AuthClient:
    """``AuthClient("http://127.0.0.1:8081", admin_key=...)``; usable as a context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        admin_key: str | None = None,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_key = admin_key
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: dict | None = None,
        bearer: str | None = None,
        admin: bool = False,
    ):
        headers = {}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        if admin:
            if self.admin_key is None:
                raise AuthError("admin_required", detail="AuthClient has no admin_key")
            headers["X-Admin-Key"] = self.admin_key
        try:
            resp = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise AuthError("unavailable", detail=f"{type(exc).__name__}: {exc}") from exc
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.is_success:
            if body is None and resp.content:
                raise AuthError("bad_response", resp.status_code, resp.text[:200])
            return body
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            raise AuthError(err["code"], resp.status_code, err.get("details") or err.get("message"))
        raise AuthError("bad_response", resp.status_code, resp.text[:200])

    @staticmethod
    def _pair(body: dict) -> TokenPair:
        try:
            return TokenPair(
                body["access_token"],
                body["token_type"],
                int(body["expires_in"]),
                body["refresh_token"],
                body.get("refresh_expires_in"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthError("bad_response", detail=str(exc)) from None

    # -- session ----------------------------------------------------------------------------
    def login(self, username: str, password: str) -> TokenPair:
        return self._pair(self._call("POST", "/v1/login", json={"username": username, "password": password}))

    def refresh(self, refresh_token: str) -> TokenPair:
        return self._pair(self._call("POST", "/v1/refresh", json={"refresh_token": refresh_token}))

    def logout(self, refresh_token: str | None = None, access_token: str | None = None) -> int:
        """End a session; returns how many access jtis were newly revoked."""
        body = {"refresh_token": refresh_token} if refresh_token is not None else None
        return self._call("POST", "/v1/logout", json=body, bearer=access_token)["revoked"]

    def revoke(
        self,
        *,
        jti: str | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        as_admin: bool = False,
    ) -> int:
        """Revoke an access token by jti (as admin, or as its owner with ``access_token``) or a
        refresh token's family. Returns how many jtis were newly revoked."""
        body = {k: v for k, v in (("jti", jti), ("refresh_token", refresh_token)) if v is not None}
        return self._call("POST", "/v1/revoke", json=body, bearer=access_token, admin=as_admin)["revoked"]

    def me(self, access_token: str) -> dict:
        return self._call("GET", "/v1/me", bearer=access_token)

    # -- keys & revocation feed -------------------------------------------------------------
    def keys(self) -> list[dict]:
        return self._call("GET", "/v1/keys")

    def verifier(self, **kwargs) -> TokenVerifier:
        """A :class:`TokenVerifier` loaded with the currently published keys."""
        return TokenVerifier.from_jwks(self.keys(), **kwargs)

    def revocations(self, since: int = 0, limit: int = 1000) -> list[dict]:
        return self._call("GET", "/v1/revocations", params={"since": since, "limit": limit})

    def health(self) -> dict:
        return self._call("GET", "/healthz")

    # -- admin (X-Admin-Key) ------------------------------------------------------------------
    def create_account(self, account: str | None = None) -> dict:
        return self._call("POST", "/v1/admin/accounts", json={"account": account}, admin=True)

    def create_user(self, username: str, password: str, account: str, perms: list[str] | None = None) -> dict:
        body = {"username": username, "password": password, "account": account, "perms": perms}
        return self._call("POST", "/v1/admin/users", json=body, admin=True)

    def disable_user(self, username: str) -> dict:
        return self._call("POST", f"/v1/admin/users/{quote(username, safe='')}/disable", admin=True)

    def admin_keys(self) -> list[dict]:
        return self._call("GET", "/v1/admin/keys", admin=True)

    def rotate_key(self) -> dict:
        return self._call("POST", "/v1/admin/keys/rotate", admin=True)

    def remove_key(self, kid: str) -> dict:
        return self._call("DELETE", f"/v1/admin/keys/{quote(kid, safe='')}", admin=True)
