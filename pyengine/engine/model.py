"""The engine's state: its constants, the order, level, account and symbol records, and the
compact event and command codes. Shared by the matching code (core.py) and the snapshot codec
(snapshot.py), neither of which the other needs to import for these.

Compiled with the rest of the engine (mypyc); plain typed Python otherwise.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from typing import Final

from .errors import Reject
from .numbers import fmt_scaled, parse_dec, to_scale

BUY: Final = 0
SELL: Final = 1
SIDE_NAMES: Final = ("buy", "sell")

LIMIT: Final = 0
MARKET: Final = 1
TYPE_NAMES: Final = ("limit", "market")

GTC: Final = 0
IOC: Final = 1
FOK: Final = 2
TIF_NAMES: Final = ("GTC", "IOC", "FOK")

STP_NONE: Final = 0
STP_CANCEL_TAKER: Final = 1
STP_CANCEL_MAKER: Final = 2
STP_CANCEL_BOTH: Final = 3
STP_NAMES: Final = ("none", "cancel_taker", "cancel_maker", "cancel_both")
STPS: Final = {"none": 0, "cancel_taker": 1, "cancel_maker": 2, "cancel_both": 3}

OPEN: Final = 0
FILLED: Final = 1
CANCELLED: Final = 2
STATUS_NAMES: Final = ("open", "filled", "cancelled")

DEFAULT_ASSET_DECIMALS: Final = 8
DEFAULT_DEDUP_WINDOW: Final = 1000
DEFAULT_BAND_BPS: Final = 1000
MAX_TICKS: Final = 10**15
MAX_LOTS: Final = 10**15
MAX_ID_LEN: Final = 64
MAX_DEPTH: Final = 1000
MAX_OPEN_LIST: Final = 1000   # orders one open_orders answer lists (then truncated: true)
MAX_TS: Final = 2**63 - 1
# fills remembered per account for the ``fills`` query (oldest dropped first): bounds an
# account's memory at about this many trade records (docs/market-data.md)
FILLS_WINDOW: Final = 1000
# public trades remembered per symbol for the ``trades`` query: a market data subscriber that
# lost updates (a failover, a slow connection) fetches the trades it missed from here
TRADES_WINDOW: Final = 1000
_CACHE_MAX: Final = 8192
# "no limit" for the matching loop: a buy never sees a price above it, a sell none below 0
NO_BUY_LIMIT: Final = MAX_TICKS + 1
NO_SELL_LIMIT: Final = 0


def fee_of(notional: int, bps: int) -> int:
    """Fee on a quote notional, rounded up (in favour of the exchange)."""
    return -((-notional * bps) // 10000) if bps else 0


def checked_ident(x: object, what: str) -> str:
    if isinstance(x, str) and x and len(x) <= MAX_ID_LEN:
        return x
    raise Reject("bad_request", f"{what} must be a non-empty string of at most 64 chars")


class Bal:
    """One account's balance of one asset, in asset units."""

    __slots__ = ("avail", "held")

    def __init__(self, avail: int = 0, held: int = 0) -> None:
        self.avail = avail
        self.held = held


