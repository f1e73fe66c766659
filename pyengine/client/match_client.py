"""Client SDK: send commands to one partition and get their outcomes, across failovers.

    with MatchClient("0=127.0.0.1:20001,1=127.0.0.1:20011,2=127.0.0.1:20021") as c:
        c.request({"op": "deposit", ...})                # blocking
        fut = c.submit({"op": "place", ...})              # concurrent.futures.Future

Aeron's ``AeronCluster`` (Java, through JPype, with an embedded media driver) does the
transport: given any member, a follower answers REDIRECT and the client moves to the leader;
after a failover the new leader's NewLeader event moves it again. The receive thread polls egress
itself, running the embedded driver first (it has no thread of its own: an offer runs it too, so
a command leaves on the thread that offers it); a Java thread keeps the session alive, reconnects
when the session is closed, and polls egress while the receive thread is away (a slow callback).
This module adds what Aeron does not: every command gets a request id, unanswered commands are
resent (after a new leader, a reconnect, or a quiet interval) with the same id, and the service
answers a resend with the original outcome, so a failover costs no order and applies none twice.

Commands submitted close together leave as one cluster message (one batch): the sender thread
takes everything queued when it wakes, so batching adds no delay. ``request()`` with nothing else
in flight is sent and answered on the caller's thread instead (``sync_requests``): no hand-over
to the send thread, the Java poller or the receive thread (bench/reports/single_order_20_cuts.md).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from pyengine import jvm
from pyengine.client.market import Callback, Subscription
from pyengine.client.pacing import FirstWait
from pyengine.wire import protocol
from pyengine.wire.bulk import BulkBuilder
from pyengine.wire.bulk import decode_answer as decode_bulk_answer
from pyengine.wire.protocol import Channel, Command, Status

log = logging.getLogger("matchx.client")

_EVENT = struct.Struct("<BI")
# a failed connect is logged at WARNING at most once per this interval: while the cluster is
# away the client retries every connect timeout, and one line per attempt would flood the log
CONNECT_WARNING_INTERVAL_S = 10.0
# Token refusals that the same credentials can never get past (pyengine/service/tokens.py's
# reasons). The others (unknown_kid before a key change reaches the partition, not_yet_valid
# under clock skew, anything that is not a token refusal) may pass later: those are retried.
FINAL_AUTH_REASONS = frozenset({"missing_token", "malformed", "oversized", "bad_base64", "bad_header",
                                "alg_not_allowed", "bad_signature", "expired", "revoked"})
EVENT_MESSAGE, EVENT_CONNECTED, EVENT_NEW_LEADER, EVENT_DISCONNECTED = 1, 2, 3, 4
EVENT_CONNECT_FAILED, EVENT_SESSION_EVENT = 5, 6

MAX_BATCH_BYTES = 60_000
# a sync request's caller polls egress itself while it waits, parking at most this long between
# empty polls (Linux rounds a park up to ~50 us): only while an answer is awaited, never idle
SYNC_MAX_PARK_US = 100
# Aeron's largest message on the ingress (term length 1 MiB / 8), less the request header and
# one entry header: no single command may be larger.
MAX_COMMAND_BYTES = (128 << 10) - protocol.REQUEST_HEADER.size - protocol.ENTRY.size
_client_seq = itertools.count()
# stage numbers of io.matchx.cluster.LatencyTrace (bench/rtt_breakdown.py; only with MATCHX_TRACE_DIR)
TRACE_RECEIVED, TRACE_RESOLVE = 103, 104
# wakes the send thread after a (re)connect or a new leader (with MatchClient._resend_due set):
# it then resends every pending command
_RESEND_ALL = object()
# wakes the send thread when a leader that hands over asks its sessions to hold (see _wait_out_hold)
_HOLD = object()


# Each MatchClient's embedded media driver directory: this prefix, the process id, then a
# per-client suffix. A process that ends without closing its clients (SIGKILL, os._exit)
# leaves them behind; whoever stopped it removes them (client_aeron_dirs).
CLIENT_DIR_PREFIX = "/dev/shm/matchx-client-"


def client_aeron_dirs(pid: int) -> list[Path]:
    """The client driver directories process ``pid`` made."""
    prefix = Path(CLIENT_DIR_PREFIX)
    return sorted(prefix.parent.glob(f"{prefix.name}{pid}-*"))


class ClientError(RuntimeError):
    """A command the service could not process at all (not a business reject)."""


class MovedError(ClientError):
    """The partition does not own the symbol (any more); refresh routes to at least ``epoch``."""

    def __init__(self, symbol: str, epoch: int, *, moving: bool = False, not_yet: bool = False,
                 dest: str | None = None) -> None:
        super().__init__(f"{symbol} moved (epoch {epoch})")
        self.symbol = symbol
        self.epoch = epoch
        # a migration under way (docs/migration.md): ``moving`` from the frozen source (``dest``:
        # the partition it moves to), ``not_yet`` from the destination before its activation is
        # applied (moments away once the map names it)
        self.moving = moving
        self.not_yet = not_yet
        self.dest = dest


class UnauthorisedError(ClientError):
    """The session's token does not allow this command; ``reason`` is the node's code."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"unauthorised: {reason}")
        self.reason = reason


