import pytest

from pyengine import protocol
from pyengine.protocol import Answer, Command, ProtocolError


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


def test_replies_are_split_to_fit_the_message_limit_and_oversized_answers_become_errors():
    from pyengine.protocol import Answer, Status, decode_reply, encode_replies

    answers = [Answer(i, Status.OK, bytes(100)) for i in range(1, 51)]
    answers.append(Answer(99, Status.OK, bytes(5000)))
    msgs = encode_replies(answers, 1000)
    assert len(msgs) > 5 and all(len(m) <= 1000 for m in msgs)
    got = [a for m in msgs for a in decode_reply(m)[1]]
    assert [a.request_id for a in got] == [a.request_id for a in answers]
    assert got[:50] == answers[:50]
    assert got[50].status == Status.ERROR and b"answer_too_large" in got[50].payload
    assert decode_reply(encode_replies([], 1000)[0]) == (2, [])
