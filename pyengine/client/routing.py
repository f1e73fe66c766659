"""Client-side route cache for the trading SDK: symbol -> partition -> ingress endpoints.

::

    cache = RouteCache("http://127.0.0.1:8080")
    route = cache.lookup("BTC-USD")      # Route(partition='p1', epoch=3,
                                         #       ingress_endpoints='0=h:9010,1=h:9011,2=h:9012')
    ...
    # a node answered MOVED(symbol, epoch=4): the map changed under us
    route = cache.invalidate("BTC-USD", min_epoch=4)

The cache keeps the last good routing table in memory.  When the coordinator cannot be
reached (down, timeout, 5xx, garbage) it logs a warning and keeps serving that table.
It is thread-safe: lookups never block on the network unless the symbol is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("pyengine.client.routing")

_WARN_INTERVAL = 5.0  # seconds between repeated "coordinator unreachable" warnings


class RoutingError(Exception):
    """Base class of route-cache errors."""


class UnknownSymbol(RoutingError, KeyError):
    """The symbol is not in the coordinator's map (checked with a fresh refresh)."""

    def __init__(self, symbol: str) -> None:
        super().__init__(symbol)
        self.symbol = symbol

    def __str__(self) -> str:
        return f"unknown symbol {self.symbol!r}"


class CoordinatorUnavailable(RoutingError):
    """The coordinator cannot be reached and the cached map cannot answer."""


class StaleRoute(RoutingError):
    """``invalidate`` could not obtain a route with the required epoch in time."""

    def __init__(self, symbol: str, min_epoch: int, epoch: int | None) -> None:
        super().__init__(f"route of {symbol!r} still at epoch {epoch}, wanted >= {min_epoch}")
        self.symbol = symbol
        self.min_epoch = min_epoch
        self.epoch = epoch


@dataclass(frozen=True, slots=True)
class Route:
    partition: str
    epoch: int
    ingress_endpoints: str  # Aeron form "0=host:port,1=host:port,2=host:port"

    @property
    def endpoints(self) -> dict[int, str]:
        """``ingress_endpoints`` as ``{member_id: "host:port"}``."""
        out: dict[int, str] = {}
        for part in filter(None, self.ingress_endpoints.split(",")):
            member, _, endpoint = part.partition("=")
            out[int(member)] = endpoint
        return out


def _parse_table(data: Any) -> tuple[int, dict[str, Route]]:
    if not isinstance(data, Mapping):
        raise ValueError("routing table is not an object")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("routing table has no integer version")
    routes: dict[str, Route] = {}
    for symbol, entry in data["symbols"].items():
        routes[symbol] = Route(
            partition=str(entry["partition"]),
            epoch=int(entry["epoch"]),
            ingress_endpoints=str(entry["ingress_endpoints"]),
        )
    return version, routes