class AuthenticationError(ClientError):
    """The cluster refused the session's credentials; ``reason`` is the node's code."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"authentication rejected: {reason}")
        self.reason = reason


@dataclass
class Reply:
    """The outcome of one command: the engine's events, and whether this was a resend's answer."""

    request_id: int
    events: list | dict
    duplicate: bool = False


@dataclass
class _Pending:
    request_id: int
    channel: int
    payload: bytes
    future: Future
    sent_at: float = 0.0
    sends: int = 0
    refreshes: int = 0
    abandoned: bool = False  # taken back by take_back(): never (re)sent
    submitted_at: float = field(default_factory=time.monotonic)


@dataclass
class ClientStats:
    sent_batches: int = 0
    resent: int = 0  # every resend of a command sent before
    # of those, resent by the periodic check (unanswered for resend_after_s), not because a new
    # leader or session asked for it: a handover the client followed by itself leaves this at 0
    resent_on_timer: int = 0
    connects: int = 0
    new_leaders: int = 0
    disconnects: int = 0
    connect_failures: int = 0  # since the last successful connect
    # second sessions looked for because the cluster fell silent (silence_reconnect_s)
    silence_probes: int = 0
    # a leader's planned handover (docs/operations.md): hold notices followed, commands that waited
    # in a hold and went to the new leader (first sent then, so never resent), holds given up
    # after hold_max_s without a new leader
    holds: int = 0
    held: int = 0
    hold_timeouts: int = 0
    # of ``resent``, those resent when a hold ended: sent before the hold notice and not answered
    # by the old leader (its drain ended on a bound, not on this client's ack)
    resent_after_hold: int = 0
    # request()/admin() calls answered on the caller's thread (sync_requests): the others went
    # through the send and receive threads (another command was in flight, a subscription, ...)
    sync_requests: int = 0


class MatchClient:
    """A session with one partition. Thread-safe: submit from any thread."""

    def __init__(
        self,
        ingress_endpoints: str,
        *,
        credentials: bytes = b"",
        token_provider: Callable[[bool], str | bytes] | None = None,
        client_id: int | None = None,
        connect_timeout_ms: int = 2000,
        new_leader_timeout_ms: int = 5000,
        resend_after_s: float = 1.0,
        egress_host: str = "127.0.0.1",
        direct_send: bool = False,
        silence_reconnect_s: float | None = None,
        hold_max_s: float | None = None,
        sync_requests: bool = True,
        sync_max_park_us: int = SYNC_MAX_PARK_US,
        sync_first_wait: bool = False,
        wake_driver: bool = True,
        receive_polls: bool = True,
        invoke_driver: bool = True,
    ) -> None:
        jvm.start()
        import jpype

        # token_provider(refresh) returns an access token; with refresh=True a new one (e.g. via
        # AuthClient.refresh). The client calls it when the cluster says the token expired.
        self.token_provider = token_provider
        if token_provider is not None:
            credentials = _as_bytes(token_provider(False))
        self._jpype = jpype
        self.client_id = client_id if client_id is not None else secrets.randbits(63) | 1
        self.resend_after_s = resend_after_s
        # direct_send: a submit offers from the caller's thread when nothing queued is ahead of
        # it, instead of waking the send thread (one thread hand-over less per command; opt-in
        # until measured better: bench/latency.py, docs/operations.md "Latency settings")
        self._direct_send = direct_send
        # sync_requests: request()/admin() with nothing else in flight offer from the caller's
        # thread and take their answer on it too (ClusterClient.awaitDirect polls egress there),
        # instead of three thread hand-overs (send thread; Java poller -> receive thread -> the
        # caller's Future). While it waits the caller polls, backing off up to sync_max_park_us.
        self._sync_requests = sync_requests
        self._sync_max_park_us = sync_max_park_us
        self._sync_lock = threading.Lock()  # one caller in a sync request at a time
        # sync_first_wait: the caller sleeps half the fastest recent round trip before it first
        # polls (pyengine/client/pacing.py), then the embedded driver wakes it when it has
        # received. Saves the client CPU while it waits (bench/reports/sync_wait_cpu.md), but
        # through a cluster on 2 shared cores neither the round trip nor the client's CPU per
        # order moved (bench/reports/latency_sync_wait.md): opt-in until measured better
        self._first_wait = FirstWait() if sync_first_wait else None
        # events are handled by one thread at a time: the receive thread, or a sync caller
        self._dispatch_lock = threading.Lock()
        # silence_reconnect_s: when commands have waited this long and the cluster has sent
        # nothing at all meanwhile, look for the leader with a second session (through every
        # member) while keeping this one (ClusterClient.probe): Aeron notices a leader that died
        # without a NewLeader event only after its publication and new-leader timeouts (5 s +
        # 5 s). The first to show a leader wins: the second session connecting (it replaces this
        # one; everything waiting is resent there, answered once: the request ids stay) or a
        # NewLeader event on this one (an election that outlasted the limit; dropping the session
        # then lost that event and the answers of commands already in the new leader's log).
        # Off by default: a needless second session turns answers into duplicates.
        self.silence_reconnect_s = silence_reconnect_s
        # hold_max_s: how long new commands wait after a leader's hold notice for the new leader's
        # event before they are sent anyway (default: the new-leader timeout, after which Aeron
        # gives up on the leader too)
        self.hold_max_s = new_leader_timeout_ms / 1000 if hold_max_s is None else hold_max_s
        self._held = threading.Event()  # set from a hold notice until the new leader (or hold_max_s)
        self._unheld = threading.Event()
        self._unheld.set()
        self._hold_ack_due = False
        self._hold_deadline = 0.0
        self._count_held = False
        self._last_heard = time.monotonic()
        self._direct_lock = threading.Lock()
        self._queued = 0  # commands in the outbox or taken but not yet offered (under _lock)
        self.stats = ClientStats()
        self.leader_member_id = -1
        self.last_error: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        # pieces of answers too large for one message (receiver thread only)
        self._parts = protocol.Reassembler()
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._resend_due = threading.Event()  # set by the receiving thread, see _RESEND_ALL
        self._closed = False
        self._connect_warned_at = float("-inf")
        self._subs: dict[str, Subscription] = {}  # market data, by symbol
        self._auth_failure: str | None = None
        self._refresh_lock = threading.Lock()
        self._last_refresh = 0.0
        self.aeron_dir = f"{CLIENT_DIR_PREFIX}{os.getpid()}-{next(_client_seq)}-{self.client_id & 0xFFFF:x}"
        # receive_polls: the receive thread polls egress itself (ClusterClient.receive) instead of
        # waiting for what the Java poller thread hands it; invoke_driver: the embedded media
        # driver has no thread, the threads that poll and offer run it. Each removes a park and a
        # wake-up per answer (bench/reports/client_cpu_per_order.md)
        self._receive_polls = receive_polls
        JClient = jpype.JClass("io.matchx.cluster.client.ClusterClient")
        self._java = JClient(
            ingress_endpoints, self.aeron_dir, egress_host, connect_timeout_ms,
            new_leader_timeout_ms, jpype.JArray(jpype.JByte)(credentials), bool(invoke_driver),
        )
        # wake_driver (invoke_driver=False only: an invoked driver sends on the offering thread):
        # each offer wakes the embedded driver, which sends at once instead of at the end of its
        # park (up to 500 us); one unpark per offer, nothing while idle
        self._java.wakeDriver(bool(wake_driver))
        self._receiver = threading.Thread(target=self._receive_loop, name="matchx-receive", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="matchx-send", daemon=True)
        self._receiver.start()
        self._sender.start()

    # ---- public API ------------------------------------------------------------------------

    def wait_connected(self, timeout: float = 30.0) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def submit(self, command: dict) -> Future:
        """Queue an engine command (a dict with ``op``); the future resolves to a Reply."""
        return self._submit(Channel.ENGINE_JSON, orjson.dumps(command))

    def submit_binary(self, command: dict) -> Future:
        """Like ``submit`` but in the engine's binary codec: smaller on the wire, but more CPU than
        JSON on both sides (the codec is plain Python, JSON is orjson; per command a member spends
        ~6 us more, the client ~7 us more: bench/reports/single_order_path.md)."""
        from pyengine.wire.codec import encode_command

        return self._submit(Channel.ENGINE_BINARY, encode_command(command))

    def submit_bulk(self, bulk: BulkBuilder | bytes) -> Future:
        """Many place / cancel / amend commands (ticks and lots) as one command: the future
        resolves to a Reply whose ``events`` holds, per command in order, its events as
        ``bulk.decode_answer`` gives them. The bulk is the unit of idempotency: a resend after
        failover is answered with the original outcomes of all its commands."""
        return self._submit(Channel.ENGINE_BULK, bulk.encode() if isinstance(bulk, BulkBuilder) else bytes(bulk))

    def subscribe(self, symbol: str, channels: list[str], callback: Callback, depth: int = 1000) -> Subscription:
        """Market data of ``symbol``: ``callback(msg)`` gets the book snapshot, then each update
        (channels: "trades", "l2", "top"), on the receiving thread; the subscription re-syncs by
        itself after a gap or a failover (pyengine/client/market.py, docs/market-data.md). One
        subscription per symbol and client: a second replaces the first."""
        sub = Subscription(symbol, channels, callback, self.submit, depth)
        old = self._subs.get(symbol)
        if old is not None:
            old.closed = True
        self._subs[symbol] = sub
        sub.resync("subscribe")
        return sub

    def unsubscribe(self, symbol: str) -> None:
        sub = self._subs.pop(symbol, None)
        if sub is not None:
            sub.closed = True
            self.submit({"op": "unsubscribe", "symbol": symbol})

    def submit_admin(self, command: dict) -> Future:
        return self._submit(Channel.ADMIN_JSON, orjson.dumps(command))

    def request(self, command: dict, timeout: float = 10.0) -> Reply:
        return self._request(Channel.ENGINE_JSON, orjson.dumps(command), timeout)

    def admin(self, command: dict, timeout: float = 10.0) -> Reply:
        return self._request(Channel.ADMIN_JSON, orjson.dumps(command), timeout)

    def take_back(self, future: Future, unsent_only: bool = False) -> str:
        """Take back a command that has no answer yet: it is never sent (again) from here and a
        late answer to it is dropped; its future stays unresolved. For ``RoutedClient``, which
        sends a command to the symbol's new owner when its partition has gone
        (docs/partitions.md). Returns "taken", "sent" (``unsent_only`` and it was offered to the
        cluster at least once, so it may have been applied: left pending), or "absent" (its
        answer is being delivered, or it has one). One lock: the send thread cannot send it
        between the check and the taking."""
        with self._lock:
            for rid, p in self._pending.items():
                if p.future is future:
                    if unsent_only and p.sends > 0:
                        return "sent"
                    del self._pending[rid]
                    p.abandoned = True
                    return "taken"
        return "absent"

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def set_credentials(self, credentials: bytes, reconnect: bool = True) -> None:
        """Use new credentials (e.g. a refreshed token); ``reconnect`` opens a new session now."""
        self._auth_failure = None
        self._java.credentials(self._jpype.JArray(self._jpype.JByte)(credentials))
        if reconnect:
            self._connected.clear()
            self._java.reconnect()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)
        self._sender.join(5)
        self._java.close()
        self._receiver.join(5)
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            if not p.future.done():
                p.future.set_exception(ClientError("client closed before an answer arrived"))

    def __enter__(self) -> MatchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------

    def _submit(self, channel: int, payload: bytes) -> Future:
        if self._closed:
            raise ClientError("client is closed")
        if self._auth_failure:
            raise AuthenticationError(self._auth_failure)
        if len(payload) > MAX_COMMAND_BYTES:
            raise ClientError(f"a command of {len(payload):,} bytes exceeds the {MAX_COMMAND_BYTES:,}-byte "
                              "message limit")
        p = _Pending(next(self._ids), channel, payload, Future())
        with self._lock:
            self._pending[p.request_id] = p
        if self._direct_send and self._offer_direct(p):
            return p.future
        with self._lock:
            self._queued += 1
        self._outbox.put(p)
        return p.future

    def _request(self, channel: int, payload: bytes, timeout: float) -> Reply:
        if self._sync_requests:
            reply = self._request_sync(channel, payload, timeout)
            if reply is not None:
                return reply
        return self._submit(channel, payload).result(timeout)

    def _request_sync(self, channel: int, payload: bytes, timeout: float) -> Reply | None:
        """A request answered on the caller's thread, or None (nothing sent) when that cannot be
        done now: another command in flight or queued (its answer is the receive thread's), a
        second caller here already, market data subscribed (its updates must stay in order on
        the receive thread), not connected, a resend due or a hold. Once sent, the command is a
        pending command like any other: resent after a failover, answered once."""
        if (self._subs or not self._connected.is_set() or self._resend_due.is_set() or self._held.is_set()
                or self._closed or self._auth_failure or len(payload) > MAX_COMMAND_BYTES):
            return None
        if not self._sync_lock.acquire(blocking=False):
            return None
        try:
            p = _Pending(next(self._ids), channel, payload, Future())
            with self._lock:
                if self._pending or self._queued:
                    return None
                self._pending[p.request_id] = p
            java = self._java
            deadline = time.monotonic() + timeout
            first_wait_us = self._first_wait.first_wait_us() if self._first_wait is not None else 0
            java.beginDirect()
            try:
                offered_ns = time.monotonic_ns()
                if not self._offer([p], wait=False):
                    # back pressure or no session: the send thread offers it (and waits)
                    with self._lock:
                        self._queued += 1
                    self._outbox.put(p)
                while not p.future.done():
                    remaining_ms = int((deadline - time.monotonic()) * 1000)
                    if remaining_ms <= 0 or self._closed:
                        break  # close() fails what is pending
                    blob = java.awaitDirect(min(remaining_ms, 100), self._sync_max_park_us, first_wait_us)
                    first_wait_us = 0  # only before the first look
                    if blob is not None:
                        if jvm.TRACE:
                            jvm.trace(TRACE_RECEIVED)
                        self._dispatch(blob)
            finally:
                blob = java.endDirect()
                if blob is not None:
                    self._dispatch(blob)
            if self._first_wait is not None and p.sends == 1 and p.future.done() and p.future.exception() is None:
                # a resend's or an error's time says nothing about the next round trip
                self._first_wait.observe(time.monotonic_ns() - offered_ns)
        finally:
            self._sync_lock.release()
        self.stats.sync_requests += 1
        # raises TimeoutError as Future.result does when no answer came in time; the command
        # stays pending (resent, answered later) as after submit().result(timeout). Closed: the
        # close fails it (ClientError) in a moment
        return p.future.result(max(0.0, deadline - time.monotonic()) if self._closed else 0)

    def _offer_direct(self, p: _Pending) -> bool:
        """Offers ``p`` on the caller's thread if no queued command is waiting to go before it
        (a thread's submits keep their order); False leaves it to the send thread."""
        if not self._connected.is_set() or self._resend_due.is_set() or self._held.is_set():
            return False
        if not self._direct_lock.acquire(blocking=False):
            return False
        try:
            with self._lock:
                if self._queued:
                    return False
            return self._offer([p], wait=False)
        finally:
            self._direct_lock.release()

    def _send_loop(self) -> None:
        # The stale scan walks every pending command under the lock: under load, once per
        # resend_after_s / 4 is enough (a stale command is resent within 1.25 x resend_after_s),
        # not after every batch (it cost ~9 % of a busy client's CPU).
        scan_every = self.resend_after_s / 4
        last_scan = time.monotonic()
        while True:
            try:
                first = self._outbox.get(timeout=self.resend_after_s / 4)
            except queue.Empty:
                last_scan = time.monotonic()
                self._resend_stale()
                continue
            if first is None:
                return
            if self._held.is_set():
                self._wait_out_hold()
            if self._resend_if_due():
                last_scan = time.monotonic()
            if first is _RESEND_ALL or first is _HOLD:
                continue
            assert isinstance(first, _Pending)
            batch = [first]
            size = len(first.payload)
            while size < MAX_BATCH_BYTES and len(batch) < protocol.MAX_BATCH:
                try:
                    nxt = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt is _RESEND_ALL or nxt is _HOLD:
                    self._outbox.put(nxt)  # handled next round, after this batch
                    break
                assert isinstance(nxt, _Pending)
                batch.append(nxt)
                size += len(nxt.payload)
            if self._held.is_set():
                # a hold came while the batch was gathered: it waits for the new leader too
                self._wait_out_hold()
                if self._resend_if_due():
                    last_scan = time.monotonic()
            # (those the resend above has just sent go once)
            self._send([p for p in batch if p.sends == 0])
            with self._lock:
                self._queued -= len(batch)
            now = time.monotonic()
            if now - last_scan >= scan_every:
                last_scan = now
                self._resend_stale()

    def _resend_if_due(self) -> bool:
        """After a (re)connect or a new leader: every pending command, oldest first, before what
        was queued after them (commands held by a handover go first now). True if it did."""
        if not self._resend_due.is_set():
            return False
        self._resend_due.clear()
        held = self._count_held
        self._resend_stale(everything=True)
        if held:
            log.info("sent what the hold kept back to leader %d", self.leader_member_id)
        return True

    def _wait_out_hold(self) -> None:
        """Send thread, after a leader's hold notice: acks it behind everything sent so far (the
        leader then knows nothing of this session's is in flight and ends its log), then sends
        nothing until the new leader's event releases the hold (or ``hold_max_s`` passes)."""
        if self._hold_ack_due:
            self._hold_ack_due = False
            ack = self._jpype.JArray(self._jpype.JByte)(protocol.encode_hold_ack(self.client_id))
            deadline = time.monotonic() + 0.05
            while self._held.is_set() and not self._closed:
                try:
                    result = self._java.offer(ack)
                except Exception as exc:  # noqa: BLE001 - without the ack the leader ends its drain on a bound
                    log.warning("hold ack not sent: %s", exc)
                    break
                if result > 0 or result == -100 or time.monotonic() > deadline:
                    break
                time.sleep(0.0002)  # back pressure: the leader is still taking the last commands
        while self._held.is_set() and not self._closed:
            remaining = self._hold_deadline - time.monotonic()
            if remaining <= 0:
                log.warning("held for %.1f s without a new leader; sending again", self.hold_max_s)
                self.stats.hold_timeouts += 1
                self._resend_due.set()
                self._release_hold()
                return
            self._unheld.wait(min(remaining, 0.1))

    def _hold(self) -> None:
        """Receiving thread: the leader is about to hand over (it sent a hold notice)."""
        if self._held.is_set():
            return
        self.stats.holds += 1
        self._hold_deadline = time.monotonic() + self.hold_max_s
        self._hold_ack_due = True
        self._unheld.clear()
        self._held.set()
        self._outbox.put(_HOLD)  # wakes the send thread if it waits for work
        log.info("hold: leader %d hands over; new commands wait for the new leader", self.leader_member_id)

    def _release_hold(self) -> None:
        if self._held.is_set():
            self._count_held = True
        self._held.clear()
        self._unheld.set()

    def _send(self, batch: list[_Pending]) -> bool:
        """Sends ``batch`` as one or more cluster messages (each within the count and byte
        limits); False if any part could not be sent now (it is resent later)."""
        live = [p for p in batch if not p.future.done() and not p.abandoned]
        ok = True
        part: list[_Pending] = []
        size = 0
        for p in live:
            if part and (len(part) == protocol.MAX_BATCH or size + len(p.payload) > MAX_BATCH_BYTES):
                ok = self._offer(part) and ok
                part, size = [], 0
            part.append(p)
            size += len(p.payload)
        if part:
            ok = self._offer(part) and ok
        return ok

    def _offer(self, live: list[_Pending], wait: bool = True) -> bool:
        message = protocol.encode_request(
            self.client_id, [Command(p.request_id, p.channel, p.payload) for p in live]
        )
        jbytes = self._jpype.JArray(self._jpype.JByte)(message)
        # Back pressure means the cluster is busy, not gone: keep offering (nothing else could be
        # sent meanwhile) for up to a resend interval. Giving up sooner would leave the batch to the
        # periodic resend, a whole interval later (seconds of latency for nothing).
        deadline = time.monotonic() + max(1.0, self.resend_after_s)
        leaders = self.stats.new_leaders
        attempt = 0
        while True:
            try:
                result = self._java.offer(jbytes)
            except Exception as exc:  # noqa: BLE001 - never lose the sender thread; resent later
                log.error("offer of %d bytes failed: %s", len(message), exc)
                break
            if result > 0:
                now = time.monotonic()
                for p in live:
                    p.sent_at = now
                    p.sends += 1
                self.stats.sent_batches += 1
                return True
            if not wait:
                return False  # the caller queues it for the send thread, which waits
            # not connected, or a new leader (whose event resends everything): stop here
            if result == -100 or self._closed or self.stats.new_leaders != leaders:
                break
            if time.monotonic() > deadline:
                log.warning("cluster back pressure for %.1f s; %d commands left to the periodic resend",
                            max(1.0, self.resend_after_s), len(live))
                break
            attempt += 1
            time.sleep(0.0002 if attempt < 50 else 0.002)
        # Not sent: count it as an attempt so the periodic resend retries it after resend_after_s.
        now = time.monotonic()
        for p in live:
            p.sent_at = now
            p.sends += 1
        return False

    def _resend_stale(self, everything: bool = False) -> None:
        if self._held.is_set():
            return  # the leader is handing over: the new leader's event resends
        now = time.monotonic()
        if self.silence_reconnect_s is not None and self._silent_too_long(now):
            return
        with self._lock:
            # Never yet-unsent ones (sends == 0) unless everything: the send loop has them queued,
            # and sending them here too would send every command twice.
            stale = [p for p in self._pending.values()
                     if everything or (p.sends > 0 and now - p.sent_at > self.resend_after_s)]
        if not stale or not self._connected.is_set():
            return
        stale.sort(key=lambda p: p.request_id)
        resends = sum(1 for p in stale if p.sends)
        if everything and self._count_held:
            # the first resend after a hold: the never-sent ones were submitted while it was on
            self._count_held = False
            self.stats.held += len(stale) - resends
            self.stats.resent_after_hold += resends
        self.stats.resent += resends
        if not everything:
            self.stats.resent_on_timer += resends
        self._send(stale)

    def _silent_too_long(self, now: float) -> bool:
        """Looks for the leader with a second session if commands sent over
        ``silence_reconnect_s`` ago are waiting and the cluster has sent nothing since (see
        __init__); True if it did. The current session stays until one of them shows a leader."""
        limit = self.silence_reconnect_s
        if not self._connected.is_set() or now - self._last_heard < limit:
            return False
        with self._lock:
            waiting = sum(1 for p in self._pending.values() if p.sends > 0 and now - p.submitted_at >= limit)
        if not waiting:
            return False
        log.warning("no word from the cluster for %.1f s with %d command(s) waiting; looking for the leader "
                    "with a second session", now - self._last_heard, waiting)
        self.stats.silence_probes += 1
        self._last_heard = now
        # one probe at a time (a call while one is under way changes nothing); its EVENT_CONNECTED
        # resends everything, a NewLeader event on this session drops it
        self._java.probe()
        return True

    def _receive_loop(self) -> None:
        java = self._java
        wait = java.receive if self._receive_polls else java.poll
        while not self._closed:
            try:
                blob = wait(100)
            except Exception:  # noqa: BLE001 - the JVM is shutting down with us
                if self._closed:
                    return
                raise
            if blob is None:
                continue
            if jvm.TRACE:
                jvm.trace(TRACE_RECEIVED)
            self._dispatch(blob)

    def _dispatch(self, blob) -> None:
        """Handles one ``ClusterClient.poll``/``awaitDirect`` result (receive thread or a sync
        caller, one at a time)."""
        self._last_heard = time.monotonic()
        with self._dispatch_lock:
            for kind, body in split_events(memoryview(blob).tobytes()):
                try:
                    self._on_event(kind, body)
                except Exception:  # noqa: BLE001 - one bad event must not stop the receiver
                    log.exception("handling client event %d failed", kind)

    def _on_event(self, kind: int, body: bytes) -> None:
        if kind == EVENT_MESSAGE:
            self._on_reply(body)
        elif kind == EVENT_CONNECTED:
            leader = int(body.split(b" ")[0])
            self.leader_member_id = leader
            self.stats.connects += 1
            self._connected.set()
            log.info("connected; leader is member %d%s", leader, f" after {self.stats.connect_failures} failed "
                     "attempts" if self.stats.connect_failures else "")
            self.stats.connect_failures = 0
            self._connect_warned_at = float("-inf")
            self._resend_due.set()
            self._release_hold()  # after _resend_due: the send thread wakes to resend
            self._outbox.put(_RESEND_ALL)
            self._resync_all("new session")  # subscriptions belong to a session
        elif kind == EVENT_NEW_LEADER:
            leader = int(body.split(b" ")[0])
            self.leader_member_id = leader
            self.stats.new_leaders += 1
            self._connected.set()
            log.info("new leader: member %d", leader)
            # the send thread resends: offering can wait out back pressure, and this thread
            # must go on taking answers meanwhile (and first what a handover held back)
            self._resend_due.set()
            self._release_hold()
            self._outbox.put(_RESEND_ALL)
            # updates the old leader had not sent are lost: a fresh snapshot, not a silent gap
            self._resync_all("new leader")
        elif kind == EVENT_DISCONNECTED:
            self.stats.disconnects += 1
            self._connected.clear()
            log.warning("session closed; reconnecting")
        elif kind == EVENT_CONNECT_FAILED:
            text = body.decode(errors="replace")
            self.last_error = text
            if text.startswith("AuthenticationException"):
                reason = text.split(":", 1)[1].strip() if ":" in text else text
                if reason in ("expired", "not_yet_valid", "revoked") and self.token_provider is not None:
                    # a revoked access token may belong to a login whose refresh still works; a
                    # revoked login makes the provider raise, and _refresh_token fails the callers
                    threading.Thread(target=self._refresh_token, daemon=True).start()
                    return
                self._auth_failure = reason
                self._fail_all(AuthenticationError(reason))
                if reason in FINAL_AUTH_REASONS:
                    self.stats.connect_failures += 1
                    self._java.holdReconnect()
                    log.error("the cluster refused these credentials (%s); not reconnecting until "
                              "set_credentials() gives new ones", reason)
                    return
            self.stats.connect_failures += 1
            now = time.monotonic()
            if now - self._connect_warned_at >= CONNECT_WARNING_INTERVAL_S:
                self._connect_warned_at = now
                log.warning("cannot connect to the cluster (%d failed attempts so far; retrying): %s",
                            self.stats.connect_failures, text)
        elif kind == EVENT_SESSION_EVENT:
            text = body.decode(errors="replace")
            self.last_error = text
            log.info("session event: %s", text)

    def _on_unauthorised(self, p: _Pending, reason: str) -> None:
        if reason in ("expired", "not_yet_valid") and self.token_provider is not None and p.refreshes < 2:
            # Keep the command pending: it is resent with the same request id once the
            # session is back with a fresh token.
            p.refreshes += 1
            p.sends = 0
            with self._lock:
                self._pending[p.request_id] = p
            self._refresh_token()
            return
        p.future.set_exception(UnauthorisedError(reason))

    def _refresh_token(self) -> None:
        with self._refresh_lock:
            if time.monotonic() - self._last_refresh < 0.5:
                return  # one refresh serves every command that hit the same expiry
            try:
                token = _as_bytes(self.token_provider(True))
            except Exception as exc:  # noqa: BLE001 - surfaced to the waiting callers
                log.error("token refresh failed: %s", exc)
                self._fail_all(AuthenticationError(f"refresh failed: {exc}"))
                return
            self._last_refresh = time.monotonic()
            log.info("token refreshed; reconnecting")
            self.set_credentials(token, reconnect=True)

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            if not p.future.done():
                p.future.set_exception(exc)

    def _on_reply(self, body: bytes) -> None:
        try:
            kind, answers = protocol.decode_reply(body)
        except protocol.ProtocolError as exc:
            log.error("undecodable reply: %s", exc)
            return
        if kind == protocol.KIND_ERROR:
            log.error("the cluster refused a message: %s", answers)
            self.last_error = str(answers)
            return
        if kind == protocol.KIND_HOLD:
            self._hold()
            return
        if kind == protocol.KIND_MARKET:
            for msg in orjson.loads(answers):
                sub = self._subs.get(msg.get("symbol"))
                if sub is not None and not sub.closed:
                    sub.on_update(msg)
                elif msg.get("type") == "gap":  # an oversized message: every stream re-syncs
                    for s in list(self._subs.values()):
                        s.on_update(msg)
            return
        for piece in answers:
            try:
                a = self._parts.feed(piece)
            except protocol.ProtocolError as exc:
                log.warning("%s; the resend will bring the whole answer", exc)
                continue
            if a is None:
                continue  # more pieces of this answer to come
            with self._lock:
                p = self._pending.pop(a.request_id, None)
            if p is None or p.future.done():
                continue  # an answer to a resend we already have
            if p.channel == Channel.ENGINE_BINARY and a.status in (Status.OK, Status.DUPLICATE):
                from pyengine.wire.codec import decode_events

                payload = decode_events(a.payload)
            elif p.channel == Channel.ENGINE_BULK and a.status in (Status.OK, Status.DUPLICATE):
                payload = decode_bulk_answer(a.payload)
            else:
                payload = orjson.loads(a.payload) if a.payload else []
            if a.status == Status.ERROR:
                p.future.set_exception(ClientError(payload.get("error", str(payload))))
            elif a.status == Status.UNAUTHORISED:
                self._on_unauthorised(p, payload.get("reason", "unauthorised"))
            elif a.status == Status.MOVED:
                p.future.set_exception(MovedError(payload.get("symbol"), payload.get("epoch", 0),
                                                  moving=bool(payload.get("moving")),
                                                  not_yet=bool(payload.get("not_yet")),
                                                  dest=payload.get("dest")))
            else:
                if jvm.TRACE:
                    jvm.trace(TRACE_RESOLVE)
                p.future.set_result(Reply(a.request_id, payload, a.status == Status.DUPLICATE))


    def _resync_all(self, why: str) -> None:
        for sub in list(self._subs.values()):
            if not sub.closed:
                sub.resync(why)


def split_events(buf: bytes) -> list[tuple[int, bytes]]:
    """The (kind, body) events of one ``ClusterClient.poll`` result, in order."""
    events = []
    offset = 0
    while offset < len(buf):
        kind, length = _EVENT.unpack_from(buf, offset)
        events.append((kind, buf[offset + _EVENT.size : offset + _EVENT.size + length]))
        offset += _EVENT.size + length
    return events


def _as_bytes(token: str | bytes) -> bytes:
    return token.encode() if isinstance(token, str) else bytes(token)
