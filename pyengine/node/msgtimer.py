"""The service's time per log message and per command, kept for ``/metrics``
(``pyengine/node/metrics.py`` serves it). Apart from the metrics server because the bridge
times every message from the member's start on, and the server's web stack (prometheus_client,
http.server, email, ssl: ~45-65 ms of CPU) is imported only once the member is in step (#17)."""

from __future__ import annotations

import bisect
from typing import Any

# seconds: a compiled engine applies an order in ~2 us; a 1,024-order bulk takes milliseconds
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.05, 0.1, 0.25, 1.0)


class MessageTimer:
    """Histograms of the service's time per log message and per command, kept as plain lists.

    ``observe`` runs on the service thread for every log message, so it only bisects and adds;
    the per-command histogram counts each of a message's ``n`` commands at the message's mean.
    """

    __slots__ = ("message_counts", "message_sum", "command_counts", "command_sum")

    def __init__(self) -> None:
        self.message_counts = [0] * (len(BUCKETS) + 1)
        self.command_counts = [0] * (len(BUCKETS) + 1)
        self.message_sum = 0.0
        self.command_sum = 0.0

    def observe(self, seconds: float, commands: int) -> None:
        self.message_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.message_sum += seconds
        if commands > 0:
            self.command_counts[bisect.bisect_left(BUCKETS, seconds / commands)] += commands
            self.command_sum += seconds

    @staticmethod
    def family(name: str, doc: str, counts: list[int], total: float, labels: dict[str, str]) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        cumulative, buckets = 0, []
        for bound, n in zip((*BUCKETS, float("inf")), list(counts), strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        fam.add_metric(list(labels.values()), buckets, total)
        return fam
