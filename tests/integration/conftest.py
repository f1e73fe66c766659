"""Fixtures for partitioned systems: a coordinator and worker processes started like `matchctl up`,
and RoutedClients. Everything is stopped (by PID) and every /dev/shm directory checked gone after
each test, also when the test fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pyengine.node.localcluster import free_port_base
from pyengine.node.settings import PORTS_PER_PARTITION
from pyengine.node.topology import Topology
from pyengine.ops.system import System
from tests.conftest import next_port_base

EXAMPLE_TOPOLOGY = Path(__file__).resolve().parents[2] / "docs" / "examples" / "topology-2x3.json"


def free_port_bases(count: int) -> list[int]:
    """``count`` port bases whose member ports are free, each at least a partition apart."""
    bases = [next_port_base()]
    while len(bases) < count:
        bases.append(free_port_base(bases[-1] + PORTS_PER_PARTITION))
    return bases


@pytest.fixture
def topology_doc() -> dict:
    """The example 2x3 topology on free ports, with an ephemeral coordinator port.

    Raft timing is relaxed: these tests are about routing, and on two shared, busy cores the
    sub-second failover defaults can elect new leaders for no reason."""
    doc = copy.deepcopy(json.loads(EXAMPLE_TOPOLOGY.read_text()))
    doc["coordinator"]["port"] = 0
    doc["settings"] = {"timeouts": {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 2000,
                                    "election_timeout_ms": 300, "startup_canvass_timeout_ms": 4000}}
    for partition, base in zip(doc["partitions"], free_port_bases(len(doc["partitions"])), strict=True):
        partition["port_base"] = base
    return doc


@pytest.fixture
def make_system(tmp_path: Path):
    """Factory: ``make_system(doc)`` writes the topology and runs ``System.up`` on it."""
    systems: list[System] = []

    def factory(doc: dict, name: str = "system", timeout: float = 50.0) -> System:
        path = tmp_path / f"{name}-topology.json"
        path.write_text(json.dumps(doc))
        directory = tmp_path / name
        systems.append(System(directory))  # recorded first: down() also after a failed up()
        return System.up(path, directory, timeout=timeout)

    yield factory
    for system in systems:
        if not system.topology_file.is_file():
            continue
        system.down()
        assert not system.running(), system.running()
        topo: Topology = system.topology
        for w in topo.workers:
            assert not Path(system.worker_aeron_dir(w.id)).exists()


@pytest.fixture
def make_routed_client():
    from pyengine.client.routed import RoutedClient

    made: list[RoutedClient] = []

    def factory(url: str, **kwargs) -> RoutedClient:
        client = RoutedClient(url, **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        clients = list(client.clients().values())
        client.close()
        for c in clients:
            assert not Path(c.aeron_dir).exists()