class Order:
    __slots__ = (
        "oid", "acct", "sym", "side", "price", "qty", "unit", "hb", "rb", "coid",
        "oprice", "oqty", "filled", "otype", "tif", "post_only", "stp", "status", "ts", "ev",
        "lvl", "prev", "nxt", "key", "row",
    )

    def __init__(self, oid: int, acct: Account, sym: Symbol, side: int, price: int, qty: int,
                 unit: int, hb: Bal, rb: Bal, coid: str | None, otype: int, tif: int,
                 post_only: bool, stp: int, ts: int) -> None:
        self.oid = oid
        # the boxed order id, the key of ``Engine.orders`` and ``Account.open``: compiled code
        # keeps ``oid`` unboxed, and a key boxed afresh for every dict operation costs an
        # allocation plus a compare against the stored key (a cache miss in a deep book)
        self.key: object = oid
        self.acct = acct
        self.sym = sym
        self.side = side
        self.price = price      # ticks; 0 for a market order (no price)
        self.qty = qty          # remaining lots; 0 once closed
        self.unit = unit        # held units per remaining lot (0 for a market buy)
        self.hb = hb            # balance of the held asset
        self.rb = rb            # balance of the received asset
        self.coid = coid
        self.oprice = price     # price at placement
        self.oqty = qty         # quantity at placement
        self.filled = 0
        self.otype = otype
        self.tif = tif
        self.post_only = post_only
        self.stp = stp
        self.status = OPEN
        self.ts = ts
        # events of the placement when more than [accepted]: compact tuples while live, their
        # JSON (bytes) once a snapshot has encoded them or restored them, or, once the order's
        # snapshot row holds that JSON, its offset in ``row`` (an int: kept once, not twice; see
        # ``placement_events``)
        self.ev: object = None
        # while resting: its level and neighbours in time priority (an intrusive FIFO list,
        # so a cancel or amend unlinks in O(1) without scanning the level)
        self.lvl: Level | None = None
        self.prev: Order | None = None
        self.nxt: Order | None = None
        # once finished (it never changes again): its snapshot row, encoded at the first
        # snapshot that holds it, so later snapshots copy the dedup windows as bytes
        self.row: bytes | None = None


class Level:
    """Orders at one price in time priority (``head`` first); ``total`` = resting lots."""

    __slots__ = ("head", "tail", "total")

    def __init__(self) -> None:
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0

    def push(self, o: Order) -> None:
        t = self.tail
        o.lvl = self
        o.prev = t
        o.nxt = None
        if t is None:
            self.head = o
        else:
            t.nxt = o
        self.tail = o
        self.total += o.qty

    def remove(self, o: Order) -> None:
        """Unlink ``o``; the caller has already taken its quantity off ``total``."""
        p = o.prev
        n = o.nxt
        if p is None:
            self.head = n
        else:
            p.nxt = n
        if n is None:
            self.tail = p
        else:
            n.prev = p
        o.lvl = None
        o.prev = None
        o.nxt = None

    def orders(self) -> list[Order]:
        out: list[Order] = []
        o = self.head
        while o is not None:
            out.append(o)
            o = o.nxt
        return out


class Account:
    __slots__ = ("name", "bal", "open", "coids", "coids_pending", "finished", "fills")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bal: dict[str, Bal] = {}
        self.open: dict[object, Order] = {}      # open orders by Order.key (any symbol)
        self.coids: dict[str, Order] = {}        # client_order_id -> order (open or retained)
        # after a restore the index is built on first use (recovery time is what a restart
        # of all members costs; most accounts are not touched in the first seconds)
        self.coids_pending = False
        self.finished: deque[Order] = deque()    # last N finished orders, oldest first
        # last FILLS_WINDOW fills, oldest first: the trade's own compact event while live (no
        # copy per fill), a ``fill_record`` tuple once restored or for a self-trade's taker side
        self.fills: deque[tuple] = deque(maxlen=FILLS_WINDOW)

    def coid_index(self) -> dict[str, Order]:
        """``coids``, built from the open and retained orders if a restore left it pending."""
        if self.coids_pending:
            self.coids_pending = False
            idx = self.coids
            for o in self.open.values():
                c = o.coid
                if c is not None:
                    idx[c] = o
            for o in self.finished:
                c = o.coid
                if c is not None:
                    idx[c] = o
        return self.coids


