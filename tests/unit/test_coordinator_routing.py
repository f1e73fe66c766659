"""Unit tests of pyengine.client.routing.RouteCache against a fake coordinator (httpx.MockTransport)."""

from __future__ import annotations

import logging

import httpx
import pytest

from pyengine.client.routing import (
    CoordinatorUnavailable,
    Route,
    RouteCache,
    StaleRoute,
    UnknownSymbol,
)

EP1 = "0=127.0.0.1:9010,1=127.0.0.1:9011,2=127.0.0.1:9012"
EP2 = "0=127.0.0.1:9020"


class FakeCoordinator:
    def __init__(self) -> None:
        self.version = 1
        self.symbols = {"BTC-USD": {"partition": "p1", "epoch": 1, "ingress_endpoints": EP1}}
        self.up = True
        self.status = 200
        self.requests: list[httpx.Request] = []
        self.on_request = None  # callable run before answering

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.on_request is not None:
            self.on_request(self)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"code": "x"}})
        assert request.url.path == "/v1/routes"
        return httpx.Response(200, json={"version": self.version, "symbols": self.symbols, "partitions": {}})

    def move(self, symbol: str, partition: str, endpoints: str) -> None:
        self.symbols[symbol] = {
            "partition": partition,
            "epoch": self.symbols[symbol]["epoch"] + 1,
            "ingress_endpoints": endpoints,
        }
        self.version += 1


@pytest.fixture
def fake():
    return FakeCoordinator()


@pytest.fixture
def cache(fake):
    client = httpx.Client(transport=httpx.MockTransport(fake.handler))
    c = RouteCache(
        "http://coordinator:1/",
        timeout=1.0,
        client=client,
        retry_delay=0.001,
        miss_refresh_interval=0.0,
    )
    try:
        yield c
    finally:
        c.close()
        client.close()


def test_refresh_and_lookup(cache, fake):
    assert cache.version is None and not cache.loaded
    route = cache.lookup("BTC-USD")  # first lookup refreshes
    assert route == Route("p1", 1, EP1)
    assert route.endpoints == {0: "127.0.0.1:9010", 1: "127.0.0.1:9011", 2: "127.0.0.1:9012"}
    assert cache.version == 1
    n = len(fake.requests)
    assert cache.lookup("BTC-USD") is route  # served from memory
    assert len(fake.requests) == n
    assert str(fake.requests[0].url) == "http://coordinator:1/v1/routes"


def test_unknown_symbol_after_refresh(cache, fake):
    cache.refresh()
    n = len(fake.requests)
    with pytest.raises(UnknownSymbol) as info:
        cache.lookup("DOGE-USD")
    assert info.value.symbol == "DOGE-USD"
    assert isinstance(info.value, KeyError)
    assert len(fake.requests) == n + 1  # it did refresh before giving up


def test_new_symbol_found_by_refresh_on_miss(cache, fake):
    cache.refresh()
    fake.symbols["SOL-USD"] = {"partition": "p2", "epoch": 1, "ingress_endpoints": EP2}
    fake.version += 1
    assert cache.lookup("SOL-USD").partition == "p2"
    assert cache.version == 2


def test_miss_refresh_is_rate_limited(fake):
    client = httpx.Client(transport=httpx.MockTransport(fake.handler))
    with RouteCache("http://c", client=client, miss_refresh_interval=60.0) as c:
        c.refresh()
        for _ in range(5):
            with pytest.raises(UnknownSymbol):
                c.lookup("NOPE")
        assert len(fake.requests) == 1
    client.close()


def test_serves_cached_map_while_coordinator_down(cache, fake, caplog):
    cache.refresh()
    fake.up = False
    with caplog.at_level(logging.WARNING, logger="pyengine.client.routing"):
        assert cache.refresh() is False
    assert any("serving cached routes version 1" in r.getMessage() for r in caplog.records)
    assert cache.lookup("BTC-USD") == Route("p1", 1, EP1)
    assert cache.version == 1 and cache.last_error
    with pytest.raises(CoordinatorUnavailable):
        cache.lookup("NOT-CACHED")
    fake.status = 503
    fake.up = True
    assert cache.refresh() is False
    assert cache.lookup("BTC-USD").epoch == 1
    fake.status = 200
    fake.move("BTC-USD", "p2", EP2)
    assert cache.refresh() is True
    assert cache.lookup("BTC-USD") == Route("p2", 2, EP2)
    assert cache.last_error is None


def test_garbage_answer_keeps_last_good_map(cache, fake):
    cache.refresh()
    fake.symbols = "garbage"
    assert cache.refresh() is False
    assert cache.lookup("BTC-USD").epoch == 1


def test_nothing_cached_and_down(cache, fake):
    fake.up = False
    with pytest.raises(CoordinatorUnavailable):
        cache.lookup("BTC-USD")


def test_invalidate_refreshes_until_epoch(cache, fake):
    cache.refresh()
    calls = {"n": 0}

    def lagging(f: FakeCoordinator) -> None:
        # the coordinator publishes the move only at the 3rd request
        calls["n"] += 1
        if calls["n"] == 3:
            f.move("BTC-USD", "p2", EP2)

    fake.on_request = lagging
    route = cache.invalidate("BTC-USD", min_epoch=2)
    assert route == Route("p2", 2, EP2)
    assert calls["n"] == 3
    # already fresh enough: no request
    assert cache.invalidate("BTC-USD", min_epoch=1) is route
    assert calls["n"] == 3


def test_invalidate_is_bounded(cache, fake):
    cache.refresh()
    n = len(fake.requests)
    with pytest.raises(StaleRoute) as info:
        cache.invalidate("BTC-USD", min_epoch=5)
    assert info.value.epoch == 1 and info.value.min_epoch == 5
    assert len(fake.requests) - n == cache.max_retries
    fake.up = False
    with pytest.raises(StaleRoute):
        cache.invalidate("BTC-USD", min_epoch=5)
    assert cache.lookup("BTC-USD").epoch == 1  # still serving the cache


def test_invalidate_symbol_removed(cache, fake):
    cache.refresh()
    del fake.symbols["BTC-USD"]
    fake.version += 1
    with pytest.raises(UnknownSymbol):
        cache.invalidate("BTC-USD", min_epoch=2)


def test_wait_for_update_uses_long_poll(cache, fake):
    cache.refresh()
    fake.move("BTC-USD", "p2", EP2)
    assert cache.wait_for_update(timeout=3) is True
    last = fake.requests[-1]
    assert last.url.params["wait_version"] == "1"
    assert last.url.params["timeout"] == "3"
    assert cache.version == 2
