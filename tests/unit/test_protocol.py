import pytest

from pyengine.wire import protocol
from pyengine.wire.protocol import Answer, Command, ProtocolError


def test_request_round_trip():
    cmds = [Command(1, 1, b'{"op":"x"}'), Command(2**63, 3, b"")]
    client_id, decoded = protocol.decode_request(protocol.encode_request(42, cmds))
    assert client_id == 42 and decoded == cmds


def test_reply_round_trip():
    answers = [Answer(7, 0, b"[]"), Answer(8, 1, b"abc")]
    assert protocol.decode_reply(protocol.encode_reply(answers)) == (protocol.KIND_REPLY, answers)
    assert protocol.decode_reply(protocol.encode_error("nope")) == (protocol.KIND_ERROR, "nope")


@pytest.mark.parametrize("cut", range(0, 30))
def test_every_truncation_is_a_clear_error(cut):
    msg = protocol.encode_request(1, [Command(1, 1, b"0123456789")])
    with pytest.raises(ProtocolError):
        protocol.decode_request(msg[:cut])


@pytest.mark.parametrize(
    "bad, words",
    [
        (b"XX" + bytes(12), "magic"),
        (b"MX\x02\x01" + bytes(10), "version"),
        (b"MX\x01\x02" + bytes(10), "not a request"),
        (b"MX\x01\x01" + bytes(8) + b"\x00\x00", "count"),
    ],
)
def test_bad_headers_name_the_problem(bad, words):
    with pytest.raises(ProtocolError, match=words):
        protocol.decode_request(bad)


def test_trailing_bytes_are_refused():
    with pytest.raises(ProtocolError, match="trailing"):
        protocol.decode_request(protocol.encode_request(1, [Command(1, 1, b"x")]) + b"!")


def _delivered(msgs: list[bytes]) -> list:
    from pyengine.wire.protocol import Reassembler, decode_reply

    joiner = Reassembler()
    out = [joiner.feed(a) for m in msgs for a in decode_reply(m)[1]]
    assert joiner.pending() == 0
    return [a for a in out if a is not None]


def test_replies_are_split_to_fit_the_message_limit_and_large_answers_travel_in_pieces():
    from pyengine.wire.protocol import MAX_SPLIT_ANSWER_BYTES, Answer, Status, decode_reply, encode_replies

    answers = [Answer(i, Status.OK, bytes([i]) * 100) for i in range(1, 51)]
    big = Answer(99, Status.DUPLICATE, bytes(range(256)) * 20)
    answers += [big, Answer(100, Status.OK, b"after")]
    msgs = encode_replies(answers, 1000)
    assert len(msgs) > 10 and all(len(m) <= 1000 for m in msgs)
    raw = [a for m in msgs for a in decode_reply(m)[1]]
    assert {a.status for a in raw if a.request_id == 99} == {Status.PART}
    # what a client hands on: every answer whole, in order, with its own status
    assert _delivered(msgs) == answers
    huge = Answer(7, Status.OK, bytes(MAX_SPLIT_ANSWER_BYTES + 1))
    [err] = _delivered(encode_replies([huge], 1000))
    assert err.status == Status.ERROR and b"answer_too_large" in err.payload
    assert decode_reply(encode_replies([], 1000)[0]) == (2, [])


def test_a_single_answer_is_one_message_up_to_the_limit_and_pieces_beyond_it():
    """One answer per message is the single-order case, which encode_replies takes by a short
    path: exactly at the message limit it is still one whole message, one byte over it travels
    in pieces, and no message ever exceeds the limit."""
    from pyengine.wire.protocol import ENTRY, REPLY_HEADER, Answer, Status, decode_reply, encode_replies

    limit = 1000
    room = limit - REPLY_HEADER.size - ENTRY.size
    for size, whole in ((0, True), (room - 1, True), (room, True), (room + 1, False), (3 * room, False)):
        answer = Answer(3, Status.OK, bytes(range(256)) * (size // 256) + bytes(size % 256))
        msgs = encode_replies([answer], limit)
        assert all(len(m) <= limit for m in msgs), size
        raw = [a for m in msgs for a in decode_reply(m)[1]]
        assert (raw == [answer]) is whole, size
        assert _delivered(msgs) == [answer], size
    with pytest.raises(ValueError, match="no room"):
        encode_replies([Answer(1, Status.OK, b"")], REPLY_HEADER.size + ENTRY.size + 5)


def test_a_missing_piece_discards_the_partial_answer_and_a_resend_from_offset_0_completes():
    from pyengine.wire.protocol import Answer, Reassembler, Status, decode_reply, encode_replies

    big = Answer(5, Status.OK, bytes(range(256)) * 30)
    pieces = [a for m in encode_replies([big], 1000) for a in decode_reply(m)[1]]
    assert len(pieces) >= 3
    joiner = Reassembler()
    assert joiner.feed(pieces[0]) is None
    with pytest.raises(ProtocolError, match="does not follow"):
        joiner.feed(pieces[2])  # pieces[1] was lost
    assert joiner.pending() == 0
    with pytest.raises(ProtocolError, match="does not follow"):
        joiner.feed(pieces[1])
    got = [joiner.feed(p) for p in pieces]  # the resend: every piece again from offset 0
    assert got[-1] == big and got[:-1] == [None] * (len(pieces) - 1)
    with pytest.raises(ProtocolError, match="shorter than its header"):
        joiner.feed(Answer(6, Status.PART, b"\x00"))


def test_a_handovers_hold_notice_and_the_sdks_ack():
    # the leader's notice (MatchService.HOLD_FRAME) and the ack the member's Java service takes
    # out of the log by its 14 bytes (MatchService.isHoldAck; HandoverTest checks the Java side)
    assert protocol.decode_reply(b"MX\x01\x05\x00\x00") == (protocol.KIND_HOLD, b"")
    ack = protocol.encode_hold_ack(42)
    assert len(ack) == 14 and ack[:4] == b"MX\x01\x06"
    # never mistaken for a request: the engine's decoder refuses it (it never reaches it)
    with pytest.raises(ProtocolError):
        protocol.decode_request(ack)
