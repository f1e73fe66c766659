"""Retiring a partition in its own log (pyengine/service/retire.py): refused while it holds funds,
owns a symbol or has a migration open (changing nothing); once retired, every command that would
change its state is refused with no effect on every channel while reads answer; the flag is in
the state hash and survives a snapshot; unretire undoes it."""

from __future__ import annotations

import orjson

from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.bulk import BulkBuilder
from pyengine.wire.codec import encode_command
from pyengine.wire.protocol import Channel, Command, Status
from tests.unit.test_service_migration import BTC, ETH, Part, _rid


def raw(p: Part, channel: int, payload: bytes) -> tuple[int, bytes]:
    p.pos += 64
    [(_, reply)] = p.svc.on_message(1, 1000 + p.pos, p.pos, protocol.encode_request(
        7, [Command(next(_rid), channel, payload)]))
    [a] = protocol.decode_reply(reply)[1]
    return a.status, bytes(a.payload)


def emptied(name: str = "p2") -> Part:
    """A partition that owns no symbol and whose balances were all withdrawn (it knows the assets)."""
    p = Part(name, {})
    for b in p.ok({"op": "funds"})["balances"]:
        st, ev = p.eng({"op": "withdraw", "account": b["account"], "asset": b["asset"],
                        "amount": b["available"], "tx_id": f"w-{b['account']}-{b['asset']}"})
        assert ev[0]["type"] == "withdrawn", ev
    assert p.ok({"op": "funds"})["count"] == 0
    return p


def deposit(p: Part, tx: str, account: str = "a", amount: str = "5") -> tuple[int, object]:
    return p.eng({"op": "deposit", "account": account, "asset": "USDT", "amount": amount, "tx_id": tx})


def engine_hash(p: Part) -> str:
    return p.svc.engine.state_hash()


def test_retire_refused_while_funds_are_held_changes_nothing():
    p = Part("p2", {})  # a, b and c hold USDT, BTC and ETH here
    before = (engine_hash(p), p.svc.hash_info()["engine_hash"])
    body = p.ok({"op": "retire"})
    assert body["type"] == "rejected" and body["reason"] == "holds_funds", body
    assert "9 balance(s)" in body["detail"] and "a BTC 100000" in body["detail"], body
    assert body["funds"]["count"] == 9 and len(body["funds"]["balances"]) == 5, body
    assert not p.svc.migrations.retired
    assert (engine_hash(p), p.svc.hash_info()["engine_hash"]) == before
    st, ev = deposit(p, "after-refusal")  # still accepts deposits
    assert st == Status.OK and ev[0]["type"] == "deposited", ev


def test_retire_refused_while_owning_a_symbol_or_migrating():
    owner = Part("p1", {BTC: 1})
    body = owner.ok({"op": "retire"})
    assert (body["type"], body["reason"]) == ("rejected", "owns_symbols") and BTC in body["detail"], body
    single = MatchingService()  # no own_symbols: a single-partition system owns every symbol
    single.owned = None
    from pyengine.service import retire

    assert orjson.loads(retire.apply(single, {"op": "retire"})[1])["reason"] == "owns_symbols"
    dest = emptied()
    assert dest.ok({"op": "mig_prepare", "id": "m1", "symbol": "SOL-USDT", "source": "p1", "epoch": 2})["state"]
    body = dest.ok({"op": "retire"})
    assert (body["type"], body["reason"]) == ("rejected", "migration_open") and "m1" in body["detail"], body
    assert not owner.svc.migrations.retired and not dest.svc.migrations.retired


