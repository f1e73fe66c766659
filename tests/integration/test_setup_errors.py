"""A missing jar or a missing Java gives the user one line saying what to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def layout_json(base: Path, members: int, port_base: int) -> str:
    return json.dumps({"base_dir": str(base), "members": members, "cluster_id": 0, "port_base": port_base,
                       "hosts": [], "term_length": 1 << 20, "idle_max_park_us": 1000, "snapshot_interval_s": 0,
                       "timeouts": {}})


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_missing_jar_is_one_clear_line(tmp_path):
    env = dict(os.environ, MATCHX_JAR=str(tmp_path / "nope.jar"))
    result = run(["-m", "pyengine.ops.cli", "cluster", "up", "--dir", str(tmp_path / "c"), "--timeout", "5"], env)
    # `cluster up` starts member processes; each of them must fail at once with the line.
    member_logs = list((tmp_path / "c").glob("member-*/member.log"))
    texts = [p.read_text() for p in member_logs]
    assert result.returncode != 0
    assert texts and all("nope.jar does not exist" in t and "make build" in t for t in texts), texts
    assert all("Traceback" not in t for t in texts)


def test_missing_jar_in_the_client_is_one_clear_line(tmp_path):
    env = dict(os.environ, MATCHX_JAR=str(tmp_path / "nope.jar"))
    result = run(["-m", "pyengine.ops.cli", "cluster", "hash", "--dir", str(tmp_path)], env)
    assert result.returncode != 0
    assert "no cluster in" in result.stderr  # nothing started yet: says so first
    (tmp_path / "cluster.json").write_text(layout_json(tmp_path, 3, 29900))
    result = run(["-m", "pyengine.ops.cli", "cluster", "hash", "--dir", str(tmp_path)], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "make build" in result.stderr


def test_missing_java_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "MATCHX_JAR")}
    env["PATH"] = str(tmp_path)  # no java anywhere
    (tmp_path / "cluster.json").write_text(layout_json(tmp_path, 1, 29800))
    result = run(["-m", "pyengine.node.member", "--layout", str(tmp_path / "cluster.json"), "--member-id", "0"], env)
    assert result.returncode == 2
    assert "no Java runtime found" in result.stderr and "openjdk-17" in result.stderr
    assert "Traceback" not in result.stderr
