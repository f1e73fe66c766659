"""Fixtures shared by the test suites: real cluster member processes, real clients.

Every fixture cleans up what it started (processes, /dev/shm directories), also when the test
fails. (No guard checks /dev/shm after each test yet: a fresh-clone run left the client driver
directories of processes `matchctl down` stopped, which System.down now removes.)
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from pyengine.node.localcluster import LocalCluster, free_port_base
from pyengine.node.settings import ClusterLayout, Timeouts

_bases = itertools.count()
TEST_TIMEOUTS = Timeouts(heartbeat_interval_ms=50, heartbeat_timeout_ms=500, election_timeout_ms=100)
# The Raft timing a user gets (pyengine/node/settings.py: 120 ms heartbeat timeout). The failover
# and exactly-once tests run it. They once lost a test per fresh-clone run to election churn while
# three JVMs start at once on 2 cores (two leaders within 50 ms, a follower that never joins the
# live log); members now start on looser election timing until they are warm
# (java-cluster/.../ElectionTiming.java).
SHIPPED_TIMEOUTS = Timeouts()


# Test clusters stay below Linux's ephemeral port range (32768-60999 by default): a member
# restarted on a port inside it can find that port taken by some process's outgoing socket
# ("Address already in use"), which a fixture cannot foresee when it probes the range.
TEST_PORTS = (21000, 32000)

# What a failed test's processes logged, shown with the failure: in a CI run the tmp_path and
# its logs are gone by the time anyone reads the report.
_LOG_TAIL_LINES = 40
_LOG_TAIL_FILES = 12


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or not isinstance(tmp, Path):
        return
    logs = sorted((p for p in tmp.rglob("*.log") if p.is_file()), key=lambda p: p.stat().st_mtime,
                  reverse=True)[:_LOG_TAIL_FILES]
    for log_file in logs:
        data = log_file.read_bytes()
        if b"\0" in data[-4096:]:
            continue  # Aeron's binary recording.log
        lines = data.decode(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        report.sections.append((f"log tail {log_file.relative_to(tmp)}", "\n".join(lines)))


def next_port_base() -> int:
    # Spread by pid so parallel pytest processes on one machine rarely probe the same range.
    low, high = TEST_PORTS
    start = low + ((os.getpid() % 10) * 1000 + next(_bases) * 100) % (high - low)
    return free_port_base(start)


@pytest.fixture
def make_cluster(tmp_path: Path):
    """Factory: ``make_cluster(members=3, **layout_overrides)`` -> started LocalCluster."""
    started: list[LocalCluster] = []

    def factory(members: int = 3, start: bool = True, **overrides) -> LocalCluster:
        # Looser than the production defaults: a member restarting (JVM start, JIT) on this
        # 2-core machine can starve the others for a moment; failover speed is a benchmark's job.
        timeouts = overrides.pop("timeouts", TEST_TIMEOUTS)
        # the failover and exactly-once tests under another member threading (issue #20):
        # MATCHX_TEST_MEMBER_THREADING=compact pytest tests/integration/test_cluster_failover.py
        if os.environ.get("MATCHX_TEST_MEMBER_THREADING"):
            overrides.setdefault("member_threading", os.environ["MATCHX_TEST_MEMBER_THREADING"])
        layout = ClusterLayout(
            base_dir=tmp_path / f"cluster-{len(started)}", members=members,
            port_base=next_port_base(), timeouts=timeouts, **overrides,
        )
        cluster = LocalCluster(layout)
        started.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield factory
    for cluster in started:
        cluster.stop()
        for member in range(cluster.layout.members):
            assert not Path(cluster.layout.aeron_dir(member)).exists()


@pytest.fixture
def make_client():
    from pyengine.client import MatchClient

    clients: list[MatchClient] = []

    def factory(endpoints: str, **kwargs) -> MatchClient:
        client = MatchClient(endpoints, **kwargs)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()
        assert not Path(client.aeron_dir).exists()
