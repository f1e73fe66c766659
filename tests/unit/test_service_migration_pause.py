"""The destination's import at the freeze after a pre-copy in pieces walks only what changed
(pyengine/engine/migration_shadow.py): a worker hosts a member of every partition in one
interpreter, and a walk of the whole book in that one log message held the other members up.
Where the import still goes order by order (the destination changed since the pieces), it lets
the worker's other members run (``let_others_run``), with the same result as without the
pauses. The pieces built before the import are kept out of the cyclic collector, and an abort
unlinks them."""

from __future__ import annotations

import base64
import gc
import sys
import threading

import pytest
from test_service_migration import BTC, Part, book, setup, transfer

from pyengine.engine import Engine
from pyengine.engine.migration import PAUSE_EVERY
from pyengine.engine.migration_pieces import pieces_sha
from pyengine.engine.migration_shadow import extend_shadow, import_pieces
from pyengine.service import migration as service_migration

ORDERS = 5 * PAUSE_EVERY


def deep_book(src: Part) -> None:
    eng = src.svc.engine
    for a in "abc":
        for asset, amount in (("USDT", "100000000"), ("BTC", "1000000")):
            eng.apply({"op": "deposit", "account": a, "asset": asset, "amount": amount, "tx_id": f"deep-{a}{asset}"}, 1)
    for i in range(ORDERS):
        buy = i % 2 == 1
        ev = eng.apply({"op": "place", "account": "abc"[i % 3], "symbol": BTC, "side": "buy" if buy else "sell",
                        "price": str(80 - i % 40 if buy else 120 + i % 40), "qty": "0.01",
                        "client_order_id": f"d{i}"}, 2)
        assert ev[0]["type"] == "accepted", ev


def precopy_and_freeze(src: Part, dst: Part) -> tuple[dict, list[tuple]]:
    """The pre-copy in pieces of 2,000 orders, one more order, the freeze: (its answer, the
    source's book at the freeze)."""
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    k = 0
    while True:
        pre = src.ok({"op": "mig_precopy", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2, "piece": k,
                      "max_orders": 2000})
        transfer_piece(src, dst, pre, k)
        if pre["last"]:
            break
        k += 1
    src.place(BTC, "a", "buy", "81", "after-the-pieces")
    at_freeze = book(src)
    return src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2}), at_freeze


def transfer_piece(src: Part, dst: Part, pre: dict, k: int) -> None:
    off = 0
    while off < pre["size"]:
        body = src.ok({"op": "mig_export_chunk", "id": "m1", "offset": off, "length": 60000, "part": "precopy",
                       "piece": k})
        dst.ok({"op": "mig_import_chunk", "id": "m1", "offset": off, "data": body["data"]})
        off += len(base64.b64decode(body["data"]))
    dst.ok({"op": "mig_preimport", "id": "m1", "piece": k, "size": pre["size"], "sha256": pre["sha256"]})


def test_the_import_walks_only_what_changed_since_the_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A book of 5 x PAUSE_EVERY orders and one order placed after the pieces: the import at the
    freeze never pauses (a walk of PAUSE_EVERY orders would), and the other member runs."""
    src, dst = setup()
    deep_book(src)
    frozen, at_freeze = precopy_and_freeze(src, dst)
    # the other partition's member: a thread that needs the interpreter all the time
    ran = [0]
    stop = threading.Event()

    def other_member() -> None:
        while not stop.is_set():
            ran[0] += 1

    seen: list[int] = []  # how far the other member had come at each of the import's pauses
    real = service_migration.let_others_run

    def pause() -> None:
        seen.append(ran[0])
        real()

    monkeypatch.setattr(service_migration, "let_others_run", pause)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the other thread asks for the interpreter at once
    other = threading.Thread(target=other_member, daemon=True)
    other.start()
    try:
        transfer(src, dst, "m1", frozen["meta"], frozen["size"], frozen["sha256"], chunk=60000)
    finally:
        stop.set()
        other.join()
        sys.setswitchinterval(interval)
    # before: three walks of the book (compose, check, adopt), each pausing every PAUSE_EVERY orders
    assert seen == [], len(seen)
    assert ran[0] > 0, "the other member never ran"
    dst.ok({"op": "mig_activate", "id": "m1"})
    assert book(dst) == at_freeze
    dst.funds_ok()


def test_an_import_order_by_order_with_pauses_builds_what_one_without_builds() -> None:
    """The pieces built against another engine (a member restored from a snapshot: the same
    state, other objects) make the import go order by order, pausing; it ends where the import
    of pieces built against the engine itself ends."""
    src, dst = setup()
    deep_book(src)
    frozen, at_freeze = precopy_and_freeze(src, dst)
    blob = bytes(src.svc.migrations.blobs["m1"])
    twin = setup()[1]
    twin.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    calls = [0]

    def count() -> None:
        calls[0] += 1

    migs = dst.svc.migrations
    sha = pieces_sha(migs.recs["m1"]["precopy"]["pieces"])
    for eng, against, pause in ((dst.svc.engine, Engine.restore(dst.svc.engine.snapshot()), count),
                                (twin.svc.engine, twin.svc.engine, None)):
        shadow = None
        for piece in migs.pieces["m1"]:
            shadow = extend_shadow(against, shadow, piece)
        assert shadow is not None
        import_pieces(eng, shadow, sha, blob, pause)
    # two walks of the book (compose, adopt), each pausing every PAUSE_EVERY orders
    assert calls[0] >= 2 * (ORDERS // PAUSE_EVERY) - 2
    assert book(dst) == book(twin) == at_freeze
    assert dst.svc.engine.state_hash() == twin.svc.engine.state_hash()
    assert frozen["meta"]["orders"] == len(at_freeze)


def test_a_discarded_precopy_is_unlinked_for_reference_counting() -> None:
    """The pieces built at the destination are kept out of the cyclic collector (``gc.freeze``):
    an abort undoes their links, or their memory would never come back."""
    src, dst = setup()
    deep_book(src)
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    for k in range(2):
        pre = src.ok({"op": "mig_precopy", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2, "piece": k,
                      "max_orders": 2000})
        transfer_piece(src, dst, pre, k)
    shadow = dst.svc.migrations._shadows["m1"]
    some = list(shadow.orders.values())[:100]
    assert len(some) == 100 and all(o.lvl is not None for o in some)
    assert gc.get_freeze_count() > 0
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert not shadow.orders and all(o.lvl is None and o.nxt is None and o.prev is None for o in some)
    assert not shadow.accts
    src.ok({"op": "mig_restore", "id": "m1"})
    dst.funds_ok()
    src.funds_ok()