class Symbol:
    __slots__ = (
        "name", "base", "quote", "tick_c", "tick_d", "lot_c", "lot_d", "qpu", "bpl",
        "min_qty", "max_qty", "max_price", "maker_bps", "taker_bps", "hold_bps", "stp_default",
        "band_bps", "bids", "asks", "bid_keys", "ask_keys", "pcache", "qcache", "pstr", "qstr",
        "tick_str", "lot_str", "quote_dec", "seq", "stamp", "watch", "md_levels", "md_trades",
        "recent", "dirty", "detached",
    )

    def __init__(self) -> None:
        self.name = ""
        self.base = ""
        self.quote = ""
        self.tick_c = 1
        self.tick_d = 0
        self.lot_c = 1
        self.lot_d = 0
        self.qpu = 1             # quote units per lot per tick
        self.bpl = 1             # base units per lot
        self.min_qty = 1
        self.max_qty = MAX_LOTS
        self.max_price = MAX_TICKS
        self.maker_bps = 0
        self.taker_bps = 0
        self.hold_bps = 0
        self.stp_default = STP_CANCEL_TAKER
        self.band_bps = DEFAULT_BAND_BPS
        self.tick_str = "1"
        self.lot_str = "1"
        self.quote_dec = 0        # decimals of the quote asset (fees are quote units)
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.bid_keys: list[int] = []   # prices ascending, best bid last
        self.ask_keys: list[int] = []   # -prices ascending, best ask last
        self.pcache: dict[str, int] = {}
        self.qcache: dict[str, int] = {}
        self.pstr: dict[int, str] = {}
        self.qstr: dict[int, str] = {}
        # market data: ``seq`` is state (snapshots, migration): each command that changes this
        # book takes the next number. The rest is transient: ``stamp`` the engine's command
        # counter at the last change (one number per command), and, only while someone
        # subscribes (``watch``), the prices touched since the service last took them
        # (``md_levels``: bids +price, asks -price) and the trade events (``md_trades``)
        self.seq = 0
        self.stamp = 0
        self.watch = False
        self.md_levels: list[int] = []
        self.md_trades: list[tuple] = []
        # state: the last TRADES_WINDOW trades (live trade events, or ``trade_record`` tuples
        # once restored)
        self.recent: deque[tuple] = deque(maxlen=TRADES_WINDOW)
        # not state: while a pre-copy in pieces runs (migration_pieces.py), the levels touched
        # since it began (bids +price, asks -price), so the freeze walks only those; None
        # otherwise. A member restored meanwhile has none and walks every level instead
        self.dirty: set[int] | None = None
        # not state: the book was taken out whole at a migration's freeze
        # (migration_pieces.detach) and its orders still sit in the engine's and the accounts'
        # indexes until the paced cleanup takes them out; every reader of those indexes skips
        # an open order of a detached symbol (``stale``), so what it answers is what a member
        # restored from a snapshot (whose indexes never held them) answers
        self.detached = False

    # -- conversions -------------------------------------------------------------------
    def price_str(self, t: int) -> str:
        s = self.pstr.get(t)
        if s is None:
            if len(self.pstr) >= _CACHE_MAX:
                self.pstr.clear()
            s = fmt_scaled(t * self.tick_c, self.tick_d)
            self.pstr[t] = s
        return s

    def qty_str(self, n: int) -> str:
        s = self.qstr.get(n)
        if s is None:
            if len(self.qstr) >= _CACHE_MAX:
                self.qstr.clear()
            s = fmt_scaled(n * self.lot_c, self.lot_d)
            self.qstr[n] = s
        return s

    def parse_price(self, x: object) -> int:
        if isinstance(x, str):
            t = self.pcache.get(x)
            if t is not None:
                return t
        c, d = parse_dec(x, "price")
        v = to_scale(c, d, self.tick_d)
        if v is None or v % self.tick_c:
            raise Reject("price_off_tick", f"price {x} is not a multiple of {self.tick_str}")
        t = v // self.tick_c
        if t <= 0 or t > self.max_price:
            raise Reject("out_of_bounds", f"price {x} out of bounds")
        if isinstance(x, str):
            if len(self.pcache) >= _CACHE_MAX:
                self.pcache.clear()
            self.pcache[x] = t
        return t

    def parse_qty(self, x: object) -> int:
        if isinstance(x, str):
            n = self.qcache.get(x)
            if n is not None:
                return n
        c, d = parse_dec(x, "qty")
        v = to_scale(c, d, self.lot_d)
        if v is None or v % self.lot_c:
            raise Reject("qty_off_lot", f"qty {x} is not a multiple of {self.lot_str}")
        n = v // self.lot_c
        if n < self.min_qty or n > self.max_qty:
            raise Reject("out_of_bounds", f"qty {x} out of bounds")
        if isinstance(x, str):
            if len(self.qcache) >= _CACHE_MAX:
                self.qcache.clear()
            self.qcache[x] = n
        return n

    def buy_unit(self, price: int) -> int:
        """Quote units held per lot of a buy at ``price``: notional + max fee, rounded up."""
        n = price * self.qpu
        return n + fee_of(n, self.hold_bps)

    def level_of(self, side: int, price: int) -> Level:
        """The level at ``price`` on ``side``, created (and its key inserted) when missing."""
        if side == BUY:
            lvl = self.bids.get(price)
            if lvl is None:
                lvl = Level()
                self.bids[price] = lvl
                insort(self.bid_keys, price)
        else:
            lvl = self.asks.get(price)
            if lvl is None:
                lvl = Level()
                self.asks[price] = lvl
                insort(self.ask_keys, -price)
        return lvl

    def touch(self, ncmd: int, key: int) -> None:
        """The level at ``key`` (bids +price, asks -price) changed in command ``ncmd``."""
        if self.stamp != ncmd:
            self.stamp = ncmd
            self.seq += 1
        if self.watch:
            self.md_levels.append(key)
        d = self.dirty
        if d is not None:
            d.add(key)

    def drop_level(self, side: int, price: int) -> None:
        if side == BUY:
            del self.bids[price]
            keys = self.bid_keys
            del keys[bisect_left(keys, price)]
        else:
            del self.asks[price]
            keys = self.ask_keys
            del keys[bisect_left(keys, -price)]




