"""The metrics endpoint of a member (pyengine/node/metrics_port.py, metrics.py): its port is
bound before the member starts (a taken port stops the start), and it is served once the member
is in step, a scrape in between waiting instead of being refused."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from pyengine.node.metrics import MetricsServer
from pyengine.node.metrics_port import ServedLater, listening_socket


def test_a_taken_port_is_refused_before_anything_starts():
    first = listening_socket("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_served_once_in_step_and_a_scrape_before_waits_for_it():
    sock = listening_socket("127.0.0.1", 0)
    ready = threading.Event()
    built: list[float] = []

    def build() -> MetricsServer:
        built.append(time.monotonic())
        return MetricsServer("127.0.0.1", 0, [])

    later = ServedLater(sock, ready, 30.0, build)
    later.start()
    url = f"http://127.0.0.1:{later.port}/metrics"
    try:
        answers: list[httpx.Response] = []
        scrape = threading.Thread(target=lambda: answers.append(httpx.get(url, timeout=20.0)))
        scrape.start()
        time.sleep(0.3)
        assert not built and not answers  # nothing imported or served before the member is in step
        in_step = time.monotonic()
        ready.set()
        scrape.join(20)
        assert answers and answers[0].status_code == 200, answers
        assert "matchx_process_cpu_seconds_total" in answers[0].text
        assert built[0] >= in_step
    finally:
        later.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5.0)


def test_served_at_the_latest_after_its_wait_and_a_stop_before_closes_the_port():
    sock = listening_socket("127.0.0.1", 0)
    later = ServedLater(sock, threading.Event(), 0.2, lambda: MetricsServer("127.0.0.1", 0, []))
    later.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{later.port}/metrics", timeout=20.0).status_code == 200
    finally:
        later.stop()
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    never = ServedLater(sock, threading.Event(), 30.0, lambda: MetricsServer("127.0.0.1", 0, []))
    never.start()
    never.stop()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
