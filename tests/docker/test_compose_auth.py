"""The compose system (docker/compose.yaml) with tokens on, end to end: the auth container
sets up the service user and the keys file, the workers load it, `init` hands out the symbols
with the service credential, the pusher container pushes revocations. The attacks of
tests/integration/auth_attacks.py are refused from a client on the host."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from pathlib import Path

import pytest

from coordinator.auth.client import AuthClient
from coordinator.auth.setup import service_token_provider
from pyengine.service.tokens import TokenSigner
from tests.docker.conftest import RUN_ID, _pick_subnet
from tests.integration.auth_attacks import ACTIVE_KEY_SQL, Partition, run_attacks

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def compose_system(docker_client):
    prefix = str(_pick_subnet(docker_client).network_address).rsplit(".", 1)[0]
    admin_key = secrets.token_urlsafe(24)
    ports = {"MATCHX_COORDINATOR_PORT": str(_free_port()), "MATCHX_AUTH_PORT": str(_free_port())}
    env = {**os.environ, **ports, "MATCHX_COMPOSE_PROJECT": f"mxauth{RUN_ID}", "MATCHX_SUBNET": prefix,
           "MATCHX_AUTH_ADMIN_KEY": admin_key}

    def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "docker" / "compose.sh"), *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def container(service: str) -> str:
        return compose("ps", "-q", service).stdout.strip()

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        waited = subprocess.run(["docker", "wait", container("init")], capture_output=True, text=True, timeout=600)
        assert waited.stdout.strip() == "0", compose("logs", "--no-color", "init", "auth").stdout[-4000:]
        yield {"prefix": prefix, "admin_key": admin_key, "auth_port": ports["MATCHX_AUTH_PORT"],
               "container": container, "compose": compose}
    finally:
        down = compose("down", "-v", "--timeout", "30")
        assert down.returncode == 0, down.stderr


def test_compose_with_tokens_refuses_every_attack(compose_system, host_client):
    c = compose_system
    prefix = c["prefix"]
    auth = c["container"]("auth")

    def in_auth(*cmd: str) -> str:
        done = subprocess.run(["docker", "exec", auth, *cmd], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    kid, seed = in_auth("python3", "-c", "import sqlite3; kid, seed = sqlite3.connect('/data/auth.db')"
                        f".execute({ACTIVE_KEY_SQL!r}).fetchone(); print(kid, seed.hex())").split()
    url = f"http://127.0.0.1:{c['auth_port']}"
    endpoints = f"0={prefix}.10:21001,1={prefix}.11:21011,2={prefix}.12:21021"
    egress = f"{prefix}.1"
    control = host_client(endpoints, egress,
                          token_provider=service_token_provider(url, in_auth("cat", "/auth/service.password")))
    assert control.wait_connected(120), control.last_error
    with AuthClient(url, admin_key=c["admin_key"]) as api:
        part = Partition(endpoints, api, TokenSigner(bytes.fromhex(seed), kid), control,
                         lambda e, **kw: host_client(e, egress, **kw))
        run_attacks(part)
    pusher_log = c["compose"]("logs", "--no-color", "pusher").stdout
    assert "revoke seq" in pusher_log, pusher_log[-3000:]
