"""The pre-copy as log commands of the service (pyengine/service/migration.py): mig_precopy at
the source while the symbol trades on, mig_preimport at the destination, then a freeze that
exports only what changed since. Two real services side by side in one process: what changes
during the pre-copy arrives, never two owners, aborts before and after the freeze leave the
source exact, snapshots in between carry on."""

from __future__ import annotations

import base64

from migration_cases import abort_after_freeze_is_exact, switch_over
from test_service_migration import BTC, ETH, Part, book, setup, transfer, writable

from pyengine.service.matching import MatchingService
from pyengine.wire.protocol import Status

PRE = {"op": "mig_precopy", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2}
FREEZE = {**PRE, "op": "mig_freeze"}


def precopy(src: Part, dst: Part, chunk: int = 1000) -> dict:
    """mig_prepare, mig_precopy and the pre-copy staged and built at the destination."""
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    pre = src.ok(PRE)
    off = 0
    while off < pre["size"]:
        body = src.ok({"op": "mig_export_chunk", "id": "m1", "offset": off, "length": chunk, "part": "precopy"})
        dst.ok({"op": "mig_import_chunk", "id": "m1", "offset": off, "data": body["data"]})
        off += len(base64.b64decode(body["data"]))
    got = dst.ok({"op": "mig_preimport", "id": "m1", "size": pre["size"], "sha256": pre["sha256"]})
    assert got["precopy"]["sha256"] == pre["sha256"] and got["staged"] == 0
    return pre


def trade_during_precopy(src: Part) -> None:
    """New orders, a cancel, a partial fill and an amend of the book the pre-copy holds."""
    src.place(BTC, "a", "buy", "91", "new-1")
    src.place(BTC, "b", "sell", "120", "new-2")
    src.eng({"op": "cancel", "account": "c", "symbol": BTC, "client_order_id": "o2"})
    st, body = src.eng({"op": "place", "account": "a", "symbol": BTC, "side": "buy", "price": "108", "qty": "0.2",
                        "client_order_id": "taker"})
    assert st == Status.OK and any(e["type"] == "trade" for e in body), body
    st, body = src.eng({"op": "amend", "account": "b", "symbol": BTC, "client_order_id": "o1", "qty": "0.3"})
    assert st == Status.OK, body


def test_changes_during_the_precopy_arrive_and_never_two_owners():
    src, dst = setup()
    pre = precopy(src, dst)
    assert pre["orders"] == len(book(src))
    # the symbol trades on at the source during the pre-copy; the destination holds it inert
    assert writable(src, "precopy") and not writable(dst, "precopy")
    trade_during_precopy(src)
    assert src.place(ETH, "a", "buy", "10")[0] == Status.OK
    at_freeze = book(src)
    a = src.ok(FREEZE)
    assert a["meta"]["precopy"] == pre["sha256"] and a["meta"]["orders"] == len(at_freeze)
    assert a["meta"]["appended"] >= 2 and a["meta"]["removed"] >= 1 and a["meta"]["changed"] >= 1
    assert a["size"] < pre["size"]  # only what changed
    assert not writable(src, "frozen") and not writable(dst, "frozen")
    switch_over(src, dst, a, at_freeze)
    # an order placed during the pre-copy is a duplicate at the destination, and so is one before
    for acct, coid in (("a", "new-1"), ("b", "o1")):
        st, body = dst.place(BTC, acct, "buy", "1", coid)
        assert st == Status.OK and body[0]["duplicate"] is True, (coid, body)
    assert not src.svc.migrations.bases and not dst.svc.migrations.bases


def test_every_precopy_step_is_idempotent():
    src, dst = setup()
    pre = precopy(src, dst)
    h = src.svc.engine.state_hash()
    assert src.ok(PRE) == pre and src.svc.engine.state_hash() == h  # the pre-copy changes nothing
    again = dst.ok({"op": "mig_preimport", "id": "m1", "size": pre["size"], "sha256": pre["sha256"]})
    assert again["precopy"]["sha256"] == pre["sha256"]
    trade_during_precopy(src)
    a = src.ok(FREEZE)
    assert src.ok(FREEZE) == a and src.ok(PRE)["state"] == "frozen"
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    h = dst.svc.engine.state_hash()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    assert dst.svc.engine.state_hash() == h
    dst.ok({"op": "mig_activate", "id": "m1"})
    dst.funds_ok()


def test_abort_after_a_precopy_leaves_the_source_exact():
    """Before the freeze: the source forgets its pre-copy and never stopped trading; after it:
    the source takes back the pre-copy plus the delta, and its engine is as before the freeze."""
    src, dst = setup()
    h = src.svc.engine.state_hash()
    precopy(src, dst)
    assert src.svc.engine.state_hash() == h
    body = src.ok({"op": "mig_restore", "id": "m1"})
    assert body["state"] == "released" and src.svc.owned[BTC] == 1
    assert src.ok({"op": "mig_restore", "id": "m1"})["state"] == "released"
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert writable(src, "released") and not src.svc.migrations.bases and not dst.svc.migrations.bases
    src.funds_ok()
    dst.funds_ok()

    src, dst = setup()
    precopy(src, dst)
    trade_during_precopy(src)
    abort_after_freeze_is_exact(src, dst, FREEZE)


def test_snapshots_during_the_precopy_carry_on():
    """Members restarted from snapshots taken after the pre-copy (the source's baseline and the
    destination's built pre-copy are made again from the pre-copy's bytes) and after the freeze."""
    src, dst = setup()
    precopy(src, dst, chunk=700)

    def restart() -> None:
        for p in (src, dst):
            fresh = MatchingService()
            fresh.restore(p.svc.snapshot())
            assert fresh.snapshot() == p.svc.snapshot()
            p.svc = fresh

    restart()
    trade_during_precopy(src)
    at_freeze = book(src)
    a = src.ok(FREEZE)
    restart()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"], chunk=300)
    assert book(dst) == at_freeze
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    src.funds_ok()
    dst.funds_ok()
