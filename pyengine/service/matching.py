"""The replicated service: what every member does with each log message.

Pure Python (no JVM import) so it can be tested and replayed on its own; ``bridge.py`` plugs it
into the Java shim. It decodes a batch, applies each command to the engine with the cluster's
timestamp, remembers every answer per (client, request id) so a resend returns the original
outcome, and returns the reply frames for the sender's session.

Determinism: the only inputs are the message bytes, the session id and the cluster timestamp.
Every exception becomes an answer; nothing here reads a clock, a file or randomness.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import orjson

from pyengine import engine as engine_pkg
from pyengine.engine import Engine, SnapshotError
from pyengine.engine.bulk import apply_bulk
from pyengine.engine.snapcache import SnapCache
from pyengine.service import retire
from pyengine.service.counters import ServiceCounters
from pyengine.service.marketdata import MarketData, SubscriptionError
from pyengine.service.migration import MIG_OPS, Migrations
from pyengine.service.tokens import AuthState, Principal, TokenError
from pyengine.wire import protocol
from pyengine.wire.bulk import BulkError, decode_bulk
from pyengine.wire.bulk import decode_names as decode_bulk_names
from pyengine.wire.protocol import Answer, Channel, ProtocolError, Status

log = logging.getLogger("matchx.service")

# gc.set_threshold for a member: generation 0 every 50,000 allocations instead of 700
GC_THRESHOLDS = (50_000, 20, 100)

SNAPSHOT_MAGIC = b"MXSV"
SNAPSHOT_VERSION = 4  # 4: market data subscriptions after the auth section
_SNAPSHOT_READS = (3, 4)

# The permission each command needs when authentication is on; the account named in the
# command must be the token's for trade and read commands.
ENGINE_PERMS = {
    "place": "trade", "cancel": "trade", "cancel_all": "trade", "amend": "trade",
    "book": "read", "order": "read", "balances": "read",
    "open_orders": "read", "fills": "read", "trades": "read", "subscribe": "read", "unsubscribe": "read",
    "add_symbol": "admin", "deposit": "admin", "withdraw": "admin",
}
ADMIN_PERMS = {"ping": "read", "state_hash": "read"}  # every other admin op needs "admin"
AUTH_OPS = ("add_key", "remove_key", "revoke")
_SNAP_HEADER = struct.Struct("<4sHQQ16s")  # magic, version, applied, last position, chain hash
_U64 = struct.Struct("<Q")
_DEDUPE_ENTRY = struct.Struct("<QBI")  # request id, status, payload length
_STATUS_AT = 8

DEFAULT_DEDUPE_WINDOW = 50_000
DEFAULT_DEDUPE_BYTES = 16 << 20  # answers held per client: ~1,000 full bulks, or the 50,000 last orders


def max_reply_bytes(term_length: int) -> int:
    """The largest reply message a member can offer: Aeron's maximum message (a term / 8), less
    room for the cluster's egress header."""
    return term_length // 8 - 64


DEFAULT_MAX_REPLY_BYTES = max_reply_bytes(1 << 20)  # the default term; node.py passes the layout's
# once a bulk's answer reaches this size its remaining commands are answered not_applied (the
# answer travels in PART pieces of one message each, up to protocol.MAX_SPLIT_ANSWER_BYTES)
BULK_ANSWER_BYTES = protocol.MAX_SPLIT_ANSWER_BYTES // 2


class ServiceSnapshotError(SnapshotError):
    """A service snapshot that cannot be loaded; never leaves a partial state behind."""


