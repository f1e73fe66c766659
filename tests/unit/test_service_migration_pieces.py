"""The pre-copy in pieces as log commands of the service (pyengine/service/migration.py):
``mig_precopy`` with ``piece`` at the source, one piece per log message while the symbol trades
between them, ``mig_preimport`` with ``piece`` at the destination, then a freeze that walks only
what changed. Two real services side by side in one process: the destination's book, holds and
duplicates equal the source's at the freeze, never two owners, repeats answer alike, aborts
before and after the freeze leave the source exact, members restarted from snapshots between
pieces make the same freeze."""

from __future__ import annotations

import base64
import zlib

from migration_cases import abort_after_freeze_is_exact, restarted, switch_over
from test_service_migration import BTC, ETH, Part, book, setup, transfer, writable

from pyengine.wire.protocol import Status

PRE = {"op": "mig_precopy", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2, "max_orders": 4}
FREEZE = {"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2}


def piece_in(dst: Part, pre: dict, chunked: bool = False) -> dict:
    raw = base64.b64decode(pre["data"])
    stream = zlib.compress(raw, 1)
    imp = {"op": "mig_preimport", "id": "m1", "piece": pre["piece"], "size": pre["size"], "sha256": pre["sha256"],
           "encoding": "zlib"}
    if not chunked:
        return dst.ok({**imp, "data": base64.b64encode(stream).decode()})
    for off in range(0, len(stream), 100):
        dst.ok({"op": "mig_import_chunk", "id": "m1", "offset": off,
                "data": base64.b64encode(stream[off:off + 100]).decode()})
    return dst.ok(imp)


def pieces(src: Part, dst: Part, between=None, first: int = 0) -> list[dict]:
    """Every piece from ``first`` on, each added at the destination; ``between(k)`` after piece k."""
    if first == 0:
        dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    out = []
    k = first
    while True:
        pre = src.ok({**PRE, "piece": k})
        assert pre["piece"] == k and pre["state"] == "precopied"
        got = piece_in(dst, pre, chunked=k % 2 == 1)
        assert len(got["precopy"]["pieces"]) == k + 1 and got["staged"] == 0
        out.append(pre)
        if pre["last"]:
            return out
        if between is not None:
            between(src, k)
        k += 1


def trade(src: Part, k: int) -> None:
    """Between pieces: a new order, a cancel of a pre-copied one, a fill, an amend."""
    assert src.place(BTC, "abc"[k % 3], "buy", str(91 - k % 3), f"new-{k}")[0] == Status.OK
    if k < 3:  # bids of the first pieces (exported best bid first): o15 at 91, o17 at 89, o23 at 90
        j = (15, 17, 23)[k]
        st, body = src.eng({"op": "cancel", "account": "abc"[j % 3], "symbol": BTC, "client_order_id": f"o{j}"})
        assert st == Status.OK and body[0]["type"] == "cancelled", body
    if k == 1:
        st, body = src.eng({"op": "place", "account": "a", "symbol": BTC, "side": "buy", "price": "108",
                            "qty": "0.2", "client_order_id": "taker"})
        assert st == Status.OK and any(e["type"] == "trade" for e in body), body
    if k == 2:
        st, body = src.eng({"op": "amend", "account": "b", "symbol": BTC, "client_order_id": "o1", "qty": "0.3"})
        assert st == Status.OK, body
    assert src.place(ETH, "a", "buy", "10")[0] == Status.OK  # the other symbol trades too


def test_changes_between_pieces_arrive_exactly_and_never_two_owners():
    src, dst = setup()
    got = pieces(src, dst, between=trade)
    assert len(got) >= 4 and sum(p["orders"] for p in got) >= 29
    assert writable(src, "precopy") and not writable(dst, "precopy")
    at_freeze = book(src)
    a = src.ok(FREEZE)
    meta = a["meta"]
    assert meta["orders"] == len(at_freeze) and meta["pieces"] == len(got) and meta["ldigest"] == 1
    assert meta["appended"] >= 2 and meta["removed"] >= 2 and meta["changed"] >= 1
    assert not writable(src, "frozen") and not writable(dst, "frozen")
    switch_over(src, dst, a, at_freeze)
    # orders placed before and between the pieces are duplicates at the destination; a
    # pre-copied order cancelled between pieces is not open there
    for acct, coid in (("a", "new-0"), ("b", "o1"), ("a", "o3")):
        st, body = dst.place(BTC, acct, "buy", "1", coid)
        assert st == Status.OK and body[0]["duplicate"] is True, (coid, body)
    assert not {"o15", "o17", "o23"} & {r[7] for r in book(dst)}
    assert not src.svc.migrations.pieces and not dst.svc.migrations.pieces


def test_every_piece_is_idempotent_and_out_of_order_pieces_are_refused():
    src, dst = setup()
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    h = src.svc.engine.state_hash()
    p0 = src.ok({**PRE, "piece": 0})
    assert src.ok({**PRE, "piece": 0}) == p0 and src.svc.engine.state_hash() == h
    st, body = src.admin({**PRE, "piece": 2})
    assert st == Status.ERROR and "piece 2 asked, 1 taken" in body["error"]
    st, body = src.admin({**PRE, "piece": -1})
    assert st == Status.ERROR
    st, body = src.admin({**PRE, "piece": 1, "max_orders": 0})
    assert st == Status.ERROR and "max_orders" in body["error"]
    # a whole pre-copy of the same migration is refused now, and the other way round
    st, body = src.admin({k: v for k, v in PRE.items() if k != "max_orders"})
    assert st == Status.ERROR and "pre-copy" in body["error"], body
    # the chunked export of a piece gives its inline bytes
    chunk = src.ok({"op": "mig_export_chunk", "id": "m1", "offset": 0, "length": 65536, "part": "precopy",
                    "piece": 0})
    assert chunk["data"] == p0["data"]
    st, body = dst.admin({"op": "mig_preimport", "id": "m1", "piece": 1, "size": 1, "sha256": "x"})
    assert st == Status.ERROR and "piece 0 expected" in body["error"]
    bad = {"op": "mig_preimport", "id": "m1", "piece": 0, "size": p0["size"], "sha256": "0" * 64,
           "data": p0["data"]}
    st, body = dst.admin(bad)
    assert st == Status.ERROR and "send it again" in body["error"]
    one = piece_in(dst, p0)
    assert piece_in(dst, p0) == one  # a repeat
    rest = pieces(src, dst, first=1)
    at_freeze = book(src)
    a = src.ok(FREEZE)
    assert src.ok(FREEZE) == a and src.ok({**PRE, "piece": 0})["state"] == "frozen"
    assert a["meta"]["pieces"] == 1 + len(rest)
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    hd = dst.svc.engine.state_hash()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    assert dst.svc.engine.state_hash() == hd and book(dst) == at_freeze
    dst.ok({"op": "mig_activate", "id": "m1"})
    dst.funds_ok()


def test_abort_between_pieces_and_after_the_freeze_leaves_the_source_exact():
    src, dst = setup()
    h = src.svc.engine.state_hash()
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    for k in range(2):
        piece_in(dst, src.ok({**PRE, "piece": k}))
    assert src.svc.engine.state_hash() == h and src.svc.engine.symbols[BTC].dirty is not None
    assert src.ok({"op": "mig_restore", "id": "m1"})["state"] == "released"
    assert src.svc.engine.symbols[BTC].dirty is None and src.svc.owned[BTC] == 1
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert writable(src, "released") and not src.svc.migrations.pieces and not dst.svc.migrations.pieces
    src.funds_ok()
    dst.funds_ok()

    src, dst = setup()
    pieces(src, dst, between=trade)
    abort_after_freeze_is_exact(src, dst, FREEZE)


def test_members_restarted_between_pieces_make_the_same_freeze():
    """A source member restored from a snapshot taken between pieces has lost the marks of the
    changed queues: it walks the whole book at the freeze and answers the same export as a member
    that kept them; the destination restarted between pieces builds the rest on its pieces."""
    src, dst = setup()
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    for k in range(2):
        piece_in(dst, src.ok({**PRE, "piece": k}))
        trade(src, k)
    twin = restarted(src)  # another member of the source, restarted here
    dst = restarted(dst)
    for p in (src, twin):
        assert p.svc.migrations.pieces["m1"] and len(p.svc.migrations.pieces["m1"]) == 2
    k = 2
    while True:
        pre = src.ok({**PRE, "piece": k})
        assert twin.ok({**PRE, "piece": k}) == pre
        piece_in(dst, pre)
        if pre["last"]:
            break
        trade(src, k)
        trade(twin, k)
        k += 1
    at_freeze = book(src)
    a = src.ok(FREEZE)
    assert twin.ok(FREEZE) == a  # same bytes (size, SHA-256) and meta from the whole walk
    assert twin.svc.engine.state_hash() == src.svc.engine.state_hash()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    assert book(dst) == at_freeze
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    src.funds_ok()
    dst.funds_ok()


def cleanup(p: Part, upto: int) -> dict:
    return p.ok({"op": "mig_cleanup", "id": "m1", "upto": upto})["cleanup"]


def moved_in_indexes(p: Part) -> int:
    """The moved book's orders still in the source's indexes (its order map; every account's
    open orders agree with it)."""
    eng = p.svc.engine
    n = sum(1 for o in eng.orders.values() if o.sym.name == BTC)
    assert n == sum(1 for a in eng.accounts.values() for o in a.open.values() if o.sym.name == BTC)
    return n


def same_answers(tag: str, *parts: Part) -> None:
    """Queries, a cancel_all without a symbol and orders of the other symbol on members of one
    partition: the same answers, the same engine state."""
    first, *rest = parts
    for acct in "abc":
        for cmd in ({"op": "open_orders", "account": acct}, {"op": "balances", "account": acct},
                    {"op": "order", "account": acct, "client_order_id": f"o{3 + 'abc'.index(acct)}"}):
            want = first.eng(cmd)
            assert all(p.eng(cmd) == want for p in rest), cmd
    for p in parts:
        assert p.place(ETH, "a", "buy", "10", f"eth-{tag}")[0] == Status.OK
        # a client order id of a moved order, on the other symbol: free here since the freeze
        assert p.place(ETH, "b", "buy", "11", f"o{7 + len(tag)}")[0] == Status.OK
    want = first.eng({"op": "cancel_all", "account": "c"})
    assert all(p.eng({"op": "cancel_all", "account": "c"}) == want for p in rest)
    assert all(p.svc.engine.state_hash() == first.svc.engine.state_hash() for p in rest)
    for p in parts:
        p.funds_ok()


def test_the_cleanup_after_the_freeze_goes_in_pieces_and_every_member_answers_alike():
    """The freeze leaves the moved orders in the source's indexes; mig_cleanup takes them out a
    bounded number at a time, from the freeze on and after the drop. A member restored from a
    snapshot right after the freeze (its indexes never held them) and one restored mid-cleanup
    answer every step and every query as the member that cleans, and end with the same snapshot."""
    src, dst = setup()
    pieces(src, dst, between=trade)
    n = len(book(src))
    a = src.ok(FREEZE)
    assert a["cleanup"] == {"orders": n, "done": 0} and moved_in_indexes(src) == n
    twin = restarted(src)
    assert moved_in_indexes(twin) == 0
    same_answers("frozen", src, twin)
    for p in (src, twin):  # (every member gets every message: the log's time stamps stay alike)
        for bad, why in ((-1, "upto"), ("3", "upto"), (100_001, "at most")):
            st, body = p.admin({"op": "mig_cleanup", "id": "m1", "upto": bad})
            assert st == Status.ERROR and why in body["error"], body
        st, body = p.admin({"op": "mig_cleanup", "id": "zz", "upto": 1})
        assert st == Status.ERROR and "unknown migration" in body["error"]
    assert cleanup(src, 4) == cleanup(twin, 4) == {"orders": n, "done": 4}
    assert moved_in_indexes(src) == n - 4
    h = src.svc.engine.state_hash()
    for p in (src, twin):  # repeats: nothing changes
        assert cleanup(p, 2) == cleanup(p, 4) == {"orders": n, "done": 4}
    assert moved_in_indexes(src) == n - 4 and src.svc.engine.state_hash() == h
    same_answers("cleaning", src, twin)
    mid = restarted(src)  # restored mid-cleanup
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    dst.ok({"op": "mig_activate", "id": "m1"})
    twin.pos = mid.pos = src.pos  # the export chunks read at src: in every member's log alike
    for p in (src, twin, mid):
        assert p.ok({"op": "mig_drop", "id": "m1"})["cleanup"] == {"orders": n, "done": 4}
    assert cleanup(src, 11) == cleanup(twin, 11) == cleanup(mid, 11) == {"orders": n, "done": 11}
    same_answers("dropped", src, twin, mid)
    assert cleanup(src, n + 50) == cleanup(twin, n + 50) == cleanup(mid, n + 50) == {"orders": n, "done": n}
    assert moved_in_indexes(src) == 0 and not src.svc.engine.symbols[BTC].detached
    # the same engine and migration state (the snapshots' headers and reply caches differ: the
    # export's chunks were read at src only)
    for p in (twin, mid):
        assert p.svc.engine.snapshot() == src.svc.engine.snapshot()
        assert p.svc.migrations.to_json() == src.svc.migrations.to_json()
    same_answers("done", src, twin, mid)
    assert not writable(src, "done") and writable(dst, "done")


def test_abort_during_the_cleanup_restores_the_source_exactly():
    src, dst = setup()
    pieces(src, dst, between=trade)

    def clean_some(a: dict) -> None:
        assert cleanup(src, 5)["done"] == 5 and moved_in_indexes(src) == a["meta"]["orders"] - 5

    abort_after_freeze_is_exact(src, dst, FREEZE, clean_some)
    rec = src.ok({"op": "mig_state"})["migrations"][0]
    assert rec["cleanup"]["done"] == rec["cleanup"]["orders"]  # finished by the restore
    assert moved_in_indexes(src) == len(book(src))  # the restored book's own orders only


def test_a_symbol_coming_back_finishes_the_cleanup_of_its_last_move_first():
    """BTC moves p1 -> p2 and the cleanup at p1 stops part-way (say, the coordinator went away);
    when BTC comes back, p1's mig_prepare takes the rest out of the indexes before the import,
    on every member alike."""
    src, dst = setup()
    pieces(src, dst, between=trade)
    n = len(book(src))
    a = src.ok(FREEZE)
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    assert cleanup(src, 3)["done"] == 3
    twin = restarted(src)
    moved = book(dst)
    back = {"id": "m2", "symbol": BTC, "epoch": 3}
    for p in (src, twin):
        p.ok({"op": "mig_prepare", **back, "source": "p2"})
        assert moved_in_indexes(p) == 0
        assert p.ok({"op": "mig_state"})["migrations"][0]["cleanup"] == {"orders": n, "done": n}
    b = dst.ok({"op": "mig_freeze", **back, "dest": "p1"})
    for p in (src, twin):
        transfer(dst, p, "m2", b["meta"], b["size"], b["sha256"])
        p.ok({"op": "mig_activate", "id": "m2"})
        assert book(p) == moved and writable(p, "back")
        p.funds_ok()
        p.svc.engine.check_invariants()
    assert src.svc.engine.state_hash() == twin.svc.engine.state_hash()


def test_destination_members_import_alike_when_an_account_arrived_between_pieces():
    """A destination member builds each piece against its engine as it is then. One that built a
    piece before account d's first deposit here points d's order at an account of its own and, at
    the import, points it at d's account here and indexes the book order by order; a member
    restored from a snapshot after that piece builds every piece again against d's account and
    merges them whole. Both end in the same engine state and answer alike."""
    src, dst = setup()
    src.eng({"op": "deposit", "account": "d", "asset": "USDT", "amount": "1000", "tx_id": "d-usdt"})
    assert src.place(BTC, "d", "buy", "92", "d-best")[0] == Status.OK  # in piece 0 (best bids first)
    assert "d" not in dst.svc.engine.accounts
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    first = src.ok({**PRE, "piece": 0})
    piece_in(dst, first)
    twin = restarted(dst)  # no records: built again from the pieces' bytes at the next piece
    for p in (dst, twin):
        st, body = p.eng({"op": "deposit", "account": "d", "asset": "BTC", "amount": "1", "tx_id": "d-btc"})
        assert st == Status.OK and body[0]["type"] == "deposited", body
    k = 1
    while True:
        pre = src.ok({**PRE, "piece": k})
        for p in (dst, twin):
            piece_in(p, pre)
        if pre["last"]:
            break
        trade(src, k)
        k += 1
    at_freeze = book(src)
    a = src.ok(FREEZE)
    for p in (dst, twin):
        transfer(src, p, "m1", a["meta"], a["size"], a["sha256"])
        assert book(p) == at_freeze
        p.ok({"op": "mig_activate", "id": "m1"})
        p.funds_ok()
    assert dst.svc.engine.state_hash() == twin.svc.engine.state_hash()
    for cmd in ({"op": "open_orders", "account": "d"}, {"op": "balances", "account": "d"},
                {"op": "order", "account": "d", "client_order_id": "d-best"},
                {"op": "cancel", "account": "d", "symbol": BTC, "client_order_id": "d-best"},
                {"op": "balances", "account": "d"}):
        assert dst.eng(cmd) == twin.eng(cmd), cmd
    assert dst.svc.engine.state_hash() == twin.svc.engine.state_hash()
