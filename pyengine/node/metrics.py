"""The ``/metrics`` endpoint of a member or worker process (Prometheus text format).

Everything is read at scrape time, never pushed from the log's path: the Java service's counts
and the consensus module's Aeron counters (``io.matchx.cluster.MemberMetrics``, one JPype
crossing per member per scrape), the Python service's command counts
(``pyengine.service.counters``) and the bridge's timing of each log message (``MessageTimer``).
The metric names are listed in docs/operations.md ("Metrics"); alert rules and the dashboard in
ops/monitoring/ use them.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from pyengine.service.counters import ServiceCounters

log = logging.getLogger("matchx.metrics")

PREFIX = "matchx"
ROLES = {-1: "starting", 0: "follower", 1: "candidate", 2: "leader"}
# seconds: a compiled engine applies an order in ~2 us; a 1,024-order bulk takes milliseconds
BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.05, 0.1, 0.25, 1.0)
# how long the leader's scrape waits for its consensus module's member list (follower positions)
MEMBER_QUERY_TIMEOUT_MS = 500


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
    def family(name: str, doc: str, counts: list[int], total: float, labels: dict[str, str]) -> Metric:
        fam = HistogramMetricFamily(name, doc, labels=list(labels))
        cumulative, buckets = 0, []
        for bound, n in zip((*BUCKETS, float("inf")), list(counts), strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        fam.add_metric(list(labels.values()), buckets, total)
        return fam


class MemberCollector(Collector):
    """The metrics of one member (a member process has one, a worker one per partition it hosts)."""

    def __init__(self, partition: str, member_id: int, cluster_id: int, java_service: Any,
                 counters: ServiceCounters, timer: MessageTimer, aeron_dir: str, cluster_dir: Path) -> None:
        import jpype

        self.labels = {"partition": partition, "member": str(member_id)}
        self.cluster_id = cluster_id
        self.java_service = java_service
        self.counters = counters
        self.timer = timer
        self.aeron_dir = aeron_dir
        self.cluster_dir = cluster_dir
        self._metrics = jpype.JClass("io.matchx.cluster.MemberMetrics")
        self._names = [str(n) for n in self._metrics.NAMES]
        self._reader = None
        self._started = time.time()

    def _counters_reader(self) -> Any:
        # The member's driver maps its counters file once it has started; until then Aeron's
        # counters read -1.
        if self._reader is None:
            import jpype

            cnc = jpype.JClass("java.io.File")(self.aeron_dir, "cnc.dat")
            if cnc.exists():
                self._reader = jpype.JClass("io.aeron.cluster.ClusterControl").mapCounters(cnc)
        return self._reader

    def sample(self) -> dict[str, int]:
        values = self._metrics.sample(self.java_service, self._counters_reader(), self.cluster_id)
        return dict(zip(self._names, (int(v) for v in values), strict=True))

    def follower_positions(self) -> dict[int, int]:
        import jpype

        pairs = self._metrics.memberPositions(jpype.JClass("java.io.File")(str(self.cluster_dir)),
                                              MEMBER_QUERY_TIMEOUT_MS)
        flat = [int(v) for v in pairs]
        return dict(zip(flat[0::2], flat[1::2], strict=True))

    def collect(self) -> Iterator[Metric]:
        s = self.sample()
        keys, vals = list(self.labels), list(self.labels.values())

        def gauge(name: str, doc: str, value: float) -> Metric:
            g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=keys)
            g.add_metric(vals, value)
            return g

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=keys)
            c.add_metric(vals, max(0, value))
            return c

        role = s["role"]
        yield gauge("member_role", "Raft role: -1 starting, 0 follower, 1 candidate, 2 leader", role)
        yield gauge("member_is_leader", "1 when this member is its partition's leader", 1 if role == 2 else 0)
        yield gauge("member_leader_id", "The leader this member follows (-1: none known)", s["leader_member_id"])
        yield gauge("leadership_term_id", "The current leadership term", s["leadership_term_id"])
        yield counter("leader_changes", "Leaders this member has seen (the first counts)", s["leader_changes"])
        yield counter("role_changes", "Role changes of this member", s["role_changes"])
        yield counter("elections", "Elections this member's consensus module has run", s["election_count"])
        yield gauge("election_state", "Aeron's election state (17 CLOSED: no election running)", s["election_state"])
        commit, applied = s["commit_position"], s["service_position"]
        yield gauge("commit_position_bytes", "The partition's commit position as this member knows it", commit)
        yield gauge("service_position_bytes", "The log position this member's service has applied", applied)
        yield gauge("apply_lag_bytes", "Committed log this member's service has not applied yet",
                    max(0, commit - applied) if commit >= 0 else 0)
        if role == 2:
            yield self._follower_lag(commit)
        yield counter("snapshots", "Snapshots this member's service has taken", s["service_snapshots"])
        last = s["last_snapshot_epoch_ms"]
        yield gauge("snapshot_last_timestamp_seconds", "When this member last took a snapshot (0: not since start)",
                    last / 1000 if last > 0 else 0)
        yield gauge("snapshot_age_seconds", "Seconds since this member's last snapshot, or since it started",
                    time.time() - (last / 1000 if last > 0 else self._started))
        yield gauge("snapshot_size_bytes", "Size of the last snapshot (-1: none)", s["last_snapshot_bytes"])
        dur = GaugeMetricFamily(f"{PREFIX}_snapshot_duration_seconds",
                                "Time of the last snapshot: the service building it, writing it to the archive",
                                labels=[*keys, "phase"])
        for phase in ("build", "write"):
            ms = s[f"last_snapshot_{phase}_ms"]
            dur.add_metric([*vals, phase], ms / 1000 if ms >= 0 else -1)
        yield dur
        yield gauge("snapshot_position_bytes", "Log position of the last snapshot (-1: none)",
                    s["last_snapshot_position"])
        yield counter("ingress_messages", "Log messages (client commands) applied by the service",
                      s["ingress_messages"])
        yield counter("egress_messages", "Replies offered to clients (the leader's; a follower's go nowhere)",
                      s["egress_messages"])
        yield counter("egress_back_pressure", "Reply offers retried because the client was back-pressured",
                      s["egress_back_pressure"])
        yield counter("egress_dropped", "Replies given up after bounded retries", s["dropped_replies"])
        yield gauge("sessions", "Open client sessions", s["sessions"])
        yield counter("consensus_errors", "Errors counted by the consensus module", s["consensus_errors"])
        yield counter("service_errors", "Errors counted by the service container", s["service_errors"])
        yield counter("client_timeouts", "Client sessions closed by timeout", s["client_timeouts"])
        yield gauge("consensus_max_cycle_seconds", "Longest duty cycle of the consensus module",
                    s["max_cycle_ns"] / 1e9 if s["max_cycle_ns"] >= 0 else -1)
        yield gauge("service_max_cycle_seconds", "Longest duty cycle of the service container",
                    s["service_max_cycle_ns"] / 1e9 if s["service_max_cycle_ns"] >= 0 else -1)
        yield from self._commands(keys, vals)
        yield MessageTimer.family(f"{PREFIX}_service_message_seconds", "Service time per log message",
                                  self.timer.message_counts, self.timer.message_sum, self.labels)
        yield MessageTimer.family(f"{PREFIX}_service_command_seconds",
                                  "Service time per command (each command of a message at the message's mean)",
                                  self.timer.command_counts, self.timer.command_sum, self.labels)

    def _follower_lag(self, commit: int) -> Metric:
        lag = GaugeMetricFamily(f"{PREFIX}_follower_lag_bytes",
                                "The leader's commit position less each follower's appended position",
                                labels=[*self.labels, "follower"])
        try:
            positions = self.follower_positions()
        except Exception:  # noqa: BLE001 - a scrape reports what it can
            log.exception("member list query failed")
            positions = {}
        mine = int(self.labels["member"])
        for follower, position in sorted(positions.items()):
            if follower != mine:
                lag.add_metric([*self.labels.values(), str(follower)], max(0, commit - position))
        return lag

    def _commands(self, keys: list[str], vals: list[str]) -> Iterable[Metric]:
        cmds = CounterMetricFamily(f"{PREFIX}_commands", "Commands applied, by kind and outcome",
                                   labels=[*keys, "kind", "outcome"])
        for (kind, outcome), n in sorted(self.counters.by_kind_outcome().items()):
            cmds.add_metric([*vals, kind, outcome], n)
        yield cmds
        rejects = CounterMetricFamily(f"{PREFIX}_rejects", "Commands the engine rejected, by reason",
                                      labels=[*keys, "kind", "reason"])
        for (kind, reason), n in sorted(self.counters.rejects_by_kind().items()):
            rejects.add_metric([*vals, kind, reason], n)
        yield rejects
        yield _last(CounterMetricFamily, f"{PREFIX}_service_messages", "Log messages the service handled",
                    keys, vals, self.counters.messages)


def _last(cls, name: str, doc: str, keys: list[str], vals: list[str], value: float) -> Metric:
    fam = cls(name, doc, labels=keys)
    fam.add_metric(vals, value)
    return fam


class JvmCollector(Collector):
    """The process's JVM heap (one JVM per process, whatever it hosts)."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        import jpype

        rt = jpype.JClass("java.lang.Runtime").getRuntime()
        total, free, cap = int(rt.totalMemory()), int(rt.freeMemory()), int(rt.maxMemory())
        for name, doc, value in (("jvm_heap_used_bytes", "JVM heap in use", total - free),
                                 ("jvm_heap_committed_bytes", "JVM heap committed", total),
                                 ("jvm_heap_max_bytes", "JVM heap limit", cap)):
            yield _last(GaugeMetricFamily, f"{PREFIX}_{name}", doc, list(self.labels), list(self.labels.values()),
                        value)


class MetricsServer:
    """Serves a registry of collectors on ``host:port`` (prometheus_client's HTTP thread)."""

    def __init__(self, host: str, port: int, collectors: Iterable[Collector]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace=PREFIX, registry=self.registry)
        for c in collectors:
            self.registry.register(c)
        self.host, self.port = host, port
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Raises OSError when the port is taken: the process must not run unobservable."""
        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_address[1]  # the one chosen when asked for port 0
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