class ReplyCache:
    """Answers per client, so that a resend gets the original outcome.

    Bounded per client by ``window`` entries, evicted oldest first: a client that resends
    something older than its last ``window`` requests gets an error, never a second effect
    (see ``too_old``).
    """

    def __init__(self, window: int = DEFAULT_DEDUPE_WINDOW, max_bytes: int = DEFAULT_DEDUPE_BYTES) -> None:
        self.window = window
        # A bulk's answer is tens of KB: bounded by count alone, a busy bulk client would hold
        # gigabytes on every member (and in every snapshot), so the payload bytes are bounded too.
        self.max_bytes = max_bytes
        # OrderedDict: evicting the oldest is O(1) (a plain dict's first key gets slower to find
        # the more keys were deleted from its front). Each entry is kept as its snapshot record
        # (``_DEDUPE_ENTRY`` header, then the payload): a snapshot copies the 50,000 entries of a
        # busy client instead of packing each again (~35 ms; members notice a dead leader only
        # after their snapshot), and a resend, which reads one, is rare.
        self.by_client: dict[int, OrderedDict[int, bytes]] = {}
        self.floor: dict[int, int] = {}  # highest evicted request id per client
        self.bytes: dict[int, int] = {}  # payload bytes held per client

    def get(self, client_id: int, request_id: int) -> tuple[int, bytes] | None:
        entries = self.by_client.get(client_id)
        rec = None if entries is None else entries.get(request_id)
        return None if rec is None else (rec[_STATUS_AT], rec[_DEDUPE_ENTRY.size :])

    def too_old(self, client_id: int, request_id: int) -> bool:
        return request_id <= self.floor.get(client_id, 0)

    def put(self, client_id: int, request_id: int, status: int, payload: bytes) -> None:
        entries = self.by_client.get(client_id)
        if entries is None:
            entries = self.by_client[client_id] = OrderedDict()
        entries[request_id] = _DEDUPE_ENTRY.pack(request_id, status, len(payload)) + payload
        held = self.bytes[client_id] = self.bytes.get(client_id, 0) + len(payload)
        if len(entries) > self.window or held > self.max_bytes:
            self._evict(client_id, entries, held)

    def _evict(self, client_id: int, entries: OrderedDict[int, bytes], held: int) -> None:
        floor = self.floor.get(client_id, 0)
        while len(entries) > 1 and (len(entries) > self.window or held > self.max_bytes):
            oldest, rec = entries.popitem(last=False)
            held -= len(rec) - _DEDUPE_ENTRY.size
            floor = max(floor, oldest)
        self.bytes[client_id] = held
        self.floor[client_id] = floor

    def encode_parts(self) -> list[bytes]:
        """The cache as snapshot bytes, in pieces: the caller joins them with the rest (one copy)."""
        out = [_U64.pack(len(self.by_client))]
        for client_id, entries in self.by_client.items():
            out.append(struct.pack("<QQQ", client_id, self.floor.get(client_id, 0), len(entries)))
            out.extend(entries.values())
        return out

    @classmethod
    def decode(cls, buf: memoryview, window: int, max_bytes: int = DEFAULT_DEDUPE_BYTES) -> ReplyCache:
        cache = cls(window, max_bytes)
        # one copy of the section, then each record sliced from it: slicing bytes makes one object
        # where a memoryview slice made two (50,000 records: 29 -> 20 ms of a restart's CPU)
        data = bytes(buf)
        size = len(data)
        unpack = _DEDUPE_ENTRY.unpack_from
        head = _DEDUPE_ENTRY.size
        (clients,) = _U64.unpack_from(data, 0)
        off = 8
        for _ in range(clients):
            client_id, floor, count = struct.unpack_from("<QQQ", data, off)
            off += 24
            entries: OrderedDict[int, bytes] = OrderedDict()
            held = 0
            for _ in range(count):
                request_id, _status, length = unpack(data, off)
                end = off + head + length
                if end > size:
                    raise ServiceSnapshotError("reply cache entry runs past the snapshot end")
                entries[request_id] = data[off:end]
                held += length
                off = end
            cache.by_client[client_id] = entries
            cache.bytes[client_id] = held
            if floor:
                cache.floor[client_id] = floor
        if off != size:
            raise ServiceSnapshotError(f"{size - off} unexpected bytes after the reply cache")
        return cache


