"""Raft timing and layout settings: a setting that cannot work is refused with its name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pyengine.node.settings import ClusterLayout, ConfigError, Timeouts


def test_defaults_are_valid_and_reach_the_member_properties(tmp_path: Path) -> None:
    layout = ClusterLayout(base_dir=tmp_path)
    props = layout.member_properties(0)
    t = Timeouts()
    assert props["election.timeout.ms"] == str(t.election_timeout_ms)
    assert props["heartbeat.timeout.ms"] == str(t.heartbeat_timeout_ms)
    assert t.election_timeout_ms < t.heartbeat_timeout_ms
    assert props["setup.repeat.ms"] == str(t.setup_repeat_ms)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"heartbeat_timeout_ms": 30}, "heartbeat_timeout_ms"),
        ({"election_timeout_ms": 0}, "election_timeout_ms"),
        ({"election_timeout_ms": 150}, "election_timeout_ms"),
        ({"election_status_interval_ms": 0}, "election_status_interval_ms"),
        ({"startup_canvass_timeout_ms": 200}, "startup_canvass_timeout_ms"),
        ({"setup_repeat_ms": 0}, "setup_repeat_ms"),
        ({"setup_repeat_ms": 1001}, "setup_repeat_ms"),
    ],
)
def test_bad_timeouts_are_refused_by_name(tmp_path: Path, change: dict, named: str) -> None:
    bad = replace(Timeouts(), **change)
    with pytest.raises(ConfigError, match=named):
        bad.check()
    with pytest.raises(ConfigError, match=named):
        ClusterLayout(base_dir=tmp_path, timeouts=bad)


def test_member_threading_reaches_the_member_and_survives_cluster_json(tmp_path: Path) -> None:
    assert ClusterLayout(base_dir=tmp_path).member_properties(0)["threading"] == "shared"
    compact = ClusterLayout(base_dir=tmp_path, member_threading="compact")
    assert compact.member_properties(2)["threading"] == "compact"
    assert ClusterLayout.from_json(compact.to_json()).member_threading == "compact"


def test_idle_settings_of_driver_and_service_reach_the_members(tmp_path: Path) -> None:
    props = ClusterLayout(base_dir=tmp_path).member_properties(0)
    assert props["idle.driver.light.work"] == "48" and props["idle.service.max.park.us"] == "10000"
    off = ClusterLayout(base_dir=tmp_path, driver_light_work=0, service_max_park_us=1000)
    assert off.member_properties(2)["idle.driver.light.work"] == "0"
    assert ClusterLayout.from_json(off.to_json()).service_max_park_us == 1000
    with pytest.raises(ConfigError, match="driver_light_work"):
        ClusterLayout(base_dir=tmp_path, driver_light_work=64)
    with pytest.raises(ConfigError, match="service_max_park_us"):
        ClusterLayout(base_dir=tmp_path, service_max_park_us=0)


def test_woken_parks_of_consensus_module_and_archive_reach_the_members(tmp_path: Path) -> None:
    assert ClusterLayout(base_dir=tmp_path).member_properties(0)["idle.woken.max.park.us"] == "4000"
    off = ClusterLayout(base_dir=tmp_path, woken_max_park_us=1000)
    assert off.member_properties(1)["idle.woken.max.park.us"] == "1000"
    assert ClusterLayout.from_json(off.to_json()).woken_max_park_us == 1000
    with pytest.raises(ConfigError, match="woken_max_park_us"):
        ClusterLayout(base_dir=tmp_path, woken_max_park_us=0)


def test_agent_wakeups_wake_on_commit_by_default_and_reach_the_members(tmp_path: Path) -> None:
    assert ClusterLayout(base_dir=tmp_path).member_properties(0)["agent.wakeups"] == "commit"
    off = ClusterLayout(base_dir=tmp_path, agent_wakeups="off")
    assert off.member_properties(1)["agent.wakeups"] == "off"
    assert ClusterLayout.from_json(off.to_json()).agent_wakeups == "off"
    with pytest.raises(ConfigError, match="agent_wakeups"):
        ClusterLayout(base_dir=tmp_path, agent_wakeups="yes")


def test_unknown_member_threading_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="member_threading"):
        ClusterLayout(base_dir=tmp_path, member_threading="dedicated")
