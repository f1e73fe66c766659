"""Migration steps as log commands of the service (pyengine/service/migration.py), two real
services side by side in one process: the fence at apply time, idempotent steps, abort, never
two owners, snapshots mid-migration, transfers exactly once."""

from __future__ import annotations

import base64
import itertools

import orjson

from pyengine.engine.migration import book_rows
from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.protocol import Channel, Command, Status

BTC, ETH = "BTC-USDT", "ETH-USDT"
_rid = itertools.count(1)


class Part:
    """One partition's service, fed messages as the log would."""

    def __init__(self, name: str, owns: dict[str, int]) -> None:
        self.name = name
        self.svc = MatchingService()
        self.pos = 0
        for sym, base in ((BTC, "BTC"), (ETH, "ETH")):
            self.eng({"op": "add_symbol", "symbol": sym, "base": base, "quote": "USDT",
                      "tick_size": "0.5", "lot_size": "0.01"})
        for a in ("a", "b", "c"):
            for asset in ("USDT", "BTC", "ETH"):
                self.eng({"op": "deposit", "account": a, "asset": asset, "amount": "100000",
                          "tx_id": f"{name}-{a}-{asset}"})
        assert self.admin({"op": "own_symbols", "symbols": owns})[0] == Status.OK

    def send(self, channel: int, cmd: dict) -> tuple[int, dict]:
        self.pos += 64
        [(_, reply)] = self.svc.on_message(1, 1000 + self.pos, self.pos, protocol.encode_request(
            7, [Command(next(_rid), channel, orjson.dumps(cmd))]))
        [a] = protocol.decode_reply(reply)[1]
        return a.status, orjson.loads(a.payload)

    def eng(self, cmd: dict) -> tuple[int, object]:
        return self.send(Channel.ENGINE_JSON, cmd)

    def admin(self, cmd: dict) -> tuple[int, dict]:
        return self.send(Channel.ADMIN_JSON, cmd)

    def ok(self, cmd: dict) -> dict:
        st, body = self.admin(cmd)
        assert st == Status.OK, body
        return body

    def place(self, sym: str, acct: str, side: str, price: str, coid: str | None = None) -> tuple[int, object]:
        cmd = {"op": "place", "account": acct, "symbol": sym, "side": side, "price": price, "qty": "0.5"}
        if coid:
            cmd["client_order_id"] = coid
        return self.eng(cmd)

    def funds_ok(self) -> None:
        body = self.ok({"op": "funds_check"})
        assert body["ok"], body["problems"]


def book(p: Part, sym: str = BTC) -> list[tuple]:
    return book_rows(p.svc.engine, sym)


def setup() -> tuple[Part, Part]:
    src, dst = Part("p1", {BTC: 1, ETH: 1}), Part("p2", {})
    dst.svc.engine.next_oid = 10**9  # each partition its own order id range
    for i in range(30):
        buy = i % 2 == 1  # bids at 86..92, asks at 108..114: a book that does not cross
        src.place(BTC, "abc"[i % 3], "buy" if buy else "sell", str(92 - i % 7 if buy else 108 + i % 7), f"o{i}")
    src.eng({"op": "cancel", "account": "a", "symbol": BTC, "client_order_id": "o0"})
    return src, dst


def transfer(src: Part, dst: Part, mid: str, meta: dict, size: int, sha: str, chunk: int = 1000) -> None:
    off = 0
    while off < size:
        body = src.ok({"op": "mig_export_chunk", "id": mid, "offset": off, "length": chunk})
        dst.ok({"op": "mig_import_chunk", "id": mid, "offset": off, "data": body["data"]})
        off += len(base64.b64decode(body["data"]))
    dst.ok({"op": "mig_import", "id": mid, "size": size, "sha256": sha})


def writable(p: Part, tag: str) -> bool:
    st, _ = p.place(BTC, "c", "buy", "50", f"probe-{p.name}-{tag}")
    return st == Status.OK


