"""A message the service raises on (a bug outside its own error handling) is still answered:
the JVM bridge (pyengine/node/bridge.py) answers each of its commands, so no client resends a
command forever. Runs the real bridge in this process's JVM over real direct ByteBuffers, as
MatchService hands them over; the fault is injected into a real MatchingService."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import orjson
import pytest

from pyengine import jvm
from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.protocol import Channel, Command, Status

_FRAME = struct.Struct("<qi")
BOOM = b'{"op":"ping","boom":1}'


class FailingService(MatchingService):
    """Raises on the command ``BOOM``, after the commands before it in its message were applied."""

    def _apply(self, client_id, command, ts_ns, position, principal):
        if command.payload == BOOM:
            raise RuntimeError(f"injected failure at {id(self):#x}")  # the text differs per process
        return super()._apply(client_id, command, ts_ns, position, principal)


def bridge_over(service: MatchingService):
    jvm.start()
    import jpype

    from pyengine.node.bridge import ServiceBridge

    buffers = [jpype.JClass("java.nio.ByteBuffer").allocateDirect(1 << 20) for _ in range(2)]
    bridge = ServiceBridge(service)
    bridge.attach(SimpleNamespace(inputBuffer=lambda: buffers[0], outputBuffer=lambda: buffers[1]))
    return bridge


def deliver(bridge, session_id: int, position: int, message: bytes) -> list[bytes]:
    """One log message through the bridge, as MatchService delivers it: the reply frames out."""
    bridge.input[: len(message)] = message
    end = bridge.onSessionMessage(session_id, 1_000, position, len(message))
    frames, offset = [], 0
    while offset < end:
        target, length = _FRAME.unpack_from(bridge.output, offset)
        assert target == session_id
        frames.append(bytes(bridge.output[offset + _FRAME.size : offset + _FRAME.size + length]))
        offset += _FRAME.size + length
    return frames


@pytest.fixture
def bridges():
    return [bridge_over(FailingService()) for _ in range(2)]  # two members of one partition


def test_every_command_of_a_message_the_service_raised_on_is_answered(bridges, caplog):
    add = orjson.dumps({"op": "add_symbol", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                        "tick_size": "0.01", "lot_size": "0.001"})
    message = protocol.encode_request(77, [Command(1, Channel.ENGINE_JSON, add),
                                           Command(2, Channel.ADMIN_JSON, BOOM),
                                           Command(3, Channel.ADMIN_JSON, b'{"op":"ping"}')])
    with caplog.at_level("ERROR", logger="matchx.bridge"):
        out = [deliver(b, 9, 4096, message) for b in bridges]
    assert out[0] == out[1]  # every member answers alike (the exception's text is left out)
    assert "service raised at log position 4096" in caplog.text and "injected failure" in caplog.text
    (reply,) = out[0]
    kind, answers = protocol.decode_reply(reply)
    assert kind == protocol.KIND_REPLY and isinstance(answers, list)
    assert [(a.request_id, a.status) for a in answers] == [(1, Status.OK), (2, Status.ERROR), (3, Status.ERROR)]
    # the symbol was added before the failure: its own answer, not an error that would invite the
    # client to send it again
    assert orjson.loads(answers[0].payload)[0]["type"] == "symbol_added"
    for a in answers[1:]:
        error = orjson.loads(a.payload)["error"]
        assert error == ("internal: the service failed on this message (RuntimeError) at log position "
                         "4096; see the member log")

    # the members go on: the next message is applied and answered normally, alike
    after = protocol.encode_request(77, [Command(4, Channel.ADMIN_JSON, b'{"op":"ping"}')])
    out = [deliver(b, 9, 8192, after) for b in bridges]
    assert out[0] == out[1]
    _, answers = protocol.decode_reply(out[0][0])
    assert [(a.request_id, a.status, a.payload) for a in answers] == [(4, Status.OK, b'{"type":"pong"}')]


def test_a_message_that_does_not_decode_is_answered_too():
    class Raises(MatchingService):
        def on_message(self, *args):
            raise RuntimeError("injected")

    bridge = bridge_over(Raises())
    (reply,) = deliver(bridge, 3, 64, b"MX garbage")
    kind, text = protocol.decode_reply(reply)
    assert kind == protocol.KIND_ERROR and "malformed request" in str(text)
