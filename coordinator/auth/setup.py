"""Setting up the auth service for a system: the control plane's service user, the members'
keys file, and a token provider for the control plane's own connections.

Used by `matchctl up` (pyengine/ops/system.py), the pusher and the compose deployment, where
the `auth` container runs, once its service listens::

    python -m coordinator.auth.setup --auth-url http://127.0.0.1:8081 --dir /auth

which waits for the service, creates the service user (password from DIR/service.password,
admin key from DIR/admin.key) if it does not exist, and writes the published keys to
DIR/keys.json -- the file every member loads (`settings.auth_keys_file`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .client import AuthClient, AuthError

log = logging.getLogger("matchx.auth.setup")

SERVICE_USER = "matchctl"
SERVICE_ACCOUNT = "matchx-ops"
SERVICE_PERMS = ("admin", "read")  # admin commands and reads on the partitions; no trading


def ensure_service_user(api: AuthClient, password: str) -> None:
    """Creates the service account and user unless they exist (``api`` holds the admin key)."""
    for create in (lambda: api.create_account(SERVICE_ACCOUNT),
                   lambda: api.create_user(SERVICE_USER, password, SERVICE_ACCOUNT, list(SERVICE_PERMS))):
        try:
            create()
        except AuthError as exc:
            if exc.reason not in ("account_exists", "username_taken"):
                raise


def write_keys_file(api: AuthClient, path: Path) -> int:
    """Writes the published keys (``{"keys": [...]}``) atomically; returns how many."""
    keys = api.keys()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": keys}, indent=2) + "\n")
    os.replace(tmp, path)
    return len(keys)


def service_token_provider(auth_url: str, password: str) -> Callable[[bool], str]:
    """A ``MatchClient`` token_provider: the service user's access token, logged in again when
    asked to refresh (a login every access TTL, 15 min by default)."""
    cached: dict[str, str] = {}

    def tokens(refresh: bool) -> str:
        if refresh or "token" not in cached:
            with AuthClient(auth_url) as api:
                cached["token"] = api.login(SERVICE_USER, password).access_token
        return cached["token"]

    return tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coordinator.auth.setup", description=__doc__.splitlines()[0])
    p.add_argument("--auth-url", required=True)
    p.add_argument("--dir", required=True, type=Path, help="holds admin.key and service.password; gets keys.json")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the service")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        admin_key = (args.dir / "admin.key").read_text().strip()
        password = (args.dir / "service.password").read_text().strip()
    except OSError as exc:
        print(f"auth setup: {exc}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    with AuthClient(args.auth_url, admin_key=admin_key) as api:
        while True:
            try:
                api.health()
                break
            except AuthError as exc:
                if time.monotonic() > deadline:
                    print(f"auth setup: {args.auth_url} not answering: {exc}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        try:
            ensure_service_user(api, password)
            n = write_keys_file(api, args.dir / "keys.json")
        except AuthError as exc:
            print(f"auth setup: {exc}", file=sys.stderr)
            return 1
    print(json.dumps({"event": "auth_setup_done", "keys": n, "keys_file": str(args.dir / "keys.json")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
