"""A sync caller's wait in ClusterClient.awaitDirect (issue #20): during its first wait it does
not look at egress at all (each look cost CPU and woke the embedded driver), and an event that
arrives meanwhile ends that wait at once. A real ClusterClient (JVM, embedded media driver) in
this process, against a port where no member listens."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from pyengine import jvm
from pyengine.client.match_client import CLIENT_DIR_PREFIX, EVENT_CONNECT_FAILED, split_events
from pyengine.node.localcluster import free_port_base


@pytest.fixture
def cluster_client() -> Iterator:
    def make(connect_timeout_ms: int):
        import jpype

        port = free_port_base(38100)
        client = jpype.JClass("io.matchx.cluster.client.ClusterClient")(
            f"0=127.0.0.1:{port}", f"{CLIENT_DIR_PREFIX}{os.getpid()}-wait-{len(made)}", "127.0.0.1",
            connect_timeout_ms, 1000, jpype.JArray(jpype.JByte)(b""), False)  # the driver on its own thread
        client.wakeDriver(True)
        made.append(client)
        return client

    jvm.start()
    made: list = []
    yield make
    for client in made:
        client.close()


def test_no_look_at_egress_during_the_first_wait(cluster_client) -> None:
    client = cluster_client(connect_timeout_ms=60_000)  # no connect-failed event during the test
    client.beginDirect()
    try:
        # a first wait longer than the timeout: the whole wait sleeps, nothing polled
        assert client.awaitDirect(20, 100, 50_000) is None
        assert client.directLooks() == 0
        # without a first wait the caller polls from the start (spins, yields, parks)
        assert client.awaitDirect(20, 100, 0) is None
        assert client.directLooks() > 20
    finally:
        client.endDirect()


def test_an_event_during_the_first_wait_ends_it(cluster_client) -> None:
    client = cluster_client(connect_timeout_ms=300)  # the poller's connect fails after 0.3 s
    client.beginDirect()
    try:
        started = time.monotonic()
        blob = client.awaitDirect(30_000, 100, 20_000_000)
        waited = time.monotonic() - started
    finally:
        client.endDirect()
    assert blob is not None
    kinds = [kind for kind, _ in split_events(memoryview(blob).tobytes())]
    assert EVENT_CONNECT_FAILED in kinds, kinds
    assert client.directLooks() == 0
    assert waited < 10, waited  # the event's time, not the first wait's 20 s
