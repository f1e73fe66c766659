"""Adapters that drive Python matching engines from PyPI with the benchmark's flow.

Each adapter gets the steady-phase flow as pre-converted tuples (no parsing on its side) and
implements the subset of operations its engine supports; what it lacks is emulated with the
engine's own calls (amend = cancel + new order, IOC = limit + cancel of the rest) or skipped
(FOK: none of them can check liquidity first). An adapter ignores cancels/amends of orders it
no longer holds (its book may differ slightly from ours: no STP, no FOK).

Op tuples: ("new", sym, oid, is_buy, price_ticks, qty_lots, tif) with tif 0 GTC, 1 IOC, 2 FOK;
("cancel", sym, oid); ("amend", sym, oid, price_ticks, qty_lots).
"""

from __future__ import annotations

import importlib.metadata as md

TICK = 0.01  # the float price handed to engines that want a price, = ticks * TICK


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


class Peer:
    name = "?"
    dist = "?"
    kind = "pure Python"
    notes = ""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols = symbols

    def run(self, ops: list[tuple]) -> int:
        """Apply the ops; returns how many were applied (skipped ones excluded)."""
        raise NotImplementedError

    @classmethod
    def version(cls) -> str:
        return _version(cls.dist)


class LightMatchingEnginePeer(Peer):
    name = "lightmatchingengine"
    dist = "lightmatchingengine"
    notes = "GTC limit + cancel; IOC = add + cancel rest; amend = cancel + add; FOK skipped"

    def __init__(self, symbols):
        super().__init__(symbols)
        from lightmatchingengine.lightmatchingengine import LightMatchingEngine

        self.lme = LightMatchingEngine()
        self.live: dict[int, object] = {}

    def run(self, ops):
        lme = self.lme
        add = lme.add_order
        cancel = lme.cancel_order
        live = self.live
        n = 0
        for op in ops:
            kind = op[0]
            if kind == "new":
                _k, sym, oid, is_buy, price, qty, tif = op
                if tif == 2:
                    continue
                order, _trades = add(sym, price * TICK, qty, 1 if is_buy else 2)
                if order.leaves_qty > 0:
                    if tif == 1:
                        cancel(order.order_id, sym)
                    else:
                        live[oid] = order
            elif kind == "cancel":
                o = live.pop(op[2], None)
                if o is None or o.leaves_qty == 0:
                    continue
                cancel(o.order_id, op[1])
            else:
                _k, sym, oid, price, qty = op
                o = live.pop(oid, None)
                if o is None or o.leaves_qty == 0:
                    continue
                cancel(o.order_id, sym)
                order, _trades = add(sym, price * TICK, qty, o.side)
                if order.leaves_qty > 0:
                    live[oid] = order
            n += 1
        return n


class PyOrderBookPeer(Peer):
    name = "pyorderbook"
    dist = "pyorderbook"
    notes = ("GTC limit + cancel; IOC = match + cancel rest; amend = cancel + new order; "
             "FOK skipped; prices Decimal")

    def __init__(self, symbols):
        super().__init__(symbols)
        import logging

        import pyorderbook

        logging.getLogger("pyorderbook.book").setLevel(logging.WARNING)
        self.pob = pyorderbook
        self.book = pyorderbook.Book()
        self.live: dict[int, object] = {}

    def run(self, ops):
        pob = self.pob
        bid, ask = pob.bid, pob.ask
        book = self.book
        match = book.match
        cancel = book.cancel
        order_map = book.order_map
        live = self.live
        n = 0
        for op in ops:
            kind = op[0]
            if kind == "new":
                _k, sym, oid, is_buy, price, qty, tif = op
                if tif == 2:
                    continue
                o = (bid if is_buy else ask)(sym, price * TICK, qty)
                match(o)
                if o.quantity:
                    if tif == 1:
                        cancel(o)
                    else:
                        live[oid] = o
            elif kind == "cancel":
                o = live.pop(op[2], None)
                if o is None or o.id not in order_map:
                    continue
                cancel(o)
            else:
                _k, sym, oid, price, qty = op
                o = live.pop(oid, None)
                if o is None or o.id not in order_map:
                    continue
                cancel(o)
                o2 = (bid if o.side == pob.Side.BID else ask)(sym, price * TICK, qty)
                match(o2)
                if o2.quantity:
                    live[oid] = o2
            n += 1
        return n


