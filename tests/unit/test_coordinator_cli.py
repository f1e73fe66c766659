"""Unit tests of the ``python -m coordinator`` argument handling and topology bootstrap."""

from __future__ import annotations

import json

from coordinator.__main__ import apply_topology, parse_args
from coordinator.store import CoordinatorStore


def members(n: int, base: int):
    return [{"worker_id": "w1", "member_id": i, "ingress_endpoint": f"127.0.0.1:{base + i}"} for i in range(n)]


TOPO = {
    "workers": [{"id": "w1", "address": "127.0.0.1"}],
    "partitions": [
        {"id": "p1", "members": members(3, 9010), "symbols": ["BTC-USD"]},
        {"id": "p2", "members": members(1, 9020)},
    ],
}


def test_defaults():
    args = parse_args([])
    assert (args.host, args.port, args.db) == ("127.0.0.1", 8080, "./var/coordinator.db")
    assert args.topology is None and args.topology_mode == "bootstrap"
    args = parse_args(["--listen", "0.0.0.0:9000"])
    assert (args.host, args.port) == ("0.0.0.0", 9000)


def test_bootstrap_applies_only_to_empty_db(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(TOPO))
    args = parse_args(["--db", str(tmp_path / "c.db"), "--topology", str(path)])
    with CoordinatorStore(args.db) as store:
        assert apply_topology(store, args) is True
        assert store.version == 1
        store.move_symbol("BTC-USD", "p2")
        assert apply_topology(store, args) is True  # not re-applied
        assert store.get_symbol("BTC-USD")["partition"] == "p2"
        args = parse_args([*["--db", args.db, "--topology", str(path)], "--topology-mode=replace"])
        assert apply_topology(store, args) is True  # enforced
        assert store.get_symbol("BTC-USD") == {"symbol": "BTC-USD", "partition": "p1", "epoch": 3}
        assert store.version == 3


def test_bad_topology_file(tmp_path):
    args = parse_args(["--topology", str(tmp_path / "missing.json")])
    with CoordinatorStore(tmp_path / "c.db") as store:
        assert apply_topology(store, args) is False
        (tmp_path / "bad.json").write_text("{nope")
        args = parse_args(["--topology", str(tmp_path / "bad.json")])
        assert apply_topology(store, args) is False
        (tmp_path / "bad.json").write_text(json.dumps({"partitions": [{"id": "p", "symbols": ["X"]}]}))
        assert apply_topology(store, args) is False
        assert store.version == 0


def test_control_credential_options(tmp_path, capsys):
    """The service user's login (auth URL and password file, what `matchctl up` passes with its
    auth service) goes as a pair and not with a token file; it becomes the driver's token provider."""
    import pytest

    from coordinator.__main__ import migration_driver

    pw = tmp_path / "service.password"
    pw.write_text("secret\n")
    for argv in (["--control-auth-url", "http://127.0.0.1:1"], ["--control-password-file", str(pw)],
                 ["--control-auth-url", "http://127.0.0.1:1", "--control-password-file", str(pw),
                  "--control-token-file", str(pw)]):
        with pytest.raises(SystemExit):
            parse_args(argv)
    assert "control" in capsys.readouterr().err
    args = parse_args(["--db", str(tmp_path / "c.db"), "--control-auth-url", "http://127.0.0.1:1",
                       "--control-password-file", str(pw)])
    driver, transport = migration_driver(args, CoordinatorStore(args.db))
    assert callable(transport.client_kwargs["token_provider"])
    assert "token_provider" not in migration_driver(parse_args(["--db", str(tmp_path / "d.db")]),
                                                    CoordinatorStore(str(tmp_path / "d.db")))[1].client_kwargs
