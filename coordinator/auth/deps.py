"""FastAPI dependency that protects another service with matchx access tokens.

Example (the coordinator's ``admin_dependency`` hook)::

    feed = AuthFeed(AuthClient("http://127.0.0.1:8081"))
    app = coordinator.api.create_app(store, admin_dependency=require_token(feed, perm="admin"))

Failures raise ``HTTPException`` 401 (bad/expired/revoked token) or 403 (wrong permission)
whose ``detail`` starts with the reason code.
"""

import logging
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Header, HTTPException

from pyengine.service.tokens import AuthState, Principal, TokenError, bearer_token

from .client import AuthError
from .feed import AuthFeed

log = logging.getLogger("matchx.auth.deps")


def require_token(
    source: AuthFeed | AuthState,
    *,
    perm: str | None = "admin",
    account: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Callable[..., Principal]:
    """A dependency returning the caller's :class:`Principal` (keys/revocations from
    ``source``; an :class:`AuthFeed` is refreshed at most every ``min_interval_s``)."""

    def dependency(authorization: Annotated[str | None, Header()] = None) -> Principal:
        if isinstance(source, AuthFeed):
            try:
                source.maybe_poll()
            except AuthError as exc:
                # Keep serving with the last known keys and revocations -- but say so: a token
                # revoked since the last good poll passes until the auth service answers again.
                # maybe_poll waits min_interval_s before the next try, so a dead service costs
                # one request a timeout per interval, not every request.
                log.warning("auth service unreachable (%s); checking tokens against keys and revocations "
                            "last fetched %.0f s ago: newer revocations are not enforced", exc,
                            source.age_s())
            state = source.state
        else:
            state = source
        try:
            principal = state.verify(bearer_token(authorization), now_s=int(clock()))
            state.check(principal, int(clock() * 1e9), perm, account)
        except TokenError as exc:
            status = 403 if exc.reason in ("wrong_permission", "wrong_account") else 401
            raise HTTPException(
                status,
                detail=f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason,
                headers={"WWW-Authenticate": f'Bearer error="{exc.reason}"'},
            ) from None
        return principal

    return dependency