class CythonOrderBookPeer(Peer):
    name = "cython-orderbook"
    dist = "cython-orderbook"
    kind = "compiled (Cython)"
    notes = "GTC limit + cancel; IOC = add + cancel rest; amend = cancel + add; FOK skipped"

    def __init__(self, symbols):
        super().__init__(symbols)
        import cython_orderbook as cob

        self.cob = cob
        self.books = {s: cob.OrderBook() for s in symbols}
        self.live: dict[int, object] = {}

    def run(self, ops):
        cob = self.cob
        Order = cob.Order
        BID, ASK = cob.OrderSide.BID, cob.OrderSide.ASK
        books = self.books
        live = self.live
        n = 0
        for op in ops:
            kind = op[0]
            if kind == "new":
                _k, sym, oid, is_buy, price, qty, tif = op
                if tif == 2:
                    continue
                b = books[sym]
                o = Order(BID if is_buy else ASK, qty, price)
                b.add_limit_order(o)
                if o.remaining_quantity > 0:
                    if tif == 1:
                        b.cancel_order(o.order_id)
                    else:
                        live[oid] = o
            elif kind == "cancel":
                o = live.pop(op[2], None)
                if o is None or o.remaining_quantity == 0:
                    continue
                books[op[1]].cancel_order(o.order_id)
            else:
                _k, sym, oid, price, qty = op
                o = live.pop(oid, None)
                if o is None or o.remaining_quantity == 0:
                    continue
                b = books[sym]
                b.cancel_order(o.order_id)
                o2 = Order(o.side, qty, price)
                b.add_limit_order(o2)
                if o2.remaining_quantity > 0:
                    live[oid] = o2
            n += 1
            if n % 50000 == 0:
                for b in books.values():  # its trade log grows without bound
                    if hasattr(b, "trade_log"):
                        b.trade_log.clear()
        return n


class LimitOrderBookPeer(Peer):
    name = "limit-order-book"
    dist = "limit-order-book"
    kind = "compiled (C++ via ctypes)"
    notes = ("GTC limit + cancel; IOC = limit + cancel if still in the book; amend = cancel + "
             "limit; FOK skipped; no trade reports")

    def __init__(self, symbols):
        super().__init__(symbols)
        from limit_order_book import LimitOrderBook

        self.books = {s: LimitOrderBook() for s in symbols}
        self.sides: dict[int, bool] = {}

    def run(self, ops):
        books = self.books
        sides = self.sides
        n = 0
        for op in ops:
            kind = op[0]
            if kind == "new":
                _k, sym, oid, is_buy, price, qty, tif = op
                if tif == 2:
                    continue
                b = books[sym]
                sides[oid] = is_buy
                b.limit(is_buy, oid, qty, price)
                if tif == 1 and b.has(oid):
                    b.cancel(oid)
            elif kind == "cancel":
                b = books[op[1]]
                if not b.has(op[2]):
                    continue
                b.cancel(op[2])
            else:
                _k, sym, oid, price, qty = op
                b = books[sym]
                if not b.has(oid):
                    continue
                b.cancel(oid)
                b.limit(sides[oid], oid, qty, price)
            n += 1
        return n


ALL = [LightMatchingEnginePeer, PyOrderBookPeer, CythonOrderBookPeer, LimitOrderBookPeer]

# Asked for but not run, and why (checked on this machine with pip).
NOT_RUN = {
    "matching-engine": "pip: every release requires Python >= 3.12 (the venv is 3.11)",
    "order-book": "installs (C extension, 0.6.1) but is an L2 price-level store for market "
                  "data (bids/asks dicts), not a matching engine: no orders, no matching",
}
