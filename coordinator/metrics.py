"""``/metrics`` of the coordinator and of the auth service (Prometheus text format), served on
the same HTTP port as each one's REST API.

The coordinator's: routing version, symbols per partition, partitions, workers, migrations by state.
Migrations are driven elsewhere (the migration driver): it reports them with
``MigrationGauge.set_states`` and these names stay fixed for the alert rules
(docs/operations.md, "Metrics"). Both services also count their HTTP requests by route and status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "matchx"


class MigrationGauge(Collector):
    """Migrations by state, as the migration driver last reported them.

    ``set_states({"freezing": (count, oldest_started_unix_s), ...})``: every state the driver
    knows, including those with count 0, so that a finished state drops to 0 rather than vanishing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, tuple[int, float | None]] = {}

    def set_states(self, states: dict[str, tuple[int, float | None]]) -> None:
        with self._lock:
            self._states = dict(states)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            states = dict(self._states)
        count = GaugeMetricFamily(f"{PREFIX}_coordinator_migrations", "Symbol migrations by state", labels=["state"])
        age = GaugeMetricFamily(f"{PREFIX}_coordinator_migration_oldest_age_seconds",
                                "Age of the oldest migration in each state (0: none)", labels=["state"])
        now = time.time()
        for state, (n, oldest) in sorted(states.items()):
            count.add_metric([state], n)
            age.add_metric([state], now - oldest if n and oldest else 0)
        yield count
        yield age


class RoutingCollector(Collector):
    """The coordinator's map, read from its store at scrape time."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        routes = self.store.routes()
        version = GaugeMetricFamily(f"{PREFIX}_coordinator_routing_version", "Version of the routing table")
        version.add_metric([], routes["version"])
        yield version
        per: dict[str, int] = {p["id"]: 0 for p in self.store.list_partitions()}
        for route in routes["symbols"].values():
            per[route["partition"]] = per.get(route["partition"], 0) + 1
        symbols = GaugeMetricFamily(f"{PREFIX}_coordinator_symbols", "Symbols routed to each partition",
                                    labels=["partition"])
        for partition, n in sorted(per.items()):
            symbols.add_metric([partition], n)
        yield symbols
        parts = GaugeMetricFamily(f"{PREFIX}_coordinator_partitions", "Partitions in the map")
        parts.add_metric([], len(per))
        yield parts


class HttpRequests(Collector):
    """Requests by route template and status class (no per-account or per-symbol labels)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}

    def add(self, method: str, route: str, status: int) -> None:
        key = (method, route, f"{status // 100}xx")
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(f"{PREFIX}_{self.service}_http_requests", f"HTTP requests to the {self.service}",
                                  labels=["method", "route", "code"])
        with self._lock:
            counts = dict(self._counts)
        for (method, route, code), n in sorted(counts.items()):
            fam.add_metric([method, route, code], n)
        yield fam


def install(app: FastAPI, service: str, *collectors: Collector) -> CollectorRegistry:
    """Adds ``GET /metrics`` and request counting to ``app``; returns its registry (one per app)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(namespace=PREFIX, registry=registry)
    requests = HttpRequests(service)
    registry.register(requests)
    for c in collectors:
        registry.register(c)

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        # the route's template (/v1/routes/{symbol}), never the symbol or account itself
        requests.add(request.method, getattr(route, "path", "unmatched"), response.status_code)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics_registry = registry
    return registry
