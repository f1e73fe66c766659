"""The checks test_client_follows_leader.py and test_exactly_once.py apply to a client's view of
leader changes can fail: a leader the client never named, or answers that stop while one leads."""

from __future__ import annotations

from tests.integration.test_client_follows_leader import (
    FOLLOW_WITHIN_S,
    SERVED_WITHIN_S,
    missed_leaders,
    unserved_leaders,
)


def test_a_leader_that_held_on_unnamed_by_the_client_is_missed():
    terms = [(100.0, 0), (110.0, 1), (120.0, 2)]
    events = [(100.2, 0), (121.0, 2)]  # member 1's leadership went unseen
    assert missed_leaders(terms, events, since=99.0, until=130.0) == [(110.0, 1)]
    assert missed_leaders(terms, events + [(110.4, 1)], since=99.0, until=130.0) == []


def test_a_leader_deposed_at_once_or_elected_before_the_client_is_not_missed():
    terms = [(100.0, 0), (110.0, 1), (110.0 + FOLLOW_WITHIN_S / 2, 2)]
    events = [(110.0 + FOLLOW_WITHIN_S / 2 + 0.1, 2)]
    assert missed_leaders(terms, events, since=105.0, until=130.0) == []


def test_answers_that_stop_while_a_leader_holds_on_are_unserved():
    terms = [(100.0, 0), (200.0, 1)]
    answers = [101.0, 102.0, 102.0 + SERVED_WITHIN_S * 4]
    assert unserved_leaders(terms, answers) == []  # no election inside the gap: not the client's
    late = [99.0, 100.0 + SERVED_WITHIN_S * 2]
    assert unserved_leaders(terms, late) == [(99.0, 100.0 + SERVED_WITHIN_S * 2, 0)]
    quick = [99.0, 100.0 + SERVED_WITHIN_S / 2]
    assert unserved_leaders(terms, quick) == []