class MatchingService:
    """The state machine every member runs, fed by the log."""

    def __init__(
        self,
        engine_factory: Callable[[], Engine] = Engine,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
        dedupe_bytes: int = DEFAULT_DEDUPE_BYTES,
        hash_file: Path | None = None,
        auth_keys: dict[str, str] | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        # Aeron's largest message on the egress (term length / 8): larger replies are split
        self.max_reply_bytes = max_reply_bytes
        self.engine_factory = engine_factory
        self.engine = engine_factory()
        self.replies = ReplyCache(dedupe_window, dedupe_bytes)
        self.hash_file = hash_file
        self.member_id = -1
        self.applied = 0
        self.last_position = 0
        self.chain = b"\0" * 16
        self.sessions: dict[int, bytes] = {}
        self.role = -1
        # symbol -> epoch of the symbols this partition owns; None until the first
        # `own_symbols` admin command, meaning a single-partition system that owns every symbol.
        self.owned: dict[str, int] | None = None
        # symbol -> epoch at which it left, so MOVED can tell a client how new its map must be.
        self.moved: dict[str, int] = {}
        # symbol migrations and transfers in progress (pyengine/service/migration.py)
        self.migrations = Migrations()
        # Authentication is on when the member is given keys: {kid: base64url public key}. The
        # same key file must be given to every member (it is configuration, like the ports);
        # later keys and revocations arrive as admin commands in the log.
        self.bootstrap_keys = dict(sorted((auth_keys or {}).items()))
        self.auth: AuthState | None = AuthState() if auth_keys is not None else None
        self._add_bootstrap_keys()
        self.principals: dict[int, Principal] = {}
        self._closing: list[int] = []
        self.market = MarketData()
        self._session = 0  # the session of the log message being applied
        self.counters = ServiceCounters()  # for /metrics; output only, never read back
        self._warm_pending = False  # a restore whose snapshot cache is still cold (on_start)
        # the last restore's time per section (ms), for its log line
        self.restore_ms: dict[str, float] = {"engine": 0.0, "replies": 0.0}

    # ---- lifecycle -------------------------------------------------------------------------

    def on_start(self, member_id: int, snapshot: bytes | None) -> None:
        self.member_id = member_id
        # The engine leaves no cyclic garbage (reference counting frees everything), so the
        # cyclic collector only costs time: collect rarely, and never rescan what a restore or
        # a snapshot has frozen (docs/operations.md, "Garbage collection").
        gc.set_threshold(*GC_THRESHOLDS)
        if snapshot is not None:
            started = time.perf_counter()
            # the engine's snapshot cache is built once the member is in step (warm_snapshot_cache,
            # called by the bridge then), or by a take before that: the cluster waits for a
            # restarting member's restore before its election goes on, and not for that
            self.restore(snapshot, warm=False)  # freezes what it restored out of GC (see restore)
            self._warm_pending = True
            log.info("member %d restored a snapshot of %d bytes in %.2f s (%d resting orders): "
                     "engine %.0f ms, replies %.0f ms; snapshot cache %s", member_id, len(snapshot),
                     time.perf_counter() - started, len(self.engine.orders), self.restore_ms["engine"],
                     self.restore_ms["replies"],
                     "from the bytes read" if self._cache_seeded() else "from a take once in step")
        log.info("member %d service started (applied=%d, engine %s)", member_id, self.applied,
                 "compiled" if engine_pkg.NATIVE else "plain Python")

    def _add_bootstrap_keys(self) -> None:
        if self.auth is not None:
            for kid, x in self.bootstrap_keys.items():
                self.auth.apply({"type": "add_key", "kid": kid, "x": x})

    def verify_credentials(self, credentials: bytes, now_ms: int) -> bytes:
        """At connect, on the leader: b"\x00" + principal, or b"\x01" + reason code."""
        if self.auth is None:
            return b"\x00"
        try:
            # Signature and revocation first, then time: a revoked token says "revoked" even
            # after it has also expired.
            principal = self.auth.verify(credentials or None)
            self.auth.check(principal, now_ms * 1_000_000, None, None)
        except TokenError as exc:
            return b"\x01" + exc.reason.encode()
        return b"\x00" + principal.to_bytes()

    def on_session_open(self, session_id: int, timestamp: int, principal: bytes) -> None:
        self.sessions[session_id] = principal
        if self.auth is not None and principal:
            try:
                self.principals[session_id] = Principal.from_bytes(principal)
            except TokenError:
                log.error("session %d opened with an undecodable principal", session_id)

    def on_session_close(self, session_id: int, timestamp: int) -> None:
        self.sessions.pop(session_id, None)
        self.principals.pop(session_id, None)
        self.market.drop_session(self.engine, session_id)

    # ---- the log ---------------------------------------------------------------------------

    def on_message(
        self, session_id: int, timestamp_ms: int, position: int, message: bytes | memoryview
    ) -> list[tuple[int, bytes | None]]:
        """Applies one log message and returns ``[(session_id, reply_bytes)]``; a reply of None
        asks to close that session (its token was revoked)."""
        self.last_position = position
        try:
            client_id, commands = protocol.decode_request(message)
        except ProtocolError as exc:
            self.counters.malformed()
            return [(session_id, protocol.encode_error(f"malformed request: {exc}"))]
        ts_ns = timestamp_ms * 1_000_000
        self._session = session_id
        self._closing: list[int] = []
        principal = self.principals.get(session_id) if self.auth is not None else None
        answers = [self._apply(client_id, c, ts_ns, position, principal) for c in commands]
        self.counters.count(commands, answers)
        frames: list[tuple[int, bytes | None]] = [
            (session_id, r) for r in protocol.encode_replies(answers, self.max_reply_bytes)]
        frames.extend((sid, None) for sid in self._closing)
        # market data after the answers: a subscriber gets its subscribe answer (the book at its
        # sequence) before the updates that follow it. Followers (role 0) encode nothing.
        frames.extend(self.market.collect(self.engine, self.owned, self.moved, self.role != 0,
                                          self.max_reply_bytes))
        return frames

    def _apply(
        self, client_id: int, command: protocol.Command, ts_ns: int, position: int, principal: Principal | None
    ) -> Answer:
        if self.auth is not None:
            denied = self._authorise(command, ts_ns, principal)
            if denied is not None:
                # Not remembered in the reply cache: after a refresh the same request id may pass.
                return Answer(command.request_id, Status.UNAUTHORISED, orjson.dumps({"reason": denied}))
        cached = self.replies.get(client_id, command.request_id)
        if cached is not None:
            # only a success is marked DUPLICATE: a resent command that failed (bad JSON, MOVED)
            # gets its original failure, or the client would read the error payload as a result
            status = Status.DUPLICATE if cached[0] == Status.OK else cached[0]
            return Answer(command.request_id, status, cached[1])
        if self.replies.too_old(client_id, command.request_id):
            return Answer(command.request_id, Status.ERROR, _error("request_id_too_old"))
        status, payload = self._execute(command, ts_ns, position)
        self.applied += 1
        self.chain = hashlib.blake2b(self.chain + command.payload, digest_size=16).digest()
        self.replies.put(client_id, command.request_id, status, payload)
        return Answer(command.request_id, status, payload)

    def _execute(self, command: protocol.Command, ts_ns: int, position: int) -> tuple[int, bytes]:
        try:
            if command.channel == Channel.ENGINE_JSON:
                cmd = orjson.loads(command.payload)
                if not isinstance(cmd, dict):
                    return Status.ERROR, _error("command must be a JSON object")
                moved = self._moved(cmd)
                if moved is not None:
                    return moved
                op = cmd.get("op")
                if op == "subscribe" or op == "unsubscribe":
                    return Status.OK, orjson.dumps(self._subscription(op, cmd))
                return Status.OK, orjson.dumps(self.engine.apply(cmd, ts_ns))
            if command.channel == Channel.ENGINE_BINARY:
                if self.owned is not None:
                    from pyengine.wire.codec import decode_command

                    cmd = decode_command(command.payload)
                    moved = self._moved(cmd)
                    if moved is not None:
                        return moved
                return Status.OK, self.engine.apply_encoded(command.payload, ts_ns)
            if command.channel == Channel.ENGINE_BULK:
                return self._bulk(command.payload, ts_ns)
            if command.channel == Channel.ADMIN_JSON:
                return self._admin(orjson.loads(command.payload), position)
            return Status.ERROR, _error(f"unknown channel {command.channel}")
        except orjson.JSONDecodeError as exc:
            return Status.ERROR, _error(f"bad JSON: {exc}")
        except Exception as exc:  # noqa: BLE001 - any failure must become an answer, never a crash
            log.exception("command failed")
            return Status.ERROR, _error(f"internal: {type(exc).__name__}: {exc}")

    def _bulk(self, payload: bytes, ts_ns: int) -> tuple[int, bytes]:
        try:
            bulk = decode_bulk(payload)
        except BulkError as exc:
            return Status.ERROR, _error(f"bad bulk: {exc}")
        if self.owned is not None:
            # all or nothing: a bulk naming a symbol this partition does not own applies nothing
            for symbol in bulk.symbols:
                moved = self._moved({"symbol": symbol})
                if moved is not None:
                    return moved
        # a large answer travels in PART pieces; half the split limit leaves the last command
        # room for a big sweep of its own
        return Status.OK, apply_bulk(self.engine, bulk, ts_ns, BULK_ANSWER_BYTES)

    def _admin(self, cmd: object, position: int) -> tuple[int, bytes]:
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if op == "ping":
            return Status.OK, orjson.dumps({"type": "pong"})
        if op in retire.RETIRE_OPS:
            return retire.apply(self, cmd)
        if self.migrations.retired and op not in retire.ADMIN_READS:
            return retire.refusal(op)  # own_symbols, migration steps, transfers: nothing changes
        if op in AUTH_OPS:
            return self._auth_admin(cmd)
        if op in MIG_OPS:
            return self.migrations.apply(self, cmd)
        if op == "auth_state":
            # what the revocation pusher resumes from: the keys and the last revocation batch
            # this partition has applied (its log is the cursor that survives everything)
            if self.auth is None:
                return Status.ERROR, _error("authentication is not enabled on this partition")
            return Status.OK, orjson.dumps({"type": "auth_state", "kids": sorted(self.auth.verifier.kids()),
                                            "last_seq": self.auth.revocations.last_seq,
                                            "revoked": len(self.auth.revocations)})
        if op == "own_symbols":
            return self._own_symbols(cmd)
        if op == "release_symbol":
            return self._release_symbol(cmd)
        if op == "owned_symbols":
            return Status.OK, orjson.dumps({"type": "owned_symbols", "symbols": self.owned})
        if op == "funds":
            return Status.OK, orjson.dumps(self._funds(cmd))
        if op == "state_hash":
            info = self.hash_info(position)
            self._publish_hash(info)
            return Status.OK, orjson.dumps({"type": "state_hash", **info})
        return Status.ERROR, _error(f"unknown admin op {op!r}")

    def _funds(self, cmd: dict) -> dict:
        """What this partition holds: every account balance that is not zero (name order, at most
        ``limit``), how many there are, and the fee pool; before a partition is retired
        (``matchctl partition remove`` refuses one that holds funds, docs/partitions.md)."""
        limit = cmd.get("limit", 1000)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            limit = 1000
        eng = self.engine
        rows = []
        count = 0
        for name in sorted(eng.accounts):
            acct = eng.accounts[name]
            for asset in sorted(acct.bal):
                b = acct.bal[asset]
                if b.avail or b.held:
                    count += 1
                    if len(rows) < limit:
                        rows.append({"account": name, "asset": asset, "available": eng._asset_str(asset, b.avail),
                                     "held": eng._asset_str(asset, b.held)})
        fees = {a: eng._asset_str(a, v) for a, v in sorted(eng.fees.items()) if v}
        return {"type": "funds", "balances": rows, "count": count, "fees": fees}

    def _subscription(self, op: str, cmd: dict) -> list[dict]:
        try:
            if op == "subscribe":
                return [self.market.subscribe(self.engine, self._session, cmd)]
            return [self.market.unsubscribe(self.engine, self._session, cmd)]
        except SubscriptionError as exc:
            return [{"type": "rejected", "op": op, "reason": exc.reason, "detail": str(exc)}]

    # ---- authorisation ---------------------------------------------------------------------

    def _authorise(self, command: protocol.Command, ts_ns: int, principal: Principal | None) -> str | None:
        """None when allowed, else the reason code. Deterministic: cluster time, logged state."""
        if principal is None:
            return "missing_token"
        try:
            if command.channel == Channel.ENGINE_BULK:
                return self._authorise_bulk(command.payload, ts_ns, principal)
            if command.channel == Channel.ENGINE_BINARY:
                from pyengine.wire.codec import decode_command

                cmd = decode_command(command.payload)
            else:
                cmd = orjson.loads(command.payload)
        except Exception:  # noqa: BLE001 - the command itself will be answered with the error
            cmd = {}
        if not isinstance(cmd, dict):
            cmd = {}
        op = cmd.get("op")
        if command.channel == Channel.ADMIN_JSON:
            perm, account = ADMIN_PERMS.get(op, "admin"), None
        else:
            perm = ENGINE_PERMS.get(op, "trade")
            account = None if perm == "admin" else cmd.get("account")
            if account is not None and not isinstance(account, str):
                account = str(account)
        if perm == "read" and principal.has_perm("read_any"):
            perm, account = "read_any", None  # the operator role: any account's reads, only reads
        try:
            self.auth.check(principal, ts_ns, perm, account)
        except TokenError as exc:
            return exc.reason
        return None

    def _authorise_bulk(self, payload: bytes, ts_ns: int, principal: Principal) -> str | None:
        """A bulk trades for every account it names: each one must be allowed."""
        accounts, _ = decode_bulk_names(payload)
        try:
            self.auth.check(principal, ts_ns, "trade", None)  # also when it names no account
            for account in accounts:
                self.auth.check(principal, ts_ns, "trade", account)
        except TokenError as exc:
            return exc.reason
        return None

    def _auth_admin(self, cmd: dict) -> tuple[int, bytes]:
        if self.auth is None:
            return Status.ERROR, _error("authentication is not enabled on this partition")
        try:
            changed = self.auth.apply({**cmd, "type": cmd["op"]})
        except (ValueError, TypeError, KeyError, TokenError) as exc:
            return Status.ERROR, _error(f"bad {cmd.get('op')}: {exc}")
        if cmd["op"] in ("revoke", "remove_key"):
            # Close the sessions whose token is no longer good (in session-id order).
            for sid in sorted(self.principals):
                p = self.principals[sid]
                if p.jti in self.auth.revocations or p.kid not in self.auth.verifier:
                    self._closing.append(sid)
        return Status.OK, orjson.dumps({"type": cmd["op"], "changed": changed})

    # ---- symbol ownership (partitions) ------------------------------------------------------

    def _moved(self, cmd: dict) -> tuple[int, bytes] | None:
        fenced = self.migrations.fence(cmd, self.owned)
        if fenced is not None:
            return fenced
        if self.owned is None:
            return None
        symbol = cmd.get("symbol")
        if symbol is None or symbol in self.owned:
            return None
        epoch = self.moved.get(symbol, 0) if isinstance(symbol, str) else 0
        return Status.MOVED, orjson.dumps({"type": "moved", "symbol": symbol, "epoch": epoch})

    def _own_symbols(self, cmd: dict) -> tuple[int, bytes]:
        symbols = cmd.get("symbols")
        if not isinstance(symbols, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in symbols.items()
        ):
            return Status.ERROR, _error("own_symbols needs symbols: {symbol: epoch >= 0}")
        owned = dict(self.owned or {})
        for symbol in sorted(symbols):
            epoch = symbols[symbol]
            if epoch < owned.get(symbol, 0) or epoch < self.moved.get(symbol, 0):
                return Status.ERROR, _error(f"stale epoch {epoch} for {symbol}")
        # a symbol owned here again: the detached book of its last move out of the indexes
        self.migrations.finish_cleanups(self, symbols)
        for symbol in sorted(symbols):
            owned[symbol] = symbols[symbol]
            self.moved.pop(symbol, None)
        self.owned = owned
        return Status.OK, orjson.dumps({"type": "owned_symbols", "symbols": self.owned})

    def _release_symbol(self, cmd: dict) -> tuple[int, bytes]:
        symbol, epoch = cmd.get("symbol"), cmd.get("epoch")
        if not isinstance(symbol, str) or not isinstance(epoch, int):
            return Status.ERROR, _error("release_symbol needs symbol and epoch (the new owner's epoch)")
        if self.owned is None or symbol not in self.owned:
            return Status.ERROR, _error(f"{symbol} is not owned here")
        if epoch <= self.owned[symbol]:
            return Status.ERROR, _error(f"epoch {epoch} is not newer than {self.owned[symbol]}")
        owned = dict(self.owned)
        del owned[symbol]
        self.owned = owned
        self.moved[symbol] = epoch
        return Status.OK, orjson.dumps({"type": "released", "symbol": symbol, "epoch": epoch})

    # ---- state -----------------------------------------------------------------------------

    def hash_info(self, position: int | None = None) -> dict:
        return {
            "member_id": self.member_id,
            "position": self.last_position if position is None else position,
            "applied": self.applied,
            "engine_hash": retire.hash_with_flag(self.engine.state_hash(), self.migrations.retired),
            "sequence_hash": self.chain.hex(),
        }

    def _publish_hash(self, info: dict) -> None:
        # Output only (never read back by the service): lets operators and tests compare
        # members at the same log position.
        if self.hash_file is None:
            return
        tmp = self.hash_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.hash_file)

    def snapshot(self) -> bytes:
        return b"".join(self._snapshot_parts())

    def snapshot_buffer(self) -> bytearray:
        """The same bytes as ``snapshot`` in a writable buffer: the bridge hands it to Java as a
        direct ByteBuffer over this memory instead of copying it into a Java array."""
        return bytearray().join(self._snapshot_parts())

    def _snapshot_parts(self) -> list[bytes]:
        gc.freeze()  # what lived until this snapshot is long-lived: keep it out of collections
        # no engine digest (engine snapshot version 5): the service snapshot travels under the
        # shim's CRC32C and the archive's per-frame checksums, and the blake2b was half the take
        engine_blob = self.engine.snapshot(digest=False)
        routing = orjson.dumps({"owned": self.owned, "moved": self.moved,
                                "migrations": self.migrations.to_json()}, option=orjson.OPT_SORT_KEYS)
        auth = self.auth.to_bytes() if self.auth is not None else b""
        market = self.market.encode()
        parts = [
            _SNAP_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, self.applied, self.last_position, self.chain),
            _U64.pack(len(engine_blob)),
            engine_blob,
            _U64.pack(len(routing)),
            routing,
            _U64.pack(len(auth)),
            auth,
            _U64.pack(len(market)),
            market,
        ]
        parts.extend(self.replies.encode_parts())
        return parts

    def warm_snapshot_cache(self) -> bool:
        """Builds the engine's snapshot cache after a restore that left it cold (``on_start``);
        False when there was nothing to do. A member's first take otherwise encodes everything,
        and every member's take stalls the whole cluster (Aeron's SNAPSHOT state); when failures
        keep coming a member restarts more often than it snapshots, so nearly every take was a
        cold one (bench/reports/failover_fixed_kill_300_snapcache.md). From the bytes the restore
        read (engine snapshots of version 4 and later: ``SnapCache.seed_loaded``), else by one
        take thrown away."""
        if not self._warm_pending:
            return False
        self._warm_pending = False
        cache = self.engine.snap_cache
        if isinstance(cache, SnapCache) and cache.seeded:
            return cache.seed_loaded()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self.engine.snapshot(digest=False)
            gc.freeze()
        finally:
            if gc_was_enabled:
                gc.enable()
        return True

    def _cache_seeded(self) -> bool:
        """Whether the restore kept the engine snapshot's encoded parts as it read them
        (``SnapCache.keep_loaded``: engine snapshots of version 4 and later), so no take need
        warm the cache."""
        cache = self.engine.snap_cache
        return isinstance(cache, SnapCache) and cache.seeded

    def restore(self, blob: bytes, warm: bool = True) -> None:
        """Replaces the state with ``blob``'s, or raises ServiceSnapshotError changing nothing.
        ``warm=False`` leaves the engine's snapshot cache cold (``warm_snapshot_cache`` later)
        unless the restore seeded it from the bytes it read."""
        buf = memoryview(blob)
        if len(buf) < _SNAP_HEADER.size + 8:
            raise ServiceSnapshotError(f"service snapshot of {len(buf)} bytes is truncated")
        magic, version, applied, position, chain = _SNAP_HEADER.unpack_from(buf, 0)
        if magic != SNAPSHOT_MAGIC:
            raise ServiceSnapshotError("not a matchx service snapshot (bad magic)")
        if version not in _SNAPSHOT_READS:
            raise ServiceSnapshotError(
                f"service snapshot version {version} is not supported (expected {SNAPSHOT_VERSION})"
            )
        off = _SNAP_HEADER.size
        (engine_len,) = _U64.unpack_from(buf, off)
        off += 8
        if off + engine_len > len(buf):
            raise ServiceSnapshotError("engine section runs past the snapshot end")
        # A restore creates millions of long-lived objects: with the collector on, every
        # collection it triggers rescans them all (most of a restore's time at 1M orders).
        # Collect nothing while building, then freeze the result out of future collections.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._restore_sections(buf, off, engine_len, applied, position, chain, version)
            if warm:  # see warm_snapshot_cache
                cache = self.engine.snap_cache
                if not (isinstance(cache, SnapCache) and cache.seed_loaded()):
                    self.engine.snapshot(digest=False)
            gc.freeze()
        finally:
            if gc_was_enabled:
                gc.enable()

    def _restore_sections(self, buf: memoryview, off: int, engine_len: int, applied: int,
                          position: int, chain: bytes, version: int = SNAPSHOT_VERSION) -> None:
        try:
            t0 = time.perf_counter()
            engine = Engine.restore(bytes(buf[off : off + engine_len]))
            t1 = time.perf_counter()
            off += engine_len
            (routing_len,) = _U64.unpack_from(buf, off)
            off += 8
            if off + routing_len > len(buf):
                raise ServiceSnapshotError("routing section runs past the snapshot end")
            routing = orjson.loads(bytes(buf[off : off + routing_len]))
            migrations = Migrations.from_json(routing.get("migrations"))
            off += routing_len
            (auth_len,) = _U64.unpack_from(buf, off)
            off += 8
            if off + auth_len > len(buf):
                raise ServiceSnapshotError("auth section runs past the snapshot end")
            auth = AuthState.from_bytes(bytes(buf[off : off + auth_len])) if auth_len else None
            off += auth_len
            market = MarketData()
            if version >= 4:
                (market_len,) = _U64.unpack_from(buf, off)
                off += 8
                if off + market_len > len(buf):
                    raise ServiceSnapshotError("market data section runs past the snapshot end")
                market = MarketData.decode(bytes(buf[off : off + market_len]), engine)
                off += market_len
            t2 = time.perf_counter()
            replies = ReplyCache.decode(buf[off:], self.replies.window, self.replies.max_bytes)
            self.restore_ms = {"engine": (t1 - t0) * 1000, "replies": (time.perf_counter() - t2) * 1000}
        except ServiceSnapshotError:
            raise
        except SnapshotError as exc:  # the engine's: names what it cannot read (e.g. a version)
            raise ServiceSnapshotError(f"its engine state cannot be loaded: {exc}") from exc
        except (struct.error, ValueError, KeyError, TypeError, orjson.JSONDecodeError,
                TokenError) as exc:
            raise ServiceSnapshotError(f"corrupt service snapshot: {exc}") from exc
        self.engine, self.replies, self.market = engine, replies, market
        self.owned, self.moved = routing["owned"], routing["moved"]
        self.migrations = migrations
        if self.auth is not None:
            self.auth = auth or AuthState()
            self._add_bootstrap_keys()
        self.applied, self.last_position, self.chain = applied, position, chain


def _error(text: str) -> bytes:
    return orjson.dumps({"error": text})