def test_freeze_sync_switch_never_two_owners():
    src, dst = setup()
    before = book(src)
    assert before
    owners = []

    def probe(tag: str) -> None:
        owners.append((writable(src, tag), writable(dst, tag)))
        assert sum(owners[-1]) <= 1, (tag, owners[-1])

    probe("start")
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    probe("prepared")
    at_freeze = book(src)
    frozen = src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2})
    st, body = src.place(BTC, "a", "buy", "99", "late")
    assert st == Status.MOVED and body["moving"] and body["epoch"] == 2
    st, body = dst.place(BTC, "a", "buy", "99", "late")
    assert st == Status.MOVED and body["not_yet"]
    # the other symbol of the source keeps trading
    assert src.place(ETH, "a", "buy", "10")[0] == Status.OK
    probe("frozen")
    transfer(src, dst, "m1", frozen["meta"], frozen["size"], frozen["sha256"])
    probe("imported")
    assert book(dst) == at_freeze  # the same orders in the same priority
    dst.ok({"op": "mig_activate", "id": "m1"})
    probe("active")
    src.ok({"op": "mig_drop", "id": "m1"})
    probe("dropped")
    assert [o for o in owners] == [(True, False)] * 2 + [(False, False)] * 2 + [(False, True)] * 2
    src.funds_ok()
    dst.funds_ok()
    # a resend of a place answered by the source is a duplicate at the destination
    st, body = dst.place(BTC, "b", "buy", "1", "o1")
    assert st == Status.OK and body[0]["duplicate"] is True


def test_every_step_is_idempotent_and_ids_are_checked():
    src, dst = setup()
    prep = {"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2}
    assert dst.ok(prep) == dst.ok(prep)
    st, body = dst.admin({**prep, "epoch": 3})
    assert st == Status.ERROR and "epoch" in body["error"]
    st, body = dst.admin({**prep, "id": "m2"})
    assert st == Status.ERROR and "already being imported" in body["error"]
    fr = {"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2}
    a = src.ok(fr)
    h = src.svc.engine.state_hash()
    assert src.ok(fr) == a and src.svc.engine.state_hash() == h
    st, body = src.admin({**fr, "id": "m9"})
    assert st == Status.ERROR and "already moving" in body["error"]
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    h = dst.svc.engine.state_hash()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])  # all of it again: no effect
    assert dst.svc.engine.state_hash() == h
    for _ in range(2):
        dst.ok({"op": "mig_activate", "id": "m1"})
        src.ok({"op": "mig_drop", "id": "m1"})
    st, body = src.admin({"op": "mig_restore", "id": "m1"})
    assert st == Status.ERROR and "too late" in body["error"]
    st, body = dst.admin({"op": "mig_discard", "id": "m1"})
    assert st == Status.ERROR and "point of no return" in body["error"]
    src.funds_ok()
    dst.funds_ok()


def test_bad_requests_change_nothing():
    src, dst = setup()
    h1, h2 = src.svc.hash_info()["engine_hash"], dst.svc.hash_info()["engine_hash"]
    for p, cmd, text in (
        (src, {"op": "mig_freeze", "id": "x", "symbol": "NOPE", "dest": "p2", "epoch": 2}, "not owned"),
        (src, {"op": "mig_freeze", "id": "x", "symbol": BTC, "dest": "p2", "epoch": 1}, "not newer"),
        (src, {"op": "mig_freeze", "symbol": BTC, "dest": "p2", "epoch": 2}, "needs id"),
        (dst, {"op": "mig_prepare", "id": "y", "symbol": BTC, "source": "p1"}, "needs symbol"),
        (src, {"op": "mig_prepare", "id": "y", "symbol": BTC, "source": "p2", "epoch": 2}, "already owned"),
        (dst, {"op": "mig_import", "id": "zz", "size": 1, "sha256": "0"}, "unknown migration"),
        (src, {"op": "mig_drop", "id": "zz"}, "unknown migration"),
        (dst, {"op": "mig_import_chunk", "id": "zz", "offset": 0, "data": "AA=="}, "unknown migration"),
    ):
        st, body = p.admin(cmd)
        assert st == Status.ERROR and text in body["error"], (cmd, body)
    assert (src.svc.hash_info()["engine_hash"], dst.svc.hash_info()["engine_hash"]) == (h1, h2)
    # a corrupt transfer is refused at import and can be sent again
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    a = src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2})
    dst.ok({"op": "mig_import_chunk", "id": "m1", "offset": 0, "data": base64.b64encode(b"junk").decode()})
    st, body = dst.admin({"op": "mig_import", "id": "m1", "size": a["size"], "sha256": a["sha256"]})
    assert st == Status.ERROR and "send it again" in body["error"]
    st, body = dst.admin({"op": "mig_import_chunk", "id": "m1", "offset": 99, "data": "AA=="})
    assert st == Status.ERROR and "expected at most" in body["error"]
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])  # sent again: now it fits
    dst.ok({"op": "mig_activate", "id": "m1"})
    dst.funds_ok()


