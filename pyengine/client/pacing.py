"""How long a sync request's caller sleeps before it first looks for its answer (issue #20).

An answer cannot come back sooner than a round trip through the cluster (ingress, the leader's
log, a follower's append, the commit, the service, egress), and that floor moves slowly. Polling
for it before then only costs CPU: each empty look also wakes the client's embedded driver, and a
1 ms wait cost ~0.4 ms of CPU that way, on cores the members need for that very round trip. So
the caller first sleeps a fraction of the fastest recent round trip, then polls as before.
Opt-in (``MatchClient(sync_first_wait=True)``): it saves the client CPU while it waits, but through
a cluster on 2 shared cores the round trip did not move (bench/reports/latency_sync_wait.md).
"""

from __future__ import annotations

from collections import deque

# round trips remembered: the minimum of a few follows a cluster that became faster within a
# few requests (one request at most waits out a first wait longer than its answer took)
HISTORY = 16
# before this many round trips the caller polls from the start, as without a first wait
MIN_SAMPLES = 4
# half the fastest recent round trip: an answer faster than any of the recent ones still finds
# the caller awake by then, and one that takes the usual time is looked for from halfway
FRACTION = 0.5
# a slow cluster (a failover's resends, a loaded machine) must not make a later fast answer wait long
MAX_FIRST_WAIT_US = 2000


class FirstWait:
    """Round trips of sync requests in, the first wait of the next one out (not thread-safe: one
    sync caller at a time uses it, under MatchClient's sync lock)."""

    def __init__(self, history: int = HISTORY, min_samples: int = MIN_SAMPLES, fraction: float = FRACTION,
                 max_us: int = MAX_FIRST_WAIT_US) -> None:
        self._rtts_ns: deque[int] = deque(maxlen=history)
        self._min_samples = min_samples
        self._fraction = fraction
        self._max_us = max_us

    def observe(self, rtt_ns: int) -> None:
        """A sync request's time from its offer to its answer (sent once, answered)."""
        if rtt_ns > 0:
            self._rtts_ns.append(rtt_ns)

    def first_wait_us(self) -> int:
        if len(self._rtts_ns) < self._min_samples:
            return 0
        return min(self._max_us, int(min(self._rtts_ns) * self._fraction / 1000))
