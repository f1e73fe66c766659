"""The SDK says so when it cannot reach the cluster: a WARNING an operator sees (not DEBUG),
rate-limited while it retries, and the attempts counted. A real MatchClient (its JVM and
embedded media driver in this process) against a port where no member listens."""

from __future__ import annotations

import logging
import time

from pyengine.client import match_client
from pyengine.node.localcluster import free_port_base


def test_failed_connects_are_warned_about_once_per_interval(make_client, caplog, monkeypatch):
    monkeypatch.setattr(match_client, "CONNECT_WARNING_INTERVAL_S", 2.0)
    port = free_port_base(41000)
    with caplog.at_level(logging.WARNING, logger="matchx.client"):
        client = make_client(f"0=127.0.0.1:{port}", connect_timeout_ms=200)
        deadline = time.monotonic() + 60
        started = time.monotonic()
        while client.stats.connect_failures < 4 or time.monotonic() - started < 3.0:
            assert time.monotonic() < deadline, f"only {client.stats.connect_failures} failed connects in 60 s"
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        failures = client.stats.connect_failures
    warnings = [r for r in caplog.records if "cannot connect to the cluster" in r.getMessage()]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    assert "1 failed attempts so far" in warnings[0].getMessage()
    assert "timeout" in warnings[0].getMessage().lower()  # Aeron's reason travels with it
    # one per 2 s interval (plus the first), not one per attempt
    assert len(warnings) <= elapsed / 2.0 + 1 < failures, (len(warnings), failures, elapsed)
    assert not client.connected and client.last_error
