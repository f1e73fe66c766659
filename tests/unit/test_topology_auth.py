"""Tokens on is one setting, and it must reach every process: the topology file the workers read,
the cluster layout the members read, and a keys file a member can actually use."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from pyengine.node.settings import ClusterLayout, ConfigError, load_auth_keys
from pyengine.node.topology import AuthServiceSpec, Topology, TopologyError
from pyengine.service.tokens import TokenSigner

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "topology-2x3.json"


def keys_doc(*signers: TokenSigner) -> dict:
    return {"keys": [s.jwk() for s in signers]}


def test_every_topology_field_survives_the_file_the_workers_read(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(keys_doc(TokenSigner.generate())))
    doc = json.loads(EXAMPLE.read_text())
    doc["settings"] = {"auth_keys_file": str(keys), "snapshot_interval_s": 7, "term_length": 1 << 17,
                       "idle_max_park_us": 300, "timeouts": {"heartbeat_timeout_ms": 400}}
    doc["auth"] = {"host": "127.0.0.1", "port": 8091, "db": "a.db"}
    topo = Topology.from_dict(doc)
    again = Topology.from_dict(json.loads(json.dumps(topo.to_dict())))
    for f in fields(Topology):  # a field added later without to_dict fails here, by name
        assert getattr(again, f.name) == getattr(topo, f.name), f.name
    assert again.auth == AuthServiceSpec("127.0.0.1", 8091, "a.db")
    assert again.layout("p1", tmp_path).auth_keys_file == str(keys)


def test_layout_keeps_the_keys_file_for_the_members(tmp_path):
    layout = ClusterLayout(base_dir=tmp_path, auth_keys_file="/k.json")
    assert ClusterLayout.from_json(layout.to_json()).auth_keys_file == "/k.json"


def test_a_relative_keys_file_is_relative_to_the_topology_file(tmp_path):
    doc = json.loads(EXAMPLE.read_text())
    doc["settings"] = {"auth_keys_file": "keys.json"}
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "topo.json"
    path.write_text(json.dumps(doc))
    assert Topology.load(path).auth_keys_file == str(tmp_path / "conf" / "keys.json")


def test_an_empty_keys_file_setting_is_refused_not_taken_as_off():
    doc = json.loads(EXAMPLE.read_text())
    doc["settings"] = {"auth_keys_file": " "}
    with pytest.raises(TopologyError, match="auth_keys_file must be a path"):
        Topology.from_dict(doc)


def test_the_auth_service_port_must_not_be_the_coordinators():
    doc = json.loads(EXAMPLE.read_text())
    doc["auth"] = {"port": doc["coordinator"]["port"]}
    with pytest.raises(TopologyError, match="coordinator's port"):
        Topology.from_dict(doc)


def test_keys_files_load_from_the_auth_services_answers(tmp_path):
    a, b = TokenSigner.generate(), TokenSigner.generate()
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([a.jwk(), b.jwk()]))  # GET /v1/keys
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys_doc(a)))  # GET /.well-known/jwks.json
    assert set(load_auth_keys(listed)) == {a.kid, b.kid}
    assert load_auth_keys(jwks) == {a.kid: a.jwk()["x"]}


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "not valid JSON"),
    ("[]", "holds no key"),
    ('{"keys": []}', "holds no key"),
    ('{"something": 1}', "holds no key"),
    ('[{"kid": "k"}]', "key 0 is not an object with string kid and x"),
    ('[{"kid": "k", "x": "AAAA"}]', "not a valid Ed25519 key"),
    ('[{"kid": "", "x": "' + "A" * 43 + '"}]', "not a valid Ed25519 key"),
])
def test_a_bad_keys_file_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "keys.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        ClusterLayout(base_dir=tmp_path, auth_keys_file=str(path)).auth_keys()


@pytest.mark.parametrize("entry", ["member", "worker"])
def test_a_member_with_a_bad_keys_file_refuses_to_start(tmp_path, entry):
    keys = tmp_path / "keys.json"
    keys.write_text("[]")
    if entry == "member":
        layout = ClusterLayout(base_dir=tmp_path / "c", members=1, auth_keys_file=str(keys))
        (tmp_path / "cluster.json").write_text(layout.to_json())
        cmd = ["-m", "pyengine.node.member", "--layout", str(tmp_path / "cluster.json"), "--member-id", "0"]
    else:
        doc = json.loads(EXAMPLE.read_text())
        doc["settings"] = {"auth_keys_file": str(keys)}
        (tmp_path / "topology.json").write_text(json.dumps(doc))
        cmd = ["-m", "pyengine.node.worker", "--topology", str(tmp_path / "topology.json"), "--worker-id", "w1",
               "--dir", str(tmp_path / "sys")]
    done = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"auth keys file {keys}: holds no key" in lines[0], done.stderr
    assert "started" not in done.stdout
    assert not (tmp_path / "c").exists() and not (tmp_path / "sys").exists()  # nothing was touched


def test_matchctl_cluster_up_refuses_a_bad_keys_file_before_starting(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pyengine.ops.cli", "cluster", "up", "--dir", str(tmp_path / "c"),
                           "--auth-keys-file", str(tmp_path / "missing.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "matchctl: auth keys file" in done.stderr and "cannot read it" in done.stderr
    assert not (tmp_path / "c").exists()
