"""What the service counts for monitoring: commands by kind and outcome, engine rejects by reason.

Only counts (no clock, no HTTP, no prometheus_client): the node's ``/metrics`` endpoint
(``pyengine/node/metrics.py``) reads these plain integers at scrape time. Counting happens once per
log message over its answers, so the per-command cost is a dict update and a prefix check.
Counts are output only: nothing in the service reads them back, so they cannot make members differ.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyengine.wire.codec import T_JSON
from pyengine.wire.protocol import Answer, Channel, Command, Status

KINDS = {Channel.ENGINE_JSON: "json", Channel.ENGINE_BINARY: "binary", Channel.ENGINE_BULK: "bulk",
         Channel.ADMIN_JSON: "admin"}
OUTCOMES = {Status.OK: "accepted", Status.DUPLICATE: "duplicate", Status.ERROR: "error",
            Status.MOVED: "moved", Status.UNAUTHORISED: "unauthorised", Status.PART: "accepted"}

# How an engine reject starts: the engine builds {"type": "rejected", "reason": ...} in this order
# and orjson keeps it. JSON answers are the event list; binary answers carry a reject as a JSON
# event (tag T_JSON, u32 length) after the u32 event count.
_JSON_REJECT = b'[{"type":"rejected","reason":"'
_BINARY_REJECT = bytes((T_JSON,))
_BINARY_REJECT_BODY = b'{"type":"rejected","reason":"'
_BINARY_BODY_AT = 4 + 1 + 4
# plain ints: an enum member's attribute lookup costs microseconds on Python 3.11
_OK = int(Status.OK)
_ENGINE_JSON = int(Channel.ENGINE_JSON)
_ENGINE_BINARY = int(Channel.ENGINE_BINARY)


class ServiceCounters:
    """Counts of one member's service since it started (Prometheus counters reset on restart)."""

    __slots__ = ("outcomes", "rejects", "messages", "commands", "last_commands")

    def __init__(self) -> None:
        self.outcomes: dict[tuple[int, int], int] = {}  # (channel, status) -> commands
        # (channel, engine reject reason) -> commands answered OK with that reject
        self.rejects: dict[tuple[int, str], int] = {}
        self.messages = 0
        self.commands = 0
        self.last_commands = 0  # commands in the last message (the node's per-command timing)

    def count(self, commands: Sequence[Command], answers: Sequence[Answer]) -> None:
        self.messages += 1
        self.commands += len(answers)
        self.last_commands = len(answers)
        outcomes = self.outcomes
        for command, answer in zip(commands, answers, strict=False):
            key = (command.channel, answer.status)
            outcomes[key] = outcomes.get(key, 0) + 1
            if answer.status == _OK:
                reason = _reject_reason(command.channel, answer.payload)
                if reason is not None:
                    rkey = (command.channel, reason)
                    self.rejects[rkey] = self.rejects.get(rkey, 0) + 1

    def malformed(self) -> None:
        """A message that could not be decoded at all: one error answer."""
        self.messages += 1
        self.last_commands = 0
        key = (0, Status.ERROR)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def by_kind_outcome(self) -> dict[tuple[str, str], int]:
        """{(kind, outcome): commands}, engine rejects moved from "accepted" to "rejected"."""
        out: dict[tuple[str, str], int] = {}
        for (channel, status), n in list(self.outcomes.items()):
            key = (KINDS.get(channel, "malformed"), OUTCOMES.get(status, "error"))
            out[key] = out.get(key, 0) + n
        for (kind, _reason), n in self.rejects_by_kind().items():
            out[(kind, "accepted")] = out.get((kind, "accepted"), 0) - n
            out[(kind, "rejected")] = out.get((kind, "rejected"), 0) + n
        return out

    def rejects_by_kind(self) -> dict[tuple[str, str], int]:
        """{(kind, reason): engine rejects}."""
        return {(KINDS.get(channel, "malformed"), reason): n for (channel, reason), n in list(self.rejects.items())}


def _reject_reason(channel: int, payload: bytes) -> str | None:
    if channel == _ENGINE_JSON:
        if payload.startswith(_JSON_REJECT):
            end = payload.find(b'"', len(_JSON_REJECT))
            return payload[len(_JSON_REJECT) : end].decode(errors="replace") if end > 0 else "unknown"
        return None
    if channel == _ENGINE_BINARY:
        if payload[4:5] == _BINARY_REJECT and payload.startswith(_BINARY_REJECT_BODY, _BINARY_BODY_AT):
            start = _BINARY_BODY_AT + len(_BINARY_REJECT_BODY)
            end = payload.find(b'"', start)
            return payload[start:end].decode(errors="replace") if end > 0 else "unknown"
    return None
