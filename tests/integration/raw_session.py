"""A cluster session driven by hand, for tests that must choose the request ids themselves.

``RawSession`` drives the SDK's lower layer, the Java ``ClusterClient`` (Aeron's client with its
own embedded media driver), but none of ``MatchClient``'s request-id numbering, resends or
reply matching: a test sends exactly the request (client id, request id, payload) it means to,
as often as it means to, and reads each answer as the bytes the member sent.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

from pyengine import jvm
from pyengine.client.match_client import EVENT_CONNECTED, EVENT_MESSAGE, EVENT_NEW_LEADER, split_events
from pyengine.wire import protocol
from pyengine.wire.protocol import Answer, Command

_seq = itertools.count()


class RawSession:
    def __init__(self, endpoints: str, client_id: int) -> None:
        jvm.start()
        import jpype

        self._jbytes = jpype.JArray(jpype.JByte)
        self.client_id = client_id
        self.aeron_dir = f"/dev/shm/matchx-rawtest-{os.getpid()}-{next(_seq)}"
        self.java = jpype.JClass("io.matchx.cluster.client.ClusterClient")(
            endpoints, self.aeron_dir, "127.0.0.1", 2000, 5000, self._jbytes(b""), False)
        self.answers: list[Answer] = []  # every whole answer received, in order
        self.leaders: list[int] = []  # the leader of each connect / new-leader event
        self.holds = 0  # hold notices received (and ignored) from a leader handing over
        self._parts = protocol.Reassembler()

    def send(self, request_id: int, channel: int, payload: bytes, timeout: float = 30) -> None:
        """Offers one request until the cluster takes it (waits out a failover)."""
        message = self._jbytes(protocol.encode_request(self.client_id, [Command(request_id, channel, payload)]))
        deadline = time.monotonic() + timeout
        while (result := self.java.offer(message)) <= 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} not taken by the cluster in {timeout} s (offer {result})")
            self.poll(0.05)
        assert result > 0

    def answer(self, request_id: int, timeout: float = 30) -> Answer:
        """The next answer to ``request_id`` not returned before."""
        deadline = time.monotonic() + timeout
        while True:
            for i, a in enumerate(self.answers):
                if a.request_id == request_id:
                    return self.answers.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to request {request_id} in {timeout} s")
            self.poll(0.1)

    def poll(self, timeout: float) -> None:
        blob = self.java.poll(int(timeout * 1000))
        if blob is None:
            return
        for kind, body in split_events(memoryview(blob).tobytes()):
            if kind == EVENT_MESSAGE:
                what, answers = protocol.decode_reply(body)
                if what == protocol.KIND_HOLD:
                    self.holds += 1
                    continue  # a client that is not the SDK ignores a handover's hold notice
                assert what == protocol.KIND_REPLY, answers
                assert isinstance(answers, list)
                for piece in answers:
                    whole = self._parts.feed(piece)
                    if whole is not None:
                        self.answers.append(whole)
            elif kind in (EVENT_CONNECTED, EVENT_NEW_LEADER):
                self.leaders.append(int(body.split(b" ")[0]))

    def wait_leader(self, leader: int, timeout: float = 30) -> None:
        """Until this session has been told that ``leader`` leads."""
        deadline = time.monotonic() + timeout
        while not self.leaders or self.leaders[-1] != leader:
            if time.monotonic() > deadline:
                raise TimeoutError(f"session still on leader {self.leaders[-1:]} after {timeout} s, not {leader}")
            self.poll(0.1)

    def close(self) -> None:
        self.java.close()
        # the embedded driver deletes its directory on close; a test fails if it is left
        if Path(self.aeron_dir).exists():
            shutil.rmtree(self.aeron_dir, ignore_errors=True)
            raise AssertionError(f"{self.aeron_dir} left behind by the client")

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
