"""`matchctl cluster up --auth-url URL --service-password-file F` runs the revocation pusher for
its one partition: a revoke at the auth service reaches the partition by itself, and `matchctl
cluster down` stops the pusher. Real processes: the auth service, `coordinator.auth.setup` (the
service user and keys file, as docs/auth.md has it), the CLI, the members and the pusher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coordinator.auth.client import AuthClient
from pyengine.client.match_client import AuthenticationError, client_aeron_dirs
from pyengine.node.localcluster import LocalCluster, wait_for
from pyengine.node.procs import pid_alive
from tests.conftest import next_port_base
from tests.integration.test_auth_paths import matchctl
from tests.integration.test_auth_service import ADMIN_KEY, REPO, AuthServer

pytestmark = pytest.mark.cluster

PASSWORD = "password-for-tests"


@pytest.fixture
def auth_service(tmp_path):
    """A real auth service (stopped afterwards) and an admin client of it."""
    server = AuthServer(tmp_path / "auth.db", tmp_path / "auth.log").start()
    with AuthClient(server.url, admin_key=ADMIN_KEY) as api:
        yield server, api
    server.stop()
    server.kill()


def test_cluster_up_runs_the_pusher_and_a_revoked_token_is_refused(tmp_path, make_client, auth_service):
    server, api = auth_service
    secrets = tmp_path / "auth"
    secrets.mkdir()
    (secrets / "admin.key").write_text(ADMIN_KEY + "\n")
    (secrets / "service.password").write_text("service-password-for-tests\n")
    directory = tmp_path / "cluster"
    try:
        setup = subprocess.run([sys.executable, "-m", "coordinator.auth.setup", "--auth-url", server.url,
                                "--dir", str(secrets)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert setup.returncode == 0, setup.stderr
        done = matchctl("cluster", "up", "--dir", str(directory), "--port-base", str(next_port_base()),
                        "--auth-keys-file", str(secrets / "keys.json"), "--auth-url", server.url,
                        "--service-password-file", str(secrets / "service.password"))
        assert done.returncode == 0, done.stdout + done.stderr
        pusher_pid = json.loads((directory / "pusher.pid").read_text())["pid"]
        assert pid_alive(pusher_pid)
        cluster = LocalCluster.open(directory)

        api.create_account("victim")
        api.create_user("victim", PASSWORD, "victim", ["trade", "read"])
        pair = api.login("victim", PASSWORD)
        victim = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
        assert victim.wait_connected(60), victim.last_error
        assert victim.request({"op": "balances", "account": "victim"}, timeout=30).events is not None

        api.revoke(refresh_token=pair.refresh_token)  # nothing else pushes it: only the pusher can
        wait_for(lambda: victim._auth_failure, 60, "the partition to close the revoked session")
        assert victim._auth_failure == "revoked"
        with pytest.raises(AuthenticationError) as err:
            victim.submit({"op": "balances", "account": "victim"})
        assert err.value.reason == "revoked"
        again = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
        wait_for(lambda: again._auth_failure, 60, "the reconnect with the revoked token to be refused")
        assert again._auth_failure == "revoked"
        cursor = json.loads((directory / "pusher.json").read_text())
        assert cursor["pid"] == pusher_pid
        assert [c["last_seq"] for c in cursor["partitions"].values()] == [1]

        down = matchctl("cluster", "down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
        assert not pid_alive(pusher_pid)
        assert not (directory / "pusher.pid").exists()
        assert client_aeron_dirs(pusher_pid) == []
    finally:
        if (directory / "cluster.json").is_file():  # after a failure above
            matchctl("cluster", "down", "--dir", str(directory))


def test_cluster_up_refuses_an_auth_url_without_its_password_file(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text("{}")
    done = matchctl("cluster", "up", "--dir", str(tmp_path / "cluster"), "--auth-keys-file", str(keys),
                    "--auth-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "--service-password-file" in done.stderr
    assert not (tmp_path / "cluster" / "cluster.json").exists()  # nothing was started