def test_retired_partition_refuses_every_change_and_answers_reads():
    p = emptied()
    body = p.ok({"op": "retire"})
    assert body == {"type": "retired", "changed": True, "fees": {}}, body
    assert p.ok({"op": "retire"})["changed"] is False  # idempotent
    assert p.ok({"op": "mig_state"})["retired"] is True  # what an operator reads
    state = (engine_hash(p), p.svc.owned, p.svc.migrations.to_json())

    def refused(status: int, payload: bytes) -> None:
        assert status == Status.ERROR, payload
        answer = orjson.loads(payload)
        assert answer["reason"] == "partition_retired" and "partition retired" in answer["error"], answer

    # a deposit straight to it, on each channel, and every state-changing admin command
    refused(*raw(p, Channel.ENGINE_JSON, orjson.dumps({"op": "deposit", "account": "a", "asset": "USDT",
                                                        "amount": "5", "tx_id": "d1"})))
    refused(*raw(p, Channel.ENGINE_BINARY, encode_command({"op": "deposit", "account": "a", "asset": "USDT",
                                                           "amount": "5", "tx_id": "d2"})))
    for cmd in ({"op": "withdraw", "account": "a", "asset": "USDT", "amount": "1", "tx_id": "w9"},
                {"op": "cancel_all", "account": "a"}):
        refused(*raw(p, Channel.ENGINE_JSON, orjson.dumps(cmd)))
    for cmd in ({"op": "own_symbols", "symbols": {BTC: 5}},
                {"op": "xfer_in", "id": "t1", "account": "a", "asset": "USDT", "amount": "5"},
                {"op": "mig_prepare", "id": "m1", "symbol": "SOL-USDT", "source": "p1", "epoch": 2},
                {"op": "mig_import", "id": "m1", "size": 0, "sha256": ""},
                {"op": "id_base", "base": 1 << 41}):
        refused(*raw(p, Channel.ADMIN_JSON, orjson.dumps(cmd)))
    # a command for a symbol it does not own answers MOVED, as before: a stale client finds the owner
    bulk = BulkBuilder()
    bulk.place("a", BTC, "buy", 100, 1)
    assert raw(p, Channel.ENGINE_BULK, bulk.encode())[0] == Status.MOVED
    assert p.place(ETH, "a", "buy", "10")[0] == Status.MOVED
    assert (engine_hash(p), p.svc.owned, p.svc.migrations.to_json()) == state  # nothing changed
    # reads answer
    st, ev = p.eng({"op": "balances", "account": "a"})
    assert st == Status.OK and ev[0]["type"] == "balances", ev
    assert p.ok({"op": "funds"})["count"] == 0
    assert p.ok({"op": "state_hash"})["type"] == "state_hash"
    # unretire: deposits are accepted again
    assert p.ok({"op": "unretire"}) == {"type": "unretired", "changed": True}
    assert p.ok({"op": "unretire"})["changed"] is False
    st, ev = deposit(p, "d3")
    assert st == Status.OK and ev[0]["type"] == "deposited", ev


def test_retired_flag_is_in_the_state_hash_and_survives_a_snapshot():
    p, twin = emptied(), emptied()
    assert p.svc.hash_info()["engine_hash"] == twin.svc.hash_info()["engine_hash"]
    never = p.svc.snapshot()
    assert "retired" not in p.svc.migrations.to_json()  # never retired: the snapshot has no flag
    p.ok({"op": "retire"})
    assert p.svc.hash_info()["engine_hash"] != twin.svc.hash_info()["engine_hash"]
    assert engine_hash(p) == engine_hash(twin)  # the engine itself is the same

    restored = Part.__new__(Part)
    restored.name, restored.pos, restored.svc = "p2", p.pos, MatchingService()
    restored.svc.restore(p.svc.snapshot())
    assert restored.svc.migrations.retired
    assert restored.svc.hash_info()["engine_hash"] == p.svc.hash_info()["engine_hash"]
    st, body = deposit(restored, "after-restore")
    assert st == Status.ERROR and body["reason"] == "partition_retired", body
    # a snapshot written before retire existed (no flag) loads as not retired
    old = MatchingService()
    old.restore(never)
    assert not old.migrations.retired
    # unretired: the flag leaves the snapshot again
    restored.ok({"op": "unretire"})
    assert "retired" not in restored.svc.migrations.to_json()
    assert restored.svc.hash_info()["engine_hash"] == twin.svc.hash_info()["engine_hash"]
