"""matchx auth service: login, refresh-token rotation, revocation feed, Ed25519 JWKs.

Public entry points::

    from coordinator.auth import AuthClient, AuthError, AuthConfig, AuthFeed, commands_for
    from coordinator.auth import create_app, AuthService, require_token  # FastAPI side

``create_app``/``AuthService``/``require_token`` are imported lazily so that ``AuthClient`` users do not load
FastAPI. Run the server with ``python -m coordinator.auth``. See docs/auth.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import AuthClient, AuthError, TokenPair
from .config import AuthConfig
from .feed import AuthFeed, commands_for

if TYPE_CHECKING:
    from .app import create_app
    from .deps import require_token
    from .service import AuthService, ServiceError

__all__ = [
    "AuthClient",
    "AuthConfig",
    "AuthError",
    "AuthFeed",
    "AuthService",
    "ServiceError",
    "TokenPair",
    "commands_for",
    "create_app",
    "require_token",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "require_token":
        from .deps import require_token

        return require_token
    if name in ("AuthService", "ServiceError"):
        from . import service

        return getattr(service, name)
    raise AttributeError(name)
