"""A sync request's first wait (pyengine/client/pacing.py): none until a few round trips are known,
then half the fastest recent one, following a cluster that became faster or slower, and capped."""

from __future__ import annotations

from pyengine.client.pacing import HISTORY, MAX_FIRST_WAIT_US, MIN_SAMPLES, FirstWait


def test_no_first_wait_until_a_few_round_trips_are_known() -> None:
    pacing = FirstWait()
    for _ in range(MIN_SAMPLES - 1):
        pacing.observe(1_000_000)
        assert pacing.first_wait_us() == 0
    pacing.observe(1_000_000)
    assert pacing.first_wait_us() == 500


def test_half_the_fastest_recent_round_trip() -> None:
    pacing = FirstWait()
    for rtt_us in (1_400, 900, 2_600, 1_100, 7_000):
        pacing.observe(rtt_us * 1000)
    assert pacing.first_wait_us() == 450
    # one faster answer lowers it at once: a faster cluster costs at most one request a wait
    pacing.observe(300_000)
    assert pacing.first_wait_us() == 150


def test_a_slower_cluster_is_followed_once_the_fast_round_trips_are_old() -> None:
    pacing = FirstWait()
    for _ in range(HISTORY):
        pacing.observe(600_000)
    for _ in range(HISTORY - 1):
        pacing.observe(3_000_000)
    assert pacing.first_wait_us() == 300  # one fast round trip is still remembered
    pacing.observe(3_000_000)
    assert pacing.first_wait_us() == 1_500


def test_capped_and_never_from_nonsense() -> None:
    pacing = FirstWait()
    for _ in range(HISTORY):
        pacing.observe(60_000_000_000)  # a minute: a failover's answer
    assert pacing.first_wait_us() == MAX_FIRST_WAIT_US
    pacing.observe(0)
    pacing.observe(-5)
    assert pacing.first_wait_us() == MAX_FIRST_WAIT_US
