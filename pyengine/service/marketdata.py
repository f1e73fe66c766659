"""Market data subscriptions and the updates the leader pushes to subscribed sessions.

A subscription is a command in the log (``{"op": "subscribe", "symbol", "channels"}``), so every
member knows every session's subscriptions at the same log position, keeps them in its snapshot,
and a new leader goes on sending where the old one stopped. After each log message the service
calls ``collect``: for every watched symbol whose update sequence moved, one update (the
message's changes together, ``U`` = first sequence number, ``u`` = last), encoded once per
channel set and sent to each subscribed session as one egress message per session per log
message, never one per change (docs/market-data.md).

Only the leader encodes (``send``): followers offer nothing (Aeron mocks their egress), so they
only clear what the engine recorded. What the engine records for a symbol (touched levels,
trades) is not state; the sequence is, and it advances on every member whether or not anyone
subscribes.
"""

from __future__ import annotations

import logging

import orjson

from pyengine.engine import Engine
from pyengine.engine.model import Symbol, market_update
from pyengine.wire import protocol

log = logging.getLogger("matchx.marketdata")

CHANNELS = ("trades", "l2", "top")
MAX_SUBSCRIPTIONS = 32  # symbols one session may subscribe to
MAX_SNAPSHOT_DEPTH = 1000  # levels per side in a subscribe answer (the engine's MAX_DEPTH)


