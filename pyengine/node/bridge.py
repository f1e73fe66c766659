"""The Python side of the Java shim: implements ``io.matchx.cluster.ServiceHandler``.

The JVM must be running before this module is imported (JPype resolves the interface then).
Request and reply bytes travel through two direct ByteBuffers owned by Java and mapped here once
as memoryviews, so the hot call passes only primitives.

Each Java thread that calls in keeps one Python thread state for its life (``pin_thread_state``):
JPype enters Python with ``PyGILState_Ensure`` and leaves with ``PyGILState_Release``, which for a
thread Python does not know creates a thread state per call and deletes it on the way out (and
Python 3.11 maps and unmaps a frame stack for each). That made a member's path per log message
cost ~60 us of CPU instead of ~20 (bench/reports/single_order_path.md), on every member.

A member that is not the leader gets the messages of one log poll in one call
(``onSessionMessages``): it sends no replies, and the crossing was still ~6 of those ~20 us. A
restarted member replays its log after the snapshot through that path.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time

import jpype
import jpype.nio
import orjson
from jpype import JImplements, JOverride

from pyengine.jvm import TRACE, trace
from pyengine.node.metrics import MessageTimer
from pyengine.node.procs import since_process_start_ms
from pyengine.service.matching import MatchingService
from pyengine.wire import protocol
from pyengine.wire.protocol import Answer

log = logging.getLogger("matchx.bridge")

_FRAME = struct.Struct("<qi")
# a gathered message's record in the input buffer (MatchService.gather): session id, timestamp,
# log position, length; the message's bytes follow
_GATHERED = struct.Struct("<qqqi")
# stage numbers of io.matchx.cluster.LatencyTrace (bench/rtt_breakdown.py; only with MATCHX_TRACE_DIR)
TRACE_ENTRY, TRACE_EXIT = 111, 112

# ``threading.local`` lives in the thread state: set once pinned, it is still set on the next
# crossing only because the state was kept (a thread state created per call would start empty).
_pinned = threading.local()
_ensure = ctypes.pythonapi.PyGILState_Ensure  # PyDLL: called with the GIL held, as it must be
_ensure.restype = ctypes.c_int


def pin_thread_state() -> bool:
    """Keeps the calling thread's Python thread state alive between calls from Java; True if it
    pinned it now. One extra ``PyGILState_Ensure``, never released: the thread's gilstate counter
    then stays above zero, so JPype's ``PyGILState_Release`` after each call releases the GIL but
    keeps the state. A pinned state lives until the process ends (one per Java thread that calls
    in: a member's service thread, and the leader's consensus-module thread at connect)."""
    if getattr(_pinned, "done", False):
        return False
    _ensure()
    _pinned.done = True
    return True


@JImplements("io.matchx.cluster.ServiceHandler")
class ServiceBridge:
    def __init__(self, service: MatchingService) -> None:
        self.service = service
        self.input: memoryview | None = None
        self.output: memoryview | None = None
        self.fatal: str | None = None
        self.snapshot_buffer: bytearray | None = None
        self.timer = MessageTimer()  # the service's time per message and command, for /metrics

    def attach(self, java_service) -> None:
        self.input = memoryview(java_service.inputBuffer()).cast("B")
        self.output = memoryview(java_service.outputBuffer()).cast("B")

    @JOverride
    def onStart(self, member_id, snapshot) -> None:
        pin_thread_state()
        blob = None if snapshot is None else memoryview(snapshot).tobytes()
        try:
            self.service.on_start(int(member_id), blob)
        except Exception as exc:
            # Re-raised as a Java exception so its text reaches MatchService, which halts the
            # member with it: a member must never serve from a partial state.
            raise jpype.JClass("java.lang.IllegalStateException")(f"{type(exc).__name__}: {exc}") from exc
        # a start phase as the Java side logs them (StartPhases.java): bench/member_start.py
        # tells the snapshot's decode apart from the election's replay by it
        log.info("start: service restored (+%.0f ms since process start)", since_process_start_ms())

    @JOverride
    def onSessionMessage(self, session_id, timestamp, position, length) -> int:
        pin_thread_state()
        if TRACE:
            trace(TRACE_ENTRY)
        frames = self._apply(int(session_id), int(timestamp), int(position), self.input[: int(length)])
        out = self.output
        offset = 0
        for target, reply in frames:
            if reply is None:  # close this session (its token was revoked)
                if offset + _FRAME.size <= len(out):
                    _FRAME.pack_into(out, offset, target, -1)
                    offset += _FRAME.size
                continue
            end = offset + _FRAME.size + len(reply)
            if end > len(out):
                log.error("reply of %d bytes exceeds the output buffer; dropped", len(reply))
                break
            _FRAME.pack_into(out, offset, target, len(reply))
            out[offset + _FRAME.size : end] = reply
            offset = end
        if TRACE:
            trace(TRACE_EXIT)
        return offset

    @JOverride
    def onSessionMessages(self, count, length) -> int:
        """The messages of one log poll on a member that is not the leader, each applied as
        ``onSessionMessage`` applies it. Their replies are not written: a follower's are never
        sent. Nor are its requests to close a session: Aeron ignores them on a follower."""
        pin_thread_state()
        data = self.input
        end = int(length)
        offset = 0
        replies = 0
        for _ in range(int(count)):
            session_id, timestamp, position, size = _GATHERED.unpack_from(data, offset)
            start = offset + _GATHERED.size
            offset = start + size
            if offset > end:
                raise ValueError(f"gathered message at {start - _GATHERED.size} overruns the {end} bytes handed over")
            for _target, reply in self._apply(session_id, timestamp, position, data[start:offset]):
                if reply is not None:
                    replies += 1
        return replies

    def _apply(
        self, session_id: int, timestamp: int, position: int, message: memoryview
    ) -> list[tuple[int, bytes | None]]:
        """One log message through the service: its reply frames, or an error answer to each of
        its commands if the service raised (a member must go on applying the log)."""
        started = time.perf_counter()
        try:
            frames = self.service.on_message(session_id, timestamp, position, message)
        except Exception as exc:  # noqa: BLE001 - a member must go on applying the log
            log.exception("service raised at log position %d; every command of the message is answered "
                          "with an error", position)
            frames = failure_replies(self.service, session_id, position, message, exc)
        self.timer.observe(time.perf_counter() - started, self.service.counters.last_commands)
        return frames

    @JOverride
    def onSessionOpen(self, session_id, timestamp, principal) -> None:
        blob = b"" if principal is None else memoryview(principal).tobytes()
        self.service.on_session_open(int(session_id), int(timestamp), blob)

    @JOverride
    def onSessionClose(self, session_id, timestamp) -> None:
        self.service.on_session_close(int(session_id), int(timestamp))

    @JOverride
    def onTakeSnapshot(self, position):
        started = time.perf_counter()
        buf = self.service.snapshot_buffer()
        # Java reads this memory after we return (chunking it into the snapshot recording): it
        # stays referenced until Java says it is written
        self.snapshot_buffer = buf
        log.info("snapshot at position %d: %d bytes, built in %.0f ms", int(position), len(buf),
                 (time.perf_counter() - started) * 1000)
        return jpype.nio.convertToDirectBuffer(buf)

    @JOverride
    def onSnapshotWritten(self) -> None:
        self.snapshot_buffer = None

    @JOverride
    def onInStep(self) -> None:
        started = time.perf_counter()
        if self.service.warm_snapshot_cache():
            log.info("snapshot cache warmed in %.0f ms, after the member was in step",
                     (time.perf_counter() - started) * 1000)

    @JOverride
    def onRoleChange(self, role) -> None:
        self.service.role = int(role)
        log.info("role -> %s", {0: "follower", 1: "candidate", 2: "leader"}.get(int(role), role))

    @JOverride
    def onTerminate(self) -> None:
        log.info("service terminating")


def failure_replies(
    service: MatchingService, session_id: int, position: int, message: memoryview, exc: Exception
) -> list[tuple[int, bytes | None]]:
    """The answers to a message the service raised on (its own errors are answers already; this
    is for a bug outside them). Without an answer the client would resend the command forever.
    A command of the message answered before the failure (in the reply cache) keeps its answer;
    every other one gets ERROR naming the failure. Built from the message, the reply cache and
    the exception's type only, so every member answers alike (followers' answers are not sent,
    but a new leader answers a resend from the same state)."""
    try:
        client_id, commands = protocol.decode_request(message)
    except protocol.ProtocolError as bad:
        return [(session_id, protocol.encode_error(f"malformed request: {bad}"))]
    error = orjson.dumps({"error": f"internal: the service failed on this message ({type(exc).__name__}) "
                                   f"at log position {position}; see the member log"})
    answers = []
    for command in commands:
        cached = service.replies.get(client_id, command.request_id)
        status, payload = cached if cached is not None else (protocol.Status.ERROR, error)
        answers.append(Answer(command.request_id, status, payload))
    return [(session_id, reply) for reply in protocol.encode_replies(answers, service.max_reply_bytes)]


@JImplements("io.matchx.cluster.CredentialsVerifier")
class CredentialsBridge:
    """Token verification at connect (leader's consensus-module thread), with PyNaCl."""

    def __init__(self, service: MatchingService) -> None:
        self.service = service

    @JOverride
    def verify(self, credentials, now_ms):
        pin_thread_state()
        blob = b"" if credentials is None else memoryview(credentials).tobytes()
        try:
            verdict = self.service.verify_credentials(blob, int(now_ms))
        except Exception:  # noqa: BLE001 - a verifier bug must reject, not crash the leader
            log.exception("credential verification failed")
            verdict = b"\x01internal_error"
        return jpype.JArray(jpype.JByte)(verdict)
