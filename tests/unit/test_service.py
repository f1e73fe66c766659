"""The replicated service without the JVM: batches, dedupe, admin commands, snapshots."""

import orjson
import pytest

from pyengine.engine.snapshot import dump
from pyengine.service.matching import MatchingService, ServiceSnapshotError
from pyengine.wire import protocol
from pyengine.wire.protocol import Channel, Command, Status


def run(service, client_id, cmds, ts=1000, session=5, position=64):
    [(target, reply)] = service.on_message(session, ts, position, protocol.encode_request(client_id, cmds))
    assert target == session
    kind, answers = protocol.decode_reply(reply)
    assert kind == protocol.KIND_REPLY
    return answers


def eng(rid, cmd):
    return Command(rid, Channel.ENGINE_JSON, orjson.dumps(cmd))


SETUP = [
    {"op": "add_symbol", "symbol": "ETH-USDT", "base": "ETH", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.01"},
    {"op": "deposit", "account": "a", "asset": "USDT", "amount": "1000", "tx_id": "1"},
]


def test_batch_is_applied_in_order_and_answered_once_each():
    s = MatchingService()
    answers = run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    assert [a.request_id for a in answers] == [1, 2]
    assert all(a.status == Status.OK for a in answers)
    assert s.applied == 2


def test_resend_is_answered_from_memory_without_effect():
    s = MatchingService()
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    place = {"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "type": "limit", "tif": "GTC",
             "price": "10", "qty": "1", "client_order_id": "x"}
    [first] = run(s, 9, [eng(3, place)])
    hash_before = s.engine.state_hash()
    [again] = run(s, 9, [eng(3, place)])
    assert again.status == Status.DUPLICATE and again.payload == first.payload
    assert s.engine.state_hash() == hash_before and s.applied == 3
    # Another client may use the same request id: it is a different command.
    [other] = run(s, 10, [eng(3, {"op": "balances", "account": "a"})])
    assert other.status == Status.OK and b"balances" in other.payload


def test_malformed_message_gets_error_and_changes_nothing():
    s = MatchingService()
    before = s.hash_info()
    [(_, reply)] = s.on_message(1, 1, 64, b"junk")
    assert protocol.decode_reply(reply)[0] == protocol.KIND_ERROR
    after = s.hash_info()
    assert {**after, "position": 0} == {**before, "position": 0}


def test_bad_command_payloads_become_error_answers():
    s = MatchingService()
    answers = run(s, 1, [Command(1, Channel.ENGINE_JSON, b"{nope"), Command(2, 99, b"{}"),
                         Command(3, Channel.ENGINE_JSON, b"[1,2]"), Command(4, Channel.ADMIN_JSON, b'{"op":"zap"}')])
    assert [a.status for a in answers] == [Status.ERROR] * 4
    assert b"bad JSON" in answers[0].payload and b"unknown channel" in answers[1].payload
    # A resend of a failed command gets the original failure, not a DUPLICATE that reads as a success.
    again = run(s, 1, [Command(1, Channel.ENGINE_JSON, b"{nope"), Command(4, Channel.ADMIN_JSON, b'{"op":"zap"}')])
    assert [(a.status, a.payload) for a in again] == [(Status.ERROR, answers[0].payload),
                                                        (Status.ERROR, answers[3].payload)]


def test_snapshot_round_trip_and_hash(tmp_path):
    s = MatchingService(hash_file=tmp_path / "hash.json")
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    [a] = run(s, 9, [Command(3, Channel.ADMIN_JSON, b'{"op":"state_hash"}')], position=640)
    info = orjson.loads(a.payload)
    assert info["position"] == 640 and orjson.loads((tmp_path / "hash.json").read_text()) == {
        k: v for k, v in info.items() if k != "type"}
    blob = s.snapshot()
    t = MatchingService()
    t.restore(blob)
    assert t.snapshot() == blob
    assert t.hash_info() == s.hash_info()
    # The restored service still remembers answers: a resend after restart is not re-applied.
    [again] = run(t, 9, [eng(2, SETUP[1])])
    assert again.status == Status.DUPLICATE


def _service_with_a_dedup_window() -> tuple[MatchingService, bytes]:
    """A service whose account ``a`` remembers 40 cancelled orders, and its snapshot."""
    s = MatchingService()
    places = [{"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "price": "1",
               "qty": "1", "client_order_id": f"c{i}"} for i in range(40)]
    cancels = [{"op": "cancel_all", "account": "a", "symbol": "ETH-USDT"}]
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP + places + cancels)])
    return s, s.snapshot()