def test_abort_restores_the_source_exactly_and_discards_the_copy():
    src, dst = setup()
    h = src.svc.engine.state_hash()
    before = book(src)
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    a = src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2})
    dh = dst.svc.engine.state_hash()
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    assert book(dst) == before
    dst.ok({"op": "mig_discard", "id": "m1"})
    assert book(dst) == [] and not writable(dst, "after")
    src.ok({"op": "mig_restore", "id": "m1"})
    assert src.svc.engine.state_hash() == h
    assert src.svc.owned[BTC] == 2  # back at the new epoch: epochs only grow
    assert writable(src, "after")
    src.funds_ok()
    dst.funds_ok()
    assert dh  # (the destination keeps the empty, inert symbol definition)


def test_snapshot_mid_migration_carries_on():
    src, dst = setup()
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    a = src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2})
    body = src.ok({"op": "mig_export_chunk", "id": "m1", "offset": 0, "length": 500})
    dst.ok({"op": "mig_import_chunk", "id": "m1", "offset": 0, "data": body["data"]})
    # both members restart from snapshots taken now
    for p in (src, dst):
        fresh = MatchingService()
        fresh.restore(p.svc.snapshot())
        assert fresh.snapshot() == p.svc.snapshot()
        p.svc = fresh
    st, _ = src.place(BTC, "a", "buy", "99", "after-restart")
    assert st == Status.MOVED
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"], chunk=700)
    dst.ok({"op": "mig_activate", "id": "m1"})
    src.ok({"op": "mig_drop", "id": "m1"})
    src.funds_ok()
    dst.funds_ok()
    assert writable(dst, "end")


def test_cancel_all_without_symbol_waits_for_an_inert_import():
    src, dst = setup()
    dst.ok({"op": "mig_prepare", "id": "m1", "symbol": BTC, "source": "p1", "epoch": 2})
    a = src.ok({"op": "mig_freeze", "id": "m1", "symbol": BTC, "dest": "p2", "epoch": 2})
    transfer(src, dst, "m1", a["meta"], a["size"], a["sha256"])
    st, _ = dst.eng({"op": "cancel_all", "account": "a"})
    assert st == Status.MOVED
    dst.ok({"op": "mig_activate", "id": "m1"})
    st, body = dst.eng({"op": "cancel_all", "account": "a"})
    assert st == Status.OK and body[-1]["count"] > 0


def test_transfer_exactly_once_by_id():
    src, dst = setup()
    out = {"op": "xfer_out", "id": "t1", "account": "a", "asset": "USDT", "amount": "10"}
    first = src.ok(out)
    again = src.ok(out)
    assert not first["duplicate"] and again["duplicate"] and first["available"] == again["available"]
    st, body = src.admin({**out, "amount": "11"})
    assert st == Status.ERROR and "other values" in body["error"]
    inn = {**out, "op": "xfer_in"}
    assert dst.ok(inn)["available"] == dst.ok(inn)["available"]
    st, body = src.admin({**out, "id": "t2", "amount": "1000000"})
    assert st == Status.ERROR and "insufficient" in body["error"]
    # engine funds commands cannot forge a transfer leg
    st, body = src.eng({"op": "deposit", "account": "a", "asset": "USDT", "amount": "1", "tx_id": "xfer:in:t9"})
    assert st == Status.ERROR and "reserved" in body["error"]
    src.funds_ok()
    dst.funds_ok()


def test_migration_needs_partitions():
    s = MatchingService()
    [(_, reply)] = s.on_message(1, 1, 64, protocol.encode_request(1, [Command(1, Channel.ADMIN_JSON, orjson.dumps(
        {"op": "mig_prepare", "id": "m", "symbol": BTC, "source": "p1", "epoch": 2}))]))
    [a] = protocol.decode_reply(reply)[1]
    assert a.status == Status.ERROR and b"partitioned" in a.payload
