"""Market data in the SDK: a subscription that keeps its stream gap-free, and a local order book.

The service sends a subscriber, per log message that changed the symbol's book, one update with
``U`` (first sequence number it covers) and ``u`` (last); the subscribe answer carries the book
at its sequence ``seq``. The sync rule (Binance's, with absolute quantities per level): drop an
update with ``u <= seq``; apply the first one with ``U <= seq + 1 <= u``; then each next one
must have ``U == previous u + 1``. Anything else is a gap: the subscription re-subscribes (a new
snapshot) by itself, and fetches the trades it missed with the ``trades`` query so that every
trade id reaches the callback once, in order. A failover or a reconnect re-syncs the same way;
``moved`` means the symbol left the partition (``RoutedClient`` follows it).

Callback messages (dicts): ``snapshot`` (the book at ``seq``), ``update`` (``U``, ``u`` and the
subscribed channels: ``trades``, ``bids``/``asks``, ``top``), ``gap`` (noticed; a re-sync
follows), ``trades_missed`` (the trades window no longer held them), ``moved``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from decimal import Decimal
from typing import Any

log = logging.getLogger("matchx.client.market")

CHANNELS = ("trades", "l2", "top")
Callback = Callable[[dict], None]


class SubscriptionRejected(RuntimeError):
    """The service refused the subscription (unknown symbol or channel, too many, malformed)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Subscription:
    """One symbol's stream for one client session; re-syncs by itself (see the module text).

    ``submit`` sends an engine command and returns a Future of its Reply; the client calls
    ``on_answer``'s result and ``on_update`` from its one receiving thread, in stream order.
    """

    def __init__(self, symbol: str, channels: list[str], callback: Callback,
                 submit: Callable[[dict], Future], depth: int = 1000) -> None:
        bad = [c for c in channels if c not in CHANNELS]
        if not channels or bad:
            raise ValueError(f"channels must be a non-empty subset of {CHANNELS}, not {channels!r}")
        self.symbol = symbol
        self.channels = list(channels)
        self.callback = callback
        self._submit = submit
        self.depth = depth
        self.seq = -1           # the sequence the subscriber's view is at; -1 while not synced
        self.last_trade_id = -1  # the last trade id delivered; -1 before the first snapshot
        self.gaps = 0
        self.resyncs = 0
        self.closed = False
        self.ready = threading.Event()  # set at the first snapshot
        self.error: Exception | None = None
        self._held: list[dict] | None = None  # updates held while missed trades are fetched
        self._attempt = 0

    # ---- sending ----------------------------------------------------------------------------

    def resync(self, why: str) -> None:
        """Asks for a new snapshot (a subscribe); updates are ignored until it arrives."""
        if self.closed:
            return
        if self.seq >= 0:
            log.info("%s: re-sync (%s) at seq %d", self.symbol, why, self.seq)
        self.seq = -1
        self._held = None
        self.resyncs += 1
        self._attempt += 1
        attempt = self._attempt
        fut = self._submit({"op": "subscribe", "symbol": self.symbol, "channels": self.channels,
                            "depth": self.depth})
        fut.add_done_callback(lambda f: self._on_subscribed(f, attempt))

    def _on_subscribed(self, fut: Future, attempt: int) -> None:
        if attempt != self._attempt or self.closed:
            return  # a later re-sync superseded this one
        try:
            reply = fut.result()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            self.error = exc
            self.ready.set()
            log.warning("%s: subscribe failed: %s", self.symbol, exc)
            return
        [answer] = reply.events
        if answer.get("type") != "subscribed":
            self.error = SubscriptionRejected(answer.get("reason", "rejected"), answer.get("detail", ""))
            self.closed = True
            self.ready.set()
            return
        self.seq = answer["seq"]
        self.callback({"type": "snapshot", "symbol": self.symbol, "seq": answer["seq"],
                       "bids": answer.get("bids", []), "asks": answer.get("asks", [])})
        self.ready.set()
        last = answer.get("last_trade_id")
        if last is None:
            return
        if 0 <= self.last_trade_id < last:
            # trades happened while the stream was broken: fetch them before going on
            self._held = []
            since = self.last_trade_id
            self._submit({"op": "trades", "symbol": self.symbol, "since": since}).add_done_callback(
                lambda f: self._on_trades(f, attempt))
        elif self.last_trade_id < 0:
            self.last_trade_id = last

    def _on_trades(self, fut: Future, attempt: int) -> None:
        if attempt != self._attempt or self.closed:
            return
        held, self._held = self._held or [], None
        try:
            [answer] = fut.result().events
            trades = [t for t in answer["trades"] if t[0] > self.last_trade_id]
            if not answer.get("complete", False):
                self.callback({"type": "trades_missed", "symbol": self.symbol, "after": self.last_trade_id})
            if trades:
                self.last_trade_id = trades[-1][0]
                self.callback({"type": "trades", "symbol": self.symbol, "trades": trades})
        except Exception as exc:  # noqa: BLE001 - the gap is reported, the stream goes on
            log.warning("%s: fetching missed trades failed: %s", self.symbol, exc)
            self.callback({"type": "trades_missed", "symbol": self.symbol, "after": self.last_trade_id})
        for msg in held:
            self.on_update(msg)

    # ---- receiving --------------------------------------------------------------------------

    def on_update(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "moved":
            self.closed = True
            self.callback(msg)
            return
        if kind == "gap":
            self._gap(msg)
            return
        if self.seq < 0:
            return  # waiting for a snapshot
        if self._held is not None:
            self._held.append(msg)
            return
        first, last = msg["U"], msg["u"]
        if last <= self.seq:
            return  # already in the snapshot
        if first > self.seq + 1:
            self._gap(msg)
            return
        trades = msg.get("trades")
        if trades:
            fresh = [t for t in trades if t[0] > self.last_trade_id]
            if len(fresh) != len(trades):
                msg = {**msg, "trades": fresh}
            if fresh:
                self.last_trade_id = fresh[-1][0]
        self.seq = last
        self.callback(msg)

    def _gap(self, msg: dict) -> None:
        self.gaps += 1
        self.callback({"type": "gap", "symbol": self.symbol, "seq": self.seq, "U": msg.get("U")})
        self.resync("gap")

    def wait_ready(self, timeout: float = 10.0) -> None:
        if not self.ready.wait(timeout):
            raise TimeoutError(f"no snapshot of {self.symbol} within {timeout} s")
        if self.error is not None:
            raise self.error


class BookState:
    """An L2 book kept from snapshot and update messages (prices and quantities as strings)."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.seq = -1

    def __call__(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.bids = {p: q for p, q in msg["bids"]}
            self.asks = {p: q for p, q in msg["asks"]}
            self.seq = msg["seq"]
        elif kind == "update":
            for side, levels in ((self.bids, msg.get("bids", ())), (self.asks, msg.get("asks", ()))):
                for p, q in levels:
                    if Decimal(q) == 0:
                        side.pop(p, None)
                    else:
                        side[p] = q
            self.seq = msg["u"]

    def levels(self, depth: int = 10) -> dict[str, Any]:
        """The book as the ``book`` query shows it: best first, at most ``depth`` per side."""
        bids = sorted(self.bids.items(), key=lambda x: Decimal(x[0]), reverse=True)[:depth]
        asks = sorted(self.asks.items(), key=lambda x: Decimal(x[0]))[:depth]
        return {"seq": self.seq, "bids": [list(x) for x in bids], "asks": [list(x) for x in asks]}


class LocalBook:
    """A local order book that follows a symbol: ``LocalBook(client, "BTC-USDT")``.

    ``client`` is a MatchClient or RoutedClient; ``on_change(book)`` (optional) runs after each
    snapshot or update, on the client's receiving thread. Re-syncs by itself on a gap, a
    failover or a move; ``gaps`` and ``resyncs`` count them.
    """

    def __init__(self, client: Any, symbol: str, on_change: Callable[[LocalBook], None] | None = None,
                 channels: tuple[str, ...] = ("l2",)) -> None:
        self.state = BookState(symbol)
        self.on_change = on_change
        self.trades: list[list] = []  # with "trades" in channels: every trade, in id order
        self._lock = threading.Lock()
        self.sub = client.subscribe(symbol, list(channels), self._on_message)

    def _on_message(self, msg: dict) -> None:
        with self._lock:
            self.state(msg)
            if msg.get("trades"):
                self.trades.extend(msg["trades"])
        if self.on_change is not None and msg.get("type") in ("snapshot", "update"):
            self.on_change(self)

    @property
    def seq(self) -> int:
        return self.state.seq

    @property
    def gaps(self) -> int:
        return self.sub.gaps

    def levels(self, depth: int = 10) -> dict[str, Any]:
        with self._lock:
            return self.state.levels(depth)

    def wait_ready(self, timeout: float = 10.0) -> LocalBook:
        self.sub.wait_ready(timeout)
        return self
