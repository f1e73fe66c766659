"""Tokens on, in each way the system starts on this machine: `matchctl cluster up
--auth-keys-file` and `matchctl up` with the auth service in the topology. The same attacks
(tests/integration/auth_attacks.py) are refused in both, each with its reason code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.auth.client import AuthClient
from coordinator.auth.feed import commands_for
from pyengine.client.match_client import client_aeron_dirs
from pyengine.node.localcluster import LocalCluster, wait_for
from tests.conftest import next_port_base
from tests.integration.auth_attacks import Partition, active_signer, run_attacks
from tests.integration.test_auth_service import ADMIN_KEY, AuthServer

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHEAP_ARGON2 = {"MATCHX_AUTH_ARGON2_OPSLIMIT": "1", "MATCHX_AUTH_ARGON2_MEMLIMIT": "8192"}


def matchctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyengine.ops.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def secured_system(make_system, topology_doc, monkeypatch):
    """`matchctl up` of the example topology with the auth service in it: the workers check
    tokens, the symbols were handed out with the service credential, the pusher runs."""
    for k, v in CHEAP_ARGON2.items():
        monkeypatch.setenv(k, v)
    return make_system({**topology_doc, "auth": {"port": 0}}, timeout=180)  # auth service + pusher too


def test_matchctl_up_with_the_auth_service_refuses_every_attack(secured_system, make_client):
    system = secured_system
    written = json.loads(system.topology_file.read_text())
    assert written["settings"]["auth_keys_file"] == str(system.auth_keys_path)  # what the workers read
    assert len(system.running()) == 3 + 2 + 1  # workers, coordinator, auth service, pusher
    with system.auth_client() as api:
        control = make_client(system.topology.ingress_endpoints("p1"), **system.control_credentials())
        assert control.wait_connected(30), control.last_error
        part = Partition(system.topology.ingress_endpoints("p1"), api, active_signer(system.dir / "auth.db"), control,
                         make_client)
        run_attacks(part)
    # the pusher acknowledged the revocation and wrote where it stands
    cursor = json.loads((system.dir / "pusher.json").read_text())["partitions"]
    assert set(cursor) == {"p1", "p2"} and all(c["last_seq"] >= 1 for c in cursor.values())


def test_matchctl_up_symbols_reach_the_partitions_only_with_the_service_credential(secured_system, make_client):
    system = secured_system
    anonymous = make_client(system.topology.ingress_endpoints("p2"))
    wait_for(lambda: anonymous._auth_failure, 30, "the refusal")
    assert anonymous._auth_failure == "missing_token"
    control = make_client(system.topology.ingress_endpoints("p2"), **system.control_credentials())
    assert control.wait_connected(30)
    owned = control.admin({"op": "owned_symbols"}, timeout=30).events["symbols"]
    assert set(owned) == {s.symbol for s in system.topology.partition("p2").symbols}


@pytest.fixture
def cli_cluster(tmp_path):
    """`matchctl cluster up --auth-keys-file` (a real CLI run) beside a real auth service;
    `matchctl cluster down` afterwards, also on failure."""
    server = AuthServer(tmp_path / "auth.db", tmp_path / "auth.log").start()
    api = AuthClient(server.url, admin_key=ADMIN_KEY)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(api.keys()))  # GET /v1/keys as it is
    directory = tmp_path / "cluster"
    try:
        done = matchctl("cluster", "up", "--dir", str(directory), "--port-base", str(next_port_base()),
                        "--auth-keys-file", str(keys))
        assert done.returncode == 0, done.stderr
        yield LocalCluster.open(directory), api, server
    finally:
        if (directory / "cluster.json").is_file():
            matchctl("cluster", "down", "--dir", str(directory))
        api.close()
        server.stop()
        server.kill()


def test_matchctl_cluster_up_with_a_keys_file_refuses_every_attack(cli_cluster, make_client, tmp_path):
    cluster, api, server = cli_cluster
    assert cluster.layout.auth_keys_file is not None  # the setting reached the members' layout
    api.create_account("ops")
    api.create_user("ops", "password-for-tests", "ops", ["admin", "read"])
    pair = api.login("ops", "password-for-tests")
    control = make_client(cluster.ingress_endpoints(), credentials=pair.access_token.encode())
    assert control.wait_connected(60), control.last_error
    assert control.request({"op": "add_symbol", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                            "tick_size": "0.01", "lot_size": "0.001"}, timeout=30).events[0]["type"] != "rejected"
    part = Partition(cluster.ingress_endpoints(), api, active_signer(server.db), control, make_client)

    # A single partition started by hand has no pusher: the operator pushes what the feed
    # says (as the pusher would); here in a thread while the attacks run.
    import threading

    stop = threading.Event()

    def push() -> None:
        have = {"kids": [k["kid"] for k in api.keys()], "seq": 0}
        while not stop.wait(0.2):
            for cmd in commands_for(api, have["kids"], have["seq"]):
                kind = cmd.pop("type")
                control.admin({"op": kind, **cmd}, timeout=30)
                have["seq"] = cmd.get("seq", have["seq"])

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    try:
        run_attacks(part)
    finally:
        stop.set()
        pusher.join(30)
    # `matchctl cluster hash` with a token works; without one it is refused
    token_file = tmp_path / "token"
    token_file.write_text(pair.access_token)
    done = matchctl("cluster", "hash", "--dir", str(cluster.dir), "--token-file", str(token_file))
    assert done.returncode == 0 and "members agree" in done.stdout, done.stdout + done.stderr


def test_the_pusher_resumes_after_its_restart_and_a_leader_failover(secured_system, make_client):
    """Revocations made while the pusher is down, and while p1 has lost its leader, reach the
    partitions once it is back: it resumes from what each partition says it holds."""
    system = secured_system
    topo = system.topology
    with system.auth_client() as api:
        api.create_account("vic")
        api.create_user("vic", "password-for-tests", "vic", ["trade", "read"])
        pairs = [api.login("vic", "password-for-tests") for _ in range(2)]
        sessions = []
        for pair in pairs:
            s = make_client(topo.ingress_endpoints("p1"), credentials=pair.access_token.encode())
            assert s.wait_connected(60), s.last_error
            sessions.append(s)

        api.revoke(refresh_token=pairs[0].refresh_token)  # pushed by the running pusher
        wait_for(lambda: sessions[0]._auth_failure, 30, "the first revocation")
        assert sessions[0]._auth_failure == "revoked"

        first_pusher = system.state()["pusher"]
        system.stop_pusher()
        assert not any("pusher" in r for r in system.running())
        assert client_aeron_dirs(first_pusher) == []  # its clients' driver dirs went with it
        leader = system.leader("p1")
        killed = topo.partition("p1").members[leader]
        system.stop_worker(killed, sig=signal.SIGKILL)  # p1 (and p2) lose a member, p1 its leader
        api.revoke(refresh_token=pairs[1].refresh_token)  # nobody pushes this one yet
        seq = api.revocations(since=0)[-1]["seq"]
        control = make_client(topo.ingress_endpoints("p1"), **system.control_credentials())
        assert control.wait_connected(60), control.last_error
        assert control.admin({"op": "auth_state"}, timeout=30).events["last_seq"] < seq  # really not pushed
        still = sessions[1].request({"op": "book", "symbol": "BTC-USDT", "depth": 1}, timeout=30)
        assert still.events[0]["type"] == "book"  # the revoked token still works: nobody pushed

        system.start_pusher()  # waits until it has read every partition's state and caught up
        wait_for(lambda: sessions[1]._auth_failure, 30, "the revocation made while the pusher was down")
        assert sessions[1]._auth_failure == "revoked"
        assert control.admin({"op": "auth_state"}, timeout=30).events["last_seq"] >= seq
        system.start_worker(killed)
        cursor = json.loads((system.dir / "pusher.json").read_text())["partitions"]
        assert all(c["last_seq"] >= seq for c in cursor.values())