# Compact events: what the engine's core produces (cheap tuples); ``event_dict`` turns one
# into the documented JSON event. Tuples refer to orders only for fields that never change
# after placement (ids, accounts, symbol, side, type, original price and quantity); anything
# that changes later is copied into the tuple.
EV_REJECTED: Final = 0    # (EV_REJECTED, reason, detail)
EV_ACCEPTED: Final = 1    # (EV_ACCEPTED, order)
EV_TRADE: Final = 2       # (EV_TRADE, trade_id, price, qty, maker, taker, maker_fee, taker_fee)
EV_CANCELLED: Final = 3   # (EV_CANCELLED, order, remaining_qty, reason)
EV_AMENDED: Final = 4     # (EV_AMENDED, order, price, qty, old_price, old_qty, priority)
EV_DUPLICATE: Final = 5   # (EV_DUPLICATE, order): the original outcome of a repeated place

# Compact commands (``Engine.apply_compact``)
OP_PLACE: Final = 1
OP_CANCEL: Final = 2
OP_AMEND: Final = 3



def stale(o: Order | None) -> bool:
    """``o`` is an open order of a book taken out at a migration's freeze and not yet cleaned
    out of the indexes (``Symbol.detached``): it is not this engine's any more."""
    return o is not None and o.status == OPEN and o.sym.detached


def placement_record(o: Order, ev: list) -> list:
    """``o``'s placement events (``ev``, accepted first) as a compact, self-contained record for
    snapshots: what the accepted event says is ``o``'s own (restored with it); a trade keeps
    its numbers and the maker's id and account, a cancel the cancelled order's identity (a maker
    cancelled for self-trade prevention may be long gone when a duplicate asks)."""
    assert ev[0][0] == EV_ACCEPTED and ev[0][1] is o
    rec: list = []
    for i in range(1, len(ev)):
        e = ev[i]
        k = e[0]
        if k == EV_TRADE:
            m: Order = e[4]
            rec.append([EV_TRADE, e[1], e[2], e[3], m.oid, m.acct.name, json_int(e[6]), json_int(e[7])])
        elif k == EV_CANCELLED:
            c: Order = e[1]
            rec.append([EV_CANCELLED, c.oid, c.coid, c.acct.name, c.side, e[2], e[3]])
        else:  # pragma: no cover - a placement's events are only these
            raise AssertionError(f"unexpected placement event {k}")
    return rec


FILL: Final = -1   # (FILL, trade_id, symbol, price, qty, order_id, side, is_maker, fee)


