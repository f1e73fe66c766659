"""The wire format between the client SDK and the replicated service.

A request message carries a batch of commands so that one Java->Python crossing serves many
orders; a reply message carries the answers to the requests of one batch for one session.
All integers little-endian.

Request:  ``'MX' u8 version u8 kind=1 u64 client_id u16 count`` then per command
          ``u64 request_id u8 channel u32 length`` and ``length`` payload bytes.
Reply:    ``'MX' u8 version u8 kind=2 u16 count`` then per answer
          ``u64 request_id u8 status u32 length`` and the payload.
Error:    ``'MX' u8 version u8 kind=3 u16 0`` then a UTF-8 text: the message was not understood.
Market:   ``'MX' u8 version u8 kind=4 u16 0`` then a JSON list of market data updates pushed to a
          subscribed session (docs/market-data.md); not an answer to any request.

An answer too large for one message travels as consecutive PART answers (``Status.PART``),
each ``u32 offset u32 total u8 status`` and a piece of the payload; ``Reassembler`` joins them.

``request_id`` is the idempotency key of a command within a client: the service remembers the
answers per ``client_id`` so a resend after failover returns the original outcome.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"MX"
VERSION = 1

KIND_REQUEST = 1
KIND_REPLY = 2
KIND_ERROR = 3
KIND_MARKET = 4
# A planned leader handover (docs/operations.md): the leader that is about to end its log sends
# each session a HOLD (a reply header with count 0, nothing after it); our SDK stops sending, answers
# with a HOLD_ACK (a request header with count 0) behind whatever it had sent, and queues new
# commands until the new leader announces itself. The member's Java service takes the ack out of
# the log before the engine sees it (MatchService.isHoldAck). Other clients ignore the HOLD.
KIND_HOLD = 5
KIND_HOLD_ACK = 6

REQUEST_HEADER = struct.Struct("<2sBBQH")
REPLY_HEADER = struct.Struct("<2sBBH")
ENTRY = struct.Struct("<QBI")

MAX_BATCH = 1024
# an answer's payload up to this size is cut into PART pieces when it does not fit one message;
# a larger one is answered ERROR answer_too_large (the member's reply buffer is 4 MiB)
MAX_SPLIT_ANSWER_BYTES = 1 << 20
PART_HEADER = struct.Struct("<IIB")


class Channel(IntEnum):
    """What a command payload is."""

    ENGINE_JSON = 1  # an engine command as a JSON object
    ENGINE_BINARY = 2  # an engine command in the engine's binary codec
    ADMIN_JSON = 3  # a service command (state_hash, ping, ...) as a JSON object
    ENGINE_BULK = 4  # many place/cancel/amend commands in ticks and lots (pyengine/wire/bulk.py)


class Status(IntEnum):
    OK = 0
    DUPLICATE = 1  # a resend of a command that succeeded: the payload is the original answer
    # (a resend of a command that failed is answered with its original status and payload)
    ERROR = 2  # the command could not be processed at all; payload is JSON {"error": ...}
    MOVED = 3  # this partition does not own the symbol; payload is JSON {"symbol", "epoch"}
    UNAUTHORISED = 4  # the session's token does not allow it; payload is JSON {"reason": code}
    PART = 5  # a piece of an answer too large for one message: PART_HEADER + bytes (Reassembler)


class ProtocolError(ValueError):
    """A message that does not follow the format; the text says where."""


@dataclass(frozen=True, slots=True)
class Command:
    request_id: int
    channel: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: int
    status: int
    payload: bytes


def encode_request(client_id: int, commands: list[Command]) -> bytes:
    if not 0 < len(commands) <= MAX_BATCH:
        raise ProtocolError(f"a batch holds 1..{MAX_BATCH} commands, not {len(commands)}")
    parts = [REQUEST_HEADER.pack(MAGIC, VERSION, KIND_REQUEST, client_id, len(commands))]
    for c in commands:
        parts.append(ENTRY.pack(c.request_id, c.channel, len(c.payload)))
        parts.append(c.payload)
    return b"".join(parts)


def decode_request(buf: bytes | memoryview) -> tuple[int, list[Command]]:
    """Returns (client_id, commands) or raises ProtocolError; never reads past ``buf``."""
    n = len(buf)
    if n < REQUEST_HEADER.size:
        raise ProtocolError(f"message of {n} bytes is shorter than the {REQUEST_HEADER.size}-byte header")
    magic, version, kind, client_id, count = REQUEST_HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a matchx message")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this service speaks {VERSION})")
    if kind != KIND_REQUEST:
        raise ProtocolError(f"message kind {kind} is not a request")
    if not 0 < count <= MAX_BATCH:
        raise ProtocolError(f"batch count {count} outside 1..{MAX_BATCH}")
    offset = REQUEST_HEADER.size
    commands = []
    for i in range(count):
        if offset + ENTRY.size > n:
            raise ProtocolError(f"command {i}: truncated entry header at byte {offset}")
        request_id, channel, length = ENTRY.unpack_from(buf, offset)
        offset += ENTRY.size
        if offset + length > n:
            raise ProtocolError(f"command {i}: payload of {length} bytes runs past the message end")
        commands.append(Command(request_id, channel, bytes(buf[offset : offset + length])))
        offset += length
    if offset != n:
        raise ProtocolError(f"{n - offset} trailing bytes after {count} commands")
    return client_id, commands


def encode_reply(answers: list[Answer]) -> bytes:
    parts = [REPLY_HEADER.pack(MAGIC, VERSION, KIND_REPLY, len(answers))]
    for a in answers:
        parts.append(ENTRY.pack(a.request_id, a.status, len(a.payload)))
        parts.append(a.payload)
    return b"".join(parts)


def encode_replies(answers: list[Answer], max_bytes: int) -> list[bytes]:
    """``answers`` as reply messages of at most ``max_bytes`` each (Aeron cannot carry a larger
    message). The client handles each reply message on its own, so splitting changes nothing
    for it. An answer too large for one message is cut into PART pieces (up to
    ``MAX_SPLIT_ANSWER_BYTES``); a larger one becomes an ERROR answer that says so."""
    room = max_bytes - REPLY_HEADER.size - ENTRY.size  # the largest payload one message carries
    if room <= PART_HEADER.size:
        raise ValueError(f"max_bytes {max_bytes} leaves no room for an answer")
    if len(answers) == 1 and len(answers[0].payload) <= room:
        return [encode_reply(answers)]  # a single order's answer: the common case, one message
    out: list[bytes] = []
    part: list[Answer] = []
    size = REPLY_HEADER.size
    for whole in answers:
        for a in _pieces(whole, room):
            need = ENTRY.size + len(a.payload)
            if part and (size + need > max_bytes or len(part) == MAX_BATCH):
                out.append(encode_reply(part))
                part, size = [], REPLY_HEADER.size
            part.append(a)
            size += need
    if part or not out:
        out.append(encode_reply(part))
    return out


def _pieces(a: Answer, room: int) -> list[Answer]:
    n = len(a.payload)
    if n <= room:
        return [a]
    if n > MAX_SPLIT_ANSWER_BYTES:
        text = f"answer_too_large: {n:,} bytes, over the {MAX_SPLIT_ANSWER_BYTES:,}-byte limit of one answer"
        return [Answer(a.request_id, Status.ERROR, b'{"error":"' + text.encode() + b'"}')]
    step = room - PART_HEADER.size
    view = memoryview(a.payload)
    return [Answer(a.request_id, Status.PART, PART_HEADER.pack(off, n, a.status) + view[off : off + step])
            for off in range(0, n, step)]


class Reassembler:
    """Joins the PART pieces of split answers back into answers (one receiving thread).

    A member sends the pieces of one answer in order, in consecutive messages of its session. A
    piece that does not continue what was received (a reply message was dropped under back
    pressure) discards the partial answer: the request stays unanswered, and the SDK's resend
    gets the whole answer again from the reply cache, as pieces from offset 0.
    """

    MAX_PARTIAL = 256  # partial answers kept at once; the oldest goes first

    def __init__(self) -> None:
        self._partial: dict[int, tuple[int, int, bytearray]] = {}

    def feed(self, a: Answer) -> Answer | None:
        """The answer itself, the completed answer of its last piece, or None while incomplete.
        Raises ProtocolError for a malformed piece or one out of sequence (it is discarded)."""
        if a.status != Status.PART:
            return a
        rid = a.request_id
        if len(a.payload) <= PART_HEADER.size:
            self._partial.pop(rid, None)
            raise ProtocolError(f"answer {rid}: a piece shorter than its header")
        offset, total, status = PART_HEADER.unpack_from(a.payload)
        piece = a.payload[PART_HEADER.size :]
        if offset == 0:
            self._partial.pop(rid, None)
            while len(self._partial) >= self.MAX_PARTIAL:
                self._partial.pop(next(iter(self._partial)))
            entry = self._partial[rid] = (total, status, bytearray())
        else:
            entry = self._partial.get(rid)
            if entry is None or entry[0] != total or len(entry[2]) != offset:
                self._partial.pop(rid, None)
                raise ProtocolError(f"answer {rid}: piece at {offset} of {total} does not follow what was received")
        buf = entry[2]
        buf += piece
        if len(buf) > total or status == Status.PART:
            self._partial.pop(rid, None)
            raise ProtocolError(f"answer {rid}: pieces exceed the announced {total} bytes or nest")
        if len(buf) < total:
            return None
        del self._partial[rid]
        return Answer(rid, status, bytes(buf))

    def pending(self) -> int:
        return len(self._partial)


def encode_error(text: str) -> bytes:
    return REPLY_HEADER.pack(MAGIC, VERSION, KIND_ERROR, 0) + text.encode()


def encode_market(payload: bytes) -> bytes:
    return REPLY_HEADER.pack(MAGIC, VERSION, KIND_MARKET, 0) + payload


def encode_hold_ack(client_id: int) -> bytes:
    """The SDK's answer to a HOLD: every command it sent before this one has reached the leader."""
    return REQUEST_HEADER.pack(MAGIC, VERSION, KIND_HOLD_ACK, client_id, 0)