def test_a_restored_service_takes_its_first_snapshot_warm():
    """A member restarts more often than it snapshots when failures keep coming, and often
    takes a snapshot in its catch-up: the restore keeps the engine snapshot's encoded parts as
    it read them, so its first take (which stalls the whole cluster) encodes only what changed
    since, with the bytes of an encoding afresh (bench/reports/snapshot_take_seeded.md)."""
    s, blob = _service_with_a_dedup_window()
    t = MatchingService()
    t.restore(blob)
    cache = t.engine.snap_cache
    assert cache.seeded and cache.loaded is None  # restore(warm=True): built from the bytes
    assert t.snapshot() == blob
    assert (cache.orders_encoded, cache.fills_encoded) == (0, 0)  # nothing encoded again
    places = [{"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "price": "1",
               "qty": "1", "client_order_id": f"d{i}"} for i in range(3)]
    cancels = [{"op": "cancel_all", "account": "a", "symbol": "ETH-USDT"}]
    for x in (s, t):
        run(x, 9, [eng(100 + i, c) for i, c in enumerate(places + cancels)])
    assert t.snapshot() == s.snapshot()
    assert dump(t.engine, use_cache=False, digest=False) in t.snapshot()
    assert cache.orders_encoded <= 3 + 64  # the new orders and at most the run they joined


@pytest.mark.parametrize("mutate", [
    lambda b: b[:10],
    lambda b: b"XXXX" + b[4:],
    lambda b: b[:4] + b"\x09\x00" + b[6:],
    lambda b: b[:-1],
    lambda b: b + b"\x00",
])
def test_bad_snapshots_are_refused_and_change_nothing(mutate):
    s = MatchingService()
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    blob = s.snapshot()
    t = MatchingService()
    before = t.snapshot()
    with pytest.raises(ServiceSnapshotError):
        t.restore(mutate(blob))
    assert t.snapshot() == before


