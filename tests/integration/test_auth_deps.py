"""coordinator.auth.deps while the auth service is down: the guard keeps serving from its last
mirror, says so at WARNING, and tries the service again only once per interval."""

from __future__ import annotations

import logging
import time
import warnings

from fastapi import Depends, FastAPI

from coordinator.auth.client import AuthClient
from coordinator.auth.deps import require_token
from coordinator.auth.feed import AuthFeed
from tests.integration.test_auth_service import ADMIN_KEY, server_factory  # noqa: F401 - fixture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_a_dead_auth_service_is_logged_and_not_retried_per_request(server_factory, caplog):  # noqa: F811
    server = server_factory()
    admin = AuthClient(server.url, admin_key=ADMIN_KEY)
    admin.create_account("ops")
    admin.create_user("boss", "password-boss", "ops", ["admin"])
    pair = admin.login("boss", "password-boss")
    feed = AuthFeed(AuthClient(server.url), min_interval_s=1.0)
    app = FastAPI()

    @app.get("/guarded")
    def guarded(p=Depends(require_token(feed, perm="admin"))):  # noqa: B008
        return {"uid": p.uid}

    bearer = {"Authorization": "Bearer " + pair.access_token}
    with TestClient(app) as http:
        assert http.get("/guarded", headers=bearer).status_code == 200
        admin.logout(refresh_token=pair.refresh_token)  # revoked at the service ...
        server.stop()  # ... which dies before the guard hears of it
        time.sleep(1.1)
        with caplog.at_level(logging.WARNING, logger="matchx.auth.deps"):
            codes = [http.get("/guarded", headers=bearer).status_code for _ in range(5)]
    warned = [r for r in caplog.records if r.name == "matchx.auth.deps"]
    assert codes == [200] * 5  # the known gap: a revocation made while unreachable is not seen
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING, warned  # one try per interval
    assert "newer revocations are not enforced" in warned[0].getMessage()