def fill_record(e: tuple, acct: Account) -> tuple:
    """``acct``'s side of a fill kept in ``Account.fills`` (a live trade event or a record), as a
    record: ticks, lots and quote units."""
    if e[0] == FILL:
        return e
    m: Order = e[4]
    if m.acct is acct:
        return (FILL, e[1], m.sym.name, e[2], e[3], m.oid, m.side, True, e[6])
    t: Order = e[5]
    return (FILL, e[1], t.sym.name, e[2], e[3], t.oid, t.side, False, e[7])


TRADE: Final = -2  # (TRADE, trade_id, price, qty, taker_side)


def trade_record(e: tuple) -> tuple:
    """A public trade kept in ``Symbol.recent`` (a live trade event or a record) as a record."""
    if e[0] == TRADE:
        return e
    t: Order = e[5]
    return (TRADE, e[1], e[2], e[3], t.side)


def market_update(sym: Symbol, first: int, trades: bool, l2: bool, top: bool) -> dict:
    """One symbol's market data update for one channel set: the changes recorded since its
    sequence was ``first`` - 1 (``Symbol.md_levels``, ``Symbol.md_trades``). Here, compiled
    with the engine, because the leader runs it after every log message that changed a
    watched book (pyengine/service/marketdata.py)."""
    upd: dict = {"type": "update", "symbol": sym.name, "U": first, "u": sym.seq}
    if trades:
        tl: list = []
        for e in sym.md_trades:
            t: Order = e[5]
            tl.append([e[1], sym.price_str(e[2]), sym.qty_str(e[3]), SIDE_NAMES[t.side]])
        upd["trades"] = tl
    if l2:
        bids: list = []
        asks: list = []
        for k in dict.fromkeys(sym.md_levels):  # each touched level once, in the order touched
            if k > 0:
                lvl = sym.bids.get(k)
                bids.append([sym.price_str(k), sym.qty_str(lvl.total) if lvl is not None else "0"])
            else:
                lvl = sym.asks.get(-k)
                asks.append([sym.price_str(-k), sym.qty_str(lvl.total) if lvl is not None else "0"])
        upd["bids"] = bids
        upd["asks"] = asks
    if top:
        upd["top"] = top_of_book(sym)
    return upd


def top_of_book(sym: Symbol) -> list:
    """[best bid price, its qty, best ask price, its qty]; None for an empty side."""
    bk = sym.bid_keys
    ak = sym.ask_keys
    out: list = [None, None, None, None]
    if bk:
        p = bk[-1]
        out[0] = sym.price_str(p)
        out[1] = sym.qty_str(sym.bids[p].total)
    if ak:
        p = -ak[-1]
        out[2] = sym.price_str(p)
        out[3] = sym.qty_str(sym.asks[p].total)
    return out


def json_int(v: int) -> object:
    """``v`` as JSON can hold it: a fee beyond 64 bits (notional up to 10**30 quote units) goes
    as its decimal digits."""
    return v if -(2**63) <= v < 2**63 else str(v)




class EngineState:
    """The engine's whole state (what a snapshot holds); the matching code is ``core.Engine``."""

    def __init__(self, dedup_window: object = DEFAULT_DEDUP_WINDOW) -> None:
        if type(dedup_window) is not int or dedup_window < 1:
            raise ValueError("dedup_window must be a positive int")
        self.dedup_window: int = dedup_window
        # commands applied by this process (not state): a symbol's ``seq`` moves once per command
        self.ncmd = 0
        self.next_oid = 1
        self.next_tid = 1
        self.assets: dict[str, int] = {}          # asset -> decimals
        self.symbols: dict[str, Symbol] = {}
        self.accounts: dict[str, Account] = {}
        self.orders: dict[object, Order] = {}     # open orders by Order.key (the order id)
        self.fees: dict[str, int] = {}            # fee pool per asset
        self.txs: dict[str, tuple[str, str, str, int, int, str]] = {}
        # tx_id -> (op, account, asset, amount, available after, tx_id)
        # not state: what the last snapshot encoded and the next may reuse (a snapcache.SnapCache,
        # which core.Engine keeps; a symbol export's small engine keeps none)
        self.snap_cache: object = None