class SubscriptionError(ValueError):
    """A subscription command that cannot be applied; ``reason`` is the reject code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class MarketData:
    """Every session's subscriptions, and the per-message updates for them."""

    def __init__(self) -> None:
        # symbol -> {session id -> channels}: insertion order is log order (deterministic)
        self.watchers: dict[str, dict[int, tuple[str, ...]]] = {}
        self.per_session: dict[int, int] = {}  # session id -> number of symbols it watches
        # symbol -> its sequence when the last update went out (or at the subscription)
        self.last_seq: dict[str, int] = {}
        self.sent_updates = 0  # update messages handed to the egress (leader only; not state)

    # ---- commands (applied on every member) -------------------------------------------------

    def subscribe(self, engine: Engine, session_id: int, cmd: dict) -> dict:
        """Adds or replaces ``session_id``'s subscription; the answer holds the book at its seq."""
        symbol, channels = _parse(cmd)
        sym = engine.symbols.get(symbol)
        if sym is None:
            raise SubscriptionError("unknown_symbol", f"unknown symbol {symbol}"[:120])
        depth = cmd.get("depth", MAX_SNAPSHOT_DEPTH)
        if type(depth) is not int or not 1 <= depth <= MAX_SNAPSHOT_DEPTH:
            raise SubscriptionError("bad_request", f"depth must be an int in [1, {MAX_SNAPSHOT_DEPTH}]")
        subs = self.watchers.get(symbol)
        if (subs is None or session_id not in subs) and self.per_session.get(session_id, 0) >= MAX_SUBSCRIPTIONS:
            raise SubscriptionError("too_many_subscriptions",
                                    f"a session may subscribe to at most {MAX_SUBSCRIPTIONS} symbols")
        if subs is None:
            subs = self.watchers[symbol] = {}
            self.last_seq[symbol] = sym.seq
            sym.watch = True
        if session_id not in subs:
            self.per_session[session_id] = self.per_session.get(session_id, 0) + 1
        subs[session_id] = channels
        answer: dict = {"type": "subscribed", "symbol": symbol, "channels": list(channels), "seq": sym.seq}
        if "l2" in channels or "top" in channels:
            answer.update(engine.l2(sym, depth))
        if "trades" in channels:
            answer["last_trade_id"] = sym.recent[-1][1] if sym.recent else 0
        return answer

    def unsubscribe(self, engine: Engine, session_id: int, cmd: dict) -> dict:
        symbol = cmd.get("symbol")
        if not isinstance(symbol, str):
            raise SubscriptionError("bad_request", "unsubscribe needs a symbol")
        self._drop(engine, symbol, session_id)
        return {"type": "unsubscribed", "symbol": symbol}

    def drop_session(self, engine: Engine, session_id: int) -> None:
        """A closed session's subscriptions go (session close is in the log: every member)."""
        if session_id not in self.per_session:
            return
        for symbol in [s for s, subs in self.watchers.items() if session_id in subs]:
            self._drop(engine, symbol, session_id)

    def _drop(self, engine: Engine, symbol: str, session_id: int) -> None:
        subs = self.watchers.get(symbol)
        if subs is None or subs.pop(session_id, None) is None:
            return
        left = self.per_session[session_id] - 1
        if left:
            self.per_session[session_id] = left
        else:
            del self.per_session[session_id]
        if not subs:
            del self.watchers[symbol]
            del self.last_seq[symbol]
            sym = engine.symbols.get(symbol)
            if sym is not None:
                sym.watch = False
                sym.md_levels.clear()
                sym.md_trades.clear()

    # ---- after each log message -------------------------------------------------------------

    def collect(self, engine: Engine, owned: dict[str, int] | None, moved: dict[str, int],
                send: bool, max_bytes: int) -> list[tuple[int, bytes]]:
        """The market data frames of the message just applied: ``[(session id, message)]``."""
        if not self.watchers:
            return []
        per_session: dict[int, list[bytes]] = {}
        gone: list[str] = []
        for symbol, subs in self.watchers.items():
            sym = engine.symbols.get(symbol)
            if sym is None or (owned is not None and symbol not in owned):
                gone.append(symbol)
                if send:
                    note = orjson.dumps({"type": "moved", "symbol": symbol, "epoch": moved.get(symbol, 0)})
                    for sid in subs:
                        per_session.setdefault(sid, []).append(note)
                continue
            if not sym.watch:  # a Symbol object replaced under the subscription (re-imported)
                sym.watch = True
                self.last_seq[symbol] = sym.seq
            last = self.last_seq[symbol]
            if sym.seq == last:
                continue
            self.last_seq[symbol] = sym.seq
            if send:
                encoded: dict[tuple[str, ...], bytes] = {}
                for sid, channels in subs.items():
                    frag = encoded.get(channels)
                    if frag is None:
                        frag = encoded[channels] = _update(sym, channels, last + 1)
                    per_session.setdefault(sid, []).append(frag)
            sym.md_levels.clear()
            sym.md_trades.clear()
        for symbol in gone:
            for sid in list(self.watchers[symbol]):
                self._drop(engine, symbol, sid)
        out: list[tuple[int, bytes]] = []
        for sid, frags in per_session.items():
            msg = protocol.encode_market(b"[" + b",".join(frags) + b"]")
            if len(msg) > max_bytes:
                # too large for one Aeron message: the subscriber re-syncs (and fetches the trades
                # it missed with the trades query); never a silent gap
                log.warning("market data for session %d: %d bytes over the %d-byte limit; sent as a gap",
                            sid, len(msg), max_bytes)
                msg = protocol.encode_market(orjson.dumps([{"type": "gap"}]))
            out.append((sid, msg))
        self.sent_updates += len(out)
        return out

    # ---- snapshot ---------------------------------------------------------------------------

    def encode(self) -> bytes:
        return orjson.dumps([[symbol, [[sid, list(ch)] for sid, ch in subs.items()]]
                             for symbol, subs in self.watchers.items()])

    @classmethod
    def decode(cls, blob: bytes, engine: Engine) -> MarketData:
        md = cls()
        for symbol, subs in orjson.loads(blob):
            sym = engine.symbols.get(symbol)
            md.watchers[symbol] = {int(sid): tuple(ch) for sid, ch in subs}
            md.last_seq[symbol] = sym.seq if sym is not None else 0
            if sym is not None:
                sym.watch = True
            for sid, _ in subs:
                md.per_session[int(sid)] = md.per_session.get(int(sid), 0) + 1
        return md


def _parse(cmd: dict) -> tuple[str, tuple[str, ...]]:
    symbol = cmd.get("symbol")
    if not isinstance(symbol, str) or not symbol or len(symbol) > 64:
        raise SubscriptionError("bad_request", "subscribe needs a symbol (a non-empty string)")
    channels = cmd.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise SubscriptionError("bad_request", f"channels must be a non-empty list of {', '.join(CHANNELS)}")
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise SubscriptionError("unknown_channel", f"unknown channel {unknown[0]!r}"[:120]
                                + f"; channels are {', '.join(CHANNELS)}")
    # one canonical order, so equal channel sets share one encoded update
    return symbol, tuple(c for c in CHANNELS if c in channels)


def _update(sym: Symbol, channels: tuple[str, ...], first: int) -> bytes:
    """One symbol's update for one channel set: what changed since ``first`` - 1."""
    return orjson.dumps(market_update(sym, first, "trades" in channels, "l2" in channels, "top" in channels))