class RouteCache:
    """Route cache backed by the coordinator's ``GET /v1/routes``.

    ``coordinator_url``: base URL, e.g. ``http://127.0.0.1:8700``.
    ``timeout``: seconds for one request to the coordinator.
    ``max_retries`` / ``retry_delay``: bound of :meth:`invalidate` (refresh attempts, first
    back-off delay in seconds, doubled per attempt up to 1 s).
    ``miss_refresh_interval``: a lookup of a symbol missing from the cache refreshes the
    map unless the map was fetched less than this many seconds ago (protects the
    coordinator from loops on bad symbols); call :meth:`refresh` to force one.
    ``client``: an ``httpx.Client`` to use (e.g. for tests); closed by :meth:`close` only
    if the cache created it.
    """

    def __init__(
        self,
        coordinator_url: str,
        timeout: float = 2.0,
        *,
        max_retries: int = 5,
        retry_delay: float = 0.05,
        miss_refresh_interval: float = 0.5,
        client: httpx.Client | None = None,
    ) -> None:
        self.coordinator_url = coordinator_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.miss_refresh_interval = miss_refresh_interval
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)
        self._refresh_lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self.version: int | None = None  # version of the cached table; None: nothing yet
        self.last_refresh: float | None = None  # monotonic time of the last good fetch
        self.last_error: str | None = None  # why the last refresh failed, None if it worked
        self._last_warning = float("-inf")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> RouteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ fetching

    @property
    def loaded(self) -> bool:
        """True once a routing table was fetched successfully."""
        return self.version is not None

    def routes(self) -> dict[str, Route]:
        """A snapshot copy of the cached map."""
        return dict(self._routes)

    def refresh(self) -> bool:
        """Fetch the whole table.  True if it was fetched; False if the coordinator is
        unreachable, in which case the last good table stays in use (warning logged)."""
        return self._fetch({}, self.timeout)

    def wait_for_update(self, timeout: float = 30.0) -> bool:
        """Long-poll: return once the coordinator has a version newer than the cached one
        (the cache is then updated) or after ``timeout`` seconds.  True if the cached
        version changed.  If the coordinator is unreachable it sleeps ``min(timeout, 1)``
        seconds and returns False, so ``while True: cache.wait_for_update()`` is a safe
        background refresher."""
        if self.version is None:
            return self.refresh()
        before = self.version
        params = {"wait_version": str(before), "timeout": str(timeout)}
        if not self._fetch(params, timeout + self.timeout):
            time.sleep(min(timeout, 1.0))  # coordinator down: no hot loop in callers
        return self.version != before

    def _fetch(self, params: dict[str, str], timeout: float) -> bool:
        with self._refresh_lock:
            try:
                resp = self._client.get(f"{self.coordinator_url}/v1/routes", params=params, timeout=timeout)
                resp.raise_for_status()
                version, routes = _parse_table(resp.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self._failed(exc)
                return False
            if self.version is not None and version < self.version:
                log.warning(
                    "coordinator routing version went back from %d to %d (restored db?)",
                    self.version,
                    version,
                )
            if self.last_error is not None:
                log.info("coordinator reachable again; routing version %d", version)
            self._routes = routes
            self.version = version
            self.last_refresh = time.monotonic()
            self.last_error = None
            return True

    def _failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            level = logging.WARNING
        if self.version is None:
            log.log(
                level, "coordinator %s unreachable (%s); no routes cached yet", self.coordinator_url, self.last_error
            )
        else:
            log.log(
                level,
                "coordinator %s unreachable (%s); serving cached routes version %d",
                self.coordinator_url,
                self.last_error,
                self.version,
            )

    # ------------------------------------------------------------------ lookups

    def lookup(self, symbol: str) -> Route:
        """The route of ``symbol``.  From the cache if present; otherwise the map is
        refreshed (see ``miss_refresh_interval``).  Raises :class:`UnknownSymbol` if the
        refreshed map does not have it, :class:`CoordinatorUnavailable` if it is not
        cached and the coordinator cannot be asked."""
        route = self._routes.get(symbol)
        if route is not None:
            return route
        recent = self.last_refresh is not None and time.monotonic() - self.last_refresh < self.miss_refresh_interval
        if not recent and not self.refresh():
            raise CoordinatorUnavailable(
                f"symbol {symbol!r} is not cached and the coordinator is unreachable ({self.last_error})"
            )
        route = self._routes.get(symbol)
        if route is None:
            raise UnknownSymbol(symbol)
        return route

    def invalidate(self, symbol: str, min_epoch: int) -> Route:
        """A node answered MOVED for ``symbol`` with epoch ``min_epoch``: refresh until the
        cached route has ``epoch >= min_epoch`` (at most ``max_retries`` refreshes, with
        back-off) and return it.  Raises :class:`UnknownSymbol` if a refreshed map no longer
        has the symbol, :class:`StaleRoute` if the epoch is not reached in time."""
        route = self._routes.get(symbol)
        if route is not None and route.epoch >= min_epoch:
            return route
        delay = self.retry_delay
        for attempt in range(max(1, self.max_retries)):
            if attempt:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            if not self.refresh():
                continue
            route = self._routes.get(symbol)
            if route is None:
                raise UnknownSymbol(symbol)
            if route.epoch >= min_epoch:
                return route
        route = self._routes.get(symbol)
        raise StaleRoute(symbol, min_epoch, None if route is None else route.epoch)
