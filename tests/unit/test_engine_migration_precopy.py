"""The pre-copy (pyengine/engine/migration.py): the symbol exported while it trades, then at the
freeze only what changed since (``export_delta``); the destination's book made of the pre-copy
and the delta equals the source's at the freeze, in the same state a whole export would leave,
and an abort gives the source back exactly. Runs compiled and plain (MATCHX_PURE_ENGINE=1)."""

from __future__ import annotations

import pytest
from migration_cases import check_as_whole, freeze_beside_whole, restored_exactly, sha
from test_engine_migration import ACCTS, Flow, X, Y, dest, holds_in, run, source

from pyengine.engine.migration import (
    MigrationError,
    baseline_of,
    book_rows,
    build_shadow,
    export_delta,
    funds_problems,
    import_delta,
    import_symbol,
    precopy_symbol,
)


@pytest.mark.parametrize("seed", range(10))
def test_delta_after_a_precopy_gives_the_book_and_state_of_a_whole_export(seed):
    """Between the pre-copy and the freeze the flow places, fills, cancels and amends (up: the
    order loses its place; down: it keeps it); the destination ends exactly where a whole export
    taken at the freeze would have left it (same engine state hash), and the source too."""
    src, dst = source(), dest()
    flow = Flow(500 + seed, (X, Y))
    run(src, flow, 300 + 20 * seed)
    base, meta0, bl = precopy_symbol(src, X)
    assert baseline_of(base) == bl
    shadow = build_shadow(base, dst.dedup_window)  # at the destination, while X trades
    run(src, flow, 30 + 10 * seed, ts=5_000)  # the changes during the pre-copy
    fz = freeze_beside_whole(src, dst, lambda: export_delta(src, X, bl, sha(base)))
    assert len(fz.delta) < len(fz.whole) or fz.meta["removed"] + fz.meta["appended"] > len(fz.at_freeze) // 2
    check_as_whole(src, dst, fz, import_delta(dst, shadow, sha(base), fz.delta), flow)


def test_amend_up_then_down_moves_the_order_to_its_queue_tail():
    """An order that lost its place (amend up) and then went back to its old quantity (amend
    down, which keeps the new place) is where the source has it, not where the pre-copy had it."""
    src, dst = source(), dest()
    ids = []
    for i in range(3):
        ev = src.apply({"op": "place", "account": ACCTS[i], "symbol": X, "side": "buy", "price": "99",
                        "qty": "1", "client_order_id": f"q{i}"}, 10 + i)
        ids.append(ev[0]["order_id"])
    base, _m, bl = precopy_symbol(src, X)
    shadow = build_shadow(base, dst.dedup_window)
    for qty in ("2", "1"):
        ev = src.apply({"op": "amend", "account": ACCTS[0], "symbol": X, "client_order_id": "q0", "qty": qty}, 20)
        assert ev[0]["type"] == "amended", ev
    at_freeze = book_rows(src, X)
    assert [r[0] for r in at_freeze] == [ids[1], ids[2], ids[0]]
    delta, meta = export_delta(src, X, bl, sha(base))
    assert meta["appended"] == 1 and meta["removed"] == 1
    import_delta(dst, shadow, sha(base), delta)
    assert book_rows(dst, X) == at_freeze


def test_abort_after_a_delta_freeze_restores_the_source_exactly():
    src = source()
    flow = Flow(11, (X, Y))
    run(src, flow, 400)
    base, _m, bl = precopy_symbol(src, X)
    run(src, flow, 80, ts=7_000)
    h = src.state_hash()
    delta, meta = export_delta(src, X, bl, sha(base))
    assert src.state_hash() != h and book_rows(src, X) == []
    # the source takes the symbol back the way the destination would have taken it
    restored_exactly(src, import_delta(src, build_shadow(base, src.dedup_window), sha(base), delta), meta, h, flow)


def test_a_delta_that_does_not_fit_changes_nothing():
    src, dst = source(), dest()
    flow = Flow(12, (X, Y))
    run(src, flow, 300)
    base, _m, bl = precopy_symbol(src, X)
    run(src, flow, 50, ts=6_000)
    delta, _meta = export_delta(src, X, bl, sha(base))
    h = dst.state_hash()
    with pytest.raises(MigrationError, match="another pre-copy"):
        import_delta(dst, build_shadow(base, dst.dedup_window), "0" * 64, delta)
    with pytest.raises(MigrationError, match="needs its pre-copy"):
        import_symbol(dst, delta)
    # a pre-copy other than the one the delta was made against: the composed book is not the source's
    other = source()
    run(other, Flow(13, (X, Y)), 300)
    obase, _m2, _bl2 = precopy_symbol(other, X)
    with pytest.raises(MigrationError):
        import_delta(dst, build_shadow(obase, dst.dedup_window), sha(base), delta)
    assert dst.state_hash() == h
    # the right pre-copy still fits (a failed import leaves the engine alike, its shadow not)
    import_delta(dst, build_shadow(base, dst.dedup_window), sha(base), delta)
    assert funds_problems(dst, holds_in(_meta)) == []


def test_delta_export_is_deterministic():
    a, b = source(), source()
    for e in (a, b):
        run(e, Flow(14, (X, Y)), 300)
    pa, pb = precopy_symbol(a, X), precopy_symbol(b, X)
    assert pa[0] == pb[0]
    for e in (a, b):
        run(e, Flow(15, (X, Y)), 60, ts=3_000)
    # one baseline as the pre-copy returned it, one read back from its bytes (after a restart)
    assert export_delta(a, X, pa[2], sha(pa[0]))[0] == export_delta(b, X, baseline_of(pb[0]), sha(pb[0]))[0]
