"""The deterministic matching engine (pure Python, integers inside).

See docs/engine.md for the contract. Internals:

* prices are integer ticks, quantities integer lots, balances integer asset units;
* a book side is ``dict price -> Level`` plus a sorted key list (best price at the end:
  bids keep ``price`` ascending, asks keep ``-price`` ascending) searched with ``bisect``;
* a ``Level`` is a deque of orders in time priority with lazy deletion: a cancelled order is
  marked dead (``qty == 0``) and skipped/popped later; a level is compacted when more than
  half of it is dead;
* nothing iterates over a set or over dict keys whose order is not the command order.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

from .errors import Reject
from .numbers import POW10, decimals_of, fmt_scaled, parse_dec, to_scale

BUY = 0
SELL = 1
SIDE_NAMES = ("buy", "sell")
SIDES = {"buy": BUY, "sell": SELL}

LIMIT = 0
MARKET = 1
TYPE_NAMES = ("limit", "market")
TYPES = {"limit": LIMIT, "market": MARKET}

GTC = 0
IOC = 1
FOK = 2
TIF_NAMES = ("GTC", "IOC", "FOK")
TIFS = {"GTC": GTC, "IOC": IOC, "FOK": FOK}

STP_NONE = 0
STP_CANCEL_TAKER = 1
STP_CANCEL_MAKER = 2
STP_CANCEL_BOTH = 3
STP_NAMES = ("none", "cancel_taker", "cancel_maker", "cancel_both")
STPS = {n: i for i, n in enumerate(STP_NAMES)}

OPEN = 0
FILLED = 1
CANCELLED = 2
STATUS_NAMES = ("open", "filled", "cancelled")

DEFAULT_ASSET_DECIMALS = 8
DEFAULT_DEDUP_WINDOW = 1000
DEFAULT_BAND_BPS = 1000
MAX_TICKS = 10**15
MAX_LOTS = 10**15
MAX_ID_LEN = 64
MAX_DEPTH = 1000
MAX_TS = 2**63 - 1
_CACHE_MAX = 8192


def _fee(notional: int, bps: int) -> int:
    """Fee on a quote notional, rounded up (in favour of the exchange)."""
    return -((-notional * bps) // 10000) if bps else 0


def _ident(x: object, what: str) -> str:
    if type(x) is not str or not x or len(x) > MAX_ID_LEN:  # type: ignore[arg-type]
        raise Reject("bad_request", f"{what} must be a non-empty string of at most 64 chars")
    return x  # type: ignore[return-value]


class Level(deque):
    """Orders at one price, FIFO, as ``[order]`` cells (a cell is emptied when its order
    leaves). ``total`` = live quantity, ``dead`` = emptied cells still queued."""

    __slots__ = ("total", "dead")


def _new_level() -> Level:
    lvl = Level()
    lvl.total = 0
    lvl.dead = 0
    return lvl


class Order:
    __slots__ = (
        "oid", "acct", "sym", "side", "price", "qty", "unit", "hb", "rb", "coid",
        "oprice", "oqty", "filled", "otype", "tif", "post_only", "stp", "status", "ts", "ev",
        "ent",
    )

    def __init__(self, oid, acct, sym, side, price, qty, unit, hb, rb, coid, otype, tif,
                 post_only, stp, ts):
        self.oid = oid
        self.acct = acct
        self.sym = sym
        self.side = side
        self.price = price      # ticks (None for a market order)
        self.qty = qty          # remaining lots; 0 once closed
        self.unit = unit        # held units per remaining lot (0 for a market buy)
        self.hb = hb            # balance [available, held] of the held asset
        self.rb = rb            # balance [available, held] of the received asset
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
        self.ev = None          # events of the placement when more than [accepted]
        self.ent = None         # the [order] cell in its level deque while resting


class Account:
    __slots__ = ("name", "bal", "open", "coids", "finished")

    def __init__(self, name: str) -> None:
        self.name = name
        self.bal: dict[str, list[int]] = {}      # asset -> [available, held]
        self.open: dict[int, Order] = {}         # open orders by id (ascending ids)
        self.coids: dict[str, Order] = {}        # client_order_id -> order (open or retained)
        self.finished: deque[Order] = deque()    # last N finished orders, oldest first


class Symbol:
    __slots__ = (
        "name", "base", "quote", "tick_c", "tick_d", "lot_c", "lot_d", "qpu", "bpl",
        "min_qty", "max_qty", "max_price", "maker_bps", "taker_bps", "hold_bps", "stp_default",
        "band_bps", "bids", "asks", "bid_keys", "ask_keys", "pcache", "qcache", "pstr", "qstr",
        "tick_str", "lot_str", "qdec",
    )

    def __init__(self) -> None:
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.bid_keys: list[int] = []   # prices ascending, best bid last
        self.ask_keys: list[int] = []   # -prices ascending, best ask last
        self.pcache: dict[str, int] = {}
        self.qcache: dict[str, int] = {}
        self.pstr: dict[int, str] = {}
        self.qstr: dict[int, str] = {}

    # -- conversions -------------------------------------------------------------------
    def price_str(self, t: int) -> str:
        s = self.pstr.get(t)
        if s is None:
            if len(self.pstr) >= _CACHE_MAX:
                self.pstr.clear()
            s = self.pstr[t] = fmt_scaled(t * self.tick_c, self.tick_d)
        return s

    def qty_str(self, n: int) -> str:
        s = self.qstr.get(n)
        if s is None:
            if len(self.qstr) >= _CACHE_MAX:
                self.qstr.clear()
            s = self.qstr[n] = fmt_scaled(n * self.lot_c, self.lot_d)
        return s

    def parse_price(self, x: object) -> int:
        if type(x) is str:
            t = self.pcache.get(x)  # type: ignore[call-overload]
            if t is not None:
                return t
        c, d = parse_dec(x, "price")
        v = to_scale(c, d, self.tick_d)
        if v is None or v % self.tick_c:
            raise Reject("price_off_tick", f"price {x} is not a multiple of {self.tick_str}")
        t = v // self.tick_c
        if t <= 0 or t > self.max_price:
            raise Reject("out_of_bounds", f"price {x} out of bounds")
        if type(x) is str:
            if len(self.pcache) >= _CACHE_MAX:
                self.pcache.clear()
            self.pcache[x] = t  # type: ignore[index]
        return t

    def parse_qty(self, x: object) -> int:
        if type(x) is str:
            n = self.qcache.get(x)  # type: ignore[call-overload]
            if n is not None:
                return n
        c, d = parse_dec(x, "qty")
        v = to_scale(c, d, self.lot_d)
        if v is None or v % self.lot_c:
            raise Reject("qty_off_lot", f"qty {x} is not a multiple of {self.lot_str}")
        n = v // self.lot_c
        if n < self.min_qty or n > self.max_qty:
            raise Reject("out_of_bounds", f"qty {x} out of bounds")
        if type(x) is str:
            if len(self.qcache) >= _CACHE_MAX:
                self.qcache.clear()
            self.qcache[x] = n  # type: ignore[index]
        return n

    def buy_unit(self, price: int) -> int:
        """Quote units held per lot of a buy at ``price``: notional + max fee, rounded up."""
        n = price * self.qpu
        return n + _fee(n, self.hold_bps)

    def best_bid(self) -> int | None:
        k = self.bid_keys
        return k[-1] if k else None

    def best_ask(self) -> int | None:
        k = self.ask_keys
        return -k[-1] if k else None


_REJ_ECHO = ("account", "symbol", "client_order_id", "order_id", "tx_id")


def _rejected(cmd: object, reason: str, detail: str) -> dict:
    ev: dict = {"type": "rejected", "reason": reason}
    if type(cmd) is dict:
        op = cmd.get("op")
        if type(op) is str and len(op) <= MAX_ID_LEN:
            ev["op"] = op
        for k in _REJ_ECHO:
            v = cmd.get(k)
            tv = type(v)
            if (tv is str and len(v) <= 256) or tv is int:
                ev[k] = v
    ev["detail"] = detail
    return ev


class Engine:
    """Deterministic matching engine. ``apply(cmd, ts)`` never raises on bad input."""

    def __init__(self, dedup_window: int = DEFAULT_DEDUP_WINDOW) -> None:
        if type(dedup_window) is not int or dedup_window < 1:
            raise ValueError("dedup_window must be a positive int")
        self.dedup_window = dedup_window
        self.next_oid = 1
        self.next_tid = 1
        self.assets: dict[str, int] = {}          # asset -> decimals
        self.symbols: dict[str, Symbol] = {}
        self.accounts: dict[str, Account] = {}
        self.orders: dict[int, Order] = {}        # open orders
        self.fees: dict[str, list[int]] = {}      # fee pool per asset: [amount]
        self.txs: dict[str, tuple] = {}           # tx_id -> (op, account, asset, amount, avail)
        self._ops = {
            "place": self._place,
            "cancel": self._cancel,
            "cancel_all": self._cancel_all,
            "amend": self._amend,
            "deposit": self._deposit,
            "withdraw": self._withdraw,
            "add_symbol": self._add_symbol,
            "book": self._q_book,
            "order": self._q_order,
            "balances": self._q_balances,
        }

    # ------------------------------------------------------------------ entry points
    def apply(self, cmd: dict, ts: int) -> list[dict]:
        try:
            if type(cmd) is dict and type(ts) is int and 0 <= ts <= MAX_TS:
                h = self._ops.get(cmd.get("op"))
                if h is not None:
                    return h(cmd, ts)
            if type(cmd) is not dict:
                raise Reject("bad_request", "command must be a JSON object")
            if type(ts) is not int or not 0 <= ts <= MAX_TS:
                raise Reject("bad_request", "ts must be an integer in [0, 2**63)")
            raise Reject("bad_request", f"unknown op {cmd.get('op')!r}"[:120])
        except Reject as r:
            return [_rejected(cmd, r.reason, r.detail)]
        except Exception as e:  # input that slipped validation (e.g. an unhashable value)
            return [_rejected(cmd, "bad_request", f"malformed command ({type(e).__name__})")]

    def apply_encoded(self, payload: bytes, ts: int) -> bytes:
        from .codec import CodecError, decode_command, encode_events

        try:
            cmd = decode_command(payload)
        except CodecError as e:
            return encode_events([_rejected(None, "bad_request", str(e)[:200])])
        except Exception:  # pragma: no cover - defensive
            return encode_events([_rejected(None, "bad_request", "undecodable command")])
        return encode_events(self.apply(cmd, ts))

    def snapshot(self) -> bytes:
        from .snapshot import dump

        return dump(self)

    @classmethod
    def restore(cls, blob: bytes) -> Engine:
        from .snapshot import load

        return load(cls, blob)

    def state_hash(self) -> str:
        from .snapshot import state_hash

        return state_hash(self)

    # ------------------------------------------------------------------ helpers
    def _asset_str(self, asset: str, v: int) -> str:
        return fmt_scaled(v, self.assets[asset])

    def _accepted_event(self, o: Order) -> dict:
        sym = o.sym
        return {
            "type": "accepted",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "order_type": TYPE_NAMES[o.otype],
            "tif": TIF_NAMES[o.tif],
            "post_only": o.post_only,
            "stp": STP_NAMES[o.stp],
            "price": None if o.oprice is None else sym.price_str(o.oprice),
            "qty": sym.qty_str(o.oqty),
        }

    def _cancelled_event(self, o: Order, rem: int, reason: str) -> dict:
        return {
            "type": "cancelled",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": o.sym.name,
            "side": SIDE_NAMES[o.side],
            "remaining_qty": o.sym.qty_str(rem),
            "reason": reason,
        }

    def _retire(self, o: Order) -> None:
        """Remember a finished order in its account's bounded window."""
        fin = o.acct.finished
        fin.append(o)
        if len(fin) > self.dedup_window:
            self._evict(o.acct)

    def _finish_resting(self, o: Order, status: int) -> None:
        oid = o.oid
        del self.orders[oid]
        del o.acct.open[oid]
        o.status = status
        self._retire(o)

    def _unlink(self, o: Order) -> None:
        """Take a resting order out of its level (lazily: its cell is emptied)."""
        sym = o.sym
        p = o.price
        o.ent[0] = None
        o.ent = None
        if o.side == BUY:
            levels = sym.bids
            keys = sym.bid_keys
            k = p
        else:
            levels = sym.asks
            keys = sym.ask_keys
            k = -p
        lvl = levels[p]
        lvl.total -= o.qty
        if lvl.total == 0:
            del levels[p]
            del keys[bisect_left(keys, k)]
        else:
            lvl.dead += 1
            if lvl.dead > 16 and lvl.dead * 2 > len(lvl):
                self._compact(lvl)

    def _drop_level(self, sym: Symbol, side: int, p: int) -> None:
        if side == BUY:
            del sym.bids[p]
            keys = sym.bid_keys
            del keys[bisect_left(keys, p)]
        else:
            del sym.asks[p]
            keys = sym.ask_keys
            del keys[bisect_left(keys, -p)]

    def _add_level(self, sym: Symbol, side: int, p: int) -> Level:
        lvl = _new_level()
        if side == BUY:
            sym.bids[p] = lvl
            insort(sym.bid_keys, p)
        else:
            sym.asks[p] = lvl
            insort(sym.ask_keys, -p)
        return lvl

    @staticmethod
    def _compact(lvl: Level) -> None:
        live = [e for e in lvl if e[0] is not None]
        lvl.clear()
        lvl.extend(live)
        lvl.dead = 0

    def _rest(self, o: Order) -> None:
        """Queue ``o`` at the back of its price level (it is already registered)."""
        sym = o.sym
        p = o.price
        if o.side == BUY:
            lvl = sym.bids.get(p)
            if lvl is None:
                lvl = sym.bids[p] = _new_level()
                insort(sym.bid_keys, p)
        else:
            lvl = sym.asks.get(p)
            if lvl is None:
                lvl = sym.asks[p] = _new_level()
                insort(sym.ask_keys, -p)
        e = [o]
        o.ent = e
        lvl.append(e)
        lvl.total += o.qty

    def _release(self, o: Order, rem: int) -> None:
        h = rem * o.unit
        if h:
            hb = o.hb
            hb[1] -= h
            hb[0] += h

    def _balance(self, acct: Account, asset: str) -> list[int]:
        b = acct.bal.get(asset)
        if b is None:
            b = acct.bal[asset] = [0, 0]
        return b

    def _lookup_open(self, cmd: dict, acct: Account, sym: Symbol | None) -> Order:
        oid = cmd.get("order_id")
        coid = cmd.get("client_order_id")
        if oid is not None:
            if type(oid) is not int or oid <= 0:
                raise Reject("bad_request", "order_id must be a positive integer")
            o = self.orders.get(oid)
            if o is None:
                raise Reject("unknown_order", f"no open order {oid}")
            if o.acct is not acct:
                raise Reject("wrong_account", f"order {oid} belongs to another account")
        elif coid is not None:
            _ident(coid, "client_order_id")
            o = acct.coids.get(coid)
            if o is None or o.status != OPEN:
                raise Reject("unknown_order", f"no open order with client_order_id {coid}")
        else:
            raise Reject("bad_request", "order_id or client_order_id is required")
        if sym is not None and o.sym is not sym:
            raise Reject("unknown_order", "order is not in that symbol")
        return o

    def _get_account(self, cmd: dict) -> Account:
        name = _ident(cmd.get("account"), "account")
        acct = self.accounts.get(name)
        if acct is None:
            raise Reject("unknown_account", f"unknown account {name}")
        return acct

    def _get_symbol(self, cmd: dict) -> Symbol:
        name = _ident(cmd.get("symbol"), "symbol")
        sym = self.symbols.get(name)
        if sym is None:
            raise Reject("unknown_symbol", f"unknown symbol {name}")
        return sym

    # ------------------------------------------------------------------ matching
    def _fok_fillable(self, sym: Symbol, side: int, acct: Account, limit: int | None,
                      qty: int, stp: int, budget: int | None) -> bool:
        if side == BUY:
            levels = sym.asks
            keys = sym.ask_keys
            sgn = -1
        else:
            levels = sym.bids
            keys = sym.bid_keys
            sgn = 1
        need = qty
        qpu = sym.qpu
        tb = sym.taker_bps
        for i in range(len(keys) - 1, -1, -1):
            p = keys[i] * sgn
            if limit is not None and (p > limit if side == BUY else p < limit):
                return False
            for e in levels[p]:
                m = e[0]
                if m is None:
                    continue
                mq = m.qty
                if stp and m.acct is acct:
                    if stp == STP_CANCEL_MAKER:
                        continue
                    return False
                q = need if need < mq else mq
                if budget is not None:
                    c1 = p * qpu
                    c1 += _fee(c1, tb)
                    if budget // c1 < q:
                        return False
                    n = q * p * qpu
                    budget -= n + _fee(n, tb)
                need -= q
                if not need:
                    return True
        return False

    def _match(self, t: Order, limit: int | None, ev: list, budget: int | None) -> str | None:
        """Match taker ``t`` against the opposite side up to ``limit`` (None = no limit).

        Returns None, "stp" (taker must be cancelled for self-trade prevention) or
        "insufficient_funds" (a market buy ran out of budget).
        """
        sym = t.sym
        side = t.side
        if side == BUY:
            levels = sym.asks
            keys = sym.ask_keys
            sgn = -1
        else:
            levels = sym.bids
            keys = sym.bid_keys
            sgn = 1
        rem = t.qty
        stp = t.stp
        tacct = t.acct
        qpu = sym.qpu
        bpl = sym.bpl
        mb = sym.maker_bps
        tb = sym.taker_bps
        fees = self.fees[sym.quote]
        tunit = t.unit
        thb = t.hb
        trb = t.rb
        tname = tacct.name
        symname = sym.name
        side_name = SIDE_NAMES[side]
        toid = t.oid
        stop = None
        qstr = sym.qstr
        orders = self.orders
        quote_dec = self.assets[sym.quote]
        while rem and keys:
            p = keys[-1] * sgn
            if limit is not None and (p > limit if side == BUY else p < limit):
                break
            lvl = levels[p]
            pstr = None
            while rem and lvl:
                e = lvl[0]
                m = e[0]
                if m is None:
                    lvl.popleft()
                    lvl.dead -= 1
                    continue
                mq = m.qty
                macct = m.acct
                if stp and macct is tacct:
                    if stp == STP_CANCEL_TAKER:
                        stop = "stp"
                        break
                    # cancel the maker (cancel_maker / cancel_both)
                    lvl.popleft()
                    m.ent = None
                    lvl.total -= mq
                    m.qty = 0
                    self._release(m, mq)
                    self._finish_resting(m, CANCELLED)
                    ev.append(self._cancelled_event(m, mq, "stp"))
                    if stp == STP_CANCEL_BOTH:
                        stop = "stp"
                        break
                    continue
                q = rem if rem < mq else mq
                if budget is not None:
                    c1 = p * qpu
                    c1 += _fee(c1, tb)
                    afford = budget // c1
                    if afford < q:
                        if not afford:
                            stop = "insufficient_funds"
                            break
                        q = afford
                n = q * p * qpu
                b = q * bpl
                if mb or tb:
                    mf = _fee(n, mb)
                    tf = _fee(n, tb)
                    fees[0] += mf + tf
                    mfs = fmt_scaled(mf, quote_dec) if mf else "0"
                    tfs = fmt_scaled(tf, quote_dec) if tf else "0"
                else:
                    mf = tf = 0
                    mfs = tfs = "0"
                if budget is not None:
                    budget -= n + tf
                if side == BUY:
                    # taker buys: release its hold for q lots, pay n + tf, receive base
                    h = q * tunit
                    thb[1] -= h
                    thb[0] += h - n - tf
                    trb[0] += b
                    # maker sells: held base goes, quote comes in
                    m.hb[1] -= b
                    m.rb[0] += n - mf
                else:
                    thb[1] -= b
                    trb[0] += n - tf
                    h = q * m.unit
                    mhb = m.hb
                    mhb[1] -= h
                    mhb[0] += h - n - mf
                    m.rb[0] += b
                rem -= q
                mq -= q
                m.qty = mq
                m.filled += q
                lvl.total -= q
                tid = self.next_tid
                self.next_tid = tid + 1
                if pstr is None:
                    pstr = sym.pstr.get(p) or sym.price_str(p)
                ev.append({
                    "type": "trade",
                    "symbol": symname,
                    "trade_id": tid,
                    "price": pstr,
                    "qty": qstr.get(q) or sym.qty_str(q),
                    "maker_order_id": m.oid,
                    "taker_order_id": toid,
                    "maker_account": macct.name,
                    "taker_account": tname,
                    "taker_side": side_name,
                    "maker_fee": mfs,
                    "taker_fee": tfs,
                })
                if not mq:
                    lvl.popleft()
                    m.ent = None
                    oid = m.oid
                    del orders[oid]
                    del macct.open[oid]
                    m.status = FILLED
                    fin = macct.finished
                    fin.append(m)
                    if len(fin) > self.dedup_window:
                        self._evict(macct)
            if not lvl.total:
                del levels[p]
                keys.pop()
            if stop is not None:
                break
        t.filled += t.qty - rem
        t.qty = rem
        return stop

    def _evict(self, acct: Account) -> None:
        old = acct.finished.popleft()
        c = old.coid
        if c is not None and acct.coids.get(c) is old:
            del acct.coids[c]

    # ------------------------------------------------------------------ commands
    def _place(self, cmd: dict, ts: int) -> list[dict]:
        g = cmd.get
        name = g("account")
        acct = self.accounts.get(name) if type(name) is str else None
        if acct is None:
            acct = self._get_account(cmd)
        coid = g("client_order_id")
        if coid is not None:
            if type(coid) is not str or not coid or len(coid) > MAX_ID_LEN:
                _ident(coid, "client_order_id")
            prev = acct.coids.get(coid)
            if prev is not None:
                return self._dup_events(prev)
        sn = g("symbol")
        sym = self.symbols.get(sn) if type(sn) is str else None
        if sym is None:
            sym = self._get_symbol(cmd)
        sd = g("side")
        if sd == "buy":
            side = BUY
        elif sd == "sell":
            side = SELL
        else:
            raise Reject("bad_request", "side must be buy or sell")
        ot = g("type")
        if ot is None or ot == "limit":
            otype = LIMIT
        elif ot == "market":
            otype = MARKET
        else:
            raise Reject("bad_request", "type must be limit or market")
        tf = g("tif")
        if tf is None:
            tif = GTC if otype == LIMIT else IOC
        elif tf == "GTC":
            if otype == MARKET:
                raise Reject("bad_request", "a market order cannot be GTC")
            tif = GTC
        elif tf == "IOC":
            tif = IOC
        elif tf == "FOK":
            tif = FOK
        else:
            raise Reject("bad_request", "tif must be GTC, IOC or FOK")
        po = g("post_only")
        if po is None or po is False:
            post_only = False
        elif po is True:
            if otype != LIMIT or tif != GTC:
                raise Reject("bad_request", "post_only needs a GTC limit order")
            post_only = True
        else:
            raise Reject("bad_request", "post_only must be a boolean")
        sv = g("stp")
        if sv is None:
            stp = sym.stp_default
        else:
            stp = STPS.get(sv) if type(sv) is str else None
            if stp is None:
                raise Reject("bad_request", "stp must be none|cancel_taker|cancel_maker|cancel_both")
        qx = g("qty")
        if qx is None:
            raise Reject("bad_request", "qty is required")
        px = g("price")
        if otype == LIMIT:
            if px is None:
                raise Reject("bad_request", "price is required for a limit order")
            price = sym.pcache.get(px) if type(px) is str else None
            if price is None:
                price = sym.parse_price(px)
        else:
            if px is not None:
                raise Reject("bad_request", "a market order takes no price")
            price = None
        qty = sym.qcache.get(qx) if type(qx) is str else None
        if qty is None:
            qty = sym.parse_qty(qx)

        # funds, price band, post-only and FOK checks (no state change before this point)
        budget = None
        limit = price
        bal = acct.bal
        if side == BUY:
            hasset = sym.quote
            rasset = sym.base
            if otype == LIMIT:
                n = price * sym.qpu
                unit = n + (-((-n * sym.hold_bps) // 10000) if sym.hold_bps else 0)
                ak = sym.ask_keys
                cross = ak and -ak[-1] <= price
            else:
                unit = 0
                b = bal.get(hasset)
                budget = b[0] if b is not None else 0
                if sym.ask_keys:
                    best = -sym.ask_keys[-1]
                    if budget < _buy_cost1(sym, best):
                        raise Reject("insufficient_funds", "cannot buy one lot at the best ask")
                    limit = min(best * (10000 + sym.band_bps) // 10000, sym.max_price)
                cross = limit is not None
        else:
            hasset = sym.base
            rasset = sym.quote
            unit = sym.bpl
            bk = sym.bid_keys
            if otype == LIMIT:
                cross = bk and bk[-1] >= price
            else:
                if bk:
                    limit = max(-((-bk[-1] * (10000 - sym.band_bps)) // 10000), 1)
                cross = limit is not None
        need = qty * unit
        hb = bal.get(hasset)
        if need and (hb is None or hb[0] < need):
            raise Reject("insufficient_funds", f"needs {self._asset_str(hasset, need)} {hasset}")
        if post_only and cross:
            raise Reject("post_only_would_take", "post-only order would take")
        if tif == FOK:
            if not cross:
                raise Reject("fok_unfillable", "no liquidity")
            if not self._fok_fillable(sym, side, acct, limit, qty, stp, budget):
                raise Reject("fok_unfillable", "cannot fill completely at once")

        # ---- accepted: from here on the command takes effect
        oid = self.next_oid
        self.next_oid = oid + 1
        if hb is None:
            hb = bal[hasset] = [0, 0]
        rb = bal.get(rasset)
        if rb is None:
            rb = bal[rasset] = [0, 0]
        if need:
            hb[0] -= need
            hb[1] += need
        o = Order(oid, acct, sym, side, price, qty, unit, hb, rb, coid, otype, tif, post_only,
                  stp, ts)
        if coid is not None:
            acct.coids[coid] = o
        ev = [{
            "type": "accepted",
            "order_id": oid,
            "client_order_id": coid,
            "account": acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[side],
            "order_type": TYPE_NAMES[otype],
            "tif": TIF_NAMES[tif],
            "post_only": post_only,
            "stp": STP_NAMES[stp],
            "price": None if price is None else (sym.pstr.get(price) or sym.price_str(price)),
            "qty": sym.qstr.get(qty) or sym.qty_str(qty),
        }]
        stop = self._match(o, limit, ev, budget) if cross else None
        rem = o.qty
        if not rem:
            o.status = FILLED
            self._retire(o)
        elif stop is None and tif == GTC:
            lvl = (sym.bids if side == BUY else sym.asks).get(price)
            if lvl is None:
                lvl = self._add_level(sym, side, price)
            e = [o]
            o.ent = e
            lvl.append(e)
            lvl.total += rem
            self.orders[oid] = o
            acct.open[oid] = o
        else:
            h = rem * unit
            if h:
                hb[1] -= h
                hb[0] += h
            o.qty = 0
            o.status = CANCELLED
            ev.append(self._cancelled_event(o, rem, stop if stop is not None else "ioc"))
            self._retire(o)
        if len(ev) > 1:
            o.ev = [dict(e) for e in ev]
        return ev

    def _dup_events(self, o: Order) -> list[dict]:
        src = o.ev if o.ev is not None else [self._accepted_event(o)]
        out = []
        for e in src:
            d = dict(e)
            d["duplicate"] = True
            out.append(d)
        return out

    def _open_order(self, cmd: dict) -> tuple[Account, Symbol, Order]:
        """Resolve account, symbol and the open order of a cancel/amend (fast path inline)."""
        g = cmd.get
        name = g("account")
        acct = self.accounts.get(name) if type(name) is str else None
        if acct is None:
            acct = self._get_account(cmd)
        sn = g("symbol")
        sym = self.symbols.get(sn) if type(sn) is str else None
        if sym is None:
            sym = self._get_symbol(cmd)
        oid = g("order_id")
        o = self.orders.get(oid) if type(oid) is int else None
        if o is None or o.acct is not acct or o.sym is not sym:
            o = self._lookup_open(cmd, acct, sym)
        return acct, sym, o

    def _cancel(self, cmd: dict, ts: int) -> list[dict]:
        g = cmd.get
        name = g("account")
        acct = self.accounts.get(name) if type(name) is str else None
        sn = g("symbol")
        sym = self.symbols.get(sn) if type(sn) is str else None
        oid = g("order_id")
        o = self.orders.get(oid) if type(oid) is int else None
        if o is None or acct is None or o.acct is not acct or o.sym is not sym:
            acct, sym, o = self._open_order(cmd)
        rem = o.qty
        self._unlink(o)
        o.qty = 0
        h = rem * o.unit
        if h:
            hb = o.hb
            hb[1] -= h
            hb[0] += h
        self._finish_resting(o, CANCELLED)
        return [{
            "type": "cancelled",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "remaining_qty": sym.qstr.get(rem) or sym.qty_str(rem),
            "reason": "user",
        }]

    def _cancel_all(self, cmd: dict, ts: int) -> list[dict]:
        acct = self._get_account(cmd)
        sym = None
        if cmd.get("symbol") is not None:
            sym = self._get_symbol(cmd)
        ev = []
        for o in list(acct.open.values()):
            if sym is not None and o.sym is not sym:
                continue
            rem = o.qty
            self._unlink(o)
            o.qty = 0
            self._release(o, rem)
            self._finish_resting(o, CANCELLED)
            ev.append(self._cancelled_event(o, rem, "user"))
        ev.append({"type": "cancelled_all", "account": acct.name,
                   "symbol": None if sym is None else sym.name, "count": len(ev)})
        return ev

    def _amend(self, cmd: dict, ts: int) -> list[dict]:
        g = cmd.get
        name = g("account")
        acct = self.accounts.get(name) if type(name) is str else None
        sn = g("symbol")
        sym = self.symbols.get(sn) if type(sn) is str else None
        oid = g("order_id")
        o = self.orders.get(oid) if type(oid) is int else None
        if o is None or acct is None or o.acct is not acct or o.sym is not sym:
            acct, sym, o = self._open_order(cmd)
        qx = g("qty")
        px = g("price")
        if qx is None:
            if px is None:
                raise Reject("bad_request", "amend needs qty and/or price")
            new_qty = o.qty
        else:
            new_qty = sym.qcache.get(qx) if type(qx) is str else None
            if new_qty is None:
                new_qty = sym.parse_qty(qx)
        if px is None:
            new_price = o.price
        else:
            new_price = sym.pcache.get(px) if type(px) is str else None
            if new_price is None:
                new_price = sym.parse_price(px)
        old_qty = o.qty
        old_price = o.price
        side = o.side
        pstr = sym.pstr
        qstr = sym.qstr
        if new_price == old_price and new_qty <= old_qty:
            # keeps time priority
            d = old_qty - new_qty
            if d:
                (sym.bids if side == BUY else sym.asks)[old_price].total -= d
                o.qty = new_qty
                h = d * o.unit
                hb = o.hb
                hb[1] -= h
                hb[0] += h
            ps = pstr.get(old_price) or sym.price_str(old_price)
            return [{
                "type": "amended",
                "order_id": o.oid,
                "client_order_id": o.coid,
                "account": acct.name,
                "symbol": sym.name,
                "side": SIDE_NAMES[side],
                "price": ps,
                "qty": qstr.get(new_qty) or sym.qty_str(new_qty),
                "old_price": ps,
                "old_qty": qstr.get(old_qty) or sym.qty_str(old_qty),
                "priority": "kept",
            }]
        # loses time priority: validate first
        if side == BUY:
            ak = sym.ask_keys
            cross = ak and new_price >= -ak[-1]
            n = new_price * sym.qpu
            unit = n + (-((-n * sym.hold_bps) // 10000) if sym.hold_bps else 0)
        else:
            bk = sym.bid_keys
            cross = bk and new_price <= bk[-1]
            unit = o.unit
        if cross and o.post_only:
            raise Reject("post_only_would_take", "post-only order would take")
        hold_old = old_qty * o.unit
        extra = new_qty * unit - hold_old
        hb = o.hb
        if extra > 0 and hb[0] < extra:
            raise Reject("insufficient_funds", "not enough funds for the amended order")
        # apply: the order leaves its place in the queue (lazily); same object, same id
        e = o.ent
        e[0] = None
        o.ent = None
        levels = sym.bids if side == BUY else sym.asks
        lvl = levels[old_price]
        left = lvl.total - old_qty
        if left:
            lvl.total = left
            d = lvl.dead = lvl.dead + 1
            if d > 16 and d * 2 > len(lvl):
                self._compact(lvl)
        else:
            self._drop_level(sym, side, old_price)
        hb[0] -= extra
        hb[1] += extra
        o.price = new_price
        o.qty = new_qty
        o.unit = unit
        ev = [{
            "type": "amended",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[side],
            "price": pstr.get(new_price) or sym.price_str(new_price),
            "qty": qstr.get(new_qty) or sym.qty_str(new_qty),
            "old_price": pstr.get(old_price) or sym.price_str(old_price),
            "old_qty": qstr.get(old_qty) or sym.qty_str(old_qty),
            "priority": "lost",
        }]
        stop = self._match(o, new_price, ev, None) if cross else None
        rem = o.qty
        if not rem:
            self._finish_resting(o, FILLED)
        elif stop is not None:
            self._release(o, rem)
            o.qty = 0
            self._finish_resting(o, CANCELLED)
            ev.append(self._cancelled_event(o, rem, stop))
        else:
            lvl = levels.get(new_price)
            if lvl is None:
                lvl = self._add_level(sym, side, new_price)
            e = [o]
            o.ent = e
            lvl.append(e)
            lvl.total += rem
        return ev

    def _amended_event(self, o: Order, old_price: int, old_qty: int, prio: str) -> dict:
        sym = o.sym
        return {
            "type": "amended",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": o.acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "price": sym.price_str(o.price),
            "qty": sym.qty_str(o.qty),
            "old_price": sym.price_str(old_price),
            "old_qty": sym.qty_str(old_qty),
            "priority": prio,
        }

    # ------------------------------------------------------------------ funds
    def _parse_amount(self, cmd: dict) -> tuple[str, int]:
        asset = _ident(cmd.get("asset"), "asset")
        if asset not in self.assets:
            raise Reject("unknown_asset", f"unknown asset {asset}")
        c, d = parse_dec(cmd.get("amount"), "amount")
        v = to_scale(c, d, self.assets[asset])
        if v is None:
            raise Reject("amount_precision", f"{asset} has {self.assets[asset]} decimals")
        if v <= 0:
            raise Reject("out_of_bounds", "amount must be positive")
        return asset, v

    def _funds_event(self, rec: tuple) -> dict:
        op, account, asset, amount, avail, tx = rec
        return {
            "type": "deposited" if op == "deposit" else "withdrawn",
            "account": account,
            "asset": asset,
            "amount": self._asset_str(asset, amount),
            "tx_id": tx,
            "available": self._asset_str(asset, avail),
        }

    def _funds(self, cmd: dict, op: str) -> list[dict]:
        name = _ident(cmd.get("account"), "account")
        tx = _ident(cmd.get("tx_id"), "tx_id")
        asset, amount = self._parse_amount(cmd)
        prev = self.txs.get(tx)
        if prev is not None:
            if prev[0] != op or prev[1] != name or prev[2] != asset or prev[3] != amount:
                raise Reject("tx_id_conflict", f"tx_id {tx} was used for another transfer")
            e = self._funds_event(prev)
            e["duplicate"] = True
            return [e]
        acct = self.accounts.get(name)
        if op == "withdraw":
            if acct is None:
                raise Reject("unknown_account", f"unknown account {name}")
            b = acct.bal.get(asset)
            if b is None or b[0] < amount:
                raise Reject("insufficient_funds", "not enough available funds")
            b[0] -= amount
        else:
            if acct is None:
                acct = self.accounts[name] = Account(name)
            b = self._balance(acct, asset)
            b[0] += amount
        rec = (op, name, asset, amount, b[0], tx)
        self.txs[tx] = rec
        return [self._funds_event(rec)]

    def _deposit(self, cmd: dict, ts: int) -> list[dict]:
        return self._funds(cmd, "deposit")

    def _withdraw(self, cmd: dict, ts: int) -> list[dict]:
        return self._funds(cmd, "withdraw")

    # ------------------------------------------------------------------ symbols
    def _add_symbol(self, cmd: dict, ts: int) -> list[dict]:
        g = cmd.get
        name = _ident(g("symbol"), "symbol")
        base = _ident(g("base"), "base")
        quote = _ident(g("quote"), "quote")
        if base == quote:
            raise Reject("bad_request", "base and quote must differ")
        tick_c, tick_d = decimals_of(*parse_dec(g("tick_size"), "tick_size"))
        lot_c, lot_d = decimals_of(*parse_dec(g("lot_size"), "lot_size"))
        if tick_c <= 0 or lot_c <= 0:
            raise Reject("out_of_bounds", "tick_size and lot_size must be positive")
        if tick_d > 18 or lot_d > 18:
            raise Reject("out_of_bounds", "tick_size/lot_size have at most 18 decimals")
        if tick_c >= 10**18 or lot_c >= 10**18:
            raise Reject("out_of_bounds", "tick_size/lot_size too large")
        sym = Symbol()
        sym.name = name
        sym.base = base
        sym.quote = quote
        sym.tick_c, sym.tick_d, sym.lot_c, sym.lot_d = tick_c, tick_d, lot_c, lot_d
        sym.tick_str = fmt_scaled(tick_c, tick_d)
        sym.lot_str = fmt_scaled(lot_c, lot_d)
        sym.min_qty = 1
        sym.max_qty = MAX_LOTS
        sym.max_price = MAX_TICKS
        if g("min_qty") is not None:
            sym.min_qty = sym.parse_qty(g("min_qty"))
        if g("max_qty") is not None:
            sym.max_qty = sym.parse_qty(g("max_qty"))
        if g("max_price") is not None:
            sym.max_price = sym.parse_price(g("max_price"))
        sym.pcache.clear()
        sym.qcache.clear()
        if sym.min_qty > sym.max_qty:
            raise Reject("out_of_bounds", "min_qty > max_qty")
        sym.maker_bps = _bps(g("maker_fee_bps"), "maker_fee_bps")
        sym.taker_bps = _bps(g("taker_fee_bps"), "taker_fee_bps")
        sym.hold_bps = max(sym.maker_bps, sym.taker_bps)
        band = g("market_band_bps")
        if band is None:
            band = DEFAULT_BAND_BPS
        if type(band) is not int or not 0 <= band <= 9999:
            raise Reject("bad_request", "market_band_bps must be an int in [0, 9999]")
        sym.band_bps = band
        sv = g("stp_default")
        if sv is None:
            sym.stp_default = STP_CANCEL_TAKER
        else:
            st = STPS.get(sv) if type(sv) is str else None
            if st is None:
                raise Reject("bad_request", "stp_default must be none|cancel_taker|...")
            sym.stp_default = st
        if name in self.symbols:
            raise Reject("duplicate_symbol", f"symbol {name} exists")
        need_b = lot_d
        need_q = tick_d + lot_d
        bd = self.assets.get(base)
        qd = self.assets.get(quote)
        if bd is not None and bd < need_b:
            raise Reject("asset_precision", f"{base} has {bd} decimals, lot_size needs {need_b}")
        if qd is not None and qd < need_q:
            raise Reject("asset_precision", f"{quote} has {qd} decimals, needs {need_q}")
        # accepted
        if bd is None:
            bd = self.assets[base] = max(need_b, DEFAULT_ASSET_DECIMALS)
            self.fees[base] = [0]
        if qd is None:
            qd = self.assets[quote] = max(need_q, DEFAULT_ASSET_DECIMALS)
            self.fees[quote] = [0]
        sym.bpl = lot_c * POW10[bd - lot_d]
        sym.qpu = tick_c * lot_c * POW10[qd - tick_d - lot_d]
        self.symbols[name] = sym
        return [self._symbol_event(sym)]

    def _symbol_event(self, sym: Symbol) -> dict:
        return {
            "type": "symbol_added",
            "symbol": sym.name,
            "base": sym.base,
            "quote": sym.quote,
            "tick_size": sym.tick_str,
            "lot_size": sym.lot_str,
            "min_qty": sym.qty_str(sym.min_qty),
            "max_qty": sym.qty_str(sym.max_qty),
            "max_price": sym.price_str(sym.max_price),
            "maker_fee_bps": sym.maker_bps,
            "taker_fee_bps": sym.taker_bps,
            "stp_default": STP_NAMES[sym.stp_default],
            "market_band_bps": sym.band_bps,
            "base_decimals": self.assets[sym.base],
            "quote_decimals": self.assets[sym.quote],
        }

    # ------------------------------------------------------------------ queries
    def _q_book(self, cmd: dict, ts: int) -> list[dict]:
        sym = self._get_symbol(cmd)
        depth = cmd.get("depth", 10)
        if depth is None:
            depth = 10
        if type(depth) is not int or not 1 <= depth <= MAX_DEPTH:
            raise Reject("bad_request", f"depth must be an int in [1, {MAX_DEPTH}]")
        return [{"type": "book", "symbol": sym.name, **self.l2(sym, depth)}]

    def l2(self, sym: Symbol, depth: int) -> dict:
        ps, qs = sym.price_str, sym.qty_str
        bk = sym.bid_keys
        ak = sym.ask_keys
        bids = [[ps(p), qs(sym.bids[p].total)] for p in bk[: -depth - 1: -1]]
        asks = [[ps(-k), qs(sym.asks[-k].total)] for k in ak[: -depth - 1: -1]]
        return {"bids": bids, "asks": asks}

    def _q_order(self, cmd: dict, ts: int) -> list[dict]:
        acct = self._get_account(cmd)
        oid = cmd.get("order_id")
        coid = cmd.get("client_order_id")
        o = None
        if oid is not None:
            if type(oid) is not int or oid <= 0:
                raise Reject("bad_request", "order_id must be a positive integer")
            o = self.orders.get(oid)
            if o is None:
                for f in acct.finished:
                    if f.oid == oid:
                        o = f
                        break
            elif o.acct is not acct:
                raise Reject("wrong_account", f"order {oid} belongs to another account")
        elif coid is not None:
            _ident(coid, "client_order_id")
            o = acct.coids.get(coid)
        else:
            raise Reject("bad_request", "order_id or client_order_id is required")
        if o is None:
            raise Reject("unknown_order", "order unknown (or forgotten)")
        sym = o.sym
        return [{
            "type": "order",
            "order_id": o.oid,
            "client_order_id": o.coid,
            "account": acct.name,
            "symbol": sym.name,
            "side": SIDE_NAMES[o.side],
            "order_type": TYPE_NAMES[o.otype],
            "tif": TIF_NAMES[o.tif],
            "post_only": o.post_only,
            "stp": STP_NAMES[o.stp],
            "price": None if o.price is None else sym.price_str(o.price),
            "qty": sym.qty_str(o.oqty),
            "remaining_qty": sym.qty_str(o.qty),
            "filled_qty": sym.qty_str(o.filled),
            "status": STATUS_NAMES[o.status],
            "ts": o.ts,
        }]

    def _q_balances(self, cmd: dict, ts: int) -> list[dict]:
        acct = self._get_account(cmd)
        out = {}
        for asset in sorted(acct.bal):
            a, h = acct.bal[asset]
            out[asset] = {"available": self._asset_str(asset, a), "held": self._asset_str(asset, h)}
        return [{"type": "balances", "account": acct.name, "balances": out}]

    # ------------------------------------------------------------------ introspection
    def check_invariants(self) -> None:
        """Raise AssertionError if an internal invariant is broken (used by tests)."""
        held: dict[tuple[str, str], int] = {}
        for sym in self.symbols.values():
            assert sym.bid_keys == sorted(sym.bids), "bid keys"
            assert sym.ask_keys == sorted(-p for p in sym.asks), "ask keys"
            if sym.bid_keys and sym.ask_keys:
                assert sym.bid_keys[-1] < -sym.ask_keys[-1], "crossed book"
            for side, levels in ((BUY, sym.bids), (SELL, sym.asks)):
                for p, lvl in levels.items():
                    live = [e[0] for e in lvl if e[0] is not None]
                    assert live, "empty level"
                    assert sum(o.qty for o in live) == lvl.total, "level total"
                    assert lvl.dead == len(lvl) - len(live), "dead count"
                    for e in lvl:
                        assert e[0] is None or e[0].ent is e, "entry link"
                    for o in live:
                        assert o.qty > 0 and o.price == p and o.side == side and o.status == OPEN
                        assert self.orders.get(o.oid) is o, "order map"
                        asset = sym.quote if side == BUY else sym.base
                        key = (o.acct.name, asset)
                        held[key] = held.get(key, 0) + o.qty * o.unit
        n_open = sum(len(lv) - lv.dead for s in self.symbols.values()
                     for lv in (*s.bids.values(), *s.asks.values()))
        assert n_open == len(self.orders), "open order count"
        totals: dict[str, int] = {a: f[0] for a, f in self.fees.items()}
        for acct in self.accounts.values():
            for asset, (a, h) in acct.bal.items():
                assert a >= 0 and h >= 0, f"negative balance {acct.name} {asset}"
                assert h == held.get((acct.name, asset), 0), f"held {acct.name} {asset}"
                totals[asset] = totals.get(asset, 0) + a + h
            for oid, o in acct.open.items():
                assert self.orders.get(oid) is o and o.acct is acct
            assert list(acct.open) == sorted(acct.open), "open order ids ordered"
        flows: dict[str, int] = {}
        for op, _acct, asset, amount, _avail, _tx in self.txs.values():
            flows[asset] = flows.get(asset, 0) + (amount if op == "deposit" else -amount)
        for asset, tot in totals.items():
            assert tot == flows.get(asset, 0), f"conservation {asset}"


def _buy_cost1(sym: Symbol, price: int) -> int:
    n = price * sym.qpu
    return n + _fee(n, sym.taker_bps)


def _bps(v: object, what: str) -> int:
    if v is None:
        return 0
    if type(v) is not int or not 0 <= v <= 1000:  # type: ignore[operator]
        raise Reject("bad_request", f"{what} must be an int in [0, 1000]")
    return v  # type: ignore[return-value]