def decode_reply(buf: bytes | memoryview) -> tuple[int, list[Answer] | str | bytes]:
    """Returns (KIND_REPLY, answers), (KIND_ERROR, text), (KIND_MARKET, JSON bytes) or
    (KIND_HOLD, b"")."""
    n = len(buf)
    if n < REPLY_HEADER.size:
        raise ProtocolError(f"reply of {n} bytes is shorter than its header")
    magic, version, kind, count = REPLY_HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("not a matchx reply of this version")
    if kind == KIND_ERROR:
        return KIND_ERROR, bytes(buf[REPLY_HEADER.size :]).decode(errors="replace")
    if kind == KIND_MARKET:
        return KIND_MARKET, bytes(buf[REPLY_HEADER.size :])
    if kind == KIND_HOLD:
        return KIND_HOLD, b""
    if kind != KIND_REPLY:
        raise ProtocolError(f"reply kind {kind} unknown")
    offset = REPLY_HEADER.size
    answers = []
    for i in range(count):
        if offset + ENTRY.size > n:
            raise ProtocolError(f"answer {i}: truncated")
        request_id, status, length = ENTRY.unpack_from(buf, offset)
        offset += ENTRY.size
        if offset + length > n:
            raise ProtocolError(f"answer {i}: payload runs past the end")
        answers.append(Answer(request_id, status, bytes(buf[offset : offset + length])))
        offset += length
    return KIND_REPLY, answers
