"""A ServiceHandler for io.matchx.cluster.CrossingProbe whose message callback is any Python
function: what the crossing benches (bridge_bench.py, single_order_path.py) call from a Java
thread. The JVM must be running before ``service_handler`` is called."""

from __future__ import annotations

from collections.abc import Callable


def service_handler(on_message: Callable[[object, object, object, object], int]):
    """A proxy whose onSessionMessage(session, timestamp, position, length) is ``on_message``; the
    other callbacks do nothing."""
    from jpype import JImplements, JOverride

    @JImplements("io.matchx.cluster.ServiceHandler")
    class Handler:
        @JOverride
        def onStart(self, m, s): pass

        @JOverride
        def onSessionMessage(self, s, t, p, n):
            return on_message(s, t, p, n)

        @JOverride
        def onSessionMessages(self, c, n):
            return 0

        @JOverride
        def onSessionOpen(self, s, t, p): pass

        @JOverride
        def onSessionClose(self, s, t): pass

        @JOverride
        def onTakeSnapshot(self, p):
            return None

        @JOverride
        def onSnapshotWritten(self): pass

        @JOverride
        def onRoleChange(self, r): pass

        @JOverride
        def onTerminate(self): pass

    return Handler()