def test_a_service_snapshot_holding_a_version_3_engine_snapshot_still_restores():
    """A member's snapshot on disk from before 7 Dec 2026 (engine snapshot version 3 inside the
    service snapshot) restores: the same engine state (state hash) and the same remembered
    answers; the next snapshot it takes is version 4 and restores to the same state."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine import _snapshot_format_scenario

    blob = (Path(__file__).parent / "data" / "service_snapshot_engine_v3.bin").read_bytes()
    t = MatchingService()
    t.restore(blob)
    live = _snapshot_format_scenario()
    assert t.engine.state_hash() == live.state_hash()
    assert t.hash_info()["sequence_hash"] == "ae6c18498de1d895501cd20545810b84" and t.applied == 3
    [again] = run(t, 42, [Command(2, Channel.ADMIN_JSON, b'{"op":"ping"}')])
    assert again.status == Status.DUPLICATE
    v4 = t.snapshot()
    u = MatchingService()
    u.restore(v4)
    assert u.engine.snapshot()[8:10] == b"\x04\x00" and u.hash_info() == t.hash_info()


def test_an_unknown_engine_snapshot_version_is_refused_with_its_number():
    s = MatchingService()
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    blob = bytearray(s.snapshot())
    at = blob.index(b"MXENGSNP")
    blob[at + 8:at + 10] = b"\x63\x00"
    with pytest.raises(ServiceSnapshotError, match="version 99"):
        MatchingService().restore(bytes(blob))


def test_reply_cache_window_is_bounded_and_old_ids_are_refused():
    s = MatchingService(dedupe_window=3)
    for rid in range(1, 6):
        run(s, 1, [Command(rid, Channel.ADMIN_JSON, b'{"op":"ping"}')])
    assert len(s.replies.by_client[1]) == 3
    [a] = run(s, 1, [Command(1, Channel.ADMIN_JSON, b'{"op":"ping"}')])
    assert a.status == Status.ERROR and b"too_old" in a.payload


def test_symbols_not_owned_are_answered_moved_with_the_epoch():
    s = MatchingService()
    run(s, 1, [eng(1, SETUP[0])])
    [own] = run(s, 1, [Command(2, Channel.ADMIN_JSON, b'{"op":"own_symbols","symbols":{"ETH-USDT":3}}')])
    assert own.status == Status.OK
    [moved] = run(s, 1, [eng(3, {"op": "book", "symbol": "BTC-USDT", "depth": 1})])
    assert moved.status == Status.MOVED and orjson.loads(moved.payload)["symbol"] == "BTC-USDT"
    [ok] = run(s, 1, [eng(4, {"op": "book", "symbol": "ETH-USDT", "depth": 1})])
    assert ok.status == Status.OK
    [rel] = run(s, 1, [Command(5, Channel.ADMIN_JSON, b'{"op":"release_symbol","symbol":"ETH-USDT","epoch":4}')])
    assert rel.status == Status.OK
    [moved] = run(s, 1, [eng(6, {"op": "book", "symbol": "ETH-USDT", "depth": 1})])
    assert moved.status == Status.MOVED and orjson.loads(moved.payload)["epoch"] == 4
    # A stale assignment is refused and changes nothing.
    [stale] = run(s, 1, [Command(7, Channel.ADMIN_JSON, b'{"op":"own_symbols","symbols":{"ETH-USDT":2}}')])
    assert stale.status == Status.ERROR and s.owned == {}
    t = MatchingService()
    t.restore(s.snapshot())
    assert t.owned == {} and t.moved == {"ETH-USDT": 4}


# ---- bulk orders (Channel.ENGINE_BULK) -------------------------------------------------------

def _bulk_service(**kw):
    s = MatchingService(**kw)
    s.engine.apply(SETUP[0], 1)
    s.engine.apply(SETUP[1], 1)
    return s


def _a_bulk(account="a", symbol="ETH-USDT"):
    from pyengine.wire.bulk import BulkBuilder

    b = BulkBuilder()
    b.place(account, symbol, "buy", 1000, 100, client_order_id=1)  # 10.00 x 1
    b.place(account, symbol, "buy", 1001, 100, client_order_id=2)
    b.cancel(account, symbol, client_order_id=1)
    return b.encode()


def test_a_bulk_is_one_command_with_an_answer_per_order_and_a_resend_is_a_duplicate():
    from pyengine.engine.model import EV_ACCEPTED, EV_CANCELLED
    from pyengine.wire.bulk import decode_answer

    s = _bulk_service()
    [a] = run(s, 9, [Command(1, Channel.ENGINE_BULK, _a_bulk())])
    assert a.status == Status.OK
    res = decode_answer(a.payload)
    assert [r[0][0] for r in res] == [EV_ACCEPTED, EV_ACCEPTED, EV_CANCELLED]
    assert s.applied == 1
    h = s.engine.state_hash()
    [again] = run(s, 9, [Command(1, Channel.ENGINE_BULK, _a_bulk())])
    assert again.status == Status.DUPLICATE and again.payload == a.payload
    assert s.engine.state_hash() == h


@pytest.mark.parametrize("payload", [b"", b"MB", b"XX" + bytes(20), _a_bulk()[:-3]])
def test_a_malformed_bulk_is_an_error_and_changes_nothing(payload):
    s = _bulk_service()
    h = s.engine.state_hash()
    [a] = run(s, 9, [Command(1, Channel.ENGINE_BULK, payload)])
    assert a.status == Status.ERROR and b"bad bulk" in a.payload
    assert s.engine.state_hash() == h


def test_a_bulk_naming_a_symbol_not_owned_applies_nothing():
    s = _bulk_service()
    run(s, 1, [Command(1, Channel.ADMIN_JSON, b'{"op":"own_symbols","symbols":{"ETH-USDT":3}}')])
    h = s.engine.state_hash()
    from pyengine.wire.bulk import BulkBuilder

    b = BulkBuilder()
    b.place("a", "ETH-USDT", "buy", 1000, 100)
    b.place("a", "BTC-USDT", "buy", 1000, 100)
    [a] = run(s, 1, [Command(2, Channel.ENGINE_BULK, b.encode())])
    assert a.status == Status.MOVED and orjson.loads(a.payload)["symbol"] == "BTC-USDT"
    assert s.engine.state_hash() == h


def test_a_bulk_needs_a_token_for_every_account_it_names():
    from pyengine.service.tokens import TokenSigner

    signer = TokenSigner.generate(kid="k1")
    s = _bulk_service(auth_keys={"k1": signer.jwk()["x"]})
    now_s = 1_700_000_000
    for sid, account in ((5, "a"), (6, "b")):
        token = signer.mint("u", account, ["trade"], ttl_s=60, now_s=now_s)
        verdict = s.verify_credentials(token.encode(), now_s * 1000)
        assert verdict[0] == 0
        s.on_session_open(sid, now_s * 1000, verdict[1:])
    h = s.engine.state_hash()
    [denied] = run(s, 9, [Command(1, Channel.ENGINE_BULK, _a_bulk("a"))], ts=now_s * 1000, session=6)
    assert denied.status == Status.UNAUTHORISED and b"wrong_account" in denied.payload
    [late] = run(s, 9, [Command(2, Channel.ENGINE_BULK, _a_bulk("a"))], ts=(now_s + 61) * 1000, session=5)
    assert late.status == Status.UNAUTHORISED and b"expired" in late.payload
    assert s.engine.state_hash() == h
    [ok] = run(s, 9, [Command(3, Channel.ENGINE_BULK, _a_bulk("a"))], ts=now_s * 1000, session=5)
    assert ok.status == Status.OK


def test_reply_cache_is_bounded_in_bytes_too():
    """Large answers (bulks) are evicted by size, oldest first; an evicted id is refused."""
    s = _bulk_service(dedupe_bytes=100)
    for rid in range(1, 4):
        [a] = run(s, 1, [Command(rid, Channel.ENGINE_BULK, _a_bulk())])
        assert a.status == Status.OK and len(a.payload) > 40
    held = s.replies.bytes[1]
    assert held <= 100 and held == sum(len(s.replies.get(1, r)[1]) for r in s.replies.by_client[1])
    assert 1 not in s.replies.by_client[1] and 3 in s.replies.by_client[1]
    [old] = run(s, 1, [Command(1, Channel.ENGINE_BULK, _a_bulk())])
    assert old.status == Status.ERROR and b"too_old" in old.payload
    t = MatchingService(dedupe_bytes=100)
    t.restore(s.snapshot())
    assert t.replies.bytes == s.replies.bytes and t.snapshot() == s.snapshot()


def test_a_bulk_answer_larger_than_one_message_is_sent_whole_in_pieces():
    from pyengine.engine.model import EV_ACCEPTED
    from pyengine.wire.bulk import BulkBuilder, decode_answer

    s = _bulk_service(max_reply_bytes=2_000)
    s.engine.apply({"op": "deposit", "account": "a", "asset": "USDT", "amount": "99000", "tx_id": "2"}, 1)
    b = BulkBuilder()
    for i in range(600):  # 600 resting bids: a 5.4 KB answer, well over one 2 KB message
        b.place("a", "ETH-USDT", "buy", 100 + i, 1, client_order_id=i + 1)
    frames = s.on_message(5, 1000, 64, protocol.encode_request(9, [Command(1, Channel.ENGINE_BULK, b.encode())]))
    assert len(frames) > 2 and all(len(r) <= 2_000 for _, r in frames)
    joiner = protocol.Reassembler()
    got = [joiner.feed(a) for _, r in frames for a in protocol.decode_reply(r)[1]]
    [whole] = [a for a in got if a is not None]
    assert whole.status == Status.OK
    answer = decode_answer(whole.payload)
    assert len(answer) == 600 and all(evs[0][0] == EV_ACCEPTED for evs in answer)  # none not_applied
    assert len(s.engine.orders) == 600


def test_a_batch_whose_answers_exceed_the_message_limit_is_answered_in_several_messages():
    s = _bulk_service(max_reply_bytes=2_000)
    cmds = [eng(i + 1, {"op": "balances", "account": "a"}) for i in range(60)]
    frames = s.on_message(5, 1000, 64, protocol.encode_request(9, cmds))
    assert len(frames) > 1 and all(len(r) <= 2_000 for _, r in frames)
    answers = [a for _, r in frames for a in protocol.decode_reply(r)[1]]
    assert [a.request_id for a in answers] == list(range(1, 61))
    assert all(a.status == Status.OK for a in answers)


def test_funds_admin_lists_nonzero_balances_and_changes_nothing():
    s = MatchingService()
    admin = Command(9, Channel.ADMIN_JSON, b'{"op":"funds"}')
    [empty] = run(s, 9, [admin])
    assert orjson.loads(empty.payload) == {"type": "funds", "balances": [], "count": 0, "fees": {}}
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    run(s, 9, [eng(3, {"op": "deposit", "account": "b", "asset": "USDT", "amount": "5", "tx_id": "2"}),
               eng(4, {"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "type": "limit",
                       "tif": "GTC", "price": "10", "qty": "1", "client_order_id": "x"})])
    before = s.engine.state_hash()
    [a] = run(s, 9, [Command(10, Channel.ADMIN_JSON, b'{"op":"funds","limit":1}')])
    doc = orjson.loads(a.payload)
    assert doc["count"] == 2 and len(doc["balances"]) == 1
    row = doc["balances"][0]
    assert (row["account"], row["asset"]) == ("a", "USDT")
    assert float(row["available"]) == 990 and float(row["held"]) == 10
    assert s.engine.state_hash() == before


def test_a_revoke_applied_twice_is_harmless():
    """The pusher's revoke reaches a partition twice after a failover: resent with the same request
    id (its session followed a new leader, or a second session replaced it) or sent again with a
    new id by its next round (after a timeout, from the partition's last_seq). Either way the
    token stays revoked and nothing else changes: one close for the revoked session, no second."""
    from pyengine.service.tokens import TokenSigner

    signer = TokenSigner.generate(kid="k1")
    s = MatchingService(auth_keys={"k1": signer.jwk()["x"]})
    now_s = 1_700_000_000
    token = signer.mint("u", "a", ["trade"], ttl_s=600, now_s=now_s)
    verdict = s.verify_credentials(token.encode(), now_s * 1000)
    assert verdict[0] == 0
    s.on_session_open(7, now_s * 1000, verdict[1:])
    jti = s.principals[7].jti
    service = signer.mint("pusher", "ops", ["admin", "read"], ttl_s=600, now_s=now_s)  # the pusher's session
    s.on_session_open(4, now_s * 1000, s.verify_credentials(service.encode(), now_s * 1000)[1:])
    revoke = orjson.dumps({"op": "revoke", "seq": 1, "jtis": [[jti, now_s + 600]]})

    def send(rid: int) -> tuple[protocol.Answer, list[int]]:
        frames = s.on_message(4, now_s * 1000, 64, protocol.encode_request(9, [Command(rid, Channel.ADMIN_JSON,
                                                                                          revoke)]))
        [answer] = [a for _, r in frames if r is not None for a in protocol.decode_reply(r)[1]]
        return answer, [sid for sid, r in frames if r is None]

    first, closed = send(1)
    assert first.status == Status.OK and orjson.loads(first.payload)["changed"] is True
    assert closed == [7]
    s.on_session_close(7, now_s * 1000)  # what the leader's close of that session applies
    state = (s.engine.state_hash(), s.auth.to_bytes(), sorted(s.principals))
    resent, closed = send(1)  # the same request id: answered from memory
    assert resent.status == Status.DUPLICATE and resent.payload == first.payload and closed == []
    again, closed = send(2)  # a new request id, the same seq: applied, changes nothing
    assert again.status == Status.OK and orjson.loads(again.payload)["changed"] is False and closed == []
    assert (s.engine.state_hash(), s.auth.to_bytes(), sorted(s.principals)) == state
    assert s.auth.revocations.last_seq == 1 and s.auth.revocations.is_revoked(jti)


def _engine_section(blob: bytes) -> tuple[int, int]:
    """(offset, length) of the engine part of a service snapshot."""
    import struct

    from pyengine.service.matching import _SNAP_HEADER

    (length,) = struct.unpack_from("<Q", blob, _SNAP_HEADER.size)
    return _SNAP_HEADER.size + 8, length


def test_the_engine_part_of_a_service_snapshot_has_no_digest_and_restores_exactly():
    """The cluster checks a service snapshot whole (SnapshotChunks' CRC32C, the archive's frame
    checksums), so its engine part is taken without the blake2b digest (engine snapshot version
    5; the digest was half of a warm take: bench/reports/snapshot_write.md). It restores to the
    same state hash, and the reply cache still answers a resend from before the snapshot."""
    s = MatchingService()
    place = {"op": "place", "account": "a", "symbol": "ETH-USDT", "side": "buy", "type": "limit", "tif": "GTC",
             "price": "10", "qty": "1", "client_order_id": "x"}
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    [first] = run(s, 9, [eng(3, place)])
    blob = bytes(s.snapshot_buffer())
    assert blob == s.snapshot()
    at, length = _engine_section(blob)
    part = blob[at:at + length]
    assert part[8:10] == b"\x05\x00" and len(part) == len(s.engine.snapshot()) - 32
    t = MatchingService()
    t.restore(blob)
    assert t.hash_info() == s.hash_info() and t.engine.state_hash() == s.engine.state_hash()
    [again] = run(t, 9, [eng(3, place)])
    assert again.status == Status.DUPLICATE and again.payload == first.payload
    assert t.hash_info() == s.hash_info()  # the resend applied nothing


def test_a_service_snapshot_with_a_signed_version_4_engine_part_still_restores_and_is_checked():
    """Snapshots on disk from before engine version 5 (their engine part ends in a blake2b
    digest) load; a corrupt one is still refused by that digest."""
    import struct

    s = MatchingService()
    run(s, 9, [eng(i + 1, c) for i, c in enumerate(SETUP)])
    blob = s.snapshot()
    at, length = _engine_section(blob)
    signed = s.engine.snapshot()
    assert signed[8:10] == b"\x04\x00"
    old = blob[:at - 8] + struct.pack("<Q", len(signed)) + signed + blob[at + length:]
    t = MatchingService()
    t.restore(old)
    assert t.hash_info() == s.hash_info()
    bad = bytearray(old)
    bad[at + 40] ^= 0xFF
    with pytest.raises(ServiceSnapshotError, match="checksum"):
        MatchingService().restore(bytes(bad))


def test_a_member_start_builds_its_snapshot_cache_from_what_it_read_in_step_or_at_a_take():
    """The cluster waits for a restarting member's restore before its election goes on, so
    ``on_start`` builds nothing: the bridge warms the cache once the member is in step
    (MatchService.doBackgroundWork -> onInStep), from the bytes read for a snapshot this code
    wrote (nothing encoded), by a take for one of engine version 3; a take before that (a
    snapshot in the member's catch-up) builds it from the bytes read, encoding nothing."""
    from pathlib import Path

    s, blob = _service_with_a_dedup_window()
    t = MatchingService()
    t.on_start(0, blob)
    cache = t.engine.snap_cache
    assert cache.seeded and not cache.windows
    assert t.warm_snapshot_cache() is True
    assert cache.windows and (cache.orders_encoded, cache.fills_encoded) == (0, 0)
    assert t.warm_snapshot_cache() is False  # once
    assert t.snapshot() == blob
    assert (cache.orders_encoded, cache.fills_encoded) == (0, 0)
    assert {**t.hash_info(), "member_id": -1} == s.hash_info()
    caught_up = MatchingService()
    caught_up.on_start(0, blob)
    assert caught_up.snapshot() == blob  # a take before the member is in step
    cache = caught_up.engine.snap_cache
    assert (cache.orders_encoded, cache.fills_encoded) == (0, 0)
    assert caught_up.warm_snapshot_cache() is False  # nothing left to build
    old = (Path(__file__).parent / "data" / "service_snapshot_engine_v3.bin").read_bytes()
    u = MatchingService()
    u.on_start(0, old)
    cache = u.engine.snap_cache
    assert not cache.seeded and (cache.orders_encoded, cache.fills_encoded) == (0, 0)
    assert u.warm_snapshot_cache() is True
    warmed = (cache.orders_encoded, cache.fills_encoded)
    assert warmed[0] > 0, warmed
    assert u.warm_snapshot_cache() is False  # once
    u.snapshot()
    assert (cache.orders_encoded, cache.fills_encoded) == warmed
    assert MatchingService().warm_snapshot_cache() is False  # a fresh start has nothing to warm
