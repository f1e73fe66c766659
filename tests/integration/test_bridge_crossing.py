"""A Java thread calling the bridge keeps one Python thread state across calls, and still lets the
GIL go between them (pyengine/node/bridge.py, pin_thread_state). Without the pin each crossing
created and deleted a thread state (~30 us of CPU per log message on every member,
bench/reports/single_order_path.md). Real JVM, real ServiceBridge, called from a Java thread
(io.matchx.cluster.CrossingProbe) as Aeron's service thread calls it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from pyengine import jvm

CALLS = 300


class RecordingService:
    """Stands in for MatchingService: records, per call, how many calls this thread state has
    seen (a ``threading.local`` lives in the thread state, so it counts up only if the state is
    kept) and which OS thread made it."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.seen: list[tuple[int, int]] = []
        self.counters = SimpleNamespace(last_commands=0)

    def on_message(self, session_id, timestamp, position, message):
        self.local.calls = getattr(self.local, "calls", 0) + 1
        self.seen.append((threading.get_ident(), self.local.calls))
        return []


def bridge_over(service):
    jvm.start()
    import jpype

    from pyengine.node.bridge import ServiceBridge

    buffers = [jpype.JClass("java.nio.ByteBuffer").allocateDirect(1 << 16) for _ in range(2)]
    bridge = ServiceBridge(service)
    bridge.attach(SimpleNamespace(inputBuffer=lambda: buffers[0], outputBuffer=lambda: buffers[1]))
    return bridge


def test_a_java_thread_keeps_its_thread_state_across_crossings_and_releases_the_gil():
    service = RecordingService()
    bridge = bridge_over(service)
    import jpype

    probe = jpype.JClass("io.matchx.cluster.CrossingProbe")
    result = jpype.JArray(jpype.JDouble)(1)
    thread = probe.start(bridge, CALLS, result)  # a Java thread calls onSessionMessage CALLS times
    # this thread keeps running Python meanwhile: if a pinned state kept the GIL after a call,
    # neither side could go on and the deadline below would fail the test
    # (the Java thread may finish before this loop first looks: no count of turns is asserted)
    deadline = time.monotonic() + 60
    while thread.isAlive():
        assert time.monotonic() < deadline, f"the Java thread made {len(service.seen)} of {CALLS} calls"
    assert len(service.seen) == CALLS
    assert len({ident for ident, _ in service.seen}) == 1  # one Java thread
    # one thread state for all of them: its thread-local count went 1, 2, ..., CALLS
    assert [calls for _, calls in service.seen] == list(range(1, CALLS + 1))


def test_every_new_java_thread_gets_its_own_kept_state():
    service = RecordingService()
    bridge = bridge_over(service)
    import jpype

    probe = jpype.JClass("io.matchx.cluster.CrossingProbe")
    for _ in range(2):
        probe.measure(bridge, 50)  # a new Java thread each time: 50 warm-up calls, 50 timed
    idents = [ident for ident, _ in service.seen]
    first, second = service.seen[:100], service.seen[100:]
    assert len(idents) == 200
    assert [c for _, c in first] == list(range(1, 101))
    assert [c for _, c in second] == list(range(1, 101))  # nothing carried over from the first thread
